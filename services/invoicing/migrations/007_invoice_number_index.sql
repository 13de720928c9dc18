-- Bank statements name invoices by number (or external id) without the billing source.
CREATE INDEX invoices_by_number ON invoices (tenant_id, number) WHERE status = 'open';
CREATE INDEX invoices_by_external_id ON invoices (tenant_id, external_id) WHERE status = 'open';
