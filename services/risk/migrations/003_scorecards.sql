-- A tenant's own scorecard (factors, weights, bands, grade bands, grade -> dunning segment);
-- a tenant without one uses the shipped scorecard.
CREATE TABLE scorecards (
    tenant_id  text PRIMARY KEY,
    document   jsonb NOT NULL,
    updated_at timestamptz NOT NULL,
    updated_by text
);

-- Every assessment that moved a customer's score or grade, at the time of the event that caused
-- it: the history the backtest reads ("the grade at the invoice's issue date").
CREATE TABLE risk_assessments (
    tenant_id   text NOT NULL,
    event_id    uuid NOT NULL,          -- the RiskAssessed event's id (derived from its cause)
    customer_id text NOT NULL,
    assessed_at timestamptz NOT NULL,
    score       int NOT NULL,
    grade       text NOT NULL CHECK (grade IN ('A', 'B', 'C', 'D')),
    segment     text NOT NULL,
    PRIMARY KEY (tenant_id, event_id)
);
CREATE INDEX risk_assessments_by_customer ON risk_assessments (tenant_id, customer_id, assessed_at);

ALTER TABLE customer_risk ADD COLUMN grade text;

-- What risk knows of the customer itself (from CustomerUpserted) and its dealer group.
ALTER TABLE risk_customers
    ADD COLUMN language   text,
    ADD COLUMN terms_days int,
    ADD COLUMN parent_id  text;
ALTER TABLE risk_customers ALTER COLUMN updated_at SET DEFAULT now();

-- The counter table the first score rested on: the score now reads risk_invoices and risk_customers.
DROP TABLE payment_behaviour;
