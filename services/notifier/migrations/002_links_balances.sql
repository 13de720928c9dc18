ALTER TABLE notifications ADD COLUMN links jsonb NOT NULL DEFAULT '{}';
ALTER TABLE notifications ADD COLUMN balances jsonb NOT NULL DEFAULT '[]';
