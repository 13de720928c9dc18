"""The risk store is a function of the events: the same events, applied as one batch, one at a
time, or with every one delivered twice (a replay of the topics batches differently from the
first run), give the same invoice facts, the same counts, the same scores and the same
RiskAssessed events, ids and times included. Real PostgreSQL, the service's own consumer path."""
from __future__ import annotations

import json
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

import asyncpg
import pytest

from services.risk.bootstrap import MIGRATIONS
from services.risk.service_layer.handlers import Risk
from services.risk.service_layer import ordering
from services.risk.service_layer.ordering import OrderedRisk, staging_handlers
from shared.clock import ManualClock
from shared.contract import (
    ContactOptedOut, DisputeOpened, DisputeResolved, InvoiceAdjusted, InvoiceCancelled, InvoiceIssued, InvoiceOverdue, InvoicePaid,
    NotificationFailed, PaymentReceived, PaymentReversed, PromiseToPayBroken, Topics, new_envelope,
)
from shared.contract.events import Allocation, FieldChange
from shared.db import create_pool, drop_database, ensure_database, migrate, with_database
from shared.processing import EventProcessor

pytestmark = pytest.mark.integration

T = "t1"
START = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)


@dataclass
class Record:
    value: bytes
    topic: str = "replay"
    partition: int = 0
    offset: int = 0
    key: bytes | None = None
    headers: tuple = ()


def history() -> list[bytes]:
    """Two customers over two months: invoices issued, paid late, part-paid, reversed, adjusted,
    cancelled, overdue; a broken promise, a dispute, a bounce and an opt-out."""
    out: list = []
    at = START

    def add(payload, source="invoicing"):
        nonlocal at
        at += timedelta(hours=7)
        out.append(new_envelope(payload, source=source, tenant_id=T, subject=payload.customer_id, time=at))

    for c in ("c1", "c2"):
        for n in range(4):
            add(InvoiceIssued(customer_id=c, invoice_id=f"{c}-i{n}", billing_source="erp", external_id=f"{c}-{n}",
                              number=f"N-{c}-{n}", currency="EUR", amount_minor=10_000 * (n + 1),
                              issue_date=date(2026, 1, 5), due_date=date(2026, 1, 20) + timedelta(days=n)))
    add(InvoiceOverdue(customer_id="c1", invoice_id="c1-i0", number="N-c1-0", currency="EUR", open_amount_minor=10_000,
                       due_date=date(2026, 1, 20), overdue_since=datetime(2026, 1, 21, tzinfo=timezone.utc)))
    add(PaymentReceived(customer_id="c1", payment_id="p1", billing_source="erp", external_id="P1", currency="EUR",
                        amount_minor=10_000, received_at=datetime(2026, 2, 25, tzinfo=timezone.utc),
                        allocations=[Allocation(invoice_id="c1-i0", amount_minor=10_000, invoice_open_minor=0)]))
    add(InvoicePaid(customer_id="c1", invoice_id="c1-i0", currency="EUR", amount_minor=10_000,
                    due_date=date(2026, 1, 20), paid_at=datetime(2026, 2, 25, tzinfo=timezone.utc), days_late=36))
    add(PaymentReceived(customer_id="c2", payment_id="p2", billing_source="erp", external_id="P2", currency="EUR",
                        amount_minor=5_000, received_at=datetime(2026, 1, 19, tzinfo=timezone.utc),
                        allocations=[Allocation(invoice_id="c2-i0", amount_minor=5_000, invoice_open_minor=5_000)]))
    add(InvoicePaid(customer_id="c2", invoice_id="c2-i1", currency="EUR", amount_minor=20_000,
                    due_date=date(2026, 1, 21), paid_at=datetime(2026, 1, 18, tzinfo=timezone.utc), days_late=-3))
    add(PaymentReversed(customer_id="c1", payment_id="p1", billing_source="erp", external_id="P1", currency="EUR",
                        amount_minor=10_000, reversed_at=datetime(2026, 2, 27, tzinfo=timezone.utc),
                        reopened=[Allocation(invoice_id="c1-i0", amount_minor=10_000, invoice_open_minor=10_000)]))
    add(InvoiceAdjusted(customer_id="c2", invoice_id="c2-i2", billing_source="erp", external_id="c2-2", number="N-c2-2",
                        currency="EUR", amount_minor=25_000, open_amount_minor=25_000, issue_date=date(2026, 1, 5),
                        due_date=date(2026, 1, 22), changes={"amount_minor": FieldChange(old=30_000, new=25_000)}))
    add(InvoiceCancelled(customer_id="c2", invoice_id="c2-i3", billing_source="erp", external_id="c2-3",
                         number="N-c2-3", currency="EUR", cancelled_at=datetime(2026, 1, 30, tzinfo=timezone.utc)))
    add(PromiseToPayBroken(customer_id="c1", promise_id=str(uuid.uuid4()), amount_minor=10_000, paid_minor=0,
                           promised_date=date(2026, 3, 1), broken_at=datetime(2026, 3, 4, tzinfo=timezone.utc)),
        "dunning")
    add(DisputeOpened(customer_id="c2", dispute_id=str(uuid.uuid4()), origin="collector", reason="price",
                      opened_at=datetime(2026, 2, 2, tzinfo=timezone.utc)), "dunning")
    add(NotificationFailed(customer_id="c1", notification_key="k1", channel="email", reason="550 user unknown",
                           failed_at=datetime(2026, 3, 5, tzinfo=timezone.utc), code="bounced", bounce_class="hard"),
        "notifier")
    add(ContactOptedOut(customer_id="c1", channel="sms", source="sms_keyword",
                        opted_out_at=datetime(2026, 3, 6, tzinfo=timezone.utc)), "notifier")
    return [e.model_dump_json().encode() for e in out]


@pytest.fixture
async def stores(pg_server: str) -> AsyncIterator[list[str]]:
    names = [f"test_replay_{uuid.uuid4().hex[:10]}" for _ in range(5)]
    for name in names:
        await ensure_database(pg_server, name)
        await migrate(with_database(pg_server, name), MIGRATIONS)
    try:
        yield [with_database(pg_server, name) for name in names]
    finally:
        for name in names:
            await drop_database(pg_server, name)


async def snapshot(conn: asyncpg.Connection) -> dict:
    """Everything the behaviour consumer wrote: facts, scores, their history, RiskAssessed events."""
    return {
        "invoices": [dict(r) for r in await conn.fetch(
            "SELECT tenant_id, invoice_id, customer_id, currency, amount_minor, open_minor, issue_date, due_date,"
            " status, paid_at, days_late, overdue_at, reopened, updated_at FROM risk_invoices ORDER BY 1, 2")],
        "customers": [dict(r) for r in await conn.fetch("SELECT * FROM risk_customers ORDER BY 1, 2")],
        "history": [dict(r) for r in await conn.fetch("SELECT * FROM risk_assessments ORDER BY 1, 2")],
        "risk": [dict(r) for r in await conn.fetch("SELECT * FROM customer_risk ORDER BY 1, 2")],
        "waiting": await conn.fetchval("SELECT count(*) FROM risk_pending_events"),
        "assessed": [(str(r["event_id"]), json.loads(r["envelope"])) for r in await conn.fetch(
            "SELECT event_id, envelope::text AS envelope FROM outbox WHERE event_type = 'RiskAssessed'"
            " ORDER BY event_id")],
    }


async def apply(url: str, batches: list[list[bytes]]) -> dict:
    """Feed `batches` as records of one partition, no consumer behind them."""
    offset, fed = 0, []
    for batch in batches:
        fed.append([Record(value, offset=offset + i) for i, value in enumerate(batch)])
        offset += len(batch)
    return await apply_records(url, fed)


async def apply_records(url: str, batches: list[list[Record]], log_ends: dict[tuple[str, int], int] | None = None,
                        parsed: dict | None = None) -> dict:
    """Feed `batches` through the behaviour consumer's path; `log_ends` plays the consumer's
    view of the partitions (every record already on the broker, as in a rebuild), None: no
    consumer behind the records (each batch folds at once)."""
    pool = await create_pool(url, max_size=2)

    async def no_dead_letters(record, reason):
        raise AssertionError(f"dead-lettered: {reason}")

    positions = None if log_ends is None else (lambda: {tp: (end, None) for tp, end in log_ends.items()})
    try:
        processor = OrderedRisk(Risk(ManualClock(START), Topics("")), pool, EventProcessor(
            service="risk", name="risk.replay", pool=pool, dead_letter=no_dead_letters,
            handlers=staging_handlers(parsed)), positions=positions, parsed=parsed)
        for batch in batches:
            await processor.process_batch(batch)
        async with pool.acquire() as conn:
            return await snapshot(conn)
    finally:
        await pool.close()


async def test_the_store_and_its_risk_assessed_events_do_not_depend_on_batching_or_redelivery(stores):
    events = history()
    as_one_batch = await apply(stores[0], [events])
    one_at_a_time = await apply(stores[1], [[e] for e in events])
    twice = await apply(stores[2], [events[:9] + events[:9], events[9:] + events])  # every event redelivered

    assert as_one_batch == one_at_a_time == twice
    invoices = {r["invoice_id"]: r for r in as_one_batch["invoices"]}
    assert (invoices["c1-i0"]["status"], invoices["c1-i0"]["open_minor"], invoices["c1-i0"]["reopened"]) == (
        "open", 10_000, 1)  # paid 36 days late, then the payment bounced
    assert invoices["c1-i0"]["overdue_at"] is not None and invoices["c1-i0"]["paid_at"] is None
    assert (invoices["c2-i0"]["open_minor"], invoices["c2-i1"]["status"], invoices["c2-i1"]["days_late"]) == (
        5_000, "paid", -3)
    assert (invoices["c2-i2"]["amount_minor"], invoices["c2-i3"]["status"]) == (25_000, "cancelled")
    counts = {r["customer_id"]: r for r in as_one_batch["customers"]}
    assert (counts["c1"]["promises_broken"], counts["c1"]["payments_reversed"], counts["c1"]["contacts_bounced"],
            counts["c1"]["contacts_opted_out"], counts["c2"]["disputes_opened"]) == (1, 1, 1, 1, 1)
    assert {r["customer_id"] for r in as_one_batch["history"]} == {"c1", "c2"}
    # every RiskAssessed is caused by an event, at its time, with an id derived from it
    assessed = as_one_batch["assessed"]
    assert assessed and all(e["causation_id"] and e["time"] == e["data"]["assessed_at"] for _, e in assessed)
    assert len({event_id for event_id, _ in assessed}) == len(assessed)


def three_topics() -> list[Record]:
    """Four customers over five months, their events on three topics of two partitions each:
    invoices issued and paid later and later (invoicing), promises broken and disputes rejected
    (dunning), bounces (notifier), interleaved in time so that when a dunning or notifier event
    is counted moves grades. Offsets are each partition's own."""
    rng = random.Random(11)
    timeline: list[tuple[datetime, str, object]] = []
    for c in ("c1", "c2", "c3", "c4"):
        for n in range(14):
            issued_at = START + timedelta(days=10 * n, hours=rng.randrange(24))
            due = issued_at.date() + timedelta(days=14)
            late = rng.choice([-2, 0, 3, 12, 35, 50]) + n * (3 if c in ("c1", "c3") else 0)
            timeline.append((issued_at, "invoicing", InvoiceIssued(
                customer_id=c, invoice_id=f"{c}-i{n}", billing_source="erp", external_id=f"{c}-{n}", number=f"N{c}{n}",
                currency="EUR", amount_minor=rng.randrange(5, 50) * 10_000, issue_date=issued_at.date(),
                due_date=due)))
            paid_at = datetime.combine(due + timedelta(days=late), datetime.min.time(), timezone.utc) + timedelta(
                hours=rng.randrange(1, 20))
            timeline.append((paid_at, "invoicing", InvoicePaid(
                customer_id=c, invoice_id=f"{c}-i{n}", currency="EUR", amount_minor=10_000, due_date=due,
                paid_at=paid_at, days_late=late)))
            when = issued_at + timedelta(days=rng.randrange(1, 9), minutes=rng.randrange(600))
            if rng.random() < 0.35:
                timeline.append((when, "dunning", PromiseToPayBroken(
                    customer_id=c, promise_id=f"{c}-p{n}", amount_minor=10_000, paid_minor=0,
                    promised_date=when.date(), broken_at=when)))
            elif rng.random() < 0.3:
                timeline.append((when, "dunning", DisputeResolved(
                    customer_id=c, dispute_id=f"{c}-d{n}", resolution="no", resolved_by="k1", resolved_at=when,
                    outcome="rejected")))
            if rng.random() < 0.3:
                at = when + timedelta(hours=3)
                timeline.append((at, "notifier", NotificationFailed(
                    customer_id=c, notification_key=f"{c}-n{n}", channel="email", reason="550 user unknown",
                    failed_at=at, code="bounced", bounce_class="hard")))
    timeline.sort(key=lambda x: x[0])
    offsets: dict[tuple[str, int], int] = {}
    records = []
    for at, topic, payload in timeline:
        partition = int(payload.customer_id[1]) % 2
        offset = offsets[(topic, partition)] = offsets.get((topic, partition), -1) + 1
        env = new_envelope(payload, source=topic, tenant_id=T, subject=payload.customer_id, time=at)
        records.append(Record(env.model_dump_json().encode(), topic=topic, partition=partition, offset=offset))
    return records


def interleaved(records: list[Record], order: list[tuple[str, int]], size: int) -> list[list[Record]]:
    """Batches of `size` as a consumer might fetch them: partitions in `order`, each to its end."""
    out: list[list[Record]] = []
    for tp in order:
        mine = [r for r in records if (r.topic, r.partition) == tp]
        out.extend(mine[i:i + size] for i in range(0, len(mine), size))
    return out


def shuffled(records: list[Record], size: int) -> list[list[Record]]:
    """Batches of `size` drawing the next record from a random partition: each keeps its order."""
    rng = random.Random(5)
    queues: dict[tuple[str, int], list[Record]] = {}
    for r in records:
        queues.setdefault((r.topic, r.partition), []).append(r)
    flat = []
    while queues:
        tp = rng.choice(sorted(queues))
        flat.append(queues[tp].pop(0))
        if not queues[tp]:
            del queues[tp]
    return [flat[i:i + size] for i in range(0, len(flat), size)]


async def test_the_parse_cache_changes_nothing_and_forgets_what_another_worker_folded(stores, monkeypatch):
    events = history()
    batches = [[Record(v, offset=i + j) for j, v in enumerate(events[i:i + 4])] for i in range(0, len(events), 4)]
    without = await apply_records(stores[0], batches)
    monkeypatch.setattr(ordering, "PARSED_KEPT", 6)
    # events another worker staged and folded (nothing of them waits in this store): never popped here
    stale = {("replay", 0, 10_000 + i): None for i in range(6)}
    parsed = dict(stale)
    with_cache = await apply_records(stores[1], batches, parsed=parsed)
    assert with_cache == without
    assert not set(parsed) & set(stale) and len(parsed) <= 6


async def test_a_rebuild_gives_the_same_events_however_the_consumer_interleaves_the_three_topics(stores):
    """Whatever order a consumer reads the partitions of the three topics in, the events fold in
    one order (by time), so the store and every RiskAssessed, id and time included, come out
    the same as live, where they arrive in time order. Without the ordering (no consumer
    view: each batch folds as it comes) the same interleavings give different events: the
    scenario really depends on it."""
    records = three_topics()
    ends = {}
    for r in records:
        ends[(r.topic, r.partition)] = max(ends.get((r.topic, r.partition), 0), r.offset + 1)
    ends[("notifier", 1)] = ends.get(("notifier", 1), 0)  # an empty partition never holds anything back
    partitions = sorted(ends)
    live = [[r] for r in records]  # in time order, one at a time, as they happen
    invoicing_first = interleaved(records, partitions[2:] + partitions[:2], 25)  # dunning after invoicing
    reversed_order = interleaved(records, partitions[::-1], 7)
    mixed = shuffled(records, 9)  # the partitions drawn from at random, each one's order kept

    as_live = await apply_records(stores[0], live, ends)
    assert as_live["waiting"] == 0 and len(as_live["assessed"]) >= 8
    for i, batches in enumerate((invoicing_first, reversed_order, mixed), start=1):
        assert await apply_records(stores[i], batches, ends) == as_live

    unordered = await apply_records(stores[4], invoicing_first)
    assert [e for e, _ in unordered["assessed"]] != [e for e, _ in as_live["assessed"]]


class FailingFor(Risk):
    """Risk whose fold fails while `broken` names a customer in it (a bug, not the database)."""
    broken: str | None = None

    async def fold(self, conn, events):
        if any(e.payload.customer_id == self.broken for e in events):
            raise RuntimeError(f"cannot fold {self.broken}")
        await super().fold(conn, events)


async def test_an_event_that_fails_to_fold_holds_back_only_its_customer_until_it_folds(stores):
    events = history()
    pool = await create_pool(stores[0], max_size=2)

    async def no_dead_letters(record, reason):
        raise AssertionError(f"dead-lettered: {reason}")

    risk = FailingFor(ManualClock(START), Topics(""))
    risk.broken = "c2"
    processor = OrderedRisk(risk, pool, EventProcessor(service="risk", name="risk.replay", pool=pool,
                                                       dead_letter=no_dead_letters, handlers=staging_handlers()))
    try:
        await processor.process_batch([Record(v, offset=i) for i, v in enumerate(events)])
        held = await pool.fetch("SELECT customer_id, failed FROM risk_pending_events WHERE failed IS NOT NULL")
        assert [(r["customer_id"], r["failed"]) for r in held] == [("c2", "RuntimeError('cannot fold c2')")]
        waiting = await pool.fetchval("SELECT count(*) FROM risk_pending_events WHERE customer_id = 'c2'")
        assert waiting == sum(1 for v in events if b'"customer_id":"c2"' in v)  # all of c2's, in order
        assert await pool.fetchval("SELECT count(*) FROM risk_pending_events WHERE customer_id = 'c1'") == 0
        assert await processor.advance() == 0  # still held: not retried on every batch

        risk.broken = None  # the fix is deployed: the minute's retry folds them, in order
        assert await processor.advance(retry_failed=True) == waiting
    finally:
        await pool.close()
    clean = await apply(stores[1], [events])
    fixed = await apply_records(stores[0], [])
    assert fixed == clean
