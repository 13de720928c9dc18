"""The customer portal against real PostgreSQL and the broker: the signed link in each notice,
what it opens (and for whom, and until when), and the customer's promise, dispute and plan as the
same use cases and events a collector's action makes, within the policy's limits. The console's
portal pages over the same dunning, by HTTP as a browser posts them."""
from __future__ import annotations

import asyncio
import base64
import json
from datetime import datetime, timedelta, timezone
from urllib.parse import unquote

import httpx
import pytest

from services.console.bootstrap import build as build_console
from services.console.settings import ConsoleSettings
from services.dunning.bootstrap import build
from services.dunning.settings import DunningSettings
from shared.clock import ManualClock
from shared.kafka import start_producer
from shared.contract import Topics
from tests.integration.test_dunning import DUE, T0, env, issued, requested, send
from tests.integration.test_dunning_arrangements import events_of
from tests.support import FAST_KAFKA, api_key, client, running, wait_for

pytestmark = pytest.mark.integration
UTC = timezone.utc
INV_1 = "00000000-0000-0000-0005-000000000001"
INV_2 = "00000000-0000-0000-0005-000000000002"
INV_X = "00000000-0000-0000-0005-000000000009"  # another customer's


@pytest.fixture
async def portal(database, kafka_bootstrap, topic_prefix):
    clock = ManualClock(T0)
    settings = DunningSettings(database_url=database, kafka_bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix,
                               kafka_partitions=2, poll_interval_seconds=0.1, portal_url="https://pay.example.com/p",
                               **FAST_KAFKA)
    app = build(settings, clock)
    producer = await start_producer(kafka_bootstrap)
    async with running(app) as url:
        async with client(url, await api_key(app, "t1", "collector")) as http:
            topics = Topics(topic_prefix)
            await send(producer, topics.invoicing, env(issued(INV_1, amount=30_000), INV_1, clock),
                       env(issued(INV_2, amount=20_000), INV_2, clock),
                       env(issued(INV_X, customer="C2", amount=10_000), INV_X, clock))

            async def cases():
                r = await http.get("/v1/cases")
                return len(r.json()) == 2 or None
            await wait_for(cases, message="the cases")
            yield app, http, clock, topics, url
    await producer.stop()


def token_of(url: str) -> str:
    return unquote(url.rsplit("/", 1)[1])


async def test_each_notice_links_to_the_customers_page_which_opens_only_theirs_and_only_until_it_ends(
        portal, kafka_bootstrap):
    app, http, clock, topics, url = portal
    clock.set(datetime(2026, 3, 7, 10, tzinfo=UTC))  # the pre-due notices
    sent = await wait_for(lambda: _of(requested(kafka_bootstrap, topics), "C1"), message="C1's notice")
    link = sent[0].data["links"]["portal"]
    assert link.startswith("https://pay.example.com/p/")
    token = token_of(link)
    anon = httpx.AsyncClient(base_url=url, timeout=30)  # no API key: the link is the credential

    view = (await anon.get(f"/v1/portal/{token}")).json()
    assert (view["tenant_id"], view["customer_id"], view["language"]) == ("t1", "C1", "en")
    [case] = view["cases"]
    assert (case["currency"], case["open_minor"]) == ("EUR", 50_000)
    assert [i["number"] for i in case["items"]] == ["N-0001", "N-0002"]  # C2's invoice is not here
    assert case["self_service"] == {"max_promise_days": 14, "max_instalments": 6, "max_plan_days": 180,
                                    "max_first_due_days": 30}  # the standard policy's portal section
    assert datetime.fromisoformat(view["expires_at"]) == datetime(2026, 4, 7, tzinfo=UTC)  # 30 whole days

    # forged: the customer changed in the token, the signature kept
    payload, mac = token.split(".")
    forged = base64.urlsafe_b64encode(json.dumps(["t1", "C2", 1893456000]).encode()).rstrip(b"=").decode()
    # (the MAC's first character changed: its last one carries bits base64 decoding ignores, so
    # changing the tail could, once in a thousand keys, leave the MAC as it was)
    tampered = f"{payload}.{'B' if mac[0] == 'A' else 'A'}{mac[1:]}"
    for bad in (f"{forged}.{mac}", tampered, "not-a-token-at-all"):
        r = await anon.get(f"/v1/portal/{bad}")
        assert r.status_code == 404 and r.json()["problems"][0]["field"] == "token", r.text
    r = await anon.post(f"/v1/portal/{token}/disputes", json={"invoice_id": INV_X, "reason_code": "other",
                                                               "description": "not mine either"})
    assert r.status_code == 404  # another customer's invoice: as unknown as a made-up one

    clock.set(datetime(2026, 4, 7, 0, 0, 1, tzinfo=UTC))
    r = await anon.get(f"/v1/portal/{token}")
    assert r.status_code == 410 and "expired" in r.text
    await anon.aclose()


async def test_the_customers_promise_dispute_and_plan_are_the_collectors_events_within_the_policys_limits(
        portal, kafka_bootstrap):
    app, http, clock, topics, url = portal
    r = await http.post("/v1/customers/C1/portal-link")
    assert r.status_code == 201, r.text
    token = r.json()["token"]
    anon = httpx.AsyncClient(base_url=url, timeout=30)
    [case] = (await anon.get(f"/v1/portal/{token}")).json()["cases"]

    # a promise further out than the policy allows, or in the past: the field is named, nothing is made
    r = await anon.post(f"/v1/portal/{token}/promises", json={"case_id": case["case_id"], "promised_date": "2026-03-16"})
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "promised_date", r.text
    r = await anon.post(f"/v1/portal/{token}/promises", json={"case_id": case["case_id"], "promised_date": "2026-02-20"})
    assert r.status_code == 422
    assert (await http.get("/v1/promises")).json() == []

    # a dispute of one invoice: the same DisputeOpened a collector's makes, origin portal, and it pauses that invoice
    # sent twice at once (a double click): one dispute, the other told it is already disputed
    first, again = await asyncio.gather(*(anon.post(f"/v1/portal/{token}/disputes", json={
        "invoice_id": INV_2, "reason_code": "not_received", "description": "the second delivery never came"})
        for _ in range(2)))
    assert sorted((first.status_code, again.status_code)) == [201, 409], (first.text, again.text)
    assert "already disputed" in (again if again.status_code == 409 else first).text
    [dispute] = (await http.get("/v1/disputes", params={"customer_id": "C1"})).json()
    assert (dispute["origin"], dispute["opened_by"], dispute["invoice_id"], dispute["status"]) == (
        "portal", "customer", INV_2, "open")

    # a promise within 14 days covers what is neither disputed nor already arranged: INV_1 only
    r = await anon.post(f"/v1/portal/{token}/promises", json={"case_id": case["case_id"], "promised_date": "2026-03-12"})
    assert r.status_code == 201, r.text
    [promise] = (await http.get("/v1/promises", params={"customer_id": "C1"})).json()
    assert (promise["invoice_ids"], promise["amount_minor"], promise["channel"], promise["taken_by"]) == (
        [INV_1], 30_000, "portal", "customer")
    r = await anon.post(f"/v1/portal/{token}/payment-plans", json={"case_id": case["case_id"], "count": 3,
                                                                    "first_due": "2026-03-20"})
    assert r.status_code == 409 and "already" in r.text  # nothing left to put in a plan

    view = (await anon.get(f"/v1/portal/{token}")).json()
    assert [(i["number"], i["promised"], i["disputed"]) for i in view["cases"][0]["items"]] == [
        ("N-0001", True, False), ("N-0002", False, True)]
    events = await wait_for(lambda: _n(events_of(kafka_bootstrap, topics, "DisputeOpened", "PromiseToPayRecorded"), 2),
                            message="the events")
    assert sorted(e.type for e in events) == ["DisputeOpened", "PromiseToPayRecorded"]

    # a plan for the other customer, within and beyond the limits
    token2 = (await http.post("/v1/customers/C2/portal-link")).json()["token"]
    [case2] = (await anon.get(f"/v1/portal/{token2}")).json()["cases"]
    r = await anon.post(f"/v1/portal/{token2}/payment-plans", json={"case_id": case2["case_id"], "count": 7,
                                                                     "first_due": "2026-03-20"})
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "count" and "at most 6" in r.text
    r = await anon.post(f"/v1/portal/{token2}/payment-plans", json={"case_id": case["case_id"], "count": 2,
                                                                     "first_due": "2026-03-20"})
    assert r.status_code == 404  # C1's case through C2's link
    r = await anon.post(f"/v1/portal/{token2}/payment-plans", json={"case_id": case2["case_id"], "count": 2,
                                                                     "first_due": "2026-03-20"})
    assert r.status_code == 201, r.text
    [plan] = (await http.get("/v1/payment-plans", params={"customer_id": "C2"})).json()
    assert (plan["agreed_by"], plan["total_minor"], plan["status"]) == ("customer", 10_000, "active")

    pdf = await anon.get(f"/v1/portal/{token}/statement.pdf")
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF") and pdf.headers["content-type"] == "application/pdf"
    await anon.aclose()


async def test_the_console_serves_the_portal_in_the_customers_language_and_its_forms_post(portal):
    app, http, clock, topics, url = portal
    admin = client(url, await api_key(app, "t1", "admin"))
    r = await admin.put("/v1/portal-settings", json={"payment_instructions": {
        "en": "Bank transfer to IBAN DE89 3704 0044 0532 0130 00, quoting your invoice numbers."}})
    assert r.status_code == 200, r.text
    token = (await http.post("/v1/customers/C1/portal-link")).json()["token"]
    web = build_console(ConsoleSettings(dunning_url=url, invoicing_url=url, risk_url=url, session_secret="s" * 40))
    web.state.clock = clock
    async with running(web) as console_url, httpx.AsyncClient(base_url=console_url, timeout=30) as browser:
        page = await browser.get(f"/p/{token}")
        assert page.status_code == 200, page.text
        assert '<html lang="en" dir="ltr">' in page.text and "€500.00" in page.text and "IBAN DE89" in page.text
        r = await browser.post(f"/p/{token}/dispute", data={"dispute_invoice_id": INV_1, "dispute_reason_code": "price",
                                                            "dispute_reason": "no"})
        assert r.status_code == 422 and "dispute_reason" in r.text  # too short: nothing sent
        assert (await http.get("/v1/disputes")).json() == []
        r = await browser.post(f"/p/{token}/dispute", data={"dispute_invoice_id": INV_1, "dispute_reason_code": "price",
                                                            "dispute_reason": "the agreed price was 250.00"})
        assert r.status_code == 303 and r.headers["location"].endswith("?done=dispute")
        page = await browser.get(r.headers["location"])
        assert "Your dispute is recorded" in page.text
        [dispute] = (await http.get("/v1/disputes")).json()
        assert (dispute["reason_code"], dispute["reason"]) == ("price", "the agreed price was 250.00")
        pdf = await browser.get(f"/p/{token}/statement.pdf")
        assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
        gone = await browser.get("/p/this-is-not-a-valid-token")
        assert gone.status_code == 404 and "This link is not valid." in gone.text
    await admin.aclose()


async def _of(coro, customer):
    return [e for e in await coro if e.data["customer_id"] == customer] or None


async def _n(coro, n):
    items = await coro
    return items if len(items) >= n else None
