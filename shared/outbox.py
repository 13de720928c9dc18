"""Transactional outbox and its relay.

`add_event` writes an envelope in the caller's transaction. `OutboxRelay` claims pending rows
with FOR UPDATE SKIP LOCKED (so relays on several replicas never publish the same row at the
same time), publishes them, and deletes them once the broker has them (Kafka keeps what was
published; the outbox holds only what has not been); failures back off exponentially.
It wakes on LISTEN/NOTIFY and also polls, so a lost notification only delays.
"""
from __future__ import annotations

import asyncio
import contextlib
from functools import lru_cache
from datetime import datetime

import asyncpg
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from shared.contract import Envelope
from shared.contract.events import EventPayload
from shared.logging import get_logger
from shared.metrics import OUTBOX_BACKLOG, OUTBOX_FAILURES, OUTBOX_OLDEST_AGE, OUTBOX_PUBLISHED

log = get_logger(__name__)


async def add_event(conn: asyncpg.Connection, topic: str, envelope: Envelope) -> None:
    await conn.execute(
        "INSERT INTO outbox (event_id, tenant_id, event_type, topic, key, envelope)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        envelope.id,
        envelope.tenant_id,
        envelope.type,
        topic,
        envelope.key,
        envelope.model_dump(mode="json"),
    )


async def add_events(conn: asyncpg.Connection, topic: str, envelopes: list[Envelope]) -> None:
    """All of them in one statement, in the given order (the relay publishes by id); the envelopes
    are serialised by pydantic-core and parsed by PostgreSQL, not by the json module."""
    if not envelopes:
        return
    if len(envelopes) == 1:
        await add_event(conn, topic, envelopes[0])
        return
    await conn.execute(
        "INSERT INTO outbox (event_id, tenant_id, event_type, topic, key, envelope)"
        " SELECT i, t, y, $1, k, e::json"
        " FROM unnest($2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[]) WITH ORDINALITY AS u(i, t, y, k, e, n)"
        " ORDER BY n",
        topic,
        [e.id for e in envelopes],
        [e.tenant_id for e in envelopes],
        [e.type for e in envelopes],
        [e.key for e in envelopes],
        [e.model_dump_json() for e in envelopes],
    )


def envelope_select(payload: type[EventPayload], *, source: str, data: dict[str, str], subject: str) -> str:
    """The select list of an `INSERT INTO outbox (event_id, tenant_id, event_type, key, envelope)`
    built by PostgreSQL from the rows of a set-based use case, so no per-event Python runs: the
    same envelope `new_envelope` gives (its JSON parses to the same Envelope and payload; a
    contract test holds them together). `data` maps every payload field to an SQL expression;
    `$1` must be the tenant id and `$2` the time as ISO text; a fresh event id per row comes from
    the `eid` column the caller's FROM provides (e.g. `gen_random_uuid() AS eid`)."""
    fields = set(payload.model_fields)
    if set(data) != fields:
        raise ValueError(f"{payload.__name__}: SQL fields {sorted(data)} differ from the model's {sorted(fields)}")
    pairs = ", ".join(f"'{name}', {expr}" for name, expr in data.items())
    return (
        f"eid, $1, '{payload.event_type}', $1 || ':' || ({data['customer_id']}),"
        f" json_build_object('id', eid, 'type', '{payload.event_type}', 'version', {payload.event_version},"
        f" 'source', '{source}', 'time', $2::text, 'tenant_id', $1::text, 'subject', {subject},"
        f" 'correlation_id', eid::text, 'causation_id', NULL, 'data', json_build_object({pairs}))"
    )


def iso_time(moment: datetime) -> str:
    """An envelope's `time` as new_envelope's JSON writes it."""
    return moment.isoformat().replace("+00:00", "Z")


async def outbox_backlog(pool: asyncpg.Pool) -> tuple[int, float]:
    row = await pool.fetchrow(
        "SELECT count(*) AS n, coalesce(extract(epoch FROM now() - min(created_at)), 0) AS age"
        " FROM outbox"
    )
    return int(row["n"]), float(row["age"])


class OutboxRelay:
    def __init__(
        self,
        pool: asyncpg.Pool,
        producer,
        *,
        service: str,
        batch_size: int = 2000,
        poll_interval: float = 1.0,
        max_backoff: float = 60.0,
        max_event_bytes: int = 1_000_000,
    ) -> None:
        self.pool = pool
        self.producer = producer
        self.service = service
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.max_backoff = max_backoff
        self.max_event_bytes = max_event_bytes  # under Kafka's default message.max.bytes (1 MiB)
        self._wake = asyncio.Event()
        self._paused = False
        partitioner = DefaultPartitioner()
        # murmur2 runs in Python; a customer's key comes back with each of their events.
        self._partition = lru_cache(maxsize=100_000)(
            lambda key, parts: partitioner(key.encode(), list(parts), list(parts)))

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._paused = False
        self._wake.set()

    async def run(self) -> None:
        listener = await self.pool.acquire()
        await listener.add_listener("outbox", self._on_notify)
        try:
            while True:
                if not self._paused:
                    try:
                        while await self.publish_batch() == self.batch_size:
                            pass
                        await self._update_metrics()
                    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                        log.warning("outbox relay database error", error=str(exc))
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_interval)
        finally:
            with contextlib.suppress(Exception):
                await listener.remove_listener("outbox", self._on_notify)
            await self.pool.release(listener)

    def _on_notify(self, *_args) -> None:
        self._wake.set()

    async def publish_batch(self) -> int:
        """Publish one batch; returns how many rows were claimed."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                # The stored JSON goes out as PostgreSQL prints it: no decode and re-encode here.
                "SELECT id, topic, key, event_type, envelope::text AS value FROM outbox"
                " WHERE next_attempt_at <= now()"
                " ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
                self.batch_size,
            )
            if not rows:
                return 0
            results = await self._send(rows)
            ok = [r["id"] for r, res in zip(rows, results) if not isinstance(res, BaseException)]
            failed = [(r["id"], repr(res)) for r, res in zip(rows, results) if isinstance(res, BaseException)]
            if ok:
                # A delete is a third of the cost of marking the row (which rewrites it and its indexes).
                await conn.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[])", ok)
                OUTBOX_PUBLISHED.labels(self.service).inc(len(ok))
            if failed:
                OUTBOX_FAILURES.labels(self.service).inc(len(failed))
                log.warning("outbox publish failed", count=len(failed), error=failed[0][1])
                await conn.executemany(
                    "UPDATE outbox SET attempts = attempts + 1, last_error = $2,"
                    " next_attempt_at = now() + least($3, 0.5 * 2 ^ attempts) * interval '1 second'"
                    " WHERE id = $1",
                    [(i, err[:1000], self.max_backoff) for i, err in failed],
                )
            return len(rows)

    async def _send(self, rows: list[asyncpg.Record]) -> list[object]:
        """Send the rows, a whole record batch per partition at a time (producer.send per row costs
        more Python than everything else the relay does); one result per row: its batch's metadata
        or the exception. Keys are partitioned as producer.send would (murmur2, like the Java client)
        and a partition's batches go in id order, so each customer's events stay in order."""
        loop = asyncio.get_running_loop()
        groups: dict[tuple[str, int], list[int]] = {}
        results: list[object] = [None] * len(rows)
        partitions: dict[str, list[int]] = {}
        for n, r in enumerate(rows):
            topic = r["topic"]
            try:
                if topic not in partitions:
                    partitions[topic] = sorted(await self.producer.partitions_for(topic))
                part = self._partition(r["key"], tuple(partitions[topic]))
            except Exception as exc:  # noqa: BLE001 - no metadata: the broker may be gone; retry later
                results[n] = exc
                continue
            groups.setdefault((topic, part), []).append(n)
        pending: list[tuple[list[int], asyncio.Future]] = []

        async def submit(members: list[int], batch, topic: str, part: int) -> None:
            try:
                fut = await self.producer.send_batch(batch, topic, partition=part)
            except Exception as exc:  # noqa: BLE001
                fut = loop.create_future()
                fut.set_exception(exc)
            pending.append((members, fut))

        for (topic, part), members in groups.items():
            batch, taken = self.producer.create_batch(), []
            for n in members:
                r = rows[n]
                record = {"key": r["key"].encode(), "value": r["value"].encode(), "timestamp": None,
                          "headers": [("event_type", r["event_type"].encode())]}
                size = DefaultRecordBatchBuilder.estimate_size_in_bytes(record["key"], record["value"], record["headers"])
                if size > self.max_event_bytes:  # no broker takes it: keep it back (with backoff) for a person
                    results[n] = ValueError(f"the event is {size} bytes, more than max_event_bytes"
                                            f" ({self.max_event_bytes})")
                    continue
                if batch.append(**record) is None:  # full: send it, start the next (which takes any first record)
                    await submit(taken, batch, topic, part)
                    batch, taken = self.producer.create_batch(), []
                    batch.append(**record)
                taken.append(n)
            if taken:
                await submit(taken, batch, topic, part)
        outcomes = await asyncio.gather(*(f for _, f in pending), return_exceptions=True)
        for (members, _), outcome in zip(pending, outcomes):
            for n in members:
                results[n] = outcome
        return results

    async def _update_metrics(self) -> None:
        n, age = await outbox_backlog(self.pool)
        OUTBOX_BACKLOG.labels(self.service).set(n)
        OUTBOX_OLDEST_AGE.labels(self.service).set(age)
