"""What a customer agrees with a collector: promises to pay, payment plans, settlement offers;
and how disputes move. Pure rules and state machines, no I/O.

Payments count towards an arrangement when they are made on its invoices after it was agreed.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import ROUND_FLOOR, ROUND_HALF_UP, Decimal
from typing import Literal, get_args
from zoneinfo import ZoneInfo

from shared.contract.events import DisputeReason

DISPUTE_REASONS: tuple[str, ...] = get_args(DisputeReason)
PromiseChannel = Literal["phone", "email", "sms", "letter", "portal", "in_person"]


class ArrangementError(ValueError):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


def end_of_day(day: date, timezone: str) -> datetime:
    """The first moment after `day` in the customer's timezone, as UTC: a promise "by the 10th"
    holds through the whole 10th where the customer is."""
    return datetime.combine(day + timedelta(days=1), time.min, ZoneInfo(timezone)).astimezone(ZoneInfo("UTC"))


# -- promises to pay --------------------------------------------------------------------------------


def check_promise(amount_minor: int, promised_date: date, today: date, owed_minor: int) -> None:
    """A promise must be for a positive amount not above what is owed, on a day not past."""
    if amount_minor <= 0:
        raise ArrangementError("amount_minor", "must be positive")
    if amount_minor > owed_minor:
        raise ArrangementError("amount_minor", f"{amount_minor} is more than the {owed_minor} owed on the invoices covered")
    if promised_date < today:
        raise ArrangementError("promised_date", f"{promised_date} has passed")


def promise_outcome(amount_minor: int, paid_minor: int, deadline: datetime, now: datetime) -> str:
    """open | kept | broken: kept once payments since the promise cover it (even early), broken
    when the deadline (the promised day plus grace, in the customer's timezone) passes first."""
    if paid_minor >= amount_minor:
        return "kept"
    return "broken" if now >= deadline else "open"


# -- payment plans ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instalment:
    sequence: int  # 1-based
    due_date: date
    amount_minor: int


def split_instalments(total_minor: int, count: int, first_due: date, every_days: int = 30) -> list[Instalment]:
    """`count` instalments `every_days` apart, equal to the minor unit; the remainder of the
    division goes on the first (so no instalment is ever zero or the sum off by a cent)."""
    if count < 1 or count > 120:
        raise ArrangementError("instalments", "between 1 and 120")
    if total_minor < count:
        raise ArrangementError("instalments", f"{count} instalments of {total_minor} minor units would be empty")
    if every_days < 1:
        raise ArrangementError("every_days", "must be positive")
    base, remainder = divmod(total_minor, count)
    return [Instalment(n + 1, first_due + timedelta(days=every_days * n), base + (remainder if n == 0 else 0))
            for n in range(count)]


def check_instalments(instalments: list[Instalment], total_minor: int, today: date) -> None:
    if not instalments:
        raise ArrangementError("instalments", "at least one")
    if sum(i.amount_minor for i in instalments) != total_minor:
        raise ArrangementError("instalments", f"add up to {sum(i.amount_minor for i in instalments)}, not the"
                                              f" {total_minor} owed on the invoices covered")
    if any(i.amount_minor <= 0 for i in instalments):
        raise ArrangementError("instalments", "every instalment must be positive")
    dates = [i.due_date for i in instalments]
    if dates != sorted(dates) or len(set(dates)) != len(dates):
        raise ArrangementError("instalments", "due dates must be in order, one per day at most")
    if dates[0] < today:
        raise ArrangementError("instalments", f"the first is due {dates[0]}, in the past")


@dataclass(frozen=True)
class PlanState:
    status: str  # active | completed | broken
    paid: tuple[int, ...]  # per instalment, what the payments cover (in order)
    missed: int | None  # the instalment whose deadline passed unpaid


def plan_state(instalments: list[Instalment], paid_minor: int, now: datetime, grace_days: int,
               timezone: str) -> PlanState:
    """Payments cover the instalments in order. Completed when all is paid; broken when an
    instalment is not covered by the end of its due day plus the grace days."""
    left, paid = paid_minor, []
    for i in instalments:
        covered = min(left, i.amount_minor)
        paid.append(covered)
        left -= covered
    if sum(paid) >= sum(i.amount_minor for i in instalments):
        return PlanState("completed", tuple(paid), None)
    for i, covered in zip(instalments, paid):
        if covered < i.amount_minor and now >= end_of_day(i.due_date + timedelta(days=grace_days), timezone):
            return PlanState("broken", tuple(paid), i.sequence)
    return PlanState("active", tuple(paid), None)


# -- settlement offers ------------------------------------------------------------------------------


def settlement_amount(owed_minor: int, discount_percent: Decimal, max_percent: Decimal) -> int:
    """What the customer pays to settle: the owed amount less the discount, rounded half up to
    the minor unit, but never more off than the policy's limit allows."""
    if discount_percent <= 0:
        raise ArrangementError("discount_percent", "must be positive")
    if discount_percent > max_percent:
        raise ArrangementError("discount_percent", f"{discount_percent} % is above the policy's limit of {max_percent} %")
    discount = (Decimal(owed_minor) * discount_percent / 100).quantize(Decimal(1), rounding=ROUND_HALF_UP)
    limit = (Decimal(owed_minor) * max_percent / 100).quantize(Decimal(1), rounding=ROUND_FLOOR)
    return owed_minor - int(min(discount, limit))


@dataclass(frozen=True)
class SettlementTerms:
    owed_minor: int
    discount_minor: int
    pay_minor: int


def settlement_terms(owed_minor: int, discount_percent: Decimal, pay_by: date, today: date, days_overdue: int, *,
                     max_percent: Decimal, max_days: int, min_days_overdue: int) -> SettlementTerms:
    """What a settlement offer of `discount_percent` on the `owed_minor` overdue comes to, within
    the policy's limits: the pay-by day from today to `max_days` ahead, and only once the oldest
    overdue invoice is `min_days_overdue` late."""
    if owed_minor <= 0:
        raise ArrangementError("case_id", "nothing is overdue: there is nothing to settle")
    if days_overdue < min_days_overdue:
        raise ArrangementError("case_id", f"the oldest invoice is {days_overdue} days overdue; the policy allows"
                                          f" settlement offers from {min_days_overdue} days")
    if pay_by < today:
        raise ArrangementError("pay_by", f"{pay_by} has passed")
    if pay_by > today + timedelta(days=max_days):
        raise ArrangementError("pay_by", f"{pay_by} is more than the policy's {max_days} days away")
    pay = settlement_amount(owed_minor, discount_percent, max_percent)
    if pay >= owed_minor:
        raise ArrangementError("discount_percent", f"{discount_percent} % of {owed_minor} rounds to nothing")
    return SettlementTerms(owed_minor, owed_minor - pay, pay)


def settlement_outcome(pay_minor: int, paid_minor: int, deadline: datetime, now: datetime) -> str:
    """open | accepted | expired: accepted once the payments made by the end of the pay-by day
    reach the settlement amount, expired when that day ends first."""
    if paid_minor >= pay_minor:
        return "accepted"
    return "expired" if now >= deadline else "open"


def settlement_credit(discount_minor: int, still_open_minor: int) -> int:
    """The credit note that settles an accepted offer: what the covered invoices still owe, never
    more than the discount (a customer who paid more owes nothing and gets no more credit)."""
    return max(0, min(discount_minor, still_open_minor))


# -- disputes -----------------------------------------------------------------------------------------


def resolve_dispute(status: str, outcome: str, credit_minor: int | None, disputed_minor: int) -> None:
    """open -> accepted (a credit note is requested for `credit_minor`, at most what is
    disputed) or rejected (dunning resumes). Nothing else moves."""
    if status != "open":
        raise ArrangementError("dispute_id", f"the dispute was already {status}")
    if outcome not in ("accepted", "rejected"):
        raise ArrangementError("outcome", "accepted or rejected")
    if outcome == "rejected" and credit_minor:
        raise ArrangementError("credit_minor", "a rejected dispute gets no credit")
    if outcome == "accepted" and credit_minor is not None and not 0 < credit_minor <= max(disputed_minor, 0):
        raise ArrangementError("credit_minor", f"between 1 and the {disputed_minor} disputed")
