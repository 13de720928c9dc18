"""SQL of the collector's desk: collectors, each tenant's desk settings, portfolios."""
from __future__ import annotations

from datetime import datetime

import asyncpg

from services.dunning.domain.desk import Hours, Seat

DEFAULTS = {"assignment": "portfolio", "grade_weights": {"A": "0.5", "B": "1", "C": "1.5", "D": "2"},
            "high_amount": {}, "high_grades": ["D"], "unanswered_notices": 3}


async def put_collector(conn: asyncpg.Connection, tenant_id: str, collector_id: str, fields: dict,
                        now: datetime) -> asyncpg.Record:
    columns = ["name", "key_id", "language", "timezone", "work_start", "work_end", "work_days", "capacity", "active"]
    values = [fields[c] for c in columns]
    return await conn.fetchrow(
        f"INSERT INTO collectors (tenant_id, collector_id, {', '.join(columns)}, updated_at)"
        f" VALUES ($1, $2, {', '.join(f'${n}' for n in range(3, 3 + len(columns)))}, ${3 + len(columns)})"
        " ON CONFLICT (tenant_id, collector_id) DO UPDATE SET "
        + ", ".join(f"{c} = EXCLUDED.{c}" for c in columns) + ", updated_at = EXCLUDED.updated_at RETURNING *",
        tenant_id, collector_id, *values, now)


_WITH_LOAD = ("SELECT c.*, (SELECT count(*) FROM collector_tasks t WHERE t.tenant_id = c.tenant_id"
              " AND t.assigned_to = c.collector_id AND t.status = 'open') AS open_tasks FROM collectors c")


async def collectors(conn: asyncpg.Connection | asyncpg.Pool, tenant_id: str) -> list[asyncpg.Record]:
    """Every collector of the tenant with the open tasks they hold."""
    return await conn.fetch(_WITH_LOAD + " WHERE c.tenant_id = $1 ORDER BY c.collector_id", tenant_id)


async def collector(conn: asyncpg.Connection | asyncpg.Pool, tenant_id: str, collector_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(_WITH_LOAD + " WHERE c.tenant_id = $1 AND c.collector_id = $2", tenant_id, collector_id)


async def collector_of_key(conn: asyncpg.Connection | asyncpg.Pool, tenant_id: str, key_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(_WITH_LOAD + " WHERE c.tenant_id = $1 AND c.key_id = $2", tenant_id, key_id)


def seat(r: asyncpg.Record) -> Seat:
    return Seat(r["collector_id"], r["capacity"], r["open_tasks"], r["active"])


def hours(r: asyncpg.Record) -> Hours:
    return Hours(r["timezone"], r["work_start"], r["work_end"], tuple(r["work_days"]))


async def settings(conn: asyncpg.Connection | asyncpg.Pool, tenant_id: str, *, lock: bool = False) -> dict:
    """The tenant's desk settings (defaults until set). lock: the row is held to the end of the
    transaction (the round-robin cursor moves one assignment at a time)."""
    if lock:
        await conn.execute("INSERT INTO desk_settings (tenant_id, updated_at) VALUES ($1, now())"
                           " ON CONFLICT (tenant_id) DO NOTHING", tenant_id)
    row = await conn.fetchrow("SELECT * FROM desk_settings WHERE tenant_id = $1" + (" FOR UPDATE" if lock else ""),
                              tenant_id)
    if row is None:
        return {**DEFAULTS, "round_robin_next": 0, "updated_at": None}
    return dict(row)


async def put_settings(conn: asyncpg.Connection, tenant_id: str, fields: dict, now: datetime) -> dict:
    columns = ["assignment", "grade_weights", "high_amount", "high_grades", "unanswered_notices"]
    row = await conn.fetchrow(
        "INSERT INTO desk_settings (tenant_id, assignment, grade_weights, high_amount, high_grades, unanswered_notices,"
        " updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (tenant_id) DO UPDATE SET "
        + ", ".join(f"{c} = EXCLUDED.{c}" for c in columns) + ", updated_at = EXCLUDED.updated_at RETURNING *",
        tenant_id, *(fields[c] for c in columns), now)
    return dict(row)


async def move_cursor(conn: asyncpg.Connection, tenant_id: str, cursor: int) -> None:
    await conn.execute("UPDATE desk_settings SET round_robin_next = $2 WHERE tenant_id = $1", tenant_id, cursor)


async def set_owner(conn: asyncpg.Connection, tenant_id: str, customer_id: str, owner: str | None) -> asyncpg.Record:
    return await conn.fetchrow(
        "INSERT INTO dunning_customers (tenant_id, customer_id, owner) VALUES ($1, $2, $3)"
        " ON CONFLICT (tenant_id, customer_id) DO UPDATE SET owner = $3, updated_at = now() RETURNING *",
        tenant_id, customer_id, owner)


async def customers(conn: asyncpg.Connection, tenant_id: str, customer_ids: list[str]) -> dict[str, asyncpg.Record]:
    rows = await conn.fetch(
        "SELECT customer_id, owner, risk_grade FROM dunning_customers WHERE tenant_id = $1"
        " AND customer_id = ANY($2::text[])", tenant_id, customer_ids)
    return {r["customer_id"]: r for r in rows}
