-- A dispute pauses dunning until a collector resolves it, and at most until pause_until: an
-- unanswered contest must not stop collection for ever.
ALTER TABLE disputes ADD COLUMN pause_until timestamptz;
UPDATE disputes SET pause_until = opened_at + interval '30 days';
ALTER TABLE disputes ALTER COLUMN pause_until SET NOT NULL;
ALTER TABLE disputes ADD COLUMN resolution text;
ALTER TABLE disputes ADD COLUMN resolved_by text;
