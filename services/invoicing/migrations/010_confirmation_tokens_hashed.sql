-- Balance-confirmation links: only a SHA-256 of the token is kept (a database reader cannot
-- answer for a customer), and a link expires.
ALTER TABLE balance_confirmations ADD COLUMN token_hash text;
UPDATE balance_confirmations SET token_hash = encode(sha256(convert_to(token, 'UTF8')), 'hex');
ALTER TABLE balance_confirmations ALTER COLUMN token_hash SET NOT NULL;
ALTER TABLE balance_confirmations ADD CONSTRAINT balance_confirmations_token_hash_key UNIQUE (token_hash);
ALTER TABLE balance_confirmations DROP COLUMN token;
ALTER TABLE balance_confirmations ADD COLUMN expires_at timestamptz;
UPDATE balance_confirmations SET expires_at = requested_at + interval '30 days';
ALTER TABLE balance_confirmations ALTER COLUMN expires_at SET NOT NULL;
