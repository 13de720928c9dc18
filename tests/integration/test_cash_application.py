"""Cash application to the cent: exact, partial, over-payment credit applied to the next invoice,
multi-invoice, mixed currencies, unknown customer, reversal; and dunning following along."""
from __future__ import annotations

import asyncio
from collections import Counter
from datetime import datetime, timezone

import pytest

from services.invoicing.bootstrap import build
from services.invoicing.settings import InvoicingSettings
from shared.clock import ManualClock
from shared.contract import Topics
from tahsilat.streams import read_events
from tests.support import FAST_KAFKA, api_key, client, running, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
async def service(database, kafka_bootstrap, topic_prefix):
    settings = InvoicingSettings(database_url=database, kafka_bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix,
                                 kafka_partitions=2, poll_interval_seconds=0.1, **FAST_KAFKA)
    app = build(settings, ManualClock(datetime(2026, 3, 1, 9, tzinfo=timezone.utc)))
    async with running(app) as url:
        async with client(url, await api_key(app, "t1", "billing-source", "erp")) as http:
            yield app, http, Topics(topic_prefix)


def invoice(external_id, amount, currency="EUR", due="2026-03-10", customer_id="C1"):
    return {"external_id": external_id, "customer_id": customer_id, "currency": currency, "amount_minor": amount,
            "issue_date": "2026-02-01", "due_date": due}


def payment(external_id, amount, currency="EUR", customer_id="C1", **over):
    return {"external_id": external_id, "customer_id": customer_id, "currency": currency, "amount_minor": amount} | over


async def open_amounts(app) -> dict[str, tuple[int, str]]:
    return {r["external_id"]: (r["open_minor"], r["status"])
            for r in await app.state.pool.fetch("SELECT external_id, open_minor, status FROM invoices")}


async def balance_reconciles(app, customer="C1") -> None:
    """The ledger balance equals what is open minus unapplied credit, per currency, to the cent."""
    pool = app.state.pool
    ledger = {r["currency"]: r["s"] for r in await pool.fetch(
        "SELECT currency, sum(amount_minor) AS s FROM ledger_entries WHERE customer_id = $1 GROUP BY currency", customer)}
    open_ = {r["currency"]: r["s"] for r in await pool.fetch(
        "SELECT currency, sum(open_minor) AS s FROM invoices WHERE customer_id = $1 GROUP BY currency", customer)}
    credit = {r["currency"]: r["s"] for r in await pool.fetch(
        "SELECT currency, sum(unapplied_minor) AS s FROM payments WHERE customer_id = $1 GROUP BY currency", customer)}
    for currency in set(ledger) | set(open_) | set(credit):
        assert ledger.get(currency, 0) == open_.get(currency, 0) - credit.get(currency, 0), currency


async def test_over_payment_becomes_credit_and_pays_the_next_invoice(service, kafka_bootstrap):
    app, http, topics = service
    await http.post("/v1/invoices/bulk", json={"items": [invoice("A", 10_000), invoice("U", 5_000, "USD")]})
    r = await http.post("/v1/payments", json=payment("P1", 25_000))  # A settled, 15,000 left over
    assert r.status_code == 201
    assert await open_amounts(app) == {"A": (0, "paid"), "U": (5_000, "open")}
    unapplied = (await http.get("/v1/payments/unapplied")).json()
    assert [(u["external_id"], u["unapplied_minor"]) for u in unapplied] == [("P1", 15_000)]
    await balance_reconciles(app)

    # The next EUR invoices take the credit at once; the USD one is untouched.
    r = await http.post("/v1/invoices/bulk", json={"items": [invoice("B", 12_000), invoice("C", 8_000, due="2026-04-01")]})
    assert r.json()["summary"]["created"] == 2
    assert await open_amounts(app) == {"A": (0, "paid"), "U": (5_000, "open"), "B": (0, "paid"), "C": (5_000, "open")}
    assert (await http.get("/v1/payments/unapplied")).json() == []
    await balance_reconciles(app)

    events = await wait_for(lambda: _types(kafka_bootstrap, topics, "CreditApplied"), message="CreditApplied")
    applied = events[0].data
    assert [(a["amount_minor"], a["invoice_open_minor"]) for a in applied["allocations"]] == [(12_000, 0), (3_000, 5_000)]
    assert applied["unapplied_minor"] == 0


async def _types(kafka_bootstrap, topics, type_):
    found = [e for e in await read_events(kafka_bootstrap, topics.invoicing) if e.type == type_]
    return found or None


async def test_reversed_payment_reopens_what_it_paid(service, kafka_bootstrap):
    app, http, topics = service
    await http.post("/v1/invoices/bulk", json={"items": [invoice("A", 10_000), invoice("B", 10_000, due="2026-03-20")]})
    assert (await http.post("/v1/payments", json=payment("P1", 15_000))).status_code == 201
    assert await open_amounts(app) == {"A": (0, "paid"), "B": (5_000, "open")}

    r = await http.post("/v1/payments", json=payment("P1", 15_000, status="reversed", reason="bounced: NSF"))
    assert (r.status_code, r.json()["status"]) == (200, "reversed")
    assert await open_amounts(app) == {"A": (10_000, "open"), "B": (10_000, "open")}
    again = await http.post("/v1/payments", json=payment("P1", 15_000, status="reversed"))
    assert again.json()["status"] == "unchanged"
    await balance_reconciles(app)
    missing = await http.post("/v1/payments", json=payment("NOPE", 1, status="reversed"))
    assert missing.status_code == 404 and missing.json()["problems"][0]["field"] == "external_id"

    reversed_ = await wait_for(lambda: _types(kafka_bootstrap, topics, "PaymentReversed"), message="PaymentReversed")
    assert sorted(a["invoice_open_minor"] for a in reversed_[0].data["reopened"]) == [10_000, 10_000]
    assert reversed_[0].data["reason"] == "bounced: NSF"


async def test_bulk_payments_mixed_currencies_and_unknown_customer(service):
    app, http, _ = service
    await http.post("/v1/invoices/bulk", json={"items": [
        invoice("E1", 1_000), invoice("E2", 2_000, due="2026-03-05"), invoice("J1", 500, "JPY"), invoice("K1", 1_250, "KWD")]})
    r = await http.post("/v1/payments/bulk", json={"items": [
        payment("P1", 2_500),  # oldest first: E2 (due 03-05) then 500 on E1
        payment("P2", 500, "JPY"),
        payment("P3", 1_250, "KWD", invoice_refs=["K1"]),
        payment("P4", 999, customer_id="STRANGER"),
        payment("P5", -1),
        payment("P1", 2_500),
    ]})
    results = r.json()["results"]
    assert [x["status"] for x in results] == ["created", "created", "created", "created", "rejected", "unchanged"]
    assert results[4]["field"] == "amount_minor"
    assert await open_amounts(app) == {"E1": (500, "open"), "E2": (0, "paid"), "J1": (0, "paid"), "K1": (0, "paid")}
    unapplied = {u["external_id"]: u for u in (await http.get("/v1/payments/unapplied")).json()}
    assert unapplied["P4"]["unapplied_reason"] == "unknown customer" and unapplied["P4"]["unapplied_minor"] == 999
    await balance_reconciles(app)
    counts = Counter(r["currency"] for r in await app.state.pool.fetch("SELECT currency FROM ledger_entries"))
    assert counts == {"EUR": 4, "JPY": 2, "KWD": 2}  # STRANGER's payment is on its own account


async def test_late_fees_from_dunning_are_booked_once_and_paid_like_invoices(service, kafka_bootstrap):
    from shared.contract import LateFeeAssessed, new_envelope
    from shared.kafka import start_producer

    app, http, topics = service
    await http.post("/v1/invoices", json=invoice("A", 10_000))
    fee = new_envelope(LateFeeAssessed(customer_id="C1", fee_id="case-1:final_14", case_id="case-1", invoice_id="x",
                                       currency="EUR", amount_minor=4_000, reason="EU 2011/7 flat compensation",
                                       assessed_at=datetime(2026, 3, 24, tzinfo=timezone.utc)),
                       source="dunning", tenant_id="t1", subject="case-1", time=datetime(2026, 3, 24, tzinfo=timezone.utc))
    sentinel = new_envelope(LateFeeAssessed(customer_id="C1", fee_id="case-2:final_14", case_id="case-2", invoice_id="y",
                                            currency="EUR", amount_minor=1, reason="sentinel",
                                            assessed_at=datetime(2026, 3, 25, tzinfo=timezone.utc)),
                            source="dunning", tenant_id="t1", subject="case-2", time=datetime(2026, 3, 25, tzinfo=timezone.utc))
    producer = await start_producer(kafka_bootstrap)
    try:
        for e in (fee, fee, sentinel):  # the first one redelivered, then a sentinel on the same partition
            await producer.send_and_wait(topics.dunning, e.model_dump_json().encode(), key=e.key.encode())
    finally:
        await producer.stop()

    async def booked():
        return await app.state.pool.fetchval("SELECT count(*) FROM invoices WHERE kind = 'fee'") >= 2

    await wait_for(booked, message="the fees booked")
    amounts = await open_amounts(app)
    assert (amounts["fee:case-1:final_14"], amounts["fee:case-2:final_14"]) == ((4_000, "open"), (1, "open"))
    assert (await http.post("/v1/payments", json=payment("P1", 14_001))).status_code == 201
    assert set((await open_amounts(app)).values()) == {(0, "paid")}
    await balance_reconciles(app)
    kinds = Counter(r["kind"] for r in await app.state.pool.fetch("SELECT kind FROM ledger_entries"))
    assert kinds == {"invoice": 1, "fee": 2, "payment": 1}


async def test_credit_notes_reduce_what_is_owed(service, kafka_bootstrap):
    app, http, topics = service
    await http.post("/v1/invoices/bulk", json={"items": [invoice("A", 10_000), invoice("B", 10_000, due="2026-03-20")]})
    note = {"external_id": "CN-1", "customer_id": "C1", "currency": "EUR", "amount_minor": 4_000,
            "issue_date": "2026-03-01", "invoice_refs": ["B"], "reason": "damaged goods"}
    r = await http.post("/v1/credit-notes", json=note)
    assert (r.status_code, r.json()["status"]) == (201, "created")
    assert (await http.post("/v1/credit-notes", json=note)).json()["status"] == "unchanged"
    changed = await http.post("/v1/credit-notes", json=note | {"amount_minor": 5})
    assert changed.status_code == 409 and changed.json()["problems"][0]["field"] == "external_id"
    # A payment may share the credit note's external id: they are different documents.
    assert (await http.post("/v1/payments", json=payment("CN-1", 10_000))).status_code == 201
    assert await open_amounts(app) == {"A": (0, "paid"), "B": (6_000, "open")}
    await balance_reconciles(app)
    statement_kinds = Counter(r["kind"] for r in await app.state.pool.fetch("SELECT kind FROM ledger_entries"))
    assert statement_kinds == {"invoice": 2, "credit_note": 1, "payment": 1}
    issued = await wait_for(lambda: _types(kafka_bootstrap, topics, "CreditNoteIssued"), message="CreditNoteIssued")
    assert issued[0].data["allocations"][0]["invoice_open_minor"] == 6_000
    assert issued[0].data["reason"] == "damaged goods"


async def test_a_payment_naming_no_open_invoice_is_kept_for_a_person(service):
    app, http, _ = service
    await http.post("/v1/invoices/bulk", json={"items": [invoice("A", 10_000)]})
    assert (await http.post("/v1/payments", json=payment("P1", 10_000, invoice_refs=["A"]))).status_code == 201
    # The same invoice paid twice, and an invoice nobody knows: neither pays something else.
    await http.post("/v1/invoices/bulk", json={"items": [invoice("B", 5_000)]})
    await http.post("/v1/payments", json=payment("P2", 10_000, invoice_refs=["A"]))
    await http.post("/v1/payments", json=payment("P3", 700, invoice_refs=["NO-SUCH-INVOICE"]))
    assert (await open_amounts(app))["B"] == (5_000, "open")
    unapplied = {u["external_id"]: u["unapplied_reason"] for u in (await http.get("/v1/payments/unapplied")).json()}
    assert unapplied == {"P2": "no open invoice matches the reference(s) A",
                         "P3": "no open invoice matches the reference(s) NO-SUCH-INVOICE"}
    await balance_reconciles(app)


async def test_the_same_payment_sent_several_times_at_once_is_recorded_once(service, kafka_bootstrap):
    """Requests with one external id at the same moment: one records it, the others find it
    (unchanged, or 409 when they say something else), none fails."""
    app, http, topics = service
    pool = app.state.pool
    await http.post("/v1/invoices/bulk", json={"items": [invoice("A", 10_000)]})
    replies = await asyncio.gather(*(http.post("/v1/payments", json=payment("P1", 4_000)) for _ in range(10)))
    assert sorted((r.status_code, r.json()["status"]) for r in replies) == [(200, "unchanged")] * 9 + [(201, "created")]
    note = {"external_id": "CN-1", "customer_id": "C1", "currency": "EUR", "amount_minor": 1_000,
            "issue_date": "2026-03-01"}
    replies = await asyncio.gather(*(http.post("/v1/credit-notes", json=note) for _ in range(10)))
    assert sorted((r.status_code, r.json()["status"]) for r in replies) == [(200, "unchanged")] * 9 + [(201, "created")]
    # Two different payments under one external id: whichever came first is recorded.
    bodies = [payment("P2", 100 * (1 + n % 2)) for n in range(10)]
    replies = await asyncio.gather(*(http.post("/v1/payments", json=b) for b in bodies))
    assert Counter(r.status_code for r in replies) == {201: 1, 200: 4, 409: 5}
    recorded = await pool.fetchval("SELECT amount_minor FROM payments WHERE external_id = 'P2'")
    assert {r.status_code for b, r in zip(bodies, replies) if b["amount_minor"] != recorded} == {409}

    assert await pool.fetchval("SELECT count(*) FROM payments") == 3
    assert await open_amounts(app) == {"A": (4_900 if recorded == 100 else 4_800, "open")}
    await balance_reconciles(app)
    await wait_for(lambda: pool.fetchval("SELECT count(*) = 0 FROM outbox"), message="the outbox published")
    published = Counter(e.type for e in await read_events(kafka_bootstrap, topics.invoicing))
    assert (published["PaymentReceived"], published["CreditNoteIssued"]) == (2, 1)


async def _waiting(pool, wait_event: str) -> int:
    """Sessions of this test's database waiting for a lock of this kind (advisory, transactionid)."""
    return await pool.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                               " AND wait_event_type = 'Lock' AND wait_event = $1", wait_event)


def _late_fee():
    from shared.contract import LateFeeAssessed, new_envelope

    at = datetime(2026, 3, 24, tzinfo=timezone.utc)
    return new_envelope(LateFeeAssessed(customer_id="C1", fee_id="case-1:final_14", case_id="case-1", invoice_id="x",
                                        currency="EUR", amount_minor=10_000, reason="flat compensation",
                                        assessed_at=at), source="dunning", tenant_id="t1", subject="case-1", time=at)


@pytest.mark.parametrize("charge", ["invoice", "fee"])
async def test_a_charge_made_while_a_payment_finds_nothing_open_takes_its_credit(service, kafka_bootstrap, charge):
    """The payment has found no open invoice and is not committed yet when an invoice is issued
    (or dunning books a fee): the charge waits for it and takes the credit. Without that wait,
    each misses the other and the credit stays unapplied while the charge is dunned."""
    app, http, topics = service
    pool = app.state.pool
    assert (await http.put("/v1/customers/C1", json={"id": "C1", "name": "Ege Tekstil"})).status_code == 200
    async with pool.acquire() as other:
        tx = other.transaction()
        await tx.start()
        # A receipt under the payment's external id, not committed: the payment's INSERT waits on
        # it, its transaction open after it has looked for open invoices.
        await other.execute(
            "INSERT INTO payments (tenant_id, payment_id, billing_source, external_id, customer_id, currency,"
            " amount_minor, unapplied_minor, received_at, recorded_at)"
            " VALUES ('t1', gen_random_uuid(), 'erp', 'P1', 'C1', 'EUR', 1, 1, now(), now())")
        paying = asyncio.create_task(http.post("/v1/payments", json=payment("P1", 10_000)))
        await wait_for(lambda: _waiting(pool, "transactionid"), message="the payment's INSERT waiting")
        if charge == "invoice":
            charging = asyncio.create_task(http.post("/v1/invoices", json=invoice("A", 10_000)))
        else:
            async def book_fee():
                env = _late_fee()
                async with pool.acquire() as conn, conn.transaction():
                    await app.state.invoicing.on_late_fee_assessed(conn, env, env.payload())
            charging = asyncio.create_task(book_fee())

        async def charged_or_waiting():
            return charging.done() or await _waiting(pool, "advisory")

        await wait_for(charged_or_waiting, message="the charge done, or waiting for the payment")
        await tx.rollback()
    assert (await paying).status_code == 201
    if charge == "invoice":
        assert (await charging).status_code == 201
    else:
        await charging
    assert [tuple(r) for r in await pool.fetch("SELECT open_minor, status FROM invoices")] == [(0, "paid")]
    assert await pool.fetchval("SELECT unapplied_minor FROM payments") == 0
    await balance_reconciles(app)


async def test_a_payment_made_while_an_invoice_is_being_issued_pays_it(service, kafka_bootstrap):
    """The other way round: a payment arriving while an ingest transaction that creates an invoice
    for its customer is open waits for it, and pays that invoice."""
    app, http, topics = service
    pool = app.state.pool
    assert (await http.put("/v1/customers/C1", json={"id": "C1", "name": "Ege Tekstil"})).status_code == 200
    async with pool.acquire() as other:
        tx = other.transaction()
        await tx.start()
        # An invoice under the same external id, not committed: the ingest's INSERT waits on it.
        await other.execute(
            "INSERT INTO invoices (tenant_id, invoice_id, billing_source, external_id, customer_id, number, currency,"
            " amount_minor, open_minor, issue_date, due_date, issued_at)"
            " VALUES ('t1', gen_random_uuid(), 'erp', 'A', 'C1', 'A', 'EUR', 1, 1, current_date, current_date, now())")
        issuing = asyncio.create_task(http.post("/v1/invoices", json=invoice("A", 10_000)))
        await wait_for(lambda: _waiting(pool, "transactionid"), message="the ingest's INSERT waiting")
        paying = asyncio.create_task(http.post("/v1/payments", json=payment("P1", 10_000)))

        async def paid_or_waiting():
            return paying.done() or await _waiting(pool, "advisory")

        await wait_for(paid_or_waiting, message="the payment done, or waiting for the ingest")
        await tx.rollback()
    assert (await issuing).status_code == 201
    assert (await paying).status_code == 201
    assert await open_amounts(app) == {"A": (0, "paid")}
    assert await pool.fetchval("SELECT unapplied_minor FROM payments") == 0
    received = await wait_for(lambda: _types(kafka_bootstrap, topics, "PaymentReceived"), message="PaymentReceived")
    assert [a["amount_minor"] for a in received[0].data["allocations"]] == [10_000]  # paid on arrival, not as credit
    await balance_reconciles(app)


async def test_a_settlement_accepted_by_dunning_is_credited_once_on_the_invoices_it_names(service, kafka_bootstrap):
    from shared.contract import SettlementAccepted, new_envelope
    from shared.kafka import start_producer

    app, http, topics = service
    await http.post("/v1/invoices/bulk", json={"items": [invoice("A", 10_000), invoice("B", 10_000, due="2026-03-20")]})
    # the customer paid the settlement amount: 95 % of 200.00 (A in full, B down to 10.00)
    assert (await http.post("/v1/payments", json=payment("P1", 19_000))).status_code == 201
    number_b = await app.state.pool.fetchval("SELECT number FROM invoices WHERE external_id = 'B'")
    when = datetime(2026, 3, 30, tzinfo=timezone.utc)
    accepted = new_envelope(SettlementAccepted(
        customer_id="C1", offer_id="0b7a5c1e-0000-4000-8000-000000000001", case_id="case-1", currency="EUR",
        paid_minor=19_000, discount_minor=1_000, credit_minor=1_000, invoice_numbers=[number_b], accepted_at=when),
        source="dunning", tenant_id="t1", subject="case-1", time=when)
    producer = await start_producer(kafka_bootstrap)
    try:
        for e in (accepted, accepted):  # redelivered
            await producer.send_and_wait(topics.dunning, e.model_dump_json().encode(), key=e.key.encode())
    finally:
        await producer.stop()
    issued = await wait_for(lambda: _types(kafka_bootstrap, topics, "CreditNoteIssued"), message="CreditNoteIssued")
    assert issued[0].data["external_id"] == "settlement:0b7a5c1e-0000-4000-8000-000000000001"
    assert [(a["amount_minor"], a["invoice_open_minor"]) for a in issued[0].data["allocations"]] == [(1_000, 0)]
    assert await open_amounts(app) == {"A": (0, "paid"), "B": (0, "paid")}
    assert await app.state.pool.fetchval("SELECT count(*) FROM payments WHERE kind = 'credit_note'") == 1
    await balance_reconciles(app)
