-- What each billing source may record: invoices (with credit notes and customer master data)
-- and/or payments. Recording payments is a permission of its own (a bank import, or a source the
-- tenant allows); sources registered before this keep what they could do.
ALTER TABLE billing_sources ADD COLUMN records_invoices boolean NOT NULL DEFAULT true;
ALTER TABLE billing_sources ADD COLUMN records_payments boolean NOT NULL DEFAULT false;
UPDATE billing_sources SET records_payments = true;
-- A source registered with a key only (tahsilat keys create) may have no default currency yet.
ALTER TABLE billing_sources ALTER COLUMN default_currency DROP NOT NULL;

-- Per-tenant settings. master_data_source: the billing source that owns every customer's
-- contact data; without one, a customer's data belongs to the source that created it.
CREATE TABLE tenant_settings (
    tenant_id          text PRIMARY KEY,
    master_data_source text,
    updated_at         timestamptz NOT NULL DEFAULT now()
);
