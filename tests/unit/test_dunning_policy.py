"""Dunning policies and case schedules. Pure, no I/O."""
from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.dunning.domain.policy import (
    DEFAULT_POLICIES,
    GENTLE,
    STANDARD,
    STRICT,
    notification_key,
    policy_for,
    schedule_case,
    step_due_at,
)

UTC = timezone.utc
DUE = date(2026, 3, 20)  # a Friday, no DST change nearby in Istanbul (there is none at all)


def by_key(steps):
    return {(s.name, s.channel): s for s in steps}


class TestPolicyFor:
    @pytest.mark.parametrize(("segment", "policy"), [("low", GENTLE), ("medium", STANDARD), ("high", STRICT)])
    def test_known_segments(self, segment, policy):
        assert policy_for(segment) is policy

    @pytest.mark.parametrize("segment", [None, "", "unknown", "HIGH", "vip"])
    def test_unknown_or_missing_segment_gets_standard(self, segment):
        assert policy_for(segment) is STANDARD

    def test_strict_policy_is_denser_and_starts_earlier(self):
        assert len(STRICT.steps) > len(STANDARD.steps) > len(GENTLE.steps)
        assert min(s.offset_days for s in STRICT.steps) < min(s.offset_days for s in STANDARD.steps)
        assert all(s.channel == "email" for s in GENTLE.steps), "gentle customers get no SMS"

    @pytest.mark.parametrize("policy", list(DEFAULT_POLICIES.values()), ids=lambda p: p.name)
    def test_each_step_and_channel_appears_once(self, policy):
        pairs = [(s.name, s.channel) for s in policy.steps]
        assert len(pairs) == len(set(pairs))


class TestStepDueAt:
    def test_nine_local_in_istanbul(self):
        assert step_due_at(DUE, 0, "Europe/Istanbul", 9) == datetime(2026, 3, 20, 6, 0, tzinfo=UTC)

    def test_negative_offset(self):
        assert step_due_at(DUE, -3, "Europe/Istanbul", 9) == datetime(2026, 3, 17, 6, 0, tzinfo=UTC)

    def test_new_york_dst_changes_the_utc_hour(self):
        due = date(2026, 3, 10)
        # 2026-03-07 09:00 EST (UTC-5) and 2026-03-10 09:00 EDT (UTC-4)
        assert step_due_at(due, -3, "America/New_York", 9) == datetime(2026, 3, 7, 14, 0, tzinfo=UTC)
        assert step_due_at(due, 0, "America/New_York", 9) == datetime(2026, 3, 10, 13, 0, tzinfo=UTC)


class TestScheduleCase:
    def test_opened_on_time_all_steps_scheduled_at_nine_local(self):
        now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
        steps = schedule_case(STANDARD, DUE, "Europe/Istanbul", now)
        assert [(s.name, s.channel, s.offset_days, s.due_at, s.status) for s in steps] == [
            ("pre_due", "email", -3, datetime(2026, 3, 17, 6, tzinfo=UTC), "scheduled"),
            ("due", "email", 0, datetime(2026, 3, 20, 6, tzinfo=UTC), "scheduled"),
            ("overdue_7", "email", 7, datetime(2026, 3, 27, 6, tzinfo=UTC), "scheduled"),
            ("overdue_7", "sms", 7, datetime(2026, 3, 27, 6, tzinfo=UTC), "scheduled"),
            ("final_14", "email", 14, datetime(2026, 4, 3, 6, tzinfo=UTC), "scheduled"),
            ("final_14", "sms", 14, datetime(2026, 4, 3, 6, tzinfo=UTC), "scheduled"),
        ]

    def test_templates_carried_from_policy(self):
        steps = schedule_case(STANDARD, DUE, "UTC", datetime(2026, 1, 1, tzinfo=UTC))
        assert [s.template for s in steps] == [s.template for s in STANDARD.steps]

    def test_opened_late_only_latest_past_offset_kept(self):
        # 10 days overdue: pre_due and due are history, overdue_7 (both channels) is the current notice
        now = datetime(2026, 3, 30, 12, 0, tzinfo=UTC)
        steps = by_key(schedule_case(STANDARD, DUE, "Europe/Istanbul", now))
        assert steps[("pre_due", "email")].status == "skipped"
        assert steps[("due", "email")].status == "skipped"
        assert steps[("overdue_7", "email")].status == "scheduled"
        assert steps[("overdue_7", "sms")].status == "scheduled"
        assert steps[("final_14", "email")].status == "scheduled"
        assert steps[("final_14", "sms")].status == "scheduled"

    def test_opened_after_every_step_only_final_notice_kept(self):
        now = datetime(2026, 6, 1, tzinfo=UTC)
        steps = schedule_case(STANDARD, DUE, "Europe/Istanbul", now)
        assert {(s.name, s.channel) for s in steps if s.status == "scheduled"} == {
            ("final_14", "email"), ("final_14", "sms")}

    def test_step_exactly_at_now_counts_as_past_and_is_kept(self):
        now = datetime(2026, 3, 20, 6, 0, tzinfo=UTC)  # due step: 09:00 Istanbul
        steps = by_key(schedule_case(STANDARD, DUE, "Europe/Istanbul", now))
        assert steps[("pre_due", "email")].status == "skipped"
        assert steps[("due", "email")].status == "scheduled"

    def test_one_second_before_a_step_keeps_previous_step(self):
        now = datetime(2026, 3, 20, 5, 59, 59, tzinfo=UTC)
        steps = by_key(schedule_case(STANDARD, DUE, "Europe/Istanbul", now))
        assert steps[("pre_due", "email")].status == "scheduled"
        assert steps[("due", "email")].status == "scheduled"

    def test_timezone_decides_what_is_past(self):
        # 2026-03-20 12:00 UTC: 09:00 in Istanbul has passed (06:00 UTC), 09:00 in New York
        # (13:00 UTC, EDT) has not yet.
        now = datetime(2026, 3, 20, 12, 0, tzinfo=UTC)
        ist = by_key(schedule_case(STANDARD, DUE, "Europe/Istanbul", now))
        ny = by_key(schedule_case(STANDARD, DUE, "America/New_York", now))
        assert ist[("pre_due", "email")].status == "skipped"
        assert ist[("due", "email")].status == "scheduled"
        assert ny[("pre_due", "email")].status == "scheduled"
        assert ny[("due", "email")].status == "scheduled"

    def test_strict_policy_late_open(self):
        # 4 days overdue: -5, -1, 0, 3 are past; only overdue_3 sms remains of those
        now = datetime(2026, 3, 24, 12, 0, tzinfo=UTC)
        steps = schedule_case(STRICT, DUE, "Europe/Istanbul", now)
        status = {(s.name, s.channel): s.status for s in steps}
        assert status == {
            ("pre_due", "email"): "skipped",
            ("pre_due_sms", "sms"): "skipped",
            ("due", "email"): "skipped",
            ("overdue_3", "sms"): "scheduled",
            ("overdue_7", "email"): "scheduled",
            ("overdue_7", "sms"): "scheduled",
            ("final_14", "email"): "scheduled",
            ("final_14", "sms"): "scheduled",
        }


@given(
    policy=st.sampled_from(list(DEFAULT_POLICIES.values())),
    due=st.dates(date(2024, 1, 1), date(2028, 12, 31)),
    tz=st.sampled_from(["UTC", "Europe/Istanbul", "America/New_York", "Asia/Tehran", "Europe/Prague"]),
    hours_from_due=st.integers(-24 * 30, 24 * 40),
)
def test_schedule_invariants(policy, due, tz, hours_from_due):
    now = datetime(due.year, due.month, due.day, tzinfo=UTC) + timedelta(hours=hours_from_due)
    steps = schedule_case(policy, due, tz, now)
    assert len(steps) == len(policy.steps)
    # future steps are always scheduled
    assert all(s.status == "scheduled" for s in steps if s.due_at > now)
    past = [s for s in steps if s.due_at <= now]
    if past:
        latest = max(s.offset_days for s in past)
        for s in past:
            assert s.status == ("scheduled" if s.offset_days == latest else "skipped")
    # every due_at is at send_hour_local in the customer's zone on due_date + offset
    from zoneinfo import ZoneInfo

    for s in steps:
        local = s.due_at.astimezone(ZoneInfo(tz))
        assert local.date() == due + timedelta(days=s.offset_days)
        assert (local.hour, local.minute) == (policy.send_hour_local, 0)


class TestNotificationKey:
    def test_format(self):
        assert notification_key("c1", "overdue_7", "sms") == "c1:overdue_7:sms"

    def test_same_inputs_same_key_for_retries(self):
        assert notification_key("c1", "due", "email") == notification_key("c1", "due", "email")

    @pytest.mark.parametrize("policy", list(DEFAULT_POLICIES.values()), ids=lambda p: p.name)
    def test_unique_per_step_and_channel_within_a_case(self, policy):
        case_id = str(uuid.uuid4())
        keys = [notification_key(case_id, s.name, s.channel) for s in policy.steps]
        assert len(keys) == len(set(keys))

    @given(st.uuids(), st.uuids(),
           st.sampled_from([(s.name, s.channel) for s in STRICT.steps]),
           st.sampled_from([(s.name, s.channel) for s in STRICT.steps]))
    def test_distinct_inputs_distinct_keys(self, case_a, case_b, step_a, step_b):
        ka = notification_key(str(case_a), *step_a)
        kb = notification_key(str(case_b), *step_b)
        assert (ka == kb) == ((case_a, step_a) == (case_b, step_b))
