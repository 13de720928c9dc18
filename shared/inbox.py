"""Idempotent consumers: the inbox rows of a batch are claimed in the same transaction as the
handlers' changes, all at once; redelivered events find their row and change nothing."""
from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

import asyncpg

from shared.contract import Envelope


async def claim_events(conn: asyncpg.Connection, consumer: str, envelopes: Sequence[Envelope]) -> set[uuid.UUID]:
    """The ids among `envelopes` that `consumer` has not seen before, now recorded as seen. A row
    another transaction is inserting makes this wait for it, so two consumers handed the same
    event (a rebalance) never both apply it."""
    return await claim_ids(conn, consumer, [e.id for e in envelopes], [e.type for e in envelopes],
                           [e.tenant_id for e in envelopes])


async def claim_ids(conn: asyncpg.Connection, consumer: str, ids: Sequence[uuid.UUID], types: Sequence[str],
                    tenants: Sequence[str]) -> set[uuid.UUID]:
    """claim_events for ids of anything (records without an envelope: `record_id`)."""
    if not ids:
        return set()
    rows = await conn.fetch(
        "INSERT INTO inbox (consumer, event_id, event_type, tenant_id)"
        " SELECT $1, i, y, t FROM unnest($2::uuid[], $3::text[], $4::text[]) AS u(i, y, t)"
        " ON CONFLICT DO NOTHING RETURNING event_id",
        consumer, list(ids), list(types), list(tenants),
    )
    return {r["event_id"] for r in rows}


async def seen_ids(db: asyncpg.Pool | asyncpg.Connection, consumer: str, ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    """Which of `ids` `consumer` has handled already."""
    rows = await db.fetch("SELECT event_id FROM inbox WHERE consumer = $1 AND event_id = ANY($2::uuid[])",
                          consumer, list(ids))
    return {r["event_id"] for r in rows}


_RECORDS = uuid.UUID("1d6c3f0e-8a57-4b0e-9a43-5b7c2e9f4d21")


def record_id(record) -> uuid.UUID:
    """An id for a record that carries none (a billing source's raw record): where it sits on the
    broker, and when it was written there, so a redelivery has the same id and a topic created
    anew (an embedded broker's restart) does not collide with the old one."""
    return uuid.uuid5(_RECORDS, f"{record.topic}:{record.partition}:{record.offset}:{record.timestamp}")


async def prune_inbox(pool: asyncpg.Pool, older_than: datetime, limit: int = 10_000) -> int:
    """Forget up to `limit` events handled before `older_than` (redelivery happens within minutes;
    the retention only has to outlast the broker's offset retention)."""
    return int((await pool.execute(
        "DELETE FROM inbox WHERE ctid = ANY(ARRAY(SELECT ctid FROM inbox WHERE processed_at < $1 LIMIT $2))",
        older_than, limit)).split()[-1])
