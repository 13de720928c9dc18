"""Risk backtest, pure: how well the grade a customer had when an invoice was issued predicted
that the invoice would be paid 30 or more days late.

No I/O here: the service layer reads each invoice with the assessment its customer had at the
start of the issue date; these functions label the invoices and do the arithmetic.

- An invoice is *late* when it was paid 30 or more days after its due date, or is still open at
  the as-of date 30 or more days past due. It is *on time* when it was paid fewer than 30 days
  late. Cancelled invoices are excluded, and so are invoices not yet decidable at the as-of date
  (open and fewer than 30 days past due, or not yet issued): counting them as on time would flatter
  every grade.
- AUC is the Mann-Whitney probability that a late invoice carries a higher score (or worse grade)
  than an on-time one, ties counting 1/2: 0.5 is a coin toss, 1.0 a perfect ranking. Invoices
  issued before the customer had any assessment have no score and are left out of both AUCs; the
  calibration table shows them as grade "none"."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import date

LATE_DAYS = 30
GRADES = ("A", "B", "C", "D")
NO_GRADE = "none"  # invoices issued before the customer's first assessment
GRADE_RANK = {g: n for n, g in enumerate(GRADES)}  # A < B < C < D: higher is riskier, like the score

# What an invoice counts as in the backtest.
LATE, ON_TIME, CANCELLED, UNDECIDED = "late", "on_time", "cancelled", "undecided"


@dataclass(frozen=True)
class InvoiceAtIssue:
    """An invoice as the store has it, with the assessment its customer had at the start of
    its issue date (score and grade None: no assessment yet)."""

    status: str  # open | paid | cancelled
    issue_date: date
    due_date: date
    paid_on: date | None  # UTC date of settlement
    days_late: int | None  # at settlement: days after the due date (negative: early)
    score: int | None
    grade: str | None


@dataclass(frozen=True)
class Observation:
    score: int | None
    grade: str | None
    late: bool


@dataclass(frozen=True)
class GradeCalibration:
    grade: str  # A..D or "none"
    invoices: int
    late: int
    late_share: float | None  # late / invoices, rounded to 3; None without invoices
    average_score: float | None  # rounded to 1; None without scored invoices


@dataclass(frozen=True)
class BacktestReport:
    as_of: date
    invoices: int  # decided invoices, late or on time
    late: int
    auc_score: float | None  # rounded to 3; None when there are no late or no on-time scored invoices
    auc_grade: float | None
    calibration: tuple[GradeCalibration, ...]  # A, B, C, D, none: always all five
    excluded_cancelled: int
    excluded_undecided: int

    def as_dict(self) -> dict:
        """JSON-ready (the as-of date as YYYY-MM-DD)."""
        return asdict(self) | {"as_of": self.as_of.isoformat(),
                               "calibration": [asdict(c) for c in self.calibration]}


def invoice_outcome(status: str, issue_date: date, due_date: date, paid_on: date | None, days_late: int | None,
                    as_of: date) -> str:
    """LATE, ON_TIME, CANCELLED or UNDECIDED, with only what was known by the end of `as_of`:
    an invoice paid after `as_of` was still open then."""
    if status not in ("open", "paid", CANCELLED):
        raise ValueError(f"unknown invoice status {status!r}")
    if status == CANCELLED:
        return CANCELLED
    if issue_date > as_of:
        return UNDECIDED
    if status == "paid" and paid_on is not None and paid_on <= as_of:
        if days_late is None:
            raise ValueError("a paid invoice needs its days late")
        return LATE if days_late >= LATE_DAYS else ON_TIME
    return LATE if (as_of - due_date).days >= LATE_DAYS else UNDECIDED


def auc(positives: Sequence[float], negatives: Sequence[float]) -> float | None:
    """P(a positive ranks above a negative), ties 1/2 (Mann-Whitney U / (n1 * n0)); None when
    either class is empty. By average ranks, so O(n log n) rather than every pair."""
    if not positives or not negatives:
        return None
    ranked = sorted([(v, True) for v in positives] + [(v, False) for v in negatives], key=lambda x: x[0])
    rank_sum_positive = 0.0
    start = 0
    while start < len(ranked):
        end = start
        while end < len(ranked) and ranked[end][0] == ranked[start][0]:
            end += 1
        average_rank = (start + 1 + end) / 2  # ranks start+1 .. end share their mean
        rank_sum_positive += average_rank * sum(1 for _, positive in ranked[start:end] if positive)
        start = end
    n1, n0 = len(positives), len(negatives)
    u = rank_sum_positive - n1 * (n1 + 1) / 2
    return u / (n1 * n0)


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def calibrate(observations: Sequence[Observation]) -> tuple[GradeCalibration, ...]:
    """Invoices, late count, late share and average score per grade at issue, A..D then "none"."""
    rows = []
    for grade in (*GRADES, NO_GRADE):
        group = [o for o in observations if (o.grade or NO_GRADE) == grade]
        late = sum(1 for o in group if o.late)
        scores = [o.score for o in group if o.score is not None]
        rows.append(GradeCalibration(
            grade=grade, invoices=len(group), late=late,
            late_share=_rounded(late / len(group), 3) if group else None,
            average_score=_rounded(sum(scores) / len(scores), 1) if scores else None))
    return tuple(rows)


def backtest(observations: Sequence[Observation], as_of: date, *, excluded_cancelled: int = 0,
             excluded_undecided: int = 0) -> BacktestReport:
    """AUC of the score and of the grade, and the calibration table, over labelled invoices."""
    for o in observations:
        if o.grade is not None and o.grade not in GRADE_RANK:
            raise ValueError(f"unknown grade {o.grade!r}")
    scored = [o for o in observations if o.score is not None]
    graded = [o for o in observations if o.grade is not None]
    return BacktestReport(
        as_of=as_of,
        invoices=len(observations),
        late=sum(1 for o in observations if o.late),
        auc_score=_rounded(auc([o.score for o in scored if o.late], [o.score for o in scored if not o.late]), 3),
        auc_grade=_rounded(auc([GRADE_RANK[o.grade] for o in graded if o.late],
                               [GRADE_RANK[o.grade] for o in graded if not o.late]), 3),
        calibration=calibrate(observations),
        excluded_cancelled=excluded_cancelled,
        excluded_undecided=excluded_undecided,
    )


def backtest_invoices(invoices: Iterable[InvoiceAtIssue], as_of: date) -> BacktestReport:
    """Label every invoice as of `as_of`, count the excluded ones, and backtest the rest."""
    observations: list[Observation] = []
    excluded = {CANCELLED: 0, UNDECIDED: 0}
    for i in invoices:
        outcome = invoice_outcome(i.status, i.issue_date, i.due_date, i.paid_on, i.days_late, as_of)
        if outcome in excluded:
            excluded[outcome] += 1
        else:
            observations.append(Observation(i.score, i.grade, outcome == LATE))
    return backtest(observations, as_of, excluded_cancelled=excluded[CANCELLED],
                    excluded_undecided=excluded[UNDECIDED])
