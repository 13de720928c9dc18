"""Quiet hours and contact rules of the notifier. Pure, no I/O."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.notifier.domain.rules import blocked_reason, next_allowed_send

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
        assert next_allowed_send(now, "Europe/Istanbul", 9, 18) == utc(2026, 3, 21, 6, 0)

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
