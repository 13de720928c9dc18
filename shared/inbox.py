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
    if not envelopes:
        return set()
    rows = await conn.fetch(
        "INSERT INTO inbox (consumer, event_id, event_type, tenant_id)"
        " SELECT $1, i, y, t FROM unnest($2::uuid[], $3::text[], $4::text[]) AS u(i, y, t)"
        " ON CONFLICT DO NOTHING RETURNING event_id",
        consumer, [e.id for e in envelopes], [e.type for e in envelopes], [e.tenant_id for e in envelopes],
    )
    return {r["event_id"] for r in rows}


async def claim_event(conn: asyncpg.Connection, consumer: str, envelope: Envelope) -> bool:
    """True the first time `consumer` sees this event id; False on every redelivery."""
    return bool(await claim_events(conn, consumer, [envelope]))


async def prune_inbox(pool: asyncpg.Pool, older_than: datetime, limit: int = 10_000) -> int:
    """Forget up to `limit` events handled before `older_than` (redelivery happens within minutes;
    the retention only has to outlast the broker's offset retention)."""
    return int((await pool.execute(
        "DELETE FROM inbox WHERE ctid = ANY(ARRAY(SELECT ctid FROM inbox WHERE processed_at < $1 LIMIT $2))",
        older_than, limit)).split()[-1])
