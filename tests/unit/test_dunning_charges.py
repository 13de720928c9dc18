"""Statutory late-payment interest and compensation. Pure, no I/O beyond the packaged rate table.

Every expected amount is computed by hand in the comments: interest in minor units is
principal_minor * rate% * days / 365 per rate period, summed, then rounded once, half up.
"""
from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.dunning.domain.charges import (
    Interest,
    Jurisdiction,
    RatePeriod,
    compensation_minor,
    interest,
    interest_on_balance,
    load_jurisdictions,
)

EU = load_jurisdictions()["eu-2011-7"]
TR = load_jurisdictions()["tr-ttk-1530"]


def flat(rate: str, start: date = date(2020, 1, 1)) -> Jurisdiction:
    """A one-row table, to make the arithmetic trivial."""
    return Jurisdiction("test", "test", "test", {}, (RatePeriod(start, Decimal(rate), None, "test"),))


class TestInterest:
    def test_span_inside_one_rate_period(self):
        # EU, 2025-03-01 .. 2025-03-31 (exclusive) = 30 days, all at 11.15% (row from 2025-01-01).
        # 1,000.00 EUR = 100000 cents: 100000 * 0.1115 * 30 / 365 = 334500 / 365 = 916.438... -> 916
        result = interest(EU, 100_000, date(2025, 3, 1), date(2025, 3, 31))
        assert result.amount_minor == 916
        assert [(p.start, p.end, p.days, p.annual_rate) for p in result.pieces] == [
            (date(2025, 3, 1), date(2025, 3, 31), 30, Decimal("11.15"))
        ]

    def test_span_across_a_rate_change_is_split(self):
        # EU, 2025-06-01 .. 2025-08-01, the rate changes on 2025-07-01 (11.15% -> 10.15%).
        #   piece 1: 2025-06-01 .. 2025-07-01 = 30 days: 100000 * 0.1115 * 30 / 365 = 334500 / 365 = 916.4383...
        #   piece 2: 2025-07-01 .. 2025-08-01 = 31 days: 100000 * 0.1015 * 31 / 365 = 314650 / 365 = 862.0548...
        #   total: 649150 / 365 = 1778.4931... -> 1778 (17.78 EUR)
        result = interest(EU, 100_000, date(2025, 6, 1), date(2025, 8, 1))
        assert result.amount_minor == 1778
        assert [(p.start, p.end, p.days, p.annual_rate) for p in result.pieces] == [
            (date(2025, 6, 1), date(2025, 7, 1), 30, Decimal("11.15")),
            (date(2025, 7, 1), date(2025, 8, 1), 31, Decimal("10.15")),
        ]
        assert result.pieces[0].amount == Decimal(334_500) / 365
        assert result.pieces[1].amount == Decimal(314_650) / 365

    def test_pieces_are_rounded_once_not_each(self):
        # Same span, principal 100001:
        #   piece 1: 100001 * 0.1115 * 30 = 334503.345 -> / 365 = 916.4475...  (alone: 916)
        #   piece 2: 100001 * 0.1015 * 31 = 314653.1465 -> / 365 = 862.0634... (alone: 862)
        #   total: 649156.4915 / 365 = 1778.5109... -> 1779, not 916 + 862 = 1778
        assert interest(EU, 100_001, date(2025, 6, 1), date(2025, 8, 1)).amount_minor == 1779

    def test_leap_year_counts_366_days_at_365(self):
        # EU, 2024-01-01 .. 2025-01-01 = 366 days (2024 is a leap year), 100,000.00 EUR = 10,000,000 cents.
        #   piece 1: 2024-01-01 .. 2024-07-01 = 31+29+31+30+31+30 = 182 days at 12.50%:
        #            10,000,000 * 0.125 * 182 / 365 = 227,500,000 / 365 = 623,287.6712...
        #   piece 2: 2024-07-01 .. 2025-01-01 = 31+31+30+31+30+31 = 184 days at 12.25%:
        #            10,000,000 * 0.1225 * 184 / 365 = 225,400,000 / 365 = 617,534.2465...
        #   total: 452,900,000 / 365 = 1,240,821.9178... -> 1,240,822 cents (12,408.22 EUR);
        #   365 * 1,240,821 = 452,899,665, remainder 335 (> 182.5, so it rounds up).
        result = interest(EU, 10_000_000, date(2024, 1, 1), date(2025, 1, 1))
        assert [p.days for p in result.pieces] == [182, 184]
        assert result.amount_minor == 1_240_822

    def test_tr_matches_the_published_worked_example(self):
        # kanal6haber.com on the 2026 Tebliğ: "(100.000 TL x %43 / 365 gün) x 30 gün = 3.534,25 TL".
        # 10,000,000 kuruş * 0.43 * 30 / 365 = 129,000,000 / 365 = 353,424.657... -> 353,425 kuruş
        assert interest(TR, 10_000_000, date(2026, 1, 1), date(2026, 1, 31)).amount_minor == 353_425

    def test_tr_across_the_new_year(self):
        # TR, 2025-12-01 .. 2026-01-31, 100,000.00 TRY = 10,000,000 kuruş:
        #   2025-12-01 .. 2026-01-01 = 31 days at 53.25%: 5,325,000 * 31 / 365 = 165,075,000 / 365 = 452,260.27...
        #   2026-01-01 .. 2026-01-31 = 30 days at 43.00%: 4,300,000 * 30 / 365 = 129,000,000 / 365 = 353,424.65...
        #   total: 294,075,000 / 365 = 805,684.93... -> 805,685
        result = interest(TR, 10_000_000, date(2025, 12, 1), date(2026, 1, 31))
        assert [p.annual_rate for p in result.pieces] == [Decimal("53.25"), Decimal("43.00")]
        assert result.amount_minor == 805_685

    @pytest.mark.parametrize(
        ("principal", "days", "expected"),
        [
            # at 36.50% a year, interest is principal * days / 1000 exactly
            (2500, 1, 3),  # 2.5 -> 3 (half up; half-even would give 2)
            (1500, 1, 2),  # 1.5 -> 2
            (2499, 1, 2),  # 2.499 -> 2
            (2501, 1, 3),  # 2.501 -> 3
            (1, 500, 1),  # 0.5 -> 1
            (1, 499, 0),  # 0.499 -> 0
        ],
    )
    def test_rounds_half_up(self, principal, days, expected):
        start = date(2021, 3, 1)
        assert interest(flat("36.50"), principal, start, start + timedelta(days=days)).amount_minor == expected

    @pytest.mark.parametrize(
        ("principal", "start", "end"),
        [
            (100_000, date(2025, 3, 1), date(2025, 3, 1)),  # empty span
            (100_000, date(2025, 3, 31), date(2025, 3, 1)),  # negative span
            (0, date(2025, 3, 1), date(2025, 3, 31)),  # nothing owed
            (0, date(1999, 1, 1), date(1999, 2, 1)),  # nothing owed, even before the table
        ],
    )
    def test_zero_when_nothing_accrues(self, principal, start, end):
        assert interest(EU, principal, start, end) == Interest(0, ())

    def test_before_the_table_raises_naming_the_date(self):
        with pytest.raises(ValueError, match="2022-12-31"):
            interest(EU, 100_000, date(2022, 12, 31), date(2023, 2, 1))

    def test_negative_principal_raises(self):
        with pytest.raises(ValueError, match="negative"):
            interest(EU, -1, date(2025, 3, 1), date(2025, 3, 31))

    def test_last_row_stays_in_force(self):
        # TR's last row (2026-01-01, 43%) covers 2027 until a newer row is added: 2027-03-01 .. 2027-03-31
        # = 30 days: 10,000,000 * 0.43 * 30 / 365 = 353,424.65... -> 353,425
        result = interest(TR, 10_000_000, date(2027, 3, 1), date(2027, 3, 31))
        assert result.amount_minor == 353_425
        assert result.pieces[0].annual_rate == Decimal("43.00")

    @given(
        principal=st.integers(min_value=1, max_value=10**12),
        start=st.dates(min_value=date(2023, 1, 1), max_value=date(2027, 12, 31)),
        length=st.integers(min_value=2, max_value=1500),
        data=st.data(),
    )
    def test_splitting_a_span_anywhere_changes_nothing(self, principal, start, length, data):
        end = start + timedelta(days=length)
        cut = start + timedelta(days=data.draw(st.integers(min_value=1, max_value=length - 1)))
        whole = interest(EU, principal, start, end)
        parts = interest(EU, principal, start, cut).pieces + interest(EU, principal, cut, end).pieces

        def unrounded(pieces):  # sum of rate * days, exact: proportional to the unrounded interest
            return sum(Fraction(p.annual_rate) * p.days for p in pieces)

        assert unrounded(parts) == unrounded(whole.pieces)
        assert sum(p.days for p in whole.pieces) == length
        # pieces tile the span with no gaps
        assert [p.start for p in whole.pieces[1:]] == [p.end for p in whole.pieces[:-1]]


class TestPackagedTable:
    def test_loads_both_jurisdictions(self):
        table = load_jurisdictions()
        assert set(table) == {"eu-2011-7", "tr-ttk-1530"}
        for j in table.values():
            starts = [r.start for r in j.rates]
            assert starts == sorted(set(starts))

    def test_eu_rate_is_reference_plus_eight_points(self):
        for row in EU.rates:
            assert row.annual_rate == row.reference_rate + 8, row.start

    def test_eu_rows_are_half_years(self):
        assert all((r.start.month, r.start.day) in {(1, 1), (7, 1)} for r in EU.rates)

    def test_compensation(self):
        assert compensation_minor(EU, "EUR") == 4000  # EUR 40.00 (Art. 6)
        assert compensation_minor(EU, "TRY") == 0
        assert compensation_minor(TR, "TRY") == 202_000  # 2,020.00 TRY (2026 Tebliğ)
        assert compensation_minor(TR, "EUR") == 0

    def test_default_load_is_cached_but_callers_get_their_own_dict(self):
        first = load_jurisdictions()
        first.clear()
        assert load_jurisdictions()["eu-2011-7"] is EU


GOOD_ROW = '{from: 2024-01-01, reference_rate: "4.50", rate: "12.50", source: "s"}'


def write_table(tmp_path: Path, rows: str, compensation: str = '{EUR: "40.00"}', day_count: str = "actual/365") -> Path:
    path = tmp_path / "late_payment.yaml"
    path.write_text(
        "jurisdictions:\n"
        "  eu-test:\n"
        "    name: n\n"
        "    basis: b\n"
        f"    day_count: {day_count}\n"
        f"    compensation: {compensation}\n"
        f"    rates: [{rows}]\n",
        encoding="utf-8",
    )
    return path


class TestBadData:
    def test_a_good_file_loads(self, tmp_path):
        j = load_jurisdictions(write_table(tmp_path, GOOD_ROW))["eu-test"]
        assert j.compensation_minor == {"EUR": 4000}
        assert j.rates == (RatePeriod(date(2024, 1, 1), Decimal("12.50"), Decimal("4.50"), "s", True),)

    @pytest.mark.parametrize(
        ("rows", "compensation", "day_count", "message"),
        [
            # unsorted rows
            (GOOD_ROW + ', {from: 2023-07-01, rate: "12.00", source: "s"}', '{EUR: "40.00"}', "actual/365",
             r"'eu-test', rates\[1\] \(from 2023-07-01\) field 'from'"),
            # the same date twice (strictly sorted)
            (GOOD_ROW + ", " + GOOD_ROW, '{EUR: "40.00"}', "actual/365", r"rates\[1\] .*field 'from'"),
            # negative rate
            ('{from: 2024-01-01, rate: "-1.00", source: "s"}', '{EUR: "40.00"}', "actual/365",
             r"'eu-test', rates\[0\] \(from 2024-01-01\) field 'rate'"),
            # a float, not a string: binary rounding already happened
            ("{from: 2024-01-01, rate: 12.5, source: s}", '{EUR: "40.00"}', "actual/365", r"field 'rate'"),
            ('{from: 2024-01-01, rate: "twelve", source: "s"}', '{EUR: "40.00"}', "actual/365", r"field 'rate'"),
            ('{from: 2024-01-01, rate: "NaN", source: "s"}', '{EUR: "40.00"}', "actual/365", r"field 'rate'"),
            ('{from: 2024-01-01, reference_rate: "-0.5", rate: "7.50", source: "s"}', '{EUR: "40.00"}',
             "actual/365", r"field 'reference_rate'"),
            ('{from: "1 Jan 2024", rate: "12.50", source: "s"}', '{EUR: "40.00"}', "actual/365",
             r"rates\[0\] field 'from'"),
            ('{from: 2024-01-01, rate: "12.50"}', '{EUR: "40.00"}', "actual/365", r"field 'source'"),
            ('{from: 2024-01-01, rate: "12.50", source: "s", verified: "no"}', '{EUR: "40.00"}', "actual/365",
             r"field 'verified'"),
            # unknown currency, and ISO "N.A." codes that are not money
            (GOOD_ROW, '{XYZ: "40.00"}', "actual/365", r"'eu-test', field 'compensation' \(XYZ\)"),
            (GOOD_ROW, '{XAU: "1"}', "actual/365", r"field 'compensation' \(XAU\)"),
            # more decimals than the currency has (JPY has none), and a negative amount
            (GOOD_ROW, '{JPY: "40.5"}', "actual/365", r"field 'compensation' \(JPY\)"),
            (GOOD_ROW, '{EUR: "-40.00"}', "actual/365", r"field 'compensation' \(EUR\)"),
            (GOOD_ROW, '{EUR: "40.00"}', "30/360", r"field 'day_count'"),
            ("", '{EUR: "40.00"}', "actual/365", r"field 'rates'"),
        ],
    )
    def test_raises_naming_jurisdiction_row_and_field(self, tmp_path, rows, compensation, day_count, message):
        with pytest.raises(ValueError, match=message):
            load_jurisdictions(write_table(tmp_path, rows, compensation, day_count))

    def test_compensation_uses_the_iso_exponent(self, tmp_path):
        # ISO 4217: JPY 0 decimals, KWD 3 (not hand-written here: shared.contract.money decides)
        path = write_table(tmp_path, GOOD_ROW, '{JPY: "6000", KWD: "12.345", EUR: "40"}')
        assert load_jurisdictions(path)["eu-test"].compensation_minor == {"JPY": 6000, "KWD": 12345, "EUR": 4000}

    def test_unverified_rows_load_flagged(self, tmp_path):
        path = write_table(tmp_path, '{from: 2024-01-01, rate: "12.50", source: "s", verified: false}')
        assert load_jurisdictions(path)["eu-test"].rates[0].verified is False


# --- interest on a balance that part payments lower -------------------------------------------------


def test_interest_on_balance_splits_at_a_part_payment_and_rounds_once():
    """1,000,000 open now; 400,000 paid on 2026-03-31 (so 1,400,000 owed before it): 24 March to
    8 April at 10.15 %: (1,400,000 x 7 + 1,000,000 x 9) x 0.1015 / 365 = 5,227.95 -> 5,228."""
    eu = load_jurisdictions()["eu-2011-7"]
    got = interest_on_balance(eu, 1_000_000, [(date(2026, 3, 31), 400_000)], date(2026, 3, 24), date(2026, 4, 9))
    assert got.amount_minor == 5_228
    assert [(p.start, p.end, p.days, p.principal_minor) for p in got.pieces] == [
        (date(2026, 3, 24), date(2026, 3, 31), 7, 1_400_000), (date(2026, 3, 31), date(2026, 4, 9), 9, 1_000_000)]


def test_interest_on_balance_ignores_payments_outside_the_span_and_counts_reversals():
    eu = load_jurisdictions()["eu-2011-7"]
    start, end = date(2026, 3, 24), date(2026, 4, 9)
    plain = interest(eu, 1_000_000, start, end)
    # paid before the span began, or on the day it ends: the span is on what is open now
    assert interest_on_balance(eu, 1_000_000, [(date(2026, 3, 20), 5), (start, 7), (end, 0)], start, end) == plain
    # 300,000 paid on the 1st and reversed on the 5th: owed 1,000,000 before the 1st and from the
    # 5th, 700,000 in between
    got = interest_on_balance(eu, 1_000_000, [(date(2026, 4, 1), 300_000), (date(2026, 4, 5), -300_000)], start, end)
    assert [(p.days, p.principal_minor) for p in got.pieces] == [(8, 1_000_000), (4, 700_000), (4, 1_000_000)]
    assert got.amount_minor == round((1_000_000 * 12 + 700_000 * 4) * 0.1015 / 365)


def test_interest_on_balance_equals_the_sum_of_its_days_exactly():
    """Splitting never changes the result: each day on what was owed that day, summed exactly."""
    from fractions import Fraction
    eu = load_jurisdictions()["eu-2011-7"]
    payments = [(date(2025, 12, 20), 1_234), (date(2026, 1, 3), 99_999), (date(2026, 2, 1), -50_000)]
    start, end = date(2025, 12, 1), date(2026, 2, 15)
    got = interest_on_balance(eu, 777_777, payments, start, end)
    exact, day = Fraction(0), start
    while day < end:
        owed = 777_777 + sum(a for d, a in payments if d > day)
        rate = next(r.annual_rate for r in reversed(eu.rates) if r.start <= day)
        exact += owed * Fraction(rate) / (100 * 365)
        day += timedelta(days=1)
    assert got.amount_minor == int(exact + Fraction(1, 2))
