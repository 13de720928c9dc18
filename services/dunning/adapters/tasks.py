"""SQL of collector tasks: work for a person that dunning makes (a call or letter step, a notice
the notifier could not deliver), one per source key."""
from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg

# From a notice row `n`: the task's fields. Priority: what is owed in major units (minor / 100)
# times the days the oldest listed item is overdue (at least 1).
_FROM_NOTICE = """
    SELECT n.tenant_id, gen_random_uuid(), {source}, {kind}, n.case_id, n.customer_id, n.currency, n.step,
           n.notice_id, {reason}, e.invoice_ids, n.total_minor, e.days, (n.total_minor / 100) * greatest(e.days, 1),
           $2::timestamptz, $2::timestamptz
    FROM notices n CROSS JOIN LATERAL (
        SELECT array_agg((x->>'invoice_id')::uuid) AS invoice_ids, coalesce(max((x->>'days_overdue')::int), 0) AS days
        FROM jsonb_array_elements(n.items) AS x) e"""
_INSERT = ("INSERT INTO collector_tasks (tenant_id, task_id, source_key, kind, case_id, customer_id, currency, step,"
           " notice_id, reason, invoice_ids, overdue_minor, days_overdue, priority, due_at, created_at)")


async def from_steps(conn: asyncpg.Connection, tenant_id: str, notice_ids: list[uuid.UUID],
                     now: datetime) -> list[asyncpg.Record]:
    """A task for each call or letter notice among these; the new ones."""
    if not notice_ids:
        return []
    return await conn.fetch(
        _INSERT + _FROM_NOTICE.format(source="n.notification_key",
                                      kind="CASE n.channel WHEN 'letter' THEN 'letter' ELSE 'call' END", reason="NULL")
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
                                      reason="f.reason")
        + " JOIN unnest($1::text[], $3::text[], $4::text[]) AS f(tenant_id, notification_key, reason)"
          " ON f.tenant_id = n.tenant_id AND f.notification_key = n.notification_key"
          " ORDER BY n.tenant_id, n.case_id, n.sequence ON CONFLICT (tenant_id, source_key) DO NOTHING RETURNING *",
        [f[0] for f in failures], now, [f[1] for f in failures], [f[2][:500] for f in failures])


async def listing(pool: asyncpg.Pool, tenant_id: str, status: str | None, kind: str | None,
                  customer_id: str | None, limit: int) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT * FROM collector_tasks WHERE tenant_id = $1 AND ($2::text IS NULL OR status = $2)"
        " AND ($3::text IS NULL OR kind = $3) AND ($4::text IS NULL OR customer_id = $4)"
        " ORDER BY status = 'open' DESC, priority DESC, created_at LIMIT $5", tenant_id, status, kind, customer_id, limit)


async def close(conn: asyncpg.Connection, tenant_id: str, task_id: uuid.UUID, outcome: str, note: str | None, by: str,
                now: datetime) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "UPDATE collector_tasks SET status = 'done', outcome = $3, note = $4, done_by = $5, done_at = $6"
        " WHERE tenant_id = $1 AND task_id = $2 AND status = 'open' RETURNING *", tenant_id, task_id, outcome, note, by,
        now)
