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


async def disputes(pool: asyncpg.Pool, tenant_id: str, status: str | None) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT * FROM disputes WHERE tenant_id = $1 AND ($2::text IS NULL OR status = $2) ORDER BY opened_at",
        tenant_id, status)
