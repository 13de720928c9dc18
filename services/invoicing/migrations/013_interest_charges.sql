-- Statutory late-payment interest from dunning is booked as a charge, like a dunning fee.
ALTER TABLE invoices DROP CONSTRAINT invoices_kind_check;
ALTER TABLE invoices ADD CONSTRAINT invoices_kind_check CHECK (kind IN ('invoice', 'fee', 'interest'));
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_kind_check;
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_kind_check CHECK (kind IN (
    'invoice', 'adjustment', 'cancellation', 'credit_note', 'payment', 'payment_reversal', 'fee', 'interest'));
