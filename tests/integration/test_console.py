"""The console over a real dunning service (PostgreSQL and the broker), through HTTP as a browser
sends it: sign-in, the worklist, the customer page, and actions that become the same API calls a
program makes. Invoicing and risk are not running here: their parts of a page say so and the
rest works."""
from __future__ import annotations

import re
from datetime import datetime, timezone

import httpx
import pytest

from services.console.bootstrap import build as build_console
from services.console.settings import ConsoleSettings
from tests.integration.test_collector_desk import _invoices, _people, by_customer, key_id  # noqa: F401
from tests.integration.test_dunning import _n, dunning  # noqa: F401 - the fixture
from tests.integration.test_dunning_arrangements import tasks_of
from tests.support import api_key, running, wait_for

pytestmark = pytest.mark.integration
UTC = timezone.utc
CLOSED = "http://127.0.0.1:9"  # nothing listens: invoicing and risk are "down"


@pytest.fixture
async def console(dunning):  # noqa: F811 - the fixture
    app, http, clock, topics, producer = dunning
    settings = ConsoleSettings(dunning_url=str(http.base_url), invoicing_url=CLOSED, risk_url=CLOSED,
                               session_secret="s" * 40, api_timeout_seconds=5)
    web = build_console(settings)
    web.state.clock = clock
    async with running(web) as url:
        yield url, web


def browser(url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, timeout=30, follow_redirects=False)


def form_token(html: str) -> str:
    return re.search(r'name="form_token" value="([^"]+)"', html).group(1)


async def sign_in(url: str, key: str, language: str = "") -> httpx.AsyncClient:
    b = browser(url)
    r = await b.post("/signin", data={"key": key, "language": language})
    assert r.status_code == 303 and r.headers["location"] == "/worklist", r.text
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and key not in cookie
    return b


async def test_sign_in_takes_collectors_and_managers_and_refuses_anyone_else(dunning, console):
    app, http, clock, topics, producer = dunning
    url, _ = console
    manager, people = await _people(app, http, ("ali", {"language": "tr"}), settings={"assignment": "round_robin"})
    async with browser(url) as b:
        r = await b.get("/worklist")
        assert (r.status_code, r.headers["location"]) == (303, "/signin?ended=1")  # no session
        r = await b.post("/signin", data={"key": "thk_nope_nope"})
        assert r.status_code == 401 and "This key is not valid." in r.text and "set-cookie" not in r.headers
        r = await b.post("/signin", data={"key": await api_key(app, "t1", "collector")})
        assert r.status_code == 403 and "signs in no collector" in r.text  # a key no collector signs in with
        r = await b.post("/signin", data={"key": await api_key(app, "t1", "analytics")})
        assert r.status_code == 403 and "Only collectors and managers" in r.text
        forged = "gAAAAAB" + "x" * 100
        r = await b.get("/worklist", cookies={"tahsilat_console": forged})
        assert r.status_code == 303 and r.headers["location"] == "/signin?ended=1"

    ali = await sign_in(url, people["ali"].headers["X-API-Key"])
    r = await ali.get("/worklist")
    assert r.status_code == 200, r.text
    assert '<html lang="tr" dir="ltr">' in r.text and "İş listem" in r.text or "lang=\"tr\"" in r.text
    assert r.headers["content-security-policy"].startswith("default-src 'none'")
    r = await ali.post("/signout", data={"form_token": form_token(r.text)})
    assert r.status_code == 303
    await ali.aclose()

    boss = await sign_in(url, manager.headers["X-API-Key"], language="fa")
    r = await boss.get("/worklist")  # a manager who is no collector sees the team's queue
    assert r.status_code == 200 and '<html lang="fa" dir="rtl">' in r.text
    await boss.aclose()


async def test_a_collector_works_a_task_from_the_worklist_and_every_action_is_the_api_call(dunning, console):
    app, http, clock, topics, producer = dunning
    url, _ = console
    manager, people = await _people(app, http, ("eda", {"timezone": "Europe/Prague"}),
                                    settings={"assignment": "round_robin", "high_amount": {"EUR": "100.00"},
                                              "unanswered_notices": 0})
    await _invoices(dunning, {"C1": 50_000, "C2": 40_000})
    clock.set(datetime(2026, 3, 11, 10, tzinfo=UTC))
    tasks = by_customer(await wait_for(lambda: _n(tasks_of(http), 2), message="two call tasks"))
    eda = await sign_in(url, people["eda"].headers["X-API-Key"])

    r = await eda.get("/worklist")
    assert r.status_code == 200
    assert r.text.index(">C1<") < r.text.index(">C2<")  # 500.00 owed before 400.00: the higher priority first
    assert "€500.00" in r.text and "high amount" in r.text

    page = await eda.get(f"/customers/C1?task={tasks['C1']['task_id']}")
    assert page.status_code == 200, page.text
    assert "N-0000" in page.text  # the open item, from dunning's case
    assert "invoicing cannot be reached" in page.text and "risk cannot be reached" in page.text
    token = form_token(page.text)

    # no form token: refused, and nothing is done
    r = await eda.post("/customers/C1/outcome", data={"task_id": tasks["C1"]["task_id"], "outcome": "reached"})
    assert r.status_code == 422 and "Your page has expired" in r.text
    # an amount with more decimals than EUR has: the field is named, nothing is sent
    r = await eda.post("/customers/C1/outcome", data={
        "form_token": token, "task_id": tasks["C1"]["task_id"], "currency": "EUR", "outcome": "promise_taken",
        "promise_amount": "100.005", "promise_date": "2026-03-20"})
    assert r.status_code == 422 and "promise_amount" in r.text and "EUR has 2 decimals" in r.text
    # more than is owed: dunning refuses it, and says why on the page
    r = await eda.post("/customers/C1/outcome", data={
        "form_token": token, "task_id": tasks["C1"]["task_id"], "currency": "EUR", "outcome": "promise_taken",
        "promise_amount": "9999", "promise_date": "2026-03-20"})
    assert r.status_code == 422 and 'role="alert"' in r.text
    assert (await http.get("/v1/promises")).json() == [] and len(await tasks_of(http)) == 2

    r = await eda.post("/customers/C1/outcome", data={
        "form_token": token, "task_id": tasks["C1"]["task_id"], "currency": "EUR", "outcome": "promise_taken",
        "promise_amount": "500,00", "promise_date": "2026-03-20", "note": "pays on the 20th"})
    assert r.status_code == 303 and r.headers["location"] == "/customers/C1?done=promise", r.text
    [promise] = (await http.get("/v1/promises", params={"customer_id": "C1"})).json()
    assert (promise["amount_minor"], promise["promised_date"], promise["status"]) == (50_000, "2026-03-20", "open")
    page = await eda.get(r.headers["location"])
    assert "The promise is recorded" in page.text and "pays on the 20th" in page.text  # the contact log

    # the other actions on C2: a note, a hold and its release, a dispute, a plan
    page = await eda.get("/customers/C2")
    token = form_token(page.text)
    [case] = (await http.get("/v1/cases", params={"customer_id": "C2"})).json()
    invoice_id = case["items"][0]["invoice_id"]
    r = await eda.post("/customers/C2/note", data={"form_token": token, "kind": "call", "note": "left a message"})
    assert r.status_code == 303
    r = await eda.post("/customers/C2/hold", data={"form_token": token, "invoice_id": invoice_id, "reason": "ok"})
    assert r.status_code == 422 and "reason" in r.text  # at least 3 characters
    r = await eda.post("/customers/C2/hold", data={"form_token": token, "invoice_id": invoice_id,
                                                   "reason": "checking the delivery"})
    assert r.status_code == 303
    [case] = (await http.get("/v1/cases", params={"customer_id": "C2"})).json()
    assert case["items"][0]["hold_reason"] == "checking the delivery"
    r = await eda.post("/customers/C2/release", data={"form_token": token, "invoice_id": invoice_id})
    assert r.status_code == 303
    r = await eda.post("/customers/C2/dispute", data={"form_token": token, "dispute_invoice_id": invoice_id,
                                                      "dispute_reason_code": "quality",
                                                      "dispute_reason": "arrived broken"})
    assert r.status_code == 303, r.text
    [dispute] = (await http.get("/v1/disputes", params={"customer_id": "C2"})).json()
    assert (dispute["reason_code"], dispute["reason"], dispute["status"]) == ("quality", "arrived broken", "open")
    r = await eda.post("/customers/C2/resolve", data={"form_token": token, "dispute_id": dispute["dispute_id"],
                                                      "outcome": "rejected", "resolution": "photos show it intact"})
    assert r.status_code == 303
    r = await eda.post("/customers/C2/plan", data={"form_token": token, "case": f"{case['case_id']}:EUR",
                                                   "plan_count": "2", "plan_first_due": "2026-03-25"})
    assert r.status_code == 303, r.text
    [plan] = (await http.get("/v1/payment-plans", params={"customer_id": "C2"})).json()
    plan = (await http.get(f"/v1/payment-plans/{plan['plan_id']}")).json()
    assert plan["status"] == "active" and [i["amount_minor"] for i in plan["instalments"]] == [20_000, 20_000]
    log = (await http.get("/v1/customers/C2/contact-log")).json()
    assert any(e["kind"] == "call" and e["note"] == "left a message" for e in log)
    await eda.aclose()


async def test_a_manager_assigns_tasks_by_hand_and_a_collector_takes_one_from_the_queue(dunning, console):
    app, http, clock, topics, producer = dunning
    url, _ = console
    manager, people = await _people(app, http, ("eda", {}), ("ali", {}),
                                    settings={"assignment": "manual", "high_amount": {"EUR": "100.00"},
                                              "unanswered_notices": 0})
    await _invoices(dunning, {"C1": 50_000, "C2": 40_000})
    clock.set(datetime(2026, 3, 11, 10, tzinfo=UTC))
    tasks = by_customer(await wait_for(lambda: _n(tasks_of(http), 2), message="two tasks in the queue"))
    assert {t["assigned_to"] for t in tasks.values()} == {None}  # manual: the team's queue

    boss = await sign_in(url, manager.headers["X-API-Key"])
    page = await boss.get("/worklist")  # a manager who is no collector: the queue, with a collector to pick per task
    assert page.status_code == 200 and 'name="collector_id"' in page.text and "Ali" in page.text
    r = await boss.post(f"/tasks/{tasks['C1']['task_id']}/assign", data={
        "form_token": form_token(page.text), "collector_id": "ali", "back": "/worklist?queue=1"})
    assert (r.status_code, r.headers["location"]) == (303, "/worklist?queue=1&done=assigned")
    assert (await http.get("/v1/tasks", params={"customer_id": "C1"})).json()[0]["assigned_to"] == "ali"
    r = await boss.post(f"/tasks/{tasks['C1']['task_id']}/assign", data={"form_token": "forged", "collector_id": "eda"})
    assert r.status_code == 422  # no form token of this sign-in: nothing moves
    assert (await http.get("/v1/tasks", params={"customer_id": "C1"})).json()[0]["assigned_to"] == "ali"

    eda = await sign_in(url, people["eda"].headers["X-API-Key"])
    queue = await eda.get("/worklist?queue=1")
    assert ">C2<" in queue.text and ">C1<" not in queue.text
    r = await eda.post(f"/tasks/{tasks['C2']['task_id']}/take", data={"form_token": form_token(queue.text)})
    assert r.status_code == 303 and r.headers["location"].endswith("done=taken")
    mine = await eda.get("/worklist")
    assert ">C2<" in mine.text and "The task is yours." not in mine.text
    assert (await http.get("/v1/tasks", params={"customer_id": "C2"})).json()[0]["assigned_to"] == "eda"
    for b in (boss, eda):
        await b.aclose()
