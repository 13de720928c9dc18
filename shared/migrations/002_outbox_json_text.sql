-- The relay sends an envelope exactly as stored, so keep it as JSON text (json), not jsonb:
-- nothing queries inside it, and jsonb cost a parse on insert and a print on every publish.
ALTER TABLE outbox ALTER COLUMN envelope TYPE json USING envelope::json;
