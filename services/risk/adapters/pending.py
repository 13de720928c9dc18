"""Risk's reorder buffer: events staged with their partition and offset, the state of every
source partition, and the events whose turn has come (services/risk/service_layer/handlers.py,
"event order"). Set-based: a handful of statements per batch whatever its size."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

Partition = tuple[str, int]  # (topic, partition)


@dataclass(frozen=True, slots=True)
class Staged:
    topic: str
    partition: int
    offset: int
    tenant_id: str
    customer_id: str
    event_time: datetime
    envelope: str


@dataclass(frozen=True, slots=True)
class Due:
    topic: str
    partition: int
    offset: int
    tenant_id: str
    customer_id: str
    envelope: str


async def stage(conn: asyncpg.Connection, rows: Sequence[Staged]) -> None:
    if not rows:
        return
    await conn.execute(
        'INSERT INTO risk_pending_events (topic, partition, "offset", tenant_id, customer_id, event_time, envelope)'
        " SELECT * FROM unnest($1::text[], $2::int[], $3::bigint[], $4::text[], $5::text[], $6::timestamptz[],"
        "   $7::text[]) ON CONFLICT DO NOTHING",
        *([getattr(r, f) for r in rows] for f in
          ("topic", "partition", "offset", "tenant_id", "customer_id", "event_time", "envelope")))


async def assign_sort_times(conn: asyncpg.Connection) -> None:
    """Give the events staged since the last call their sort time: the running maximum of event
    time in their partition, in offset order, from where the partition stood; move each
    partition's maximum and next offset along."""
    await conn.execute(
        "INSERT INTO risk_stream_partitions (topic, partition)"
        " SELECT DISTINCT topic, partition FROM risk_pending_events WHERE sort_time IS NULL"
        " ON CONFLICT DO NOTHING")
    # Each partition moves by what was just assigned (the partition row already holds the rest):
    # taking it from every staged event read the whole staging table once a batch.
    moved = await conn.fetch(
        "WITH ordered AS ("
        '  SELECT e.topic, e.partition, e."offset", GREATEST(p.max_time, max(e.event_time) OVER ('
        '    PARTITION BY e.topic, e.partition ORDER BY e."offset")) AS sort_time'
        "  FROM risk_pending_events e JOIN risk_stream_partitions p USING (topic, partition)"
        "  WHERE e.sort_time IS NULL),"
        " assigned AS ("
        "  UPDATE risk_pending_events e SET sort_time = o.sort_time FROM ordered o"
        '  WHERE e.topic = o.topic AND e.partition = o.partition AND e."offset" = o."offset"'
        '  RETURNING e.topic, e.partition, e."offset", e.sort_time)'
        ' SELECT topic, partition, max(sort_time) AS max_time, max("offset") + 1 AS next_offset'
        " FROM assigned GROUP BY topic, partition")
    if moved:
        await conn.execute(
            "UPDATE risk_stream_partitions p SET max_time = GREATEST(p.max_time, s.max_time),"
            "   next_offset = GREATEST(p.next_offset, s.next_offset)"
            " FROM unnest($1::text[], $2::int[], $3::timestamptz[], $4::bigint[]) AS s(topic, partition, max_time,"
            "   next_offset)"
            " WHERE p.topic = s.topic AND p.partition = s.partition",
            [r["topic"] for r in moved], [r["partition"] for r in moved], [r["max_time"] for r in moved],
            [r["next_offset"] for r in moved])


async def note_positions(conn: asyncpg.Connection, positions: Mapping[Partition, tuple[int | None, int | None]]) -> None:
    """What the consumer knows of the partitions it holds: (log end offset or None when not yet
    fetched, committed offset or None). Everything before the committed offset was staged by an
    earlier run."""
    if not positions:
        return
    items = sorted(positions.items())
    await conn.execute(
        "INSERT INTO risk_stream_partitions AS p (topic, partition, next_offset, highwater)"
        " SELECT t, n, coalesce(c, 0), h FROM unnest($1::text[], $2::int[], $3::bigint[], $4::bigint[]) AS x(t, n, h, c)"
        " ON CONFLICT (topic, partition) DO UPDATE SET highwater = coalesce(EXCLUDED.highwater, p.highwater),"
        "   next_offset = GREATEST(p.next_offset, EXCLUDED.next_offset)",
        [k[0] for k, _ in items], [k[1] for k, _ in items], [v[0] for _, v in items], [v[1] for _, v in items])


async def due(conn: asyncpg.Connection, limit: int, *, everything_staged: bool = False,
              retry_failed: bool = False) -> list[Due]:
    """Staged events whose turn has come, in fold order, at most `limit` (more wait for the next
    call). Their turn has come when they sort before the watermark: the least running maximum
    of the partitions not staged to their end, so none of those can still deliver an event that
    sorts before them. `everything_staged` (no consumer to ask: a test driving the handlers, a
    batch replayed by hand) lets every staged event through. A customer with an event that
    failed waits whole unless `retry_failed`."""
    # The watermark first, so that the fold order's index can stop at it: the events beyond it
    # (a rebuild stages far ahead of what it may fold) are never read.
    watermark = None if everything_staged else await conn.fetchval(
        "SELECT min(max_time) FROM risk_stream_partitions WHERE highwater IS NULL OR next_offset < highwater")
    rows = await conn.fetch(
        'SELECT e.topic, e.partition, e."offset", e.tenant_id, e.customer_id, e.envelope'
        " FROM risk_pending_events e"
        " WHERE e.sort_time IS NOT NULL AND e.sort_time < coalesce($2::timestamptz, 'infinity')"
        "   AND ($3 OR NOT EXISTS (SELECT 1 FROM risk_pending_events f WHERE f.failed IS NOT NULL"
        "                         AND f.tenant_id = e.tenant_id AND f.customer_id = e.customer_id))"
        ' ORDER BY e.sort_time, e.topic, e.partition, e."offset" LIMIT $1',
        limit, watermark, retry_failed)
    return [Due(r["topic"], r["partition"], r["offset"], r["tenant_id"], r["customer_id"], r["envelope"])
            for r in rows]


async def first_waiting(conn: asyncpg.Connection) -> dict[Partition, int]:
    """Each partition's lowest offset still staged: everything before it has been folded."""
    return {(r["topic"], r["partition"]): r["first"] for r in await conn.fetch(
        'SELECT topic, partition, min("offset") AS first FROM risk_pending_events GROUP BY topic, partition')}


async def counts(conn: asyncpg.Connection) -> tuple[int, int]:
    """(events waiting, events whose fold failed)."""
    r = await conn.fetchrow("SELECT count(*) AS waiting, count(failed) AS held FROM risk_pending_events")
    return r["waiting"], r["held"]


async def done(conn: asyncpg.Connection, rows: Sequence[Due]) -> None:
    if rows:
        await conn.execute(
            'DELETE FROM risk_pending_events e USING unnest($1::text[], $2::int[], $3::bigint[]) AS d(t, n, o)'
            ' WHERE e.topic = d.t AND e.partition = d.n AND e."offset" = d.o',
            [r.topic for r in rows], [r.partition for r in rows], [r.offset for r in rows])


async def mark_failed(conn: asyncpg.Connection, row: Due, reason: str) -> None:
    await conn.execute(
        'UPDATE risk_pending_events SET failed = $4 WHERE topic = $1 AND partition = $2 AND "offset" = $3',
        row.topic, row.partition, row.offset, reason[:2000])


async def held_back(conn: asyncpg.Connection) -> list[dict]:
    """Events that failed to fold (each holds back its customer's later events), with why."""
    return [dict(r) for r in await conn.fetch(
        'SELECT topic, partition, "offset", tenant_id, customer_id, failed FROM risk_pending_events'
        ' WHERE failed IS NOT NULL ORDER BY sort_time, topic, partition, "offset"')]
