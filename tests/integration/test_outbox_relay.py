"""The outbox relay against real PostgreSQL and the real broker: per-key order with several relays
on one database, with their connections killed under them, with sends failing, and with an event
that no broker takes (it holds back only its own key, and a person retries or discards it)."""
from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import asyncpg
import pytest

from shared.contract import CustomerUpserted, Topics, new_envelope
from shared.db import create_pool, migrate
from shared.kafka import ensure_topics, start_producer
from shared.outbox import OutboxRelay, add_events, discard_held, held_events, retry_held
from tahsilat.streams import read_records
from tests.support import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
async def outbox(database, kafka_bootstrap, topic_prefix, tmp_path):
    await migrate(database, Path(tmp_path))  # the shared migrations only: outbox, inbox, keys
    topics = Topics(topic_prefix)
    await ensure_topics(kafka_bootstrap, [topics.invoicing], 4)
    pool = await create_pool(database, max_size=12)
    yield pool, topics.invoicing
    await pool.close()


def event(customer: str, seq: int, name: str | None = None):
    payload = CustomerUpserted(customer_id=customer, name=name or f"{customer} #{seq}")
    return new_envelope(payload, source="test", tenant_id="t1", subject=customer,
                        time=datetime(2026, 3, 1, tzinfo=timezone.utc))


async def write(pool, topic: str, customer: str, count: int, start: int = 0) -> None:
    """One customer's events, each in its own transaction, one after the other."""
    for seq in range(start, start + count):
        async with pool.acquire() as conn, conn.transaction():
            await add_events(conn, topic, [event(customer, seq)])


async def sequences(bootstrap: str, topic: str) -> dict[str, list[int]]:
    """Per key, the sequence numbers in the order they sit on the partition."""
    out: dict[str, list[int]] = defaultdict(list)
    for r in await read_records(bootstrap, topic):
        name = r.value.decode().split('"name"')[1].split('"')[1]  # "Ck #n"
        out[r.key.decode()].append(int(name.split("#")[1]))
    return out


def first_seen(seqs: list[int]) -> list[int]:
    """The order in which a consumer with an inbox applies them (a repeat changes nothing)."""
    seen: set[int] = set()
    return [s for s in seqs if not (s in seen or seen.add(s))]


async def supervised(relay: OutboxRelay) -> None:
    """What the service host does for a relay whose database connection is killed: start again."""
    while True:
        with contextlib.suppress(Exception):  # as the service host's supervision does
            await relay.run()
        await asyncio.sleep(0.05)


async def start_relays(pool, bootstrap: str, n: int, **options):
    producers = [await start_producer(bootstrap) for _ in range(n)]
    relays = [OutboxRelay(pool, p, service="test", poll_interval=0.05, **options) for p in producers]
    tasks = [asyncio.create_task(supervised(r)) for r in relays]

    async def stop() -> None:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):  # cancelled mid-commit, as the host's stop
                await t
        for p in producers:
            await p.stop()

    return relays, stop


async def drained(pool) -> bool:
    return await pool.fetchval("SELECT count(*) = 0 FROM outbox")


async def test_two_relays_publish_each_keys_events_in_commit_order(outbox, kafka_bootstrap):
    pool, topic = outbox
    relays, stop = await start_relays(pool, kafka_bootstrap, 2, batch_size=25)
    try:
        await asyncio.gather(*(write(pool, topic, f"C{k}", 150) for k in range(8)))
        await wait_for(lambda: drained(pool), timeout=60, message="everything published")
    finally:
        await stop()
    got = await sequences(kafka_bootstrap, topic)
    assert {k: v for k, v in got.items()} == {f"t1:C{k}": list(range(150)) for k in range(8)}


async def test_killed_relay_connections_lose_nothing_and_break_no_keys_order(outbox, kafka_bootstrap, database):
    pool, topic = outbox
    relays, stop = await start_relays(pool, kafka_bootstrap, 2, batch_size=20)
    dbname = database.rsplit("/", 1)[-1]
    killer = await asyncpg.connect(database)

    async def kill_relays() -> None:
        for _ in range(15):
            await asyncio.sleep(0.05)
            await killer.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()"
                " AND query ILIKE '%outbox%'", dbname)

    try:
        # A writer whose connection is hit stops there: its key's sequence just ends early.
        writers = asyncio.gather(*(write(pool, topic, f"C{k}", 100) for k in range(6)), return_exceptions=True)
        await kill_relays()
        await writers
        await wait_for(lambda: drained(pool), timeout=60, message="everything published")
    finally:
        await killer.close()
        await stop()
    got = await sequences(kafka_bootstrap, topic)
    for key, seqs in got.items():
        ordered = first_seen(seqs)
        assert ordered == sorted(ordered), f"{key} out of order: {ordered}"
        assert ordered == list(range(len(ordered))), f"{key} lost events: {ordered}"


async def test_an_event_no_broker_takes_holds_back_only_its_own_key_until_a_person_acts(outbox, kafka_bootstrap):
    pool, topic = outbox
    async with pool.acquire() as conn:
        await add_events(conn, topic, [event("C0", 0, name="x" * 1_100_000)])  # over 1 MiB: no broker takes it
    await write(pool, topic, "C0", 5, start=1)
    await asyncio.gather(*(write(pool, topic, f"C{k}", 5) for k in range(1, 4)))
    relays, stop = await start_relays(pool, kafka_bootstrap, 1)
    try:
        await wait_for(lambda: _equal(pool, "SELECT count(*) FROM outbox", 6), message="all but C0's published")
        got = await sequences(kafka_bootstrap, topic)
        assert "t1:C0" not in got and {k: v for k, v in got.items()} == {f"t1:C{k}": list(range(5)) for k in (1, 2, 3)}

        held = await held_events(pool, "t1")
        assert [(h.key, h.held_back, h.next_attempt_at) for h in held] == [("t1:C0", 5, None)]
        assert "more than max_event_bytes" in held[0].last_error
        assert await held_events(pool, "another-tenant") == []

        assert await retry_held(pool, held[0].id)  # tried again: still too big, still held
        await wait_for(lambda: _attempts(pool, held[0].id, 2), message="the second attempt")
        assert await discard_held(pool, held[0].id, by="test", reason="too big for any broker")
        await wait_for(lambda: drained(pool), message="C0's later events published")
    finally:
        await stop()
    got = await sequences(kafka_bootstrap, topic)
    assert got["t1:C0"] == [1, 2, 3, 4, 5]
    kept = await pool.fetchrow("SELECT key, discarded_by, reason FROM outbox_discarded")
    assert dict(kept) == {"key": "t1:C0", "discarded_by": "test", "reason": "too big for any broker"}


async def test_failed_sends_hold_back_their_keys_and_nothing_overtakes_them(outbox, kafka_bootstrap):
    pool, topic = outbox
    await asyncio.gather(*(write(pool, topic, f"C{k}", 30) for k in range(6)))
    relays, stop = await start_relays(pool, kafka_bootstrap, 1, batch_size=40, max_backoff=0.2)
    relay = relays[0]
    original = relay.producer.send_batch
    failures = {"left": 6}

    async def send_batch(batch, topic_, partition):
        if partition == 0 and failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("broker said no")
        return await original(batch, topic_, partition=partition)

    relay.producer.send_batch = send_batch
    try:
        await wait_for(lambda: drained(pool), timeout=60, message="everything published in the end")
    finally:
        await stop()
    assert failures["left"] == 0
    got = await sequences(kafka_bootstrap, topic)
    assert {k: v for k, v in got.items()} == {f"t1:C{k}": list(range(30)) for k in range(6)}


async def _equal(pool, sql, value):
    return await pool.fetchval(sql) == value


async def _attempts(pool, row_id, n):
    return await pool.fetchval("SELECT attempts FROM outbox WHERE id = $1", row_id) == n
