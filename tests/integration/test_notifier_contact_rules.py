"""The notifier's contact rules, opt-outs and delivery tracking against a real broker, a real
database and the provider sinks over TCP (SMTP, and SMS in the Twilio request shape with signed
status callbacks): the contact cap, weekends and holidays, language fallback, preferences,
suppressions, STOP and START in four languages, provider webhooks (valid, forged, stale)."""
from __future__ import annotations

import json
import time
from datetime import datetime, timedelta
from typing import Any

import pytest

from services.notifier.domain.signatures import sign, twilio_signature, verify
from tests.integration.test_notifier import ISTANBUL, START, TENANT, notifier_running, sinks  # noqa: F401 - fixture
from tests.support import api_key, client, wait_for

pytestmark = pytest.mark.integration

SMS_TOKEN = "sink-auth-token"
EMAIL_SECRET = "email-webhook-secret-0123456789"
TWILIO = {"sms_provider": "twilio", "sms_account_sid": "ACsink", "sms_auth_token": SMS_TOKEN,
          "sms_from": "+15550100100", "email_webhook_secret": EMAIL_SECRET}


def _twilio(s) -> dict[str, Any]:
    return {**TWILIO, "sms_api_base": f"http://127.0.0.1:{s.http_port}"}


async def _history(api, key: str) -> list[str]:
    return [h["status"] for h in (await api.get(f"/v1/notifications/{key}")).json()["history"]]


async def _status(n, key: str, *statuses: str):
    async def check():
        row = await n.notification(key)
        return row if row is not None and row["status"] in statuses else None
    return await wait_for(check, message=f"{key} {'/'.join(statuses)}")


async def test_the_contact_cap_moves_a_message_to_when_the_oldest_leaves_the_window(
        database, kafka_bootstrap, topic_prefix, sinks):
    async with notifier_running(database, kafka_bootstrap, topic_prefix, sinks) as n:
        admin, collector = await api_key(n.app, TENANT, "admin"), await api_key(n.app, TENANT, "collector")
        async with client(n.url, admin) as api:
            r = await api.put("/v1/settings", json={"contact_cap_messages": 2, "contact_cap_days": 7})
            assert r.status_code == 200 and r.json()["contact_cap_messages"] == 2
        await n.upsert_customer("cap", email="cap@example.com.tr", phone="+905321110000")
        await n.request("cap", "k1")
        await _status(n, "k1", "sent")
        await n.request("cap", "k2", channel="sms")  # across channels
        await _status(n, "k2", "sent")
        first_sent = (await n.notification("k1"))["sent_at"]
        await n.request("cap", "k3", template="final_notice")
        row = await wait_for(lambda: _deferred(n, "k3"), message="the third message deferred by the cap")
        assert row["send_after"] == first_sent + timedelta(days=7)
        assert row["deferred_reason"] == "contact cap: 2 messages in 7 days"
        async with client(n.url, collector) as api:
            assert await _history(api, "k3") == ["requested", "deferred"]
        assert len(await sinks.emails()) == 1

        n.clock.set(first_sent + timedelta(days=7, minutes=1))
        await _status(n, "k3", "sent")
        assert len(await sinks.emails_with_key("k3")) == 1
        async with client(n.url, collector) as api:
            assert await _history(api, "k3") == ["requested", "deferred", "sent"]


async def _deferred(n, key: str):
    row = await n.notification(key)
    return row if row is not None and row["status"] == "pending" and row["deferred_reason"] else None


async def test_weekends_and_holidays_are_skipped_in_the_customers_timezone(
        database, kafka_bootstrap, topic_prefix, sinks):
    friday_night = datetime(2026, 3, 13, 22, 0, tzinfo=ISTANBUL)
    async with notifier_running(database, kafka_bootstrap, topic_prefix, sinks, start=friday_night) as n:
        admin = await api_key(n.app, TENANT, "admin")
        async with client(n.url, admin) as api:
            r = await api.put("/v1/settings", json={"excluded_weekdays": [6, 7], "holidays": ["2026-03-16"],
                                                    "allowed_send_start": "09:30", "allowed_send_end": "18:00"})
            assert r.status_code == 200, r.text
            bad = await api.put("/v1/settings", json={"allowed_send_start": "18:00", "allowed_send_end": "09:00"})
            assert bad.status_code == 422 and "allowed_send_end" in bad.text
            bad = await api.put("/v1/settings", json={"excluded_weekdays": [8]})
            assert bad.status_code == 422 and bad.json()["problems"][0]["field"] == "excluded_weekdays"
        await n.upsert_customer("wk", email="wk@example.com.tr")
        await n.request("wk", "wk1")
        row = await wait_for(lambda: _deferred(n, "wk1"), message="deferred past the weekend and the holiday")
        assert row["send_after"] == datetime(2026, 3, 17, 9, 30, tzinfo=ISTANBUL)  # Tuesday
        assert row["deferred_reason"] == "outside allowed sending hours"


async def test_a_language_the_tenant_does_not_offer_falls_back_and_says_so(
        database, kafka_bootstrap, topic_prefix, sinks):
    async with notifier_running(database, kafka_bootstrap, topic_prefix, sinks) as n:
        admin = await api_key(n.app, TENANT, "admin")
        async with client(n.url, admin) as api:
            assert (await api.put("/v1/settings", json={"languages": ["en", "tr"], "default_language": "en"})
                    ).status_code == 200
            bad = await api.put("/v1/settings", json={"languages": ["tr"], "default_language": "en"})
            assert bad.status_code == 422 and "default_language" in bad.text
        await n.upsert_customer("cs1", email="jana@example.cz", language="cs", tz="Europe/Prague")
        await n.request("cs1", "cs-k")
        row = await _status(n, "cs-k", "sent")
        assert row["language"] == "en" and row["fallback_from"] == "cs"
        mail = (await sinks.emails_with_key("cs-k"))[0]
        assert mail["headers"]["Content-Language"] == "en"
        async with client(n.url, admin) as api:
            detail = (await api.get("/v1/notifications/cs-k")).json()
            assert detail["fallback_from"] == "cs"
            assert "the customer's cs is not offered" in detail["history"][-1]["detail"]


async def test_preferences_and_the_suppression_list_stop_a_channel_and_dunning_is_told(
        database, kafka_bootstrap, topic_prefix, sinks):
    async with notifier_running(database, kafka_bootstrap, topic_prefix, sinks) as n:
        collector, admin = await api_key(n.app, TENANT, "collector"), await api_key(n.app, TENANT, "admin")
        await n.upsert_customer("pref", email="Pref@Example.com.tr", phone="+905320000001")
        async with client(n.url, collector) as api:
            r = await api.put("/v1/contacts/pref/preferences", json={"declined_channels": ["sms"]})
            assert r.status_code == 200 and r.json()["declined_channels"] == ["sms"]
            assert r.json()["email"] == "P***@Example.com.tr" and "0001" not in json.dumps(r.json())
            assert (await api.put("/v1/contacts/nobody/preferences", json={})).status_code == 404
            r = await api.post("/v1/suppressions", json={"channel": "email", "address": " PREF@example.com.tr "})
            assert r.status_code == 201 and r.json()["address"] == "pref@example.com.tr"
        await n.request("pref", "p-sms", channel="sms")
        await n.request("pref", "p-mail")
        failed = {e.data["notification_key"]: e.data for e in await wait_for(
            lambda: _at_least(n.events("NotificationFailed"), 2), message="two NotificationFailed")}
        assert failed["p-sms"]["code"] == "declined"
        assert failed["p-mail"]["code"] == "suppressed"
        assert await sinks.emails() == [] and await sinks.sms() == []

        async with client(n.url, admin) as api:
            listed = (await api.get("/v1/suppressions")).json()
            assert [(s["channel"], s["address"], s["reason"]) for s in listed] == [
                ("email", "pref@example.com.tr", "manual")]
            r = await api.delete("/v1/suppressions", params={"channel": "email", "address": "pref@example.com.tr"})
            assert r.status_code == 204
        await n.request("pref", "p-mail-2", template="final_notice")
        await _status(n, "p-mail-2", "sent")


async def _at_least(events, count: int):
    found = await events
    return found if len(found) >= count else None


async def test_an_smtp_hard_bounce_suppresses_the_address_and_a_soft_one_is_retried(
        database, kafka_bootstrap, topic_prefix, sinks):
    async with notifier_running(database, kafka_bootstrap, topic_prefix, sinks) as n:
        await n.upsert_customer("hb", email="nobody@bounce.example.com")
        await n.upsert_customer("sb", email="later@busy.example.com")
        await n.request("hb", "hb1")
        await n.request("sb", "sb1")
        row = await _status(n, "hb1", "failed")
        assert "550" in row["last_error"]
        failed = await wait_for(lambda: n.events("NotificationFailed", "hb1"), message="NotificationFailed")
        assert failed[0].data["code"] == "rejected" and failed[0].data["bounce_class"] == "hard"
        assert await n.app.state.pool.fetchval(
            "SELECT reason FROM suppressions WHERE address = 'nobody@bounce.example.com'") == "hard_bounce"
        soft = await wait_for(lambda: _retrying(n, "sb1"), message="the soft bounce waiting to be retried")
        assert soft["attempts"] == 1 and soft["send_after"] > n.clock.now()
        # the address is suppressed now: the next notice is not even tried
        await n.request("hb", "hb2", template="final_notice")
        failed = await wait_for(lambda: n.events("NotificationFailed", "hb2"), message="the second NotificationFailed")
        assert failed[0].data["code"] == "suppressed"


async def _retrying(n, key: str):
    row = await n.notification(key)
    return row if row is not None and row["status"] == "pending" and row["attempts"] >= 1 else None


def _signed_form(url: str, form: dict[str, str]) -> dict[str, str]:
    return {"X-Twilio-Signature": twilio_signature(SMS_TOKEN, url, form)}


@pytest.mark.parametrize("word", ["STOP", "stop", "Unsubscribe", "İPTAL", "zrušit", "لغو"])
async def test_stop_in_any_language_opts_the_number_out_and_start_opts_it_back_in(
        database, kafka_bootstrap, topic_prefix, sinks, word):
    async with notifier_running(database, kafka_bootstrap, topic_prefix, sinks, **_twilio(sinks)) as n:
        phone = "+905320000777"
        await n.upsert_customer("stopper", phone=phone)
        url = f"{n.url}/v1/webhooks/sms/inbound"
        async with client(n.url) as provider:
            form = {"From": phone, "To": "+15550100100", "Body": f" {word} ", "MessageSid": "SMin1"}
            forged = await provider.post("/v1/webhooks/sms/inbound", data=form,
                                         headers={"X-Twilio-Signature": "bm90IGEgc2lnbmF0dXJl"})
            assert forged.status_code == 403
            assert (await n.contact("stopper"))["sms_opt_out"] is False
            r = await provider.post("/v1/webhooks/sms/inbound", data=form, headers=_signed_form(url, form))
            assert r.status_code == 200 and "<Response>" in r.text
        assert (await n.contact("stopper"))["sms_opt_out"] is True
        out = await wait_for(lambda: n.events("ContactOptedOut"), message="ContactOptedOut")
        assert [(e.data["customer_id"], e.data["channel"], e.data["source"]) for e in out] == [
            ("stopper", "sms", "sms_keyword")]

        await n.request("stopper", "after-stop", channel="sms")
        failed = await wait_for(lambda: n.events("NotificationFailed", "after-stop"), message="refused after STOP")
        assert failed[0].data["code"] == "opted_out"
        assert await sinks.sms(phone) == []

        async with client(n.url) as provider:
            form = {"From": phone, "To": "+15550100100", "Body": "Start", "MessageSid": "SMin2"}
            assert (await provider.post("/v1/webhooks/sms/inbound", data=form,
                                        headers=_signed_form(url, form))).status_code == 200
        assert (await n.contact("stopper"))["sms_opt_out"] is False
        await wait_for(lambda: n.events("ContactOptedIn"), message="ContactOptedIn")
        await n.request("stopper", "after-start", channel="sms", template="final_notice")
        await _status(n, "after-start", "sent", "delivered")


async def test_sms_delivery_receipts_arrive_signed_and_mark_the_message_delivered_once(
        database, kafka_bootstrap, topic_prefix, sinks):
    async with notifier_running(database, kafka_bootstrap, topic_prefix, sinks, **_twilio(sinks)) as n:
        await n.upsert_customer("dl", phone="+905320000888")
        await n.upsert_customer("ud", phone="+15559990001")  # the sink reports it undelivered (30003, soft)
        await n.upsert_customer("bad", phone="+15550001234")  # the sink refuses it (21211, invalid number)
        await n.request("dl", "dl1", channel="sms")
        await n.request("ud", "ud1", channel="sms")
        await n.request("bad", "bad1", channel="sms")
        row = await _status(n, "dl1", "delivered")
        assert row["delivered_at"] is not None and row["provider_message_id"].startswith("SM")
        delivered = await wait_for(lambda: n.events("NotificationDelivered", "dl1"), message="NotificationDelivered")
        assert len(delivered) == 1

        retried = await wait_for(lambda: _retrying(n, "ud1"), message="the undelivered SMS waiting to be retried")
        assert "30003" in retried["last_error"]
        row = await _status(n, "bad1", "failed")
        assert await n.app.state.pool.fetchval(
            "SELECT reason FROM suppressions WHERE address = '+15550001234'") == "invalid_number"

        # The provider repeats a receipt: nothing changes. A forged one is refused.
        url = f"{n.url}/v1/webhooks/sms/status"
        form = {"MessageSid": (await n.notification("dl1"))["provider_message_id"], "MessageStatus": "delivered"}
        async with client(n.url) as provider:
            again = await provider.post("/v1/webhooks/sms/status", data=form, headers=_signed_form(url, form))
            assert again.status_code == 200 and again.json()["applied"] == 0
            assert (await provider.post("/v1/webhooks/sms/status", data=form,
                                        headers={"X-Twilio-Signature": "x"})).status_code == 403
        assert len(await n.events("NotificationDelivered", "dl1")) == 1


def _email_webhook(body: Any, *, at: int | None = None, secret: str = EMAIL_SECRET) -> tuple[bytes, dict[str, str]]:
    raw = json.dumps(body).encode()
    return raw, {"Tahsilat-Signature": sign(secret, raw, at if at is not None else int(time.time())),
                 "Content-Type": "application/json"}


async def test_email_provider_events_bounce_complain_and_deliver(database, kafka_bootstrap, topic_prefix, sinks):
    async with notifier_running(database, kafka_bootstrap, topic_prefix, sinks, **_twilio(sinks)) as n:
        for c in ("e1", "e2", "e3", "e4"):
            await n.upsert_customer(c, email=f"{c}@example.com.tr")
            await n.request(c, f"{c}-k")
        for c in ("e1", "e2", "e3", "e4"):
            await _status(n, f"{c}-k", "sent")
        mid = {c: (await n.notification(f"{c}-k"))["provider_message_id"] for c in ("e1", "e2", "e3", "e4")}
        sendgrid = [
            {"event": "delivered", "email": "e1@example.com.tr", "smtp-id": mid["e1"], "timestamp": 1770000000},
            {"event": "bounce", "type": "bounce", "status": "5.1.1", "email": "e2@example.com.tr",
             "smtp-id": mid["e2"], "reason": "550 5.1.1 user unknown"},
            {"event": "bounce", "type": "blocked", "status": "4.7.1", "email": "e4@example.com.tr",
             "smtp-id": mid["e4"], "reason": "try later"},
            {"event": "open", "email": "e1@example.com.tr", "smtp-id": mid["e1"]},
            {"event": "bounce", "type": "bounce", "smtp-id": "<unknown@tahsilat>"},
        ]
        ses_complaint = {"Type": "Notification", "Message": json.dumps({
            "notificationType": "Complaint", "complaint": {"timestamp": "2026-03-10T10:05:00Z"},
            "mail": {"commonHeaders": {"messageId": mid["e3"].strip("<>")}, "headers": []}})}
        async with client(n.url) as provider:
            raw, headers = _email_webhook(sendgrid)
            stale = await provider.post("/v1/webhooks/email/events", content=raw,
                                        headers=_email_webhook(sendgrid, at=int(time.time()) - 3600)[1])
            assert stale.status_code == 403 and "Tahsilat-Signature" in stale.text
            forged = await provider.post("/v1/webhooks/email/events", content=raw,
                                         headers=_email_webhook(sendgrid, secret="not-the-secret-at-all")[1])
            assert forged.status_code == 403
            r = await provider.post("/v1/webhooks/email/events", content=raw, headers=headers)
            assert r.status_code == 200 and r.json() == {"applied": 3, "unknown": 1, "ignored": 0}
            again = await provider.post("/v1/webhooks/email/events", content=raw, headers=headers)
            assert again.json()["applied"] == 0  # a provider's retry changes nothing
            raw, headers = _email_webhook(ses_complaint)
            assert (await provider.post("/v1/webhooks/email/events", content=raw, headers=headers)).json()["applied"] == 1
            bad = await provider.post("/v1/webhooks/email/events", content=b'{"mail": 1}',
                                      headers=_email_webhook({"mail": 1})[1])
            assert bad.status_code == 422 and bad.json()["problems"][0]["field"] == "mail"

        assert (await n.notification("e1-k"))["status"] == "delivered"
        assert (await n.notification("e2-k"))["status"] == "failed"
        assert (await n.notification("e4-k"))["status"] == "pending"  # soft: sent again later
        assert (await n.contact("e3"))["email_opt_out"] is True
        reasons = dict(await n.app.state.pool.fetch("SELECT address, reason FROM suppressions"))
        assert reasons == {"e2@example.com.tr": "hard_bounce", "e3@example.com.tr": "complaint"}
        failed = {e.data["notification_key"]: e.data for e in await wait_for(
            lambda: _at_least(n.events("NotificationFailed"), 2), message="NotificationFailed for e2 and e3")}
        assert (failed["e2-k"]["code"], failed["e2-k"]["bounce_class"]) == ("bounced", "hard")
        assert (failed["e3-k"]["code"], failed["e3-k"]["bounce_class"]) == ("complaint", "complaint")
        opted = await wait_for(lambda: n.events("ContactOptedOut"), message="ContactOptedOut after the complaint")
        assert [(e.data["customer_id"], e.data["source"]) for e in opted] == [("e3", "complaint")]


async def test_the_webhook_channel_posts_the_notice_signed_to_the_customers_system(
        database, kafka_bootstrap, topic_prefix, sinks):
    async with notifier_running(database, kafka_bootstrap, topic_prefix, sinks) as n:
        collector = await api_key(n.app, TENANT, "collector")
        await n.upsert_customer("erp", email="ap@erp.example")
        async with client(n.url, collector) as api:
            r = await api.put("/v1/contacts/erp/preferences",
                              json={"webhook_url": f"http://127.0.0.1:{sinks.http_port}/webhooks/erp-1"})
            secret = r.json()["webhook_secret"]
            assert secret.startswith("whsec_")
            again = await api.put("/v1/contacts/erp/preferences",
                                  json={"webhook_url": f"http://127.0.0.1:{sinks.http_port}/webhooks/erp-1"})
            assert "webhook_secret" not in again.json()  # shown once; kept
        await n.request("erp", "erp-k", channel="webhook")
        await _status(n, "erp-k", "sent")
        posted = (await sinks.http.get("/webhooks")).json()
        assert len(posted) == 1
        headers = {k.lower(): v for k, v in posted[0]["headers"].items()}
        verify(secret, headers["tahsilat-signature"], posted[0]["body"].encode(), int(time.time()))
        body = json.loads(posted[0]["body"])
        assert body["notification_key"] == "erp-k" and body["items"][0]["number"] == "INV-2026-001"
        assert headers["idempotency-key"] == "erp-k"


async def test_notifications_filter_by_customer_case_status_and_period(database, kafka_bootstrap, topic_prefix, sinks):
    async with notifier_running(database, kafka_bootstrap, topic_prefix, sinks) as n:
        reader = await api_key(n.app, TENANT, "analytics")
        await n.upsert_customer("f1", email="f1@example.com.tr")
        await n.upsert_customer("f2")  # no email: suppressed
        await n.request("f1", "f1-a")
        await _status(n, "f1-a", "sent")
        n.clock.set(START + timedelta(hours=1))
        await n.request("f1", "f1-b", template="final_notice")
        await n.request("f2", "f2-a")
        await _status(n, "f1-b", "sent")
        await _status(n, "f2-a", "suppressed")
        async with client(n.url, reader) as api:
            async def keys(**params) -> list[str]:
                r = await api.get("/v1/notifications", params=params)
                assert r.status_code == 200, r.text
                return [x["notification_key"] for x in r.json()]
            assert await keys() == ["f1-a", "f1-b", "f2-a"]
            assert await keys(customer_id="f1") == ["f1-a", "f1-b"]
            assert await keys(case_id="case-f2") == ["f2-a"]
            assert await keys(status="suppressed") == ["f2-a"]
            assert await keys(since=(START + timedelta(minutes=30)).isoformat()) == ["f1-b", "f2-a"]
            assert await keys(until=(START + timedelta(minutes=30)).isoformat()) == ["f1-a"]
            assert await keys(limit=1, after="f1-a") == ["f1-b"]
            bad = await api.get("/v1/notifications", params={"since": "2026-03-10T10:00:00"})
            assert bad.status_code == 422 and bad.json()["problems"][0]["field"] == "since"
            assert (await api.get("/v1/notifications", params={"status": "lost"})).status_code == 422
            detail = (await api.get("/v1/notifications/f2-a")).json()
            assert [h["status"] for h in detail["history"]] == ["requested", "suppressed"]
            assert detail["history"][1]["detail"] == "no email address on file"
            assert (await api.get("/v1/notifications/nope")).status_code == 404



async def test_tenant_wording_is_validated_previewed_and_used(database, kafka_bootstrap, topic_prefix, sinks):
    async with notifier_running(database, kafka_bootstrap, topic_prefix, sinks) as n:
        admin, collector = await api_key(n.app, TENANT, "admin"), await api_key(n.app, TENANT, "collector")
        async with client(n.url, admin) as api:
            assert (await api.put("/v1/settings", json={"sms_segment_limit": 1})).status_code == 200
            bad = await api.put("/v1/templates/reminder_overdue", json={"languages": {"tr": {"body": "{% if %}"}}})
            assert bad.status_code == 422 and bad.json()["problems"][0]["field"] == "languages.tr.body"
            bad = await api.put("/v1/templates/reminder_overdue", json={"languages": {"en": {"body": "{{ nope }}"}}})
            assert bad.status_code == 422 and "nope" in bad.json()["problems"][0]["reason"]
            long_sms = "Sayın {{ name }}, " + "ödenmemiş faturalarınız var. " * 6
            bad = await api.put("/v1/templates/reminder_overdue", json={"languages": {"tr": {"sms": long_sms}}})
            problem = bad.json()["problems"][0]
            assert bad.status_code == 422 and problem["field"] == "languages.tr.sms"
            assert "UCS-2" in problem["reason"] and "limit of 1" in problem["reason"]
            assert (await api.put("/v1/templates/no_such", json={"languages": {"en": {}}})).status_code == 422
            ok = await api.put("/v1/templates/reminder_overdue", json={"languages": {
                "tr": {"subject": "Hatırlatma: {{ invoices }}", "body": "Sayın {{ name }}, toplam borcunuz {{ total }}."}}})
            assert ok.status_code == 200, ok.text
            listed = {t["template"]: t for t in (await api.get("/v1/templates")).json()}
            assert set(listed["reminder_overdue"]["overrides"]) == {"tr"}
        async with client(n.url, collector) as api:
            preview = (await api.post("/v1/templates/preview", json={"template": "reminder_overdue",
                                                                     "language": "tr"})).json()
            assert preview["subject"] == "Hatırlatma: 3 fatura" and "toplam borcunuz" in preview["text"]
            assert preview["sms"]["encoding"] == "UCS-2" and preview["sms"]["limit"] == 1
            trial = (await api.post("/v1/templates/preview", json={
                "template": "reminder_overdue", "language": "fa",
                "overrides": {"fa": {"subject": "یادآوری {{ count }}"}}})).json()
            assert trial["subject"] == "یادآوری \u2068۳\u2069" and 'dir="rtl"' in trial["html"]
            missing = await api.post("/v1/templates/preview", json={"template": "reminder_due", "case_id": "nope"})
            assert missing.status_code == 404 and missing.json()["problems"][0]["field"] == "case_id"

        await n.upsert_customer("tw", email="tw@example.com.tr")
        await n.request("tw", "tw-k")
        await _status(n, "tw-k", "sent")
        mail = (await sinks.emails_with_key("tw-k"))[0]
        assert mail["subject"] == "Hatırlatma: 1 fatura"
        async with client(n.url, collector) as api:
            real = (await api.post("/v1/templates/preview", json={"template": "final_notice", "language": "tr",
                                                                  "case_id": "case-tw"})).json()
            assert "INV-2026-001" in real["text"] and "Müşteri tw" in real["text"]
        async with client(n.url, admin) as api:
            assert (await api.delete("/v1/templates/reminder_overdue")).status_code == 204
            assert (await api.delete("/v1/templates/reminder_overdue")).status_code == 404


async def test_a_message_another_dispatcher_is_sending_counts_towards_the_cap(
        database, kafka_bootstrap, topic_prefix, sinks):
    async with notifier_running(database, kafka_bootstrap, topic_prefix, sinks) as n:
        admin = await api_key(n.app, TENANT, "admin")
        async with client(n.url, admin) as api:
            assert (await api.put("/v1/settings", json={"contact_cap_messages": 1})).status_code == 200
        await n.upsert_customer("rep", email="rep@example.com.tr")
        # another replica has claimed a notice of the same customer and is sending it (a long lease)
        await n.app.state.pool.execute(
            "INSERT INTO notifications (tenant_id, notification_key, customer_id, case_id, step, channel, template,"
            " items, status, send_after, requested_at, claimed_at) VALUES ($1, 'elsewhere', 'rep', 'case-rep', 'x',"
            " 'email', 'reminder_due', '[]', 'sending', $2, $2, now())", TENANT, n.clock.now())
        await n.request("rep", "rep-k")
        row = await wait_for(lambda: _deferred(n, "rep-k"), message="deferred behind the message in flight")
        assert row["deferred_reason"] == "contact cap: 1 messages in 7 days"
        assert row["send_after"] == n.clock.now() + timedelta(days=7)


async def test_a_collector_opts_a_contact_out_and_back_in_with_the_consent_on_the_event(
        database, kafka_bootstrap, topic_prefix, sinks):
    async with notifier_running(database, kafka_bootstrap, topic_prefix, sinks) as n:
        collector = await api_key(n.app, TENANT, "collector")
        await n.upsert_customer("oi", email="oi@example.com.tr")
        async with client(n.url, collector) as api:
            r = await api.post("/v1/contacts/oi/opt-out", json={"channel": "email"})
            assert r.status_code == 200 and r.json()["changed"] is True
            assert (await api.post("/v1/contacts/oi/opt-in", json={"channel": "email"})).status_code == 422
            r = await api.post("/v1/contacts/oi/opt-in",
                               json={"channel": "email", "consent": "asked by phone on 10 March, agreed"})
            assert r.status_code == 200 and r.json()["opted_out"] is False
        [opted_in] = await wait_for(lambda: n.events("ContactOptedIn"), message="ContactOptedIn")
        assert opted_in.data["source"] == "api"
        assert opted_in.data["consent"].startswith("asked by phone on 10 March, agreed (recorded by ")
        assert [e.data["source"] for e in await n.events("ContactOptedOut")] == ["api"]


async def test_a_report_that_comes_before_the_send_is_recorded_is_kept_and_applied_after(
        database, kafka_bootstrap, topic_prefix, sinks):
    async with notifier_running(database, kafka_bootstrap, topic_prefix, sinks, **_twilio(sinks)) as n:
        await n.upsert_customer("fast", email="fast@example.com.tr")
        pool = n.app.state.pool
        # a dispatcher has sent it and not yet recorded the outcome when the provider calls back
        await pool.execute(
            "INSERT INTO notifications (tenant_id, notification_key, customer_id, case_id, step, channel, template,"
            " items, status, send_after, requested_at, claimed_at) VALUES ($1, 'fast-k', 'fast', 'case-fast', 'x',"
            " 'email', 'reminder_due', '[]', 'sending', $2, $2, now())", TENANT, n.clock.now())
        raw, headers = _email_webhook([{"event": "delivered", "notification_key": "fast-k", "timestamp": 1773136800}])
        async with client(n.url) as provider:
            r = await provider.post("/v1/webhooks/email/events", content=raw, headers=headers)
            assert r.status_code == 200 and r.json() == {"applied": 0, "unknown": 1, "ignored": 0}
        assert await pool.fetchval("SELECT count(*) FROM early_reports") == 1
        assert (await n.notification("fast-k"))["status"] == "sending"
        # the dispatcher records the send: the kept report applies
        await pool.execute("UPDATE notifications SET status = 'sent', sent_at = $1, claimed_at = NULL,"
                           " provider_message_id = '<fast@tahsilat>' WHERE notification_key = 'fast-k'", n.clock.now())
        await _status(n, "fast-k", "delivered")
        await wait_for(lambda: n.events("NotificationDelivered", "fast-k"), message="NotificationDelivered")
        assert await pool.fetchval("SELECT count(*) FROM early_reports") == 0
