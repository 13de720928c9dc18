-- The legal hand-over: a case file frozen at the moment a case goes to legal, in the customer's
-- language (CustomerUpserted carries it).
ALTER TABLE dunning_customers ADD COLUMN language text NOT NULL DEFAULT 'en';
CREATE TABLE case_files (
    tenant_id  text NOT NULL,
    case_id    uuid NOT NULL,
    document   jsonb NOT NULL,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, case_id)
);
