CREATE TABLE customers (
    tenant_id      text NOT NULL,
    customer_id    text NOT NULL,
    name           text NOT NULL,
    language       text NOT NULL DEFAULT 'en',
    timezone       text NOT NULL DEFAULT 'UTC',
    email          text,
    phone          text,
    billing_source text,
    placeholder    boolean NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, customer_id)
);

CREATE TABLE invoices (
    tenant_id      text NOT NULL,
    invoice_id     uuid NOT NULL,
    billing_source text NOT NULL,
    external_id    text NOT NULL,
    customer_id    text NOT NULL,
    number         text NOT NULL,
    currency       char(3) NOT NULL,
    amount_minor   bigint NOT NULL CHECK (amount_minor > 0),
    open_minor     bigint NOT NULL CHECK (open_minor >= 0),
    issue_date     date NOT NULL,
    due_date       date NOT NULL CHECK (due_date >= issue_date),
    status         text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'paid', 'cancelled')),
    issued_at      timestamptz NOT NULL,
    paid_at        timestamptz,
    PRIMARY KEY (tenant_id, invoice_id),
    UNIQUE (tenant_id, billing_source, external_id),
    FOREIGN KEY (tenant_id, customer_id) REFERENCES customers (tenant_id, customer_id)
);
CREATE INDEX invoices_open_by_customer ON invoices (tenant_id, customer_id, due_date) WHERE status = 'open';

-- Durable timer: one row per invoice, fired once when the due date has passed.
CREATE TABLE overdue_timers (
    tenant_id  text NOT NULL,
    invoice_id uuid NOT NULL,
    due_at     timestamptz NOT NULL,
    fired_at   timestamptz,
    PRIMARY KEY (tenant_id, invoice_id),
    FOREIGN KEY (tenant_id, invoice_id) REFERENCES invoices (tenant_id, invoice_id)
);
CREATE INDEX overdue_timers_due ON overdue_timers (due_at) WHERE fired_at IS NULL;

CREATE TABLE payments (
    tenant_id       text NOT NULL,
    payment_id      uuid NOT NULL,
    billing_source  text NOT NULL,
    external_id     text NOT NULL,
    customer_id     text NOT NULL,
    currency        char(3) NOT NULL,
    amount_minor    bigint NOT NULL CHECK (amount_minor > 0),
    unapplied_minor bigint NOT NULL CHECK (unapplied_minor >= 0),
    unapplied_reason text,
    references_     text[] NOT NULL DEFAULT '{}',
    received_at     timestamptz NOT NULL,
    recorded_at     timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, payment_id),
    UNIQUE (tenant_id, billing_source, external_id)
);

CREATE TABLE allocations (
    tenant_id    text NOT NULL,
    payment_id   uuid NOT NULL,
    invoice_id   uuid NOT NULL,
    amount_minor bigint NOT NULL CHECK (amount_minor > 0),
    allocated_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, payment_id, invoice_id),
    FOREIGN KEY (tenant_id, payment_id) REFERENCES payments (tenant_id, payment_id),
    FOREIGN KEY (tenant_id, invoice_id) REFERENCES invoices (tenant_id, invoice_id)
);
