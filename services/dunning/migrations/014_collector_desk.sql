-- The collector's desk: the collectors (hours, language, capacity, the key they sign in with),
-- each tenant's assignment mode and task rules, portfolios, task assignment, and the contact
-- log: every interaction with a customer in one append-only timeline.
CREATE TABLE collectors (
    tenant_id    text NOT NULL,
    collector_id text NOT NULL,
    name         text NOT NULL,
    key_id       text,  -- the API key the collector signs in with ("my worklist")
    language     text NOT NULL DEFAULT 'en',
    timezone     text NOT NULL DEFAULT 'UTC',
    work_start   time NOT NULL DEFAULT '09:00',
    work_end     time NOT NULL DEFAULT '17:00',
    work_days    int[] NOT NULL DEFAULT '{1,2,3,4,5}',  -- ISO weekdays
    capacity     int NOT NULL DEFAULT 40 CHECK (capacity >= 0),  -- open tasks at most
    active       boolean NOT NULL DEFAULT true,
    updated_at   timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, collector_id)
);
CREATE UNIQUE INDEX collectors_by_key ON collectors (key_id) WHERE key_id IS NOT NULL;

CREATE TABLE desk_settings (
    tenant_id          text PRIMARY KEY,
    assignment         text NOT NULL DEFAULT 'portfolio' CHECK (assignment IN ('portfolio', 'round_robin', 'manual')),
    grade_weights      jsonb NOT NULL DEFAULT '{"A": "0.5", "B": "1", "C": "1.5", "D": "2"}',
    high_amount        jsonb NOT NULL DEFAULT '{}',  -- currency -> minor units: a notice for this much makes a call task
    high_grades        text[] NOT NULL DEFAULT '{D}',  -- a notice to a customer of these grades makes a call task
    unanswered_notices int NOT NULL DEFAULT 3 CHECK (unanswered_notices >= 0),  -- 0: off
    round_robin_next   int NOT NULL DEFAULT 0,
    updated_at         timestamptz NOT NULL
);

ALTER TABLE dunning_customers ADD COLUMN owner text;  -- the collector whose portfolio the customer is in
ALTER TABLE dunning_customers ADD COLUMN risk_grade text;

ALTER TABLE collector_tasks ADD COLUMN rule text NOT NULL DEFAULT 'step';
UPDATE collector_tasks SET rule = 'contact_failed' WHERE kind = 'contact_failed';
ALTER TABLE collector_tasks ALTER COLUMN notice_id DROP NOT NULL;  -- a broken promise, a call-back: no notice
ALTER TABLE collector_tasks ADD COLUMN assigned_to text;
ALTER TABLE collector_tasks ADD COLUMN assigned_at timestamptz;
ALTER TABLE collector_tasks ADD COLUMN assigned_by text;
CREATE INDEX collector_tasks_worklist ON collector_tasks (tenant_id, assigned_to, priority DESC) WHERE status = 'open';
CREATE INDEX collector_tasks_of_customer ON collector_tasks (tenant_id, customer_id) WHERE status = 'open';

CREATE TABLE contact_log (
    tenant_id    text NOT NULL,
    entry_id     uuid NOT NULL,  -- the event's id: a redelivered event adds nothing
    customer_id  text NOT NULL,
    at           timestamptz NOT NULL,
    kind         text NOT NULL,  -- notice, notice_sent, call, note, promise, payment, dispute_opened, correction ...
    actor        text NOT NULL,  -- who: an API key id, a billing source, dunning, the customer
    channel      text,
    amount_minor bigint,
    currency     char(3),
    ref          text,  -- what it is about: a notification key, a promise, a task ...
    note         text,
    corrects     uuid,  -- a correction names the entry it corrects
    detail       jsonb NOT NULL DEFAULT '{}',
    recorded_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, entry_id)
);
CREATE INDEX contact_log_timeline ON contact_log (tenant_id, customer_id, at DESC, entry_id);

CREATE FUNCTION contact_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the contact log is append-only: add a correction instead';
END $$;
CREATE TRIGGER contact_log_append_only BEFORE UPDATE OR DELETE ON contact_log
    FOR EACH ROW EXECUTE FUNCTION contact_log_append_only();

-- "no answer to N notices" counts a customer's notices since their last answer
CREATE INDEX notices_by_customer ON notices (tenant_id, customer_id, created_at);
