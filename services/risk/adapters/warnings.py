"""The early warnings' store: the facts every decision rests on (risk_signal_observations) and the
warnings raised (risk_early_warnings), written set-based in the consumer's batch transaction."""
from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from services.risk.domain.warnings import Fact, Finding, Lookup

Key = tuple[str, str]  # (tenant, customer)


@dataclass(frozen=True, slots=True)
class Observation:
    tenant_id: str
    customer_id: str
    fact: Fact


async def record_observations(conn: asyncpg.Connection, observations: Sequence[Observation]) -> dict[tuple[str, str], int]:
    """Record the facts in the given order; returns the `seq` of each one recorded now, by
    (event id, kind) - one recorded before (a replayed event the inbox did not stop) is left out."""
    if not observations:
        return {}
    fs = [o.fact for o in observations]
    rows = await conn.fetch(
        "INSERT INTO risk_signal_observations (tenant_id, customer_id, kind, event_id, at, ref, currency, amount_minor,"
        " days_late, detail)"
        " SELECT t, c, k, e, at, r, cur, a, d, x FROM unnest($1::text[], $2::text[], $3::text[], $4::uuid[],"
        "   $5::timestamptz[], $6::text[], $7::text[], $8::bigint[], $9::int[], $10::text[])"
        "   WITH ORDINALITY AS u(t, c, k, e, at, r, cur, a, d, x, n)"
        " ORDER BY n"  # seq follows the given order
        " ON CONFLICT (tenant_id, event_id, kind) DO NOTHING RETURNING event_id, kind, seq",
        [o.tenant_id for o in observations], [o.customer_id for o in observations], [f.kind for f in fs],
        [uuid.UUID(f.event_id) for f in fs], [f.at for f in fs], [f.ref for f in fs], [f.currency for f in fs],
        [f.amount_minor for f in fs], [f.days_late for f in fs], [f.detail for f in fs])
    return {(str(r["event_id"]), r["kind"]): r["seq"] for r in rows}


async def load_facts(conn: asyncpg.Connection, lookups: dict[Key, list[Lookup]]) -> dict[Key, list[tuple[int, Fact]]]:
    """Each customer's recorded facts that its lookups ask for, as (seq, fact) in seq order: one
    statement, one range per customer and kind (the union of its lookups)."""
    ranges: dict[tuple[str, str, str], tuple[datetime, datetime]] = {}
    for (tenant, customer), wanted in lookups.items():
        for lk in wanted:
            k = (tenant, customer, lk.kind)
            lo, hi = ranges.get(k, (lk.lo, lk.hi))
            ranges[k] = (min(lo, lk.lo), max(hi, lk.hi))
    out: dict[Key, list[tuple[int, Fact]]] = {key: [] for key in lookups}
    if not ranges:
        return out
    ks = list(ranges)
    rows = await conn.fetch(
        "SELECT o.seq, o.tenant_id, o.customer_id, o.kind, o.event_id, o.at, o.ref, o.currency, o.amount_minor,"
        " o.days_late, o.detail"
        " FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[]) AS p(t, c, k, lo, hi)"
        " JOIN risk_signal_observations o ON o.tenant_id = p.t AND o.customer_id = p.c AND o.kind = p.k"
        "   AND o.at >= p.lo AND o.at <= p.hi"
        " ORDER BY o.seq",
        [k[0] for k in ks], [k[1] for k in ks], [k[2] for k in ks], [ranges[k][0] for k in ks],
        [ranges[k][1] for k in ks])
    for r in rows:
        out[(r["tenant_id"], r["customer_id"])].append((r["seq"], Fact(
            r["kind"], str(r["event_id"]), r["ref"], r["at"], r["currency"], r["amount_minor"], r["days_late"],
            r["detail"])))
    return out


async def parents(conn: asyncpg.Connection, keys: Sequence[Key]) -> dict[Key, str]:
    """The dealer group (parent customer) of each customer that has one, as risk knows it now."""
    if not keys:
        return {}
    rows = await conn.fetch(
        "SELECT r.tenant_id, r.customer_id, r.parent_id FROM unnest($1::text[], $2::text[]) AS k(t, c)"
        " JOIN risk_customers r ON r.tenant_id = k.t AND r.customer_id = k.c WHERE r.parent_id IS NOT NULL",
        [k[0] for k in keys], [k[1] for k in keys])
    return {(r["tenant_id"], r["customer_id"]): r["parent_id"] for r in rows}


@dataclass(frozen=True, slots=True)
class WarningRow:
    tenant_id: str
    customer_id: str
    finding: Finding
    warning_id: str
    event_id: uuid.UUID
    cause_event_id: uuid.UUID
    group_id: str | None
    raised_at: datetime
    stream_view: dict[str, Any] | None


async def insert_warnings(conn: asyncpg.Connection, rows: Sequence[WarningRow]) -> set[str]:
    """Insert the warnings not raised before (one per customer, signal, scope and window); returns
    the warning ids inserted now."""
    if not rows:
        return set()
    fs = [r.finding for r in rows]
    inserted = await conn.fetch(
        "INSERT INTO risk_early_warnings (tenant_id, customer_id, signal, scope, window_start, window_end, warning_id,"
        " event_id, cause_event_id, group_id, evidence, explanation, raised_at, stream_view)"
        " SELECT t, c, s, sc, ws, we, w, e, ce, g, ev::jsonb, x, ra, sv::jsonb FROM unnest($1::text[], $2::text[],"
        "   $3::text[], $4::text[], $5::timestamptz[], $6::timestamptz[], $7::uuid[], $8::uuid[], $9::uuid[],"
        "   $10::text[], $11::text[], $12::text[], $13::timestamptz[], $14::text[])"
        "   WITH ORDINALITY AS u(t, c, s, sc, ws, we, w, e, ce, g, ev, x, ra, sv, n)"
        " ORDER BY n"
        " ON CONFLICT DO NOTHING RETURNING warning_id",
        [r.tenant_id for r in rows], [r.customer_id for r in rows], [f.signal for f in fs], [f.scope for f in fs],
        [f.window.start for f in fs], [f.window.end for f in fs], [uuid.UUID(r.warning_id) for r in rows],
        [r.event_id for r in rows], [r.cause_event_id for r in rows], [r.group_id for r in rows],
        [json.dumps(f.evidence) for f in fs], [f.explanation for f in fs], [r.raised_at for r in rows],
        [json.dumps(r.stream_view) if r.stream_view is not None else None for r in rows])
    return {str(r["warning_id"]) for r in inserted}


async def customer_warnings(conn: asyncpg.Connection | asyncpg.Pool, tenant_id: str, customer_id: str,
                            limit: int = 50) -> list[dict]:
    """The warnings raised for a customer and, for a dealer group's parent, for the customers
    of its group, newest first."""
    rows = await conn.fetch(
        "SELECT * FROM risk_early_warnings WHERE tenant_id = $1 AND (customer_id = $2 OR group_id = $2)"
        " ORDER BY raised_at DESC, signal, window_start DESC LIMIT $3",
        tenant_id, customer_id, limit)
    return [{
        "warning_id": str(r["warning_id"]), "event_id": str(r["event_id"]), "customer_id": r["customer_id"],
        "group_id": r["group_id"], "signal": r["signal"], "window_start": r["window_start"],
        "window_end": r["window_end"], "evidence": _json(r["evidence"]), "explanation": r["explanation"],
        "raised_at": r["raised_at"],
    } for r in rows]


def _json(value: Any) -> Any:
    """jsonb as the service's pools decode it (shared.db sets a codec), or as plain asyncpg gives it."""
    return json.loads(value) if isinstance(value, str) else value


async def prune_observations(conn: asyncpg.Connection | asyncpg.Pool, keep: timedelta, limit: int = 10_000) -> int:
    """Forget up to `limit` facts more than `keep` older than the latest one recorded: the
    stream's own time, not the wall clock, so a rebuild folding old events keeps what their
    decisions look back at, as the live run did."""
    return int((await conn.execute(
        "DELETE FROM risk_signal_observations WHERE ctid = ANY(ARRAY("
        " SELECT ctid FROM risk_signal_observations"
        " WHERE at < (SELECT max(at) FROM risk_signal_observations) - $1::interval LIMIT $2))",
        keep, limit)).split()[-1])
