"""The whole platform as separate processes, driven only through its HTTP APIs, its topics and
the SMTP/SMS sinks: two customers (tr and en), the clock moves, reminders arrive in the right
language, a payment cancels the later steps, and risk assesses both customers."""
from __future__ import annotations

import html
import os
import re
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from tahsilat.keys import create_key
from tahsilat.streams import read_events
from tests.support import module_platform, wait_for

pytestmark = pytest.mark.e2e

START = datetime(2026, 3, 1, 10, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def platform(kafka_bootstrap, pg_server, tmp_path_factory):
    yield from module_platform(kafka_bootstrap, pg_server, tmp_path_factory, "e2e", START, partitions=3)


def customer(cid: str, language: str, tz: str) -> dict:
    n = sum(map(ord, cid))
    return {"id": cid, "name": f"Customer {cid}", "language": language, "timezone": tz,
            "email": f"{cid.lower()}@example.com", "phone": f"+90555{n:07d}"}


async def emails_to(http: httpx.AsyncClient, sinks: str, address: str) -> list[dict]:
    return (await http.get(f"{sinks}/emails", params={"to": address})).json()


async def statement_requested(http: httpx.AsyncClient, p, tenant: str, customer: dict, invoice: dict):
    """`tenant`'s source erp invoices `customer`, then its admin asks the customer to confirm the
    balance: the admin's headers and the request's reply."""
    admin = {"X-API-Key": await create_key(p.database_urls, tenant_id=tenant, role="admin")}
    source = {"X-API-Key": await create_key(p.database_urls, tenant_id=tenant, role="billing-source",
                                            source_name="erp")}
    r = await http.post(f"{p.url('invoicing')}/v1/invoices", headers=source, json={**invoice, "customer": customer})
    assert r.status_code == 201, r.text
    r = await http.post(f"{p.url('invoicing')}/v1/customers/{customer['id']}/balance-confirmations", headers=admin,
                        json={})
    assert r.status_code == 201, r.text
    return admin, r.json()


async def contest_link(http: httpx.AsyncClient, p, email: str) -> str | None:
    """The contest link of the first email to `email` that has one (reminders may come first)."""
    links = [re.search(r"https?://\S+#contest", m["text"]) for m in await emails_to(http, p.sinks_url, email)]
    return next((link.group(0) for link in links if link), None)


async def at_least(coro, n):
    items = await coro
    return items if len(items) >= n else None


async def test_reminders_payment_and_risk_end_to_end(platform):
    p, clock = platform
    source_key = await create_key(p.database_urls, tenant_id="acme", role="billing-source", source_name="erp",
                                  records=("invoices", "payments"))
    admin_key = await create_key(p.database_urls, tenant_id="acme", role="admin")
    tr = customer("TR1", "tr", "Europe/Istanbul")
    en = customer("EN1", "en", "Europe/London")
    async with httpx.AsyncClient(timeout=30) as http:
        billing = {"X-API-Key": source_key}
        admin = {"X-API-Key": admin_key}
        inv = p.url("invoicing")
        ids = {}
        for c in (tr, en):
            r = await http.post(f"{inv}/v1/invoices", headers=billing, json={
                "external_id": f"INV-{c['id']}", "customer": c, "currency": "EUR", "amount_minor": 125_050,
                "issue_date": "2026-02-08", "due_date": "2026-03-10"})
            assert r.status_code == 201, r.text
            ids[c["id"]] = r.json()["id"]

        # Three days before the due date, both get the pre-due reminder, each in their language.
        clock.set(datetime(2026, 3, 7, 10, 0, tzinfo=timezone.utc))
        tr_mail = await wait_for(lambda: emails_to(http, p.sinks_url, tr["email"]), 60, 0.2, "the Turkish pre-due email")
        en_mail = await wait_for(lambda: emails_to(http, p.sinks_url, en["email"]), 60, 0.2, "the English pre-due email")
        assert tr_mail[0]["subject"] == "Yaklaşan ödeme hatırlatması" and tr_mail[0]["language"] == "tr"
        assert "€1.250,50" in tr_mail[0]["text"] or "1.250,50 €" in tr_mail[0]["text"]
        assert en_mail[0]["subject"] == "Upcoming payment reminder" and en_mail[0]["language"] == "en"
        assert "€1,250.50" in en_mail[0]["text"]
        assert "List-Unsubscribe" in en_mail[0]["headers"]

        # The English customer pays in full; the Turkish one does not.
        r = await http.post(f"{inv}/v1/payments", headers=billing, json={
            "external_id": "PAY-EN1", "customer_id": "EN1", "currency": "EUR", "amount_minor": 125_050})
        assert r.status_code == 201, r.text

        async def en_case_closed():
            r = await http.get(f"{p.url('dunning')}/v1/cases", headers=admin, params={"customer_id": "EN1"})
            cases = r.json()
            return cases if cases and cases[0]["status"] == "closed" else None

        en_case = (await wait_for(en_case_closed, 60, 0.2, "the paid case closed"))[0]
        en_steps = en_case["items"][0]["steps"]
        assert {(s["step"], s["status"]) for s in en_steps} >= {("pre_due", "executed"), ("due", "cancelled"),
                                                                  ("final_14", "cancelled")}

        # On the due date the Turkish customer gets the due-date reminder; the paid case stays quiet.
        clock.set(datetime(2026, 3, 10, 10, 0, tzinfo=timezone.utc))
        tr_mail = await wait_for(lambda: at_least(emails_to(http, p.sinks_url, tr["email"]), 2), 60, 0.2,
                                 "the Turkish due-date email")
        assert tr_mail[1]["subject"] == "Bugün vadesi dolan ödeme"

        # A week after the due date: the overdue notice, by email and SMS.
        clock.set(datetime(2026, 3, 17, 10, 0, tzinfo=timezone.utc))
        tr_mail = await wait_for(lambda: at_least(emails_to(http, p.sinks_url, tr["email"]), 3), 60, 0.2,
                                 "the Turkish overdue email")
        assert [m["subject"] for m in tr_mail] == ["Yaklaşan ödeme hatırlatması", "Bugün vadesi dolan ödeme",
                                                   "Vadesi geçmiş fatura hatırlatması"]
        sms = await wait_for(lambda: _sms_to(http, p.sinks_url, tr["phone"]), 60, 0.2, "the Turkish SMS")
        assert "Vadesi geçmiş" in sms[0]["text"] and "IPTAL" in sms[0]["text"]  # the Turkish STOP word
        assert sms[0]["provider"] == "twilio"  # the Twilio request shape, as in production

        async def sms_delivered():  # the sink's signed status callback, checked and applied by the notifier
            r = await http.get(f"{p.url('notifier')}/v1/notifications", headers=admin,
                               params={"customer_id": "TR1", "channel": "sms", "status": "delivered"})
            return r.json() or None

        [delivered] = await wait_for(sms_delivered, 60, 0.2, "the Turkish SMS reported delivered")
        assert delivered["delivered_at"] is not None
        assert len(await emails_to(http, p.sinks_url, en["email"])) == 1  # nothing after the payment

        # The backbone events, read as an analytics consumer would.
        invoicing = await read_events(p.bootstrap, p.topics.invoicing)
        overdue = [e for e in invoicing if e.type == "InvoiceOverdue"]
        assert [e.data["invoice_id"] for e in overdue] == [ids["TR1"]]
        assert {e.data["invoice_id"] for e in invoicing if e.type == "InvoicePaid"} == {ids["EN1"]}

        async def assessed_both():
            risk = [e for e in await read_events(p.bootstrap, p.topics.risk) if e.type == "RiskAssessed"]
            return risk if {e.data["customer_id"] for e in risk} >= {"TR1", "EN1"} else None

        risk = await wait_for(assessed_both, 60, 0.3, "RiskAssessed for both customers")
        assert all(e.tenant_id == "acme" and 0 <= e.data["score"] <= 100 for e in risk)
        r = await http.get(f"{p.url('risk')}/v1/customers/TR1/risk", headers=admin)
        assert r.status_code == 200 and r.json()["factors"]

        sent = [e for e in await read_events(p.bootstrap, p.topics.notifier) if e.type == "NotificationSent"]
        assert len({e.data["notification_key"] for e in sent}) == len(sent)  # one per key, never two

        # Every service is ready and exports its metrics.
        for s in ("invoicing", "dunning", "risk", "notifier"):
            assert (await http.get(f"{p.url(s)}/health/ready")).status_code == 200
            assert "tahsilat_outbox_backlog" in (await http.get(f"{p.url(s)}/metrics")).text


async def test_a_bounced_notice_suppresses_the_address_and_a_collector_is_asked_to_call(platform):
    """The mail server refuses the address (550): the notifier fails the notice, puts the address
    on the suppression list and says so; dunning opens a contact_failed task for a collector."""
    p, clock = platform
    source_key = await create_key(p.database_urls, tenant_id="bouncer", role="billing-source", source_name="erp")
    admin = {"X-API-Key": await create_key(p.database_urls, tenant_id="bouncer", role="admin")}
    now = clock.now()
    bx = {**customer("BX1", "en", "Europe/London"), "email": "ap@bounce.example.com"}
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.post(f"{p.url('invoicing')}/v1/invoices", headers={"X-API-Key": source_key}, json={
            "external_id": "BX-1", "customer": bx, "currency": "GBP", "amount_minor": 90_000,
            "issue_date": (now - timedelta(days=40)).date().isoformat(),
            "due_date": (now - timedelta(days=8)).date().isoformat()})
        assert r.status_code == 201, r.text

        async def task():
            r = await http.get(f"{p.url('dunning')}/v1/tasks", headers=admin, params={"kind": "contact_failed"})
            return r.json() or None

        [contact_failed] = await wait_for(task, 90, 0.3, "the collector task for the bounced notice")
        assert contact_failed["customer_id"] == "BX1" and "550" in contact_failed["reason"]
        suppressed = (await http.get(f"{p.url('notifier')}/v1/suppressions", headers=admin)).json()
        assert [(s["address"], s["reason"]) for s in suppressed] == [("ap@bounce.example.com", "hard_bounce")]
        failed = [e for e in await read_events(p.bootstrap, p.topics.notifier)
                  if e.type == "NotificationFailed" and e.tenant_id == "bouncer"]
        assert {(e.data["code"], e.data["bounce_class"]) for e in failed} == {("rejected", "hard")}


async def _sms_to(http, sinks, phone):
    return (await http.get(f"{sinks}/sms", params={"to": phone})).json()


async def test_two_billing_sources_feed_the_same_customer(platform):
    """An ERP over HTTP and a subscription biller over Kafka invoice one customer; one payment
    settles both; dunning follows both and stops when they are paid."""
    import json

    from shared.contract.signing import sign
    from shared.kafka import start_producer

    p, _clock = platform
    admin_key = await create_key(p.database_urls, tenant_id="globex", role="admin")
    admin = {"X-API-Key": admin_key}
    inv = p.url("invoicing")
    async with httpx.AsyncClient(timeout=30) as http:
        erp = await http.post(f"{inv}/v1/billing-sources", headers=admin, json={"name": "erp", "default_currency": "EUR",
                                                                        "records": ["invoices", "payments"]})
        biller = await http.post(f"{inv}/v1/billing-sources", headers=admin,
                                 json={"name": "biller", "default_currency": "EUR"})
        assert erp.status_code == biller.status_code == 201
        customer = {"id": "G1", "name": "Globex GmbH", "language": "en", "timezone": "Europe/Berlin",
                                      "email": "ap@globex.example"}
        r = await http.post(f"{inv}/v1/invoices", headers={"X-API-Key": erp.json()["api_key"]}, json={
            "external_id": "ERP-1", "customer": customer, "amount_minor": 30_000,
            "issue_date": "2026-04-01", "due_date": "2026-05-01"})
        assert r.status_code == 201, r.text
        producer = await start_producer(p.bootstrap)
        try:
            # The tenant and source are the signing secret's; the body needs neither.
            value = json.dumps({"kind": "invoice", "record": {
                "external_id": "SUB-1", "customer": customer, "amount_minor": 12_345, "issue_date": "2026-04-05",
                "due_date": "2026-05-05"}}).encode()
            secret = biller.json()["ingest_secret"]
            await producer.send_and_wait(p.topics.ingest, value, key=b"globex:G1",
                                         headers=sign(value, secret["secret_id"], secret["secret"]))
        finally:
            await producer.stop()

        async def both_items():
            r = await http.get(f"{p.url('dunning')}/v1/cases", headers=admin, params={"customer_id": "G1"})
            return r.json() if len(r.json()) == 1 and len(r.json()[0]["items"]) == 2 else None

        cases = await wait_for(both_items, 60, 0.2, "one dunning case holding both sources' invoices")
        assert sorted(i["amount_minor"] for i in cases[0]["items"]) == [12_345, 30_000]

        # One payment from the customer covers both, oldest first.
        r = await http.post(f"{inv}/v1/payments", headers={"X-API-Key": erp.json()["api_key"]}, json={
            "external_id": "BANK-77", "customer_id": "G1", "currency": "EUR", "amount_minor": 42_345})
        assert r.status_code == 201, r.text

        async def both_closed():
            r = await http.get(f"{p.url('dunning')}/v1/cases", headers=admin, params={"customer_id": "G1"})
            return r.json() if {c["status"] for c in r.json()} == {"closed"} else None

        await wait_for(both_closed, 60, 0.2, "the case closed by the payment")
        aging = (await http.get(f"{inv}/v1/reports/aging", headers=admin)).json()
        assert aging["by_currency"] == {}


async def test_balance_confirmation_contested_opens_a_dispute_that_pauses_dunning(platform):
    p, clock = platform
    customer = {"id": "I1", "name": "Initech s.r.o.", "language": "cs", "timezone": "Europe/Prague",
                "email": "ucetni@initech.example"}
    now = clock.now()
    async with httpx.AsyncClient(timeout=30) as http:
        tenant_admin, requested = await statement_requested(http, p, "initech", customer, {
            "external_id": "INI-1", "currency": "CZK", "amount_minor": 1_234_500,
            "issue_date": (now - timedelta(days=10)).date().isoformat(),
            "due_date": (now + timedelta(days=20)).date().isoformat()})
        assert requested["balances"] == [{"currency": "CZK", "balance_minor": 1_234_500}]

        mail = await wait_for(lambda: emails_to(http, p.sinks_url, customer["email"]), 60, 0.2, "the statement email")
        assert mail[0]["subject"] == "Prosíme o potvrzení zůstatku účtu" and mail[0]["language"] == "cs"
        lines = mail[0]["text"].splitlines()
        contest_url = next(lines[i + 1] for i, line in enumerate(lines) if line.startswith("Rozporovat zůstatek"))
        # The link opens the page (a click is a GET: it changes nothing); its form posts the answer.
        page = await http.get(contest_url)
        assert page.status_code == 200 and "Contest" in page.text
        action = re.search(r'<form id="contest" method="post" action="([^"]+)"', page.text).group(1)
        assert action.startswith(p.url("invoicing")) and action.endswith("/contest")
        assert "contested" not in (await http.get(contest_url)).text
        r = await http.post(html.unescape(action), data={"reason": "invoice INI-1 was already credited"})
        assert r.status_code == 200 and "contested" in r.text
        again = await http.post(html.unescape(action), data={"reason": "twice"})
        assert again.status_code == 409

        async def dispute():
            r = await http.get(f"{p.url('dunning')}/v1/disputes", headers=tenant_admin)
            return r.json() or None

        disputes = await wait_for(dispute, 60, 0.2, "the dispute opened")
        assert disputes[0]["customer_id"] == "I1" and disputes[0]["reason"] == "invoice INI-1 was already credited"

        # While the dispute is open, no reminder goes out, even once the invoice is well overdue
        # (until DISPUTE_PAUSE_DAYS, 30, after the contest: then dunning goes on unresolved).
        clock.set(now + timedelta(days=29))
        async def overdue_fired():
            events = await read_events(p.bootstrap, p.topics.invoicing)
            return [e for e in events if e.type == "InvoiceOverdue" and e.tenant_id == "initech"] or None

        await wait_for(overdue_fired, 60, 0.2, "the invoice overdue")
        r = await http.get(f"{p.url('dunning')}/v1/cases", headers=tenant_admin, params={"customer_id": "I1"})
        steps = r.json()[0]["items"][0]["steps"]
        assert all(s["status"] in ("scheduled", "skipped") for s in steps if s["step"] != "pre_due"), steps
        assert len(await emails_to(http, p.sinks_url, customer["email"])) == 1


async def test_a_customer_contests_their_balance_in_a_real_browser(platform, browser, artifacts):
    """Headless Chromium opens the link from the captured email, reads the balance, types a
    reason and presses Contest; the dispute is then visible through the dunning API."""
    p, clock = platform
    customer = {"id": "U1", "name": "Umbrella Ltd", "language": "en", "timezone": "Europe/London",
                "email": "ledger@umbrella.example"}
    now = clock.now()
    async with httpx.AsyncClient(timeout=30) as http:
        admin, _ = await statement_requested(http, p, "umbrella", customer, {
            "external_id": "UMB-1", "currency": "GBP", "amount_minor": 250_075,
            "issue_date": (now - timedelta(days=5)).date().isoformat(),
            "due_date": (now + timedelta(days=25)).date().isoformat()})
        link = await wait_for(lambda: contest_link(http, p, customer["email"]), 60, 0.2, "the statement email")

        page = await browser.new_page()
        try:
            await page.goto(link)
            assert await page.title() == "Balance confirmation"
            assert "2,500.75" in await page.inner_text("main")
            await page.screenshot(path=artifacts / "balance-confirmation-opened.png", full_page=True)
            await page.fill("#contest input[name=reason]", "UMB-1 was paid by bank transfer on the 3rd")
            async with page.expect_navigation():
                await page.click("#contest button")
            assert "contested" in await page.inner_text("main")
            assert await page.locator("form").count() == 0  # answered: nothing more to press
            await page.screenshot(path=artifacts / "balance-confirmation-contested.png", full_page=True)
        finally:
            await page.close()

        async def dispute():
            r = await http.get(f"{p.url('dunning')}/v1/disputes", headers=admin)
            return r.json() or None

        [opened] = await wait_for(dispute, 60, 0.2, "the dispute opened by the browser's contest")
        assert (opened["customer_id"], opened["reason"]) == ("U1", "UMB-1 was paid by bank transfer on the 3rd")


SAMPLE_BODIES = {  # a valid body for each operation with an id that takes one: so only the key decides
    ("PATCH", "/v1/billing-sources/{name}"): {"records": ["invoices"]},
    ("POST", "/v1/billing-sources/{name}/ingest-secrets"): {"retire_others_after_seconds": 0},
    ("POST", "/v1/customers/{customer_id}/balance-confirmations"): {},
    ("POST", "/v1/disputes/{dispute_id}/resolve"): {"resolution": "closed by someone else"},
    ("PUT", "/v1/customers/{customer_id}"): {"id": "M1", "name": "Taken Over Ltd", "email": "thief@evil.example"},
    ("POST", "/v1/outbox/held/{row_id}/discard"): {"reason": "someone else's event"},
    ("PUT", "/v1/invoices/{invoice_id}/hold"): {"reason": "held by someone else"},
    ("PUT", "/v1/customers/{customer_id}/do-not-chase"): {"reason": "stopped by someone else"},
    ("PUT", "/v1/customers/{customer_id}/group"): {"customer_group": "stolen"},
    ("POST", "/v1/cases/{case_id}/promises"): {"amount_minor": 100, "promised_date": "2030-01-01", "channel": "phone"},
    ("POST", "/v1/cases/{case_id}/payment-plans"): {"count": 2, "first_due": "2030-01-01"},
    ("POST", "/v1/cases/{case_id}/settlement-offers"): {"discount_percent": "1", "pay_by": "2030-01-01"},
    ("POST", "/v1/tasks/{task_id}/done"): {"outcome": "reached"},
    ("POST", "/v1/tasks/{task_id}/outcome"): {"outcome": "reached"},
    ("POST", "/v1/tasks/{task_id}/assign"): {"collector_id": None},
    ("PUT", "/v1/collectors/{collector_id}"): {"name": "Intruder"},
    ("PUT", "/v1/customers/{customer_id}/owner"): {"collector_id": None},
    ("POST", "/v1/customers/{customer_id}/contact-log"): {"kind": "note", "note": "written by someone else"},
    ("POST", "/v1/contact-log/{entry_id}/corrections"): {"note": "corrected by someone else"},
    ("PUT", "/v1/contacts/{customer_id}/preferences"): {"declined_channels": ["email"]},
    ("POST", "/v1/contacts/{customer_id}/opt-out"): {"channel": "email"},
    ("POST", "/v1/contacts/{customer_id}/opt-in"): {"channel": "email", "consent": "said yes on the phone"},
    ("PUT", "/v1/templates/{template}"): {"languages": {"en": {"subject": "Pay {{ name }}"}}},
    ("PUT", "/v1/customers/{customer_id}/credit/limits/{currency}"): {"limit_minor": 100},
    ("POST", "/v1/customers/{customer_id}/credit/hold"): {"reason": "held by someone else"},
    ("PUT", "/v1/customers/{customer_id}/parent"): {"parent_id": "M2"},
    ("POST", "/v1/credit-applications/{application_id}/decision"): {"approve": True},
    ("PUT", "/v1/policies/{name}"): {"source": "name: erp\nsegment: medium\nlanguages: [en]\nsteps:\n"
                                               "  - {name: due, offset_days: 0, channel: email, template: reminder_due}\n"},
}
# Ids that are names within a tenant: another tenant writing one writes its own (a customer M1
# of its own, a policy of its own), never the owner's; the owner's view is checked unchanged.
PER_TENANT_NAMES = {("PUT", "/v1/customers/{customer_id}"), ("PUT", "/v1/customers/{customer_id}/do-not-chase"),
                    ("DELETE", "/v1/customers/{customer_id}/do-not-chase"), ("PUT", "/v1/customers/{customer_id}/group"),
                    ("PUT", "/v1/policies/{name}"), ("GET", "/v1/policies/{name}/versions"),
                    ("POST", "/v1/policies/{name}/versions/{version}/activate"), ("PUT", "/v1/templates/{template}"),
                    ("DELETE", "/v1/templates/{template}"), ("GET", "/v1/customers/{customer_id}/credit"),
                    ("PUT", "/v1/customers/{customer_id}/credit/limits/{currency}"),
                    ("DELETE", "/v1/customers/{customer_id}/credit/limits/{currency}"),
                    ("POST", "/v1/customers/{customer_id}/credit/hold"),
                    ("DELETE", "/v1/customers/{customer_id}/credit/hold"),
                    ("PUT", "/v1/customers/{customer_id}/parent"), ("GET", "/v1/customers/{customer_id}/warnings"),
                    ("PUT", "/v1/collectors/{collector_id}"), ("PUT", "/v1/customers/{customer_id}/owner"),
                    ("GET", "/v1/customers/{customer_id}/contact-log"),
                    ("POST", "/v1/customers/{customer_id}/contact-log"),
                    ("POST", "/v1/customers/{customer_id}/portal-link")}
# Capability URLs: the token in the path is the credential, not a key (tested on their own).
TOKEN_PATHS = {"/v1/balance-confirmations/{token}", "/v1/balance-confirmations/{token}/confirm",
               "/v1/balance-confirmations/{token}/contest", "/v1/unsubscribe/{token}", "/v1/portal/{token}",
               "/v1/portal/{token}/statement.pdf", "/v1/portal/{token}/promises", "/v1/portal/{token}/disputes",
               "/v1/portal/{token}/payment-plans"}


async def test_no_key_of_another_tenant_or_source_reaches_an_id_it_does_not_own(platform):
    """Every operation of every service's OpenAPI that takes an id in its path, called with a key
    of another tenant (admin and collector) and of another billing source of the same tenant:
    404 or 403, and the owner sees exactly what it saw before."""
    p, _clock = platform
    inv, dun = p.url("invoicing"), p.url("dunning")
    admin = {"X-API-Key": await create_key(p.database_urls, tenant_id="matrix", role="admin")}
    async with httpx.AsyncClient(timeout=30) as http:
        erp = (await http.post(f"{inv}/v1/billing-sources", headers=admin, json={
            "name": "erp", "default_currency": "EUR", "records": ["invoices", "payments"]})).json()
        crm = (await http.post(f"{inv}/v1/billing-sources", headers=admin, json={
            "name": "crm", "default_currency": "EUR"})).json()
        customer = {"id": "M1", "name": "Matrix GmbH", "language": "en", "timezone": "Europe/Berlin",
                    "email": "ap@matrix.example"}
        r = await http.post(f"{inv}/v1/invoices", headers={"X-API-Key": erp["api_key"]}, json={
            "external_id": "M-1", "customer": customer, "amount_minor": 50_000,
            "issue_date": _clock.now().date().isoformat(),
            "due_date": (_clock.now() + timedelta(days=30)).date().isoformat()})  # nothing falls due meanwhile
        assert r.status_code == 201, r.text
        invoice_id = r.json()["id"]
        assert (await http.post(f"{inv}/v1/customers/M1/balance-confirmations", headers=admin, json={})).status_code == 201
        link = await wait_for(lambda: contest_link(http, p, customer["email"]), 60, 0.2, "the statement email")
        contest = link.split("#")[0]
        assert (await http.post(f"{contest}/contest", data={"reason": "not ours"})).status_code == 200

        async def owned():
            cases = (await http.get(f"{dun}/v1/cases", headers=admin)).json()
            disputes = (await http.get(f"{dun}/v1/disputes", headers=admin)).json()
            risk = await http.get(f"{p.url('risk')}/v1/customers/M1/risk", headers=admin)
            return (cases, disputes) if cases and disputes and risk.status_code == 200 else None

        cases, disputes = await wait_for(owned, 60, 0.2, "the case, the dispute and the risk score")
        ids = {"invoice_id": invoice_id, "customer_id": "M1", "case_id": cases[0]["case_id"],
               "dispute_id": disputes[0]["dispute_id"], "name": "erp",
               "secret_id": erp["ingest_secret"]["secret_id"], "row_id": "1", "version": "1",
               "promise_id": str(uuid.uuid4()), "plan_id": str(uuid.uuid4()), "offer_id": str(uuid.uuid4()),
               "task_id": str(uuid.uuid4()), "notification_key": f"{cases[0]['case_id']}:due:email",
               "template": "reminder_due", "currency": "EUR", "parent_id": "M1",
               "application_id": str(uuid.uuid4()), "collector_id": "ali", "entry_id": str(uuid.uuid4())}

        async def seen_by_owner() -> list:
            reads = [f"{inv}/v1/invoices/{invoice_id}", f"{inv}/v1/customers/M1/statement", f"{inv}/v1/billing-sources",
                     f"{inv}/v1/billing-sources/erp/ingest-secrets", f"{dun}/v1/cases", f"{dun}/v1/disputes",
                     f"{dun}/v1/policies", f"{p.url('risk')}/v1/customers/M1/risk",
                     f"{p.url('risk')}/v1/customers/M1/credit", f"{p.url('notifier')}/v1/contacts/M1", f"{p.url('notifier')}/v1/templates"]
            return [(await http.get(url, headers=admin)).json() for url in reads]

        previous: list = []

        async def settled():  # what the events set in motion has come to rest: the same twice, 1 s apart
            seen = await seen_by_owner()
            stable = previous == [seen]
            previous[:] = [seen]
            return seen if stable else None

        before = await wait_for(settled, 60, 1.0, "the owner's view at rest")
        outsiders = {
            "another tenant's admin": await create_key(p.database_urls, tenant_id="intruder", role="admin"),
            "another tenant's collector": await create_key(p.database_urls, tenant_id="intruder", role="collector"),
            "another source of the tenant": crm["api_key"],
        }
        tried = 0
        for service in ("invoicing", "dunning", "risk", "notifier"):
            spec = (await http.get(f"{p.url(service)}/openapi.json")).json()
            for path, operations in spec["paths"].items():
                if "{" not in path or path in TOKEN_PATHS:
                    continue
                for method in operations:
                    url = p.url(service) + path.format(**ids)
                    body = SAMPLE_BODIES.get((method.upper(), path))
                    for who, key in outsiders.items():
                        r = await http.request(method.upper(), url, headers={"X-API-Key": key}, json=body)
                        tried += 1
                        if (method.upper(), path) in PER_TENANT_NAMES and who.startswith("another tenant"):
                            assert r.status_code in (200, 201, 204, 403, 404, 422), (who, method, path, r.status_code,
                                                                                     r.text)
                            continue
                        # a key made at source registration is stored by invoicing only: 401 elsewhere
                        unknown_here = 401 if who == "another source of the tenant" and service != "invoicing" else 403
                        assert r.status_code in (403, 404, 409, unknown_here), (who, method, path, r.status_code,
                                                                                r.text)
        assert tried >= 30
        assert await seen_by_owner() == before


def test_service_logs_are_structured_and_hold_no_contact_details(platform):
    """Runs after the scenarios above: every line every service wrote is a JSON object, and no
    customer's email address or phone number appears in full."""
    import json

    p, _clock = platform
    contacts = ["tr1@example.com", "en1@example.com", "ap@globex.example", "ucetni@initech.example",
                "ledger@umbrella.example", "ap@matrix.example", "thief@evil.example"]
    for service in ("invoicing", "dunning", "risk", "risk-stream", "notifier", "console"):
        text = (p.log_dir / f"{service}.log").read_text()
        for line in text.splitlines():
            assert isinstance(json.loads(line), dict), f"{service}: {line}"
        assert not any(c in text for c in contacts), service
        assert "+90555" not in text, service


JOURNEY_POLICY = """\
name: journey-{segment}
segment: {segment}
languages: [en, tr, cs, fa]
steps:
  - {{name: due, offset_days: 0, channel: email, template: reminder_due}}
  - {{name: overdue_7, offset_days: 7, channel: email, template: reminder_overdue}}
  - {{name: final_14, offset_days: 14, channel: email, template: final_notice}}
  - {{name: legal_21, offset_days: 21, channel: legal}}
"""


async def test_one_customer_five_invoices_two_currencies_from_first_notice_to_legal(platform):
    """#9: one notice per currency per step; a part payment; a promise, broken; a disputed
    invoice left out of the notices; the legal hand-over with its case file."""
    p, clock = platform
    inv, dun = p.url("invoicing"), p.url("dunning")
    admin = {"X-API-Key": await create_key(p.database_urls, tenant_id="journey", role="admin")}
    source = {"X-API-Key": await create_key(p.database_urls, tenant_id="journey", role="billing-source",
                                            source_name="erp", records=("invoices", "payments"))}
    j1 = customer("J1", "en", "UTC")
    due = (clock.now() + timedelta(days=5)).date()

    def moment(days: int, hour: int = 9, minute: int = 5) -> datetime:
        return datetime.combine(due + timedelta(days=days), datetime.min.time(), timezone.utc) + timedelta(
            hours=hour, minutes=minute)

    async with httpx.AsyncClient(timeout=30) as http:
        for segment in ("low", "medium", "high"):  # whatever risk makes of J1, the same schedule
            r = await http.post(f"{dun}/v1/policies", headers=admin, json={
                "source": JOURNEY_POLICY.format(segment=segment), "activate": True})
            assert r.status_code == 201, r.text
        invoices = [("J-E1", "EUR", 10_000), ("J-E2", "EUR", 20_000), ("J-E3", "EUR", 30_000),
                    ("J-U1", "USD", 40_000), ("J-U2", "USD", 50_000)]
        ids = {}
        for number, currency, amount in invoices:
            r = await http.post(f"{inv}/v1/invoices", headers=source, json={
                "external_id": number, "number": number, "customer": j1, "currency": currency, "amount_minor": amount,
                "issue_date": str(due - timedelta(days=30)), "due_date": str(due)})
            assert r.status_code == 201, r.text
            ids[number] = r.json()["id"]

        async def cases():
            found = (await http.get(f"{dun}/v1/cases", headers=admin, params={"customer_id": "J1"})).json()
            return {c["currency"]: c for c in found if c["status"] in ("open", "legal")}

        found = await wait_for(lambda: _when(cases(), lambda c: sum(len(x["items"]) for x in c.values()) == 5), 60, 0.2,
                               "two cases with all five invoices")
        eur, usd = found["EUR"]["case_id"], found["USD"]["case_id"]

        # the dry run, from the command line: the due date will bring one reminder per currency
        env = dict(os.environ, DATABASE_URL=p.server_url, CLOCK_FILE=str(p.options.clock_file), COLUMNS="160")
        plan = subprocess.run([sys.executable, "-m", "tahsilat.cli", "dunning", "plan", "--tenant", "journey", "--date",
                               str(due), "--db-prefix", p.options.db_prefix], capture_output=True, text=True,
                              timeout=60, env=env)
        assert plan.returncode == 0, plan.stdout + plan.stderr
        rows = [line for line in plan.stdout.splitlines() if " J1 " in line]
        assert len(rows) == 2 and any("600.00 EUR" in r for r in rows) and any("900.00 USD" in r for r in rows), plan.stdout
        assert all(" due " in r and " email " in r for r in rows)
        bad = subprocess.run([sys.executable, "-m", "tahsilat.cli", "dunning", "plan", "--tenant", "journey", "--date",
                              "someday", "--db-prefix", p.options.db_prefix], capture_output=True, text=True, timeout=60,
                             env=env)
        assert bad.returncode == 2 and "not a date" in bad.stdout

        async def emails(n):
            got = await emails_to(http, p.sinks_url, j1["email"])
            return got if len(got) >= n else None

        # the due date: one reminder per currency, listing that currency's invoices
        clock.set(moment(0))
        got = await wait_for(lambda: emails(2), 60, 0.2, "one due-date reminder per currency")
        assert len(got) == 2
        assert {("J-E1" in m["text"], "J-U1" in m["text"]) for m in got} == {(True, False), (False, True)}
        assert all(("J-E3" in m["text"]) != ("J-U2" in m["text"]) for m in got)

        # J1 pays J-E1 and promises the rest of the EUR by the 9th day; USD is dunned at +7, EUR not
        r = await http.post(f"{inv}/v1/payments", headers=source, json={
            "external_id": "J-PAY1", "customer_id": "J1", "currency": "EUR", "amount_minor": 10_000,
            "invoice_refs": ["J-E1"]})
        assert r.status_code == 201, r.text
        await wait_for(lambda: _when(cases(), lambda c: c["EUR"]["open_minor"] == 50_000), 60, 0.2, "the EUR payment")
        r = await http.post(f"{dun}/v1/cases/{eur}/promises", headers=admin, json={
            "amount_minor": 50_000, "promised_date": str(due + timedelta(days=9)), "channel": "phone", "grace_days": 0})
        assert r.status_code == 201, r.text
        clock.set(moment(7))
        got = await wait_for(lambda: emails(3), 60, 0.2, "the USD +7 reminder")
        assert "J-U1" in got[-1]["text"] and "J-E2" not in got[-1]["text"]

        # the promise is broken: EUR resumes with the latest step due (+7), now listing what is left
        clock.set(moment(10, hour=8))
        broken = await wait_for(lambda: _typed(p, "PromiseToPayBroken", "journey"), 60, 0.2, "the broken promise")
        assert broken[0].data["paid_minor"] == 0
        got = await wait_for(lambda: emails(4), 60, 0.2, "EUR dunned again")
        assert "J-E2" in got[-1]["text"] and "J-E3" in got[-1]["text"] and "J-E1" not in got[-1]["text"]

        # J-U2 is disputed: the final USD notice lists J-U1 only
        r = await http.post(f"{dun}/v1/disputes", headers=admin, json={
            "customer_id": "J1", "invoice_id": ids["J-U2"], "reason_code": "quantity",
            "description": "half of the order never arrived"})
        assert r.status_code == 201, r.text
        clock.set(moment(14))
        got = await wait_for(lambda: emails(6), 60, 0.2, "the final notices")
        finals = got[-2:]
        usd_final = next(m for m in finals if "J-U1" in m["text"])
        assert "J-U2" not in usd_final["text"]

        # the legal step: both cases handed over with their case files; nothing more is sent
        clock.set(moment(21))
        escalated = await wait_for(lambda: _typed(p, "CaseEscalatedToLegal", "journey", 2), 60, 0.2, "the hand-over")
        files = {e.data["currency"]: e.data["case_file"] for e in escalated}
        assert [n["step"] for n in files["EUR"]["notices"]] == ["due", "overdue_7", "final_14"]
        assert [pr["status"] for pr in files["EUR"]["promises"]] == ["broken"]
        assert [(x["payment_ref"], x["amount_minor"]) for x in files["EUR"]["statement"]["payments"]][0][1] == 10_000
        assert [d["reason_code"] for d in files["USD"]["disputes"]] == ["quantity"]
        assert files["USD"]["statement"]["totals"]["open_minor"] == 90_000
        found = await cases()
        assert {c["status"] for c in found.values()} == {"legal"}
        r = await http.get(f"{dun}/v1/cases/{usd}/case-file", headers=admin, params={"format": "pdf"})
        assert r.status_code == 200 and r.content[:5] == b"%PDF-"
        clock.set(moment(30))
        await wait_for(lambda: _settled_outbox(http, p, admin), 30, 0.2, "nothing more in flight")
        assert len(await emails_to(http, p.sinks_url, j1["email"])) == 6


async def _when(coro, predicate):
    value = await coro
    try:
        return value if predicate(value) else None
    except (KeyError, IndexError, StopIteration):
        return None


async def _typed(p, event_type: str, tenant: str, n: int = 1):
    found = [e for e in await read_events(p.bootstrap, p.topics.dunning) if e.type == event_type and e.tenant_id == tenant]
    return found if len(found) >= n else None


async def _settled_outbox(http, p, admin) -> bool:
    held = await http.get(f"{p.url('dunning')}/v1/outbox/held", headers=admin)
    return held.status_code == 200 and held.json() == []


async def _risk_events(p, tenant: str, customer_id: str, event_type: str, n: int = 1):
    found = [e for e in await read_events(p.bootstrap, p.topics.risk)
             if e.type == event_type and e.tenant_id == tenant and e.data["customer_id"] == customer_id]
    return found if len(found) >= n else None


async def test_a_customer_paying_later_and_later_is_downgraded_dunned_harder_warned_and_held(platform):
    """#11: S1 pays later and later; risk downgrades it to D, dunning moves its open invoice to the
    high-risk (strict) schedule for the steps to come, an early warning fires on the jump in its
    delay, a new order takes it over its credit limit (hold), and a payment releases the hold."""
    p, clock = platform
    inv, dun, risk = p.url("invoicing"), p.url("dunning"), p.url("risk")
    tenant = "slowpay"
    admin = {"X-API-Key": await create_key(p.database_urls, tenant_id=tenant, role="admin")}
    source = {"X-API-Key": await create_key(p.database_urls, tenant_id=tenant, role="billing-source",
                                            source_name="erp", records=("invoices", "payments"))}
    s1 = customer("S1", "en", "UTC")
    today = clock.now().date()

    async def post(path: str, body: dict) -> dict:
        r = await http.post(f"{inv}{path}", headers=source, json=body)
        assert r.status_code == 201, r.text
        return r.json()

    async def open_case():
        found = (await http.get(f"{dun}/v1/cases", headers=admin, params={"customer_id": "S1"})).json()
        return next((c for c in found if c["status"] == "open" and any(i["number"] == "S-F" for i in c["items"])), None)

    async with httpx.AsyncClient(timeout=30) as http:
        # a new customer (grade B, the medium segment): its invoice due in 10 days gets the standard schedule
        await post("/v1/invoices", {"external_id": "S-F", "number": "S-F", "customer": s1, "currency": "EUR",
                                    "amount_minor": 150_000, "issue_date": str(today - timedelta(days=20)),
                                    "due_date": str(today + timedelta(days=10))})
        case = await wait_for(open_case, 60, 0.2, "S1's case")
        [item] = [i for i in case["items"] if i["number"] == "S-F"]
        assert item["policy"].startswith("standard@")

        # its history arrives: four invoices paid 5, 20, 45 and 70 days late, one 40 days overdue
        for k, late in enumerate((5, 20, 45, 70)):
            due = today - timedelta(days=200 - 40 * k)
            await post("/v1/invoices", {"external_id": f"S-H{k}", "number": f"S-H{k}", "customer": s1,
                                        "currency": "EUR", "amount_minor": 100_000,
                                        "issue_date": str(due - timedelta(days=30)), "due_date": str(due)})
            await post("/v1/payments", {"external_id": f"S-P{k}", "customer_id": "S1", "currency": "EUR",
                                        "amount_minor": 100_000, "invoice_refs": [f"S-H{k}"],
                                        "received_at": f"{due + timedelta(days=late)}T12:00:00+00:00"})
        await post("/v1/invoices", {"external_id": "S-E", "number": "S-E", "customer": s1, "currency": "EUR",
                                    "amount_minor": 100_000, "issue_date": str(today - timedelta(days=70)),
                                    "due_date": str(today - timedelta(days=40))})

        async def downgraded():  # with every payment and the overdue S-E folded in
            r = await http.get(f"{risk}/v1/customers/S1/risk", headers=admin)
            if r.status_code != 200:
                return None
            factors = {f["name"]: f for f in r.json()["factors"]}
            done = factors.get("recent_very_late", {}).get("value") == 2 and "max_days_overdue" in factors
            return r.json() if done and r.json()["grade"] == "D" else None

        assessment = await wait_for(downgraded, 60, 0.2, "S1 graded D")
        assert assessment["segment"] == "high"
        factors = {f["name"]: f for f in assessment["factors"]}
        assert factors["recent_very_late"]["explanation"] == "2 of the last 4 invoices paid more than 30 days late"
        assert factors["trend"]["points"] > 0  # later and later
        async def told():  # the store has D; its RiskAssessed may still be on its way out of the outbox
            found = await _risk_events(p, tenant, "S1", "RiskAssessed")
            return found if found and found[-1].data["grade"] == "D" else None

        grades = [e.data["grade"] for e in await wait_for(told, 60, 0.2, "RiskAssessed D for S1")]
        assert grades[0] == "B" and grades[-1] == "D"

        # dunning re-plans the steps to come on the strict schedule (SMS the day before, +3 ...)
        async def replanned():
            c = await open_case()
            item = next(i for i in c["items"] if i["number"] == "S-F") if c else None
            return item if item and item["policy"].startswith("strict@") else None

        item = await wait_for(replanned, 60, 0.2, "S-F on the strict schedule")
        planned = {s["step"] for s in item["steps"] if s["status"] == "scheduled"}
        assert {"pre_due_sms", "overdue_3"} <= planned

        # the jump in S1's delay (70 days against a norm of 23) raises an early warning
        async def delay_jump():
            found = await _risk_events(p, tenant, "S1", "EarlyWarningRaised") or []
            return [w for w in found if w.data["signal"] == "delay_jump"]

        [warning] = await wait_for(delay_jump, 60, 0.2, "the early warning")
        assert warning.data["evidence"]["days_late"] == 70
        listed = (await http.get(f"{risk}/v1/customers/S1/warnings", headers=admin)).json()
        assert "delay_jump" in {w["signal"] for w in listed}

        # a credit limit of 3,000.00 EUR: open are S-F 1,500 and S-E 1,000; a new order of 600 exceeds it
        r = await http.put(f"{risk}/v1/customers/S1/credit/limits/EUR", headers=admin, json={"limit_minor": 300_000})
        assert r.status_code == 200, r.text
        await post("/v1/invoices", {"external_id": "S-G", "number": "S-G", "customer": s1, "currency": "EUR",
                                    "amount_minor": 60_000, "issue_date": str(today),
                                    "due_date": str(today + timedelta(days=30))})
        [placed] = await wait_for(lambda: _risk_events(p, tenant, "S1", "CreditHoldPlaced"), 60, 0.2, "the hold")
        assert (placed.data["exposure_minor"], placed.data["limit_minor"]) == (310_000, 300_000)
        credit = (await http.get(f"{risk}/v1/customers/S1/credit", headers=admin)).json()
        assert credit["on_hold"] and credit["lines"][0]["headroom_minor"] == -10_000

        # S1 pays the overdue invoice: 2,100.00 open, the hold is released
        await post("/v1/payments", {"external_id": "S-PE", "customer_id": "S1", "currency": "EUR",
                                    "amount_minor": 100_000, "invoice_refs": ["S-E"]})
        [released] = await wait_for(lambda: _risk_events(p, tenant, "S1", "CreditHoldReleased"), 60, 0.2,
                                    "the hold released")
        assert (released.data["reason"], released.data["exposure_minor"]) == ("within_limit", 210_000)
        assert (await http.get(f"{risk}/v1/customers/S1/credit", headers=admin)).json()["on_hold"] is False
