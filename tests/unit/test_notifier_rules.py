"""Quiet hours and contact rules of the notifier. Pure, no I/O."""
from __future__ import annotations

import json
import re
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.notifier.domain.delivery import ReportError, email_events, twilio_status
from services.notifier.domain.links import LinkSubject, sign_unsubscribe, verify_unsubscribe
from services.notifier.domain.rules import (
    ContactCap,
    ContactState,
    SendingWindow,
    blocked,
    blocked_reason,
    cap_release,
    next_allowed_send,
    sms_keyword,
    when_may_send,
)

UTC = timezone.utc
IST = ZoneInfo("Europe/Istanbul")
NY = ZoneInfo("America/New_York")


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


class TestNextAllowedSend:
    def test_inside_window_returns_now(self):
        now = utc(2026, 3, 20, 9, 0)  # 12:00 in Istanbul
        assert next_allowed_send(now, "Europe/Istanbul") is now

    def test_exactly_08_local_is_allowed(self):
        now = utc(2026, 3, 20, 5, 0)  # 08:00 Istanbul
        assert next_allowed_send(now, "Europe/Istanbul") == now

    def test_20_59_local_is_allowed(self):
        now = utc(2026, 3, 20, 17, 59)  # 20:59 Istanbul
        assert next_allowed_send(now, "Europe/Istanbul") == now

    def test_exactly_21_local_is_deferred_to_next_morning(self):
        now = utc(2026, 3, 20, 18, 0)  # 21:00 Istanbul
        assert next_allowed_send(now, "Europe/Istanbul") == utc(2026, 3, 21, 5, 0)

    def test_21_30_local_goes_to_next_day_08_local(self):
        now = utc(2026, 3, 20, 18, 30)  # 21:30 Istanbul
        assert next_allowed_send(now, "Europe/Istanbul") == utc(2026, 3, 21, 5, 0)

    def test_06_local_goes_to_same_day_08_local(self):
        now = utc(2026, 3, 20, 3, 0)  # 06:00 Istanbul
        assert next_allowed_send(now, "Europe/Istanbul") == utc(2026, 3, 20, 5, 0)

    def test_utc_evening_is_already_past_midnight_in_istanbul(self):
        # 22:30 UTC on the 20th is 01:30 on the 21st in Istanbul: send at 08:00 on the 21st
        now = utc(2026, 3, 20, 22, 30)
        assert next_allowed_send(now, "Europe/Istanbul") == utc(2026, 3, 21, 5, 0)

    def test_istanbul_has_no_dst(self):
        # Europe/Istanbul stays UTC+3 in both March and November
        for day in (datetime(2026, 3, 29, 6, tzinfo=IST), datetime(2026, 10, 25, 6, tzinfo=IST)):
            result = next_allowed_send(day.astimezone(UTC), "Europe/Istanbul")
            assert result == day.replace(hour=8).astimezone(UTC)
            assert result.hour == 5

    def test_new_york_spring_forward_night(self):
        # Sat 2026-03-07 21:30 EST (02:30 UTC on the 8th) -> Sun 2026-03-08 08:00 EDT == 12:00 UTC
        now = utc(2026, 3, 8, 2, 30)
        assert now.astimezone(NY).hour == 21
        assert next_allowed_send(now, "America/New_York") == utc(2026, 3, 8, 12, 0)

    def test_new_york_fall_back_night(self):
        # Sat 2026-10-31 21:30 EDT (01:30 UTC on Nov 1) -> Sun 2026-11-01 08:00 EST == 13:00 UTC
        now = utc(2026, 11, 1, 1, 30)
        assert next_allowed_send(now, "America/New_York") == utc(2026, 11, 1, 13, 0)

    def test_new_york_early_morning_on_dst_day(self):
        # Sun 2026-03-08 06:00 EDT == 10:00 UTC -> same day 08:00 EDT == 12:00 UTC
        now = utc(2026, 3, 8, 10, 0)
        assert next_allowed_send(now, "America/New_York") == utc(2026, 3, 8, 12, 0)

    def test_custom_window(self):
        now = utc(2026, 3, 20, 16, 0)  # 19:00 Istanbul, after a 09-18 window
        assert next_allowed_send(now, "Europe/Istanbul", SendingWindow(time(9), time(18))) == utc(2026, 3, 21, 6, 0)

    def test_non_utc_input_inside_window_is_returned_unchanged(self):
        now = datetime(2026, 3, 20, 10, 0, tzinfo=IST)
        assert next_allowed_send(now, "Europe/Istanbul") == now


@given(
    now=st.datetimes(datetime(2024, 1, 1), datetime(2028, 12, 31), timezones=st.just(UTC)),
    tz=st.sampled_from(["UTC", "Europe/Istanbul", "America/New_York", "Asia/Tehran", "Asia/Kolkata",
                        "Pacific/Auckland", "Europe/Prague"]),
)
def test_next_allowed_send_is_never_earlier_and_inside_window(now, tz):
    result = next_allowed_send(now, tz)
    local = result.astimezone(ZoneInfo(tz))
    assert result >= now, "deferred, never sent in the past"
    assert 8 <= local.hour < 21
    assert result - now < timedelta(hours=12), "waits at most one night (11 h + DST)"
    if result != now:
        assert (local.hour, local.minute, local.second) == (8, 0, 0)


class TestBlockedReason:
    def test_email_ok(self):
        assert blocked_reason("email", "a@example.com", None, False, False) is None

    def test_sms_ok(self):
        assert blocked_reason("sms", None, "+905321234567", False, False) is None

    @pytest.mark.parametrize("email", [None, ""])
    def test_email_missing(self, email):
        assert blocked_reason("email", email, "+905321234567", False, False) == "no email address on file"

    def test_email_unsubscribed(self):
        assert blocked_reason("email", "a@example.com", None, True, False) == "customer unsubscribed from email"

    def test_sms_opt_out_does_not_block_email(self):
        assert blocked_reason("email", "a@example.com", "+905321234567", False, True) is None

    @pytest.mark.parametrize("phone", [None, ""])
    def test_phone_missing(self, phone):
        assert blocked_reason("sms", "a@example.com", phone, False, False) == "no phone number on file"

    def test_sms_stop(self):
        assert blocked_reason("sms", None, "+905321234567", False, True) == "customer sent STOP"

    def test_email_opt_out_does_not_block_sms(self):
        assert blocked_reason("sms", "a@example.com", "+905321234567", True, False) is None

    @pytest.mark.parametrize("channel", ["collector_call", "letter", "legal"])
    def test_other_channels_not_sent_by_notifier(self, channel):
        reason = blocked_reason(channel, "a@example.com", "+905321234567", False, False)
        assert reason is not None and channel in reason


class TestSendingWindow:
    def test_weekend_and_holiday_are_skipped(self):
        window = SendingWindow(time(9), time(18), frozenset({6, 7}), frozenset({date(2026, 3, 16)}))
        friday_evening = datetime(2026, 3, 13, 19, 0, tzinfo=IST)
        assert next_allowed_send(friday_evening.astimezone(UTC), "Europe/Istanbul", window) == \
            datetime(2026, 3, 17, 9, 0, tzinfo=IST)

    def test_a_window_that_never_opens_is_an_error_not_a_drop(self):
        window = SendingWindow(excluded_weekdays=frozenset(range(1, 8)))
        with pytest.raises(ValueError, match="allows no day"):
            next_allowed_send(utc(2026, 3, 10, 10), "UTC", window)

    def test_window_to_midnight(self):
        window = SendingWindow(time(8), time(0))
        assert next_allowed_send(utc(2026, 3, 10, 23, 30), "UTC", window) == utc(2026, 3, 10, 23, 30)

    def test_a_start_inside_the_spring_forward_gap_is_the_first_instant_after_it(self):
        # 2026-03-08 02:00-03:00 does not exist in New York; a 02:30 start opens at 03:00 EDT (07:00 UTC)
        window = SendingWindow(time(2, 30), time(21))
        assert next_allowed_send(utc(2026, 3, 8, 5, 0), "America/New_York", window) == utc(2026, 3, 8, 7, 0)

    def test_europe_prague_autumn_change(self):
        # 2026-10-25: clocks go back at 03:00 CEST; 08:00 that day is CET (UTC+1)
        assert next_allowed_send(utc(2026, 10, 25, 2, 0), "Europe/Prague") == utc(2026, 10, 25, 7, 0)


class TestContactCap:
    SENDS = [utc(2026, 3, d, 10) for d in (1, 2, 3, 4, 5, 6, 7)]

    def test_under_the_cap_goes_now(self):
        assert cap_release(utc(2026, 3, 7, 12), self.SENDS[:6], ContactCap(7, 7)) == utc(2026, 3, 7, 12)

    def test_at_the_cap_waits_for_the_oldest_to_leave_the_window(self):
        assert cap_release(utc(2026, 3, 7, 12), self.SENDS, ContactCap(7, 7)) == utc(2026, 3, 8, 10)

    def test_sends_older_than_the_window_do_not_count(self):
        assert cap_release(utc(2026, 3, 8, 11), self.SENDS, ContactCap(7, 7)) == utc(2026, 3, 8, 11)

    def test_zero_means_no_cap(self):
        assert cap_release(utc(2026, 3, 7, 12), self.SENDS, ContactCap(0, 7)) == utc(2026, 3, 7, 12)

    def test_cap_release_at_night_moves_on_to_the_morning(self):
        sends = [utc(2026, 3, 1, 19, 30)]  # 22:30 Istanbul... sent by an earlier, later window
        at, why = when_may_send(utc(2026, 3, 2, 9), "Europe/Istanbul", SendingWindow(), sends, ContactCap(1, 7))
        assert at == utc(2026, 3, 9, 5, 0)  # the release (08.03 22:30 local) is outside hours: next 08:00
        assert why == "contact cap: 1 messages in 7 days"

    def test_inside_hours_and_under_the_cap_is_now(self):
        assert when_may_send(utc(2026, 3, 2, 9), "Europe/Istanbul", SendingWindow(), [], ContactCap()) == \
            (utc(2026, 3, 2, 9), None)


@given(now=st.datetimes(datetime(2025, 1, 1), datetime(2027, 12, 31), timezones=st.just(UTC)),
       offsets=st.lists(st.integers(0, 14 * 24 * 60), max_size=12),
       cap=st.integers(1, 5), tz=st.sampled_from(["Europe/Istanbul", "America/New_York", "Asia/Tehran"]))
def test_when_may_send_respects_window_and_cap(now, offsets, cap, tz):
    sends = sorted(now - timedelta(minutes=m) for m in offsets)
    rules = ContactCap(cap, 7)
    at, _ = when_may_send(now, tz, SendingWindow(), sends, rules)
    assert at >= now
    assert 8 <= at.astimezone(ZoneInfo(tz)).hour < 21
    assert sum(1 for s in sends if at - timedelta(days=7) < s <= at) < cap


class TestBlocked:
    def test_suppressed_and_declined_have_their_codes(self):
        contact = ContactState(email="a@example.com", phone="+905321234567", declined_channels=frozenset({"sms"}),
                               suppressed=frozenset({"email"}))
        assert blocked("sms", contact).code == "declined"
        assert blocked("email", contact).code == "suppressed"

    def test_webhook_needs_an_endpoint(self):
        assert blocked("webhook", ContactState()).code == "no_address"
        assert blocked("webhook", ContactState(webhook_url="https://erp.example/hook")) is None


class TestSmsKeywords:
    @pytest.mark.parametrize("body", ["STOP", "stop", " Stop! ", "STOPALL", "unsubscribe", "CANCEL", "end", "QUIT",
                                      "revoke", "OPTOUT", "opt out", "İPTAL", "iptal", "IPTAL", "dur", "ZRUŠIT",
                                      "zrusit", "Konec", "لغو", "توقف", "انصراف", "لغو عضويت"])
    def test_stop_words(self, body):
        assert sms_keyword(body) == "stop"

    @pytest.mark.parametrize("body", ["START", "start", "Unstop", "BAŞLA", "začít", "شروع"])
    def test_start_words(self, body):
        assert sms_keyword(body) == "start"

    @pytest.mark.parametrize("body", ["", "please stop calling me at work", "when is it due?", "stopp", "123"])
    def test_anything_else_is_no_keyword(self, body):
        assert sms_keyword(body) is None


class TestUnsubscribeLinks:
    KEY = b"k" * 32

    def test_round_trip(self):
        subject = LinkSubject("t1", "c-42/ü", "email")
        assert verify_unsubscribe(self.KEY, sign_unsubscribe(self.KEY, subject)) == subject

    def test_forged_or_other_key_or_garbage_is_refused(self):
        token = sign_unsubscribe(self.KEY, LinkSubject("t1", "c1", "email"))
        mac = token.split(".")[1]
        other = sign_unsubscribe(self.KEY, LinkSubject("t1", "c2", "email")).split(".")[0]
        assert verify_unsubscribe(self.KEY, f"{other}.{mac}") is None  # someone else's customer
        assert verify_unsubscribe(b"x" * 32, token) is None
        for bad in ("", "abc", "abc.def", ".", token + "x"):
            assert verify_unsubscribe(self.KEY, bad) is None


class TestDeliveryReports:
    def test_twilio_states(self):
        assert twilio_status({"MessageSid": "SM1", "MessageStatus": "sent"}) is None
        delivered = twilio_status({"MessageSid": "SM1", "MessageStatus": "delivered"})
        assert (delivered.outcome, delivered.provider_message_id) == ("delivered", "SM1")
        hard = twilio_status({"MessageSid": "SM1", "MessageStatus": "undelivered", "ErrorCode": "30005"})
        soft = twilio_status({"MessageSid": "SM1", "MessageStatus": "undelivered", "ErrorCode": "30003"})
        assert (hard.bounce_class, hard.permanent, soft.bounce_class, soft.permanent) == ("hard", True, "soft", False)
        with pytest.raises(ReportError, match="MessageSid"):
            twilio_status({"MessageStatus": "delivered"})

    def test_sendgrid_events(self):
        reports = email_events([
            {"event": "bounce", "type": "blocked", "status": "4.7.1", "smtp-id": "<a@x>"},
            {"event": "bounce", "type": "bounce", "status": "5.1.1", "smtp-id": "b@x"},
            {"event": "spamreport", "smtp-id": "<c@x>"}, {"event": "click"},
            {"event": "delivered", "notification_key": "k1", "timestamp": 1770000000}])
        assert [(r.outcome, r.bounce_class, r.provider_message_id) for r in reports] == [
            ("failed", "soft", "<a@x>"), ("failed", "hard", "<b@x>"), ("failed", "complaint", "<c@x>"),
            ("delivered", None, None)]
        assert reports[3].notification_key == "k1" and reports[3].at == datetime(2026, 2, 2, 2, 40, tzinfo=UTC)

    def test_ses_through_sns(self):
        note = {"notificationType": "Bounce", "bounce": {"bounceType": "Permanent", "bounceSubType": "General"},
                "mail": {"commonHeaders": {"messageId": "abc@tahsilat"},
                         "headers": [{"name": "X-Tahsilat-Notification-Key", "value": "k9"}]}}
        [report] = email_events({"Type": "Notification", "Message": json.dumps(note)})
        assert (report.bounce_class, report.provider_message_id, report.notification_key) == (
            "hard", "<abc@tahsilat>", "k9")

    @pytest.mark.parametrize(("body", "field"), [(["x"], "[0]"), ([{}], "[0].event"), ({"mail": 1}, "mail"),
                                                 (3, "body"), ({"Type": "Notification", "Message": "{"}, "Message")])
    def test_malformed_bodies_name_the_field(self, body, field):
        with pytest.raises(ReportError, match=re.escape(field)):
            email_events(body)
