"""Event order: risk folds a customer's events in one order on every run, a rebuild from the
topics included, so the store and the RiskAssessed events (ids derived from their causes) come
out the same.

A customer's events come on three topics (invoicing, dunning, notifier), and how a consumer
interleaves partitions differs between runs. So each batch is first *staged* (inbox-claimed, in
the batch's transaction) and then folded in a total order that depends only on what the
partitions hold: by sort time, then topic, partition and offset, where an event's sort time is
the running maximum of event time in its partition (a back-dated payment sorts where its
partition stands). An event is folded only once every partition has either been staged to its
end (its log end, as the consumer last saw it) or has moved past the event's sort time, so no
partition can still deliver an event that sorts before it: the watermark. Live, with the
consumer caught up, that is at once; during a rebuild it makes the consumer merge the
partitions by time, as Kafka Streams does.

An event whose fold fails (a bug; the database being away is retried) is kept with the reason
and holds back its customer's later events only; it is retried every minute
(`tahsilat_risk_events_held`, and the log, say so).
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import asyncpg
from prometheus_client import Gauge

from services.risk.adapters import pending
from services.risk.adapters.pending import Due, Partition, Staged
from services.risk.domain.book import EVENT_TYPES
from services.risk.service_layer.handlers import Risk
from shared.contract import Envelope
from shared.db import is_transient
from shared.logging import get_logger
from shared.processing import Event, EventProcessor, Handler, retry_transient

log = get_logger(__name__)

EVENTS_WAITING = Gauge("tahsilat_risk_events_waiting", "Risk events staged and waiting for their turn to fold")
EVENTS_HELD = Gauge("tahsilat_risk_events_held", "Risk events whose fold failed (each holds back its customer)")

# One advance at a time across workers: sort times and the watermark are computed over every partition.
_ADVANCE_LOCK = 0x5249534B  # "RISK"
COUNT_EVERY = 5.0  # seconds between counts of the waiting events (the gauges)

Positions = Callable[[], Mapping[Partition, tuple[int | None, int | None]]]
"""The consumer's view of its source partitions: (log end offset or None, committed offset or None)."""


Parsed = dict[tuple[str, int, int], Event]
"""Events as staged, by (topic, partition, offset), so that folding them in this process need
not parse their envelopes again (a cache: what is not in it is parsed from the staged row)."""
PARSED_KEPT = 50_000  # at most; when full, what another worker folded meanwhile is taken out


def staging_handlers(parsed: Parsed | None = None) -> dict[str, Handler]:
    async def stage(conn: asyncpg.Connection, events: list[Event]) -> None:
        """The batch's handler: keep each event with where it came from, to fold in order later."""
        await pending.stage(conn, [
            Staged(e.record.topic, e.record.partition, e.record.offset, e.envelope.tenant_id, e.payload.customer_id,
                   e.envelope.time, _text(e.record.value))
            for e in events])
        if parsed is not None:  # when full, the new ones wait: events fold roughly in the order staged
            for e in events[:max(0, PARSED_KEPT - len(parsed))]:
                parsed[(e.record.topic, e.record.partition, e.record.offset)] = e

    return {kind: stage for kind in EVENT_TYPES}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class OrderedRisk:
    """The behaviour consumer: stage a batch (EventProcessor: inbox, one transaction, dead
    letters), then fold whatever the watermark lets through. `positions` is None when no
    consumer stands behind the records (tests and tools feeding batches by hand): then
    everything staged is folded at once, still in sort order."""

    def __init__(self, risk: Risk, pool: asyncpg.Pool, processor: EventProcessor, *,
                 positions: Positions | None = None, fold_limit: int = 2000, parsed: Parsed | None = None) -> None:
        self.risk, self.pool, self.processor = risk, pool, processor
        self.positions, self.fold_limit = positions, fold_limit
        self.parsed: Parsed = parsed if parsed is not None else {}  # filled by staging_handlers(parsed)
        self._advancing = asyncio.Lock()  # a batch's advance and the timer's take turns in this process
        self._counted_at = float("-inf")

    async def process_batch(self, records: Sequence[Any]) -> None:
        await self.processor.process_batch(records)
        consumed: dict[Partition, int] = {}
        for r in records:  # ignored and duplicate records count too: the partition is staged past them
            tp = (r.topic, r.partition)
            consumed[tp] = max(consumed.get(tp, 0), r.offset + 1)
        await self.advance(consumed)

    async def advance_if_idle(self, *, retry_failed: bool = False) -> int:
        """The timer's advance: nothing when a batch is folding anyway."""
        if self._advancing.locked():
            return 0
        return await self.advance(retry_failed=retry_failed)

    async def advance(self, consumed: Mapping[Partition, int] | None = None, *, retry_failed: bool = False) -> int:
        """Fold every staged event whose turn has come; returns how many were folded."""
        async with self._advancing:
            return await self._advance(consumed, retry_failed)

    async def _advance(self, consumed: Mapping[Partition, int] | None, retry_failed: bool) -> int:
        total, first = 0, True
        while True:
            stage = first  # the events staged before this call get their sort times once, in the first round
            n = await retry_transient(lambda: self._advance_once(consumed if stage else None, retry_failed, stage),
                                      what="folding staged risk events")
            first, total = False, total + n
            if n < self.fold_limit:
                return total

    async def _advance_once(self, consumed: Mapping[Partition, int] | None, retry_failed: bool, stage: bool) -> int:
        """One transaction: with `stage`, note the partitions' positions and give the staged events
        their sort times (each a read of the events without one: not again for every round of a
        long fold); then fold up to `fold_limit` of those whose turn has come."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _ADVANCE_LOCK)
            if stage and self.positions is not None:
                noted = dict(self.positions())
                for tp, next_offset in (consumed or {}).items():
                    highwater, committed = noted.get(tp, (None, None))
                    noted[tp] = (highwater, max(committed or 0, next_offset))
                await pending.note_positions(conn, noted)
            if stage:
                await pending.assign_sort_times(conn)
            rows = await pending.due(conn, self.fold_limit, everything_staged=self.positions is None,
                                     retry_failed=retry_failed)
            folded = await self._fold(conn, rows) if rows else []
            await pending.done(conn, folded)
            if len(self.parsed) >= PARSED_KEPT:
                await self._forget_folded(conn)
            counted = time.monotonic() - self._counted_at > COUNT_EVERY
            if counted:  # a count reads every waiting event: not after every batch
                waiting, held = await pending.counts(conn)
        if counted:
            self._counted_at = time.monotonic()
            EVENTS_WAITING.set(waiting)
            EVENTS_HELD.set(held)
        return len(folded)  # below the limit (some held back, or no more due): the loop stops

    async def _forget_folded(self, conn: asyncpg.Connection) -> None:
        """Take out of the parse cache the events folded by another worker (or before a rebalance):
        a partition folds in offset order, so those before its first waiting event."""
        first = await pending.first_waiting(conn)
        for key in [k for k in self.parsed if k[2] < first.get(k[:2], k[2] + 1)]:
            del self.parsed[key]

    async def _fold(self, conn: asyncpg.Connection, rows: list[Due]) -> list[Due]:
        """Fold `rows` (in order); returns those folded. A failure is narrowed down to its
        customer and event, which is kept with the reason, holding back that customer only."""
        events = [self.parsed.pop((r.topic, r.partition, r.offset), None) or _event(r) for r in rows]
        try:
            async with conn.transaction():
                await self.risk.fold(conn, events)
            return rows
        except Exception as exc:  # noqa: BLE001 - the database being away is retried whole; the rest is narrowed
            if is_transient(exc):
                raise
        folded: list[Due] = []
        by_customer: dict[tuple[str, str], list[int]] = {}
        for i, r in enumerate(rows):
            by_customer.setdefault((r.tenant_id, r.customer_id), []).append(i)
        for key, indexes in by_customer.items():
            for i in indexes:
                try:
                    async with conn.transaction():
                        await self.risk.fold(conn, [events[i]])
                except Exception as exc:  # noqa: BLE001
                    if is_transient(exc):
                        raise
                    log.error("risk event failed to fold; its customer's later events wait", tenant=key[0],
                              topic=rows[i].topic, partition=rows[i].partition, offset=rows[i].offset, error=repr(exc))
                    await pending.mark_failed(conn, rows[i], repr(exc))
                    break
                folded.append(rows[i])
        return folded


def _event(row: Due) -> Event:
    envelope = Envelope.model_validate_json(row.envelope)
    return Event(envelope, envelope.payload(), None)
