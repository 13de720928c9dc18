"""Customers' latest assessments (customer_risk) and the history of every move (risk_assessments)."""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from services.risk.domain.scorecard import Assessment

Key = tuple[str, str]


@dataclass(frozen=True)
class Current:
    score: int
    grade: str | None
    segment: str


async def current(conn: asyncpg.Connection, keys: list[Key]) -> dict[Key, Current]:
    rows = await conn.fetch(
        "SELECT r.tenant_id, r.customer_id, r.score, r.grade, r.segment"
        " FROM unnest($1::text[], $2::text[]) AS k(tenant_id, customer_id)"
        " JOIN customer_risk r USING (tenant_id, customer_id)", [k[0] for k in keys], [k[1] for k in keys])
    return {(r["tenant_id"], r["customer_id"]): Current(r["score"], r["grade"], r["segment"]) for r in rows}


async def save_latest(conn: asyncpg.Connection, latest: dict[Key, tuple[Assessment, datetime]]) -> None:
    if not latest:
        return
    keys = list(latest)
    await conn.execute(
        """INSERT INTO customer_risk (tenant_id, customer_id, score, grade, segment, factors, assessed_at)
           SELECT t, c, s, g, seg, f::jsonb, at FROM unnest($1::text[], $2::text[], $3::int[], $4::text[],
             $5::text[], $6::text[], $7::timestamptz[]) AS u(t, c, s, g, seg, f, at)
           ON CONFLICT (tenant_id, customer_id) DO UPDATE SET score = EXCLUDED.score, grade = EXCLUDED.grade,
           segment = EXCLUDED.segment, factors = EXCLUDED.factors, assessed_at = EXCLUDED.assessed_at""",
        [k[0] for k in keys], [k[1] for k in keys], [latest[k][0].score for k in keys],
        [latest[k][0].grade for k in keys], [latest[k][0].segment for k in keys],
        [json.dumps(latest[k][0].factors_json()) for k in keys],
        [latest[k][1] for k in keys])


async def add_history(conn: asyncpg.Connection, moves: list[tuple[Key, Assessment, uuid.UUID, datetime]]) -> None:
    if not moves:
        return
    await conn.execute(
        "INSERT INTO risk_assessments (tenant_id, event_id, customer_id, assessed_at, score, grade, segment)"
        " SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[], $4::timestamptz[], $5::int[], $6::text[],"
        "   $7::text[]) ON CONFLICT DO NOTHING",
        [k[0] for k, _, _, _ in moves], [i for _, _, i, _ in moves], [k[1] for k, _, _, _ in moves],
        [at for _, _, _, at in moves], [a.score for _, a, _, _ in moves], [a.grade for _, a, _, _ in moves],
        [a.segment for _, a, _, _ in moves])
