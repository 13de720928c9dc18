-- Credit limits per customer and currency, set by a person, recommended by the engine or
-- granted by an application's decision. A customer with members (a dealer's sub-dealers, a
-- corporate group's companies) has its limit checked against the whole group's exposure.
CREATE TABLE credit_limits (
    tenant_id    text NOT NULL,
    customer_id  text NOT NULL,
    currency     text NOT NULL,
    limit_minor  bigint NOT NULL CHECK (limit_minor >= 0),
    source       text NOT NULL CHECK (source IN ('person', 'engine', 'application')),
    set_by       text,
    reason       text,
    set_at       timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, customer_id, currency)
);

-- Holds in place: 'limit' ones follow the exposure (placed above the limit, released at or below
-- it); 'manual' ones are a person's (currency '*': every currency) and only a person lifts them.
CREATE TABLE credit_holds (
    tenant_id      text NOT NULL,
    customer_id    text NOT NULL,
    currency       text NOT NULL,
    kind           text NOT NULL CHECK (kind IN ('limit', 'manual')),
    scope          text NOT NULL DEFAULT 'customer' CHECK (scope IN ('customer', 'group')),
    limit_minor    bigint,
    exposure_minor bigint,
    placed_by      text,
    reason         text,
    placed_at      timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, customer_id, currency, kind)
);

-- Credit applications of new customers: what was asked, what the engine recommended and why,
-- and the person's decision.
CREATE TABLE credit_applications (
    tenant_id       text NOT NULL,
    application_id  uuid NOT NULL,
    customer_id     text NOT NULL,
    application     jsonb NOT NULL,
    recommendation  jsonb NOT NULL,
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'approved', 'changed', 'declined')),
    decision        jsonb,
    submitted_by    text,
    submitted_at    timestamptz NOT NULL,
    decided_by      text,
    decided_at      timestamptz,
    PRIMARY KEY (tenant_id, application_id)
);
CREATE INDEX credit_applications_by_customer ON credit_applications (tenant_id, customer_id, submitted_at);

CREATE INDEX risk_customers_by_parent ON risk_customers (tenant_id, parent_id) WHERE parent_id IS NOT NULL;

-- A credit policy per tenant (sector risk, revenue share, terms, security); absent: the shipped one.
CREATE TABLE credit_policies (
    tenant_id  text PRIMARY KEY,
    document   jsonb NOT NULL,
    updated_at timestamptz NOT NULL,
    updated_by text
);
