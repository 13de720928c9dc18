"""Transactional outbox and its relay.

`add_event` writes an envelope in the caller's transaction. `OutboxRelay` claims pending rows
with FOR UPDATE SKIP LOCKED (so relays on several replicas never publish the same row at the
same time), publishes them, and marks them published; failures back off exponentially.
It wakes on LISTEN/NOTIFY and also polls, so a lost notification only delays.
"""
from __future__ import annotations

import asyncio
import contextlib

import asyncpg

from shared.contract import Envelope
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
        " SELECT i, t, y, $1, k, e::jsonb"
        " FROM unnest($2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[]) WITH ORDINALITY AS u(i, t, y, k, e, n)"
        " ORDER BY n",
        topic,
        [e.id for e in envelopes],
        [e.tenant_id for e in envelopes],
        [e.type for e in envelopes],
        [e.key for e in envelopes],
        [e.model_dump_json() for e in envelopes],
    )


async def outbox_backlog(pool: asyncpg.Pool) -> tuple[int, float]:
    row = await pool.fetchrow(
        "SELECT count(*) AS n, coalesce(extract(epoch FROM now() - min(created_at)), 0) AS age"
        " FROM outbox WHERE published_at IS NULL"
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
        retention_hours: float = 24.0,
    ) -> None:
        self.pool = pool
        self.producer = producer
        self.service = service
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.max_backoff = max_backoff
        self.retention_hours = retention_hours
        self._wake = asyncio.Event()
        self._paused = False

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._paused = False
        self._wake.set()

    async def run(self) -> None:
        listener = await self.pool.acquire()
        await listener.add_listener("outbox", self._on_notify)
        try:
            purge_every, since_purge = 600, 0
            while True:
                if not self._paused:
                    try:
                        while await self.publish_batch() == self.batch_size:
                            pass
                        await self._update_metrics()
                        since_purge += 1
                        if since_purge >= purge_every:
                            since_purge = 0
                            await self._purge()
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
                " WHERE published_at IS NULL AND next_attempt_at <= now()"
                " ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
                self.batch_size,
            )
            if not rows:
                return 0
            futures = []
            for r in rows:
                headers = [("event_type", r["event_type"].encode())]
                try:
                    fut = await self.producer.send(r["topic"], value=r["value"].encode(), key=r["key"].encode(),
                                                   headers=headers)
                except Exception as exc:  # noqa: BLE001 - the broker may be gone; retry later
                    fut = asyncio.get_running_loop().create_future()
                    fut.set_exception(exc)
                futures.append(fut)
            results = await asyncio.gather(*futures, return_exceptions=True)
            ok = [r["id"] for r, res in zip(rows, results) if not isinstance(res, BaseException)]
            failed = [(r["id"], repr(res)) for r, res in zip(rows, results) if isinstance(res, BaseException)]
            if ok:
                await conn.execute("UPDATE outbox SET published_at = now() WHERE id = ANY($1::bigint[])", ok)
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

    async def _update_metrics(self) -> None:
        n, age = await outbox_backlog(self.pool)
        OUTBOX_BACKLOG.labels(self.service).set(n)
        OUTBOX_OLDEST_AGE.labels(self.service).set(age)

    async def _purge(self) -> None:
        await self.pool.execute(
            "DELETE FROM outbox WHERE published_at < now() - $1 * interval '1 hour'", self.retention_hours
        )
