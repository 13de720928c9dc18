"""Receivables reports against the real service: aging and DSO as of past dates, statements of
account, a property-based reconciliation of statement, ledger and open items, and the CLI."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.invoicing.bootstrap import build
from services.invoicing.service_layer.reports import invoices_as_of
from services.invoicing.settings import InvoicingSettings
from shared.clock import ManualClock
from shared.db import drop_database, ensure_database, with_database
from tests.support import FAST_KAFKA, api_key, client, running

pytestmark = pytest.mark.integration

UTC = timezone.utc
ZERO = {"current": 0, "1-30": 0, "31-60": 0, "61-90": 0, "90+": 0, "total": 0}


def at(y: int, m: int, d: int) -> datetime:
    return datetime(y, m, d, 9, 0, tzinfo=UTC)


@pytest.fixture
async def reporting(pg_server, kafka_bootstrap, topic_prefix):
    """The invoicing service on a database named like the platform's (<prefix>_invoicing, so the
    CLI finds it), a billing source `erp` and a reader key. Yields (app, erp, reader, clock, prefix)."""
    prefix = f"rep{uuid.uuid4().hex[:10]}"
    name = f"{prefix}_invoicing"
    await ensure_database(pg_server, name)
    clock = ManualClock(at(2026, 1, 5))
    settings_ = InvoicingSettings(database_url=with_database(pg_server, name), kafka_bootstrap_servers=kafka_bootstrap,
                                  topic_prefix=topic_prefix, kafka_partitions=1, poll_interval_seconds=0.2, **FAST_KAFKA)
    app = build(settings_, clock)
    try:
        async with running(app) as url:
            async with client(url, await api_key(app, "t1", "admin")) as admin:
                r = await admin.post("/v1/billing-sources", json={"name": "erp", "default_currency": "EUR",
                                                           "records": ["invoices", "payments"]})
                assert r.status_code == 201, r.text
                erp_key = r.json()["api_key"]
            async with client(url, erp_key) as erp, client(url, await api_key(app, "t1", "analytics")) as reader:
                yield app, erp, reader, clock, prefix, url
    finally:
        await drop_database(pg_server, name)


def inv(external_id: str, customer_id: str, amount: int, issue: str, due: str, currency: str = "EUR", **over) -> dict:
    return {"external_id": external_id, "customer_id": customer_id, "currency": currency, "amount_minor": amount,
            "issue_date": issue, "due_date": due} | over


async def the_quarter(erp, clock) -> None:
    """Q1 2026, posted as it happened (the clock dates adjustments and cancellations):

    C1 EUR  A 1,000.00  issued 5 Jan,  due 20 Jan   60,000 paid by P1 (received 10 Feb, oldest first)
    C1 EUR  B   500.00  issued 1 Feb,  due 28 Feb   adjusted to 450.00 on 20 Feb
    C1 EUR  E   200.00  issued 5 Feb,  due 7 Mar    cancelled on 1 Mar
    C1 USD  U    75.00  issued 12 Feb, due 14 Mar
    C1 EUR  C   800.00  issued 10 Mar, due 9 Apr
    C2 EUR  D   300.00  issued 15 Jan, due 15 Jan   paid by P2 (received 20 Mar, by reference)"""
    async def post(path, body, expected=201):
        r = await erp.post(path, json=body)
        assert r.status_code == expected, r.text
        return r.json()

    clock.set(at(2026, 1, 5))
    await post("/v1/invoices", inv("A", "C1", 100_000, "2026-01-05", "2026-01-20"))
    await post("/v1/invoices", inv("D", "C2", 30_000, "2026-01-15", "2026-01-15"))
    clock.set(at(2026, 2, 1))
    await post("/v1/invoices", inv("B", "C1", 50_000, "2026-02-01", "2026-02-28"))
    await post("/v1/invoices", inv("E", "C1", 20_000, "2026-02-05", "2026-03-07"))
    clock.set(at(2026, 2, 10))
    await post("/v1/payments", {"external_id": "P1", "customer_id": "C1", "currency": "EUR", "amount_minor": 60_000,
                                "received_at": "2026-02-10T10:00:00Z"})
    clock.set(at(2026, 2, 12))
    await post("/v1/invoices", inv("U", "C1", 7_500, "2026-02-12", "2026-03-14", currency="USD"))
    clock.set(at(2026, 2, 20))
    assert (await post("/v1/invoices", inv("B", "C1", 45_000, "2026-02-01", "2026-02-28"), 200))["status"] == "adjusted"
    clock.set(at(2026, 3, 1))
    body = inv("E", "C1", 20_000, "2026-02-05", "2026-03-07", status="cancelled")
    assert (await post("/v1/invoices", body, 200))["status"] == "cancelled"
    clock.set(at(2026, 3, 10))
    await post("/v1/invoices", inv("C", "C1", 80_000, "2026-03-10", "2026-04-09"))
    clock.set(at(2026, 3, 20))
    await post("/v1/payments", {"external_id": "P2", "customer_id": "C2", "currency": "EUR", "amount_minor": 30_000,
                                "received_at": "2026-03-20T10:00:00Z", "invoice_refs": ["D"]})
    clock.set(at(2026, 4, 1))


# --------------------------------------------------------------------------- (a) aging and DSO by hand


async def test_cei_of_march_by_hand(reporting):
    _app, erp, reader, clock, *_ = reporting
    await the_quarter(erp, clock)
    r = await reader.get("/v1/reports/cei", params={"period": "2026-03"})
    assert r.status_code == 200, r.text
    march = r.json()
    assert (march["first"], march["last"]) == ("2026-03-01", "2026-03-31")
    # EUR opening (28 Feb): A 400.00 + B 450.00 + E 200.00 + D 300.00 = 1,350.00; March sales: C 800.00;
    # closing: A 400.00 + B 450.00 + C 800.00 = 1,650.00, of which C (due 9 Apr) not yet due.
    # (1,350 + 800 - 1,650) / (1,350 + 800 - 800) = 500 / 1,350 = 37.0 %
    assert march["by_currency"]["EUR"] == {"opening_minor": 135_000, "sales_minor": 80_000, "closing_minor": 165_000,
                                           "closing_current_minor": 80_000, "cei_percent": "37.0"}
    # USD: U (75.00) fell due on 14 March and was not paid: 0 %
    assert march["by_currency"]["USD"]["cei_percent"] == "0.0"
    r = await reader.get("/v1/reports/cei", params={"period": "the spring"})
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "period"

    # the collections report's receivables: the same CEI, and the aging at each month end up to March
    from tahsilat.cli import _receivables

    receivables, trend = await _receivables(_app.state.pool, "t1", date(2026, 3, 1), date(2026, 4, 1))
    assert receivables["EUR"]["cei_percent"] == "37.0"
    assert list(trend["EUR"]) == ["2025-10-31", "2025-11-30", "2025-12-31", "2026-01-31", "2026-02-28", "2026-03-31"]
    for day in ("2026-02-28", "2026-03-31"):
        aging = (await reader.get("/v1/reports/aging", params={"as_of": day})).json()["by_currency"]["EUR"]
        assert trend["EUR"][day] == aging, day
    assert trend["EUR"]["2026-03-31"]["current"] == 80_000  # C, due 9 April
    assert trend["EUR"]["2025-12-31"] == ZERO  # nothing invoiced yet: zeros, not a gap
    r = await reader.get("/v1/reports/aging-trend", params={"as_of": "2026-03-31"})
    assert r.status_code == 200, r.text
    assert r.json()["days"] == list(trend["EUR"]) and r.json()["by_currency"] == trend
    r = await reader.get("/v1/reports/aging-trend", params={"as_of": "2026-03-31", "points": 1})
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "points"



async def test_aging_as_of_past_dates_by_hand(reporting):
    app, erp, reader, clock, *_ = reporting
    await the_quarter(erp, clock)

    # 15 Feb: A owes 400.00 after P1 (26 days past due), B is 500.00 (its cut comes on 20 Feb),
    # E is not cancelled yet, C not issued yet, D unpaid (31 days past due).
    r = await reader.get("/v1/reports/aging", params={"as_of": "2026-02-15", "by": "customer"})
    assert r.status_code == 200, r.text
    feb = r.json()
    assert feb["as_of"] == "2026-02-15" and feb["buckets"] == ["current", "1-30", "31-60", "61-90", "90+"]
    assert feb["by_currency"] == {
        "EUR": ZERO | {"current": 70_000, "1-30": 40_000, "31-60": 30_000, "total": 140_000},
        "USD": ZERO | {"current": 7_500, "total": 7_500},
    }
    assert feb["by_customer"] == {
        "C1": {"EUR": ZERO | {"current": 70_000, "1-30": 40_000, "total": 110_000},
               "USD": ZERO | {"current": 7_500, "total": 7_500}},
        "C2": {"EUR": ZERO | {"31-60": 30_000, "total": 30_000}},
    }

    # 31 Mar: A 70 days past due, B 450.00 at 31 days, C current; E cancelled, D paid on 20 Mar.
    r = await reader.get("/v1/reports/aging", params={"as_of": "2026-03-31"})
    mar = r.json()
    assert "by_customer" not in mar
    assert mar["by_currency"] == {
        "EUR": ZERO | {"current": 80_000, "31-60": 45_000, "61-90": 40_000, "total": 165_000},
        "USD": ZERO | {"1-30": 7_500, "total": 7_500},
    }
    # the same date with buckets of our own and one currency
    r = await reader.get("/v1/reports/aging", params={"as_of": "2026-03-31", "buckets": "0,15,45", "currency": "EUR",
                                                      "by": "customer"})
    custom = r.json()
    assert custom["buckets"] == ["current", "1-15", "16-45", "45+"]
    row = {"current": 80_000, "1-15": 0, "16-45": 45_000, "45+": 40_000, "total": 165_000}
    assert custom["by_currency"] == {"EUR": row}
    assert custom["by_customer"] == {"C1": {"EUR": row}}
    # Before anything was issued there is nothing; today (1 Apr) matches what the table holds now.
    assert (await reader.get("/v1/reports/aging", params={"as_of": "2026-01-04"})).json()["by_currency"] == {}
    today = (await reader.get("/v1/reports/aging")).json()
    assert today["as_of"] == "2026-04-01"
    assert today["by_currency"]["EUR"]["total"] == await app.state.pool.fetchval(
        "SELECT sum(open_minor) FROM invoices WHERE currency = 'EUR' AND status = 'open'")


async def test_dso_by_countback_by_hand(reporting):
    _app, erp, reader, clock, *_ = reporting
    await the_quarter(erp, clock)

    r = await reader.get("/v1/reports/dso", params={"as_of": "2026-03-31"})
    assert r.status_code == 200, r.text
    mar = r.json()
    assert mar["months"] == 3
    assert mar["periods"] == [{"start": "2026-03-01", "end": "2026-03-31"}, {"start": "2026-02-01", "end": "2026-02-28"},
                              {"start": "2026-01-01", "end": "2026-01-31"}]
    # EUR: AR 1,650.00. March sales 800.00 -> 850.00 left, 31 days; February 450.00 (B as adjusted,
    # E cancelled) -> 400.00 left, 28 days; January 1,300.00 (A + D): 31 * 400 / 1,300 = 9.54 days.
    eur = mar["by_currency"]["EUR"]
    assert (eur["ar_minor"], eur["sales_minor"]) == (165_000, 255_000)
    assert eur["dso_days"] == pytest.approx(31 + 28 + 31 * 40_000 / 130_000, abs=0.005)  # 68.54
    # USD: AR 75.00, nothing sold in March (31 days), February's 75.00 uses it up exactly (28 days).
    assert mar["by_currency"]["USD"] == {"ar_minor": 7_500, "sales_minor": 7_500, "dso_days": 59.0}

    # As of 15 Feb the newest period is 1-15 Feb (15 days): sales B 500.00 + E 200.00; AR 1,400.00.
    feb = (await reader.get("/v1/reports/dso", params={"as_of": "2026-02-15"})).json()
    assert feb["periods"][0] == {"start": "2026-02-01", "end": "2026-02-15"}
    eur = feb["by_currency"]["EUR"]
    assert (eur["ar_minor"], eur["sales_minor"]) == (140_000, 200_000)
    assert eur["dso_days"] == pytest.approx(15 + 31 * 70_000 / 130_000, abs=0.005)  # 31.69
    assert feb["by_currency"]["USD"]["dso_days"] == 15.0

    # One month only: AR (1,650.00) is more than March's sales, so every day of March counts.
    one = (await reader.get("/v1/reports/dso", params={"as_of": "2026-03-31", "months": 1, "currency": "EUR"})).json()
    assert one["by_currency"] == {"EUR": {"ar_minor": 165_000, "sales_minor": 80_000, "dso_days": 31.0}}


# --------------------------------------------------------------------------- (b) statements


async def test_statement_with_opening_and_closing_balances(reporting):
    app, erp, reader, clock, _prefix, url = reporting
    await the_quarter(erp, clock)

    r = await reader.get("/v1/customers/C1/statement", params={"from": "2026-02-01", "to": "2026-02-28"})
    assert r.status_code == 200, r.text
    feb = r.json()
    assert (feb["customer_id"], feb["from"], feb["to"]) == ("C1", "2026-02-01", "2026-02-28")
    eur = feb["by_currency"]["EUR"]
    assert eur["opening_minor"] == 100_000  # invoice A
    assert [(x["booked_on"], x["kind"], x["description"], x["amount_minor"], x["balance_minor"]) for x in eur["lines"]] == [
        ("2026-02-01", "invoice", "invoice B", 50_000, 150_000),
        ("2026-02-05", "invoice", "invoice E", 20_000, 170_000),
        ("2026-02-10", "payment", "payment P1", -60_000, 110_000),
        ("2026-02-20", "adjustment", "adjustment of invoice B", -5_000, 105_000),
    ]
    assert eur["closing_minor"] == 105_000
    assert feb["by_currency"]["USD"] == {"opening_minor": 0, "closing_minor": 7_500, "lines": [
        {"booked_on": "2026-02-12", "kind": "invoice", "ref_id": feb["by_currency"]["USD"]["lines"][0]["ref_id"],
         "description": "invoice U", "amount_minor": 7_500, "balance_minor": 7_500}]}

    mar = (await reader.get("/v1/customers/C1/statement", params={"from": "2026-03-01", "to": "2026-03-31"})).json()
    eur = mar["by_currency"]["EUR"]
    assert eur["opening_minor"] == 105_000  # February's closing
    assert [(x["kind"], x["amount_minor"], x["balance_minor"]) for x in eur["lines"]] == [
        ("cancellation", -20_000, 85_000), ("invoice", 80_000, 165_000)]
    assert eur["closing_minor"] == 165_000
    assert mar["by_currency"]["USD"] == {"opening_minor": 7_500, "lines": [], "closing_minor": 7_500}
    # ... and what is open now, to the cent: A 400.00 + B 450.00 + C 800.00
    assert eur["closing_minor"] == await app.state.pool.fetchval(
        "SELECT sum(open_minor) FROM invoices WHERE customer_id = 'C1' AND currency = 'EUR'")

    c2 = (await reader.get("/v1/customers/C2/statement", params={"from": "2026-01-01", "to": "2026-03-31"})).json()
    assert c2["by_currency"]["EUR"]["opening_minor"] == 0
    assert [x["amount_minor"] for x in c2["by_currency"]["EUR"]["lines"]] == [30_000, -30_000]
    assert c2["by_currency"]["EUR"]["closing_minor"] == 0
    # no period given: the month up to today (1 Apr), opening with everything before
    today = (await reader.get("/v1/customers/C1/statement")).json()
    assert (today["from"], today["to"]) == ("2026-04-01", "2026-04-01")
    assert today["by_currency"]["EUR"] == {"opening_minor": 165_000, "lines": [], "closing_minor": 165_000}


async def test_report_requests_are_checked(reporting):
    app, erp, reader, clock, _prefix, url = reporting
    await erp.post("/v1/invoices", json=inv("A", "C1", 100_000, "2026-01-05", "2026-01-20"))
    r = await reader.get("/v1/customers/NOPE/statement")
    assert r.status_code == 404
    r = await reader.get("/v1/customers/C1/statement", params={"from": "2026-03-01", "to": "2026-02-01"})
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "from"
    r = await reader.get("/v1/customers/C1/statement", params={"from": "someday"})
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "from"
    for bad in ("30,10", "0,x", "", "0"):
        r = await reader.get("/v1/reports/aging", params={"buckets": bad})
        assert r.status_code == 422 and r.json()["problems"][0]["field"] == "buckets", (bad, r.text)
    r = await reader.get("/v1/reports/aging", params={"by": "vendor"})
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "by"
    r = await reader.get("/v1/reports/aging", params={"currency": "XYZ"})
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "currency"
    r = await reader.get("/v1/reports/dso", params={"months": 0})
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "months"
    async with client(url) as anonymous:
        assert (await anonymous.get("/v1/reports/dso")).status_code == 401
    async with client(url, await api_key(app, "t2", "analytics")) as other_tenant:
        assert (await other_tenant.get("/v1/customers/C1/statement")).status_code == 404
        assert (await other_tenant.get("/v1/reports/aging", params={"as_of": "2026-12-31"})).json()["by_currency"] == {}
        assert (await other_tenant.get("/v1/reports/dso", params={"as_of": "2026-01-31"})).json()["by_currency"] == {}


# --------------------------------------------------------------------------- (c) property: it reconciles


@dataclass(frozen=True)
class Issue:
    amount: int
    currency: str
    issued_days_ago: int
    term_days: int


@dataclass(frozen=True)
class Adjust:
    invoice: int  # which issued invoice (modulo how many there are)
    amount: int


@dataclass(frozen=True)
class Cancel:
    invoice: int


@dataclass(frozen=True)
class Pay:
    amount: int
    currency: str
    reference: int | None  # an issued invoice, or none: oldest first
    received_days_ago: int | None  # None: received now


@dataclass(frozen=True)
class Wait:
    days: int


CURRENCIES = st.sampled_from(["EUR", "USD"])
operations = st.lists(
    st.one_of(
        st.builds(Issue, st.integers(1, 100_000), CURRENCIES, st.integers(-5, 60), st.integers(0, 45)),
        st.builds(Adjust, st.integers(0, 20), st.integers(1, 120_000)),
        st.builds(Cancel, st.integers(0, 20)),
        st.builds(Pay, st.integers(1, 150_000), CURRENCIES, st.none() | st.integers(0, 20),
                  st.none() | st.integers(0, 30)),
        st.builds(Wait, st.integers(1, 20)),
    ),
    min_size=1, max_size=14,
)


async def apply_operations(erp, clock, customer: str, ops: list) -> dict[str, int]:
    """Send the operations; returns what the customer should owe per currency by our own count."""
    issued: list[dict] = []
    expected: dict[str, int] = {}
    for n, op in enumerate(ops):
        today = clock.now().date()
        if isinstance(op, Issue):
            issue = today - timedelta(days=op.issued_days_ago)
            body = inv(f"{customer}-I{n}", customer, op.amount, issue.isoformat(),
                       (issue + timedelta(days=op.term_days)).isoformat(), currency=op.currency)
            r = await erp.post("/v1/invoices", json=body)
            assert r.status_code == 201, r.text
            issued.append(body)
            expected[op.currency] = expected.get(op.currency, 0) + op.amount
        elif isinstance(op, (Adjust, Cancel)) and issued:
            k = op.invoice % len(issued)
            body = issued[k] | ({"amount_minor": op.amount} if isinstance(op, Adjust) else {"status": "cancelled"})
            r = await erp.post("/v1/invoices", json=body)
            assert r.status_code in (200, 409), r.text
            if r.status_code == 200 and r.json()["status"] in ("adjusted", "cancelled"):
                old = issued[k]["amount_minor"]
                expected[body["currency"]] += (op.amount - old) if isinstance(op, Adjust) else -old
                issued[k] = body
        elif isinstance(op, Pay):
            body = {"external_id": f"{customer}-P{n}", "customer_id": customer, "currency": op.currency,
                    "amount_minor": op.amount}
            if op.reference is not None and issued:
                body["invoice_refs"] = [issued[op.reference % len(issued)]["external_id"]]
            if op.received_days_ago is not None:
                body["received_at"] = (clock.now() - timedelta(days=op.received_days_ago)).isoformat()
            r = await erp.post("/v1/payments", json=body)
            assert r.status_code == 201, r.text
            expected[op.currency] = expected.get(op.currency, 0) - op.amount
        elif isinstance(op, Wait):
            clock.advance(timedelta(days=op.days))
    return expected


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=operations, from_days_ago=st.integers(0, 120))
async def test_statement_ledger_and_open_items_reconcile_to_the_cent(reporting, ops, from_days_ago):
    """Random sequences of issue, adjust, cancel, pay (by reference or oldest first, on time or
    backdated, over-paying or in the wrong currency) and waiting, one fresh customer each."""
    app, erp, reader, clock, *_ = reporting
    pool = app.state.pool
    customer = f"H{uuid.uuid4().hex[:12]}"
    expected = await apply_operations(erp, clock, customer, ops)
    today = clock.now().date()
    start, end = today - timedelta(days=from_days_ago), today + timedelta(days=400)
    r = await reader.get(f"/v1/customers/{customer}/statement", params={"from": start.isoformat(),
                                                                        "to": end.isoformat()})
    if not expected:  # nothing was ever booked for this customer
        assert r.status_code == 404, r.text
        return
    assert r.status_code == 200, r.text
    statement = r.json()["by_currency"]
    ledger = {row["currency"]: row["total"] for row in await pool.fetch(
        "SELECT currency, sum(amount_minor) AS total FROM ledger_entries WHERE tenant_id = 't1'"
        " AND customer_id = $1 GROUP BY currency", customer)}
    open_items = {row["currency"]: row["total"] for row in await pool.fetch(
        "SELECT currency, sum(open_minor) AS total FROM invoices WHERE tenant_id = 't1' AND customer_id = $1"
        " GROUP BY currency", customer)}
    unapplied = {row["currency"]: row["total"] for row in await pool.fetch(
        "SELECT currency, sum(unapplied_minor) AS total FROM payments WHERE tenant_id = 't1' AND customer_id = $1"
        " GROUP BY currency", customer)}
    aging = (await reader.get("/v1/reports/aging", params={"as_of": end.isoformat(), "by": "customer"})).json()
    aged = aging["by_customer"].get(customer, {})
    for cur in set(expected) | set(statement) | set(ledger):
        s = statement.get(cur, {"opening_minor": 0, "lines": [], "closing_minor": 0})
        # the statement adds up: opening + lines == closing, and each running balance is right
        balance = s["opening_minor"]
        for line in s["lines"]:
            balance += line["amount_minor"]
            assert line["balance_minor"] == balance
        assert balance == s["closing_minor"]
        # closing == the ledger == open items - unapplied cash == our own count, to the cent
        assert s["closing_minor"] == ledger.get(cur, 0), (cur, ops)
        assert ledger.get(cur, 0) == open_items.get(cur, 0) - unapplied.get(cur, 0), (cur, ops)
        assert ledger.get(cur, 0) == expected.get(cur, 0), (cur, ops)
        # aging as of a date after everything replays history to exactly today's open amounts
        assert aged.get(cur, {}).get("total", 0) == open_items.get(cur, 0), (cur, ops)
    # the history replayed for the far date is today's table, invoice by invoice
    replayed = {i.invoice_id: (i.amount_minor, i.open_minor)
                for i in await invoices_as_of(pool, "t1", end, issued_since=date.min) if i.customer_id == customer}
    table = {str(row["invoice_id"]): (row["amount_minor"], row["open_minor"]) for row in await pool.fetch(
        "SELECT invoice_id, amount_minor, open_minor FROM invoices WHERE tenant_id = 't1' AND customer_id = $1"
        " AND status <> 'cancelled'", customer)}
    assert replayed == table, ops


# --------------------------------------------------------------------------- (d) the CLI


async def test_cli_report_aging_and_dso_print_tables(reporting, pg_server):
    _app, erp, _reader, clock, prefix, _url = reporting
    await the_quarter(erp, clock)
    env = dict(os.environ, DATABASE_URL=pg_server, COLUMNS="160")

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "tahsilat.cli", "report", *args, "--tenant", "t1",
                               "--db-prefix", prefix], capture_output=True, text=True, timeout=60, env=env)

    result = cli("aging", "--as-of", "2026-03-31")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "AR aging of t1 as of 2026-03-31" in out
    for header in ("current", "1-30", "31-60", "61-90", "90+", "total"):
        assert header in out
    eur = next(line for line in out.splitlines() if " EUR " in line)
    assert [cell.strip() for cell in eur.strip("│┃ ").split("│")] == [
        "EUR", "800.00", "0.00", "450.00", "400.00", "0.00", "1,650.00"]

    result = cli("aging", "--as-of", "2026-02-15", "--by", "customer", "--buckets", "0,15,45")
    assert result.returncode == 0, result.stdout + result.stderr
    c2 = next(line for line in result.stdout.splitlines() if " C2 " in line)
    assert [cell.strip() for cell in c2.strip("│┃ ").split("│")] == ["C2", "EUR", "0.00", "0.00", "300.00", "0.00",
                                                                      "300.00"]

    result = cli("dso", "--as-of", "2026-03-31")
    assert result.returncode == 0, result.stdout + result.stderr
    eur = next(line for line in result.stdout.splitlines() if " EUR " in line)
    assert [cell.strip() for cell in eur.strip("│┃ ").split("│")] == [
        "EUR", "1,650.00", "800.00", "450.00", "1,300.00", "68.5"]

    result = cli("aging", "--buckets", "30,10")
    assert result.returncode == 2 and "buckets" in result.stdout


# --------------------------------------------------------------------------- payments booked on their UTC day


async def test_a_payment_is_booked_on_the_same_day_the_reports_see_it(reporting):
    app, erp, reader, clock, *_ = reporting
    clock.set(at(2026, 2, 20))
    r = await erp.post("/v1/invoices", json=inv("A", "C1", 10_000, "2026-02-01", "2026-03-03"))
    assert r.status_code == 201
    r = await erp.post("/v1/payments", json={"external_id": "P", "customer_id": "C1", "currency": "EUR",
                                               "amount_minor": 4_000, "received_at": "2026-02-15T01:00:00+03:00"})
    assert r.status_code == 201
    stored = await app.state.pool.fetchrow(
        "SELECT (p.received_at AT TIME ZONE 'UTC')::date AS utc_day, l.booked_on"
        " FROM payments p JOIN ledger_entries l ON l.ref_id = p.payment_id::text WHERE p.external_id = 'P'")
    aging = (await reader.get("/v1/reports/aging", params={"as_of": "2026-02-14"})).json()
    statement = (await reader.get("/v1/customers/C1/statement", params={"from": "2026-02-01", "to": "2026-02-14"})).json()
    # As of 14 Feb (UTC) the payment has been received: 60.00 are open and the customer owes 60.00.
    assert aging["by_currency"]["EUR"]["total"] == 6_000
    assert stored["booked_on"] == stored["utc_day"], dict(stored)
    assert statement["by_currency"]["EUR"]["closing_minor"] == 6_000
