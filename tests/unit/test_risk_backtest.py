"""The risk backtest, pure: AUC by hand (ties, empty classes), the calibration table and the
label rule's edges (30 days late is late, 29 is not; open 30 days past due is late, 29 undecided)."""
from __future__ import annotations

from datetime import date, timedelta
from itertools import product

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.risk.domain.backtest import (
    CANCELLED, LATE, ON_TIME, UNDECIDED, GradeCalibration, InvoiceAtIssue, Observation, auc, backtest,
    backtest_invoices, calibrate, invoice_outcome,
)

AS_OF = date(2026, 6, 30)

# --------------------------------------------------------------------------- AUC


def test_auc_by_hand_with_a_tie():
    # late = [80, 60], on time = [60, 20]: the four pairs are
    # 80>60 → 1, 80>20 → 1, 60=60 → ½, 60>20 → 1: 3.5 / 4 = 0.875
    assert auc([80, 60], [60, 20]) == 0.875


def test_auc_perfect_reversed_and_all_tied():
    assert auc([90, 70], [10, 20, 30]) == 1.0  # every one of the 6 pairs ranked right
    assert auc([10], [20, 30]) == 0.0  # 10<20, 10<30: 0 / 2
    assert auc([50, 50], [50, 50, 50]) == 0.5  # 6 ties → 6 × ½ / 6


def test_auc_by_hand_with_several_ties():
    # late = [3, 2, 2], on time = [2, 1, 1, 0]: 12 pairs
    # 3 beats all 4                         → 4
    # each 2: ties the 2 (½), beats 1, 1, 0 → 3.5, twice → 7
    # (4 + 7) / 12 = 11/12
    assert auc([3, 2, 2], [2, 1, 1, 0]) == pytest.approx(11 / 12)


def test_auc_without_one_class_is_none():
    assert auc([], [1, 2]) is None
    assert auc([1, 2], []) is None
    assert auc([], []) is None


@given(st.lists(st.integers(0, 5), min_size=1, max_size=15), st.lists(st.integers(0, 5), min_size=1, max_size=15))
def test_auc_by_ranks_equals_counting_every_pair(late, on_time):
    pairs = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in product(late, on_time))
    assert auc(late, on_time) == pytest.approx(pairs / (len(late) * len(on_time)))


# --------------------------------------------------------------------------- report


def test_backtest_auc_of_score_and_of_grade_and_calibration():
    observations = [
        Observation(80, "D", True),
        Observation(60, "C", True),
        Observation(60, "C", False),
        Observation(20, "A", False),
        Observation(None, None, True),  # issued before the customer's first assessment
        Observation(None, None, False),
    ]
    report = backtest(observations, AS_OF, excluded_cancelled=2, excluded_undecided=3)
    # score: the hand example above, 0.875; the ungraded pair is left out
    assert report.auc_score == 0.875
    # grade as a rank A=0 < C=2 < D=3: late [3, 2], on time [2, 0]: 3>2, 3>0, 2=2 (½), 2>0 → 3.5 / 4
    assert report.auc_grade == 0.875
    assert (report.invoices, report.late, report.excluded_cancelled, report.excluded_undecided) == (6, 3, 2, 3)
    assert report.calibration == (
        GradeCalibration("A", 1, 0, 0.0, 20.0),
        GradeCalibration("B", 0, 0, None, None),
        GradeCalibration("C", 2, 1, 0.5, 60.0),
        GradeCalibration("D", 1, 1, 1.0, 80.0),
        GradeCalibration("none", 2, 1, 0.5, None),
    )


def test_grade_ranks_ties_within_a_grade_even_when_scores_differ():
    # late B(55), B(45); on time A(10), B(40): scores rank perfectly (4/4 = 1.0); grades:
    # late [1, 1] vs on time [0, 1]: 1>0, 1=1 (½), 1>0, 1=1 (½) → 3 / 4
    report = backtest([Observation(55, "B", True), Observation(45, "B", True), Observation(10, "A", False),
                       Observation(40, "B", False)], AS_OF)
    assert (report.auc_score, report.auc_grade) == (1.0, 0.75)


def test_calibration_rounds_late_share_to_three_and_average_score_to_one():
    rows = calibrate([Observation(10, "B", True), Observation(11, "B", False), Observation(11, "B", False)])
    # 1 / 3 = 0.333…; (10 + 11 + 11) / 3 = 10.666… → 10.7
    assert rows[1] == GradeCalibration("B", 3, 1, 0.333, 10.7)


def test_backtest_without_late_invoices_has_no_auc_but_a_table():
    report = backtest([Observation(30, "A", False), Observation(70, "D", False)], AS_OF)
    assert (report.auc_score, report.auc_grade) == (None, None)
    assert [(c.grade, c.invoices) for c in report.calibration] == [("A", 1), ("B", 0), ("C", 0), ("D", 1), ("none", 0)]


def test_backtest_of_nothing():
    report = backtest([], AS_OF)
    assert (report.invoices, report.late, report.auc_score, report.auc_grade) == (0, 0, None, None)
    assert all(c.invoices == 0 and c.late_share is None for c in report.calibration)


def test_unknown_grade_is_refused():
    with pytest.raises(ValueError, match="grade"):
        backtest([Observation(10, "E", True)], AS_OF)


def test_report_as_dict_is_json_ready():
    report = backtest([Observation(80, "D", True), Observation(20, "A", False)], AS_OF, excluded_undecided=1)
    d = report.as_dict()
    assert d["as_of"] == "2026-06-30" and d["auc_score"] == 1.0 and d["excluded_undecided"] == 1
    assert d["calibration"][3] == {"grade": "D", "invoices": 1, "late": 1, "late_share": 1.0, "average_score": 80.0}


# --------------------------------------------------------------------------- label rule

DUE = date(2026, 5, 1)
ISSUED = DUE - timedelta(days=30)


def paid(days_late: int, paid_on: date | None = None) -> str:
    return invoice_outcome("paid", ISSUED, DUE, paid_on or DUE + timedelta(days=days_late), days_late, AS_OF)


def open_on(as_of: date) -> str:
    return invoice_outcome("open", ISSUED, DUE, None, None, as_of)


def test_paid_exactly_30_days_late_is_late_29_is_not():
    assert paid(30) == LATE
    assert paid(29) == ON_TIME
    assert paid(0) == ON_TIME
    assert paid(-5) == ON_TIME


def test_open_30_days_past_due_is_late_29_is_not_yet_decidable():
    assert open_on(DUE + timedelta(days=30)) == LATE
    assert open_on(DUE + timedelta(days=29)) == UNDECIDED
    assert open_on(DUE) == UNDECIDED
    assert open_on(DUE - timedelta(days=3)) == UNDECIDED  # not yet due


def test_cancelled_is_excluded_whatever_its_dates():
    assert invoice_outcome("cancelled", ISSUED, DUE, None, None, DUE + timedelta(days=90)) == CANCELLED


def test_only_what_was_known_at_as_of_counts():
    # paid 40 days late, but on 31 May (30 days past due) it was still open: late then too
    assert invoice_outcome("paid", ISSUED, DUE, DUE + timedelta(days=40), 40, DUE + timedelta(days=30)) == LATE
    # paid 5 days late, looked at 2 days after the due date: it was open and undecided then
    assert invoice_outcome("paid", ISSUED, DUE, DUE + timedelta(days=5), 5, DUE + timedelta(days=2)) == UNDECIDED
    # paid on the as-of date itself counts as paid
    assert invoice_outcome("paid", ISSUED, DUE, DUE + timedelta(days=5), 5, DUE + timedelta(days=5)) == ON_TIME
    # not yet issued at as-of
    assert invoice_outcome("open", ISSUED, DUE, None, None, ISSUED - timedelta(days=1)) == UNDECIDED


def test_bad_rows_are_refused_not_guessed():
    with pytest.raises(ValueError, match="status"):
        invoice_outcome("void", ISSUED, DUE, None, None, AS_OF)
    with pytest.raises(ValueError, match="days late"):
        invoice_outcome("paid", ISSUED, DUE, DUE, None, AS_OF)


def test_backtest_invoices_labels_counts_exclusions_and_keeps_the_grade_at_issue():
    def invoice(status, days_late=None, due=DUE, score=None, grade=None):
        paid_on = due + timedelta(days=days_late) if status == "paid" else None
        return InvoiceAtIssue(status, due - timedelta(days=30), due, paid_on, days_late, score, grade)

    report = backtest_invoices([
        invoice("paid", 30, score=70, grade="C"),                                 # late
        invoice("paid", 29, score=40, grade="B"),                                 # on time
        invoice("open", due=AS_OF - timedelta(days=30), score=90, grade="D"),     # open 30 days past due: late
        invoice("open", due=AS_OF - timedelta(days=29), score=10, grade="A"),     # open 29: undecided
        invoice("open", due=AS_OF + timedelta(days=10)),                          # not yet due: undecided
        invoice("cancelled", score=5, grade="A"),                                 # cancelled
        invoice("paid", 2),                                                       # on time, before any grade
    ], AS_OF)
    assert (report.invoices, report.late, report.excluded_cancelled, report.excluded_undecided) == (4, 2, 1, 2)
    # scores: late [70, 90] vs on time [40]: both above → 1.0
    assert report.auc_score == 1.0
    assert [(c.grade, c.invoices, c.late) for c in report.calibration] == [
        ("A", 0, 0), ("B", 1, 0), ("C", 1, 1), ("D", 1, 1), ("none", 1, 0)]
