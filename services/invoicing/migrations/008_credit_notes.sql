-- Credit notes reduce what is owed: recorded beside payments (they are applied the same way),
-- booked on the ledger as credit notes. A source's payment and credit note may share an id.
ALTER TABLE payments ADD COLUMN kind text NOT NULL DEFAULT 'payment' CHECK (kind IN ('payment', 'credit_note'));
ALTER TABLE payments DROP CONSTRAINT payments_tenant_id_billing_source_external_id_key;
ALTER TABLE payments ADD CONSTRAINT payments_source_kind_external_id UNIQUE (tenant_id, billing_source, kind, external_id);
