"""Invoicing against real PostgreSQL and the real broker: ingestion, validation, idempotency,
cash application, the overdue timer and the outbox relay."""
from __future__ import annotations

import asyncio
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from services.invoicing.bootstrap import build
from services.invoicing.settings import InvoicingSettings
from shared.clock import ManualClock
from shared.contract import Topics
from tahsilat.streams import read_events
from tests.support import FAST_KAFKA, api_key, client, running, wait_for

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)


def invoice(external_id: str = "INV-1", customer_id: str = "C1", **over) -> dict:
    body = {
        "external_id": external_id,
        "customer": {"id": customer_id, "name": "Anadolu Tekstil", "language": "tr", "timezone": "Europe/Istanbul",
                     "email": "muhasebe@anadolu.example", "phone": "+905551234567"},
        "currency": "TRY", "amount_minor": 100_000, "issue_date": "2026-02-01", "due_date": "2026-03-03",
    }
    return body | over


@pytest.fixture
async def service(database, kafka_bootstrap, topic_prefix):
    clock = ManualClock(T0)
    settings = InvoicingSettings(database_url=database, kafka_bootstrap_servers=kafka_bootstrap,
                                 topic_prefix=topic_prefix, kafka_partitions=2, poll_interval_seconds=0.1, **FAST_KAFKA)
    app = build(settings, clock)
    async with running(app) as url:
        token = await api_key(app, "t1", "billing-source", source_name="erp")
        async with client(url, token) as http:
            yield app, http, clock, Topics(topic_prefix), url


async def events(kafka_bootstrap, topic, types=None):
    return [e for e in await read_events(kafka_bootstrap, topic) if types is None or e.type in types]


async def test_invoice_is_stored_and_published_once(service, kafka_bootstrap):
    app, http, _clock, topics, _ = service
    r = await http.post("/v1/invoices", json=invoice())
    assert r.status_code == 201, r.text
    invoice_id = r.json()["id"]
    again = await http.post("/v1/invoices", json=invoice())
    assert (again.status_code, again.json()) == (200, {"id": invoice_id, "status": "unchanged"})

    published = await wait_for(
        lambda: events(kafka_bootstrap, topics.invoicing, {"InvoiceIssued", "CustomerUpserted"}),
        message="InvoiceIssued on the topic",
    )
    assert Counter(e.type for e in published) == {"CustomerUpserted": 1, "InvoiceIssued": 1}
    issued = next(e for e in published if e.type == "InvoiceIssued")
    assert issued.tenant_id == "t1" and issued.key == "t1:C1" and issued.data["invoice_id"] == invoice_id
    assert issued.data["amount_minor"] == 100_000 and issued.data["billing_source"] == "erp"

    r = await http.get(f"/v1/invoices/{invoice_id}")
    assert r.status_code == 200 and r.json()["open_minor"] == 100_000


async def test_a_record_that_cannot_apply_to_the_recorded_invoice_is_refused(service):
    _app, http, *_ = service
    assert (await http.post("/v1/invoices", json=invoice())).status_code == 201
    other_customer = invoice()
    other_customer["customer"] = other_customer["customer"] | {"id": "C2"}
    r = await http.post("/v1/invoices", json=other_customer)
    assert r.status_code == 409
    assert r.json()["problems"][0] == {"field": "customer.id",
                                       "reason": "the invoice belongs to customer 'C1'; it cannot move"}
    r = await http.post("/v1/invoices", json=invoice(currency="USD"))
    assert r.status_code == 409 and r.json()["problems"][0]["field"] == "currency"


BAD_INPUTS = [
    ("invalid JSON", b'{"external_id": "X",', "body", "invalid JSON"),
    ("missing field", {k: v for k, v in invoice().items() if k != "amount_minor"}, "amount_minor", "Field required"),
    ("no currency and no default", {k: v for k, v in invoice().items() if k != "currency"}, "currency",
     "required: billing source 'erp' has no default currency"),
    ("wrong type", invoice(amount_minor="lots"), "amount_minor", "integer"),
    ("unknown currency", invoice(currency="XYZ"), "currency", "unknown ISO 4217"),
    ("negative amount", invoice(amount_minor=-100), "amount_minor", "greater than 0"),
    ("due before issue", invoice(due_date="2026-01-01"), "body", "due_date must not be before issue_date"),
    ("bad timezone", invoice(customer={"id": "C1", "name": "X", "timezone": "Mars/Olympus"}), "customer.timezone",
     "unknown IANA timezone"),
    ("unknown field", invoice(colour="red"), "colour", "Extra inputs are not permitted"),
]


@pytest.mark.parametrize(("case", "body", "field", "reason"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
async def test_bad_input_is_rejected_naming_the_field_and_nothing_is_written(service, case, body, field, reason):
    app, http, *_ = service
    if isinstance(body, bytes):
        r = await http.post("/v1/invoices", content=body, headers={"content-type": "application/json"})
    else:
        r = await http.post("/v1/invoices", json=body)
    assert r.status_code == 422, r.text
    problems = r.json()["problems"]
    assert any(p["field"] == field and reason in p["reason"] for p in problems), problems
    pool = app.state.pool
    assert await pool.fetchval("SELECT count(*) FROM invoices") == 0
    assert await pool.fetchval("SELECT count(*) FROM customers") == 0
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0


async def test_api_keys_roles_and_tenants(service):
    app, http, _clock, _topics, url = service
    r = await http.post("/v1/invoices", json=invoice())
    invoice_id = r.json()["id"]
    async with client(url) as anonymous:
        r = await anonymous.post("/v1/invoices", json=invoice("INV-2"))
        assert r.status_code == 401 and "X-API-Key" in r.json()["detail"]
    async with client(url, "thk_000000000000_wrong") as wrong:
        assert (await wrong.post("/v1/invoices", json=invoice("INV-2"))).status_code == 401
    async with client(url, await api_key(app, "t1", "analytics")) as analyst:
        r = await analyst.post("/v1/invoices", json=invoice("INV-2"))
        assert r.status_code == 403 and "analytics" in r.json()["detail"]
        assert (await analyst.get(f"/v1/invoices/{invoice_id}")).status_code == 200
    async with client(url, await api_key(app, "t2", "admin")) as other_tenant:
        assert (await other_tenant.get(f"/v1/invoices/{invoice_id}")).status_code == 404
        aging = (await other_tenant.get("/v1/reports/aging")).json()
        assert aging["by_currency"] == {}
    async with client(url, await api_key(app, "t1", "billing-source", "crm")) as crm:
        r = await crm.post("/v1/invoices", json=invoice("INV-3", billing_source="erp"))
        assert r.status_code == 403 and r.json()["problems"][0]["field"] == "billing_source"
    assert await app.state.pool.fetchval("SELECT count(*) FROM invoices") == 1


async def test_cash_application_partial_full_and_over_payment(service, kafka_bootstrap):
    app, http, _clock, topics, _ = service
    a = (await http.post("/v1/invoices", json=invoice("A", due_date="2026-03-03", amount_minor=60_000))).json()["id"]
    b = (await http.post("/v1/invoices", json=invoice("B", due_date="2026-03-10", amount_minor=40_000))).json()["id"]
    usd = (await http.post("/v1/invoices", json=invoice("U", currency="USD", amount_minor=1_000))).json()["id"]

    # Oldest first: 70,000 settles A (60,000) and puts 10,000 on B.
    r = await http.post("/v1/payments", json={"external_id": "P1", "customer_id": "C1", "currency": "TRY",
                                               "amount_minor": 70_000})
    assert r.status_code == 201, r.text
    # By reference: B first; 35,000 leaves 5,000 unapplied credit.
    r = await http.post("/v1/payments", json={"external_id": "P2", "customer_id": "C1", "currency": "TRY",
                                               "amount_minor": 35_000, "invoice_refs": ["B"]})
    assert r.status_code == 201
    # Unknown customer: kept as unapplied cash, never dropped.
    r = await http.post("/v1/payments", json={"external_id": "P3", "customer_id": "NOBODY", "currency": "TRY",
                                               "amount_minor": 1_234})
    assert r.status_code == 201

    pool = app.state.pool
    open_by_id = {str(r["invoice_id"]): (r["open_minor"], r["status"]) for r in await pool.fetch("SELECT * FROM invoices")}
    assert open_by_id == {a: (0, "paid"), b: (0, "paid"), usd: (1_000, "open")}
    unapplied = {r["external_id"]: (r["unapplied_minor"], r["unapplied_reason"])
                 for r in await pool.fetch("SELECT * FROM payments")}
    assert unapplied["P1"] == (0, None)
    assert unapplied["P2"][0] == 5_000
    assert unapplied["P3"] == (1_234, "unknown customer")

    published = await wait_for(
        lambda: _when_count(events(kafka_bootstrap, topics.invoicing, {"PaymentReceived", "InvoicePaid"}), 5),
        message="3 PaymentReceived and 2 InvoicePaid",
    )
    received = {e.data["external_id"]: e.data for e in published if e.type == "PaymentReceived"}
    assert [(x["invoice_id"], x["amount_minor"], x["invoice_open_minor"]) for x in received["P1"]["allocations"]] == [
        (a, 60_000, 0), (b, 10_000, 30_000)]
    assert received["P2"]["unapplied_minor"] == 5_000
    assert {e.data["invoice_id"] for e in published if e.type == "InvoicePaid"} == {a, b}

    aging = (await http.get("/v1/reports/aging", params={"as_of": "2026-03-20"})).json()
    assert aging["by_currency"] == {"USD": {"current": 0, "1-30": 1_000, "31-60": 0, "61-90": 0, "90+": 0, "total": 1_000}}


async def _when_count(coro, n):
    items = await coro
    return items if len(items) >= n else None


async def test_overdue_timer_fires_once_per_invoice_even_with_competing_replicas(service, kafka_bootstrap):
    app, http, clock, topics, _ = service
    await http.post("/v1/invoices", json=invoice("LATE", due_date="2026-03-03"))
    await http.post("/v1/invoices", json=invoice("PAID", due_date="2026-03-03"))
    await http.post("/v1/invoices", json=invoice("LATER", due_date="2026-03-20"))
    await http.post("/v1/payments", json={"external_id": "P", "customer_id": "C1", "currency": "TRY",
                                          "amount_minor": 100_000, "invoice_refs": ["PAID"]})
    invoicing = app.state.invoicing
    # 2026-03-03 ends at 21:00 UTC in Istanbul; one minute before, nothing is overdue.
    clock.set(datetime(2026, 3, 3, 20, 59, tzinfo=timezone.utc))
    assert await invoicing.fire_overdue_timers() == 0
    clock.set(datetime(2026, 3, 3, 21, 1, tzinfo=timezone.utc))
    # Two replicas racing for the same timers (the service's own loop races too).
    await asyncio.gather(invoicing.fire_overdue_timers(), invoicing.fire_overdue_timers())
    clock.advance(timedelta(days=30))
    await invoicing.fire_overdue_timers()

    overdue = await wait_for(
        lambda: _when_count(events(kafka_bootstrap, topics.invoicing, {"InvoiceOverdue"}), 2),
        message="two InvoiceOverdue",
    )
    # Let the loop run a little longer: still exactly one per unpaid invoice.
    await wait_for(lambda: _fired_all(app), message="all timers fired")
    overdue = await events(kafka_bootstrap, topics.invoicing, {"InvoiceOverdue"})
    assert sorted(e.data["number"] for e in overdue) == ["LATE", "LATER"]
    assert overdue[0].data["open_amount_minor"] == 100_000


async def _backlog_empty(pool):
    return await pool.fetchval("SELECT count(*) = 0 FROM outbox")


async def _fired_all(app):
    return await app.state.pool.fetchval("SELECT count(*) = 0 FROM overdue_timers WHERE fired_at IS NULL")


async def test_events_accumulate_while_the_relay_is_stopped_and_all_go_out_once_it_is_back(service, kafka_bootstrap):
    app, http, _clock, topics, _ = service
    relay = app.state.host.relay
    relay.pause()
    for n in range(40):
        assert (await http.post("/v1/invoices", json=invoice(f"INV-{n}", customer_id=f"C{n % 7}"))).status_code == 201
    pool = app.state.pool
    backlog = await pool.fetchval("SELECT count(*) FROM outbox")
    assert backlog == 47  # 40 InvoiceIssued + 7 CustomerUpserted
    assert await events(kafka_bootstrap, topics.invoicing) == []

    relay.resume()
    published = await wait_for(lambda: _when_count(events(kafka_bootstrap, topics.invoicing), 47),
                               message="47 events published")
    assert len({e.id for e in published}) == len(published) == 47
    await wait_for(lambda: _backlog_empty(pool), message="the outbox marked published")
    # Per customer, the order of the outbox is the order on the partition.
    issued_c0 = [e.data["external_id"] for e in published if e.type == "InvoiceIssued" and e.data["customer_id"] == "C0"]
    assert issued_c0 == [f"INV-{n}" for n in range(0, 40, 7)]


async def _records(bootstrap: str, topic: str, n: int) -> list | None:
    """The first n records of `topic` as (key, partition, event type), or None while fewer exist."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=20)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not tps:
            return None
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        batches = await consumer.getmany(*tps, timeout_ms=500)
        out = [(r.key, r.partition, dict(r.headers)["event_type"].decode()) for rs in batches.values() for r in rs]
        return out if len(out) >= n else None
    finally:
        await consumer.stop()


async def test_the_relay_partitions_as_producer_send_and_holds_back_only_what_cannot_be_sent(service, kafka_bootstrap):
    app, http, _clock, topics, _ = service
    relay, pool = app.state.host.relay, app.state.pool
    relay.pause()
    for n in range(12):
        assert (await http.post("/v1/invoices", json=invoice(f"INV-{n}", customer_id=f"C{n % 5}"))).status_code == 201
    # An event larger than any broker takes by default (1 MiB).
    await pool.execute(
        "INSERT INTO outbox (event_id, tenant_id, event_type, topic, key, envelope)"
        " VALUES (gen_random_uuid(), 't1', 'Oversized', $1, 't1:C0', json_build_object('blob', repeat('x', 1100000)))",
        topics.invoicing)
    relay.resume()

    records = await wait_for(lambda: _records(kafka_bootstrap, topics.invoicing, 17), message="17 events published")
    assert sorted(Counter(t for _, _, t in records).items()) == [("CustomerUpserted", 5), ("InvoiceIssued", 12)]
    held = await wait_for(lambda: pool.fetch("SELECT event_type, attempts, last_error FROM outbox WHERE attempts > 0"),
                          message="the oversized event held back")
    assert [(r["event_type"], "more than max_event_bytes" in r["last_error"]) for r in held] == [("Oversized", True)]
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 1  # what was published is gone from the outbox

    # A person sees it through the API (admin keys, own tenant only) and discards it.
    base = str(http.base_url)
    async with client(base, await api_key(app, "t1", "admin")) as admin, \
            client(base, await api_key(app, "t2", "admin")) as stranger:
        r = await http.get("/v1/outbox/held")
        assert r.status_code == 403, r.text  # a billing-source key
        listed = (await admin.get("/v1/outbox/held")).json()
        assert [(h["event_type"], h["key"], h["held_back"], h["next_attempt_at"]) for h in listed] == [
            ("Oversized", "t1:C0", 0, None)]
        assert (await stranger.get("/v1/outbox/held")).json() == []
        row = listed[0]["id"]
        assert (await stranger.post(f"/v1/outbox/held/{row}/discard", json={"reason": "not mine"})).status_code == 404
        assert (await admin.post(f"/v1/outbox/held/{row}/discard", json={})).status_code == 422  # a reason is required
        r = await admin.post(f"/v1/outbox/held/{row}/discard", json={"reason": "a test blob"})
        assert (r.status_code, r.json()) == (200, {"id": row, "status": "discarded"})
        assert (await admin.post(f"/v1/outbox/held/{row}/retry")).status_code == 404
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0

    # Each key is on the partition producer.send picks for it (the Java client's murmur2), so
    # consumers see one customer's events on one partition whichever way they were published.
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        for key in {k for k, _, _ in records}:
            probe = await producer.send_and_wait(topics.invoicing, b"probe", key=key)
            assert {p for k, p, _ in records if k == key} == {probe.partition}
    finally:
        await producer.stop()


def _pay(external_id: str, ref: str, amount: int = 100_000, **over) -> dict:
    return {"external_id": external_id, "customer_id": "C1", "currency": "TRY", "amount_minor": amount,
            "invoice_refs": [ref]} | over


async def _overdue_when_settled(app, kafka_bootstrap, topics) -> list:
    """Every InvoiceOverdue published, once every timer has fired and the outbox is empty."""
    await wait_for(lambda: _fired_all(app), message="all timers fired")
    await wait_for(lambda: _backlog_empty(app.state.pool), message="the outbox published")
    return await events(kafka_bootstrap, topics.invoicing, {"InvoiceOverdue"})


async def test_an_invoice_reopened_after_its_timer_fired_is_overdue_again(service, kafka_bootstrap):
    """Re-opened (a payment reversed, an adjustment upwards), an invoice past its due moment is
    overdue again at the next tick, once per re-opening, overdue since its original moment;
    one re-opened before it is due keeps its timer."""
    app, http, clock, topics, _ = service
    invoicing, pool = app.state.invoicing, app.state.pool
    for number, due in (("LATE", "2026-03-03"), ("EARLY", "2026-03-03"), ("UP", "2026-03-03"),
                        ("NOTYET", "2026-03-20")):
        assert (await http.post("/v1/invoices", json=invoice(number, due_date=due))).status_code == 201
    # Paid before the due date: their timers fire quietly.
    for number in ("EARLY", "UP", "NOTYET"):
        assert (await http.post("/v1/payments", json=_pay(f"P-{number}", number))).status_code == 201
    # Re-opened before it is due: the timer is still armed.
    r = await http.post("/v1/payments", json=_pay("P-NOTYET", "NOTYET", status="reversed"))
    assert r.json()["status"] == "reversed"

    clock.set(datetime(2026, 3, 3, 21, 1, tzinfo=timezone.utc))  # 2026-03-03 has ended in Istanbul
    await invoicing.fire_overdue_timers()  # LATE is overdue; EARLY and UP are paid
    assert (await http.post("/v1/payments", json=_pay("P-LATE", "LATE"))).status_code == 201
    for number in ("LATE", "EARLY"):
        r = await http.post("/v1/payments", json=_pay(f"P-{number}", number, status="reversed", reason="bounced"))
        assert r.json()["status"] == "reversed"
    r = await http.post("/v1/invoices", json=invoice("UP", amount_minor=120_000))
    assert r.json()["status"] == "adjusted"
    rows = {r["number"]: r for r in await pool.fetch("SELECT number, status, open_minor, paid_at FROM invoices")}
    assert {n: (r["status"], r["open_minor"], r["paid_at"]) for n, r in rows.items()} == {
        "LATE": ("open", 100_000, None), "EARLY": ("open", 100_000, None), "UP": ("open", 20_000, None),
        "NOTYET": ("open", 100_000, None)}
    for _ in range(2):
        await invoicing.fire_overdue_timers()
    clock.set(datetime(2026, 3, 20, 21, 1, tzinfo=timezone.utc))
    await invoicing.fire_overdue_timers()

    overdue = await _overdue_when_settled(app, kafka_bootstrap, topics)
    assert Counter(e.data["number"] for e in overdue) == {"LATE": 2, "EARLY": 1, "UP": 1, "NOTYET": 1}
    first_moment = "2026-03-03T21:00:00Z"  # the end of the due date in Istanbul, however late it fired again
    assert {(e.data["number"], e.data["overdue_since"], e.data["open_amount_minor"]) for e in overdue} == {
        ("LATE", first_moment, 100_000), ("EARLY", first_moment, 100_000), ("UP", first_moment, 20_000),
        ("NOTYET", "2026-03-20T21:00:00Z", 100_000)}
