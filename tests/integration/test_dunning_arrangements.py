"""Promises to pay, payment plans, settlement offers and disputes against real PostgreSQL and the broker: each
pauses what it covers, is kept or broken by the payments that arrive (or do not), and dunning
resumes where it was; each decision is made once, however often the timer runs."""
from __future__ import annotations

import io
import uuid
from collections import Counter
from datetime import date, datetime, timezone

import pytest

from shared.contract import CreditNoteIssued, PaymentReceived, RiskAssessed, new_envelope
from shared.contract.events import Allocation
from tahsilat.streams import read_events
from tests.integration.test_dunning import (  # noqa: F401 - the fixture
    INV_A, INV_B, _case_of, _items, _n, dunning, env, issued, requested, send,
)
from tests.support import api_key, client, wait_for

pytestmark = pytest.mark.integration


def at(day: date, hour: int = 10) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=timezone.utc)


def payment(payment_id: str, invoice: str, amount: int, left: int, when: datetime, clock):
    return env(PaymentReceived(customer_id="C1", payment_id=payment_id, billing_source="erp", external_id=payment_id,
                               currency="EUR", amount_minor=amount, received_at=when,
                               allocations=[Allocation(invoice_id=invoice, amount_minor=amount,
                                                       invoice_open_minor=left)]), payment_id, clock)


async def events_of(kafka_bootstrap, topics, *types):
    return [e for e in await read_events(kafka_bootstrap, topics.dunning) if e.type in types]


async def _setup(dunning):
    app, http, clock, topics, producer = dunning
    await send(producer, topics.invoicing, env(issued(INV_A), INV_A, clock), env(issued(INV_B), INV_B, clock))
    return (await wait_for(lambda: _items(http, "C1", 2), message="the case"))[0]


async def test_a_broken_promise_resumes_dunning_with_the_latest_step_and_is_told(dunning, kafka_bootstrap):
    app, http, clock, topics, producer = dunning
    case = await _setup(dunning)
    clock.set(at(date(2026, 3, 11)))  # after the due date: pre-due and due were one notice (due), sent now
    await wait_for(lambda: _n(requested(kafka_bootstrap, topics), 1), message="the due notice")
    r = await http.post(f"/v1/cases/{case['case_id']}/promises", json={
        "amount_minor": 100_000, "promised_date": "2026-03-20", "channel": "phone"})
    assert r.status_code == 201, r.text
    promise = r.json()
    assert promise["status"] == "open" and sorted(promise["invoice_ids"]) == [INV_A, INV_B]
    assert promise["deadline"] == "2026-03-24T00:00:00Z"  # the 20th plus 3 days of grace, UTC customer
    # the +7 step (2026-03-17) falls inside the promise: nothing goes out
    clock.set(at(date(2026, 3, 18)))
    assert await app.state.dunning.claim_due_steps() == 0
    assert (await _case_of(http, INV_A))["next_due_at"] == "2026-03-24T00:00:00Z"
    # errors name the field
    bad = await http.post(f"/v1/cases/{case['case_id']}/promises", json={
        "amount_minor": 1, "promised_date": "2026-03-25", "channel": "phone"})
    assert bad.status_code == 409 and "already under promise" in bad.text  # its invoices are covered
    # a part payment is not enough; the deadline passes: broken, and dunning resumes at once with
    # the latest step due (+7 email and SMS), not a burst
    await send(producer, topics.invoicing, payment("P1", INV_A, 30_000, 20_000, at(date(2026, 3, 19)), clock))
    await wait_for(lambda: app.state.pool.fetchval("SELECT count(*) = 1 FROM item_payments"), message="payment")
    clock.set(at(date(2026, 3, 24), 1))
    broken = await wait_for(lambda: _n(events_of(kafka_bootstrap, topics, "PromiseToPayBroken"), 1),
                            message="the promise broken")
    assert (broken[0].data["paid_minor"], broken[0].data["amount_minor"]) == (30_000, 100_000)
    got = await wait_for(lambda: _n(requested(kafka_bootstrap, topics), 3), message="dunning resumed")
    assert sorted((e.data["step"], e.data["channel"]) for e in got[1:]) == [("overdue_7", "email"),
                                                                            ("overdue_7_sms", "sms")]
    assert [(i["invoice_id"], i["open_amount_minor"]) for i in got[1].data["items"]] == [(INV_A, 20_000),
                                                                                         (INV_B, 50_000)]
    for _ in range(3):  # the timer runs again and again: decided once
        await app.state.dunning.arrangements.tick()
    promises = (await http.get("/v1/promises")).json()
    assert [(p["status"], p["paid_minor"]) for p in promises] == [("broken", 30_000)]
    assert len(await events_of(kafka_bootstrap, topics, "PromiseToPayBroken")) == 1


async def test_a_promise_is_kept_when_payments_cover_it(dunning, kafka_bootstrap):
    app, http, clock, topics, producer = dunning
    case = await _setup(dunning)
    r = await http.post(f"/v1/cases/{case['case_id']}/promises", json={
        "amount_minor": 40_000, "promised_date": "2026-03-12", "channel": "email", "invoice_ids": [INV_A],
        "grace_days": 0})
    assert r.status_code == 201, r.text
    assert (await http.post(f"/v1/cases/{case['case_id']}/promises", json={
        "amount_minor": 60_000, "promised_date": "2026-03-12", "channel": "email",
        "invoice_ids": [INV_A]})).status_code == 409
    assert (await http.post(f"/v1/cases/{case['case_id']}/promises", json={
        "amount_minor": 60_000, "promised_date": "2026-03-12", "channel": "email",
        "invoice_ids": [INV_B]})).status_code == 422  # more than B owes
    assert (await http.post(f"/v1/cases/{case['case_id']}/promises", json={
        "amount_minor": 1, "promised_date": "2026-02-01", "channel": "email",
        "invoice_ids": [INV_B]})).status_code == 422  # in the past
    await send(producer, topics.invoicing, payment("P1", INV_A, 25_000, 25_000, at(date(2026, 3, 5)), clock),
               payment("P2", INV_A, 15_000, 10_000, at(date(2026, 3, 6)), clock))
    kept = await wait_for(lambda: _n(events_of(kafka_bootstrap, topics, "PromiseToPayKept"), 1), message="kept")
    assert kept[0].data["paid_minor"] == 40_000
    clock.set(at(date(2026, 3, 20)))
    await app.state.dunning.arrangements.tick()
    assert (await http.get("/v1/promises", params={"status": "kept"})).json()[0]["status"] == "kept"
    assert await events_of(kafka_bootstrap, topics, "PromiseToPayBroken") == []


async def test_a_payment_plan_reminds_each_instalment_and_a_missed_one_breaks_it(dunning, kafka_bootstrap):
    app, http, clock, topics, producer = dunning
    case = await _setup(dunning)
    bad = await http.post(f"/v1/cases/{case['case_id']}/payment-plans", json={
        "instalments": [{"due_date": "2026-03-15", "amount_minor": 50_000},
                        {"due_date": "2026-04-15", "amount_minor": 40_000}]})
    assert bad.status_code == 422 and "add up to 90000" in bad.text
    r = await http.post(f"/v1/cases/{case['case_id']}/payment-plans", json={
        "count": 3, "first_due": "2026-03-15", "every_days": 30})
    assert r.status_code == 201, r.text
    plan = r.json()
    assert [(i["sequence"], i["due_date"], i["amount_minor"]) for i in plan["instalments"]] == [
        (1, "2026-03-15", 33_334), (2, "2026-04-14", 33_333), (3, "2026-05-14", 33_333)]
    # the invoices are not dunned while the plan holds
    clock.set(at(date(2026, 3, 13)))
    reminder = await wait_for(lambda: _n(requested(kafka_bootstrap, topics), 1), message="the first reminder")
    assert reminder[0].data["notification_key"] == f"plan:{plan['plan_id']}:1"
    assert reminder[0].data["items"][0]["open_amount_minor"] == 33_334
    assert {e.data["step"] for e in reminder} == {"plan_instalment"}
    await send(producer, topics.invoicing, payment("P1", INV_A, 33_334, 16_666, at(date(2026, 3, 14)), clock))
    await wait_for(lambda: app.state.pool.fetchval("SELECT count(*) = 1 FROM item_payments"), message="the payment")
    clock.set(at(date(2026, 4, 12)))  # second reminder; the first instalment is paid, nothing breaks
    await wait_for(lambda: _n(requested(kafka_bootstrap, topics), 2), message="the second reminder")
    assert (await http.get(f"/v1/payment-plans/{plan['plan_id']}")).json()["status"] == "active"
    clock.set(at(date(2026, 4, 18), 1))  # the second is missed (due the 14th, 3 days of grace)
    broken = await wait_for(lambda: _n(events_of(kafka_bootstrap, topics, "PaymentPlanBroken"), 1), message="broken")
    assert (broken[0].data["missed_sequence"], broken[0].data["paid_minor"]) == (2, 33_334)
    got = await wait_for(lambda: _n(requested(kafka_bootstrap, topics), 4), message="dunning resumed")
    resumed = [e.data for e in got if e.data["step"] != "plan_instalment"]
    assert sorted((d["step"], d["channel"]) for d in resumed) == [("final_14", "email"), ("final_14_sms", "sms")]
    assert sum(i["open_amount_minor"] for i in resumed[0]["items"]) == 100_000 - 33_334
    for _ in range(3):
        await app.state.dunning.arrangements.tick()
    assert len(await events_of(kafka_bootstrap, topics, "PaymentPlanBroken")) == 1
    assert Counter(e.data["notification_key"] for e in await requested(kafka_bootstrap, topics)).most_common(1)[0][1] == 1


async def test_a_payment_plan_paid_in_full_completes(dunning, kafka_bootstrap):
    app, http, clock, topics, producer = dunning
    case = await _setup(dunning)
    r = await http.post(f"/v1/cases/{case['case_id']}/payment-plans", json={
        "instalments": [{"due_date": "2026-03-15", "amount_minor": 60_000},
                        {"due_date": "2026-04-15", "amount_minor": 40_000}]})
    assert r.status_code == 201, r.text
    await send(producer, topics.invoicing, payment("P1", INV_A, 50_000, 0, at(date(2026, 3, 14)), clock),
               payment("P2", INV_B, 50_000, 0, at(date(2026, 3, 20)), clock))
    done = await wait_for(lambda: _n(events_of(kafka_bootstrap, topics, "PaymentPlanCompleted"), 1), message="done")
    assert done[0].data["paid_minor"] == 100_000
    assert (await http.get("/v1/payment-plans", params={"status": "completed"})).json()[0]["paid_minor"] == 100_000


async def test_disputes_pause_their_invoice_and_are_resolved_accepted_with_a_credit_or_rejected(dunning, kafka_bootstrap):
    app, http, clock, topics, producer = dunning
    await _setup(dunning)
    r = await http.post("/v1/disputes", json={"customer_id": "C1", "invoice_id": INV_A, "reason_code": "quality",
                                              "description": "the goods arrived damaged"})
    assert r.status_code == 201, r.text
    dispute = r.json()
    assert (dispute["reason_code"], dispute["disputed_minor"], dispute["currency"]) == ("quality", 50_000, "EUR")
    assert (await http.post("/v1/disputes", json={"customer_id": "C1", "reason_code": "bribery",
                                                  "description": "xx x"})).status_code == 422
    assert (await http.post("/v1/disputes", json={"customer_id": "C9", "invoice_id": INV_A, "reason_code": "price",
                                                  "description": "not mine"})).status_code == 404
    r = await http.post("/v1/disputes", json={"customer_id": "C1", "invoice_id": INV_B, "reason_code": "price",
                                              "description": "the agreed price was lower"})
    second = r.json()

    clock.set(at(date(2026, 3, 18)))  # +7: both disputed, nothing goes out
    assert await app.state.dunning.claim_due_steps() == 0
    # accepted: a credit note for 120.00 is requested for A; rejected: B is dunned again
    r = await http.post(f"/v1/disputes/{dispute['dispute_id']}/resolve", json={
        "outcome": "accepted", "resolution": "damaged goods confirmed", "credit_minor": 12_000})
    assert r.status_code == 200 and (r.json()["outcome"], r.json()["credit_minor"]) == ("accepted", 12_000), r.text
    assert (await http.post(f"/v1/disputes/{second['dispute_id']}/resolve", json={
        "outcome": "rejected", "resolution": "price list applies", "credit_minor": 5})).status_code == 422
    r = await http.post(f"/v1/disputes/{second['dispute_id']}/resolve", json={
        "outcome": "rejected", "resolution": "price list applies"})
    assert r.status_code == 200, r.text
    assert (await http.post(f"/v1/disputes/{second['dispute_id']}/resolve", json={
        "resolution": "again"})).status_code == 409
    requests = await wait_for(lambda: events_of(kafka_bootstrap, topics, "CreditNoteRequested"), message="requested")
    assert [(e.data["invoice_id"], e.data["amount_minor"], e.data["invoice_number"]) for e in requests] == [
        (INV_A, 12_000, "N-000a")]
    # B is dunned again; A waits for its credit note
    got = await wait_for(lambda: _n(requested(kafka_bootstrap, topics), 2), message="dunning resumed")
    assert {i["invoice_id"] for e in got for i in e.data["items"]} == {INV_B}
    assert await app.state.dunning.claim_due_steps() == 0
    # invoicing issues the credit note: A is dunned for what it leaves open
    note = env(CreditNoteIssued(
        customer_id="C1", credit_note_id="CN-1", billing_source="dunning",
        external_id=f"dispute:{dispute['dispute_id']}", currency="EUR", amount_minor=12_000,
        issue_date=date(2026, 3, 18), allocations=[Allocation(invoice_id=INV_A, amount_minor=12_000,
                                                              invoice_open_minor=38_000)]), "CN-1", clock)
    await send(producer, topics.invoicing, note)
    got = await wait_for(lambda: _n(requested(kafka_bootstrap, topics), 4), message="A dunned after its credit")
    assert {(i["invoice_id"], i["open_amount_minor"]) for i in got[-1].data["items"]} == {
        (INV_A, 38_000), (INV_B, 50_000)}
    report = (await http.get("/v1/reports/disputes")).json()
    assert {r["reason_code"]: (r["disputes"], r["accepted"], r["rejected"], r["credited_minor"]) for r in report} == {
        "quality": (1, 1, 0, {"EUR": 12_000}), "price": (1, 0, 1, {})}


async def test_a_dispute_open_too_long_raises_an_alert_once(dunning, kafka_bootstrap):
    app, http, clock, topics, producer = dunning
    await _setup(dunning)
    r = await http.post("/v1/disputes", json={"customer_id": "C1", "reason_code": "not_received",
                                              "description": "never delivered"})
    assert r.status_code == 201, r.text
    clock.set(at(date(2026, 3, 16)))  # 15 days later, DISPUTE_ALERT_DAYS is 14
    alert = await wait_for(lambda: _n(events_of(kafka_bootstrap, topics, "DisputeAgeing"), 1), message="the alert")
    assert (alert[0].data["age_days"], alert[0].data["reason_code"]) == (15, "not_received")
    for _ in range(3):
        await app.state.dunning.arrangements.tick()
    assert len(await events_of(kafka_bootstrap, topics, "DisputeAgeing")) == 1


LEGAL = """\
name: to-court
segment: medium
languages: [en, tr, cs, fa]
steps:
  - {name: overdue_7, offset_days: 7, channel: email, template: reminder_overdue}
  - {name: final_14, offset_days: 14, channel: email, template: final_notice}
  - {name: legal_30, offset_days: 30, channel: legal}
"""


@pytest.mark.parametrize("language", ["fa", "en"])
async def test_the_legal_step_ends_automatic_dunning_and_hands_over_a_case_file(dunning, kafka_bootstrap, language,
                                                                                artifacts):
    from pypdf import PdfReader

    from services.dunning.adapters import case_file
    from shared.contract import CustomerUpserted
    from tests.support import api_key, client

    app, http, clock, topics, producer = dunning
    async with client(str(http.base_url), await api_key(app, "t1", "admin")) as admin:
        assert (await admin.post("/v1/policies", json={"source": LEGAL, "activate": True})).status_code == 201
    await send(producer, topics.invoicing, env(CustomerUpserted(customer_id="C1", name="Globex", language=language),
                                               "C1", clock))
    case = await _setup(dunning)
    await send(producer, topics.invoicing, payment("P1", INV_A, 10_000, 40_000, at(date(2026, 3, 12)), clock))
    r = await http.post(f"/v1/cases/{case['case_id']}/promises", json={
        "amount_minor": 50_000, "promised_date": "2026-03-13", "channel": "phone", "invoice_ids": [INV_B],
        "grace_days": 0})
    assert r.status_code == 201, r.text
    for day in (date(2026, 3, 18), date(2026, 3, 25)):
        clock.set(at(day))
        await wait_for(lambda: _n(requested(kafka_bootstrap, topics), 1 if day.day == 18 else 2), message=f"{day}")
    assert (await http.get(f"/v1/cases/{case['case_id']}/case-file")).status_code == 404  # not yet
    r = await http.post("/v1/customers/C1/contact-log", json={"kind": "call", "outcome": "no_answer",
                                                              "note": "rang the accounts office twice"})
    assert r.status_code == 201, r.text
    clock.set(at(date(2026, 4, 10)))
    escalated = await wait_for(lambda: _n(events_of(kafka_bootstrap, topics, "CaseEscalatedToLegal"), 1),
                               message="the hand-over")
    data = escalated[0].data
    assert data["total_minor"] == 90_000 and sorted(data["invoice_ids"]) == [INV_A, INV_B]
    document = data["case_file"]
    assert [n["step"] for n in document["notices"]] == ["overdue_7", "final_14"]
    assert [p["status"] for p in document["promises"]] == ["broken"]
    assert [(p["payment_ref"], p["amount_minor"]) for p in document["statement"]["payments"]] == [("P1", 10_000)]
    assert {e["type"] for e in document["contact_log"]} >= {"notice", "payment", "promise", "call"}
    # what the collector logged is in the file the lawyer gets
    assert [e["what"] for e in document["contact_log"] if e["type"] == "call"] == [
        "no_answer – rang the accounts office twice"]
    # the case is out of automatic dunning: no more notices, its steps cancelled
    found = await _case_of(http, INV_A)
    assert (found["status"], found["next_due_at"]) == ("legal", None)
    assert (await http.get(f"/v1/cases/{case['case_id']}/case-file")).json() == document
    r = await http.get(f"/v1/cases/{case['case_id']}/case-file", params={"format": "pdf"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/pdf" and r.content[:5] == b"%PDF-"
    (artifacts / f"case-file-{language}.pdf").write_bytes(r.content)
    text = "".join(page.extract_text() for page in PdfReader(io.BytesIO(r.content)).pages)
    assert "N-000a" in text and ("Case file for legal collection" in text) == (language == "en")
    html = case_file.render_html(document)  # what the PDF is made from: the customer's language and direction
    assert {"fa": '<html lang="fa" dir="rtl">', "en": '<html lang="en" dir="ltr">'}[language] in html
    assert {"fa": "پرونده پیگیری حقوقی", "en": "Case file for legal collection"}[language] in html
    # a new invoice of the customer opens a new case, dunned as usual
    inv_c = "00000000-0000-0000-0000-00000000000c"
    await send(producer, topics.invoicing, env(issued(inv_c, due=date(2026, 4, 20)), inv_c, clock))
    new = await wait_for(lambda: _case_of(http, inv_c), message="a new case")
    assert new["case_id"] != case["case_id"] and new["status"] == "open"


async def test_two_timers_at_once_decide_a_broken_promise_once(dunning, kafka_bootstrap):
    """Every dunning replica runs the arrangements timer: SKIP LOCKED gives each promise to one."""
    import asyncio

    app, http, clock, topics, producer = dunning
    case = await _setup(dunning)
    for invoice in (INV_A, INV_B):
        r = await http.post(f"/v1/cases/{case['case_id']}/promises", json={
            "amount_minor": 1_000, "promised_date": "2026-03-02", "channel": "sms", "invoice_ids": [invoice],
            "grace_days": 0})
        assert r.status_code == 201, r.text
    clock.set(at(date(2026, 3, 3)))
    arrangements = app.state.dunning.arrangements
    await asyncio.gather(*(arrangements.tick(limit=1) for _ in range(4)))
    await wait_for(lambda: _n(events_of(kafka_bootstrap, topics, "PromiseToPayBroken"), 2), message="both broken")
    await arrangements.tick()
    broken = await events_of(kafka_bootstrap, topics, "PromiseToPayBroken")
    assert sorted(e.data["promise_id"] for e in broken) == sorted(
        p["promise_id"] for p in (await http.get("/v1/promises")).json())


async def test_a_claim_that_fails_midway_changes_nothing_and_the_next_one_sends_once(dunning, kafka_bootstrap,
                                                                                    monkeypatch):
    """The step timer's transaction: a failure after the notices were decided (here, writing the
    notices) rolls back the steps and the outbox too; the next run sends each notice once."""
    from services.dunning.adapters import cases as repo

    app, http, clock, topics, producer = dunning
    await _setup(dunning)
    real = repo.insert_notices
    state = {"failing": True, "calls": 0}

    async def failing(*args):
        state["calls"] += 1
        if state["failing"]:
            raise ConnectionResetError("the database went away mid-claim")
        await real(*args)

    monkeypatch.setattr(repo, "insert_notices", failing)
    clock.set(at(date(2026, 3, 7), 9).replace(minute=30))
    try:  # whoever claims the case (this call or one of the service's claim loops) fails
        assert await app.state.dunning.claim_due_steps() == 0  # a service loop held the case: skipped
    except ConnectionResetError:
        pass
    await wait_for(lambda: _true(state["calls"] >= 3), message="the timer failing again and again")
    assert await app.state.pool.fetchval("SELECT count(*) FROM item_steps WHERE status <> 'scheduled'") == 0
    assert await app.state.pool.fetchval("SELECT count(*) FROM outbox") == 0
    state["failing"] = False
    got = await wait_for(lambda: _n(requested(kafka_bootstrap, topics), 1), message="the notice, once")
    await app.state.dunning.claim_due_steps()
    assert len(await requested(kafka_bootstrap, topics)) == 1 and len(got[0].data["items"]) == 2


async def _true(value: bool) -> bool:
    return value


# -- settlement offers ------------------------------------------------------------------------------

SETTLE = """\
name: settle
segment: medium
languages: [en, tr]
settlement: {max_discount_percent: 5, max_days: 14, min_days_overdue: 7}
steps:
  - {name: due, offset_days: 0, channel: email, template: reminder_due}
  - {name: overdue_7, offset_days: 7, channel: email, template: reminder_overdue}
  - {name: overdue_14, offset_days: 14, channel: email, template: final_notice}
"""


async def _settle_policy(app, http):
    async with client(str(http.base_url), await api_key(app, "t1", "admin")) as admin:
        r = await admin.post("/v1/policies", json={"source": SETTLE, "activate": True})
        assert r.status_code == 201, r.text


async def test_a_settlement_offer_paid_in_time_is_accepted_once_and_its_discount_credited(dunning, kafka_bootstrap):
    app, http, clock, topics, producer = dunning
    case = await _setup(dunning)  # A and B, 500.00 each, due 2026-03-10, the standard policy
    offers = f"/v1/cases/{case['case_id']}/settlement-offers"
    clock.set(at(date(2026, 3, 20)))  # 10 days overdue: the standard policy offers from 14
    await wait_for(lambda: _n(requested(kafka_bootstrap, topics), 2), message="overdue_7, email and SMS")
    r = await http.post(offers, json={"discount_percent": "5", "pay_by": "2026-03-30"})
    assert r.status_code == 409 and "from 14 days" in r.text, r.text
    clock.set(at(date(2026, 3, 25)))  # 15 days overdue; final_14 (email and SMS) goes out first
    await wait_for(lambda: _n(requested(kafka_bootstrap, topics), 4), message="final_14, email and SMS")
    for body, field in (({"discount_percent": "6", "pay_by": "2026-04-01"}, "above the policy's limit of 5"),
                        ({"discount_percent": "5", "pay_by": "2026-04-09"}, "more than the policy's 14 days"),
                        ({"discount_percent": "5", "pay_by": "2026-03-24"}, "has passed"),
                        ({"discount_percent": "55", "pay_by": "2026-04-01"}, "discount_percent")):
        r = await http.post(offers, json=body)
        assert r.status_code == 422 and field in r.text, r.text
    r = await http.post(offers, json={"discount_percent": "5", "pay_by": "2026-04-01", "note": "agreed on the phone"})
    assert r.status_code == 201, r.text
    offer = r.json()
    assert (offer["owed_minor"], offer["discount_minor"], offer["pay_minor"], offer["status"]) == (
        100_000, 5_000, 95_000, "open")
    assert offer["deadline"] == "2026-04-02T00:00:00Z"
    assert (await http.post(offers, json={"discount_percent": "2", "pay_by": "2026-04-01"})).status_code == 409
    r = await http.post(f"/v1/cases/{case['case_id']}/promises", json={
        "amount_minor": 1_000, "promised_date": "2026-03-28", "channel": "phone"})
    assert r.status_code == 409 and "already under settlement offer" in r.text
    # the customer is told, in one notice listing what the offer covers
    async def offer_notices():
        return [e for e in await requested(kafka_bootstrap, topics) if e.data["template"] == "settlement_offer"]
    told = await wait_for(lambda: _n(offer_notices(), 1), message="the offer notice")
    assert told[0].data["offer"] == {"currency": "EUR", "pay_minor": 95_000, "discount_minor": 5_000,
                                     "pay_by": "2026-04-01"}
    assert sorted(i["invoice_id"] for i in told[0].data["items"]) == [INV_A, INV_B]
    # 950.00 paid (A in full, B down to 50.00), and the same payment delivered again
    paid = env(PaymentReceived(customer_id="C1", payment_id="P1", billing_source="erp", external_id="P1",
                               currency="EUR", amount_minor=95_000, received_at=at(date(2026, 3, 30)),
                               allocations=[Allocation(invoice_id=INV_A, amount_minor=50_000, invoice_open_minor=0),
                                            Allocation(invoice_id=INV_B, amount_minor=45_000, invoice_open_minor=5_000)]),
               "P1", clock)
    await send(producer, topics.invoicing, paid, paid)
    accepted = await wait_for(lambda: _n(events_of(kafka_bootstrap, topics, "SettlementAccepted"), 1),
                              message="accepted")
    assert (accepted[0].data["paid_minor"], accepted[0].data["credit_minor"], accepted[0].data["invoice_numbers"]) == (
        95_000, 5_000, ["N-000b"])
    for _ in range(3):
        await app.state.dunning.arrangements.tick()
    clock.set(at(date(2026, 4, 20)))  # long after: B's 50.00 is the discount, never dunned
    assert await app.state.dunning.claim_due_steps() == 0
    assert len(await events_of(kafka_bootstrap, topics, "SettlementAccepted")) == 1
    assert [(o["status"], o["paid_minor"], o["credit_minor"]) for o in (await http.get("/v1/settlement-offers")).json()] \
        == [("accepted", 95_000, 5_000)]
    # invoicing's credit note settles B: the case closes
    await send(producer, topics.invoicing, env(CreditNoteIssued(
        customer_id="C1", credit_note_id="CN-1", billing_source="dunning", external_id=f"settlement:{offer['offer_id']}",
        currency="EUR", amount_minor=5_000, issue_date=date(2026, 4, 2),
        allocations=[Allocation(invoice_id=INV_B, amount_minor=5_000, invoice_open_minor=0)]), "CN-1", clock))
    async def closed_cases():
        return [c for c in (await http.get("/v1/cases", params={"customer_id": "C1"})).json() if c["status"] == "closed"]
    closed = await wait_for(lambda: _n(closed_cases(), 1), message="the case closed")
    assert closed[0]["closed_reason"] == "paid"
    assert await app.state.pool.fetchval("SELECT credit_applied_at IS NOT NULL FROM settlement_offers")


async def test_an_offer_unpaid_by_its_day_expires_dunning_resumes_and_one_can_be_withdrawn(dunning, kafka_bootstrap):
    app, http, clock, topics, producer = dunning
    await _settle_policy(app, http)
    case = await _setup(dunning)
    assert case["items"][0]["policy"] == "settle@1"
    clock.set(at(date(2026, 3, 17)))  # overdue_7 goes out at 09:00 (the due step is stale by then)
    await wait_for(lambda: _n(requested(kafka_bootstrap, topics), 1), message="overdue_7")
    r = await http.post(f"/v1/cases/{case['case_id']}/settlement-offers", json={"discount_percent": "4.5",
                                                                                "pay_by": "2026-03-26"})
    assert r.status_code == 201, r.text
    offer = r.json()
    assert (offer["discount_minor"], offer["pay_minor"]) == (4_500, 95_500)
    await wait_for(lambda: _n(requested(kafka_bootstrap, topics), 2), message="the offer notice")
    # a part payment is not enough; overdue_14 (03-24) falls inside the offer: nothing goes out
    await send(producer, topics.invoicing, payment("P1", INV_A, 10_000, 40_000, at(date(2026, 3, 20)), clock))
    await wait_for(lambda: app.state.pool.fetchval("SELECT count(*) = 1 FROM item_payments"), message="payment")
    clock.set(at(date(2026, 3, 25)))
    assert await app.state.dunning.claim_due_steps() == 0
    # the pay-by day ends: expired, told once, and the latest step due goes out
    clock.set(at(date(2026, 3, 27), 0))
    ended = await wait_for(lambda: _n(events_of(kafka_bootstrap, topics, "SettlementOfferEnded"), 1), message="expired")
    assert (ended[0].data["outcome"], ended[0].data["paid_minor"]) == ("expired", 10_000)
    got = await wait_for(lambda: _n(requested(kafka_bootstrap, topics), 3), message="dunning resumed")
    assert got[-1].data["step"] == "overdue_14"
    assert {(i["invoice_id"], i["open_amount_minor"]) for i in got[-1].data["items"]} == {(INV_A, 40_000),
                                                                                          (INV_B, 50_000)}
    for _ in range(3):
        await app.state.dunning.arrangements.tick()
    assert len(await events_of(kafka_bootstrap, topics, "SettlementOfferEnded")) == 1
    # a new offer, withdrawn: once
    r = await http.post(f"/v1/cases/{case['case_id']}/settlement-offers", json={"discount_percent": "5",
                                                                                "pay_by": "2026-04-03"})
    assert r.status_code == 201, r.text
    second = r.json()
    r = await http.delete(f"/v1/settlement-offers/{second['offer_id']}")
    assert r.status_code == 200 and r.json()["status"] == "withdrawn", r.text
    assert (await http.delete(f"/v1/settlement-offers/{second['offer_id']}")).status_code == 409
    assert (await http.delete(f"/v1/settlement-offers/{INV_A}")).status_code == 404
    ended = await wait_for(lambda: _n(events_of(kafka_bootstrap, topics, "SettlementOfferEnded"), 2), message="withdrawn")
    assert [e.data["outcome"] for e in ended] == ["expired", "withdrawn"]
    assert [o["status"] for o in (await http.get("/v1/settlement-offers", params={"customer_id": "C1"})).json()] == [
        "expired", "withdrawn"]
    # a case file made now (a legal hand-over) shows both, in the offers and in the contact log
    from services.dunning.adapters import case_file
    async with app.state.pool.acquire() as conn:
        document = await case_file.build(conn, "t1", uuid.UUID(case["case_id"]), clock.now())
    assert [(o["status"], o["pay_minor"]) for o in document["settlement_offers"]] == [("expired", 95_500),
                                                                                    ("withdrawn", 85_500)]
    assert [e["what"] for e in document["contact_log"] if e["type"] == "settlement offer"] == [
        "4.50 % off, 95500 by 2026-03-26: expired", "5.00 % off, 85500 by 2026-04-03: withdrawn"]
    assert "Settlement offer" in case_file.render_html(document)


async def test_a_policy_without_settlement_allows_no_offer(dunning, kafka_bootstrap):
    app, http, clock, topics, producer = dunning
    case = await _setup(dunning)
    await send(producer, topics.risk, env(RiskAssessed(customer_id="C1", score=10, segment="low", factors=[],
                                                       assessed_at=clock.now()), "C1", clock))

    async def gentle():
        item = (await _case_of(http, INV_A))["items"][0]
        return item if item["policy"].startswith("gentle@") else None
    await wait_for(gentle, message="re-planned on the gentle policy")
    clock.set(at(date(2026, 4, 20)))
    r = await http.post(f"/v1/cases/{case['case_id']}/settlement-offers", json={"discount_percent": "1",
                                                                                "pay_by": "2026-04-21"})
    assert r.status_code == 409 and "allows no settlement offers" in r.text, r.text


# -- collector tasks ----------------------------------------------------------------------------------

WITH_CALLS = """\
name: calls
segment: medium
languages: [en]
steps:
  - {name: due, offset_days: 0, channel: email, template: reminder_due}
  - {name: call_10, offset_days: 10, channel: collector_call}
  - {name: letter_20, offset_days: 20, channel: letter, template: final_notice}
"""


async def tasks_of(http, **params):
    r = await http.get("/v1/tasks", params=params)
    assert r.status_code == 200, r.text
    return r.json()


async def test_call_and_letter_steps_make_one_task_each_for_a_person_and_no_message(dunning, kafka_bootstrap):
    app, http, clock, topics, producer = dunning
    async with client(str(http.base_url), await api_key(app, "t1", "admin")) as admin:
        assert (await admin.post("/v1/policies", json={"source": WITH_CALLS, "activate": True})).status_code == 201
    await _setup(dunning)
    clock.set(at(date(2026, 3, 11)))
    await wait_for(lambda: _n(requested(kafka_bootstrap, topics), 1), message="the due notice")
    clock.set(at(date(2026, 3, 21)))  # call_10 (03-20 09:00)
    [call] = await wait_for(lambda: tasks_of(http), message="the call task")
    assert (call["kind"], call["step"], call["overdue_minor"], call["days_overdue"]) == ("call", "call_10", 100_000, 11)
    assert call["priority"] == 1_000 * 11 and sorted(call["invoice_ids"]) == [INV_A, INV_B]
    for _ in range(3):  # the timer again and again: nothing more
        assert await app.state.dunning.claim_due_steps() == 0
    clock.set(at(date(2026, 3, 31)))  # letter_20
    await wait_for(lambda: _n(tasks_of(http), 2), message="the letter task")
    created = await wait_for(lambda: _n(events_of(kafka_bootstrap, topics, "CollectorTaskCreated"), 2), message="told")
    assert [e.data["kind"] for e in created] == ["call", "letter"]
    executed = await wait_for(lambda: _n(events_of(kafka_bootstrap, topics, "DunningStepExecuted"), 3), message="steps")
    assert [e.data["step"] for e in executed] == ["due", "call_10", "letter_20"]
    # the notifier is asked for the email only: a call or letter is not a message it could send
    assert [e.data["channel"] for e in await requested(kafka_bootstrap, topics)] == ["email"]
    r = await http.post(f"/v1/tasks/{call['task_id']}/done", json={"outcome": "reached", "note": "pays Friday"})
    assert r.status_code == 200 and (r.json()["status"], r.json()["outcome"]) == ("done", "reached"), r.text
    assert (await http.post(f"/v1/tasks/{call['task_id']}/done", json={"outcome": "reached"})).status_code == 409
    assert (await http.post(f"/v1/tasks/{call['task_id']}/done", json={"outcome": "bribed"})).status_code == 422
    assert (await http.post(f"/v1/tasks/{INV_A}/done", json={"outcome": "reached"})).status_code == 404
    assert [t["kind"] for t in await tasks_of(http)] == ["letter"]
    assert [t["kind"] for t in await tasks_of(http, status="done")] == ["call"]


async def test_a_notice_the_notifier_could_not_deliver_asks_a_collector_once(dunning, kafka_bootstrap):
    from shared.contract import NotificationFailed

    app, http, clock, topics, producer = dunning
    await _setup(dunning)
    clock.set(at(date(2026, 3, 18)))  # overdue_7: email and SMS
    sent = await wait_for(lambda: _n(requested(kafka_bootstrap, topics), 2), message="the notices")
    sms = next(e.data for e in sent if e.data["channel"] == "sms")

    def failed(key: str, reason: str):
        return new_envelope(NotificationFailed(customer_id="C1", notification_key=key, channel="sms", reason=reason,
                                               failed_at=clock.now()), source="notifier", tenant_id="t1", subject="C1",
                            time=clock.now())
    # the same failure reported twice (two events), and one for a key dunning never made
    await send(producer, topics.notifier, failed(sms["notification_key"], "opted out of sms"),
               failed(sms["notification_key"], "opted out of sms"), failed("not-a-dunning-key", "bounced"))
    [task] = await wait_for(lambda: tasks_of(http, kind="contact_failed"), message="the task")
    assert (task["reason"], task["step"], task["overdue_minor"]) == ("opted out of sms", "overdue_7_sms", 100_000)
    await wait_for(lambda: app.state.pool.fetchval(
        "SELECT count(*) = 3 FROM inbox WHERE event_type = 'NotificationFailed' AND consumer = 'dunning.events'"),
        message="all three consumed")
    assert len(await tasks_of(http, kind="contact_failed")) == 1
    told = await wait_for(lambda: events_of(kafka_bootstrap, topics, "CollectorTaskCreated"), message="told")
    assert [(e.data["kind"], e.data["notification_key"]) for e in told] == [("contact_failed", sms["notification_key"])]
