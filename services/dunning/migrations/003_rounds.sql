-- A case that closes and opens again (a bounced payment, an upward adjustment) is dunned again
-- in a new round: the round's steps are new timers with new notification keys, so nothing that
-- was sent in an earlier round blocks them, and nothing is sent twice within one.
ALTER TABLE cases ADD COLUMN round int NOT NULL DEFAULT 0;
ALTER TABLE case_steps ADD COLUMN round int NOT NULL DEFAULT 0;
ALTER TABLE case_steps DROP CONSTRAINT case_steps_pkey;
ALTER TABLE case_steps ADD PRIMARY KEY (tenant_id, case_id, round, step, channel);
