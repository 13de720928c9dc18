"""Idempotent consumers: the inbox row is written in the same transaction as the handler."""
from __future__ import annotations

import asyncpg

from shared.contract import Envelope


async def claim_event(conn: asyncpg.Connection, consumer: str, envelope: Envelope) -> bool:
    """True the first time `consumer` sees this event id; False on every redelivery."""
    row = await conn.fetchval(
        "INSERT INTO inbox (consumer, event_id, event_type, tenant_id) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT DO NOTHING RETURNING 1",
        consumer,
        envelope.id,
        envelope.type,
        envelope.tenant_id,
    )
    return row is not None
