"""The collection KPIs on hand-computed data."""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from services.dunning.domain.kpis import (
    DoneTask, Payment, PromiseRow, SentNotice, collector_figures, payments_by_invoice, promise_figures, step_figures,
)
from services.invoicing.domain.reports import collection_effectiveness
from shared.periods import PeriodError, parse_period

T = datetime(2026, 3, 10, 9, tzinfo=timezone.utc)


def test_a_period_is_a_month_quarter_year_or_days():
    assert parse_period("2026-03") == (date(2026, 3, 1), date(2026, 4, 1))
    assert parse_period("2026-12") == (date(2026, 12, 1), date(2027, 1, 1))
    assert parse_period("2026-Q4") == (date(2026, 10, 1), date(2027, 1, 1))
    assert parse_period("2026-q1") == (date(2026, 1, 1), date(2026, 4, 1))
    assert parse_period("2026") == (date(2026, 1, 1), date(2027, 1, 1))
    assert parse_period("2026-03-01..2026-03-15") == (date(2026, 3, 1), date(2026, 3, 16))
    for bad in ("2026-13", "March", "2026-03-10..2026-03-01", "2026-02-30..2026-03-01"):
        with pytest.raises(PeriodError):
            parse_period(bad)


def test_each_step_is_credited_what_was_paid_on_its_invoices_within_7_days_at_most_what_it_listed():
    payments = payments_by_invoice([
        Payment("A", 30_000, T + timedelta(days=2)),  # within 7 days of the first notice
        Payment("A", 50_000, T + timedelta(days=8)),  # too late for it; within 7 days of the second
        Payment("B", 99_999, T - timedelta(days=1)),  # before: nothing
        Payment("C", 10_000, T + timedelta(days=1)),
        Payment("C", -10_000, T + timedelta(days=3)),  # reversed: nothing collected
    ])
    notices = [
        SentNotice("overdue_7", "email", "EUR", T, (("A", 50_000), ("B", 20_000), ("C", 10_000))),
        SentNotice("overdue_7", "email", "EUR", T + timedelta(days=7), (("A", 20_000),)),
        SentNotice("overdue_7_sms", "sms", "USD", T, (("D", 5_000),)),
    ]
    email, sms = step_figures(notices, payments)
    assert (email.step, email.notices, email.listed_minor) == ("overdue_7", 2, {"EUR": 100_000})
    # A: 30,000 after the first; A: 50,000 after the second but it listed 20,000 -> 20,000
    assert email.collected_7d_minor == {"EUR": 50_000}
    assert email.rate("EUR") == Decimal("50.0") and email.rate("USD") is None
    assert (sms.notices, sms.listed_minor, sms.collected_7d_minor) == (1, {"USD": 5_000}, {})


def test_promise_kept_rate_counts_only_decided_promises():
    figures = promise_figures([
        PromiseRow("k1", "EUR", 10_000, "kept", 10_000), PromiseRow("k1", "EUR", 5_000, "kept", 6_000),
        PromiseRow("k2", "EUR", 7_000, "broken", 1_000), PromiseRow("k2", "EUR", 1_000, "open", 0),
        PromiseRow("k2", "TRY", 9_000, "cancelled", 0),
    ])
    assert (figures.taken, figures.kept, figures.broken, figures.open, figures.cancelled) == (5, 2, 1, 1, 1)
    assert figures.kept_rate == Decimal("66.7")  # 2 of 3 decided
    assert figures.promised_minor == {"EUR": 23_000, "TRY": 9_000} and figures.kept_minor == {"EUR": 16_000}
    assert promise_figures([]).kept_rate is None


def test_per_collector_tasks_contacts_promises_and_what_came_in_after_their_calls():
    payments = payments_by_invoice([Payment("A", 40_000, T + timedelta(days=1)), Payment("B", 5_000, T + timedelta(days=6)),
                                    Payment("C", 7_000, T + timedelta(days=9))])
    tasks = [
        DoneTask("key-ali", "promise_taken", "EUR", T, ("A", "B"), 42_000),  # 45,000 came in, 42,000 was owed
        DoneTask("key-ali", "no_answer", "EUR", T, ("C",), 7_000),  # paid after 9 days: not credited
        DoneTask("key-bea", "reached", "EUR", T, (), 0),
        DoneTask("key-x", "wrong_number", "EUR", T, (), 0),  # a key that signs in no collector
    ]
    promises = [PromiseRow("key-ali", "EUR", 42_000, "kept", 42_000), PromiseRow("key-bea", "EUR", 1_000, "broken", 0)]
    ali, bea, other = collector_figures(tasks, promises, payments, {"key-ali": "ali", "key-bea": "bea"})
    assert (ali.collector, ali.tasks_done, ali.contacts_reached, ali.collected_7d_minor) == ("ali", 2, 1, {"EUR": 42_000})
    assert (ali.promises.taken, ali.promises.kept, ali.promises.kept_rate) == (1, 1, Decimal("100.0"))
    assert (bea.tasks_done, bea.contacts_reached, bea.promises.broken, bea.collected_7d_minor) == (1, 1, 1, {})
    assert (other.collector, other.tasks_done, other.contacts_reached) == ("key-x", 1, 0)


def test_cei_is_what_was_collected_of_what_could_have_been():
    # the docstring's example: (10,000 + 5,000 - 6,000) / (10,000 + 5,000 - 2,000)
    assert collection_effectiveness(1_000_000, 500_000, 600_000, 200_000) == Decimal("69.2")
    assert collection_effectiveness(100, 0, 0, 0) == Decimal("100.0")  # everything collected
    assert collection_effectiveness(0, 500, 500, 500) is None  # nothing was collectible yet
    assert collection_effectiveness(100, 50, 150, 0) == Decimal("0.0")  # nothing collected
