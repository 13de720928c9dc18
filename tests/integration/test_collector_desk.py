"""The collector's desk against real PostgreSQL and the broker: rules that make call tasks,
assignment (round robin, portfolio, by hand) within capacity and working hours, outcomes that do
what they say, and the contact log (one append-only timeline, fed once per event)."""
from __future__ import annotations

import uuid
from datetime import date, datetime, timezone

import asyncpg
import pytest

from shared.contract import (
    NotificationDelivered, PaymentReceived, RiskAssessed, new_envelope,
)
from shared.contract.events import Allocation
from tests.integration.test_dunning import (  # noqa: F401 - the fixture
    _n, dunning, env, issued, requested, send,
)
from tests.integration.test_dunning_arrangements import at, events_of, tasks_of
from tests.support import api_key, client, wait_for

pytestmark = pytest.mark.integration
UTC = timezone.utc


def key_id(token: str) -> str:
    return token.split("_")[1]


def invoice(n: int) -> str:
    return f"00000000-0000-0000-0003-{n:012d}"


async def _people(app, http, *collectors: tuple[str, dict], settings: dict):
    """A manager, and collectors with their own keys; clients for each."""
    manager = client(str(http.base_url), await api_key(app, "t1", "admin"))
    people = {}
    for name, fields in collectors:
        token = await api_key(app, "t1", "collector")
        r = await manager.put(f"/v1/collectors/{name}", json={"name": name.title(), "key_id": key_id(token), **fields})
        assert r.status_code == 200, r.text
        people[name] = client(str(http.base_url), token)
    r = await manager.put("/v1/desk/settings", json=settings)
    assert r.status_code == 200, r.text
    return manager, people


async def _invoices(dunning, amounts: dict[str, int], start: int = 0):
    """One invoice per customer, due 2026-03-10: invoice(start), invoice(start + 1) ..."""
    app, http, clock, topics, producer = dunning
    await send(producer, topics.invoicing, *(env(issued(invoice(n), customer=c, amount=a), invoice(n), clock)
                                             for n, (c, a) in enumerate(amounts.items(), start)))

    async def all_cases():
        r = await http.get("/v1/cases", params={"limit": 1000})
        return set(amounts) <= {c["customer_id"] for c in r.json()} or None
    await wait_for(all_cases, message="the cases")


async def _sent_to(kafka_bootstrap, topics, customer: str, n: int):
    sent = [e for e in await requested(kafka_bootstrap, topics) if e.data["customer_id"] == customer]
    return sent if len(sent) >= n else None


def by_customer(tasks):
    return {t["customer_id"]: t for t in tasks}


async def test_rules_make_call_tasks_given_round_robin_within_capacity_and_working_hours(dunning, kafka_bootstrap):
    app, http, clock, topics, producer = dunning
    manager, people = await _people(app, http, ("ali", {"timezone": "Europe/Istanbul", "capacity": 1, "language": "tr"}),
                                    ("bea", {"capacity": 2}),
                                    settings={"assignment": "round_robin", "high_amount": {"EUR": "400.00"},
                                              "unanswered_notices": 0})
    ali, bea = people["ali"], people["bea"]
    await _invoices(dunning, {"C1": 50_000, "C2": 60_000, "C3": 70_000, "C4": 80_000, "C5": 30_000})
    clock.set(datetime(2026, 3, 10, 20, 0, tzinfo=UTC))  # the due notices go out now, after everyone's hours
    tasks = by_customer(await wait_for(lambda: _n(tasks_of(http), 4), message="four call tasks"))
    assert set(tasks) == {"C1", "C2", "C3", "C4"}  # C5 owes 300.00: below the high amount
    assert {t["rule"] for t in tasks.values()} == {"high_amount"}
    assert [tasks[c]["priority"] for c in ("C4", "C3", "C2", "C1")] == [800, 700, 600, 500]  # owed x 1 day x 1
    # the most urgent first, in turn to whoever has room: Ali (1) is full after one, Bea (2) after two
    assert {c: t["assigned_to"] for c, t in tasks.items()} == {"C4": "ali", "C3": "bea", "C2": "bea", "C1": None}
    # due in their own hours: 09:00 in Istanbul (06:00 UTC) and 09:00 UTC, Wednesday
    assert tasks["C4"]["due_at"] == "2026-03-11T06:00:00Z" and tasks["C3"]["due_at"] == "2026-03-11T09:00:00Z"

    mine = (await bea.get("/v1/worklist")).json()
    assert [t["customer_id"] for t in mine] == ["C3", "C2"] and mine[0]["case_open_minor"] == 70_000
    assert [t["customer_id"] for t in (await bea.get("/v1/worklist", params={"queue": True})).json()] == ["C1"]
    assert (await bea.get("/v1/worklist", params={"collector_id": "ali"})).status_code == 403
    assert (await manager.get("/v1/worklist", params={"collector_id": "ali"})).json()[0]["customer_id"] == "C4"
    # Ali may not take more than their capacity, nor close Bea's task
    r = await ali.post(f"/v1/tasks/{tasks['C1']['task_id']}/assign", json={"collector_id": "ali"})
    assert r.status_code == 409 and "capacity" in r.text, r.text
    r = await ali.post(f"/v1/tasks/{tasks['C3']['task_id']}/outcome", json={"outcome": "reached"})
    assert r.status_code == 403, r.text
    # Bea finishes one: the waiting task goes to her, and that is told
    r = await bea.post(f"/v1/tasks/{tasks['C3']['task_id']}/outcome", json={"outcome": "no_answer"})
    assert r.status_code == 200 and r.json()["status"] == "done", r.text
    assert [t["customer_id"] for t in (await bea.get("/v1/worklist")).json()] == ["C2", "C1"]
    assigned = await wait_for(lambda: events_of(kafka_bootstrap, topics, "CollectorTaskAssigned"), message="told")
    assert [(e.data["task_id"], e.data["assigned_to"], e.data["assigned_by"]) for e in assigned] == [
        (tasks["C1"]["task_id"], "bea", "dunning")]
    # a manager moves a task to anyone, beyond capacity too; it falls due in the new collector's hours
    r = await manager.post(f"/v1/tasks/{tasks['C2']['task_id']}/assign", json={"collector_id": "ali"})
    # due 09:00 UTC is noon in Istanbul: within Ali's hours, so it stays
    assert r.status_code == 200 and (r.json()["assigned_to"], r.json()["due_at"]) == ("ali", "2026-03-11T09:00:00Z")
    r = await manager.post(f"/v1/tasks/{tasks['C2']['task_id']}/assign", json={"collector_id": "nobody"})
    assert r.status_code == 422 and "collector_id" in r.text
    collectors = {c["collector_id"]: c["open_tasks"] for c in (await manager.get("/v1/collectors")).json()}
    assert collectors == {"ali": 2, "bea": 1}
    created = await events_of(kafka_bootstrap, topics, "CollectorTaskCreated")
    assert sorted((e.data["customer_id"], e.data["rule"], e.data["assigned_to"]) for e in created) == [
        ("C1", "high_amount", None), ("C2", "high_amount", "bea"), ("C3", "high_amount", "bea"),
        ("C4", "high_amount", "ali")]
    for c in (manager, *people.values()):
        await c.aclose()


async def test_portfolio_and_manual_assignment(dunning, kafka_bootstrap):
    app, http, clock, topics, producer = dunning
    manager, people = await _people(app, http, ("cem", {"capacity": 5}), ("dia", {"capacity": 5}),
                                    settings={"assignment": "portfolio", "high_amount": {"EUR": "100.00"},
                                              "unanswered_notices": 0})
    assert (await manager.put("/v1/customers/C2/owner", json={"collector_id": "dia"})).json()["owner"] == "dia"
    assert (await manager.put("/v1/customers/C2/owner", json={"collector_id": "zed"})).status_code == 422
    assert (await people["cem"].put("/v1/customers/C2/owner", json={"collector_id": "cem"})).status_code == 403
    await _invoices(dunning, {"C1": 50_000, "C2": 40_000})
    clock.set(at(date(2026, 3, 10)))
    tasks = by_customer(await wait_for(lambda: _n(tasks_of(http), 2), message="two tasks"))
    assert tasks["C2"]["assigned_to"] == "dia"  # her portfolio, though it is the less urgent
    assert tasks["C1"]["assigned_to"] == "cem"  # no owner: round robin
    # manual: everything waits in the queue for a manager
    r = await manager.put("/v1/desk/settings", json={"assignment": "manual", "high_amount": {"EUR": "100.00"}})
    assert r.status_code == 200 and r.json()["high_amount_minor"] == {"EUR": 10_000}
    await _invoices(dunning, {"C3": 20_000}, start=10)
    clock.set(at(date(2026, 3, 17)))  # +7 for C1, C2 (tasks open: no new ones); C3's first notices
    [c3] = await wait_for(lambda: tasks_of(http, customer_id="C3"), message="C3's task")
    assert c3["assigned_to"] is None
    assert len(await tasks_of(http)) == 3  # one open task per customer at most
    for c in (manager, *people.values()):
        await c.aclose()


async def test_each_outcome_does_what_it_says_in_one_go_and_is_logged(dunning, kafka_bootstrap):
    app, http, clock, topics, producer = dunning
    manager, people = await _people(app, http, ("eda", {"capacity": 10}),
                                    settings={"assignment": "round_robin", "high_amount": {"EUR": "100.00"},
                                              "unanswered_notices": 0})
    eda = people["eda"]
    await _invoices(dunning, {"C1": 50_000, "C2": 40_000, "C3": 30_000, "C4": 20_000})
    clock.set(at(date(2026, 3, 11)))
    tasks = by_customer(await wait_for(lambda: _n(tasks_of(http), 4), message="four tasks"))

    async def outcome(customer, **body):
        return await eda.post(f"/v1/tasks/{tasks[customer]['task_id']}/outcome", json=body)

    # what an outcome needs, and nothing else, or a 422 naming the field; nothing is half-done
    r = await outcome("C1", outcome="promise_taken")
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "promise", r.text
    r = await outcome("C1", outcome="reached", promise={"amount_minor": 1, "promised_date": "2026-03-20"})
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "promise", r.text
    r = await outcome("C4", outcome="call_back", call_back_at="2026-03-01T10:00:00+00:00")
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "call_back_at", r.text
    r = await outcome("C1", outcome="promise_taken", promise={"amount_minor": 999_999, "promised_date": "2026-03-20"})
    assert r.status_code == 422, r.text  # more than is owed: refused by the promise, and the task stays open
    assert (await http.get("/v1/promises")).json() == []
    assert len(await tasks_of(http)) == 4

    r = await outcome("C1", outcome="promise_taken", note="pays on the 20th",
                      promise={"amount_minor": 50_000, "promised_date": "2026-03-20"})
    assert r.status_code == 200, r.text
    made = r.json()["made"]
    [promise] = (await http.get("/v1/promises", params={"customer_id": "C1"})).json()
    assert (promise["promise_id"], promise["channel"], promise["status"]) == (made["promise_id"], "phone", "open")
    r = await outcome("C2", outcome="dispute_raised", dispute={"invoice_id": invoice(1), "reason_code": "quality",
                                                               "reason": "the goods arrived broken"})
    assert r.status_code == 200, r.text
    [dispute] = (await http.get("/v1/disputes", params={"customer_id": "C2"})).json()
    assert (dispute["dispute_id"], dispute["reason_code"], dispute["status"]) == (
        r.json()["made"]["dispute_id"], "quality", "open")
    r = await outcome("C3", outcome="plan_agreed", plan={"count": 3, "first_due": "2026-03-25"})
    assert r.status_code == 200, r.text
    [plan] = (await http.get("/v1/payment-plans", params={"customer_id": "C3"})).json()
    assert plan["plan_id"] == r.json()["made"]["plan_id"] and plan["status"] == "active"
    assert len((await http.get(f"/v1/payment-plans/{plan['plan_id']}")).json()["instalments"]) == 3
    r = await outcome("C4", outcome="call_back", call_back_at="2026-03-12T14:00:00+03:00", note="call after lunch")
    assert r.status_code == 200, r.text
    [back] = await tasks_of(http)
    assert (back["task_id"], back["rule"], back["assigned_to"], back["due_at"]) == (
        r.json()["made"]["task_id"], "call_back", "eda", "2026-03-12T11:00:00Z")

    # the promise, the dispute and the plan pause dunning: +7 goes to nobody
    clock.set(at(date(2026, 3, 17), 12))
    await wait_for(lambda: app.state.pool.fetchval(
        "SELECT count(*) = 0 FROM cases WHERE status = 'open' AND next_due_at <= $1", clock.now()), message="settled")
    # the steps are done, but their notices may still sit in the outbox
    await wait_for(lambda: app.state.pool.fetchval("SELECT count(*) = 0 FROM outbox"), message="all published")
    sent = await requested(kafka_bootstrap, topics)
    assert sorted(e.data["customer_id"] for e in sent if e.data["step"].startswith("overdue_7")) == ["C4", "C4"]

    # each call is in its customer's timeline at once, with who and what came of it
    log = (await http.get("/v1/customers/C1/contact-log", params={"kind": "call"})).json()
    assert [(e["kind"], e["detail"]["outcome"], e["actor"], e["note"]) for e in log] == [
        ("call", "promise_taken", key_id(eda.headers["X-API-Key"]), "pays on the 20th")]
    assert log[0]["entry_id"] == made["entry_id"]
    # and the promise, from its event, soon after
    kinds = await wait_for(lambda: _kinds(http, "C1", "promise"), message="the promise in the log")
    assert "notice" in kinds and "call" in kinds
    logged = await wait_for(lambda: _n(events_of(kafka_bootstrap, topics, "ContactLogged"), 4), message="told")
    assert sorted(e.data["outcome"] for e in logged) == ["call_back", "dispute_raised", "plan_agreed", "promise_taken"]
    for c in (manager, *people.values()):
        await c.aclose()


async def _kinds(http, customer: str, *needed: str):
    kinds = [e["kind"] for e in (await http.get(f"/v1/customers/{customer}/contact-log")).json()]
    return kinds if all(k in kinds for k in needed) else None


async def test_the_contact_log_is_one_append_only_timeline_fed_once_per_event(dunning, kafka_bootstrap):
    app, http, clock, topics, producer = dunning
    await _invoices(dunning, {"C1": 50_000})
    clock.set(at(date(2026, 3, 11)))
    [notice] = await wait_for(lambda: _n(requested(kafka_bootstrap, topics), 1), message="the due notice")
    paid = env(PaymentReceived(customer_id="C1", payment_id="P1", billing_source="erp", external_id="BANK-1",
                               currency="EUR", amount_minor=20_000, received_at=clock.now(),
                               allocations=[Allocation(invoice_id=invoice(0), amount_minor=20_000,
                                                       invoice_open_minor=30_000)]), "P1", clock)
    delivered = new_envelope(NotificationDelivered(customer_id="C1", notification_key=notice.data["notification_key"],
                                                   channel="email", delivered_at=clock.now()),
                             source="notifier", tenant_id="t1", subject="C1", time=clock.now())
    await send(producer, topics.invoicing, paid)
    await send(producer, topics.notifier, delivered)
    await wait_for(lambda: _kinds(http, "C1", "notice", "payment", "notice_delivered"), message="the timeline")
    log = (await http.get("/v1/customers/C1/contact-log")).json()
    assert sorted(e["kind"] for e in log) == ["notice", "notice_delivered", "payment"]
    payment = next(e for e in log if e["kind"] == "payment")
    assert (payment["amount_minor"], payment["currency"], payment["actor"], payment["ref"]) == (
        20_000, "EUR", "erp", "BANK-1")
    entry = next(e for e in log if e["kind"] == "notice")
    assert (entry["channel"], entry["ref"], entry["amount_minor"]) == ("email", notice.data["notification_key"], 50_000)

    # a person's note, then its correction: a new entry naming it; the note stays as it was
    r = await http.post("/v1/customers/C1/contact-log", json={"kind": "visit", "note": "met the CFO"})
    assert r.status_code == 201, r.text
    note = r.json()
    r = await http.post(f"/v1/contact-log/{note['entry_id']}/corrections", json={"note": "met the CEO, not the CFO"})
    assert r.status_code == 201 and (r.json()["kind"], r.json()["corrects"]) == ("correction", note["entry_id"])
    again = {e["entry_id"]: e for e in (await http.get("/v1/customers/C1/contact-log")).json()}
    assert again[note["entry_id"]]["note"] == "met the CFO"
    assert (await http.post(f"/v1/contact-log/{uuid.uuid4()}/corrections", json={"note": "x"})).status_code == 404
    assert (await http.post("/v1/customers/NOBODY/contact-log", json={"kind": "note", "note": "x"})).status_code == 404
    r = await http.post("/v1/customers/C1/contact-log", json={"kind": "note", "outcome": "reached", "note": "x"})
    assert r.status_code == 422 and "outcome" in r.text
    # nothing is edited in place, not even by SQL
    for sql in ("UPDATE contact_log SET note = 'rewritten'", "DELETE FROM contact_log"):
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await app.state.pool.execute(sql)

    # redelivered events (a consumer restart before its commit) add nothing; a sentinel shows they were read
    before = len((await http.get("/v1/customers/C1/contact-log")).json())
    sentinel = env(PaymentReceived(customer_id="C9", payment_id="P9", billing_source="erp", external_id="BANK-9",
                                   currency="EUR", amount_minor=1, received_at=clock.now(), unapplied_minor=1), "P9", clock)
    await send(producer, topics.invoicing, paid, paid, sentinel)
    await send(producer, topics.notifier, delivered)
    await wait_for(lambda: _kinds(http, "C9", "payment"), message="the sentinel")
    await wait_for(lambda: app.state.pool.fetchval(
        "SELECT count(*) = 3 FROM inbox WHERE consumer = 'dunning.contact-log' AND event_type IN"
        " ('PaymentReceived', 'NotificationDelivered')"), message="every copy read")  # P1, P9, delivered
    assert len((await http.get("/v1/customers/C1/contact-log")).json()) == before


async def test_unanswered_notices_a_high_grade_and_a_broken_promise_make_call_tasks(dunning, kafka_bootstrap):
    app, http, clock, topics, producer = dunning
    async with client(str(http.base_url), await api_key(app, "t1", "admin")) as manager:
        assert (await manager.put("/v1/desk/settings", json={"unanswered_notices": 2})).status_code == 200
    await send(producer, topics.risk, new_envelope(RiskAssessed(
        customer_id="C2", score=20, segment="high", factors=[], assessed_at=clock.now(), grade="D"),
        source="risk", tenant_id="t1", subject="C2", time=clock.now()))
    await _invoices(dunning, {"C1": 50_000, "C2": 40_000, "C3": 30_000})
    r = await http.get("/v1/cases", params={"customer_id": "C3"})
    c3_case = r.json()[0]["case_id"]
    clock.set(at(date(2026, 3, 7)))  # pre-due: first send
    await wait_for(lambda: _sent_to(kafka_bootstrap, topics, "C1", 1), message="the pre-due notice")
    [high] = await wait_for(lambda: tasks_of(http), message="the high-grade task")
    assert (high["customer_id"], high["rule"], high["priority"]) == ("C2", "high_risk", 800)  # 400 x 1 x 2 (D)
    r = await http.post(f"/v1/cases/{c3_case}/promises", json={"amount_minor": 30_000, "promised_date": "2026-03-12",
                                                               "channel": "email", "grace_days": 0})
    assert r.status_code == 201, r.text
    await wait_for(lambda: _kinds(http, "C3", "promise"), message="C3's answer in the log")
    clock.set(at(date(2026, 3, 17)))  # +7: the second send to C1, who never answered; C3's promise broke on the 12th
    tasks = by_customer(await wait_for(lambda: _n(tasks_of(http), 3), message="three tasks"))
    assert {c: t["rule"] for c, t in tasks.items()} == {"C1": "unanswered", "C2": "high_risk", "C3": "broken_promise"}
    assert tasks["C3"]["overdue_minor"] == 30_000 and tasks["C3"]["invoice_ids"] == [invoice(2)]
    for _ in range(3):
        await app.state.dunning.claim_due_steps()
        await app.state.dunning.arrangements.tick()
    assert len(await tasks_of(http)) == 3


def _paid(customer: str, n: int, amount: int, left: int, when: datetime, clock):
    return env(PaymentReceived(customer_id=customer, payment_id=f"P{n}-{when:%d}", billing_source="erp",
                               external_id=f"BANK-{n}-{when:%d}", currency="EUR", amount_minor=amount, received_at=when,
                               allocations=[Allocation(invoice_id=invoice(n), amount_minor=amount,
                                                       invoice_open_minor=left)]), f"P{n}", clock)


async def test_the_collections_report_adds_up_steps_promises_and_collectors(dunning, kafka_bootstrap):
    app, http, clock, topics, producer = dunning
    manager, people = await _people(app, http, ("ali", {"capacity": 10}),
                                    settings={"assignment": "round_robin", "high_amount": {"EUR": "100.00"},
                                              "unanswered_notices": 0})
    ali = people["ali"]
    await _invoices(dunning, {"C1": 50_000, "C2": 30_000})
    clock.set(at(date(2026, 3, 11)))  # one notice each (step "due"), listing 500.00 and 300.00; a task each
    tasks = by_customer(await wait_for(lambda: _n(tasks_of(http), 2), message="the tasks"))
    r = await ali.post(f"/v1/tasks/{tasks['C1']['task_id']}/outcome", json={
        "outcome": "promise_taken", "promise": {"amount_minor": 50_000, "promised_date": "2026-03-14"}})
    assert r.status_code == 200, r.text
    assert (await ali.post(f"/v1/tasks/{tasks['C2']['task_id']}/outcome",
                           json={"outcome": "no_answer"})).status_code == 200
    # C1 pays in full two days after the notice and the call: the promise is kept
    await send(producer, topics.invoicing, _paid("C1", 0, 50_000, 0, at(date(2026, 3, 13)), clock))

    async def kept():
        return [p for p in (await http.get("/v1/promises", params={"status": "kept"})).json()] or None
    clock.set(at(date(2026, 3, 13), 12))
    await wait_for(kept, message="the promise kept")
    clock.set(at(date(2026, 3, 18)))  # +7 for C2: email and SMS listing 300.00
    await wait_for(lambda: _sent_to(kafka_bootstrap, topics, "C2", 3), message="C2's +7 notices")
    # C2 pays 100.00 on the 20th: within 7 days of +7, not of the due notice (9 days) or the call
    await send(producer, topics.invoicing, _paid("C2", 1, 10_000, 20_000, at(date(2026, 3, 20)), clock))
    await wait_for(lambda: app.state.pool.fetchval("SELECT count(*) = 2 FROM item_payments"), message="payments")

    r = await manager.get("/v1/reports/collections", params={"period": "2026-03"})
    assert r.status_code == 200, r.text
    report = r.json()
    assert (report["from"], report["to"]) == ("2026-03-01", "2026-03-31")
    steps = {s["step"]: s for s in report["steps"]}
    assert (steps["due"]["notices"], steps["due"]["listed_minor"], steps["due"]["collected_7d_minor"],
            steps["due"]["collected_7d_percent"]) == (2, {"EUR": 80_000}, {"EUR": 50_000}, {"EUR": "62.5"})
    for step in ("overdue_7", "overdue_7_sms"):
        assert (steps[step]["notices"], steps[step]["listed_minor"], steps[step]["collected_7d_minor"]) == (
            1, {"EUR": 30_000}, {"EUR": 10_000})
    assert (report["promises"]["taken"], report["promises"]["kept"], report["promises"]["kept_rate_percent"]) == (
        1, 1, "100.0")
    [figures] = report["collectors"]
    assert (figures["collector"], figures["tasks_done"], figures["contacts_reached"], figures["promises"]["kept"],
            figures["collected_7d_minor"]) == ("ali", 2, 1, 1, {"EUR": 50_000})
    # April: nothing happened
    april = (await manager.get("/v1/reports/collections", params={"period": "2026-04"})).json()
    assert (april["steps"], april["collectors"], april["promises"]["taken"]) == ([], [], 0)

    r = await manager.get("/v1/reports/collections", params={"period": "2026-03", "format": "csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv"), r.text
    lines = r.text.splitlines()
    assert lines[0] == "section,name,currency,metric,value"
    assert "step,due (email),EUR,collected_7d_minor,50000" in lines
    assert "collector,ali,,contacts_reached,1" in lines
    r = await manager.get("/v1/reports/collections", params={"period": "March"})
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "period", r.text
    for c in (manager, *people.values()):
        await c.aclose()
