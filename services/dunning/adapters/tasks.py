"""SQL of collector tasks: work for a person that dunning makes (a call or letter step, a notice
the notifier could not deliver), one per source key."""
from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg

from services.dunning.domain.desk import REACHED

# From a notice row `n`: the task's fields. Its priority is 0 until service_layer/desk.py
# (place_new) weighs it: owed x days overdue x the customer's grade weight.
_FROM_NOTICE = """
    SELECT n.tenant_id, gen_random_uuid(), {source}, {kind}, n.case_id, n.customer_id, n.currency, n.step,
           n.notice_id, {reason}, e.invoice_ids, n.total_minor, e.days, 0,
           $2::timestamptz, $2::timestamptz, {rule}
    FROM notices n CROSS JOIN LATERAL (
        SELECT array_agg((x->>'invoice_id')::uuid) AS invoice_ids, coalesce(max((x->>'days_overdue')::int), 0) AS days
        FROM jsonb_array_elements(n.items) AS x) e"""
_INSERT = ("INSERT INTO collector_tasks (tenant_id, task_id, source_key, kind, case_id, customer_id, currency, step,"
           " notice_id, reason, invoice_ids, overdue_minor, days_overdue, priority, due_at, created_at, rule)")


async def from_steps(conn: asyncpg.Connection, tenant_id: str, notice_ids: list[uuid.UUID],
                     now: datetime) -> list[asyncpg.Record]:
    """A task for each call or letter notice among these; the new ones."""
    if not notice_ids:
        return []
    return await conn.fetch(
        _INSERT + _FROM_NOTICE.format(source="n.notification_key",
                                      kind="CASE n.channel WHEN 'letter' THEN 'letter' ELSE 'call' END", reason="NULL",
                                      rule="'step'")
        + " WHERE n.tenant_id = $1 AND n.notice_id = ANY($3::uuid[]) AND n.channel IN ('collector_call', 'letter')"
          " ORDER BY n.case_id, n.sequence ON CONFLICT (tenant_id, source_key) DO NOTHING RETURNING *",
        tenant_id, now, notice_ids)


async def from_failures(conn: asyncpg.Connection, failures: list[tuple[str, str, str]],
                        now: datetime) -> list[asyncpg.Record]:
    """failures: (tenant, notification key, reason) of notices the notifier could not deliver; a
    task to reach the customer another way for each one of a dunning step (others are ignored)."""
    if not failures:
        return []
    return await conn.fetch(
        _INSERT + _FROM_NOTICE.format(source="'failed:' || n.notification_key", kind="'contact_failed'",
                                      reason="f.reason", rule="'contact_failed'")
        + " JOIN unnest($1::text[], $3::text[], $4::text[]) AS f(tenant_id, notification_key, reason)"
          " ON f.tenant_id = n.tenant_id AND f.notification_key = n.notification_key"
          " ORDER BY n.tenant_id, n.case_id, n.sequence ON CONFLICT (tenant_id, source_key) DO NOTHING RETURNING *",
        [f[0] for f in failures], now, [f[1] for f in failures], [f[2][:500] for f in failures])


# What counts as the customer answering: after it, notices are no longer "unanswered".
ANSWERS = ("payment", "promise", "plan_agreed", "dispute_opened", "balance_confirmed", "balance_contested",
           "settlement_accepted", "email_in", "letter_in", "visit")


async def from_rules(conn: asyncpg.Connection, tenant_id: str, notice_ids: list[uuid.UUID], now: datetime,
                     message_channels: tuple[str, ...]) -> list[asyncpg.Record]:
    """A call task for a customer sent one of these notices, when no task for them is open and a
    rule of the tenant's desk says so: the notice is for a high amount, the customer's risk
    grade is a high one, or this is the N-th notice (a send: its email and SMS are one) since they
    last answered (paid, promised, disputed, wrote, or spoke with a collector). One per customer."""
    if not notice_ids:
        return []
    return await conn.fetch(
        _INSERT + """
    SELECT DISTINCT ON (n.customer_id) n.tenant_id, gen_random_uuid(), 'rule:' || r.rule || ':' || n.notification_key,
           'call', n.case_id, n.customer_id, n.currency, n.step, n.notice_id, NULL, e.invoice_ids, n.total_minor, e.days,
           0, $2::timestamptz, $2::timestamptz, r.rule
    FROM notices n
    LEFT JOIN dunning_customers d ON d.tenant_id = n.tenant_id AND d.customer_id = n.customer_id
    LEFT JOIN desk_settings s ON s.tenant_id = n.tenant_id
    CROSS JOIN LATERAL (
        SELECT array_agg((x->>'invoice_id')::uuid) AS invoice_ids, coalesce(max((x->>'days_overdue')::int), 0) AS days
        FROM jsonb_array_elements(n.items) AS x) e
    CROSS JOIN LATERAL (SELECT coalesce(s.unanswered_notices, 3) AS needed) u
    CROSS JOIN LATERAL (SELECT CASE
        WHEN (s.high_amount ->> n.currency)::bigint <= n.total_minor THEN 'high_amount'
        WHEN d.risk_grade = ANY(coalesce(s.high_grades, '{D}')) THEN 'high_risk'
        WHEN u.needed > 0 AND (
            SELECT count(DISTINCT (m.case_id, m.created_at)) FROM notices m
            WHERE m.tenant_id = n.tenant_id AND m.customer_id = n.customer_id AND m.channel = ANY($4::text[])
              AND m.created_at > coalesce((
                  SELECT max(l.at) FROM contact_log l WHERE l.tenant_id = n.tenant_id AND l.customer_id = n.customer_id
                  AND (l.kind = ANY($5::text[]) OR (l.kind = 'call' AND l.detail->>'outcome' = ANY($6::text[])))),
                  '-infinity')) >= u.needed THEN 'unanswered'
        END AS rule) r
    WHERE n.tenant_id = $1 AND n.notice_id = ANY($3::uuid[]) AND n.channel = ANY($4::text[]) AND r.rule IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM collector_tasks t WHERE t.tenant_id = n.tenant_id AND t.customer_id = n.customer_id
                      AND t.status = 'open')
    ORDER BY n.customer_id, n.total_minor DESC
    ON CONFLICT (tenant_id, source_key) DO NOTHING RETURNING *""",
        tenant_id, now, notice_ids, list(message_channels), list(ANSWERS), sorted(REACHED))


async def from_broken(conn: asyncpg.Connection, broken: list[tuple[str, str, uuid.UUID, str, str]],
                      now: datetime) -> list[asyncpg.Record]:
    """broken: (tenant, customer, case, promise or plan id, rule): a call task about the case's
    open items, unless one is open for the customer already."""
    if not broken:
        return []
    return await conn.fetch(
        _INSERT + """
    SELECT DISTINCT ON (b.tenant_id, b.customer_id) b.tenant_id, gen_random_uuid(), 'rule:' || b.rule || ':' || b.ref,
           'call', c.case_id, c.customer_id, c.currency, b.rule, NULL, NULL, o.invoice_ids, o.open_minor, o.days,
           0, $2::timestamptz, $2::timestamptz, b.rule
    FROM unnest($1::text[], $3::text[], $4::uuid[], $5::text[], $6::text[]) AS b(tenant_id, customer_id, case_id, ref, rule)
    JOIN cases c ON c.tenant_id = b.tenant_id AND c.case_id = b.case_id
    CROSS JOIN LATERAL (
        SELECT coalesce(array_agg(i.invoice_id ORDER BY i.due_date), '{}') AS invoice_ids,
               coalesce(sum(i.open_minor), 0) AS open_minor,
               coalesce(max(greatest(0, $2::timestamptz::date - i.due_date)), 0) AS days
        FROM case_items i WHERE i.tenant_id = c.tenant_id AND i.case_id = c.case_id AND i.status = 'open') o
    WHERE o.open_minor > 0 AND NOT EXISTS (
        SELECT 1 FROM collector_tasks t WHERE t.tenant_id = b.tenant_id AND t.customer_id = b.customer_id
        AND t.status = 'open')
    ORDER BY b.tenant_id, b.customer_id
    ON CONFLICT (tenant_id, source_key) DO NOTHING RETURNING *""",
        [b[0] for b in broken], now, [b[1] for b in broken], [b[2] for b in broken], [b[3] for b in broken],
        [b[4] for b in broken])


async def call_back(conn: asyncpg.Connection, task: asyncpg.Record, at: datetime, now: datetime) -> asyncpg.Record:
    """A new call task at the time the customer asked to be called back, like the one it follows."""
    return await conn.fetchrow(
        _INSERT + " SELECT tenant_id, gen_random_uuid(), 'call_back:' || task_id, 'call', case_id, customer_id,"
        " currency, step, notice_id, NULL, invoice_ids, overdue_minor, days_overdue, priority, $3, $4, 'call_back'"
        " FROM collector_tasks WHERE tenant_id = $1 AND task_id = $2 RETURNING *",
        task["tenant_id"], task["task_id"], at, now)


async def place(conn: asyncpg.Connection, tenant_id: str, placed: list[tuple[uuid.UUID, int, str | None, datetime]],
                by: str, now: datetime) -> list[asyncpg.Record]:
    """placed: (task, priority, collector or None, due at)."""
    if not placed:
        return []
    return await conn.fetch(
        "UPDATE collector_tasks t SET priority = p.priority, assigned_to = p.collector, due_at = p.due_at,"
        " assigned_at = CASE WHEN p.collector IS NULL THEN NULL ELSE $6::timestamptz END,"
        " assigned_by = CASE WHEN p.collector IS NULL THEN NULL ELSE $7 END"
        " FROM unnest($2::uuid[], $3::bigint[], $4::text[], $5::timestamptz[]) AS p(task_id, priority, collector, due_at)"
        " WHERE t.tenant_id = $1 AND t.task_id = p.task_id RETURNING t.*",
        tenant_id, [p[0] for p in placed], [p[1] for p in placed], [p[2] for p in placed], [p[3] for p in placed],
        now, by)


async def waiting(conn: asyncpg.Connection, tenant_id: str, limit: int) -> list[asyncpg.Record]:
    """Open tasks nobody holds, the most urgent first (locked: one placement at a time)."""
    return await conn.fetch(
        "SELECT * FROM collector_tasks WHERE tenant_id = $1 AND status = 'open' AND assigned_to IS NULL"
        " ORDER BY priority DESC, created_at LIMIT $2 FOR UPDATE", tenant_id, limit)


async def get(conn: asyncpg.Connection | asyncpg.Pool, tenant_id: str, task_id: uuid.UUID, *,
              lock: bool = False) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM collector_tasks WHERE tenant_id = $1 AND task_id = $2"
                               + (" FOR UPDATE" if lock else ""), tenant_id, task_id)


async def worklist(pool: asyncpg.Pool, tenant_id: str, collector_id: str | None, limit: int,
                   now: datetime) -> list[asyncpg.Record]:
    """A collector's open tasks (None: the team's queue): what is due now first, then the most
    urgent; each with the customer's risk grade and what their case still owes."""
    return await pool.fetch(
        "SELECT t.*, d.risk_grade, d.language AS customer_language, o.case_open_minor"
        " FROM collector_tasks t"
        " LEFT JOIN dunning_customers d ON d.tenant_id = t.tenant_id AND d.customer_id = t.customer_id"
        " LEFT JOIN LATERAL (SELECT coalesce(sum(i.open_minor), 0) AS case_open_minor FROM case_items i"
        "  WHERE i.tenant_id = t.tenant_id AND i.case_id = t.case_id AND i.status = 'open') o ON true"
        " WHERE t.tenant_id = $1 AND t.status = 'open' AND t.assigned_to IS NOT DISTINCT FROM $2"
        " ORDER BY t.due_at <= $4 DESC, t.priority DESC, t.created_at LIMIT $3", tenant_id, collector_id, limit, now)


async def listing(pool: asyncpg.Pool, tenant_id: str, status: str | None, kind: str | None,
                  customer_id: str | None, limit: int, assigned_to: str | None = None) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT * FROM collector_tasks WHERE tenant_id = $1 AND ($2::text IS NULL OR status = $2)"
        " AND ($3::text IS NULL OR kind = $3) AND ($4::text IS NULL OR customer_id = $4)"
        " AND ($6::text IS NULL OR assigned_to = $6)"
        " ORDER BY status = 'open' DESC, priority DESC, created_at LIMIT $5", tenant_id, status, kind, customer_id, limit,
        assigned_to)


async def close(conn: asyncpg.Connection, tenant_id: str, task_id: uuid.UUID, outcome: str, note: str | None, by: str,
                now: datetime) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "UPDATE collector_tasks SET status = 'done', outcome = $3, note = $4, done_by = $5, done_at = $6"
        " WHERE tenant_id = $1 AND task_id = $2 AND status = 'open' RETURNING *", tenant_id, task_id, outcome, note, by,
        now)
