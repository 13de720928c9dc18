"""Read models of the dunning API: cases with their items, steps, notices and charges."""
from __future__ import annotations

import uuid
from collections import defaultdict

import asyncpg


def _group(rows, key: str) -> dict:
    out: dict = defaultdict(list)
    for r in rows:
        out[r[key]].append(r)
    return out


async def cases(pool: asyncpg.Pool, tenant_id: str, *, case_id: uuid.UUID | None = None,
                customer_id: str | None = None, status: str | None = None, invoice_id: uuid.UUID | None = None,
                limit: int = 100) -> tuple[list, dict, dict, dict, dict]:
    """(cases, items by case, steps by invoice, notices by case, charges by case)."""
    async with pool.acquire() as conn:
        found = await conn.fetch(
            "SELECT * FROM cases c WHERE tenant_id = $1 AND ($2::uuid IS NULL OR case_id = $2)"
            " AND ($3::text IS NULL OR customer_id = $3) AND ($4::text IS NULL OR status = $4)"
            " AND ($5::uuid IS NULL OR EXISTS (SELECT 1 FROM case_items i WHERE i.tenant_id = c.tenant_id"
            "   AND i.case_id = c.case_id AND i.invoice_id = $5))"
            " ORDER BY opened_at, case_id LIMIT $6",
            tenant_id, case_id, customer_id, status, invoice_id, limit)
        ids = [c["case_id"] for c in found]
        items = await conn.fetch(
            "SELECT * FROM case_items WHERE tenant_id = $1 AND case_id = ANY($2::uuid[]) ORDER BY due_date, number",
            tenant_id, ids)
        steps = await conn.fetch(
            "SELECT s.* FROM item_steps s JOIN case_items i USING (tenant_id, invoice_id)"
            " WHERE s.tenant_id = $1 AND i.case_id = ANY($2::uuid[]) ORDER BY s.round, s.due_at, s.position",
            tenant_id, ids)
        notices = await conn.fetch(
            "SELECT * FROM notices WHERE tenant_id = $1 AND case_id = ANY($2::uuid[]) ORDER BY sequence",
            tenant_id, ids)
        charges = await conn.fetch(
            "SELECT * FROM charges WHERE tenant_id = $1 AND case_id = ANY($2::uuid[]) ORDER BY assessed_at, charge_id",
            tenant_id, ids)
    return found, _group(items, "case_id"), _group(steps, "invoice_id"), _group(notices, "case_id"), \
        _group(charges, "case_id")


async def disputes(pool: asyncpg.Pool, tenant_id: str, status: str | None,
                   customer_id: str | None = None) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT * FROM disputes WHERE tenant_id = $1 AND ($2::text IS NULL OR status = $2)"
        " AND ($3::text IS NULL OR customer_id = $3) ORDER BY opened_at", tenant_id, status, customer_id)


async def arrangements(pool: asyncpg.Pool, table: str, tenant_id: str, status: str | None,
                       customer_id: str | None) -> list[asyncpg.Record]:
    assert table in ("promises", "payment_plans", "settlement_offers")
    return await pool.fetch(
        f"SELECT * FROM {table} WHERE tenant_id = $1 AND ($2::text IS NULL OR status = $2)"
        " AND ($3::text IS NULL OR customer_id = $3) ORDER BY created_at LIMIT 1000", tenant_id, status, customer_id)


async def plan(pool: asyncpg.Pool, tenant_id: str, plan_id: uuid.UUID):
    row = await pool.fetchrow("SELECT * FROM payment_plans WHERE tenant_id = $1 AND plan_id = $2", tenant_id, plan_id)
    if row is None:
        return None
    return row, await pool.fetch(
        "SELECT * FROM plan_instalments WHERE tenant_id = $1 AND plan_id = $2 ORDER BY sequence", tenant_id, plan_id)


async def dispute_reasons(pool: asyncpg.Pool, tenant_id: str, opened_from, opened_to) -> list[dict]:
    """Disputes opened in the range, per reason code: how many, how they ended, what was credited."""
    where = ("tenant_id = $1 AND ($2::date IS NULL OR opened_at >= $2::date)"
             " AND ($3::date IS NULL OR opened_at < $3::date + 1)")
    rows = await pool.fetch(
        "SELECT reason_code, count(*) AS disputes, count(*) FILTER (WHERE status = 'open') AS open,"
        " count(*) FILTER (WHERE outcome = 'accepted') AS accepted,"
        " count(*) FILTER (WHERE status = 'resolved' AND outcome IS DISTINCT FROM 'accepted') AS rejected"
        f" FROM disputes WHERE {where} GROUP BY reason_code ORDER BY count(*) DESC, reason_code",
        tenant_id, opened_from, opened_to)
    credited: dict[str, dict[str, int]] = defaultdict(dict)
    for r in await pool.fetch(
            "SELECT reason_code, currency, sum(credit_minor)::bigint AS credited FROM disputes"
            f" WHERE {where} AND credit_minor IS NOT NULL GROUP BY reason_code, currency",
            tenant_id, opened_from, opened_to):
        credited[r["reason_code"]][r["currency"]] = r["credited"]
    return [{**dict(r), "credited_minor": credited.get(r["reason_code"], {})} for r in rows]


async def case_file(pool: asyncpg.Pool, tenant_id: str, case_id: uuid.UUID) -> dict | None:
    document = await pool.fetchval("SELECT document FROM case_files WHERE tenant_id = $1 AND case_id = $2",
                                   tenant_id, case_id)
    return document
