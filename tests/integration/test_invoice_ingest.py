"""Billing sources sending invoices: registration, bulk with a result per item, idempotency,
adjustments, cancellations, placeholder customers, and the ledger they leave behind."""
from __future__ import annotations

import asyncio
from collections import Counter
from datetime import date, datetime, timezone

import asyncpg
import pytest

from services.invoicing.bootstrap import build
from services.invoicing.domain.model import overdue_at
from services.invoicing.settings import InvoicingSettings
from shared.clock import ManualClock
from shared.contract import Topics
from tahsilat.streams import read_events
from tests.support import FAST_KAFKA, api_key, client, running, wait_for

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)


@pytest.fixture
async def erp(database, kafka_bootstrap, topic_prefix):
    """The invoicing service and the API key of a registered billing source `erp` (EUR)."""
    clock = ManualClock(T0)
    settings = InvoicingSettings(database_url=database, kafka_bootstrap_servers=kafka_bootstrap,
                                 topic_prefix=topic_prefix, kafka_partitions=2, poll_interval_seconds=0.1, **FAST_KAFKA)
    app = build(settings, clock)
    async with running(app) as url:
        async with client(url, await api_key(app, "t1", "admin")) as admin:
            r = await admin.post("/v1/billing-sources", json={"name": "erp", "default_currency": "EUR",
                                                           "records": ["invoices", "payments"]})
            assert r.status_code == 201, r.text
            again = await admin.post("/v1/billing-sources", json={"name": "erp", "default_currency": "EUR",
                                                           "records": ["invoices", "payments"]})
            assert again.status_code == 409 and again.json()["problems"][0]["field"] == "name"
            async with client(url, r.json()["api_key"]) as http:
                yield app, http, clock, Topics(topic_prefix)


def item(external_id: str, customer_id: str = "C1", **over) -> dict:
    return {"external_id": external_id, "customer_id": customer_id, "amount_minor": 10_000,
            "issue_date": "2026-02-01", "due_date": "2026-03-03"} | over


async def ledger_balance(pool, customer_id: str) -> int:
    return await pool.fetchval(
        "SELECT coalesce(sum(amount_minor), 0) FROM ledger_entries WHERE tenant_id = 't1' AND customer_id = $1",
        customer_id,
    )


async def test_bulk_keeps_valid_items_and_says_why_the_others_were_rejected(erp, kafka_bootstrap):
    app, http, _clock, topics = erp
    items = [
        item("A"),
        item("B", currency="XYZ"),
        item("C", due_date="2026-01-01"),
        {"external_id": "D", "customer_id": "C2"},
        item("A", amount_minor=12_000),  # the same invoice again, changed: applied after the first
        item("E", customer={"id": "C3", "name": "Ege Gıda", "language": "tr", "timezone": "Europe/Istanbul"},
             customer_id=None),
        item("A", amount_minor=12_000),  # and once more, unchanged by now
    ]
    r = await http.post("/v1/invoices/bulk", json={"items": items})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["summary"] == {"created": 2, "unchanged": 1, "adjusted": 1, "cancelled": 0, "rejected": 3}
    by_index = {x["index"]: x for x in body["results"]}
    assert [by_index[i]["status"] for i in range(7)] == [
        "created", "rejected", "rejected", "rejected", "adjusted", "created", "unchanged"]
    assert (by_index[1]["field"], by_index[1]["reason"]) == ("currency", "unknown ISO 4217 currency code 'XYZ'")
    assert by_index[2]["field"] == "record" and "due_date must not be before issue_date" in by_index[2]["reason"]
    assert by_index[3]["field"] == "amount_minor"
    assert by_index[4]["changes"] == {"amount_minor": {"old": 10_000, "new": 12_000}}

    pool = app.state.pool
    rows = {r["external_id"]: r for r in await pool.fetch("SELECT * FROM invoices")}
    assert set(rows) == {"A", "E"}
    assert (rows["A"]["amount_minor"], rows["A"]["currency"], rows["A"]["version"]) == (12_000, "EUR", 2)
    customers = {r["customer_id"]: r for r in await pool.fetch("SELECT * FROM customers")}
    assert customers["C1"]["placeholder"] is True and customers["C3"]["placeholder"] is False
    assert "C2" not in customers  # rejected items leave nothing behind
    assert await ledger_balance(pool, "C1") == 12_000

    events = await wait_for(lambda: _at_least(read_events(kafka_bootstrap, topics.invoicing), 5), message="events")
    assert Counter(e.type for e in events) == {"CustomerUpserted": 2, "InvoiceIssued": 2, "InvoiceAdjusted": 1}
    placeholder = next(e for e in events if e.type == "CustomerUpserted" and e.data["customer_id"] == "C1")
    assert placeholder.data["placeholder"] is True


async def _at_least(coro, n):
    items = await coro
    return items if len(items) >= n else None


async def test_adjusting_and_cancelling(erp, kafka_bootstrap):
    app, http, _clock, topics = erp
    assert (await http.post("/v1/invoices", json=item("A"))).status_code == 201
    r = await http.post("/v1/invoices", json=item("A", amount_minor=8_000, due_date="2026-03-20"))
    assert r.status_code == 200 and r.json()["status"] == "adjusted"
    assert r.json()["changes"] == {"amount_minor": {"old": 10_000, "new": 8_000},
                                   "due_date": {"old": "2026-03-03", "new": "2026-03-20"}}
    pool = app.state.pool
    timer = await pool.fetchval("SELECT due_at FROM overdue_timers")
    assert timer == datetime(2026, 3, 21, 0, 0, tzinfo=timezone.utc)  # customer in UTC (placeholder)

    r = await http.post("/v1/invoices", json=item("A", amount_minor=8_000, due_date="2026-03-20", status="cancelled"))
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    again = await http.post("/v1/invoices", json=item("A", status="cancelled"))
    assert again.json()["status"] == "unchanged"
    reopen = await http.post("/v1/invoices", json=item("A"))
    assert reopen.status_code == 409 and reopen.json()["problems"][0]["field"] == "status"
    assert await ledger_balance(pool, "C1") == 0
    assert await pool.fetchval("SELECT fired_at IS NOT NULL FROM overdue_timers")  # never fires now

    # A partly paid invoice cannot be cancelled or cut below what was paid.
    assert (await http.post("/v1/invoices", json=item("B"))).status_code == 201
    r = await http.post("/v1/payments", json={"external_id": "P", "customer_id": "C1", "currency": "EUR",
                                               "amount_minor": 3_000})
    assert r.status_code == 201
    r = await http.post("/v1/invoices", json=item("B", status="cancelled"))
    assert r.status_code == 409 and "credit note" in r.json()["problems"][0]["reason"]
    r = await http.post("/v1/invoices", json=item("B", amount_minor=2_000))
    assert r.status_code == 409 and r.json()["problems"][0]["field"] == "amount_minor"
    assert await ledger_balance(pool, "C1") == 7_000
    assert await pool.fetchval("SELECT open_minor FROM invoices WHERE external_id = 'B'") == 7_000

    events = await wait_for(lambda: _at_least(read_events(kafka_bootstrap, topics.invoicing), 6), message="events")
    types = [e.type for e in events if e.data.get("external_id") == "A"]
    assert types == ["InvoiceIssued", "InvoiceAdjusted", "InvoiceCancelled"]


async def test_master_data_replaces_a_placeholder(erp):
    app, http, *_ = erp
    await http.post("/v1/invoices", json=item("A"))
    await http.post("/v1/invoices", json=item("B", customer_id=None, customer={
        "id": "C1", "name": "Marmara Lojistik", "language": "tr", "timezone": "Europe/Istanbul",
        "email": "finans@marmara.example"}))
    row = await app.state.pool.fetchrow("SELECT * FROM customers WHERE customer_id = 'C1'")
    assert (row["name"], row["language"], row["placeholder"]) == ("Marmara Lojistik", "tr", False)


async def test_a_source_key_cannot_write_for_another_source(erp, database):
    app, http, *_ = erp
    r = await http.post("/v1/invoices/bulk", json={"billing_source": "crm", "items": [item("A")]})
    assert r.status_code == 403 and r.json()["problems"][0]["field"] == "billing_source"
    r = await http.post("/v1/invoices/bulk", json={"items": []})
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "items"
    r = await http.post("/v1/invoices/bulk", content=b'{"items": [', headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "body"
    assert r.json()["problems"][0]["reason"].startswith("invalid JSON")
    assert await app.state.pool.fetchval("SELECT count(*) FROM invoices") == 0


async def test_customer_master_data_on_its_own(erp, kafka_bootstrap):
    app, http, _clock, topics = erp
    customer = {"id": "C9", "name": "Karadeniz Fındık", "language": "tr", "timezone": "Europe/Istanbul",
                "email": "muhasebe@karadeniz.example", "phone": "+905321112233", "credit_terms_days": 45}
    r = await http.put("/v1/customers/C9", json=customer)
    assert (r.status_code, r.json()) == (200, {"id": "C9", "status": "upserted"})
    assert (await http.put("/v1/customers/C9", json=customer)).json()["status"] == "unchanged"
    r = await http.put("/v1/customers/C9", json=customer | {"id": "OTHER"})
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "id"
    r = await http.post("/v1/customers/bulk", json={"items": [
        customer | {"credit_terms_days": 30}, {"id": "C10", "name": "X", "timezone": "Moon/Base"}]})
    assert [(x["status"], x["field"]) for x in r.json()["results"]] == [("upserted", None), ("rejected", "timezone")]
    row = await app.state.pool.fetchrow("SELECT * FROM customers WHERE customer_id = 'C9'")
    assert (row["credit_terms_days"], row["placeholder"]) == (30, False)
    events = await wait_for(lambda: _at_least(read_events(kafka_bootstrap, topics.invoicing), 2), message="upserts")
    upserts = [e.payload() for e in events if e.type == "CustomerUpserted"]
    assert [u.credit_terms_days for u in upserts] == [45, 30]
    assert upserts[0].model_dump() == {
        "customer_id": "C9", "name": "Karadeniz Fındık", "language": "tr", "timezone": "Europe/Istanbul",
        "email": "muhasebe@karadeniz.example", "phone": "+905321112233", "billing_source": "erp", "placeholder": False,
        "credit_terms_days": 45}


async def test_a_customer_created_by_a_concurrent_ingest_is_found(erp):
    """The invoices' customer is inserted by another transaction while this ingest waits on it."""
    app, http, _clock, _topics = erp
    pool = app.state.pool
    async with pool.acquire() as other:
        tx = other.transaction()
        await tx.start()
        await other.execute("INSERT INTO customers (tenant_id, customer_id, name, timezone)"
                            " VALUES ('t1', 'C7', 'Ege Tekstil', 'Europe/Istanbul')")
        posting = asyncio.create_task(http.post("/v1/invoices/bulk", json={"items": [
            item("A", customer_id=None, customer={"id": "C7", "name": "Ege Tekstil", "timezone": "Europe/Istanbul"}),
            item("B", customer_id="C7")]}))
        await wait_for(lambda: pool.fetchval("SELECT count(*) > 0 FROM pg_locks WHERE NOT granted"),
                       message="the ingest waiting on the uncommitted customer")
        await tx.commit()
    r = await posting
    assert r.status_code == 200, r.text
    assert [x["status"] for x in r.json()["results"]] == ["created", "created"]
    due = await pool.fetchval("SELECT min(due_at) FROM overdue_timers")
    assert due.utcoffset() is not None and due == overdue_at(date(2026, 3, 3), "Europe/Istanbul")


async def test_the_same_bulk_sent_twice_at_once_creates_each_invoice_once(erp, kafka_bootstrap):
    app, http, _clock, topics = erp
    items = [item(f"INV-{n}", customer_id=f"C{n % 40}") for n in range(600)]
    first, second = await asyncio.gather(*(http.post("/v1/invoices/bulk", json={"items": items}) for _ in range(2)))
    assert first.status_code == second.status_code == 200, (first.text, second.text)
    statuses = [(a["status"], b["status"]) for a, b in zip(first.json()["results"], second.json()["results"])]
    assert all(sorted(pair) == ["created", "unchanged"] for pair in statuses)  # whichever came first
    pool = app.state.pool
    assert await pool.fetchval("SELECT count(*) FROM invoices") == 600
    assert await pool.fetchval("SELECT count(*) FROM ledger_entries") == 600
    assert await pool.fetchval("SELECT count(*) FROM overdue_timers") == 600
    published = await wait_for(lambda: _at_least(read_events(kafka_bootstrap, topics.invoicing), 640),
                               message="600 InvoiceIssued and 40 CustomerUpserted")
    assert Counter(e.type for e in published) == {"InvoiceIssued": 600, "CustomerUpserted": 40}


async def test_a_database_failure_is_raised_as_itself_and_leaves_nothing_half_written(erp):
    app, _http, _clock, _topics = erp
    pool = app.state.pool
    await pool.execute("ALTER TABLE ledger_entries RENAME TO ledger_entries_away")
    try:
        with pytest.raises(asyncpg.UndefinedTableError):
            await app.state.ingestor.ingest("t1", "erp", [item(f"INV-{n}") for n in range(4500)])  # three writers
    finally:
        await pool.execute("ALTER TABLE ledger_entries_away RENAME TO ledger_entries")
    assert await pool.fetchval("SELECT count(*) FROM invoices") == 0
    assert await pool.fetchval("SELECT count(*) FROM overdue_timers") == 0
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE event_type = 'InvoiceIssued'") == 0


async def test_an_adjustment_down_to_what_was_paid_settles_the_invoice(erp, kafka_bootstrap):
    """Adjusted down to what was already paid, an invoice is paid: paid_at and InvoicePaid (in the
    adjustment's transaction), and its overdue timer fires quietly. Adjusted up again, it is open
    and overdue like any other."""
    app, http, clock, topics = erp
    pool = app.state.pool
    a = (await http.post("/v1/invoices", json=item("A"))).json()["id"]
    r = await http.post("/v1/payments", json={"external_id": "P1", "customer_id": "C1", "currency": "EUR",
                                               "amount_minor": 8_000})
    assert r.status_code == 201
    r = await http.post("/v1/invoices", json=item("A", amount_minor=8_000))
    assert r.json()["status"] == "adjusted"
    row = await pool.fetchrow("SELECT status, open_minor, paid_at FROM invoices WHERE external_id = 'A'")
    assert (row["status"], row["open_minor"], row["paid_at"]) == ("paid", 0, T0)

    clock.set(datetime(2026, 3, 5, 9, 0, tzinfo=timezone.utc))  # past the due date (UTC: a placeholder customer)
    await app.state.invoicing.fire_overdue_timers()
    await wait_for(lambda: pool.fetchval("SELECT fired_at IS NOT NULL FROM overdue_timers"), message="the timer fired")
    r = await http.post("/v1/invoices", json=item("A", amount_minor=9_000))
    assert r.json()["status"] == "adjusted"
    row = await pool.fetchrow("SELECT status, open_minor, paid_at FROM invoices WHERE external_id = 'A'")
    assert (row["status"], row["open_minor"], row["paid_at"]) == ("open", 1_000, None)
    await app.state.invoicing.fire_overdue_timers()

    published = await wait_for(lambda: _at_least(read_events(kafka_bootstrap, topics.invoicing), 7), message="events")
    about_a = [e for e in published if e.data.get("invoice_id") == a]
    assert [e.type for e in about_a] == [
        "InvoiceIssued", "InvoiceAdjusted", "InvoicePaid", "InvoiceAdjusted", "InvoiceOverdue"]
    paid = about_a[2].data
    assert (paid["amount_minor"], paid["due_date"], paid["paid_at"], paid["days_late"]) == (
        8_000, "2026-03-03", "2026-03-02T09:00:00Z", -1)
    assert about_a[4].data["open_amount_minor"] == 1_000
    await wait_for(lambda: pool.fetchval("SELECT count(*) = 0 FROM outbox"), message="the outbox published")
    assert Counter(e.type for e in await read_events(kafka_bootstrap, topics.invoicing)) == {
        "CustomerUpserted": 1, "InvoiceIssued": 1, "PaymentReceived": 1, "InvoiceAdjusted": 2, "InvoicePaid": 1,
        "InvoiceOverdue": 1}
