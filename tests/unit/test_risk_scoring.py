"""Explainable risk score from payment behaviour. Pure, no I/O."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.risk.domain.scoring import NEW_CUSTOMER_SCORE, PaymentBehaviour, assess, segment_of


def factors(a):
    return {f.name: f for f in a.factors}


class TestTransitions:
    def test_issued(self):
        assert PaymentBehaviour().issued().issued() == PaymentBehaviour(invoices_issued=2)

    def test_paid_on_time(self):
        assert PaymentBehaviour().paid(0) == PaymentBehaviour(invoices_paid=1)

    def test_paid_early_counts_as_on_time_and_adds_no_negative_days(self):
        assert PaymentBehaviour().paid(-5) == PaymentBehaviour(invoices_paid=1)

    def test_paid_late(self):
        b = PaymentBehaviour().paid(10).paid(4)
        assert b == PaymentBehaviour(invoices_paid=2, paid_late=2, days_late_total=14)

    def test_overdue(self):
        assert PaymentBehaviour().overdue() == PaymentBehaviour(overdue_events=1)

    def test_transitions_do_not_mutate(self):
        b = PaymentBehaviour()
        b.issued()
        b.paid(3)
        b.overdue()
        assert b == PaymentBehaviour()


class TestAssess:
    def test_no_history_is_cautious_medium(self):
        a = assess(PaymentBehaviour())
        assert a.score == NEW_CUSTOMER_SCORE == 35
        assert a.segment == "medium"
        assert [f.name for f in a.factors] == ["no_history"]
        assert a.factors[0].explanation == "no payment history yet"

    def test_issued_but_nothing_paid_or_overdue_is_still_no_history(self):
        a = assess(PaymentBehaviour(invoices_issued=3))
        assert a.score == 35
        assert factors(a)["no_history"].value == 3

    def test_all_paid_on_time_is_low(self):
        b = PaymentBehaviour()
        for _ in range(5):
            b = b.issued().paid(0)
        a = assess(b)
        assert a.score == 0
        assert a.segment == "low"
        f = factors(a)
        assert f["late_payment_ratio"].points == 0
        assert f["late_payment_ratio"].explanation == "0 of 5 paid invoices were paid late"
        assert f["average_days_late"].points == 0
        assert f["overdue_ratio"].points == 0

    def test_hand_computed_mixed_behaviour(self):
        # 10 issued, 8 paid, 2 of them late by 6 and 10 days, 2 overdue events
        b = PaymentBehaviour(invoices_issued=10, invoices_paid=8, paid_late=2, days_late_total=16, overdue_events=2)
        a = assess(b)
        f = factors(a)
        assert f["late_payment_ratio"].points == 10    # 40 * 2/8
        assert f["late_payment_ratio"].value == 0.25
        assert f["average_days_late"].points == 8      # 16 / 2
        assert f["average_days_late"].explanation == "late payments came 8.0 days after the due date on average"
        assert f["overdue_ratio"].points == 5          # 25 * 2/10
        assert f["overdue_ratio"].explanation == "2 of 10 invoices went overdue"
        assert a.score == 23
        assert a.segment == "low"

    def test_many_late_and_overdue_is_high(self):
        b = PaymentBehaviour()
        for _ in range(10):
            b = b.issued().overdue().paid(40)
        a = assess(b)
        # 40 (all late) + 25 (avg 40 days, capped) + 25 (all overdue) = 90
        assert a.score == 90
        assert a.segment == "high"
        f = factors(a)
        assert f["average_days_late"].points == 25
        assert f["average_days_late"].value == 40.0

    def test_broken_promises_add_points_and_are_capped_at_20(self):
        base = PaymentBehaviour(invoices_issued=4, invoices_paid=4)
        assert factors(assess(PaymentBehaviour(**vars(base) | {"broken_promises": 1})))["broken_promises"].points == 10
        a = assess(PaymentBehaviour(**vars(base) | {"broken_promises": 5}))
        assert factors(a)["broken_promises"].points == 20
        assert a.score == 20
        assert "5 promise(s) to pay broken" in factors(a)["broken_promises"].explanation

    def test_new_customer_with_broken_promise(self):
        a = assess(PaymentBehaviour(broken_promises=1))
        assert a.score == 45
        assert {f.name for f in a.factors} == {"no_history", "broken_promises"}

    def test_score_capped_at_100(self):
        b = PaymentBehaviour(invoices_issued=1, invoices_paid=1, paid_late=1, days_late_total=300,
                             overdue_events=3, broken_promises=9)
        a = assess(b)
        assert sum(f.points for f in a.factors) == 110
        assert a.score == 100
        assert a.segment == "high"


@pytest.mark.parametrize(("score", "segment"), [(0, "low"), (29, "low"), (30, "medium"), (59, "medium"),
                                                (60, "high"), (100, "high")])
def test_segment_boundaries(score, segment):
    assert segment_of(score) == segment


counts = st.integers(0, 10_000)


@given(st.builds(PaymentBehaviour, invoices_issued=counts, invoices_paid=counts, paid_late=counts,
                 days_late_total=st.integers(0, 10**6), overdue_events=counts, broken_promises=st.integers(0, 50)))
def test_score_in_range_for_any_behaviour(b):
    a = assess(b)
    assert 0 <= a.score <= 100
    assert a.segment == segment_of(a.score)
    assert a.score == min(100, sum(f.points for f in a.factors))
    assert a.factors and all(f.explanation for f in a.factors)


@given(st.lists(st.one_of(st.just(("issued",)), st.just(("overdue",)), st.tuples(st.just("paid"), st.integers(-30, 365))),
                max_size=60))
def test_score_in_range_for_any_event_sequence(events):
    b = PaymentBehaviour()
    for event in events:
        b = b.paid(event[1]) if event[0] == "paid" else getattr(b, event[0])()
    assert b.paid_late <= b.invoices_paid
    a = assess(b)
    assert 0 <= a.score <= 100
    assert a.segment in ("low", "medium", "high")


def test_overdue_with_nothing_paid_is_at_least_medium_and_says_why():
    from services.risk.domain.scoring import PaymentBehaviour, assess

    result = assess(PaymentBehaviour().issued().overdue())
    assert result.segment in ("medium", "high")
    names = {f.name: f for f in result.factors}
    assert names["nothing_paid"].explanation == "1 invoice(s) overdue and none paid yet"
    assert "late_payment_ratio" not in names
