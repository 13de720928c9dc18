"""Credit in the risk service: limits per customer and currency checked on every invoice, payment
and adjustment (CreditLimitExceeded, CreditHoldPlaced/Released), a person's limits and holds,
dealer groups rolling exposure up to the parent, credit applications recommended and decided, the
tenant's scorecard. Real PostgreSQL; events go through the service's own consumer path (inbox,
one transaction per batch) and the API runs in-process."""
from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any

import pytest
from fastapi import FastAPI

from services.risk.bootstrap import build
from services.risk.service_layer.handlers import Risk
from services.risk.service_layer.ordering import OrderedRisk, staging_handlers
from services.risk.settings import RiskSettings
from shared.clock import ManualClock
from shared.contract import InvoiceAdjusted, InvoiceIssued, PaymentReceived, Topics, new_envelope
from shared.contract.events import Allocation, FieldChange
from shared.processing import EventProcessor
from tests.support import FAST_KAFKA, api_key, client, running

pytestmark = pytest.mark.integration

T = "t1"
NOW = datetime(2026, 5, 4, 10, 0, tzinfo=timezone.utc)


@dataclass
class Record:
    value: bytes
    topic: str = "invoicing"
    partition: int = 0
    offset: int = 0
    key: bytes | None = None
    headers: tuple = ()


@dataclass
class Service:
    app: FastAPI
    url: str
    admin: str
    collector: str
    processor: OrderedRisk
    clock: ManualClock
    sent: int = 0

    async def feed(self, *payloads: Any) -> None:
        records = []
        for p in payloads:
            self.sent += 1
            self.clock.advance(timedelta(minutes=1))
            env = new_envelope(p, source="invoicing", tenant_id=T, subject=p.customer_id, time=self.clock.now())
            records.append(Record(env.model_dump_json().encode(), offset=self.sent))
        await self.processor.process_batch(records)

    async def events(self, kind: str) -> list[dict]:
        rows = await self.app.state.pool.fetch(
            "SELECT envelope FROM outbox WHERE event_type = $1 ORDER BY id", kind)
        return [r["envelope"]["data"] for r in rows]


@pytest.fixture
async def risk(database: str, kafka_bootstrap: str, topic_prefix: str) -> AsyncIterator[Service]:
    clock = ManualClock(NOW)
    settings = RiskSettings(database_url=database, kafka_bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix,
                            roles="api", **FAST_KAFKA)  # no relay: the events stay in the outbox to be read
    app = build(settings, clock)
    async with running(app) as url:

        async def no_dead_letters(record, reason):
            raise AssertionError(f"dead-lettered: {reason}")

        processor = OrderedRisk(Risk(clock, Topics(topic_prefix)), app.state.pool, EventProcessor(
            service="risk", name="risk.behaviour", pool=app.state.pool, dead_letter=no_dead_letters,
            handlers=staging_handlers()))
        yield Service(app, url, await api_key(app, T, "admin"), await api_key(app, T, "collector"), processor, clock)


def invoice(customer: str, n: str, amount: int, currency: str = "EUR") -> InvoiceIssued:
    return InvoiceIssued(customer_id=customer, invoice_id=n, billing_source="erp", external_id=n, number=n,
                         currency=currency, amount_minor=amount, issue_date=date(2026, 5, 1),
                         due_date=date(2026, 5, 31))


def payment(customer: str, n: str, amount: int, invoice_id: str, open_after: int) -> PaymentReceived:
    return PaymentReceived(customer_id=customer, payment_id=n, billing_source="erp", external_id=n, currency="EUR",
                           amount_minor=amount, received_at=NOW,
                           allocations=[Allocation(invoice_id=invoice_id, amount_minor=amount,
                                                   invoice_open_minor=open_after)])


async def test_exposure_above_the_limit_places_a_hold_and_a_payment_releases_it(risk: Service):
    async with client(risk.url, risk.collector) as api:
        r = await api.put("/v1/customers/c1/credit/limits/EUR", json={"limit_minor": 1_000_00, "reason": "new"})
        assert r.status_code == 200, r.text
        neither = await api.put("/v1/customers/c1/credit/limits/EUR", json={})
        assert neither.status_code == 422 and "give either limit_minor" in neither.text, neither.text
        await risk.feed(invoice("c1", "i1", 600_00), invoice("c1", "i2", 400_00))  # 1,000.00: at the limit
        assert await risk.events("CreditHoldPlaced") == []
        await risk.feed(invoice("c1", "i3", 1))  # one cent over
        [exceeded] = await risk.events("CreditLimitExceeded")
        assert (exceeded["limit_minor"], exceeded["exposure_minor"], exceeded["scope"]) == (1_000_00, 1_000_01,
                                                                                            "customer")
        [placed] = await risk.events("CreditHoldPlaced")
        assert (placed["currency"], placed["reason"]) == ("EUR", "limit_exceeded")
        view = (await api.get("/v1/customers/c1/credit")).json()
        [line] = view["lines"]
        assert (line["limit_minor"], line["exposure_minor"], line["headroom_minor"], line["held"]) == (
            1_000_00, 1_000_01, -1, True)
        assert view["on_hold"] is True

        await risk.feed(invoice("c1", "i4", 50_00))  # still above: no second hold
        assert len(await risk.events("CreditHoldPlaced")) == 1
        await risk.feed(payment("c1", "p1", 600_00, "i1", 0))  # 450.01 open
        [released] = await risk.events("CreditHoldReleased")
        assert (released["reason"], released["exposure_minor"]) == ("within_limit", 450_01)
        assert (await api.get("/v1/customers/c1/credit")).json()["on_hold"] is False

        # an adjustment upwards counts as well; raising the limit releases the hold at once
        await risk.feed(InvoiceAdjusted(customer_id="c1", invoice_id="i2", billing_source="erp", external_id="i2",
                                        number="i2", currency="EUR", amount_minor=1_000_00,
                                        open_amount_minor=1_000_00, issue_date=date(2026, 5, 1),
                                        due_date=date(2026, 5, 31),
                                        changes={"amount_minor": FieldChange(old=400_00, new=1_000_00)}))
        assert len(await risk.events("CreditHoldPlaced")) == 2
        r = await api.put("/v1/customers/c1/credit/limits/EUR", json={"limit_minor": 2_000_00})
        assert r.json()["previous_limit_minor"] == 1_000_00
        released = await risk.events("CreditHoldReleased")
        assert [x["reason"] for x in released] == ["within_limit", "limit_raised"]
        limits_set = await risk.events("CreditLimitSet")
        assert [(x["limit_minor"], x["source"]) for x in limits_set] == [(1_000_00, "person"), (2_000_00, "person")]
        assert limits_set[0]["set_by"].startswith("key:")


async def test_a_person_can_hold_a_customer_and_lift_it(risk: Service):
    async with client(risk.url, risk.collector) as api:
        r = await api.post("/v1/customers/c2/credit/hold", json={"reason": "insolvency rumours"})
        assert r.json()["changed"] is True
        assert (await api.post("/v1/customers/c2/credit/hold", json={})).json()["changed"] is False
        view = (await api.get("/v1/customers/c2/credit")).json()
        assert view["on_hold"] and view["holds"][0]["kind"] == "manual" and view["holds"][0]["currency"] == "*"
        assert (await api.delete("/v1/customers/c2/credit/hold")).json()["changed"] is True
    [placed] = await risk.events("CreditHoldPlaced")
    [released] = await risk.events("CreditHoldReleased")
    assert (placed["reason"], placed["currency"], released["reason"]) == ("manual", None, "manual")


async def test_a_dealer_groups_exposure_rolls_up_to_the_parents_limit(risk: Service):
    async with client(risk.url, risk.collector) as api:
        for sub in ("sub-1", "sub-2"):
            assert (await api.put(f"/v1/customers/{sub}/parent", json={"parent_id": "dealer"})).status_code == 200
        r = await api.put("/v1/customers/dealer/parent", json={"parent_id": "sub-1"})
        assert r.status_code == 422 and "parent_id" in r.text  # one level deep
        assert (await api.put("/v1/customers/x/parent", json={"parent_id": "sub-1"})).status_code == 422
        await api.put("/v1/customers/dealer/credit/limits/EUR", json={"limit_minor": 1_000_00})
        await api.put("/v1/customers/sub-2/credit/limits/EUR", json={"limit_minor": 5_000_00})
        await risk.feed(invoice("dealer", "d1", 200_00), invoice("sub-1", "s1", 500_00))
        assert await risk.events("CreditHoldPlaced") == []
        await risk.feed(invoice("sub-2", "s2", 400_00, "EUR"), invoice("sub-2", "s3", 9_999_00, "TRY"))
        # the group: 200 + 500 + 400 = 1,100.00 EUR above the dealer's 1,000.00; sub-2's own 400 is within its 5,000
        [exceeded] = await risk.events("CreditLimitExceeded")
        assert (exceeded["customer_id"], exceeded["scope"], exceeded["exposure_minor"]) == ("dealer", "group", 1_100_00)
        [placed] = await risk.events("CreditHoldPlaced")
        assert (placed["customer_id"], placed["reason"]) == ("dealer", "group_limit_exceeded")
        group = (await api.get("/v1/groups/dealer")).json()
        assert [(m["customer_id"], m["exposure"]) for m in group["members"]] == [
            ("dealer", {"EUR": 200_00}), ("sub-1", {"EUR": 500_00}), ("sub-2", {"EUR": 400_00, "TRY": 9_999_00})]
        assert {(x["currency"], x["exposure_minor"], x["held"]) for x in group["lines"]} >= {("EUR", 1_100_00, True)}
        assert (await api.get("/v1/groups/sub-1")).status_code == 404
        await risk.feed(payment("sub-1", "p1", 500_00, "s1", 0))
        [released] = await risk.events("CreditHoldReleased")
        assert (released["customer_id"], released["exposure_minor"]) == ("dealer", 600_00)


async def test_a_credit_application_is_recommended_with_reasons_and_decided_by_a_person(risk: Service):
    body = {"customer_id": "newco", "sector": "construction", "years_trading": "1.5",
            "declared_revenue_minor": 10_000_000_00, "currency": "EUR", "requested_limit_minor": 500_000_00,
            "requested_terms_days": 60}
    async with client(risk.url, risk.collector) as api:
        bad = await api.post("/v1/credit-applications", json={**body, "requested_terms_days": 999})
        assert bad.status_code == 422 and "requested_terms_days" in bad.text
        r = await api.post("/v1/credit-applications", json=body)
        assert r.status_code == 201, r.text
        app = r.json()
        rec = app["recommendation"]
        assert rec["risk_class"] == "very_high" and rec["terms_days"] == 14
        assert 0 < rec["limit_minor"] < 500_000_00
        assert {s["kind"] for s in rec["security"]} >= {"deposit"}
        codes = {x["code"] for x in rec["reasons"]}
        assert {"sector_risk", "young_company", "terms_capped"} <= codes
        assert all(set(x["text"]) == {"en", "tr", "cs", "fa"} for x in rec["reasons"])
        application_id = app["application_id"]
        assert (await api.get(f"/v1/credit-applications/{application_id}")).json()["status"] == "pending"

        decided = await api.post(f"/v1/credit-applications/{application_id}/decision",
                                 json={"approve": True, "limit_minor": rec["limit_minor"] // 2, "note": "start small"})
        assert decided.status_code == 200, decided.text
        assert (decided.json()["decision"], decided.json()["limit_minor"]) == ("changed", rec["limit_minor"] // 2)
        again = await api.post(f"/v1/credit-applications/{application_id}/decision", json={"approve": False})
        assert again.status_code == 409
        assert (await api.post(f"/v1/credit-applications/{uuid.uuid4()}/decision",
                               json={"approve": True})).status_code == 404
        view = (await api.get("/v1/customers/newco/credit")).json()
        assert [(x["currency"], x["limit_minor"], x["limit_source"]) for x in view["lines"]] == [
            ("EUR", rec["limit_minor"] // 2, "application")]
    [event] = await risk.events("CreditApplicationDecided")
    assert (event["decision"], event["recommended_limit_minor"], event["note"]) == ("changed", rec["limit_minor"],
                                                                                    "start small")
    assert event["reasons"] and event["decided_by"].startswith("key:")


async def test_the_engine_recommends_a_limit_from_the_customers_invoicing(risk: Service):
    await risk.feed(*(invoice("c9", f"i{n}", 1_000_00) for n in range(3)))
    async with client(risk.url, risk.collector) as api:
        [line] = (await api.get("/v1/customers/c9/credit")).json()["lines"]
        assert line["limit_minor"] is None and line["recommended_limit_minor"] > 0
        assert line["recommendation_reasons"]
        r = await api.put("/v1/customers/c9/credit/limits/EUR", json={"use_recommendation": True})
        assert (r.json()["source"], r.json()["limit_minor"]) == ("engine", line["recommended_limit_minor"])
        r = await api.put("/v1/customers/nobody/credit/limits/EUR", json={"use_recommendation": True})
        assert r.status_code == 422 and "use_recommendation" in r.text


async def test_the_tenants_scorecard_is_validated_and_used_for_new_assessments(risk: Service):
    async with client(risk.url, risk.admin) as api:
        shipped = (await api.get("/v1/scorecard")).json()
        assert shipped["own"] is False and shipped["scorecard"]["segments"]["D"] == "high"
        bad = await api.put("/v1/scorecard", json={"grade_below": {"A": 50, "B": 40, "C": 60}})
        assert bad.status_code == 422 and "grade_below" in bad.text
        r = await api.put("/v1/scorecard", json={"new_customer_points": 70})
        assert r.status_code == 200 and r.json()["own"] is True
    await risk.feed(invoice("fresh", "f1", 100_00))
    async with client(risk.url, risk.collector) as api:
        body = (await api.get("/v1/customers/fresh/risk", params={"language": "cs"})).json()
        assert (body["score"], body["grade"], body["segment"]) == (70, "D", "high")
        assert body["factors"][0]["explanation"] == "Zatím žádná platební historie (vystaveno faktur: 1)"
        assert (await api.put("/v1/scorecard", json={})).status_code == 403  # a collector may not
