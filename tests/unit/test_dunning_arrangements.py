"""Arrangements a customer agrees with a collector (services/dunning/domain/arrangements.py):
promises to pay, payment plans, settlement offers and dispute transitions. Pure rules: no
database, no broker, no network, no files.
"""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.dunning.domain.arrangements import (
    DISPUTE_REASONS,
    ArrangementError,
    Instalment,
    PlanState,
    check_instalments,
    check_promise,
    end_of_day,
    plan_state,
    promise_outcome,
    resolve_dispute,
    settlement_amount,
    settlement_credit,
    settlement_outcome,
    settlement_terms,
    split_instalments,
)

UTC = timezone.utc
TODAY = date(2026, 3, 20)
TIMEZONES = ["UTC", "Europe/Istanbul", "America/New_York", "Europe/Berlin", "Asia/Kolkata",
             "Australia/Sydney", "Pacific/Auckland", "America/Los_Angeles"]
US = timedelta(microseconds=1)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def plan(*amounts: int, first: date = date(2026, 4, 1), every_days: int = 30) -> list[Instalment]:
    return [Instalment(n + 1, first + timedelta(days=every_days * n), a) for n, a in enumerate(amounts)]


# --- end_of_day -------------------------------------------------------------------------------


def test_end_of_day_istanbul():
    """end_of_day: the 10th in Istanbul (UTC+3) ends at 21:00Z on the 10th."""
    assert end_of_day(date(2026, 3, 10), "Europe/Istanbul") == utc(2026, 3, 10, 21)


def test_end_of_day_utc():
    """end_of_day: in UTC a day ends at the following midnight."""
    assert end_of_day(date(2026, 3, 10), "UTC") == utc(2026, 3, 11)


def test_end_of_day_new_york_before_spring_forward():
    """end_of_day: 2026-03-07 in New York ends at midnight EST (UTC-5) = 05:00Z on the 8th."""
    assert end_of_day(date(2026, 3, 7), "America/New_York") == utc(2026, 3, 8, 5)


def test_end_of_day_new_york_on_spring_forward_day():
    """end_of_day: 2026-03-08 (US DST switch) ends at midnight EDT (UTC-4) = 04:00Z on the 9th."""
    assert end_of_day(date(2026, 3, 8), "America/New_York") == utc(2026, 3, 9, 4)


def test_end_of_day_new_york_spring_forward_day_is_23_hours():
    """end_of_day: the US spring-forward day lasts 23 hours."""
    tz = "America/New_York"
    assert end_of_day(date(2026, 3, 8), tz) - end_of_day(date(2026, 3, 7), tz) == timedelta(hours=23)


def test_end_of_day_new_york_fall_back():
    """end_of_day: across the US fall-back (2026-11-01) the day lasts 25 hours."""
    tz = "America/New_York"
    assert end_of_day(date(2026, 10, 31), tz) == utc(2026, 11, 1, 4)
    assert end_of_day(date(2026, 11, 1), tz) == utc(2026, 11, 2, 5)


def test_end_of_day_is_utc_aware():
    """end_of_day: the result is an aware datetime with a zero UTC offset."""
    result = end_of_day(date(2026, 3, 10), "Europe/Istanbul")
    assert result.tzinfo is not None
    assert result.utcoffset() == timedelta(0)


@given(day=st.dates(min_value=date(2000, 1, 1), max_value=date(2099, 12, 30)),
       tz=st.sampled_from(TIMEZONES))
def test_end_of_day_is_next_local_midnight(day, tz):
    """end_of_day: in the customer's timezone the result is midnight starting the next day."""
    local = end_of_day(day, tz).astimezone(ZoneInfo(tz))
    assert (local.date(), local.hour, local.minute, local.second, local.microsecond) == (
        day + timedelta(days=1), 0, 0, 0, 0)


@given(day=st.dates(min_value=date(2000, 1, 2), max_value=date(2099, 12, 30)),
       tz=st.sampled_from(TIMEZONES))
def test_end_of_day_days_are_23_to_25_hours(day, tz):
    """end_of_day: consecutive days end 23, 24 or 25 hours apart (24 in UTC)."""
    length = end_of_day(day, tz) - end_of_day(day - timedelta(days=1), tz)
    assert length in {timedelta(hours=23), timedelta(hours=24), timedelta(hours=25)}
    if tz == "UTC":
        assert length == timedelta(hours=24)


# --- check_promise --------------------------------------------------------------------------


def test_check_promise_valid():
    """check_promise: a positive amount up to what is owed, on a future day, is accepted."""
    assert check_promise(5_000, TODAY + timedelta(days=7), TODAY, 10_000) is None


def test_check_promise_today_allowed():
    """check_promise: a promise for today is not in the past."""
    check_promise(5_000, TODAY, TODAY, 10_000)


def test_check_promise_exactly_owed_allowed():
    """check_promise: a promise for exactly what is owed is allowed."""
    check_promise(10_000, TODAY, TODAY, 10_000)


@pytest.mark.parametrize("amount", [0, -1, -10_000])
def test_check_promise_non_positive_amount(amount):
    """check_promise: a zero or negative amount is rejected on amount_minor."""
    with pytest.raises(ArrangementError) as err:
        check_promise(amount, TODAY + timedelta(days=1), TODAY, 10_000)
    assert err.value.field == "amount_minor"


def test_check_promise_above_owed():
    """check_promise: an amount above what is owed is rejected on amount_minor."""
    with pytest.raises(ArrangementError) as err:
        check_promise(10_001, TODAY + timedelta(days=1), TODAY, 10_000)
    assert err.value.field == "amount_minor"
    assert "10001" in err.value.reason and "10000" in err.value.reason


def test_check_promise_date_in_past():
    """check_promise: a promised date before today is rejected on promised_date."""
    with pytest.raises(ArrangementError) as err:
        check_promise(5_000, TODAY - timedelta(days=1), TODAY, 10_000)
    assert err.value.field == "promised_date"


def test_arrangement_error_is_value_error_with_field_and_reason():
    """ArrangementError: a ValueError carrying field and reason, shown as 'field: reason'."""
    err = ArrangementError("amount_minor", "must be positive")
    assert isinstance(err, ValueError)
    assert (err.field, err.reason) == ("amount_minor", "must be positive")
    assert str(err) == "amount_minor: must be positive"


@given(amount=st.integers(-10**9, 10**9), owed=st.integers(0, 10**9),
       offset=st.integers(-400, 400))
def test_check_promise_property(amount, owed, offset):
    """check_promise: accepts exactly 0 < amount <= owed and promised_date >= today."""
    promised = TODAY + timedelta(days=offset)
    valid = 0 < amount <= owed and offset >= 0
    if valid:
        check_promise(amount, promised, TODAY, owed)
    else:
        with pytest.raises(ArrangementError) as err:
            check_promise(amount, promised, TODAY, owed)
        expected = "amount_minor" if not 0 < amount <= owed else "promised_date"
        assert err.value.field == expected


# --- promise_outcome -------------------------------------------------------------------------

DEADLINE = end_of_day(date(2026, 3, 10), "Europe/Istanbul")  # 2026-03-10T21:00Z


def test_promise_kept_early():
    """promise_outcome: kept once paid covers the amount, even before the deadline."""
    assert promise_outcome(5_000, 5_000, DEADLINE, DEADLINE - timedelta(days=5)) == "kept"


def test_promise_kept_at_exact_amount_after_deadline():
    """promise_outcome: paying exactly the amount keeps the promise (also judged after the deadline)."""
    assert promise_outcome(5_000, 5_000, DEADLINE, DEADLINE + timedelta(days=5)) == "kept"


def test_promise_kept_by_over_payment():
    """promise_outcome: paying more than promised keeps the promise."""
    assert promise_outcome(5_000, 7_500, DEADLINE, DEADLINE - timedelta(hours=1)) == "kept"
    assert promise_outcome(5_000, 7_500, DEADLINE, DEADLINE + timedelta(hours=1)) == "kept"


def test_promise_open_before_deadline_when_short():
    """promise_outcome: short of the amount before the deadline is still open."""
    assert promise_outcome(5_000, 4_999, DEADLINE, DEADLINE - US) == "open"
    assert promise_outcome(5_000, 0, DEADLINE, DEADLINE - timedelta(days=3)) == "open"


def test_promise_broken_at_deadline_when_short():
    """promise_outcome: short of the amount at exactly the deadline is broken."""
    assert promise_outcome(5_000, 4_999, DEADLINE, DEADLINE) == "broken"


def test_promise_broken_after_deadline_when_short():
    """promise_outcome: short of the amount after the deadline is broken."""
    assert promise_outcome(5_000, 0, DEADLINE, DEADLINE + timedelta(days=1)) == "broken"


def test_promise_deadline_compared_as_instants():
    """promise_outcome: the deadline is an instant, whatever timezone `now` is expressed in."""
    ist = ZoneInfo("Europe/Istanbul")
    just_before = datetime(2026, 3, 10, 23, 59, 59, tzinfo=ist)  # 20:59:59Z
    midnight_local = datetime(2026, 3, 11, 0, 0, tzinfo=ist)  # 21:00Z
    assert promise_outcome(5_000, 0, DEADLINE, just_before) == "open"
    assert promise_outcome(5_000, 0, DEADLINE, midnight_local) == "broken"


@given(amount=st.integers(1, 10**9), paid=st.integers(0, 2 * 10**9),
       delta=st.integers(-10**6, 10**6))
def test_promise_outcome_property(amount, paid, delta):
    """promise_outcome: kept iff paid >= amount; otherwise broken iff now >= deadline."""
    now = DEADLINE + timedelta(seconds=delta)
    outcome = promise_outcome(amount, paid, DEADLINE, now)
    if paid >= amount:
        assert outcome == "kept"
    else:
        assert outcome == ("broken" if delta >= 0 else "open")


# --- split_instalments ------------------------------------------------------------------------


def test_split_even():
    """split_instalments: an even total splits into equal instalments 30 days apart by default."""
    first = date(2026, 4, 1)
    assert split_instalments(90_000, 3, first) == [
        Instalment(1, date(2026, 4, 1), 30_000),
        Instalment(2, date(2026, 5, 1), 30_000),
        Instalment(3, date(2026, 5, 31), 30_000),
    ]


def test_split_remainder_on_first():
    """split_instalments: the remainder of the division goes on the first instalment."""
    result = split_instalments(10_000, 3, date(2026, 4, 1), every_days=14)
    assert [i.amount_minor for i in result] == [3_334, 3_333, 3_333]
    assert [i.due_date for i in result] == [date(2026, 4, 1), date(2026, 4, 15), date(2026, 4, 29)]
    assert [i.sequence for i in result] == [1, 2, 3]


def test_split_single_instalment():
    """split_instalments: one instalment carries the whole total on the first due date."""
    assert split_instalments(12_345, 1, date(2026, 4, 1)) == [Instalment(1, date(2026, 4, 1), 12_345)]


def test_split_total_equal_count():
    """split_instalments: total == count gives instalments of one minor unit each."""
    assert [i.amount_minor for i in split_instalments(5, 5, date(2026, 4, 1))] == [1] * 5


def test_split_max_count_allowed():
    """split_instalments: 120 instalments is the upper limit and allowed."""
    assert len(split_instalments(120_000, 120, date(2026, 4, 1))) == 120


@given(total=st.integers(1, 10**12), count=st.integers(1, 120), every_days=st.integers(1, 400),
       first=st.dates(min_value=date(2000, 1, 1), max_value=date(2200, 1, 1)))
def test_split_property(total, count, every_days, first):
    """split_instalments: sums exactly to the total, remainder on the first, dates every_days apart."""
    if total < count:
        with pytest.raises(ArrangementError):
            split_instalments(total, count, first, every_days)
        return
    result = split_instalments(total, count, first, every_days)
    assert len(result) == count
    assert sum(i.amount_minor for i in result) == total
    assert [i.sequence for i in result] == list(range(1, count + 1))
    base = total // count
    assert result[0].amount_minor == base + total % count
    assert all(i.amount_minor == base for i in result[1:])
    assert all(i.amount_minor > 0 for i in result)
    assert [i.due_date for i in result] == [first + timedelta(days=every_days * n) for n in range(count)]
    # a split plan is itself a valid plan from its first due day
    check_instalments(result, total, first)


@pytest.mark.parametrize("count", [0, -1, 121])
def test_split_count_out_of_range(count):
    """split_instalments: the count must be between 1 and 120."""
    with pytest.raises(ArrangementError) as err:
        split_instalments(100_000, count, date(2026, 4, 1))
    assert err.value.field == "instalments"


def test_split_total_below_count():
    """split_instalments: a total smaller than the count would leave empty instalments."""
    with pytest.raises(ArrangementError) as err:
        split_instalments(2, 3, date(2026, 4, 1))
    assert err.value.field == "instalments"


@pytest.mark.parametrize("every_days", [0, -30])
def test_split_every_days_not_positive(every_days):
    """split_instalments: every_days must be positive."""
    with pytest.raises(ArrangementError) as err:
        split_instalments(100_000, 3, date(2026, 4, 1), every_days=every_days)
    assert err.value.field == "every_days"


# --- check_instalments ------------------------------------------------------------------------


def test_check_instalments_valid():
    """check_instalments: a plan summing to the total, ordered, from today on, passes."""
    assert check_instalments(plan(4_000, 3_000, 3_000, first=TODAY), 10_000, TODAY) is None


def test_check_instalments_empty():
    """check_instalments: a plan needs at least one instalment."""
    with pytest.raises(ArrangementError) as err:
        check_instalments([], 0, TODAY)
    assert err.value.field == "instalments"


@pytest.mark.parametrize("total", [9_999, 10_001])
def test_check_instalments_sum_mismatch(total):
    """check_instalments: instalments must add up to exactly the total owed."""
    with pytest.raises(ArrangementError) as err:
        check_instalments(plan(5_000, 5_000, first=TODAY), total, TODAY)
    assert err.value.field == "instalments"
    assert "10000" in err.value.reason


@pytest.mark.parametrize("amounts", [(10_000, 0), (12_000, -2_000), (0, 10_000)])
def test_check_instalments_non_positive(amounts):
    """check_instalments: every instalment must be positive (even when the sum matches)."""
    with pytest.raises(ArrangementError) as err:
        check_instalments(plan(*amounts, first=TODAY), 10_000, TODAY)
    assert err.value.field == "instalments"
    assert "positive" in err.value.reason


def test_check_instalments_unordered_dates():
    """check_instalments: due dates must be in ascending order."""
    instalments = [Instalment(1, TODAY + timedelta(days=30), 5_000), Instalment(2, TODAY, 5_000)]
    with pytest.raises(ArrangementError) as err:
        check_instalments(instalments, 10_000, TODAY)
    assert err.value.field == "instalments"
    assert "order" in err.value.reason


def test_check_instalments_duplicate_dates():
    """check_instalments: at most one instalment per day."""
    instalments = [Instalment(1, TODAY, 5_000), Instalment(2, TODAY, 5_000)]
    with pytest.raises(ArrangementError) as err:
        check_instalments(instalments, 10_000, TODAY)
    assert err.value.field == "instalments"


def test_check_instalments_first_in_past():
    """check_instalments: the first instalment may not be due before today."""
    with pytest.raises(ArrangementError) as err:
        check_instalments(plan(5_000, 5_000, first=TODAY - timedelta(days=1)), 10_000, TODAY)
    assert err.value.field == "instalments"
    assert "past" in err.value.reason


def test_check_instalments_first_today_allowed():
    """check_instalments: a first instalment due today is not in the past."""
    check_instalments(plan(10_000, first=TODAY), 10_000, TODAY)


# --- plan_state -------------------------------------------------------------------------------

NY = "America/New_York"


def test_plan_state_nothing_paid_active():
    """plan_state: nothing paid, before any deadline, is active."""
    state = plan_state(plan(3_000, 3_000, 3_000), 0, utc(2026, 3, 25), 5, NY)
    assert state == PlanState("active", (0, 0, 0), None)


def test_plan_state_payments_cover_in_order_partial_second():
    """plan_state: payments cover instalments in order, leaving the second partly paid."""
    state = plan_state(plan(3_000, 3_000, 3_000), 4_500, utc(2026, 4, 2), 5, NY)
    assert state == PlanState("active", (3_000, 1_500, 0), None)


def test_plan_state_completed_when_fully_paid():
    """plan_state: completed when the payments cover every instalment, even before due dates."""
    state = plan_state(plan(3_000, 3_000, 3_000), 9_000, utc(2026, 3, 25), 5, NY)
    assert state == PlanState("completed", (3_000, 3_000, 3_000), None)


def test_plan_state_completed_with_over_payment_even_late():
    """plan_state: an over-payment completes the plan, each instalment capped at its amount."""
    state = plan_state(plan(3_000, 3_000, 3_000), 12_000, utc(2027, 1, 1), 5, NY)
    assert state == PlanState("completed", (3_000, 3_000, 3_000), None)


def test_plan_state_active_during_grace():
    """plan_state: an unpaid instalment stays active during the grace days."""
    # first due 2026-04-01, grace 5 -> deadline is end of 2026-04-06 in New York (EDT) = 04-07T04:00Z
    state = plan_state(plan(3_000, 3_000, 3_000), 0, utc(2026, 4, 4, 12), 5, NY)
    assert state.status == "active"
    assert state.missed is None


def test_plan_state_broken_boundary_exact():
    """plan_state: broken at exactly end_of_day(due + grace) in the customer's timezone, not before."""
    deadline = end_of_day(date(2026, 4, 1) + timedelta(days=5), NY)
    assert deadline == utc(2026, 4, 7, 4)
    instalments = plan(3_000, 3_000, 3_000)
    before = plan_state(instalments, 1_000, deadline - US, 5, NY)
    at = plan_state(instalments, 1_000, deadline, 5, NY)
    assert before == PlanState("active", (1_000, 0, 0), None)
    assert at == PlanState("broken", (1_000, 0, 0), 1)


def test_plan_state_deadline_uses_customer_timezone():
    """plan_state: the same instant is within grace in New York but past it in Istanbul."""
    instalments = plan(3_000, first=date(2026, 4, 1))
    now = utc(2026, 4, 1, 23)  # still the 1st in New York (19:00 EDT); the 2nd in Istanbul
    assert plan_state(instalments, 0, now, 0, NY).status == "active"
    assert plan_state(instalments, 0, now, 0, "Europe/Istanbul") == PlanState("broken", (0,), 1)


def test_plan_state_zero_grace():
    """plan_state: with no grace an instalment is missed at the end of its due day."""
    instalments = plan(3_000, first=date(2026, 4, 1))
    deadline = end_of_day(date(2026, 4, 1), "UTC")
    assert plan_state(instalments, 0, deadline - US, 0, "UTC").status == "active"
    assert plan_state(instalments, 0, deadline, 0, "UTC").status == "broken"


def test_plan_state_grace_across_dst():
    """plan_state: a grace period across the US DST switch ends at local midnight (EDT), not EST."""
    instalments = plan(3_000, first=date(2026, 3, 5))
    # 2026-03-05 + 3 days = 2026-03-08 (switch day) -> ends 2026-03-09T04:00Z
    assert plan_state(instalments, 0, utc(2026, 3, 9, 4) - US, 3, NY).status == "active"
    assert plan_state(instalments, 0, utc(2026, 3, 9, 4), 3, NY).status == "broken"


def test_plan_state_missed_is_first_missed_instalment():
    """plan_state: `missed` is the sequence of the first instalment whose deadline passed unpaid."""
    instalments = plan(3_000, 3_000, 3_000)  # due 04-01, 05-01, 05-31
    # first two paid, third partly: third missed after its grace
    state = plan_state(instalments, 7_000, utc(2026, 7, 1), 5, NY)
    assert state == PlanState("broken", (3_000, 3_000, 1_000), 3)
    # first paid, second partly paid and past its deadline, third also past: the second is reported
    state = plan_state(instalments, 4_000, utc(2026, 7, 1), 5, NY)
    assert state == PlanState("broken", (3_000, 1_000, 0), 2)
    # nothing paid, all past: the first is reported
    state = plan_state(instalments, 0, utc(2026, 7, 1), 5, NY)
    assert state == PlanState("broken", (0, 0, 0), 1)


def test_plan_state_paid_instalments_are_not_missed():
    """plan_state: a late but covered instalment does not break the plan while the next is in grace."""
    instalments = plan(3_000, 3_000, 3_000)
    # 2026-05-03: the first's deadline passed (covered), the second (due 05-01, grace 5) is in grace
    state = plan_state(instalments, 3_000, utc(2026, 5, 3), 5, NY)
    assert state == PlanState("active", (3_000, 0, 0), None)


amounts_st = st.lists(st.integers(1, 10**7), min_size=1, max_size=24)


@given(amounts=amounts_st, paid=st.integers(0, 3 * 10**8), days=st.integers(-30, 800),
       grace=st.integers(0, 30), tz=st.sampled_from(TIMEZONES))
def test_plan_state_property(amounts, paid, days, grace, tz):
    """plan_state: sum(paid) == min(paid_minor, total), paid[i] <= amount[i], status and missed consistent."""
    instalments = plan(*amounts, first=date(2026, 4, 1), every_days=30)
    now = utc(2026, 4, 1) + timedelta(days=days)
    state = plan_state(instalments, paid, now, grace, tz)
    total = sum(amounts)
    assert len(state.paid) == len(amounts)
    assert sum(state.paid) == min(paid, total)
    assert all(0 <= p <= a for p, a in zip(state.paid, amounts))
    # in order: once an instalment is short, nothing after it is covered
    short = [n for n, (p, a) in enumerate(zip(state.paid, amounts)) if p < a]
    if short:
        assert all(p == 0 for p in state.paid[short[0] + 1:])
    if paid >= total:
        assert state == PlanState("completed", tuple(amounts), None)
        return
    overdue = [instalments[n].sequence for n in short
               if now >= end_of_day(instalments[n].due_date + timedelta(days=grace), tz)]
    if overdue:
        assert (state.status, state.missed) == ("broken", overdue[0])
    else:
        assert (state.status, state.missed) == ("active", None)


# --- settlement_amount ------------------------------------------------------------------------


def test_settlement_ten_percent():
    """settlement_amount: 100,000 owed at 10% discount settles for 90,000."""
    assert settlement_amount(100_000, Decimal("10"), Decimal("20")) == 90_000


def test_settlement_rounds_discount_half_up():
    """settlement_amount: 12,345 at 7.5% -> discount 925.875 rounds to 926 -> 11,419."""
    assert settlement_amount(12_345, Decimal("7.5"), Decimal("10")) == 11_419


@pytest.mark.parametrize("owed, percent, expected", [
    (10, "5", 9),  # discount 0.5 -> 1 (half up, not half even)
    (50, "5", 47),  # discount 2.5 -> 3 (half up, not half even)
    (1_001, "5", 951),  # discount 50.05 -> 50
    (1_010, "5", 959),  # discount 50.5 -> 51
    (999, "0.1", 998),  # discount 0.999 -> 1
    (1, "49", 1),  # discount 0.49 -> 0
    (0, "10", 0),  # nothing owed
    (100_000, "0.01", 99_990),  # discount 10
])
def test_settlement_hand_computed(owed, percent, expected):
    """settlement_amount: owed less the discount rounded half up to the minor unit."""
    assert settlement_amount(owed, Decimal(percent), Decimal("50")) == expected


def test_settlement_discount_at_limit_allowed():
    """settlement_amount: a discount equal to the policy's maximum is allowed."""
    assert settlement_amount(100_000, Decimal("15"), Decimal("15")) == 85_000


def test_settlement_rounding_never_beyond_limit():
    """settlement_amount: at the policy's maximum, the rounded discount stays within max % of owed."""
    owed, limit = 12_345, Decimal("7.5")
    result = settlement_amount(owed, limit, limit)
    assert Decimal(owed - result) <= Decimal(owed) * limit / 100


def test_settlement_discount_above_limit():
    """settlement_amount: a discount above the policy's maximum is rejected."""
    with pytest.raises(ArrangementError) as err:
        settlement_amount(100_000, Decimal("10.01"), Decimal("10"))
    assert err.value.field == "discount_percent"


@pytest.mark.parametrize("percent", ["0", "-1", "-0.01"])
def test_settlement_discount_not_positive(percent):
    """settlement_amount: a zero or negative discount is rejected."""
    with pytest.raises(ArrangementError) as err:
        settlement_amount(100_000, Decimal(percent), Decimal("10"))
    assert err.value.field == "discount_percent"


@given(owed=st.integers(0, 10**12),
       percent=st.decimals(min_value=Decimal("0.01"), max_value=Decimal("100"), places=2))
def test_settlement_property(owed, percent):
    """settlement_amount: result == owed - round_half_up(owed * p / 100), an int within [0, owed]."""
    result = settlement_amount(owed, percent, Decimal("100"))
    discount = (Decimal(owed) * percent / 100).quantize(Decimal(1), rounding=ROUND_HALF_UP)
    assert isinstance(result, int)
    assert result == owed - int(discount)
    assert 0 <= result <= owed
    # rounding moves the discount by at most half a minor unit
    assert abs(Decimal(owed - result) - Decimal(owed) * percent / 100) <= Decimal("0.5")


# --- resolve_dispute --------------------------------------------------------------------------


@pytest.mark.parametrize("credit", [1, 2_500, 5_000])
def test_dispute_accepted_with_credit_in_range(credit):
    """resolve_dispute: open -> accepted with a credit in (0, disputed]."""
    assert resolve_dispute("open", "accepted", credit, 5_000) is None


def test_dispute_rejected_without_credit():
    """resolve_dispute: open -> rejected without a credit."""
    assert resolve_dispute("open", "rejected", None, 5_000) is None


@pytest.mark.parametrize("credit", [1, 5_000, -1])
def test_dispute_rejected_with_credit_raises(credit):
    """resolve_dispute: a rejected dispute gets no credit."""
    with pytest.raises(ArrangementError) as err:
        resolve_dispute("open", "rejected", credit, 5_000)
    assert err.value.field == "credit_minor"


@pytest.mark.parametrize("credit", [5_001, 0, -1])
def test_dispute_accepted_with_credit_out_of_range(credit):
    """resolve_dispute: an accepted credit must be between 1 and the disputed amount."""
    with pytest.raises(ArrangementError) as err:
        resolve_dispute("open", "accepted", credit, 5_000)
    assert err.value.field == "credit_minor"


def test_dispute_accepted_with_no_disputed_amount_cannot_credit():
    """resolve_dispute: with nothing (or a negative amount) disputed, no credit fits."""
    for disputed in (0, -100):
        with pytest.raises(ArrangementError) as err:
            resolve_dispute("open", "accepted", 1, disputed)
        assert err.value.field == "credit_minor"


@pytest.mark.parametrize("status", ["accepted", "rejected", "withdrawn"])
@pytest.mark.parametrize("outcome, credit", [("accepted", 100), ("rejected", None)])
def test_dispute_already_resolved(status, outcome, credit):
    """resolve_dispute: only an open dispute moves; a resolved one raises on dispute_id."""
    with pytest.raises(ArrangementError) as err:
        resolve_dispute(status, outcome, credit, 5_000)
    assert err.value.field == "dispute_id"
    assert status in err.value.reason


@pytest.mark.parametrize("outcome", ["withdrawn", "open", "ACCEPTED", ""])
def test_dispute_unknown_outcome(outcome):
    """resolve_dispute: the outcome must be accepted or rejected."""
    with pytest.raises(ArrangementError) as err:
        resolve_dispute("open", outcome, None, 5_000)
    assert err.value.field == "outcome"


def test_dispute_status_checked_before_outcome():
    """resolve_dispute: a resolved dispute is reported as such even with an unknown outcome."""
    with pytest.raises(ArrangementError) as err:
        resolve_dispute("rejected", "bogus", None, 5_000)
    assert err.value.field == "dispute_id"


@given(credit=st.integers(-10**6, 10**6), disputed=st.integers(-10**6, 10**6))
def test_dispute_accepted_credit_property(credit, disputed):
    """resolve_dispute: an accepted credit passes iff 0 < credit <= disputed."""
    if 0 < credit <= disputed:
        resolve_dispute("open", "accepted", credit, disputed)
    else:
        with pytest.raises(ArrangementError) as err:
            resolve_dispute("open", "accepted", credit, disputed)
        assert err.value.field == "credit_minor"


# --- dispute reasons --------------------------------------------------------------------------


def test_dispute_reasons_are_the_seven_codes():
    """DISPUTE_REASONS: exactly the seven reason codes, without duplicates."""
    assert set(DISPUTE_REASONS) == {"price", "quantity", "quality", "not_received", "duplicate",
                                    "already_paid", "other"}
    assert len(DISPUTE_REASONS) == 7


# --- settlement terms, outcome and credit -----------------------------------------------------------

_LIMITS = dict(max_percent=Decimal("10"), max_days=14, min_days_overdue=30)


def test_settlement_terms_within_the_policy():
    """12,345.67 overdue at 7.5 %: discount 925.93 (925.925 half up), pays 11,419.74 by a day within 14."""
    t = settlement_terms(1_234_567, Decimal("7.5"), TODAY + timedelta(days=14), TODAY, 30, **_LIMITS)
    assert (t.owed_minor, t.discount_minor, t.pay_minor) == (1_234_567, 92_593, 1_141_974)
    assert t.discount_minor + t.pay_minor == t.owed_minor


@pytest.mark.parametrize("percent, pay_by, days_overdue, field, words", [
    ("12", TODAY + timedelta(days=7), 40, "discount_percent", "above the policy's limit of 10"),
    ("5", TODAY + timedelta(days=15), 40, "pay_by", "more than the policy's 14 days"),
    ("5", TODAY - timedelta(days=1), 40, "pay_by", "has passed"),
    ("5", TODAY + timedelta(days=7), 29, "case_id", "from 30 days"),
    ("0", TODAY + timedelta(days=7), 40, "discount_percent", "must be positive"),
])
def test_settlement_terms_outside_the_policy_are_refused_naming_the_field(percent, pay_by, days_overdue, field, words):
    with pytest.raises(ArrangementError) as e:
        settlement_terms(100_000, Decimal(percent), pay_by, TODAY, days_overdue, **_LIMITS)
    assert e.value.field == field and words in e.value.reason, e.value


def test_settlement_terms_refuse_a_discount_that_rounds_to_nothing_and_nothing_owed():
    with pytest.raises(ArrangementError, match="rounds to nothing"):
        settlement_terms(4, Decimal("10"), TODAY, TODAY, 40, **_LIMITS)
    with pytest.raises(ArrangementError, match="nothing is overdue"):
        settlement_terms(0, Decimal("10"), TODAY, TODAY, 40, **_LIMITS)


def test_settlement_outcome_accepted_on_the_last_moment_expired_after():
    deadline = end_of_day(TODAY, "Europe/Istanbul")
    assert settlement_outcome(90_000, 89_999, deadline, deadline - US) == "open"
    assert settlement_outcome(90_000, 90_000, deadline, deadline - US) == "accepted"
    assert settlement_outcome(90_000, 95_000, deadline, deadline) == "accepted"  # paid in time, decided late
    assert settlement_outcome(90_000, 89_999, deadline, deadline) == "expired"


@pytest.mark.parametrize("discount, still_open, credit", [
    (10_000, 10_000, 10_000),  # paid exactly the settlement amount: the discount is credited
    (10_000, 4_000, 4_000),  # paid more than asked: only what is left
    (10_000, 0, 0),  # paid in full: no credit
    (10_000, 12_000, 10_000),  # a new charge since: never more than the discount
])
def test_settlement_credit_is_what_is_still_open_at_most_the_discount(discount, still_open, credit):
    assert settlement_credit(discount, still_open) == credit
