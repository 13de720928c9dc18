"""The shared consumer machinery against real PostgreSQL and the real broker: a poll batch is one
transaction, poison records are dead-lettered with their cause while the rest carries on,
database failover is retried and never dead-lettered, offsets are committed only after the
transaction, refused commits and dying tasks do not stop a consumer for good."""
from __future__ import annotations

import asyncio
import uuid
from datetime import date, datetime, timezone
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError

from shared.contract import InvoiceIssued, Topics, new_envelope
from shared.host import ServiceHost
from shared.kafka import start_producer
from shared.processing import Event
from shared.settings import ServiceSettings
from tahsilat.streams import read_topic
from tests.support import FAST_KAFKA, running, wait_for

pytestmark = pytest.mark.integration


class PlumbingSettings(ServiceSettings):
    service_name: str = "plumbing"


class Control:
    """What the test's handler does: fail for chosen invoices, block inside its transaction, ..."""

    def __init__(self) -> None:
        self.poison: set[str] = set()
        self.terminate_once = False  # kill our own database connection mid-transaction, once
        self.sqlstate_once: str | None = None  # have PostgreSQL raise this error once
        self.block: set[str] = set()
        self.blocked = asyncio.Event()
        self.release = asyncio.Event()


def build(database: str, bootstrap: str, prefix: str, migrations: Path, control: Control, **over):
    settings = PlumbingSettings(database_url=database, kafka_bootstrap_servers=bootstrap, topic_prefix=prefix,
                                kafka_partitions=3, poll_interval_seconds=0.1, **FAST_KAFKA, **over)
    host = ServiceHost(settings, migrations=migrations)

    async def issued(conn, events: list[Event]) -> None:
        ids = [e.payload.invoice_id for e in events]
        await conn.execute(
            "INSERT INTO applied (invoice_id, customer_id, txid)"
            " SELECT i, c, txid_current() FROM unnest($1::text[], $2::text[]) AS u(i, c)",
            ids, [e.payload.customer_id for e in events])
        if control.terminate_once:
            control.terminate_once = False
            await conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        if control.sqlstate_once:
            state, control.sqlstate_once = control.sqlstate_once, None
            await conn.execute(f"DO $$ BEGIN RAISE EXCEPTION 'test' USING ERRCODE = '{state}'; END $$")
        if control.poison & set(ids):
            raise ValueError(f"cannot apply {sorted(control.poison & set(ids))[0]}")
        if control.block & set(ids):
            control.blocked.set()
            await control.release.wait()

    app = host.create_api("plumbing", "test", lambda host, app: host.consume("test", [host.topics.invoicing],
                                                                               {"InvoiceIssued": issued}))
    return app, host


@pytest.fixture
def migrations(tmp_path: Path) -> Path:
    (tmp_path / "001_applied.sql").write_text(
        "CREATE TABLE applied (invoice_id text NOT NULL, customer_id text NOT NULL, txid bigint NOT NULL)")
    return tmp_path


def invoice(n: int, customer: str | None = None):
    payload = InvoiceIssued(customer_id=customer or f"C{n % 13}", invoice_id=f"I{n}", billing_source="erp",
                            external_id=f"X{n}", number=f"N{n}", currency="EUR", amount_minor=100 + n,
                            issue_date=date(2026, 3, 1), due_date=date(2026, 4, 1))
    return new_envelope(payload, source="invoicing", tenant_id="t1", subject=f"I{n}",
                        time=datetime(2026, 3, 1, tzinfo=timezone.utc))


async def publish(bootstrap: str, topic: str, envelopes) -> None:
    producer = await start_producer(bootstrap)
    try:
        for e in envelopes:
            await producer.send(topic, e.model_dump_json().encode(), key=e.key.encode())
        await producer.flush()
    finally:
        await producer.stop()


async def applied(pool) -> dict[str, int]:
    return {r["invoice_id"]: r["n"] for r in await pool.fetch(
        "SELECT invoice_id, count(*) AS n FROM applied GROUP BY invoice_id")}


async def all_applied(pool, n: int):
    got = await applied(pool)
    return got if len(got) >= n else None


async def test_a_poll_batch_is_applied_in_one_transaction(database, kafka_bootstrap, topic_prefix, migrations):
    control = Control()
    await publish(kafka_bootstrap, Topics(topic_prefix).invoicing, [invoice(n) for n in range(2000)])
    app, _ = build(database, kafka_bootstrap, topic_prefix, migrations, control)
    async with running(app):
        pool = app.state.pool
        got = await wait_for(lambda: all_applied(pool, 2000), timeout=60, message="2,000 events applied")
        assert set(got.values()) == {1}
        transactions = await pool.fetchval("SELECT count(DISTINCT txid) FROM applied")
        assert transactions <= 40, f"2,000 events took {transactions} transactions"
        assert await pool.fetchval("SELECT count(*) FROM inbox") == 2000


async def test_a_record_that_keeps_failing_is_dead_lettered_with_its_cause_and_the_rest_applied(
        database, kafka_bootstrap, topic_prefix, migrations):
    control = Control()
    control.poison = {"I57"}
    topics = Topics(topic_prefix)
    await publish(kafka_bootstrap, topics.invoicing, [invoice(n) for n in range(300)])
    app, _ = build(database, kafka_bootstrap, topic_prefix, migrations, control)
    async with running(app) as url:
        pool = app.state.pool
        await wait_for(lambda: all_applied(pool, 299), timeout=60, message="the 299 good events")
        dead = await wait_for(lambda: read_topic(kafka_bootstrap, topics.dead_letter), message="the dead letter")
        assert [(e.data["invoice_id"], h["dlq_reason"], h["dlq_consumer"]) for e, h in dead] == [
            ("I57", "handler failed after 3 attempts: ValueError('cannot apply I57')", "plumbing.test")]
        # The consumer carries on, and a redelivery would not dead-letter it again (it is in the inbox).
        await publish(kafka_bootstrap, topics.invoicing, [invoice(300)])
        got = await wait_for(lambda: all_applied(pool, 300), message="the next event")
        assert "I57" not in got and set(got.values()) == {1}
        async with httpx.AsyncClient(base_url=url) as http:
            assert (await http.get("/health/live")).status_code == 200


@pytest.mark.parametrize("failure", ["terminated", "40001", "40P01", "57P01"])
async def test_database_failover_and_lost_races_are_retried_never_dead_lettered(
        database, kafka_bootstrap, topic_prefix, migrations, failure):
    control = Control()
    if failure == "terminated":
        control.terminate_once = True  # what a restart or failover does to open connections
    else:
        control.sqlstate_once = failure  # serialization failure, deadlock, admin shutdown
    topics = Topics(topic_prefix)
    await publish(kafka_bootstrap, topics.invoicing, [invoice(n) for n in range(100)])
    app, _ = build(database, kafka_bootstrap, topic_prefix, migrations, control)
    async with running(app):
        got = await wait_for(lambda: all_applied(app.state.pool, 100), timeout=60, message="every event")
        assert set(got.values()) == {1}
        assert await read_topic(kafka_bootstrap, topics.dead_letter) == []


async def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """What `group` has committed on `topic` (asked as a member that never joins)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        out = {}
        for p in sorted(consumer.partitions_for_topic(topic) or ()):
            offset = await consumer.committed(TopicPartition(topic, p))
            if offset is not None:
                out[p] = offset
        return out
    finally:
        await consumer.stop()


async def test_offsets_are_committed_only_after_the_transaction_so_a_stop_mid_transaction_loses_nothing(
        database, kafka_bootstrap, topic_prefix, migrations):
    control = Control()
    control.block = {"I0"}
    topics = Topics(topic_prefix)
    group = f"{topic_prefix}plumbing.test"
    await publish(kafka_bootstrap, topics.invoicing, [invoice(0, customer="C0")])
    app, _ = build(database, kafka_bootstrap, topic_prefix, migrations, control)
    async with running(app):
        await asyncio.wait_for(control.blocked.wait(), 30)  # the handler is inside its transaction now
        # Give an early commit every chance to show, then look: nothing may be committed yet.
        consumer = app.state.host.consumers[0]
        await wait_for(lambda: _ready(consumer), message="the consumer assigned")
        assert await committed_offsets(kafka_bootstrap, group, topics.invoicing) == {}
    # The service stopped in the middle of the handler's transaction: nothing was applied.
    second = Control()
    app2, _ = build(database, kafka_bootstrap, topic_prefix, migrations, second)
    async with running(app2):
        got = await wait_for(lambda: all_applied(app2.state.pool, 1), timeout=60, message="the event, again")
        assert got == {"I0": 1}
        committed = await wait_for(lambda: committed_offsets(kafka_bootstrap, group, topics.invoicing),
                                   message="the commit")
        assert sum(committed.values()) == 1


async def test_the_next_batch_is_decoded_while_one_waits_for_its_database_and_survives_a_rebalance(
        database, kafka_bootstrap, topic_prefix, migrations):
    """Read-ahead: while a batch's transaction waits, the consumer fetches and decodes the next
    batch, but applies it only after. Across a rebalance it keeps only the partitions it still
    holds: none is lost, and each event is applied once."""
    control = Control()
    control.block = {"I0"}
    topics = Topics(topic_prefix)
    await publish(kafka_bootstrap, topics.invoicing, [invoice(0, customer="C0")])
    app, host = build(database, kafka_bootstrap, topic_prefix, migrations, control)
    async with running(app):
        await asyncio.wait_for(control.blocked.wait(), 30)  # I0's transaction is open and waiting
        consumer = host.consumers[0]
        prepared: list[str] = []
        prepare = consumer.processor.prepare

        def watching(records):
            out = prepare(records)
            prepared.extend(e.payload.invoice_id for e in out if isinstance(e, Event))
            return out

        consumer.processor.prepare = watching
        await publish(kafka_bootstrap, topics.invoicing, [invoice(n) for n in range(1, 40)])

        async def read_ahead() -> bool:
            return len(prepared) > 0

        await wait_for(read_ahead, message="the next batch decoded while I0 waits")
        assert await applied(app.state.pool) == {}  # read ahead, not applied: I0 is not committed yet
        # a second member joins the group: the partitions are revoked and assigned again
        intruder = AIOKafkaConsumer(topics.invoicing, bootstrap_servers=kafka_bootstrap,
                                    group_id=f"{topic_prefix}plumbing.test", enable_auto_commit=False,
                                    session_timeout_ms=2000, heartbeat_interval_ms=500)
        await intruder.start()
        try:
            async def rebalanced() -> bool:  # the intruder holds partitions: ours were revoked and reassigned
                return bool(intruder.assignment())

            await wait_for(rebalanced, timeout=30, message="the rebalance")
        finally:
            await intruder.stop()  # it leaves without reading: its partitions come back
        control.release.set()
        got = await wait_for(lambda: all_applied(app.state.pool, 40), timeout=60, message="all 40 applied")
        assert got == {f"I{n}": 1 for n in range(40)}


async def test_two_members_in_one_process_share_the_partitions_and_apply_each_event_once(
        database, kafka_bootstrap, topic_prefix, migrations):
    control = Control()
    await publish(kafka_bootstrap, Topics(topic_prefix).invoicing, [invoice(n) for n in range(1000)])
    app, host = build(database, kafka_bootstrap, topic_prefix, migrations, control, consumer_members=2)
    async with running(app) as url:
        assert len(host.consumers) == 2
        got = await wait_for(lambda: all_applied(app.state.pool, 1000), timeout=60, message="1,000 events applied")
        assert set(got.values()) == {1}

        async def both_hold_partitions() -> bool:
            return all(c.positions() for c in host.consumers)

        await wait_for(both_hold_partitions, message="each member holds partitions")
        mine = [set(c.positions()) for c in host.consumers]
        assert mine[0] and mine[1] and not mine[0] & mine[1]  # one member per partition
        async with httpx.AsyncClient(base_url=url) as http:
            ready = (await http.get("/health/ready")).json()
        assert ready["checks"]["consumer:plumbing.test"] is True, ready


async def _ready(consumer) -> bool:
    return consumer.ready.is_set()


async def test_refused_commits_do_not_stop_the_consumer(database, kafka_bootstrap, topic_prefix, migrations,
                                                        monkeypatch):
    refusals = [CommitFailedError("rebalance in progress"), IllegalStateError("partition not assigned")]
    original = AIOKafkaConsumer.commit

    async def commit(self, offsets=None):
        if refusals:
            raise refusals.pop(0)
        return await original(self, offsets)

    monkeypatch.setattr(AIOKafkaConsumer, "commit", commit)
    control = Control()
    topics = Topics(topic_prefix)
    app, host = build(database, kafka_bootstrap, topic_prefix, migrations, control)
    async with running(app) as url:
        for n in range(3):  # one batch at a time, so each is committed on its own
            await publish(kafka_bootstrap, topics.invoicing, [invoice(n)])
            await wait_for(lambda n=n: all_applied(app.state.pool, n + 1), message=f"event {n}")
        assert not refusals
        async with httpx.AsyncClient(base_url=url) as http:
            assert (await http.get("/health/live")).json() == {"status": "ok"}
        assert host.consumers[0].ready.is_set() and not await host.liveness()


async def test_a_consumer_that_dies_is_restarted_and_liveness_is_red_meanwhile(
        database, kafka_bootstrap, topic_prefix, migrations, monkeypatch):
    broken = asyncio.Event()
    broken.set()
    original = AIOKafkaConsumer.getmany

    async def getmany(self, *partitions, timeout_ms=0, max_records=None):
        if broken.is_set():
            raise RuntimeError("the fetcher broke")
        return await original(self, *partitions, timeout_ms=timeout_ms, max_records=max_records)

    monkeypatch.setattr(AIOKafkaConsumer, "getmany", getmany)
    control = Control()
    topics = Topics(topic_prefix)
    app, host = build(database, kafka_bootstrap, topic_prefix, migrations, control)
    async with running(app) as url, httpx.AsyncClient(base_url=url) as http:
        async def live_status():
            return (await http.get("/health/live")).status_code

        await wait_for(lambda: _equals(live_status(), 503), message="liveness red while the consumer is down")
        body = (await http.get("/health/live")).json()
        assert body["status"] == "down" and "RuntimeError('the fetcher broke')" in body["tasks_down"]["consumer:test"]
        broken.clear()
        await wait_for(lambda: _equals(live_status(), 200), timeout=60, message="liveness green once it is back")
        await publish(kafka_bootstrap, topics.invoicing, [invoice(1)])
        await wait_for(lambda: all_applied(app.state.pool, 1), timeout=60, message="the event, after the restart")


async def _equals(coro, value):
    return await coro == value


async def test_a_dead_letter_that_cannot_be_sent_yet_is_retried_until_it_is(
        database, kafka_bootstrap, topic_prefix, migrations, monkeypatch):
    control = Control()
    control.poison = {"I1"}
    topics = Topics(topic_prefix)
    app, host = build(database, kafka_bootstrap, topic_prefix, migrations, control)
    failures = [RuntimeError("broker away")] * 2
    async with running(app):
        original = host.producer.send_and_wait

        async def send_and_wait(topic, *args, **kwargs):
            if topic == topics.dead_letter and failures:
                raise failures.pop()
            return await original(topic, *args, **kwargs)

        monkeypatch.setattr(host.producer, "send_and_wait", send_and_wait)
        await publish(kafka_bootstrap, topics.invoicing, [invoice(0), invoice(1), invoice(2)])
        dead = await wait_for(lambda: read_topic(kafka_bootstrap, topics.dead_letter), timeout=60,
                              message="the dead letter, once the broker takes it")
        assert [e.data["invoice_id"] for e, _ in dead] == ["I1"] and not failures
        # The others may sit in another partition's batch, handled after the dead letter went.
        assert await wait_for(lambda: _equals(applied(app.state.pool), {"I0": 1, "I2": 1}),
                              message="the records around the poison one applied once each")


async def test_relays_and_consumers_run_only_in_their_roles(database, kafka_bootstrap, topic_prefix, migrations):
    for roles, relay, consumers in (("api", False, 0), ("api,relay", True, 0), ("worker", False, 1), ("all", True, 1)):
        app, host = build(database, kafka_bootstrap, topic_prefix, migrations, Control(), roles=roles)
        async with running(app):
            assert (host.relay is not None, len(host.consumers)) == (relay, consumers), roles


def _unique() -> str:
    return uuid.uuid4().hex[:8]


async def test_the_inbox_forgets_events_older_than_the_retention(database, kafka_bootstrap, topic_prefix, migrations):
    app, host = build(database, kafka_bootstrap, topic_prefix, migrations, Control(), inbox_retention_days=7)
    async with running(app):
        pool = app.state.pool
        await pool.execute(
            "INSERT INTO inbox (consumer, event_id, event_type, tenant_id, processed_at)"
            " SELECT 'plumbing.test', gen_random_uuid(), 'InvoiceIssued', 't1', now() - make_interval(days => d)"
            " FROM generate_series(0, 13) AS d, generate_series(1, 1500)")
        # The host prunes at start and then hourly; call it as its loop does until nothing is left.
        while await host._prune_inbox():
            pass
        ages = await pool.fetch("SELECT DISTINCT extract(day FROM now() - processed_at)::int AS d FROM inbox ORDER BY d")
        assert [r["d"] for r in ages] == list(range(7))
        assert await pool.fetchval("SELECT count(*) FROM inbox") == 7 * 1500
