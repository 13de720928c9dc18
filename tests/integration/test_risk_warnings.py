"""Early warnings in the risk stream worker, as a real process against the broker and PostgreSQL:
each of the five signals fires once per window with its evidence (and look-alikes do not), a
redelivery raises nothing again, and a restart that loses the faust tables (their changelogs
tombstoned) followed by a replay of the whole history changes no warning - while a signal
completed after the restart is still decided from the database.

The replay republishes every event: resetting the worker group's committed offsets to 0 on this
broker (possible only as a member of the group, under faust's protocol name) made the restarted
faust worker replay some partitions only partly and then stall on them in about 1 run in 4."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from aiokafka.partitioner import murmur2
from fastapi import FastAPI

from services.risk.adapters.warnings import customer_warnings
from services.risk.bootstrap import build
from services.risk.domain.warnings import BOUNCE_WINDOW, DELAY_WINDOW, EXPOSURE_WINDOW
from services.risk.service_layer.handlers import derived_event_id
from services.risk.settings import RiskSettings
from shared.clock import ManualClock
from shared.contract import (
    Envelope, EventPayload, InvoiceIssued, InvoicePaid, NotificationFailed, PaymentReceived, PaymentReversed,
    PromiseToPayBroken, Topics, new_envelope, partition_key,
)
from shared.kafka import start_producer
from tahsilat.embedded import stop_process
from tahsilat.streams import read_events, read_records, read_topic
from tests.support import FAST_KAFKA, running, wait_for

pytestmark = pytest.mark.integration

TENANT = "t1"
PARTITIONS = 2
REPO = Path(__file__).resolve().parents[2]
UTC = timezone.utc
HOUR, DAY = timedelta(hours=1), timedelta(days=1)
# Event times near the wall clock: faust drops windows that expired by the wall clock.
NOW = datetime.now(UTC).replace(microsecond=0)
TABLES = ("ew-days-late", "ew-invoiced", "ew-paid", "ew-reversals", "ew-broken-promises", "ew-bounces")


def partition_of(customer_id: str) -> int:
    return (murmur2(partition_key(TENANT, customer_id).encode()) & 0x7FFFFFFF) % PARTITIONS


def customer_on(partition: int, prefix: str) -> str:
    return next(f"{prefix}-{i}" for i in range(1000) if partition_of(f"{prefix}-{i}") == partition)


def env(payload: EventPayload, source: str, at: datetime, subject: str) -> Envelope:
    return new_envelope(payload, source=source, tenant_id=TENANT, subject=subject, time=at)


def issued(customer: str, invoice: str, at: datetime, amount: int, currency: str = "TRY") -> Envelope:
    return env(InvoiceIssued(customer_id=customer, invoice_id=invoice, billing_source="erp", external_id=invoice,
                             number=invoice, currency=currency, amount_minor=amount, issue_date=at.date(),
                             due_date=at.date() + timedelta(days=30)), "invoicing", at, invoice)


def received(customer: str, payment: str, at: datetime, amount: int) -> Envelope:
    return env(PaymentReceived(customer_id=customer, payment_id=payment, billing_source="erp", external_id=payment,
                               currency="TRY", amount_minor=amount, received_at=at), "invoicing", at, payment)


def paid(customer: str, invoice: str, at: datetime, days_late: int) -> Envelope:
    return env(InvoicePaid(customer_id=customer, invoice_id=invoice, currency="TRY", amount_minor=10_000,
                           due_date=(at - days_late * DAY).date(), paid_at=at, days_late=days_late),
               "invoicing", at, invoice)


def reversed_(customer: str, payment: str, at: datetime) -> Envelope:
    return env(PaymentReversed(customer_id=customer, payment_id=payment, billing_source="erp", external_id=payment,
                               currency="TRY", amount_minor=25_000, reopened=[], reversed_at=at),
               "invoicing", at, payment)


def broken(customer: str, promise: str, at: datetime) -> Envelope:
    return env(PromiseToPayBroken(customer_id=customer, promise_id=promise, amount_minor=50_000, paid_minor=0,
                                  promised_date=(at - 3 * DAY).date(), broken_at=at), "dunning", at, promise)


def failed(customer: str, key: str, at: datetime, code: str = "bounced") -> Envelope:
    return env(NotificationFailed(customer_id=customer, notification_key=key, channel="email", reason=code,
                                  failed_at=at, code=code), "notifier", at, key)


@dataclass
class Stack:
    app: FastAPI
    settings: RiskSettings
    topics: Topics
    producer: Any
    bootstrap: str
    database: str
    tmp: Path
    workers: list[subprocess.Popen] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    rounds: int = 0

    @property
    def app_id(self) -> str:
        return f"{self.settings.topic_prefix}risk-stream"

    def start_worker(self) -> None:
        n = len(self.workers)
        environ = {
            **os.environ, "DATABASE_URL": self.database, "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "TOPIC_PREFIX": self.settings.topic_prefix, "KAFKA_PARTITIONS": str(PARTITIONS),
            "KAFKA_SESSION_TIMEOUT_MS": "2000", "KAFKA_HEARTBEAT_INTERVAL_MS": "500",
            "STREAM_DATA_DIR": str(self.tmp / f"stream-{n}"),  # a fresh faust data dir each time
            "LOG_FORMAT": "console",
        }
        log_path = self.tmp / f"stream-worker-{n}.log"
        with log_path.open("wb") as log:
            self.workers.append(subprocess.Popen([sys.executable, "-m", "services.risk", "stream"], env=environ,
                                                 cwd=REPO, stdout=log, stderr=subprocess.STDOUT))
        self.logs.append(log_path)

    async def stop_worker(self) -> None:
        await asyncio.to_thread(stop_process, self.workers[-1])

    def check_worker(self) -> None:
        worker = self.workers[-1]
        if worker.poll() is not None:
            raise AssertionError(f"the stream worker exited with {worker.returncode}")

    async def publish(self, *envelopes: Envelope) -> None:
        topic = {"invoicing": self.topics.invoicing, "dunning": self.topics.dunning,
                 "notifier": self.topics.notifier}
        for e in envelopes:
            await self.producer.send_and_wait(topic[e.source], e.model_dump_json().encode(), key=e.key.encode())

    async def drain(self, timeout: float = 30) -> None:
        """Publish a sentinel on every partition of every source topic and wait until the warnings
        consumer has handled them all: everything published before is handled then."""
        self.rounds += 1
        at = NOW - 400 * DAY  # far from every scenario's windows
        sentinels = []
        for p in range(PARTITIONS):
            sentinels += [issued(customer_on(p, f"s-inv-{self.rounds}"), f"S-{self.rounds}-{p}", at, 1),
                          broken(customer_on(p, f"s-dun-{self.rounds}"), f"S-{self.rounds}-{p}", at),
                          failed(customer_on(p, f"s-not-{self.rounds}"), f"S-{self.rounds}-{p}", at, "gave_up")]
        await self.publish(*sentinels)
        ids = [e.id for e in sentinels]

        async def handled() -> bool:
            self.check_worker()
            return await self.app.state.pool.fetchval(
                "SELECT count(*) FROM inbox WHERE consumer = 'risk.warnings' AND event_id = ANY($1::uuid[])",
                ids) == len(ids)

        await wait_for(handled, timeout=timeout, message="the sentinels handled by the warnings consumer")

    async def warnings(self) -> dict[str, dict]:
        rows = await self.app.state.pool.fetch("SELECT * FROM risk_early_warnings ORDER BY raised_at")
        return {r["customer_id"] + "/" + r["signal"]: {
            **dict(r)} for r in rows}  # the pool decodes jsonb

    async def raised(self) -> list[Envelope]:
        """EarlyWarningRaised on the risk topic, once the outbox has none left to publish."""
        pending = await self.app.state.pool.fetchval(
            "SELECT count(*) FROM outbox WHERE event_type = 'EarlyWarningRaised'")
        if pending:
            return []
        return [e for e in await read_events(self.bootstrap, self.topics.risk) if e.type == "EarlyWarningRaised"]

    async def dead_letters(self) -> dict[str, int]:
        """Dead letters per consumer."""
        out: dict[str, int] = {}
        for _, h in await read_topic(self.bootstrap, self.topics.dead_letter):
            out[h.get("dlq_consumer", "?")] = out.get(h.get("dlq_consumer", "?"), 0) + 1
        return out

    async def lose_tables(self) -> dict[str, list[tuple[int, list]]]:
        """Tombstone every key of every early-warning changelog (a lost changelog); returns the
        (partition, key) of each record found."""
        found: dict[str, list[tuple[int, list]]] = {}
        for table in TABLES:
            topic = f"{self.app_id}-{table}-changelog"
            records = await read_records(self.bootstrap, topic, timeout=10)
            found[table] = [(r.partition, json.loads(r.key)) for r in records]
            for r in records:
                await self.producer.send_and_wait(topic, None, key=r.key, partition=r.partition)
        return found


@pytest.fixture
async def stack(database: str, kafka_bootstrap: str, topic_prefix: str, tmp_path: Path) -> AsyncIterator[Stack]:
    settings = RiskSettings(database_url=database, kafka_bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix,
                            kafka_partitions=PARTITIONS, poll_interval_seconds=0.1, **FAST_KAFKA)
    app = build(settings, ManualClock(NOW))
    async with running(app):  # migrates the database, creates the topics, relays the outbox
        producer = await start_producer(kafka_bootstrap)
        s = Stack(app, settings, Topics(topic_prefix), producer, kafka_bootstrap, database, tmp_path)
        try:
            yield s
        except BaseException:
            for path in s.logs:
                print(f"--- {path.name}\n" + path.read_text(errors="replace")[-5000:])  # shown by pytest on failure
            raise
        finally:
            await producer.stop()
            for w in s.workers:
                await asyncio.to_thread(stop_process, w)


def day(moment: datetime) -> str:
    return moment.date().isoformat()


async def test_early_warnings_fire_once_per_window_and_survive_redelivery_and_lost_tables(stack: Stack):
    # A dealer group: c-delay's parent is dealer-1 (what the behaviour agent records from master data).
    await stack.app.state.pool.execute(
        "INSERT INTO risk_customers (tenant_id, customer_id, parent_id) VALUES ($1, 'c-delay', 'dealer-1')", TENANT)

    # delay_jump: norm 2, 3, 4 days late (mean 3, threshold 18); then 30 days late, then 40 in the same window.
    wd = DELAY_WINDOW.current(NOW - 5 * DAY)
    d_jump = paid("c-delay", "INV-D4", wd.start + HOUR, 30)
    delay = [paid("c-delay", f"INV-D{i}", wd.start - (4 - i) * 30 * DAY + HOUR, 1 + i) for i in (1, 2, 3)]
    delay += [d_jump, paid("c-delay", "INV-D5", wd.start + 2 * HOUR, 40)]
    # ... and a customer with a norm of only two invoices: no warning, however late.
    delay += [paid("c-delay-2", f"INV-DD{i}", wd.start - i * 30 * DAY, 0) for i in (1, 2)]
    delay += [paid("c-delay-2", "INV-DD3", wd.start + HOUR, 90)]

    # exposure: 500.00 paid, then 1,000.00 invoiced (exactly twice: no), then 600.00 more (fires), then 50.00.
    we = EXPOSURE_WINDOW.earliest(NOW - 5 * DAY)
    late = we.start + 23 * DAY  # invoices from here on decide the window `we`
    exposure = [received("c-exp", "P-E1", we.start + 5 * DAY, 50_000), issued("c-exp", "INV-E1", late + HOUR, 100_000),
                issued("c-exp", "INV-E2", late + 2 * HOUR, 60_000), issued("c-exp", "INV-E3", late + 3 * HOUR, 5_000),
                issued("c-exp", "INV-EUR", late + 3 * HOUR, 90_000, currency="EUR"),  # EUR: 900.00, under the floor
                received("c-exp-ok", "P-O1", we.start + 5 * DAY, 60_000),
                issued("c-exp-ok", "INV-O1", late + HOUR, 120_000)]  # twice the payments, not more

    # repeated_reversals: exactly 30 days apart (fires); 30 days and an hour apart (no).
    r1 = NOW - 40 * DAY
    reversals = [reversed_("c-rev", "P-R1", r1), reversed_("c-rev", "P-R2", r1 + 30 * DAY),
                 reversed_("c-rev-2", "P-Q1", r1), reversed_("c-rev-2", "P-Q2", r1 + 30 * DAY + HOUR)]

    # orders_after_broken_promise: invoices 5 and 12 days after (one warning); another customer orders
    # before its promise broke and 31 days after it (none). Small amounts: no exposure warning.
    b = NOW - 20 * DAY
    promises = [broken("c-ptp", "PTP-1", b), issued("c-ptp", "INV-P1", b + 5 * DAY, 10_000),
                issued("c-ptp", "INV-P2", b + 12 * DAY, 10_000),
                issued("c-ptp-2", "INV-Q0", b - 40 * DAY - HOUR, 10_000), broken("c-ptp-2", "PTP-2", b - 40 * DAY),
                issued("c-ptp-2", "INV-Q1", b - 40 * DAY + 31 * DAY, 10_000)]

    # contacts_bouncing: a bounce and a complaint in one 14-day window (fires), a third (no second);
    # a bounce plus a suppressed send (no); two bounces a second apart across a window boundary (no).
    wb = BOUNCE_WINDOW.current(NOW - 8 * DAY)
    bounces = [failed("c-bounce", "n-1", wb.start + HOUR), failed("c-bounce", "n-2", wb.start + 2 * HOUR, "complaint"),
               failed("c-bounce", "n-3", wb.start + 3 * HOUR),
               failed("c-bounce-2", "m-1", wb.start + HOUR), failed("c-bounce-2", "m-2", wb.start + 2 * HOUR, "suppressed"),
               failed("c-bounce-3", "k-1", wb.start - timedelta(seconds=1)), failed("c-bounce-3", "k-2", wb.start),
               # completed only after the restart below
               failed("c-after", "a-1", wb.start + HOUR)]

    everything = [*delay, *exposure, *reversals, *promises, *bounces]
    stack.start_worker()
    await stack.publish(*everything)
    await stack.producer.send_and_wait(stack.topics.invoicing, b"not an envelope", key=b"t1:c-garbage")
    await stack.drain(timeout=45)

    first = await wait_for(stack.warnings, message="warnings")
    assert sorted(first) == ["c-bounce/contacts_bouncing", "c-delay/delay_jump", "c-exp/exposure_outpacing_payments",
                             "c-ptp/orders_after_broken_promise", "c-rev/repeated_reversals"]

    w = first["c-delay/delay_jump"]
    assert w["group_id"] == "dealer-1" and w["window_start"] == wd.start and w["raised_at"] == d_jump.time
    assert {k: w["evidence"][k] for k in ("invoice_id", "days_late", "prior_invoices", "norm_days_late")} == {
        "invoice_id": "INV-D4", "days_late": 30, "prior_invoices": 3, "norm_days_late": 3.0}
    assert w["evidence"]["prior_invoice_ids"] == ["INV-D1", "INV-D2", "INV-D3"]
    assert w["cause_event_id"] == d_jump.id
    assert w["event_id"] == derived_event_id(d_jump, f"EarlyWarningRaised:{w['warning_id']}")
    assert w["stream_view"] == {"max_days_late": 30}

    w = first["c-exp/exposure_outpacing_payments"]
    assert (w["scope"], w["window_start"], w["window_end"]) == ("TRY", we.start, we.end)
    assert {k: w["evidence"][k] for k in ("invoiced_minor", "paid_minor", "invoices", "payments", "invoice_id")} == {
        "invoiced_minor": 160_000, "paid_minor": 50_000, "invoices": 2, "payments": 1, "invoice_id": "INV-E2"}
    # the faust tables (event-time hopping windows) saw the same window as the database
    assert w["stream_view"] == {"invoiced_minor": 160_000, "paid_minor": 50_000, "broken_promises": 0}

    w = first["c-rev/repeated_reversals"]
    assert w["explanation"] == f"2 payments reversed within 30 days: P-R1 on {day(r1)} and P-R2 on {day(r1 + 30 * DAY)}"
    assert (w["window_start"], w["window_end"]) == (r1, r1 + 30 * DAY)

    w = first["c-ptp/orders_after_broken_promise"]
    assert w["scope"] == "PTP-1" and w["window_start"] == b and "INV-P1" in w["evidence"]["invoice_ids"]
    assert w["evidence"]["promise_id"] == "PTP-1"

    w = first["c-bounce/contacts_bouncing"]
    assert w["window_start"] == wb.start
    assert w["evidence"]["notification_keys"] == ["n-1", "n-2"] and w["evidence"]["codes"] == ["bounced", "complaint"]
    assert w["stream_view"] == {"bounces": 2}

    events = await wait_for(lambda: _count(stack.raised, 5), message="five EarlyWarningRaised on the risk topic")
    by_id = {e.id: e for e in events}
    for w in first.values():
        e = by_id[w["event_id"]]
        assert e.data["warning_id"] == str(w["warning_id"]) and e.data["signal"] == w["signal"]
        assert e.data["evidence"] == w["evidence"] and e.data["explanation"] == w["explanation"]
        assert e.causation_id == str(w["cause_event_id"]) and e.key == f"{TENANT}:{w['customer_id']}"
        assert e.time == w["raised_at"]
    assert by_id[first["c-delay/delay_jump"]["event_id"]].data["group_id"] == "dealer-1"
    assert by_id[first["c-rev/repeated_reversals"]["event_id"]].data["group_id"] is None

    # The read the API will serve; a group's parent sees its customers' warnings.
    async with stack.app.state.pool.acquire() as conn:
        assert [x["signal"] for x in await customer_warnings(conn, TENANT, "c-exp")] == ["exposure_outpacing_payments"]
        assert [x["customer_id"] for x in await customer_warnings(conn, TENANT, "dealer-1")] == ["c-delay"]
        assert await customer_warnings(conn, "t2", "c-exp") == []

    # Redelivery: the same events again raise nothing.
    await stack.publish(*everything)
    await stack.drain()
    assert await stack.warnings() == first
    assert {e.id for e in await wait_for(lambda: _count(stack.raised, 5), message="still five")} == set(by_id)
    # the record neither agent can read is dead-lettered once, by the behaviour agent
    assert await wait_for(lambda: _count(stack.dead_letters, 1, _total), message="the garbage dead-lettered") == {
        "risk.behaviour": 1}

    # The faust tables wrote their changelog to the partition of the record that changed them.
    await stack.stop_worker()
    changelog = await stack.lose_tables()
    assert changelog["ew-bounces"] and changelog["ew-invoiced"]
    for table, records in changelog.items():
        for partition, (key, window) in records:
            assert partition == partition_of(key.split(":")[1]), (table, key)
    # ... under the event-time window (the envelope's time, not the broker's timestamp)
    assert {window[0] for _, (key, window) in changelog["ew-bounces"] if key == "t1:c-bounce"} == {wb.start.timestamp()}

    # Restart with the tables lost (a fresh data dir, the changelogs tombstoned) and replay the whole
    # history: the same warnings; and a signal completed now is decided from the database though the
    # tables forgot its first half.
    stack.start_worker()
    await stack.publish(*everything)
    await stack.producer.send_and_wait(stack.topics.invoicing, b"not an envelope", key=b"t1:c-garbage")
    await stack.publish(failed("c-after", "a-2", wb.start + 5 * HOUR, "complaint"))
    await stack.drain(timeout=45)
    assert await wait_for(lambda: _count(stack.dead_letters, 2, _total), message="the replayed garbage dead-lettered") == {
        "risk.behaviour": 2}

    after = await wait_for(lambda: _count(stack.warnings, 6), message="six warnings")
    assert {k: v for k, v in after.items() if k != "c-after/contacts_bouncing"} == first
    w = after["c-after/contacts_bouncing"]
    assert w["evidence"]["notification_keys"] == ["a-1", "a-2"] and w["evidence"]["failures"] == 2
    assert w["stream_view"] == {"bounces": 1}  # the lost table saw only the second one
    events = await wait_for(lambda: _count(stack.raised, 6), message="six EarlyWarningRaised")
    assert {e.id for e in events} == set(by_id) | {w["event_id"]}
    stack.check_worker()


async def _count(fetch, n: int, size=len):
    """What `fetch()` returns once its size is `n` (fails the wait if it grows past `n`)."""
    got = await fetch()
    assert size(got) <= n, f"{size(got)} > {n}: {got!r}"[:2000]
    return got if size(got) == n else None


def _total(counts: dict[str, int]) -> int:
    return sum(counts.values())
