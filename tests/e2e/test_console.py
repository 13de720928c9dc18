"""The console in headless Chromium over the whole platform as separate processes: a collector
signs in with the keyboard, works the top task of their worklist, takes a promise, and the
promise pauses dunning; the manager's dashboard shows the promise; a Persian collector gets the
pages right to left; a Persian customer opens the portal from the link in a captured email and
disputes an invoice, which dunning then leaves out. Screenshots of each page go to
test-artifacts/."""
from __future__ import annotations

import re
from datetime import datetime, time, timedelta, timezone

import httpx
import pytest

from tahsilat.keys import create_key
from tests.support import module_platform, wait_for

pytestmark = pytest.mark.e2e

START = datetime(2026, 3, 1, 10, 0, tzinfo=timezone.utc)
TENANT = "konsol"


@pytest.fixture(scope="module")
def platform(kafka_bootstrap, pg_server, tmp_path_factory):
    yield from module_platform(kafka_bootstrap, pg_server, tmp_path_factory, "con", START, partitions=2)


async def emails_to(http: httpx.AsyncClient, p, address: str) -> list[dict]:
    return (await http.get(f"{p.sinks_url}/emails", params={"to": address})).json()


async def unlabelled_fields(page) -> list[str]:
    """Form fields a screen reader could not name."""
    return await page.evaluate("""() => [...document.querySelectorAll('input, select, textarea')]
        .filter(el => el.type !== 'hidden' && el.labels.length === 0 && !el.getAttribute('aria-label'))
        .map(el => el.name || el.id)""")


async def test_a_collector_takes_a_promise_in_the_browser_that_pauses_dunning_and_the_manager_sees_it(
        platform, browser, artifacts):
    p, clock = platform
    console = p.url("console")
    admin = {"X-API-Key": await create_key(p.database_urls, tenant_id=TENANT, role="admin")}
    source = {"X-API-Key": await create_key(p.database_urls, tenant_id=TENANT, role="billing-source",
                                            source_name="erp")}
    ayse_key = await create_key(p.database_urls, tenant_id=TENANT, role="collector")
    dariush_key = await create_key(p.database_urls, tenant_id=TENANT, role="collector")
    dunning = p.url("dunning")
    async with httpx.AsyncClient(timeout=30) as http:
        for cid, name, key, language in (("ayse", "Ayşe Yılmaz", ayse_key, "en"),
                                         ("dariush", "داریوش", dariush_key, "fa")):
            r = await http.put(f"{dunning}/v1/collectors/{cid}", headers=admin, json={
                "name": name, "key_id": key.split("_")[1], "language": language, "timezone": "UTC",
                "capacity": 1 if cid == "ayse" else 0})
            assert r.status_code == 200, r.text
        r = await http.put(f"{dunning}/v1/desk/settings", headers=admin, json={
            "assignment": "round_robin", "high_amount": {"EUR": "1000.00"}, "unanswered_notices": 0})
        assert r.status_code == 200, r.text
        # C1 owes 2,500.00 (a call task); C2 owes 300.00 (no task): C2's notices show when dunning has run
        for cid, amount in (("C1", 250_000), ("C2", 30_000)):
            r = await http.post(f"{p.url('invoicing')}/v1/invoices", headers=source, json={
                "external_id": f"INV-{cid}", "currency": "EUR", "amount_minor": amount, "issue_date": "2026-02-03",
                "due_date": "2026-03-05", "customer": {"id": cid, "name": f"Customer {cid}", "language": "en",
                                                        "timezone": "UTC", "email": f"{cid.lower()}@example.com"}})
            assert r.status_code == 201, r.text

        clock.set(datetime(2026, 3, 2, 10, 0, tzinfo=timezone.utc))  # a Monday: the pre-due notices go out

        async def ayse_has_a_task():
            r = await http.get(f"{dunning}/v1/worklist", headers={"X-API-Key": ayse_key})
            return r.json() if r.status_code == 200 and r.json() else None

        [task] = await wait_for(ayse_has_a_task, 60, 0.2, "the high-amount call task for Ayşe")
        assert (task["customer_id"], task["rule"]) == ("C1", "high_amount")
        await wait_for(lambda: emails_to(http, p, "c2@example.com"), 60, 0.2, "C2's pre-due email")

        # The manager's dashboard before anyone calls
        manager = await browser.new_context()
        boss = await manager.new_page()
        await boss.goto(f"{console}/signin")
        await boss.fill("#key", admin["X-API-Key"])
        async with boss.expect_navigation():
            await boss.click("#signin button[type=submit]")
        await boss.goto(f"{console}/dashboard?period=2026-03")
        assert await boss.title() == "Collections dashboard · Tahsilat console"
        assert (await boss.inner_text("#promises-taken .value")).strip() == "0"
        assert await boss.locator("figure.chart svg").count() >= 1  # the aging trend, drawn on the server
        await boss.screenshot(path=artifacts / "dashboard-before.png", full_page=True)

        # The collector signs in with the keyboard alone, and works the top task
        collector = await browser.new_context()
        page = await collector.new_page()
        await page.goto(console)
        assert page.url.endswith("/signin")
        assert await unlabelled_fields(page) == []
        await page.screenshot(path=artifacts / "signin.png", full_page=True)
        for _ in range(6):
            if await page.evaluate("document.activeElement.id") == "key":
                break
            await page.keyboard.press("Tab")
        assert await page.evaluate("document.activeElement.id") == "key"
        await page.keyboard.type(ayse_key)
        async with page.expect_navigation():
            await page.keyboard.press("Enter")
        assert page.url.endswith("/worklist")
        assert await page.title() == "My worklist · Tahsilat console"
        rows = page.locator("#tasks tbody tr")
        assert await rows.count() == 1
        assert "€2,500.00" in await rows.first.inner_text() and "high amount" in await rows.first.inner_text()
        await page.screenshot(path=artifacts / "worklist.png", full_page=True)

        async with page.expect_navigation():
            await rows.first.locator("a").click()
        assert await page.title() == "Customer C1 · Tahsilat console"
        assert await unlabelled_fields(page) == []
        assert "INV-C1" in await page.inner_text("#open-items") or "€2,500.00" in await page.inner_text("#open-items")
        await page.screenshot(path=artifacts / "customer.png", full_page=True)
        await page.select_option("#outcome", "promise_taken")
        await page.fill("#promise_amount", "2500.00")
        await page.fill("#promise_date", "2026-03-20")
        await page.fill("#note", "Pays on the 20th, by bank transfer")
        async with page.expect_navigation():
            await page.click("#outcome-form button[type=submit]")
        assert "The promise is recorded" in await page.inner_text("[role=status]")
        assert "€2,500.00" in await page.inner_text("#arrangements")
        assert "Pays on the 20th" in await page.inner_text("#contact-log")
        await page.screenshot(path=artifacts / "customer-promise-taken.png", full_page=True)

        # The promise is the same one a program would have recorded, and it pauses dunning: on the
        # due date and a week later C2 is reminded, C1 is not
        [promise] = (await http.get(f"{dunning}/v1/promises", headers=admin, params={"customer_id": "C1"})).json()
        assert (promise["amount_minor"], promise["promised_date"], promise["status"]) == (250_000, "2026-03-20", "open")
        for day, sent in ((5, 2), (12, 3)):
            clock.set(datetime(2026, 3, day, 10, 0, tzinfo=timezone.utc))
            await wait_for(lambda: _at_least(emails_to(http, p, "c2@example.com"), sent), 60, 0.2,
                           f"C2's email of 2026-03-{day:02d}")
        assert len(await emails_to(http, p, "c1@example.com")) == 1  # only the pre-due reminder
        worklist = (await http.get(f"{dunning}/v1/worklist", headers={"X-API-Key": ayse_key})).json()
        assert [t["customer_id"] for t in worklist] == ["C2"]  # C2's SMS had no number to go to; C1 is done

        # The manager sees the promise on the dashboard
        await boss.reload()
        assert (await boss.inner_text("#promises-taken .value")).strip() == "1"
        assert "Ayşe Yılmaz" in await boss.inner_text("#collectors") or "ayse" in await boss.inner_text("#collectors")
        await boss.screenshot(path=artifacts / "dashboard-after.png", full_page=True)

        # A Persian collector: the same pages, right to left, with Persian digits
        farsi = await browser.new_context()
        fa = await farsi.new_page()
        await fa.goto(f"{console}/signin")
        await fa.fill("#key", dariush_key)
        async with fa.expect_navigation():
            await fa.click("#signin button[type=submit]")
        assert await fa.get_attribute("html", "dir") == "rtl" and await fa.get_attribute("html", "lang") == "fa"
        await fa.screenshot(path=artifacts / "worklist-fa.png", full_page=True)
        await fa.goto(f"{console}/customers/C1")
        assert "۲٬۵۰۰٫۰۰" in await fa.inner_text("#arrangements")  # the promise, in Persian digits
        assert await unlabelled_fields(fa) == []
        await fa.screenshot(path=artifacts / "customer-fa.png", full_page=True)
        for context in (manager, collector, farsi):
            await context.close()


async def _at_least(coro, n):
    items = await coro
    return items if len(items) >= n else None


async def test_a_persian_customer_disputes_an_invoice_from_the_link_in_their_email_and_dunning_pauses_it(
        platform, browser, artifacts):
    p, clock = platform
    tenant = "portalco"
    source = {"X-API-Key": await create_key(p.database_urls, tenant_id=tenant, role="billing-source",
                                            source_name="erp")}
    admin = {"X-API-Key": await create_key(p.database_urls, tenant_id=tenant, role="admin")}
    dunning = p.url("dunning")
    now = clock.now()
    due = (now + timedelta(days=5)).date()
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.put(f"{dunning}/v1/portal-settings", headers=admin, json={"payment_instructions": {
            "fa": "واریز به شبا IR06 0170 0000 0012 3456 7890 01 با ذکر شماره فاکتور"}})
        assert r.status_code == 200, r.text
        customer = {"id": "F1", "name": "شرکت آریا", "language": "fa", "timezone": "Asia/Tehran",
                    "email": "f1@example.com"}
        for number, amount in (("F-1", 200_000), ("F-2", 150_000)):
            r = await http.post(f"{p.url('invoicing')}/v1/invoices", headers=source, json={
                "external_id": number, "currency": "EUR", "amount_minor": amount, "customer": customer,
                "issue_date": (due - timedelta(days=30)).isoformat(), "due_date": due.isoformat()})
            assert r.status_code == 201, r.text

        async def both_in_dunning():
            r = await http.get(f"{dunning}/v1/cases", headers=admin, params={"customer_id": "F1"})
            return r.json() and len(r.json()[0]["items"]) == 2

        await wait_for(both_in_dunning, 60, 0.2, "both invoices in dunning")
        clock.set(datetime.combine(due - timedelta(days=3), time(10), timezone.utc))  # the pre-due reminder
        [mail] = await wait_for(lambda: emails_to(http, p, customer["email"]), 60, 0.2, "the Persian reminder")
        assert "F-1" in mail["text"] and "F-2" in mail["text"]
        link = re.search(r"https?://\S+/p/\S+", mail["text"]).group(0)
        assert link.startswith(p.url("console"))

        page = await browser.new_page()
        try:
            await page.goto(link)
            assert await page.get_attribute("html", "dir") == "rtl" and await page.get_attribute("html", "lang") == "fa"
            assert await page.title() == "حساب شما"
            items = await page.inner_text("#items-EUR")
            assert "F-1" in items and "F-2" in items and "۲٬۰۰۰٫۰۰" in items  # Persian digits
            assert "IR06 0170" in await page.inner_text("#payment-instructions")
            assert await unlabelled_fields(page) == []
            await page.screenshot(path=artifacts / "portal-fa.png", full_page=True)
            await page.select_option(".dispute-form select[name=dispute_invoice_id]", label="F-1")
            await page.select_option(".dispute-form select[name=dispute_reason_code]", "not_received")
            await page.fill(".dispute-form textarea[name=dispute_reason]", "کالای این فاکتور هنوز نرسیده است")
            async with page.expect_navigation():
                await page.click(".dispute-form button[type=submit]")
            assert "اعتراض شما ثبت شد" in await page.inner_text("#portal-flash")
            assert "مورد اعتراض" in await page.inner_text("#items-EUR")
            await page.screenshot(path=artifacts / "portal-fa-disputed.png", full_page=True)
        finally:
            await page.close()

        [dispute] = (await http.get(f"{dunning}/v1/disputes", headers=admin, params={"customer_id": "F1"})).json()
        assert (dispute["origin"], dispute["reason_code"], dispute["status"]) == ("portal", "not_received", "open")

        # on the due date the reminder lists F-2 only: the disputed invoice is paused
        clock.set(datetime.combine(due, time(10), timezone.utc))
        mails = await wait_for(lambda: _at_least(emails_to(http, p, customer["email"]), 2), 60, 0.2,
                               "the due-date reminder")
        [reminder] = [m for m in mails if m["subject"] != mail["subject"]]
        assert "F-2" in reminder["text"] and "F-1" not in reminder["text"]
