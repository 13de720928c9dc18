-- Authoritative per-customer payment behaviour (a faust table may only cache this).
CREATE TABLE payment_behaviour (
    tenant_id       text NOT NULL,
    customer_id     text NOT NULL,
    invoices_issued int NOT NULL DEFAULT 0,
    invoices_paid   int NOT NULL DEFAULT 0,
    paid_late       int NOT NULL DEFAULT 0,
    days_late_total int NOT NULL DEFAULT 0,
    overdue_events  int NOT NULL DEFAULT 0,
    broken_promises int NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, customer_id)
);

-- Read model answered by GET /v1/customers/{id}/risk.
CREATE TABLE customer_risk (
    tenant_id   text NOT NULL,
    customer_id text NOT NULL,
    score       int NOT NULL,
    segment     text NOT NULL,
    factors     jsonb NOT NULL,
    assessed_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, customer_id)
);

-- Liveness of the faust stream workers, read by the API's readiness check.
CREATE TABLE stream_heartbeat (
    worker      text PRIMARY KEY,
    assigned    int NOT NULL,
    beat_at     timestamptz NOT NULL DEFAULT now()
);
