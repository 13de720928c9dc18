"""SQL behind the collection KPIs: a period's notices, promises and closed tasks, and the
payments on their invoices up to 7 days after the period."""
from __future__ import annotations

from datetime import datetime

import asyncpg

from services.dunning.domain.kpis import WINDOW, DoneTask, Payment, PromiseRow, SentNotice


async def notices(conn: asyncpg.Connection | asyncpg.Pool, tenant_id: str, start: datetime,
                  end: datetime) -> list[SentNotice]:
    rows = await conn.fetch(
        "SELECT step, channel, currency, created_at, items FROM notices WHERE tenant_id = $1"
        " AND created_at >= $2 AND created_at < $3", tenant_id, start, end)
    return [SentNotice(r["step"], r["channel"], r["currency"], r["created_at"],
                       tuple((i["invoice_id"], int(i["open_amount_minor"])) for i in r["items"])) for r in rows]


async def promises(conn: asyncpg.Connection | asyncpg.Pool, tenant_id: str, start: datetime,
                   end: datetime) -> list[PromiseRow]:
    rows = await conn.fetch(
        "SELECT taken_by, currency, amount_minor, status, paid_minor FROM promises WHERE tenant_id = $1"
        " AND created_at >= $2 AND created_at < $3", tenant_id, start, end)
    return [PromiseRow(r["taken_by"], r["currency"], r["amount_minor"], r["status"], r["paid_minor"]) for r in rows]


async def done_tasks(conn: asyncpg.Connection | asyncpg.Pool, tenant_id: str, start: datetime,
                     end: datetime) -> list[DoneTask]:
    rows = await conn.fetch(
        "SELECT done_by, outcome, currency, done_at, invoice_ids, overdue_minor FROM collector_tasks"
        " WHERE tenant_id = $1 AND status = 'done' AND done_at >= $2 AND done_at < $3", tenant_id, start, end)
    return [DoneTask(r["done_by"], r["outcome"], r["currency"], r["done_at"], tuple(str(i) for i in r["invoice_ids"]),
                     r["overdue_minor"]) for r in rows]


async def payments(conn: asyncpg.Connection | asyncpg.Pool, tenant_id: str, start: datetime,
                   end: datetime) -> list[Payment]:
    """Payments (reversals negative) from the period's start to 7 days after its end."""
    rows = await conn.fetch(
        "SELECT invoice_id, amount_minor, paid_at FROM item_payments WHERE tenant_id = $1"
        " AND paid_at > $2 AND paid_at <= $3", tenant_id, start, end + WINDOW)
    return [Payment(str(r["invoice_id"]), r["amount_minor"], r["paid_at"]) for r in rows]


async def collectors_by_key(conn: asyncpg.Connection | asyncpg.Pool, tenant_id: str) -> dict[str, str]:
    rows = await conn.fetch("SELECT key_id, collector_id FROM collectors WHERE tenant_id = $1 AND key_id IS NOT NULL",
                            tenant_id)
    return {r["key_id"]: r["collector_id"] for r in rows}
