-- Every invoice of a customer as risk knows it, from invoicing's events: what scores, exposure
-- and credit rest on. Rebuilt identically by replaying the topics (every write is keyed and
-- idempotent per event).
CREATE TABLE risk_invoices (
    tenant_id    text NOT NULL,
    invoice_id   text NOT NULL,
    customer_id  text NOT NULL,
    currency     text NOT NULL,
    amount_minor bigint NOT NULL,
    open_minor   bigint NOT NULL,
    issue_date   date NOT NULL,
    due_date     date NOT NULL,
    status       text NOT NULL CHECK (status IN ('open', 'paid', 'cancelled')),
    paid_at      timestamptz,
    days_late    int,           -- at settlement: days after the due date (negative: early)
    overdue_at   timestamptz,
    reopened     int NOT NULL DEFAULT 0,  -- times a reversal re-opened it
    updated_at   timestamptz NOT NULL,    -- the event time of the last change
    PRIMARY KEY (tenant_id, invoice_id)
);
CREATE INDEX risk_invoices_by_customer ON risk_invoices (tenant_id, customer_id, issue_date);

-- What else a customer did, from dunning's and the notifier's events, counted with when it last
-- happened (event time).
CREATE TABLE risk_customers (
    tenant_id          text NOT NULL,
    customer_id        text NOT NULL,
    promises_kept      int NOT NULL DEFAULT 0,
    promises_broken    int NOT NULL DEFAULT 0,
    plans_broken       int NOT NULL DEFAULT 0,
    disputes_opened    int NOT NULL DEFAULT 0,
    disputes_rejected  int NOT NULL DEFAULT 0,
    payments_reversed  int NOT NULL DEFAULT 0,
    contacts_bounced   int NOT NULL DEFAULT 0,
    contacts_opted_out int NOT NULL DEFAULT 0,
    last_broken_at     timestamptz,
    updated_at         timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, customer_id)
);
