-- Foreign keys check row by row (a trigger and a KEY SHARE lock per row) and were half the
-- database time of a bulk ingest. Both are guaranteed by the one use case that writes these rows:
-- an invoice's customer is upserted (or created as a placeholder) in the same transaction, and an
-- overdue timer is only ever inserted together with its invoice.
ALTER TABLE invoices DROP CONSTRAINT invoices_tenant_id_customer_id_fkey;
ALTER TABLE overdue_timers DROP CONSTRAINT overdue_timers_tenant_id_invoice_id_fkey;
