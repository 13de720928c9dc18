CREATE TABLE dunning_customers (
    tenant_id    text NOT NULL,
    customer_id  text NOT NULL,
    timezone     text NOT NULL DEFAULT 'UTC',
    risk_segment text NOT NULL DEFAULT 'medium',
    risk_score   int,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, customer_id)
);

CREATE TABLE cases (
    tenant_id     text NOT NULL,
    case_id       uuid NOT NULL,
    customer_id   text NOT NULL,
    invoice_id    uuid NOT NULL,
    number        text NOT NULL,
    currency      char(3) NOT NULL,
    amount_minor  bigint NOT NULL,
    open_minor    bigint NOT NULL CHECK (open_minor >= 0),
    due_date      date NOT NULL,
    policy        text NOT NULL,
    status        text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed')),
    closed_reason text,
    overdue_since timestamptz,
    opened_at     timestamptz NOT NULL,
    closed_at     timestamptz,
    PRIMARY KEY (tenant_id, case_id),
    UNIQUE (tenant_id, invoice_id)
);
CREATE INDEX cases_by_customer ON cases (tenant_id, customer_id);

-- Durable timers: one row per step and channel; claimed with SKIP LOCKED, executed once.
CREATE TABLE case_steps (
    tenant_id   text NOT NULL,
    case_id     uuid NOT NULL,
    step        text NOT NULL,
    channel     text NOT NULL,
    template    text NOT NULL,
    offset_days int NOT NULL,
    due_at      timestamptz NOT NULL,
    status      text NOT NULL CHECK (status IN ('scheduled', 'executed', 'cancelled', 'skipped')),
    executed_at timestamptz,
    PRIMARY KEY (tenant_id, case_id, step, channel),
    FOREIGN KEY (tenant_id, case_id) REFERENCES cases (tenant_id, case_id)
);
CREATE INDEX case_steps_due ON case_steps (due_at) WHERE status = 'scheduled';
