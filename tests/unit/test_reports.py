"""Receivables reports, pure: statements, aging buckets, DSO countback. Hand-computed examples."""
from __future__ import annotations

from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.invoicing.domain.model import DEFAULT_AGING_BUCKETS
from services.invoicing.domain.reports import (
    LedgerLine, OpenItem, StatementLine, age_by_currency, age_by_customer, bucket_names, build_statement,
    dso_countback, monthly_periods, parse_buckets,
)

D = date

# --------------------------------------------------------------------------- statement

LEDGER = [
    LedgerLine(1, "EUR", "invoice", "A", 100_000, D(2026, 1, 5), "invoice A"),
    LedgerLine(2, "EUR", "invoice", "B", 50_000, D(2026, 2, 1), "invoice B"),
    LedgerLine(3, "USD", "invoice", "U", 7_500, D(2026, 2, 12), "invoice U"),
    LedgerLine(9, "EUR", "adjustment", "B", -5_000, D(2026, 2, 20), "adjustment of invoice B"),
    LedgerLine(4, "EUR", "payment", "P1", -60_000, D(2026, 2, 10), "payment P1"),
    LedgerLine(5, "EUR", "cancellation", "E", -20_000, D(2026, 3, 1), "cancellation of invoice E"),
    LedgerLine(6, "EUR", "invoice", "E", 20_000, D(2026, 2, 5), "invoice E"),
    LedgerLine(7, "EUR", "fee", "F", 1_250, D(2026, 2, 10), "late fee"),
]


def test_statement_for_february_by_hand():
    s = build_statement(LEDGER, D(2026, 2, 1), D(2026, 2, 28))
    assert set(s) == {"EUR", "USD"}
    eur = s["EUR"]
    assert eur.opening_minor == 100_000  # invoice A, booked in January
    # booked_on order, then entry order (P1 is entry 4, the fee entry 7, both on 10 Feb)
    assert [(x.ref_id, x.amount_minor, x.balance_minor) for x in eur.lines] == [
        ("B", 50_000, 150_000),
        ("E", 20_000, 170_000),
        ("P1", -60_000, 110_000),
        ("F", 1_250, 111_250),
        ("B", -5_000, 106_250),
    ]
    assert eur.closing_minor == 106_250
    assert eur.lines[0] == StatementLine(D(2026, 2, 1), "invoice", "B", "invoice B", 50_000, 150_000)
    usd = s["USD"]
    assert (usd.opening_minor, usd.closing_minor) == (0, 7_500)
    assert [x.kind for x in usd.lines] == ["invoice"]


def test_statement_for_march_opens_where_february_closed():
    s = build_statement(LEDGER, D(2026, 3, 1), D(2026, 3, 31))
    assert s["EUR"].opening_minor == 106_250
    assert [(x.kind, x.balance_minor) for x in s["EUR"].lines] == [("cancellation", 86_250)]
    assert s["EUR"].closing_minor == 86_250
    assert s["USD"].opening_minor == s["USD"].closing_minor == 7_500 and s["USD"].lines == []


def test_statement_before_anything_happened_is_empty_and_entries_after_the_period_are_ignored():
    assert build_statement(LEDGER, D(2025, 1, 1), D(2025, 12, 31)) == {}
    january = build_statement(LEDGER, D(2026, 1, 1), D(2026, 1, 31))
    assert set(january) == {"EUR"} and january["EUR"].closing_minor == 100_000


def test_statement_of_one_day_includes_both_ends():
    s = build_statement(LEDGER, D(2026, 2, 10), D(2026, 2, 10))
    assert [x.ref_id for x in s["EUR"].lines] == ["P1", "F"]


def test_statement_period_must_not_run_backwards():
    with pytest.raises(ValueError):
        build_statement(LEDGER, D(2026, 3, 1), D(2026, 2, 1))


ledger_lines = st.lists(
    st.builds(
        LedgerLine,
        entry_id=st.integers(1, 10**6),
        currency=st.sampled_from(["EUR", "TRY", "JPY"]),
        kind=st.sampled_from(["invoice", "payment", "adjustment", "fee"]),
        ref_id=st.just("x"),
        amount_minor=st.integers(-10**9, 10**9),
        booked_on=st.dates(D(2025, 1, 1), D(2027, 1, 1)),
    ),
    max_size=40,
)


@given(ledger_lines, st.dates(D(2025, 1, 1), D(2027, 1, 1)), st.integers(0, 400))
def test_statement_reconciles_with_the_ledger(entries, start, length):
    end = start + timedelta(days=length)
    s = build_statement(entries, start, end)
    for cur, cs in s.items():
        mine = [e for e in entries if e.currency == cur]
        assert cs.opening_minor == sum(e.amount_minor for e in mine if e.booked_on < start)
        assert cs.closing_minor == sum(e.amount_minor for e in mine if e.booked_on <= end)
        assert cs.opening_minor + sum(x.amount_minor for x in cs.lines) == cs.closing_minor
        assert (cs.lines[-1].balance_minor if cs.lines else cs.opening_minor) == cs.closing_minor
    assert set(s) == {e.currency for e in entries if e.booked_on <= end}


# --------------------------------------------------------------------------- buckets


def test_default_spec_gives_the_default_buckets():
    assert parse_buckets("0,30,60,90") == DEFAULT_AGING_BUCKETS
    assert parse_buckets(" 30, 60 ,90") == DEFAULT_AGING_BUCKETS  # the 0 is implied
    assert bucket_names(parse_buckets("0,30,60,90")) == ["current", "1-30", "31-60", "61-90", "90+"]


@pytest.mark.parametrize(("spec", "names"), [
    ("0,15,45", ["current", "1-15", "16-45", "45+"]),
    ("7", ["current", "1-7", "7+"]),
    ("0,1,30", ["current", "1", "2-30", "30+"]),
    ("0,30,60,90,120,180", ["current", "1-30", "31-60", "61-90", "91-120", "121-180", "180+"]),
])
def test_custom_bucket_names(spec, names):
    assert bucket_names(parse_buckets(spec)) == names


@pytest.mark.parametrize(("spec", "reason"), [
    ("", "comma-separated"),
    ("0,,30", "comma-separated"),
    ("0,30,a", "whole numbers"),
    ("0,30.5", "whole numbers"),
    ("30,10", "increase"),
    ("0,30,30", "increase"),
    ("-5,30", "negative"),
    ("0", "at least one positive"),
    (",".join(str(n) for n in range(0, 300, 10)), "at most"),
])
def test_bad_bucket_specs_say_why(spec, reason):
    with pytest.raises(ValueError, match=reason):
        parse_buckets(spec)


AS_OF = D(2026, 3, 31)


@pytest.mark.parametrize(("days_past_due", "bucket"), [
    (-30, "current"), (0, "current"), (1, "1-15"), (15, "1-15"), (16, "16-45"), (45, "16-45"), (46, "45+"),
    (4000, "45+"),
])
def test_custom_bucket_boundaries(days_past_due, bucket):
    buckets = parse_buckets("0,15,45")
    table = age_by_currency([OpenItem("c", "EUR", 100, AS_OF - timedelta(days=days_past_due))], AS_OF, buckets)
    assert table["EUR"][bucket] == 100 and table["EUR"]["total"] == 100


ITEMS = [
    OpenItem("C1", "EUR", 40_000, D(2026, 1, 20)),   # 70 days past due -> 61-90
    OpenItem("C1", "EUR", 45_000, D(2026, 2, 28)),   # 31 -> 31-60
    OpenItem("C1", "EUR", 80_000, D(2026, 4, 9)),    # not yet due -> current
    OpenItem("C1", "USD", 7_500, D(2026, 3, 14)),    # 17 -> 1-30
    OpenItem("C2", "EUR", 30_000, D(2025, 12, 1)),   # 120 -> 90+
    OpenItem("C3", "EUR", 0, D(2025, 12, 1)),        # owes nothing: left out
]


def test_aging_by_currency_and_by_customer_by_hand():
    assert age_by_currency(ITEMS, AS_OF) == {
        "EUR": {"current": 80_000, "1-30": 0, "31-60": 45_000, "61-90": 40_000, "90+": 30_000, "total": 195_000},
        "USD": {"current": 0, "1-30": 7_500, "31-60": 0, "61-90": 0, "90+": 0, "total": 7_500},
    }
    by_customer = age_by_customer(ITEMS, AS_OF)
    assert list(by_customer) == ["C1", "C2"]
    assert by_customer["C1"]["EUR"]["total"] == 165_000 and by_customer["C1"]["USD"]["1-30"] == 7_500
    assert by_customer["C2"] == {"EUR": {"current": 0, "1-30": 0, "31-60": 0, "61-90": 0, "90+": 30_000,
                                         "total": 30_000}}


def test_aging_as_of_another_date_moves_items_between_buckets():
    table = age_by_currency(ITEMS, D(2026, 2, 15), parse_buckets("0,30,60,90"))
    # 2026-01-20 is 26 days past due on 15 Feb; 2025-12-01 is 76 days
    assert table["EUR"] == {"current": 125_000, "1-30": 40_000, "31-60": 0, "61-90": 30_000, "90+": 0,
                            "total": 195_000}


# --------------------------------------------------------------------------- DSO

JAN = (D(2026, 1, 1), D(2026, 1, 31))
FEB = (D(2026, 2, 1), D(2026, 2, 28))
MAR = (D(2026, 3, 1), D(2026, 3, 31))


def test_dso_docstring_example():
    # 10,000 - March's 6,000 = 4,000 left: 31 days; then 28 * 4,000 / 5,000 = 22.4 days of February
    assert dso_countback(1_000_000, [(*MAR, 600_000), (*FEB, 500_000), (*JAN, 900_000)]) == pytest.approx(53.4)


def test_dso_ending_in_the_third_month():
    # 170,000: March 80,000 -> 90,000 left (31 d); February 50,000 -> 40,000 left (28 d);
    # January 130,000: 31 * 40,000 / 130,000 = 9.538... d
    assert dso_countback(170_000, [(*MAR, 80_000), (*FEB, 50_000), (*JAN, 130_000)]) == pytest.approx(
        31 + 28 + 31 * 40 / 130)


def test_dso_within_the_newest_month():
    assert dso_countback(20_000, [(*MAR, 62_000), (*FEB, 50_000)]) == pytest.approx(10.0)  # 31 * 20/62


def test_dso_with_a_partial_current_month():
    # As of 15 Feb: Feb 1-15 is 15 days with 70,000 of sales, then January.
    periods = [(D(2026, 2, 1), D(2026, 2, 15), 70_000), (*JAN, 130_000), (D(2025, 12, 1), D(2025, 12, 31), 90_000)]
    assert dso_countback(140_000, periods) == pytest.approx(15 + 31 * 70 / 130)


def test_dso_when_ar_exceeds_all_sales_counts_every_day():
    assert dso_countback(500_000, [(*MAR, 80_000), (*FEB, 50_000), (*JAN, 130_000)]) == 31 + 28 + 31
    assert dso_countback(165_000, [(*MAR, 80_000)]) == 31


def test_dso_balance_exactly_used_up_by_whole_months():
    assert dso_countback(130_000, [(*MAR, 80_000), (*FEB, 50_000), (*JAN, 130_000)]) == 31 + 28


def test_dso_month_without_sales_counts_whole():
    assert dso_countback(10_000, [(*MAR, 0), (*FEB, 20_000)]) == pytest.approx(31 + 14)


def test_dso_without_receivables_is_zero():
    assert dso_countback(0, [(*MAR, 80_000)]) == 0
    assert dso_countback(-5_000, [(*MAR, 80_000)]) == 0  # a credit balance
    assert dso_countback(10_000, []) == 0


def test_dso_rejects_nonsense_periods():
    with pytest.raises(ValueError):
        dso_countback(10, [(D(2026, 3, 31), D(2026, 3, 1), 5)])
    with pytest.raises(ValueError):
        dso_countback(10, [(*MAR, -5)])


@given(st.integers(0, 10**9), st.lists(st.integers(0, 10**8), min_size=1, max_size=12))
def test_dso_is_bounded_by_the_days_given_and_grows_with_ar(ar, sales):
    periods = []
    end = D(2026, 12, 31)
    for amount in sales:
        start = end.replace(day=1)
        periods.append((start, end, amount))
        end = start - timedelta(days=1)
    total_days = sum((e - s).days + 1 for s, e, _ in periods)
    days = dso_countback(ar, periods)
    assert 0 <= days <= total_days
    assert dso_countback(ar + 1_000, periods) >= days


def test_monthly_periods():
    assert monthly_periods(D(2026, 3, 31), 3) == [MAR, FEB, JAN]
    assert monthly_periods(D(2026, 2, 15), 3) == [(D(2026, 2, 1), D(2026, 2, 15)), JAN,
                                                 (D(2025, 12, 1), D(2025, 12, 31))]
    assert monthly_periods(D(2024, 3, 1), 2) == [(D(2024, 3, 1), D(2024, 3, 1)), (D(2024, 2, 1), D(2024, 2, 29))]
    with pytest.raises(ValueError):
        monthly_periods(D(2026, 3, 31), 0)
