"""The notifier against a real broker, a real database and the provider sinks (in-process):
language, channels, idempotency on redelivery, quiet hours, unsubscribe, API-key scoping."""
from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from fastapi import FastAPI

from services.notifier.bootstrap import build
from services.notifier.settings import NotifierSettings
from shared.clock import ManualClock
from shared.contract import CustomerUpserted, Envelope, NotificationRequested, Topics, new_envelope
from shared.contract.events import NoticeItem
from shared.kafka import start_producer
from tahsilat.embedded import free_port
from tahsilat.sinks import run_sinks
from tahsilat.streams import read_events
from shared.host import serve_in_process
from tests.support import FAST_KAFKA, api_key, client, wait_for

pytestmark = pytest.mark.integration

TENANT = "t1"
ISTANBUL = ZoneInfo("Europe/Istanbul")
TR = json.loads((Path(__file__).resolve().parents[2] / "services/notifier/templates/messages/tr.json")
                .read_text(encoding="utf-8"))
START = datetime(2026, 3, 10, 10, 0, tzinfo=timezone.utc)  # 13:00 in Istanbul: inside contact hours


# -- provider sinks, in-process ---------------------------------------------------------------
@dataclass
class Sinks:
    smtp_port: int
    http_port: int
    http: httpx.AsyncClient

    async def emails(self, to: str | None = None) -> list[dict[str, Any]]:
        return (await self.http.get("/emails", params={"to": to} if to else {})).json()

    async def emails_with_key(self, key: str) -> list[dict[str, Any]]:
        return [m for m in await self.emails() if m["headers"].get("X-Tahsilat-Notification-Key") == key]

    async def sms(self, to: str | None = None) -> list[dict[str, Any]]:
        return (await self.http.get("/sms", params={"to": to} if to else {})).json()


@pytest.fixture
async def sinks(tmp_path: Path) -> AsyncIterator[Sinks]:
    smtp_port, http_port = free_port(), free_port()
    task = asyncio.create_task(run_sinks("127.0.0.1", smtp_port, http_port, tmp_path / "sinks"))
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}", timeout=5) as http:

            async def healthy() -> bool:
                if task.done():
                    task.result()  # raises what stopped the sinks
                    raise AssertionError("sinks stopped during start-up")
                try:
                    return (await http.get("/health")).status_code == 200
                except httpx.TransportError:
                    return False

            await wait_for(healthy, timeout=10, interval=0.05, message="the sinks to answer /health")
            yield Sinks(smtp_port, http_port, http)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# -- the notifier, in-process -------------------------------------------------------------------
@dataclass
class Notifier:
    app: FastAPI
    url: str
    clock: ManualClock
    topics: Topics
    producer: Any
    bootstrap: str

    async def publish(self, topic: str, env: Envelope) -> None:
        await self.producer.send_and_wait(topic, env.model_dump_json().encode(), key=env.key.encode())

    async def upsert_customer(self, customer_id: str, *, email: str | None = None, phone: str | None = None,
                              language: str = "tr", tz: str = "Europe/Istanbul") -> Envelope:
        payload = CustomerUpserted(customer_id=customer_id, name=f"Müşteri {customer_id}", language=language,
                                   timezone=tz, email=email, phone=phone)
        env = new_envelope(payload, source="invoicing", tenant_id=TENANT, subject=customer_id, time=self.clock.now())
        await self.publish(self.topics.invoicing, env)
        # NotificationRequested comes on another topic: if it overtook the contact, the row would wait a
        # (manual-clock) minute for it. Dunning only asks once the customer exists, so wait the same way.
        await wait_for(lambda: self.contact(customer_id), message=f"contact {customer_id} stored")
        return env

    async def request(self, customer_id: str, key: str, *, channel: str = "email",
                      template: str = "reminder_overdue", number: str = "INV-2026-001") -> Envelope:
        payload = NotificationRequested(
            customer_id=customer_id, notification_key=key, case_id=f"case-{customer_id}", step=template,
            channel=channel, template=template, requested_at=self.clock.now(),
            items=[NoticeItem(invoice_id=f"inv-{number}", number=number, currency="TRY",
                              open_amount_minor=125_000, due_date=date(2026, 2, 28))],
        )
        env = new_envelope(payload, source="dunning", tenant_id=TENANT, subject=f"case-{customer_id}",
                           time=self.clock.now())
        await self.publish(self.topics.dunning, env)
        return env

    async def contact(self, customer_id: str):
        return await self.app.state.pool.fetchrow(
            "SELECT * FROM contacts WHERE tenant_id = $1 AND customer_id = $2", TENANT, customer_id)

    async def notification(self, key: str):
        return await self.app.state.pool.fetchrow(
            "SELECT * FROM notifications WHERE tenant_id = $1 AND notification_key = $2", TENANT, key)

    async def events(self, event_type: str, key: str | None = None) -> list[Envelope]:
        return [e for e in await read_events(self.bootstrap, self.topics.notifier)
                if e.type == event_type and (key is None or e.data["notification_key"] == key)]


@contextlib.asynccontextmanager
async def notifier_running(database: str, kafka_bootstrap: str, topic_prefix: str, sinks: Sinks,
                           start: datetime = START, **settings_over: Any) -> AsyncIterator[Notifier]:
    port = free_port()  # known before start: the links and callbacks the service hands out carry it
    settings = NotifierSettings(**{
        "database_url": database, "kafka_bootstrap_servers": kafka_bootstrap, "topic_prefix": topic_prefix,
        "kafka_partitions": 2, "poll_interval_seconds": 0.1, "smtp_port": sinks.smtp_port,
        "sms_url": f"http://127.0.0.1:{sinks.http_port}/sms", "public_base_url": f"http://127.0.0.1:{port}",
        "webhook_allow_private_networks": True, **FAST_KAFKA, **settings_over,
    })
    clock = ManualClock(start)
    app = build(settings, clock)
    async with serve_in_process(app, port=port) as url:
        producer = await start_producer(kafka_bootstrap)
        try:
            yield Notifier(app, url, clock, Topics(topic_prefix), producer, kafka_bootstrap)
        finally:
            await producer.stop()


async def _of_customer(events, customer_id: str) -> list[Envelope]:
    return [e for e in await events if e.data["customer_id"] == customer_id]


# -- tests ------------------------------------------------------------------------------------
async def test_email_in_customers_language_sent_once_despite_redelivery(database, kafka_bootstrap, topic_prefix, sinks,
                                                                       tmp_path):
    async with notifier_running(database, kafka_bootstrap, topic_prefix, sinks) as n:
        await n.upsert_customer("c1", email="ayse@example.com.tr", phone="+905321234567")
        key = "case-c1:reminder_overdue:email"
        first = await n.request("c1", key)

        mails = await wait_for(lambda: sinks.emails_with_key(key), message="the reminder email")
        assert len(mails) == 1
        mail = mails[0]
        assert mail["rcpt_tos"] == ["ayse@example.com.tr"]
        assert mail["subject"] == TR["reminder_overdue"]["subject"]
        assert mail["headers"]["Content-Language"] == "tr"
        assert mail["language"] == "tr"
        # .strip(): the long header is folded on the wire and the sink keeps the unfolded leading space
        link = mail["headers"]["List-Unsubscribe"].strip()
        assert link.startswith(f"<{n.url}/v1/unsubscribe/") and link.endswith(">")
        assert mail["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert "INV-2026-001" in mail["text"] and TR["greeting"] in mail["text"]
        # RFC 5322: one Date (the send time, by the service's clock); Content-Language once
        raw = email.message_from_bytes((tmp_path / "sinks" / "mailbox" / f"{mail['id']}.eml").read_bytes(),
                                       policy=email.policy.default)
        assert len(raw.get_all("Date")) == 1 and raw["Date"].datetime == n.clock.now().replace(microsecond=0)
        assert raw.get_all("Content-Language") == ["tr"] and len(raw.get_all("Message-ID")) == 1

        sent = await wait_for(lambda: n.events("NotificationSent", key), message="NotificationSent on the notifier topic")
        assert len(sent) == 1
        assert sent[0].data["language"] == "tr" and sent[0].data["channel"] == "email"
        assert sent[0].data["customer_id"] == "c1" and sent[0].tenant_id == TENANT

        # Redelivery of the same envelope, and a retried request (new event id, same idempotency key).
        await n.publish(n.topics.dunning, first)
        await n.request("c1", key)
        # Sentinel: same customer, hence same key and partition, so it is consumed after both of them.
        sentinel = "case-c1:final_notice:email"
        await n.request("c1", sentinel, template="final_notice")
        await wait_for(lambda: n.events("NotificationSent", sentinel), message="the sentinel's NotificationSent")

        assert len(await sinks.emails_with_key(key)) == 1
        assert [m["subject"] for m in await sinks.emails_with_key(sentinel)] == [TR["final_notice"]["subject"]]
        assert len(await n.events("NotificationSent", key)) == 1
        assert len(await sinks.emails()) == 2
        assert (await n.notification(key))["attempts"] == 1


async def test_sms_goes_to_the_customers_phone_with_opt_out_text(database, kafka_bootstrap, topic_prefix, sinks):
    async with notifier_running(database, kafka_bootstrap, topic_prefix, sinks) as n:
        await n.upsert_customer("c2", email="mehmet@example.com.tr", phone="+905329876543")
        key = "case-c2:reminder_overdue:sms"
        await n.request("c2", key, channel="sms", number="INV-2026-042")

        sms = await wait_for(lambda: sinks.sms("+905329876543"), message="the SMS")
        assert len(sms) == 1
        assert sms[0]["message_id"] == key
        assert sms[0]["text"].startswith(TR["reminder_overdue"]["sms"])
        assert "₺1.250,00" in sms[0]["text"]  # consolidated: how many invoices and the total, not every number
        assert sms[0]["text"].endswith(TR["sms_stop"])
        sent = await wait_for(lambda: n.events("NotificationSent", key), message="NotificationSent for the SMS")
        assert sent[0].data["channel"] == "sms" and sent[0].data["language"] == "tr"
        assert await sinks.emails() == []


async def test_quiet_hours_defer_until_morning_in_customers_timezone(database, kafka_bootstrap, topic_prefix, sinks):
    evening = datetime(2026, 3, 10, 22, 30, tzinfo=ISTANBUL)
    async with notifier_running(database, kafka_bootstrap, topic_prefix, sinks, start=evening) as n:
        collector = await api_key(n.app, TENANT, "collector")
        await n.upsert_customer("c3", email="zeynep@example.com.tr")
        key = "case-c3:reminder_overdue:email"
        await n.request("c3", key)

        morning = datetime(2026, 3, 11, 8, 0, tzinfo=ISTANBUL)
        async with client(n.url, collector) as api:

            async def deferred() -> dict | None:
                rows = (await api.get("/v1/notifications", params={"customer_id": "c3"})).json()
                if rows and datetime.fromisoformat(rows[0]["send_after"]) == morning:
                    return rows[0]
                return None

            row = await wait_for(deferred, message="the notification deferred to 08:00 Istanbul time")
            assert row["status"] == "pending" and row["sent_at"] is None
            assert await sinks.emails() == []

            n.clock.set(datetime(2026, 3, 11, 8, 5, tzinfo=ISTANBUL))
            mails = await wait_for(lambda: sinks.emails_with_key(key), message="the email in the morning")
            assert len(mails) == 1 and mails[0]["rcpt_tos"] == ["zeynep@example.com.tr"]

            async def sent() -> dict | None:
                rows = (await api.get("/v1/notifications", params={"customer_id": "c3"})).json()
                return rows[0] if rows and rows[0]["status"] == "sent" else None

            row = await wait_for(sent, message="status sent")
            assert datetime.fromisoformat(row["sent_at"]) == datetime(2026, 3, 11, 8, 5, tzinfo=ISTANBUL)
            assert row["language"] == "tr"


async def test_unsubscribe_suppresses_later_emails(database, kafka_bootstrap, topic_prefix, sinks):
    async with notifier_running(database, kafka_bootstrap, topic_prefix, sinks) as n:
        await n.upsert_customer("c4", email="ali@example.com.tr", phone="+905551112233")
        # the link of the first email: signed, naming the tenant and customer
        await n.request("c4", "case-c4:reminder_pre_due:email", template="reminder_pre_due")
        first = await wait_for(lambda: sinks.emails_with_key("case-c4:reminder_pre_due:email"), message="an email")
        token = first[0]["headers"]["List-Unsubscribe"].strip().strip("<>").rsplit("/", 1)[1]
        assert (await n.app.state.pool.fetchval("SELECT count(*) FROM contacts WHERE unsubscribe_token = $1", token)) == 0
        forged = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
        async with client(n.url) as anonymous:  # the link in the email needs no API key
            assert (await anonymous.get("/v1/unsubscribe/no-such-token")).status_code == 404
            assert (await anonymous.post("/v1/unsubscribe/no-such-token")).status_code == 404
            assert (await anonymous.post(f"/v1/unsubscribe/{forged}")).status_code == 404
            # A mail scanner fetching the link changes nothing: the page asks.
            for _ in range(3):
                page = await anonymous.get(f"/v1/unsubscribe/{token}")
                assert page.status_code == 200 and f'method="post" action="/v1/unsubscribe/{token}"' in page.text
            assert (await n.contact("c4"))["email_opt_out"] is False
            # RFC 8058 one-click: the mail client POSTs List-Unsubscribe=One-Click to the header's URL.
            done = await anonymous.post(f"/v1/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"})
            assert done.status_code == 200 and "no more collection emails" in done.text
            assert (await anonymous.post(f"/v1/unsubscribe/{token}")).status_code == 200  # twice: the same
            page = await anonymous.get(f"/v1/unsubscribe/{token}")
            assert "no more collection emails" in page.text and "<form" not in page.text
        assert (await n.contact("c4"))["email_opt_out"] is True
        opted = await wait_for(lambda: _of_customer(n.events("ContactOptedOut"), "c4"), message="ContactOptedOut")
        assert [(e.data["channel"], e.data["source"]) for e in opted] == [("email", "unsubscribe_link")]

        key = "case-c4:reminder_overdue:email"
        await n.request("c4", key)
        failed = await wait_for(lambda: n.events("NotificationFailed", key), message="NotificationFailed")
        assert len(failed) == 1
        assert failed[0].data["reason"] == "customer unsubscribed from email"
        assert failed[0].data["channel"] == "email" and failed[0].data["code"] == "opted_out"
        row = await n.notification(key)
        assert row["status"] == "suppressed" and row["last_error"] == "customer unsubscribed from email"
        assert len(await sinks.emails()) == 1  # the first one only
        assert len(await n.events("NotificationSent")) == 1


async def test_api_keys_are_checked_and_scoped_to_their_tenant(database, kafka_bootstrap, topic_prefix, sinks):
    async with notifier_running(database, kafka_bootstrap, topic_prefix, sinks) as n:
        await n.upsert_customer("c5", email="can@example.com.tr")
        key = "case-c5:reminder_overdue:email"
        await n.request("c5", key)
        await wait_for(lambda: sinks.emails_with_key(key), message="the email")

        collector = await api_key(n.app, TENANT, "collector")
        other_tenant = await api_key(n.app, "t2", "analytics")
        async with client(n.url, collector) as api:
            rows = (await api.get("/v1/notifications")).json()
            assert [(r["notification_key"], r["customer_id"], r["status"]) for r in rows] == [(key, "c5", "sent")]
        async with client(n.url, "thk_000000000000_not-a-secret") as bad:
            assert (await bad.get("/v1/notifications")).status_code == 401
        async with client(n.url, collector[:-2] + "xx") as wrong_secret:
            assert (await wrong_secret.get("/v1/notifications")).status_code == 401
        async with client(n.url) as anonymous:
            assert (await anonymous.get("/v1/notifications")).status_code == 401
        async with client(n.url, other_tenant) as t2:
            response = await t2.get("/v1/notifications")
            assert response.status_code == 200 and response.json() == []
            assert (await t2.get("/v1/notifications", params={"customer_id": "c5"})).json() == []
