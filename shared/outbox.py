"""Transactional outbox and its relay.

`add_event` writes an envelope in the caller's transaction. `OutboxRelay` publishes rows in id
(commit) order and deletes them once the broker has them (Kafka keeps what was published; the
outbox holds only what has not been). Per-key order is kept however many replicas run a relay:
one relay at a time owns the outbox (an advisory lock per batch), and a row that fails holds
back only the later rows of its own key (retried with backoff, or held for a person when no
retry can help: `held_events`, `retry_held`, `discard_held`). It wakes on LISTEN/NOTIFY and also
polls, so a lost notification only delays.
"""
from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

import asyncpg
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from shared.contract import Envelope
from shared.contract.events import EventPayload
from shared.logging import get_logger
from shared.metrics import (
    OUTBOX_BACKLOG, OUTBOX_FAILURES, OUTBOX_HELD, OUTBOX_HELD_KEYS, OUTBOX_OLDEST_AGE, OUTBOX_PUBLISHED,
    OUTBOX_RELAY_LEADER,
)

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


# One relay per database publishes at a time: the one holding this transaction-scoped advisory
# lock for its batch. Batches therefore go out one after the other in id order whichever replica
# sends them, and when a relay dies (its transaction with it) another takes over at its next try.
RELAY_LOCK = 0x7A4E_0B0C

# The next rows to publish, in id order, leaving out the rows of any key held back by an earlier
# row that failed and waits for its retry (or for a person: next_attempt_at = infinity).
_CLAIM = """
WITH held AS (
  SELECT DISTINCT ON (topic, key) topic, key, id AS first_id, next_attempt_at
  FROM outbox WHERE attempts > 0 ORDER BY topic, key, id
)
SELECT o.id, o.topic, o.key, o.event_type, o.envelope::text AS value FROM outbox o
WHERE NOT EXISTS (SELECT 1 FROM held h WHERE h.topic = o.topic AND h.key = o.key AND o.id >= h.first_id
                  AND h.next_attempt_at > now())
ORDER BY o.id LIMIT $1"""
# The same when no row has failed (almost always): the rows in id order, nothing to leave out.
_CLAIM_ALL = "SELECT id, topic, key, event_type, envelope::text AS value FROM outbox ORDER BY id LIMIT $1"
_ANY_HELD = "SELECT EXISTS (SELECT 1 FROM outbox WHERE attempts > 0)"  # a probe of the outbox_troubled index


@dataclass(frozen=True)
class HeldEvent:
    id: int
    event_id: str
    tenant_id: str
    event_type: str
    topic: str
    key: str
    created_at: datetime
    attempts: int
    next_attempt_at: datetime | None  # None: waits for a person (retry or discard)
    last_error: str | None
    held_back: int  # later events of the same key waiting behind it


async def held_events(pool: asyncpg.Pool, tenant_id: str | None = None, limit: int = 100) -> list[HeldEvent]:
    """The rows that failed to publish (first of their key first), with how many wait behind each."""
    rows = await pool.fetch(
        """SELECT t.*, nullif(t.next_attempt_at, 'infinity') AS retry_at,
                  (SELECT count(*) FROM outbox o WHERE o.topic = t.topic AND o.key = t.key AND o.id > t.id)
                  AS held_back
           FROM outbox t WHERE t.attempts > 0 AND ($1::text IS NULL OR t.tenant_id = $1) ORDER BY t.id LIMIT $2""",
        tenant_id, limit)
    return [HeldEvent(
        id=r["id"], event_id=str(r["event_id"]), tenant_id=r["tenant_id"], event_type=r["event_type"], topic=r["topic"],
        key=r["key"], created_at=r["created_at"], attempts=r["attempts"],
        next_attempt_at=r["retry_at"],
        last_error=r["last_error"], held_back=r["held_back"]) for r in rows]


async def retry_held(pool: asyncpg.Pool, row_id: int, tenant_id: str | None = None) -> bool:
    """Send a held row again at the relay's next batch (e.g. after raising the broker's limit)."""
    return await pool.fetchval(
        "UPDATE outbox SET next_attempt_at = now() WHERE id = $1 AND attempts > 0"
        " AND ($2::text IS NULL OR tenant_id = $2) RETURNING true", row_id, tenant_id) is not None


async def discard_held(pool: asyncpg.Pool, row_id: int, *, by: str, reason: str,
                       tenant_id: str | None = None) -> bool:
    """Give up on a held row: it is kept in outbox_discarded with who and why, and its key moves on."""
    async with pool.acquire() as conn, conn.transaction():
        moved = await conn.fetchval(
            """WITH gone AS (DELETE FROM outbox WHERE id = $1 AND attempts > 0 AND ($2::text IS NULL OR tenant_id = $2)
                             RETURNING *)
               INSERT INTO outbox_discarded (id, event_id, tenant_id, event_type, topic, key, envelope, created_at,
                                             attempts, last_error, discarded_by, reason)
               SELECT id, event_id, tenant_id, event_type, topic, key, envelope, created_at, attempts, last_error, $3, $4
               FROM gone RETURNING true""", row_id, tenant_id, by, reason)
    if moved:
        log.warning("outbox event discarded", row=row_id, by=by, reason=reason)
    return moved is not None


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
        self.leader = False
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
        """Publish until cancelled. Database errors end the run (the host restarts it); the
        listener connection is the only state kept between batches."""
        listener = await self.pool.acquire()
        try:  # from here on the connection goes back to the pool whatever happens (else pool.close waits)
            await listener.add_listener("outbox", self._on_notify)
            while True:
                if listener.is_closed():
                    raise ConnectionError("lost the connection listening for new outbox rows")  # restarted
                if not self._paused:
                    while await self.publish_batch() == self.batch_size:
                        pass
                    await self._update_metrics()
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_interval)
        finally:
            self._set_leader(False)
            with contextlib.suppress(Exception):
                await listener.remove_listener("outbox", self._on_notify)
            with contextlib.suppress(Exception):
                await self.pool.release(listener, timeout=5)

    def _on_notify(self, *_args) -> None:
        self._wake.set()

    def _set_leader(self, leader: bool) -> None:
        if leader != self.leader:
            log.info("outbox relay " + ("took over publishing" if leader else "stands by"), service=self.service)
        self.leader = leader
        OUTBOX_RELAY_LEADER.labels(self.service).set(1 if leader else 0)

    async def publish_batch(self) -> int:
        """Publish one batch if no other relay is publishing; returns how many rows were claimed."""
        async with self.pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", RELAY_LOCK):
                self._set_leader(False)
                return 0
            self._set_leader(True)
            rows = await conn.fetch(_CLAIM if await conn.fetchval(_ANY_HELD) else _CLAIM_ALL, self.batch_size)
            if not rows:
                return 0
            results = await self._send(rows)
            ok = [r["id"] for r, res in zip(rows, results) if res is SENT]
            failed = [(r, res) for r, res in zip(rows, results) if isinstance(res, Failure)]
            if ok:
                # A delete is a third of the cost of marking the row (which rewrites it and its indexes).
                await conn.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[])", ok)
                OUTBOX_PUBLISHED.labels(self.service).inc(len(ok))
            if failed:
                OUTBOX_FAILURES.labels(self.service).inc(len(failed))
                for r, f in failed[:5]:
                    log.warning("outbox event not published; its key is held back", row=r["id"], topic=r["topic"],
                                event_type=r["event_type"], error=f.error, needs_person=f.permanent)
                await conn.execute(
                    "UPDATE outbox o SET attempts = o.attempts + 1, last_error = f.error,"
                    " next_attempt_at = CASE WHEN f.permanent THEN 'infinity'::timestamptz"
                    "   ELSE now() + least($2, 0.5 * 2 ^ o.attempts) * interval '1 second' END"
                    " FROM unnest($1::bigint[], $3::text[], $4::boolean[]) AS f(id, error, permanent) WHERE o.id = f.id",
                    [r["id"] for r, _ in failed], self.max_backoff, [f.error[:1000] for _, f in failed],
                    [f.permanent for _, f in failed],
                )
            return len(rows)

    async def _send(self, rows: list[asyncpg.Record]) -> list[object]:
        """Send the rows, a whole record batch per partition at a time (producer.send per row costs
        more Python than everything else the relay does), partitions side by side and each
        partition's batches one after the other. One result per row: SENT, a Failure, or None
        (not tried: a row before it of the same key failed, so it waits its turn). Keys are
        partitioned as producer.send would (murmur2, like the Java client)."""
        results: list[object] = [None] * len(rows)
        groups: dict[tuple[str, int], list[int]] = {}
        partitions: dict[str, list[int]] = {}
        for n, r in enumerate(rows):
            topic = r["topic"]
            try:
                if topic not in partitions:
                    partitions[topic] = sorted(await self.producer.partitions_for(topic))
                part = self._partition(r["key"], tuple(partitions[topic]))
            except Exception as exc:  # noqa: BLE001 - no metadata: the broker may be gone; retry later
                results[n] = Failure(repr(exc))
                continue
            groups.setdefault((topic, part), []).append(n)
        await asyncio.gather(*(self._send_partition(rows, members, topic, part, results)
                               for (topic, part), members in groups.items()))
        return results

    async def _send_partition(self, rows: list[asyncpg.Record], members: list[int], topic: str, part: int,
                              results: list[object]) -> None:
        """One partition's rows in order; after a failure nothing more of this partition goes, so
        no later event overtakes one that failed."""
        blocked: set[str] = set()  # keys with a row that cannot be sent in this batch
        batch, taken = self.producer.create_batch(), []

        async def flush() -> bool:
            nonlocal batch, taken
            if not taken:
                return True
            members_sent, b = taken, batch
            batch, taken = self.producer.create_batch(), []
            try:
                await (await self.producer.send_batch(b, topic, partition=part))
            except Exception as exc:  # noqa: BLE001 - the whole record batch failed; retried with backoff
                for n in members_sent:
                    results[n] = Failure(repr(exc))
                return False
            for n in members_sent:
                results[n] = SENT
            return True

        for i, n in enumerate(members):
            r = rows[n]
            if r["key"] in blocked:
                continue
            record = {"key": r["key"].encode(), "value": r["value"].encode(), "timestamp": None,
                      "headers": [("event_type", r["event_type"].encode())]}
            size = DefaultRecordBatchBuilder.estimate_size_in_bytes(record["key"], record["value"], record["headers"])
            if size > self.max_event_bytes:  # no broker takes it: held for a person, with the reason
                results[n] = Failure(f"the event is {size} bytes, more than max_event_bytes ({self.max_event_bytes});"
                                     " retry it once the limit allows, or discard it", permanent=True)
                blocked.add(r["key"])
                continue
            if batch.append(**record) is None:  # full: send it, start the next (which takes any first record)
                if not await flush():
                    for m in members[i:]:
                        results[m] = Failure("not sent: an earlier batch of this partition failed")
                    return
                batch.append(**record)
            taken.append(n)
        if not await flush():
            return

    async def _update_metrics(self) -> None:
        n, age = await outbox_backlog(self.pool)
        OUTBOX_BACKLOG.labels(self.service).set(n)
        OUTBOX_OLDEST_AGE.labels(self.service).set(age)
        held = await self.pool.fetchrow(
            "SELECT count(*) AS rows, count(DISTINCT (topic, key)) AS keys FROM outbox WHERE attempts > 0")
        OUTBOX_HELD.labels(self.service).set(held["rows"])
        OUTBOX_HELD_KEYS.labels(self.service).set(held["keys"])


SENT = object()


@dataclass(frozen=True)
class Failure:
    error: str
    permanent: bool = False  # no retry will help: wait for a person
