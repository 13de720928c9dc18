-- Balance confirmation: the customer is sent their statement and confirms or contests it.
CREATE TABLE balance_confirmations (
    tenant_id       text NOT NULL,
    confirmation_id uuid NOT NULL,
    customer_id     text NOT NULL,
    as_of           date NOT NULL,
    balances        jsonb NOT NULL,
    token           text NOT NULL UNIQUE,
    status          text NOT NULL DEFAULT 'requested' CHECK (status IN ('requested', 'confirmed', 'contested')),
    reason          text,
    requested_at    timestamptz NOT NULL,
    answered_at     timestamptz,
    PRIMARY KEY (tenant_id, confirmation_id)
);
