-- Fees assessed by dunning are charges on the customer's account: payable and aged like
-- invoices, but never dunned themselves.
ALTER TABLE invoices ADD COLUMN kind text NOT NULL DEFAULT 'invoice' CHECK (kind IN ('invoice', 'fee'));
