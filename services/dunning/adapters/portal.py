"""The portal's storage: its signing key, each tenant's portal settings, and what a customer
sees (their language and time zone, open cases with their items, what they have arranged)."""
from __future__ import annotations

from datetime import datetime

import asyncpg

Db = asyncpg.Connection | asyncpg.Pool


async def signing_key(db: Db) -> bytes:
    return bytes.fromhex(await db.fetchval("SELECT key FROM portal_keys WHERE id = 1"))


async def settings(db: Db, tenant_id: str) -> dict:
    row = await db.fetchrow("SELECT * FROM portal_settings WHERE tenant_id = $1", tenant_id)
    if row is None:
        return {"tenant_id": tenant_id, "payment_instructions": {}, "link_days": 30, "updated_at": None,
                "updated_by": None}
    return dict(row)


async def link_days(db: Db, tenant_id: str) -> int:
    return await db.fetchval("SELECT link_days FROM portal_settings WHERE tenant_id = $1", tenant_id) or 30


async def put_settings(db: Db, tenant_id: str, instructions: dict[str, str], link_days: int, by: str,
                       now: datetime) -> dict:
    await db.execute(
        "INSERT INTO portal_settings (tenant_id, payment_instructions, link_days, updated_at, updated_by)"
        " VALUES ($1, $2::jsonb, $3, $4, $5) ON CONFLICT (tenant_id) DO UPDATE SET"
        " payment_instructions = EXCLUDED.payment_instructions, link_days = EXCLUDED.link_days,"
        " updated_at = EXCLUDED.updated_at, updated_by = EXCLUDED.updated_by",
        tenant_id, instructions, link_days, now, by)
    return await settings(db, tenant_id)


async def customer(db: Db, tenant_id: str, customer_id: str) -> asyncpg.Record | None:
    return await db.fetchrow(
        "SELECT customer_id, language, timezone FROM dunning_customers WHERE tenant_id = $1 AND customer_id = $2",
        tenant_id, customer_id)


async def open_items(db: Db, tenant_id: str, customer_id: str) -> list[asyncpg.Record]:
    """The customer's open invoices in open cases, with fees and interest charged so far and what
    already holds each (a promise, plan or dispute), oldest due first."""
    return await db.fetch(
        "SELECT i.case_id, i.invoice_id, i.number, i.currency, i.amount_minor, i.open_minor, i.due_date,"
        " i.policy_tenant, i.policy_name, i.policy_version,"
        " coalesce((SELECT sum(amount_minor) FROM charges ch WHERE ch.tenant_id = i.tenant_id"
        "   AND ch.invoice_id = i.invoice_id AND ch.kind <> 'interest'), 0) AS fees_minor,"
        " coalesce((SELECT sum(amount_minor) FROM charges ch WHERE ch.tenant_id = i.tenant_id"
        "   AND ch.invoice_id = i.invoice_id AND ch.kind = 'interest'), 0) AS interest_minor,"
        " EXISTS (SELECT 1 FROM promises p WHERE p.tenant_id = i.tenant_id AND p.status = 'open'"
        "   AND i.invoice_id = ANY(p.invoice_ids)) AS promised,"
        " EXISTS (SELECT 1 FROM payment_plans p WHERE p.tenant_id = i.tenant_id AND p.status = 'active'"
        "   AND i.invoice_id = ANY(p.invoice_ids)) AS in_plan,"
        " EXISTS (SELECT 1 FROM disputes d WHERE d.tenant_id = i.tenant_id AND d.status = 'open'"
        "   AND d.customer_id = i.customer_id AND (d.invoice_id = i.invoice_id OR d.invoice_id IS NULL)) AS disputed"
        " FROM case_items i JOIN cases c ON c.tenant_id = i.tenant_id AND c.case_id = i.case_id"
        " WHERE i.tenant_id = $1 AND i.customer_id = $2 AND i.status = 'open' AND c.status = 'open'"
        " ORDER BY i.currency, i.due_date, i.number", tenant_id, customer_id)
