-- Secrets billing sources sign their ingest-topic records with (HMAC-SHA256). The secret itself is
-- needed to verify, so it is kept as is: this table is as sensitive as the key store of a
-- webhook provider. A source may have two live secrets while it rotates.
CREATE TABLE ingest_secrets (
    secret_id  text PRIMARY KEY,
    tenant_id  text NOT NULL,
    source     text NOT NULL,
    secret     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    retired_at timestamptz,
    FOREIGN KEY (tenant_id, source) REFERENCES billing_sources (tenant_id, name)
);
CREATE INDEX ingest_secrets_source ON ingest_secrets (tenant_id, source);

-- Signatures taken within the timestamp tolerance, and the record each came on: the same signed
-- bytes on another record are a replay. Older rows are pruned (their timestamp is refused anyway).
CREATE TABLE ingest_signatures (
    signature  text PRIMARY KEY,
    record_id  uuid NOT NULL,
    seen_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ingest_signatures_seen_at ON ingest_signatures (seen_at);
