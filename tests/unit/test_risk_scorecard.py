"""The risk book and scorecard on hand-computed cases: how events fold into a customer's book,
each factor's value and points, grades, the tenant's configuration, explanations per language."""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from types import SimpleNamespace as P

import pytest
from pydantic import ValidationError

from services.risk.domain.book import CustomerBook, InvoiceFact
from services.risk.domain.explain import LANGUAGES, TEXTS, explain
from services.risk.domain.scorecard import Scorecard, assess, days_beyond_terms, explained

AT = datetime(2026, 6, 30, 12, tzinfo=timezone.utc)
DUE = date(2026, 3, 1)


def paid_invoice(n: str, days_late: int, paid_days_ago: int, amount: int = 100_00, currency: str = "EUR") -> InvoiceFact:
    return InvoiceFact(n, currency, amount, 0, DUE - timedelta(days=30), DUE, AT, status="paid",
                       paid_at=AT - timedelta(days=paid_days_ago), days_late=days_late)


def open_invoice(n: str, due: date, amount: int = 100_00, open_minor: int | None = None,
                 currency: str = "EUR") -> InvoiceFact:
    return InvoiceFact(n, currency, amount, amount if open_minor is None else open_minor, due - timedelta(days=30),
                       due, AT)


def book(*invoices: InvoiceFact, **counters: int) -> CustomerBook:
    b = CustomerBook("t", "c", invoices={i.invoice_id: i for i in invoices})
    for name, value in counters.items():
        setattr(b.facts, name, value)
    return b


def factors(b: CustomerBook, card: Scorecard | None = None) -> dict:
    return {f.name: f for f in assess(b, AT, card).factors}


# -- the book ------------------------------------------------------------------------------------

def test_events_fold_into_the_book_like_the_billing_system_describes_them():
    b = CustomerBook("t", "c")
    t0 = AT
    b.apply("InvoiceIssued", P(invoice_id="i1", currency="EUR", amount_minor=500_00, issue_date=date(2026, 5, 1),
                               due_date=date(2026, 5, 31)), t0)
    b.apply("InvoiceIssued", P(invoice_id="i1", currency="EUR", amount_minor=999_00, issue_date=date(2026, 5, 1),
                               due_date=date(2026, 5, 31)), t0)  # redelivered with other data: issued once
    assert b.invoices["i1"].amount_minor == 500_00
    b.apply("InvoiceOverdue", P(invoice_id="i1", open_amount_minor=500_00, overdue_since=t0), t0)
    b.apply("PaymentReceived", P(allocations=[P(invoice_id="i1", invoice_open_minor=200_00),
                                              P(invoice_id="unknown", invoice_open_minor=0)]), t0)
    assert (b.invoices["i1"].open_minor, b.exposure()) == (200_00, {"EUR": 200_00})
    b.apply("InvoicePaid", P(invoice_id="i1", paid_at=t0, days_late=30), t0)
    assert (b.invoices["i1"].status, b.invoices["i1"].days_late, b.exposure()) == ("paid", 30, {})
    b.apply("PaymentReversed", P(reopened=[P(invoice_id="i1", invoice_open_minor=300_00)]), t0)
    inv = b.invoices["i1"]
    assert (inv.status, inv.open_minor, inv.paid_at, inv.days_late, inv.reopened) == ("open", 300_00, None, None, 1)
    assert b.facts.payments_reversed == 1
    b.apply("InvoiceAdjusted", P(invoice_id="i1", amount_minor=400_00, open_amount_minor=100_00,
                                 issue_date=date(2026, 5, 1), due_date=date(2026, 6, 15)), t0)
    assert (inv.amount_minor, inv.open_minor, inv.due_date) == (400_00, 100_00, date(2026, 6, 15))
    b.apply("InvoiceCancelled", P(invoice_id="i1"), t0)
    b.apply("InvoicePaid", P(invoice_id="i1", paid_at=t0, days_late=3), t0)  # a cancelled invoice stays cancelled
    assert (inv.status, inv.open_minor) == ("cancelled", 0)
    b.apply("PromiseToPayBroken", P(), t0)
    b.apply("DisputeResolved", P(outcome="credited"), t0)
    b.apply("DisputeResolved", P(outcome="rejected"), t0)
    b.apply("NotificationFailed", P(code="gave_up"), t0)
    b.apply("NotificationFailed", P(code="bounced"), t0)
    assert (b.facts.promises_broken, b.facts.last_broken_at, b.facts.disputes_rejected, b.facts.contacts_bounced) == (
        1, t0, 1, 1)
    assert b.apply("SomethingElse", P(), t0) is False


# -- factors -------------------------------------------------------------------------------------

def test_a_new_customer_has_no_history_and_is_grade_b():
    a = assess(book(open_invoice("i1", date(2026, 7, 30))), AT)
    assert [(f.name, f.points) for f in a.factors] == [("no_history", 25)]
    assert (a.score, a.grade, a.segment) == (25, "B", "medium")


def test_a_customer_who_pays_early_is_grade_a():
    a = assess(book(*(paid_invoice(f"i{n}", -3, 10 * n) for n in range(5))), AT)
    # none late: late share 0 -> 0; 0 days beyond terms -> 0; no very late
    assert (a.score, a.grade, a.segment) == (0, "A", "low")


def test_late_share_and_the_last_invoices_paid_very_late():
    # 5 settled in the year: 3 late (5, 31, 45 days), 2 early; the last five include all three
    # late ones, two of them >= 30 days: late share 3/5 = 0.6 -> 12 points; 2 very late -> 8
    b = book(paid_invoice("a", -2, 100), paid_invoice("b", 5, 80), paid_invoice("c", 31, 60),
             paid_invoice("d", 45, 40), paid_invoice("e", 0, 20))
    f = factors(b)
    assert (f["late_share"].value, f["late_share"].points) == (0.6, 12)
    assert f["late_share"].explanation == "3 of 5 invoices settled in the last year were paid late"
    assert (f["recent_very_late"].value, f["recent_very_late"].points) == (2, 8)
    assert f["recent_very_late"].explanation == "2 of the last 5 invoices paid more than 30 days late"


def test_settled_invoices_older_than_the_lookback_do_not_count():
    f = factors(book(paid_invoice("old", 90, 400), paid_invoice("new", 0, 10)))
    assert (f["late_share"].value, f["recent_very_late"].value) == (0.0, 0)


def test_days_beyond_terms_weighs_amount_within_a_currency_and_recency():
    # EUR: 10 days late on 300, 0 days on 100, both paid today: (300*10 + 100*0) / 400 = 7.5
    eur = [paid_invoice("a", 10, 0, 300_00), paid_invoice("b", 0, 0, 100_00)]
    assert days_beyond_terms(eur, [], AT, 90) == pytest.approx(7.5)
    # a payment 90 days old weighs half: (1*20 + 0.5*40) / 1.5 = 26.67
    aged = [paid_invoice("a", 20, 0), paid_invoice("b", 40, 90)]
    assert days_beyond_terms(aged, [], AT, 90) == pytest.approx(40 / 1.5)
    # currencies are not added up: each weighs by its share of invoices, amounts only within it.
    # EUR 1 invoice 10 days (weight 1/2), TRY 1,000,000 minor 0 days (weight 1/2): 5 days
    mixed = [paid_invoice("a", 10, 0, 1_00), paid_invoice("b", 0, 0, 1_000_000_00, "TRY")]
    assert days_beyond_terms(mixed, [], AT, 90) == pytest.approx(5.0)
    # open overdue invoices count with their days so far; early payment counts as 0, not negative
    assert days_beyond_terms([paid_invoice("a", -10, 0)], [(open_invoice("o", DUE), 30)], AT, 90) == pytest.approx(15)
    assert days_beyond_terms([], [], AT, 90) is None


def test_overdue_invoices_the_oldest_and_the_overdue_share_of_the_worst_currency():
    # 30 June: one EUR invoice due 31 March (91 days), one due 20 June (10 days), one not due;
    # EUR open 100+100+200 = 400, overdue 200 -> 0.5 (8 points); TRY all 50 open overdue -> 1.0 (12)
    b = book(open_invoice("a", date(2026, 3, 31)), open_invoice("b", date(2026, 6, 20)),
             open_invoice("c", date(2026, 7, 20), 200_00), open_invoice("d", date(2026, 6, 29), 50_00, currency="TRY"))
    f = factors(b)
    assert (f["max_days_overdue"].value, f["max_days_overdue"].points) == (91, 25)
    assert f["max_days_overdue"].explanation == "The oldest of 3 overdue invoices is 91 days past due"
    assert (f["overdue_share"].value, f["overdue_share"].points, f["overdue_share"].params["currency"]) == (1.0, 12, "TRY")


def test_counters_broken_promises_disputes_reversals_contacts():
    b = book(paid_invoice("a", 0, 5), promises_broken=2, plans_broken=1, disputes_opened=3, disputes_rejected=2,
             payments_reversed=1, contacts_bounced=1, contacts_opted_out=1)
    f = factors(b)
    assert (f["broken_promises"].value, f["broken_promises"].points) == (3, 20)
    assert (f["rejected_disputes"].value, f["rejected_disputes"].points) == (2, 8)
    assert (f["reversed_payments"].value, f["reversed_payments"].points) == (1, 6)
    assert (f["contact_problems"].value, f["contact_problems"].points) == (2, 6)
    assert assess(b, AT).score == 20 + 8 + 6 + 6  # the one invoice was paid on time: 0


def test_trend_compares_the_last_90_days_with_the_year():
    # year: 0, 0, 0, 20, 40 days late -> 12; last 90 days: 20, 40 -> 30; change 18 -> 8 points
    b = book(paid_invoice("a", 0, 300), paid_invoice("b", 0, 250), paid_invoice("c", 0, 200),
             paid_invoice("d", 20, 60), paid_invoice("e", 40, 10))
    f = factors(b)
    assert (f["trend"].value, f["trend"].points) == (18.0, 8)
    assert f["trend"].params == {"change": 18.0, "quarter": 30.0, "year": 12.0}


def test_the_score_is_capped_and_graded_by_the_bands():
    worst = book(*(paid_invoice(f"p{n}", 80, 5 + n) for n in range(5)), open_invoice("o", date(2026, 1, 1)),
                 promises_broken=5, payments_reversed=5)
    assert assess(worst, AT).score == 100 and assess(worst, AT).grade == "D"
    card = Scorecard()
    assert [card.grade_of(s) for s in (0, 19, 20, 39, 40, 59, 60, 100)] == ["A", "A", "B", "B", "C", "C", "D", "D"]


def test_a_tenants_scorecard_changes_weights_bands_grades_and_segments():
    card = Scorecard.model_validate({
        "factors": {"late_share": {"weight": 2, "bands": [{"at_least": 0.5, "points": 10}]}},
        "grade_below": {"A": 10, "B": 20, "C": 30},
        "segments": {"A": "low", "B": "low", "C": "high", "D": "high"},
    })
    b = book(paid_invoice("a", 5, 5), paid_invoice("b", 0, 10))  # late share 0.5 -> 10 x 2 = 20
    a = assess(b, AT, card)
    assert [(f.name, f.points) for f in a.factors] == [("late_share", 20)]  # factors not configured are off
    assert (a.score, a.grade, a.segment) == (20, "C", "high")


@pytest.mark.parametrize("doc, field", [
    ({"grade_below": {"A": 50, "B": 40, "C": 60}}, "grade_below"),
    ({"factors": {"trend": {"bands": [{"at_least": 5, "points": 3}, {"at_least": 1, "points": 1}]}}}, "ascending"),
    ({"segments": {"A": "low"}}, "segments"),
    ({"factors": {"nonsense": {"bands": []}}}, "factors.nonsense"),
    ({"factors": {"trend": {"weight": -1, "bands": []}}}, "weight"),
])
def test_a_bad_scorecard_is_refused_naming_the_field(doc, field):
    with pytest.raises(ValidationError) as e:
        Scorecard.model_validate(doc)
    assert field in str(e.value)


def test_every_explanation_reads_in_every_language_with_its_numbers():
    params = {"invoices": 3, "late": 2, "settled": 5, "very_late": 3, "recent": 5, "days": 31.5, "overdue": 2,
              "percent": 75, "currency": "EUR", "promises": 2, "plans": 1, "rejected": 1, "opened": 2, "reversed": 2,
              "bounced": 1, "opted_out": 1, "change": 10.0, "quarter": 30.0, "year": 20.0}
    for name in TEXTS:
        for language in LANGUAGES:
            text = explain(name, params, language)
            assert "{" not in text and text
    assert explain("recent_very_late", {"very_late": 3, "recent": 5, "days": 30}, "fa") == (
        "۳ از ۵ فاکتور اخیر بیش از ۳۰ روز دیرتر پرداخت شد")
    assert explain("days_beyond_terms", {"days": 12.5}, "cs") == (
        "Platí v průměru 12,5 dní po splatnosti (váženo částkou a stářím)")
    assert explain("late_share", {"late": 1, "settled": 2}, "de") == explain("late_share", {"late": 1, "settled": 2})
    [f] = [x for x in assess(book(paid_invoice("a", 40, 5)), AT).factors if x.name == "late_share"]
    assert explained([f], "tr")[0].explanation == "Son bir yılda kapanan 1 faturanın 1 tanesi geç ödendi"


def test_the_assessment_moment_is_the_latest_event_time_the_book_has_seen():
    """Events of one customer come on three topics; whichever comes last, the score is taken at
    the latest time known, so the final assessment does not depend on the interleaving."""
    b = book(open_invoice("o", date(2026, 6, 1)))
    earlier = AT - timedelta(days=3)
    assert b.as_of(earlier) == AT  # the invoice changed at AT
    b.apply("NotificationFailed", P(code="bounced"), earlier)
    assert b.as_of(earlier) == AT and b.as_of(AT + timedelta(hours=1)) == AT + timedelta(hours=1)
