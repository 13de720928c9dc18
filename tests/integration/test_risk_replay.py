"""The risk store is a function of the events: the same events, applied as one batch, one at a
time, or with every one delivered twice (a replay of the topics batches differently from the
first run), give the same invoice facts, the same counts, the same scores and the same
RiskAssessed events, ids and times included. Real PostgreSQL, the service's own consumer path."""
from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

import asyncpg
import pytest

from services.risk.bootstrap import MIGRATIONS
from services.risk.service_layer.handlers import Risk
from shared.clock import ManualClock
from shared.contract import (
    ContactOptedOut, DisputeOpened, InvoiceAdjusted, InvoiceCancelled, InvoiceIssued, InvoiceOverdue, InvoicePaid,
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
    names = [f"test_replay_{uuid.uuid4().hex[:10]}" for _ in range(3)]
    for name in names:
        await ensure_database(pg_server, name)
        await migrate(with_database(pg_server, name), MIGRATIONS)
    try:
        yield [with_database(pg_server, name) for name in names]
    finally:
        for name in names:
            await drop_database(pg_server, name)


async def apply(url: str, batches: list[list[bytes]]) -> dict:
    pool = await create_pool(url, max_size=2)

    async def no_dead_letters(record, reason):
        raise AssertionError(f"dead-lettered: {reason}")

    try:
        processor = EventProcessor(service="risk", name="risk.replay", pool=pool, dead_letter=no_dead_letters,
                                   handlers=Risk(ManualClock(START), Topics("")).handlers())
        offset = 0
        for batch in batches:
            records = []
            for value in batch:
                records.append(Record(value, offset=offset))
                offset += 1
            await processor.process_batch(records)
        conn: asyncpg.Connection
        async with pool.acquire() as conn:
            return {
                "invoices": [dict(r) for r in await conn.fetch(
                    "SELECT tenant_id, invoice_id, customer_id, currency, amount_minor, open_minor, issue_date, due_date,"
                    " status, paid_at, days_late, overdue_at, reopened, updated_at FROM risk_invoices ORDER BY 1, 2")],
                "customers": [dict(r) for r in await conn.fetch("SELECT * FROM risk_customers ORDER BY 1, 2")],
                "history": [dict(r) for r in await conn.fetch("SELECT * FROM risk_assessments ORDER BY 1, 2")],
                "risk": [dict(r) for r in await conn.fetch("SELECT * FROM customer_risk ORDER BY 1, 2")],
                "assessed": [(str(r["event_id"]), json.loads(r["envelope"])) for r in await conn.fetch(
                    "SELECT event_id, envelope::text AS envelope FROM outbox WHERE event_type = 'RiskAssessed'"
                    " ORDER BY event_id")],
            }
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
