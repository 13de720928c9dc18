"""Tenants' scorecards and credit policies (JSON documents; the shipped ones where a tenant has none)."""
from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import asyncpg

from services.risk.domain.credit import CreditPolicy
from services.risk.domain.scorecard import Scorecard

_SHIPPED = Scorecard()


async def scorecards_of(conn: asyncpg.Connection, tenants: Iterable[str]) -> dict[str, Scorecard]:
    tenants = sorted(set(tenants))
    rows = await conn.fetch("SELECT tenant_id, document::text AS doc FROM scorecards WHERE tenant_id = ANY($1::text[])",
                            tenants)
    own = {r["tenant_id"]: Scorecard.model_validate_json(r["doc"]) for r in rows}
    return {t: own.get(t, _SHIPPED) for t in tenants}


async def scorecard(conn: asyncpg.Connection, tenant_id: str) -> tuple[Scorecard, bool]:
    """The tenant's scorecard and whether it is the tenant's own."""
    doc = await conn.fetchval("SELECT document::text FROM scorecards WHERE tenant_id = $1", tenant_id)
    return (Scorecard.model_validate_json(doc), True) if doc else (_SHIPPED, False)


async def save_scorecard(conn: asyncpg.Connection, tenant_id: str, card: Scorecard, at: datetime, by: str | None) -> None:
    await conn.execute(
        "INSERT INTO scorecards (tenant_id, document, updated_at, updated_by) VALUES ($1, $2::text::jsonb, $3, $4)"
        " ON CONFLICT (tenant_id) DO UPDATE SET document = EXCLUDED.document, updated_at = EXCLUDED.updated_at,"
        " updated_by = EXCLUDED.updated_by", tenant_id, card.model_dump_json(), at, by)


async def credit_policy(conn: asyncpg.Connection, tenant_id: str) -> tuple[CreditPolicy, bool]:
    doc = await conn.fetchval("SELECT document::text FROM credit_policies WHERE tenant_id = $1", tenant_id)
    return (CreditPolicy.model_validate_json(doc), True) if doc else (CreditPolicy(), False)


async def save_credit_policy(conn: asyncpg.Connection, tenant_id: str, policy: CreditPolicy, at: datetime,
                             by: str | None) -> None:
    await conn.execute(
        "INSERT INTO credit_policies (tenant_id, document, updated_at, updated_by) VALUES ($1, $2::text::jsonb, $3, $4)"
        " ON CONFLICT (tenant_id) DO UPDATE SET document = EXCLUDED.document, updated_at = EXCLUDED.updated_at,"
        " updated_by = EXCLUDED.updated_by", tenant_id, policy.model_dump_json(), at, by)
