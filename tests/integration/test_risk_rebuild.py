"""Rebuilding the risk store from the topics: the risk worker (the behaviour consumer, `serve`
with ROLES=worker) as a real process on a real broker. A first worker folds the events as they
are published (live); a second one, with a new consumer group over an empty database, reads the
three topics from the beginning, in whatever interleaving the broker and aiokafka give it. Both stores, and every RiskAssessed event
(ids and times included), are the same, and the same as the events folded in time order."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.risk.bootstrap import MIGRATIONS
from shared.contract import Topics
from shared.db import create_pool, drop_database, ensure_database, migrate, with_database
from shared.kafka import ensure_topics, start_producer
from tahsilat.embedded import free_port, stop_process
from tests.integration.test_risk_replay import apply_records, snapshot, three_topics
from tests.support import wait_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PARTITIONS = 2


@pytest.fixture
async def stores(pg_server: str) -> AsyncIterator[list[str]]:
    names = [f"test_rebuild_{uuid.uuid4().hex[:10]}" for _ in range(3)]
    for name in names:
        await ensure_database(pg_server, name)
        await migrate(with_database(pg_server, name), MIGRATIONS)
    try:
        yield [with_database(pg_server, name) for name in names]
    finally:
        for name in names:
            await drop_database(pg_server, name)


def start_worker(database: str, kafka_bootstrap: str, topic_prefix: str, group: str, log_path: Path
                 ) -> subprocess.Popen:
    env = {
        **os.environ,
        "DATABASE_URL": database, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "TOPIC_PREFIX": topic_prefix,
        "KAFKA_PARTITIONS": str(PARTITIONS), "KAFKA_SESSION_TIMEOUT_MS": "2000", "KAFKA_HEARTBEAT_INTERVAL_MS": "500",
        "ROLES": "worker", "HTTP_PORT": str(free_port()), "BEHAVIOUR_GROUP": group, "LOG_FORMAT": "console",
    }
    with log_path.open("wb") as log:
        return subprocess.Popen([sys.executable, "-m", "services.risk", "serve"], env=env, cwd=REPO,
                                stdout=log, stderr=subprocess.STDOUT)


async def folded_everything(url: str, worker: subprocess.Popen, records: int) -> dict | None:
    """The store once the worker has staged every record and folded every staged event."""
    if worker.poll() is not None:
        raise AssertionError(f"the risk worker exited with {worker.returncode}")
    pool = await create_pool(url, max_size=1)
    try:
        async with pool.acquire() as conn:
            staged = await conn.fetchval("SELECT coalesce(sum(next_offset), 0) FROM risk_stream_partitions")
            if staged < records:
                return None
            state = await snapshot(conn)
            return state if state["waiting"] == 0 else None
    finally:
        await pool.close()


async def final_store(url: str, worker: subprocess.Popen, records: int, expected: dict, message: str) -> dict:
    """The store once every record is folded; if it is not yet the expected one then (a batch
    still committing when the counts said done, under a loaded machine's timing), what it comes
    to within 20 s more: a store that stays different fails the test with its difference."""
    state = await wait_for(lambda: folded_everything(url, worker, records), timeout=90, message=message)
    if state == expected:
        return state
    try:
        return await wait_for(lambda: _equal_to(url, worker, records, expected), timeout=20,
                              message=f"{message}: the store to settle")
    except AssertionError:
        return await folded_everything(url, worker, records) or state


async def _equal_to(url: str, worker: subprocess.Popen, records: int, expected: dict) -> dict | None:
    state = await folded_everything(url, worker, records)
    return state if state == expected else None


async def test_the_store_rebuilt_from_the_topics_gives_the_same_scores_and_risk_assessed_events(
        stores: list[str], kafka_bootstrap: str, topic_prefix: str, tmp_path: Path):
    topics = Topics(topic_prefix)
    await ensure_topics(kafka_bootstrap, topics.all(), PARTITIONS)
    records = three_topics()
    ends: dict[tuple[str, int], int] = {}
    for r in records:
        ends[(r.topic, r.partition)] = max(ends.get((r.topic, r.partition), 0), r.offset + 1)
    in_time_order = await apply_records(stores[2], [[r] for r in records], ends)
    assert len(in_time_order["assessed"]) >= 8

    names = {"invoicing": topics.invoicing, "dunning": topics.dunning, "notifier": topics.notifier}
    logs = [tmp_path / "live.log", tmp_path / "rebuild.log"]
    live = start_worker(stores[0], kafka_bootstrap, topic_prefix, f"{topic_prefix}risk.behaviour", logs[0])
    producer = await start_producer(kafka_bootstrap)
    try:
        for r in records:  # as they happen: in time order, each on its own topic and partition
            await producer.send_and_wait(names[r.topic], r.value, key=r.key, partition=r.partition)
        as_live = await final_store(stores[0], live, len(records), in_time_order, "the live worker folded every event")
        await asyncio.to_thread(stop_process, live)

        rebuild = start_worker(stores[1], kafka_bootstrap, topic_prefix, f"{topic_prefix}risk-rebuild", logs[1])
        try:
            rebuilt = await final_store(stores[1], rebuild, len(records), in_time_order,
                                        "the rebuild folded every event")
        finally:
            await asyncio.to_thread(stop_process, rebuild)
    except BaseException:
        for path in logs:
            if path.exists():
                print(path, path.read_text(errors="replace")[-4000:])
        raise
    finally:
        await producer.stop()
        await asyncio.to_thread(stop_process, live)

    assert rebuilt == as_live == in_time_order
