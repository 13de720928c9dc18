-- A bounced payment is reversed: it re-opens what it paid; its allocations are kept, marked.
ALTER TABLE payments ADD COLUMN status text NOT NULL DEFAULT 'received' CHECK (status IN ('received', 'reversed'));
ALTER TABLE payments ADD COLUMN reversed_at timestamptz;
ALTER TABLE payments ADD COLUMN reversal_reason text;
ALTER TABLE allocations ADD COLUMN reversed_at timestamptz;
CREATE INDEX payments_unapplied ON payments (tenant_id, customer_id, currency, received_at)
    WHERE unapplied_minor > 0 AND status = 'received';
