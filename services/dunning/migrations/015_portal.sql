-- The customer portal: the key that signs the link in each notice, and per tenant what the
-- portal says about paying (its payment instructions, per language) and how long links live.
CREATE TABLE portal_keys (
    id  int PRIMARY KEY CHECK (id = 1),
    key text NOT NULL
);
INSERT INTO portal_keys VALUES (1, md5(gen_random_uuid()::text) || md5(gen_random_uuid()::text));

CREATE TABLE portal_settings (
    tenant_id            text PRIMARY KEY,
    payment_instructions jsonb NOT NULL DEFAULT '{}',  -- language -> text (bank, IBAN, reference to quote)
    link_days            int NOT NULL DEFAULT 30 CHECK (link_days BETWEEN 1 AND 365),
    updated_at           timestamptz NOT NULL,
    updated_by           text NOT NULL
);
