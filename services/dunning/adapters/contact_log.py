"""SQL of the contact log: entries are added (once per id) and read, never changed; the table
refuses UPDATE and DELETE."""
from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg

from services.dunning.domain.contact_log import Entry


async def append(conn: asyncpg.Connection, entries: list[Entry], now: datetime) -> int:
    """Add the entries not there yet (by id); how many were new."""
    if not entries:
        return 0
    rows = await conn.fetch(
        "INSERT INTO contact_log (tenant_id, entry_id, customer_id, at, kind, actor, channel, amount_minor, currency,"
        " ref, note, corrects, detail, recorded_at)"
        " SELECT e.*, $14::timestamptz FROM unnest($1::text[], $2::uuid[], $3::text[], $4::timestamptz[], $5::text[],"
        " $6::text[], $7::text[], $8::bigint[], $9::text[], $10::text[], $11::text[], $12::uuid[], $13::jsonb[]) AS e"
        " ON CONFLICT (tenant_id, entry_id) DO NOTHING RETURNING entry_id",
        [e.tenant_id for e in entries], [e.entry_id for e in entries], [e.customer_id for e in entries],
        [e.at for e in entries], [e.kind for e in entries], [e.actor for e in entries], [e.channel for e in entries],
        [e.amount_minor for e in entries], [e.currency for e in entries], [e.ref for e in entries],
        [e.note for e in entries], [e.corrects for e in entries], [e.detail for e in entries], now)
    return len(rows)


async def timeline(conn: asyncpg.Connection | asyncpg.Pool, tenant_id: str, customer_id: str, *, limit: int,
                   before: datetime | None = None, kinds: list[str] | None = None) -> list[asyncpg.Record]:
    """The customer's entries, newest first (a correction right after what it corrects is not
    needed: it names it)."""
    return await conn.fetch(
        "SELECT * FROM contact_log WHERE tenant_id = $1 AND customer_id = $2"
        " AND ($3::timestamptz IS NULL OR at < $3) AND ($4::text[] IS NULL OR kind = ANY($4))"
        " ORDER BY at DESC, recorded_at DESC, entry_id LIMIT $5", tenant_id, customer_id, before, kinds, limit)


async def get(conn: asyncpg.Connection | asyncpg.Pool, tenant_id: str, entry_id: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM contact_log WHERE tenant_id = $1 AND entry_id = $2", tenant_id, entry_id)
