-- Disputes pause dunning: an account-level dispute (no invoice) pauses all the customer's cases.
CREATE TABLE disputes (
    tenant_id   text NOT NULL,
    dispute_id  uuid NOT NULL,
    customer_id text NOT NULL,
    origin      text NOT NULL,
    reason      text NOT NULL,
    invoice_id  uuid,
    status      text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'resolved')),
    opened_at   timestamptz NOT NULL,
    resolved_at timestamptz,
    PRIMARY KEY (tenant_id, dispute_id)
);
CREATE INDEX disputes_open ON disputes (tenant_id, customer_id) WHERE status = 'open';
