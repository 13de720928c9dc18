-- Work for a person, made by dunning: a call-task or letter step of a policy, or a notice the
-- notifier could not deliver (opted out, no address, bounced). One per source, whatever is
-- retried or redelivered. The collector's desk (worklist, assignment, outcomes) builds on it.
CREATE TABLE collector_tasks (
    tenant_id     text NOT NULL,
    task_id       uuid NOT NULL,
    source_key    text NOT NULL,  -- the step's notification key; "failed:<key>" for an undelivered notice
    kind          text NOT NULL CHECK (kind IN ('call', 'letter', 'contact_failed')),
    case_id       uuid NOT NULL,
    customer_id   text NOT NULL,
    currency      char(3) NOT NULL,
    step          text NOT NULL,
    notice_id     uuid NOT NULL,
    reason        text,
    invoice_ids   uuid[] NOT NULL,
    overdue_minor bigint NOT NULL,
    days_overdue  int NOT NULL,
    priority      bigint NOT NULL,  -- what is owed (major units) x days overdue: the biggest, oldest first
    due_at        timestamptz NOT NULL,
    status        text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'done')),
    outcome       text,
    note          text,
    created_at    timestamptz NOT NULL,
    done_at       timestamptz,
    done_by       text,
    PRIMARY KEY (tenant_id, task_id),
    UNIQUE (tenant_id, source_key)
);
CREATE INDEX collector_tasks_open ON collector_tasks (tenant_id, priority DESC) WHERE status = 'open';
