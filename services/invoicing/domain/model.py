"""Invoicing domain: pure rules for invoices, cash application, overdue time and aging."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo


# Billing-source names the platform writes under itself (dunning's fee invoices are "dunning").
# No billing source may take one, or its key could cancel or adjust what the platform booked.
RESERVED_SOURCES = frozenset({"dunning", "invoicing", "risk", "notifier", "tahsilat", "system", "internal"})


def reserved_source(name: str) -> bool:
    return name.strip().lower() in RESERVED_SOURCES


@dataclass(frozen=True)
class OpenInvoice:
    invoice_id: str
    number: str
    external_id: str
    currency: str
    open_minor: int
    issue_date: date
    due_date: date


@dataclass(frozen=True)
class AllocationLine:
    invoice_id: str
    amount_minor: int
    invoice_open_minor: int  # what the invoice still owes afterwards


@dataclass(frozen=True)
class CashApplication:
    allocations: list[AllocationLine] = field(default_factory=list)
    unapplied_minor: int = 0

    @property
    def settled(self) -> list[str]:
        return [a.invoice_id for a in self.allocations if a.invoice_open_minor == 0]


def allocate_payment(
    open_invoices: list[OpenInvoice], amount_minor: int, currency: str, references: list[str] | None = None
) -> CashApplication:
    """Referenced invoices first (by number or external id, in the order given), then the
    oldest open invoice first (due date, then issue date). Only the payment's currency is
    touched; whatever is left over is unapplied credit."""
    if amount_minor <= 0:
        raise ValueError("amount_minor must be positive")
    candidates = [i for i in open_invoices if i.currency == currency and i.open_minor > 0]
    by_ref = {}
    for inv in candidates:
        by_ref.setdefault(inv.number, inv)
        by_ref.setdefault(inv.external_id, inv)
    ordered: list[OpenInvoice] = []
    for ref in references or []:
        inv = by_ref.get(ref)
        if inv is not None and inv not in ordered:
            ordered.append(inv)
    ordered += sorted(
        (i for i in candidates if i not in ordered), key=lambda i: (i.due_date, i.issue_date, i.number)
    )
    remaining = amount_minor
    lines: list[AllocationLine] = []
    for inv in ordered:
        if remaining == 0:
            break
        take = min(remaining, inv.open_minor)
        remaining -= take
        lines.append(AllocationLine(inv.invoice_id, take, inv.open_minor - take))
    return CashApplication(lines, remaining)


def unmatched_references(open_invoices: list[OpenInvoice], currency: str, references: list[str]) -> list[str]:
    """References (invoice numbers or external ids) that name no open invoice in `currency`."""
    known = {k for i in open_invoices if i.currency == currency and i.open_minor > 0 for k in (i.number, i.external_id)}
    return [r for r in references if r not in known]


@lru_cache(maxsize=65536)  # pure, and invoices share few (due date, timezone) pairs
def overdue_at(due_date: date, timezone: str, grace_days: int = 0) -> datetime:
    """An invoice is overdue once its due date (plus grace) has ended in the customer's timezone."""
    local_midnight = datetime.combine(due_date + timedelta(days=1 + grace_days), time(0), ZoneInfo(timezone))
    return local_midnight.astimezone(ZoneInfo("UTC"))


DEFAULT_AGING_BUCKETS: tuple[tuple[str, int, int | None], ...] = (
    ("current", -10**9, 0),
    ("1-30", 1, 30),
    ("31-60", 31, 60),
    ("61-90", 61, 90),
    ("90+", 91, None),
)


def aging_bucket(due_date: date, as_of: date, buckets=DEFAULT_AGING_BUCKETS) -> str:
    days = (as_of - due_date).days
    for name, low, high in buckets:
        if days >= low and (high is None or days <= high):
            return name
    raise ValueError(f"no aging bucket for {days} days")
