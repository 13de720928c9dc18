"""Payment-behaviour aggregates and an explainable risk score (0 = safe, 100 = risky). Pure."""
from __future__ import annotations

from dataclasses import dataclass, replace

from shared.contract.events import RiskFactor


@dataclass(frozen=True)
class PaymentBehaviour:
    invoices_issued: int = 0
    invoices_paid: int = 0
    paid_late: int = 0
    days_late_total: int = 0
    overdue_events: int = 0
    broken_promises: int = 0

    def issued(self) -> "PaymentBehaviour":
        return replace(self, invoices_issued=self.invoices_issued + 1)

    def paid(self, days_late: int) -> "PaymentBehaviour":
        late = days_late > 0
        return replace(
            self,
            invoices_paid=self.invoices_paid + 1,
            paid_late=self.paid_late + int(late),
            days_late_total=self.days_late_total + max(days_late, 0),
        )

    def overdue(self) -> "PaymentBehaviour":
        return replace(self, overdue_events=self.overdue_events + 1)

    def promise_broken(self) -> "PaymentBehaviour":
        return replace(self, broken_promises=self.broken_promises + 1)


@dataclass(frozen=True)
class Assessment:
    score: int
    segment: str
    factors: list[RiskFactor]


SEGMENTS = ((30, "low"), (60, "medium"), (101, "high"))
NEW_CUSTOMER_SCORE = 35  # no history yet: cautious middle


def segment_of(score: int) -> str:
    return next(name for limit, name in SEGMENTS if score < limit)


def assess(b: PaymentBehaviour) -> Assessment:
    """Each factor adds points and says why; the score is their sum, capped at 100."""
    factors: list[RiskFactor] = []
    if b.invoices_paid == 0 and b.overdue_events == 0:
        factors.append(RiskFactor(name="no_history", value=b.invoices_issued, points=NEW_CUSTOMER_SCORE,
                                  explanation="no payment history yet"))
    elif b.invoices_paid == 0:
        factors.append(RiskFactor(name="nothing_paid", value=b.overdue_events, points=40,
                                  explanation=f"{b.overdue_events} invoice(s) overdue and none paid yet"))
    else:
        late_ratio = b.paid_late / b.invoices_paid
        factors.append(RiskFactor(name="late_payment_ratio", value=round(late_ratio, 3), points=round(40 * late_ratio),
                                  explanation=f"{b.paid_late} of {b.invoices_paid} paid invoices were paid late"))
    if b.invoices_paid or b.overdue_events:
        avg_late = b.days_late_total / b.paid_late if b.paid_late else 0.0
        factors.append(RiskFactor(name="average_days_late", value=round(avg_late, 1), points=min(25, round(avg_late)),
                                  explanation=f"late payments came {avg_late:.1f} days after the due date on average"))
        overdue_ratio = b.overdue_events / b.invoices_issued if b.invoices_issued else 0.0
        factors.append(RiskFactor(name="overdue_ratio", value=round(overdue_ratio, 3),
                                  points=round(25 * min(1.0, overdue_ratio)),
                                  explanation=f"{b.overdue_events} of {b.invoices_issued} invoices went overdue"))
    if b.broken_promises:
        factors.append(RiskFactor(name="broken_promises", value=b.broken_promises, points=min(20, 10 * b.broken_promises),
                                  explanation=f"{b.broken_promises} promise(s) to pay broken"))
    score = max(0, min(100, sum(f.points for f in factors)))
    return Assessment(score, segment_of(score), factors)
