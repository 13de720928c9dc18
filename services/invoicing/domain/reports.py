"""Receivables reports, pure: statements of account, configurable aging, DSO by countback.

No I/O here: the service layer reads ledger lines and open amounts, these functions do the
arithmetic. Money is integer minor units and currencies are never added together."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import ROUND_HALF_UP, Decimal

from services.invoicing.domain.model import DEFAULT_AGING_BUCKETS, aging_bucket

Buckets = tuple[tuple[str, int, int | None], ...]

# --------------------------------------------------------------------------- statement


@dataclass(frozen=True)
class LedgerLine:
    """One ledger entry as stored: signed amount (+ the customer owes more)."""

    entry_id: int
    currency: str
    kind: str
    ref_id: str
    amount_minor: int
    booked_on: date
    description: str = ""


@dataclass(frozen=True)
class StatementLine:
    booked_on: date
    kind: str
    ref_id: str
    description: str
    amount_minor: int
    balance_minor: int  # running balance after this line


@dataclass(frozen=True)
class CurrencyStatement:
    currency: str
    opening_minor: int
    lines: list[StatementLine] = field(default_factory=list)
    closing_minor: int = 0


def build_statement(entries: Iterable[LedgerLine], start: date, end: date) -> dict[str, CurrencyStatement]:
    """The statement of account of one customer for [start, end], one per currency.

    opening = the sum of the entries booked before `start`; then every entry booked within
    [start, end] (both inclusive), in booked_on order and then entry order, each with the
    running balance; closing = opening + the period's entries. Entries after `end` are
    ignored. A currency appears when it has any entry booked on or before `end`."""
    if start > end:
        raise ValueError("the period starts after it ends")
    opening: dict[str, int] = {}
    within: dict[str, list[LedgerLine]] = {}
    for e in entries:
        if e.booked_on > end:
            continue
        if e.booked_on < start:
            opening[e.currency] = opening.get(e.currency, 0) + e.amount_minor
            within.setdefault(e.currency, [])
        else:
            within.setdefault(e.currency, []).append(e)
            opening.setdefault(e.currency, 0)
    out: dict[str, CurrencyStatement] = {}
    for currency in sorted(within):
        balance = opening[currency]
        lines = []
        for e in sorted(within[currency], key=lambda x: (x.booked_on, x.entry_id)):
            balance += e.amount_minor
            lines.append(StatementLine(e.booked_on, e.kind, e.ref_id, e.description, e.amount_minor, balance))
        out[currency] = CurrencyStatement(currency, opening[currency], lines, balance)
    return out


# --------------------------------------------------------------------------- aging

MAX_BUCKETS = 20


def parse_buckets(spec: str) -> Buckets:
    """Aging buckets from their upper bounds in days past due, e.g. "0,30,60,90":

        current (not yet due, or due today), 1-30, 31-60, 61-90, 90+ (91 days and more)

    The bounds are increasing integers; the first may be 0 (and is implied when left out, so
    "30,60,90" is the same), every other one is positive. A bucket of one day is named by that
    day ("0,1,30" gives current, 1, 2-30, 30+). Raises ValueError saying what is wrong."""
    parts = [p.strip() for p in spec.split(",")]
    if not spec.strip() or any(p == "" for p in parts):
        raise ValueError("give comma-separated day bounds such as 0,30,60,90")
    try:
        bounds = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"day bounds must be whole numbers, not {spec!r}") from None
    if bounds[0] != 0:
        bounds.insert(0, 0)
    if any(b < 0 for b in bounds):
        raise ValueError("day bounds must not be negative")
    if any(b <= a for a, b in zip(bounds, bounds[1:])):
        raise ValueError(f"day bounds must increase strictly, not {spec!r}")
    if len(bounds) < 2:
        raise ValueError("give at least one positive day bound, such as 30")
    if len(bounds) > MAX_BUCKETS:
        raise ValueError(f"at most {MAX_BUCKETS} day bounds")
    buckets: list[tuple[str, int, int | None]] = [("current", -10**9, 0)]
    for low, high in zip(bounds, bounds[1:]):
        buckets.append((str(high) if low + 1 == high else f"{low + 1}-{high}", low + 1, high))
    buckets.append((f"{bounds[-1]}+", bounds[-1] + 1, None))
    return tuple(buckets)


def bucket_names(buckets: Buckets = DEFAULT_AGING_BUCKETS) -> list[str]:
    return [name for name, _, _ in buckets]


@dataclass(frozen=True)
class OpenItem:
    """What a customer owes on one invoice as of the report date."""

    customer_id: str
    currency: str
    open_minor: int
    due_date: date


def _row(buckets: Buckets) -> dict[str, int]:
    return dict.fromkeys(bucket_names(buckets), 0) | {"total": 0}


def age_by_currency(items: Iterable[OpenItem], as_of: date, buckets: Buckets = DEFAULT_AGING_BUCKETS,
                    ) -> dict[str, dict[str, int]]:
    """{currency: {bucket: total, ..., "total": total}}; items owing nothing are left out."""
    table: dict[str, dict[str, int]] = {}
    for item in items:
        if item.open_minor <= 0:
            continue
        row = table.setdefault(item.currency, _row(buckets))
        row[aging_bucket(item.due_date, as_of, buckets)] += item.open_minor
        row["total"] += item.open_minor
    return dict(sorted(table.items()))


def age_by_customer(items: Iterable[OpenItem], as_of: date, buckets: Buckets = DEFAULT_AGING_BUCKETS,
                    ) -> dict[str, dict[str, dict[str, int]]]:
    """{customer: {currency: {bucket: total, ..., "total": total}}}."""
    grouped: dict[str, list[OpenItem]] = {}
    for item in items:
        if item.open_minor > 0:
            grouped.setdefault(item.customer_id, []).append(item)
    return {c: age_by_currency(grouped[c], as_of, buckets) for c in sorted(grouped)}


# --------------------------------------------------------------------------- DSO


def dso_countback(ar_balance_minor: int, monthly_sales: Sequence[tuple[date, date, int]]) -> float:
    """Days sales outstanding by the countback method.

    `monthly_sales` is a list of (period_start, period_end, sales_minor), newest period first;
    both dates are inclusive, so March is (2026-03-01, 2026-03-31) and has 31 days.

    Walk back from the newest period, "paying off" the AR balance with each period's sales:
    while the balance left is at least a period's sales, the whole period counts (its days are
    added, its sales subtracted); in the period where the balance runs out only the fraction
    remaining / sales of its days is added, and the walk stops. If the AR balance is more than
    all the sales given, every day of every period counts. No AR (or a credit balance) is 0 days.

    Worked example, AR = 10,000.00 as of 2026-03-31:

        March     31 days, sales 6,000.00   10,000 - 6,000 = 4,000 left   -> 31 days
        February  28 days, sales 5,000.00   4,000 < 5,000: 28 * 4,000 / 5,000 = 22.4 days
        January   not reached

        DSO = 31 + 22.4 = 53.4 days

    (The simple average method, AR / sales * days = 10,000 / 11,000 * 59 = 53.6, drifts with
    seasonal sales; countback reads the balance against the most recent sales.)"""
    remaining = ar_balance_minor
    days = 0.0
    for start, end, sales in monthly_sales:
        if remaining <= 0:
            break
        if end < start:
            raise ValueError(f"period {start}..{end} ends before it starts")
        if sales < 0:
            raise ValueError(f"sales of period {start}..{end} are negative")
        period_days = (end - start).days + 1
        if remaining >= sales:
            days += period_days
            remaining -= sales
        else:
            days += period_days * remaining / sales
            remaining = 0
    return days


def monthly_periods(as_of: date, months: int) -> list[tuple[date, date]]:
    """The `months` calendar months ending at `as_of`, newest first, dates inclusive. The
    newest runs from the first of as_of's month to as_of itself (a whole month when as_of is
    the month's last day): monthly_periods(2026-02-15, 3) is Feb 1-15, January, December."""
    if months < 1:
        raise ValueError("months must be at least 1")
    periods = [(as_of.replace(day=1), as_of)]
    while len(periods) < months:
        first = periods[-1][0]
        prev_end = date.fromordinal(first.toordinal() - 1)
        periods.append((prev_end.replace(day=1), prev_end))
    return periods


# --------------------------------------------------------------------------- CEI


def collection_effectiveness(opening_minor: int, sales_minor: int, closing_minor: int,
                             closing_current_minor: int) -> Decimal | None:
    """Collection effectiveness index of a period, in percent (one decimal, half up):

        (opening AR + sales - closing AR) / (opening AR + sales - closing current AR) x 100

    what was collected of what could have been: everything owed at the start or invoiced
    since, less what is not yet due at the end. 100 collects everything collectible. None when
    nothing was collectible.

    Worked example: opening 10,000.00, sales 5,000.00, closing 6,000.00 of which 2,000.00 is
    not yet due: (10,000 + 5,000 - 6,000) / (10,000 + 5,000 - 2,000) = 9,000 / 13,000 = 69.2 %."""
    collectible = opening_minor + sales_minor - closing_current_minor
    if collectible <= 0:
        return None
    collected = opening_minor + sales_minor - closing_minor
    return (Decimal(collected) / collectible * 100).quantize(Decimal("0.1"), ROUND_HALF_UP)
