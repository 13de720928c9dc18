"""Delivery under failure: one failing send affects no other, a provider's odd reply never causes
a second send, and a send interrupted before its outcome was recorded goes out again, counted."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse
from prometheus_client import REGISTRY

from shared.host import serve_in_process
from tests.integration.test_notifier import TENANT, notifier_running, sinks  # noqa: F401 - the fixture
from tests.support import wait_for

pytestmark = pytest.mark.integration


def plain_text_sms_gateway() -> tuple[FastAPI, list[dict]]:
    """An SMS provider that accepts (202) and answers in plain text, not JSON."""
    received: list[dict] = []
    app = FastAPI()

    @app.post("/sms")
    async def sms(request: Request) -> PlainTextResponse:
        received.append(await request.json())
        return PlainTextResponse("queued", status_code=202)

    return app, received


async def test_one_failing_send_affects_no_other_and_an_odd_reply_is_not_sent_twice(
        database, kafka_bootstrap, topic_prefix, sinks):  # noqa: F811
    gateway, received = plain_text_sms_gateway()
    night = datetime(2026, 3, 10, 22, 0, tzinfo=timezone.utc)  # 01:00 in Istanbul: everything waits for 08:00
    async with serve_in_process(gateway) as gateway_url, notifier_running(
            database, kafka_bootstrap, topic_prefix, sinks, start=night, sms_url=f"{gateway_url}/sms") as n:
        await n.upsert_customer("c1", email="ok@example.com.tr")
        await n.upsert_customer("c2", email="broken@example.com.tr")
        await n.upsert_customer("c3", phone="+905321112233")
        await n.request("c1", "k-email", number="INV-1")
        await n.request("c2", "k-broken", template="no_such_template")  # rendering it fails: a bug, not a send
        await n.request("c3", "k-sms", channel="sms")
        await wait_for(lambda: _deferred(n, ["k-email", "k-broken", "k-sms"]), message="all three deferred")
        n.clock.set(datetime(2026, 3, 11, 5, 5, tzinfo=timezone.utc))  # 08:05: one dispatch batch takes all three
        await wait_for(lambda: _all_attempted(n, ["k-email", "k-broken", "k-sms"]), message="all three tried")

        assert [m["rcpt_tos"] for m in await sinks.emails()] == [["ok@example.com.tr"]]
        assert [(s["to"], s["message_id"]) for s in received] == [("+905321112233", "k-sms")]
        sms = await n.notification("k-sms")
        assert (sms["status"], sms["provider_message_id"]) == ("sent", "k-sms")
        broken = await n.notification("k-broken")
        assert broken["status"] == "pending" and broken["attempts"] == 1
        assert broken["last_error"].startswith("unexpected error")
        # Later ticks retry only the broken one; nothing that went out goes out again.
        n.clock.set(n.clock.now() + timedelta(hours=1))
        await wait_for(lambda: _attempts(n, "k-broken", 2), message="the broken one retried")
        assert len(received) == 1 and len(await sinks.emails()) == 1


async def test_a_send_interrupted_before_its_outcome_was_recorded_goes_out_again_and_is_counted(
        database, kafka_bootstrap, topic_prefix, sinks):  # noqa: F811
    before = REGISTRY.get_sample_value("tahsilat_notifications_interrupted_total") or 0
    async with notifier_running(database, kafka_bootstrap, topic_prefix, sinks, send_lease_seconds=1) as n:
        await n.upsert_customer("c1", email="ayse@example.com.tr")
        # As a crash leaves it: claimed for sending, the provider maybe reached, the outcome never written.
        await n.app.state.pool.execute(
            "INSERT INTO notifications (tenant_id, notification_key, customer_id, case_id, step, channel, template,"
            " items, status, send_after, requested_at, claimed_at)"
            " VALUES ($1, 'k-crash', 'c1', 'case-1', 'due', 'email', 'reminder_due', '[]', 'sending', $2, $2,"
            " now() - interval '1 hour')", TENANT, n.clock.now())
        mails = await wait_for(lambda: sinks.emails_with_key("k-crash"), message="the interrupted email, again")
        assert len(mails) == 1
        row = await wait_for(lambda: _status(n, "k-crash", "sent"), message="recorded as sent")
        assert row["interrupted"] == 1
        assert (REGISTRY.get_sample_value("tahsilat_notifications_interrupted_total") or 0) == before + 1


async def _all_attempted(n, keys):
    rows = [await n.notification(k) for k in keys]
    return all(r is not None and r["attempts"] >= 1 for r in rows)


async def _deferred(n, keys):
    rows = [await n.notification(k) for k in keys]
    return all(r is not None and r["send_after"] > n.clock.now() for r in rows)


async def _attempts(n, key, count):
    row = await n.notification(key)
    return row["attempts"] >= count


async def _status(n, key, status):
    row = await n.notification(key)
    return row if row is not None and row["status"] == status else None


async def test_batches_in_flight_and_pooled_connections_send_each_notice_once(
        database, kafka_bootstrap, topic_prefix, sinks):  # noqa: F811
    """Many due at once, in batches of 3 with 4 in flight over 2 SMTP connections and 2 SMS requests at
    a time: every notice goes exactly once, and a busy mailbox (451) is retried on its own."""
    night = datetime(2026, 3, 10, 22, 0, tzinfo=timezone.utc)  # all wait for 08:00 in Istanbul, then go at once
    async with notifier_running(database, kafka_bootstrap, topic_prefix, sinks, start=night, send_batch_size=3,
                                send_batches_in_flight=4, smtp_max_connections=2, smtp_messages_per_connection=5,
                                sms_max_in_flight=2) as n:
        emails = [f"e{i}" for i in range(24)]
        texts = [f"s{i}" for i in range(8)]
        for c in emails:
            await n.upsert_customer(c, email=f"{c}@example.com.tr")
        for c in texts:
            await n.upsert_customer(c, phone=f"+9053200001{int(c[1:]):02d}")
        await n.upsert_customer("busy", email="someone@busy.example.com")
        for c in emails:
            await n.request(c, f"k-{c}")
        for c in texts:
            await n.request(c, f"k-{c}", channel="sms")
        await n.request("busy", "k-busy")
        keys = [f"k-{c}" for c in emails + texts + ["busy"]]
        await wait_for(lambda: _deferred(n, keys), timeout=30, message="all deferred to the morning")
        n.clock.set(datetime(2026, 3, 11, 5, 5, tzinfo=timezone.utc))
        await wait_for(lambda: _all_attempted(n, keys), timeout=30, message="every notice tried")

        got = [m["headers"].get("X-Tahsilat-Notification-Key") for m in await sinks.emails()]
        assert sorted(got) == sorted(f"k-{c}" for c in emails)  # each once, the busy one not at all
        assert sorted(s["message_id"] for s in await sinks.sms()) == sorted(f"k-{c}" for c in texts)
        for key in keys[:-1]:
            row = await n.notification(key)
            assert (row["status"], row["attempts"]) == ("sent", 1), key
        busy = await n.notification("k-busy")
        assert (busy["status"], busy["attempts"]) == ("pending", 1) and "451" in busy["last_error"]
        sent = await wait_for(lambda: _sent_events(n, len(keys) - 1), message="a NotificationSent per notice")
        assert sorted(e.data["notification_key"] for e in sent) == sorted(keys[:-1])


async def _sent_events(n, count):
    sent = await n.events("NotificationSent")
    return sent if len(sent) >= count else None
