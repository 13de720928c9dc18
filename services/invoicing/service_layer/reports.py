"""Receivables reports read from the invoicing store: statement of account, aging, DSO, CEI.

Used alike by the HTTP API and by `tahsilat report` (which reads the database directly), so
both answer the same. Every query is scoped by tenant_id.

History, not today's columns: an invoice's open amount AS OF a date D is rebuilt from what had
happened by the end of D (UTC dates, like ledger bookings):

- the invoice counts if it was issued on or before D and was not cancelled on or before D;
- its amount as of D is its invoice ledger entry plus the adjustments booked on or before D;
- its open amount is that minus the allocations of payments received on or before D.

Due dates are today's (a due date moved later is not replayed)."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal

import asyncpg

from services.invoicing.domain.model import DEFAULT_AGING_BUCKETS
from services.invoicing.domain.reports import (
    Buckets, CurrencyStatement, LedgerLine, OpenItem, age_by_currency, age_by_customer, build_statement,
    collection_effectiveness, dso_countback, monthly_periods,
)
from shared.periods import month_ends

Db = asyncpg.Connection | asyncpg.Pool


@dataclass(frozen=True)
class InvoiceAsOf:
    invoice_id: str
    customer_id: str
    currency: str
    issue_date: date
    due_date: date
    amount_minor: int  # as of the date
    open_minor: int  # as of the date


_INVOICES_AS_OF = """
WITH counted AS (
    SELECT invoice_id, customer_id, currency, issue_date, due_date FROM invoices
    WHERE tenant_id = $1 AND issue_date <= $2
      AND (cancelled_at IS NULL OR (cancelled_at AT TIME ZONE 'UTC')::date > $2)
      AND ($3::text IS NULL OR currency = $3)
      AND ($5::text IS NULL OR billing_source = $5)
), amounts AS (
    SELECT ref_id, sum(amount_minor)::bigint AS amount_minor FROM ledger_entries
    WHERE tenant_id = $1 AND (kind IN ('invoice', 'fee', 'interest') OR (kind = 'adjustment' AND booked_on <= $2))
      AND ($3::text IS NULL OR currency = $3)
    GROUP BY ref_id
), paid AS (
    SELECT a.invoice_id, sum(a.amount_minor)::bigint AS paid_minor
    FROM allocations a JOIN payments p ON p.tenant_id = a.tenant_id AND p.payment_id = a.payment_id
    WHERE a.tenant_id = $1
      -- a payment counts from the day it was received; credit applied later, from that day
      AND GREATEST((p.received_at AT TIME ZONE 'UTC')::date,
                   CASE WHEN a.allocated_at > p.recorded_at THEN (a.allocated_at AT TIME ZONE 'UTC')::date END) <= $2
      -- a reversed (bounced) payment stops counting on the day it was reversed
      AND (a.reversed_at IS NULL OR (a.reversed_at AT TIME ZONE 'UTC')::date > $2)
    GROUP BY a.invoice_id
), as_of AS (
    SELECT c.*, coalesce(m.amount_minor, 0) AS amount_minor,
           coalesce(m.amount_minor, 0) - coalesce(p.paid_minor, 0) AS open_minor
    FROM counted c
    LEFT JOIN amounts m ON m.ref_id = c.invoice_id::text
    LEFT JOIN paid p ON p.invoice_id = c.invoice_id
)
SELECT * FROM as_of WHERE open_minor > 0 OR issue_date >= $4
ORDER BY customer_id, currency, due_date, invoice_id
"""


async def invoices_as_of(db: Db, tenant_id: str, as_of: date, currency: str | None = None,
                         issued_since: date | None = None, billing_source: str | None = None) -> list[InvoiceAsOf]:
    """Invoices still open as of `as_of` (open amount > 0), plus, when `issued_since` is given,
    every invoice counted as of `as_of` that was issued on or after it (for sales)."""
    rows = await db.fetch(_INVOICES_AS_OF, tenant_id, as_of, currency, issued_since or date.max, billing_source)
    return [
        InvoiceAsOf(str(r["invoice_id"]), r["customer_id"], r["currency"], r["issue_date"], r["due_date"],
                    r["amount_minor"], r["open_minor"])
        for r in rows
    ]


# --------------------------------------------------------------------------- aging


@dataclass
class AgingResult:
    as_of: date
    buckets: list[str]
    by_currency: dict[str, dict[str, int]]
    by_customer: dict[str, dict[str, dict[str, int]]] | None = None


async def aging_report(db: Db, tenant_id: str, as_of: date, buckets: Buckets = DEFAULT_AGING_BUCKETS,
                       currency: str | None = None, by_customer: bool = False,
                       billing_source: str | None = None) -> AgingResult:
    """`billing_source`: only that source's invoices."""
    invoices = await invoices_as_of(db, tenant_id, as_of, currency, billing_source=billing_source)
    items = [OpenItem(i.customer_id, i.currency, i.open_minor, i.due_date) for i in invoices if i.open_minor > 0]
    return AgingResult(
        as_of=as_of,
        buckets=[name for name, _, _ in buckets],
        by_currency=age_by_currency(items, as_of, buckets),
        by_customer=age_by_customer(items, as_of, buckets) if by_customer else None,
    )


async def aging_trend(db: Db, tenant_id: str, last: date, points: int = 6, buckets: Buckets = DEFAULT_AGING_BUCKETS,
                      billing_source: str | None = None) -> dict[str, dict[str, dict[str, int]]]:
    """currency -> day -> bucket -> open amount, at the last day of each of the `points - 1`
    months before `last`'s and at `last`: zeros where a currency had nothing open yet."""
    agings = {day.isoformat(): await aging_report(db, tenant_id, day, buckets, billing_source=billing_source)
              for day in month_ends(last, points)}
    zero = {name: 0 for name, _, _ in buckets} | {"total": 0}
    currencies = sorted({cur for a in agings.values() for cur in a.by_currency})
    return {cur: {day: a.by_currency.get(cur, zero) for day, a in agings.items()} for cur in currencies}


# --------------------------------------------------------------------------- DSO


@dataclass(frozen=True)
class DsoLine:
    ar_minor: int
    sales_minor: int  # over all the periods
    dso_days: float
    sales_by_period: list[int] = field(default_factory=list)  # newest first, as the periods


@dataclass
class DsoResult:
    as_of: date
    periods: list[tuple[date, date]]  # newest first, dates inclusive
    by_currency: dict[str, DsoLine]


async def dso_report(db: Db, tenant_id: str, as_of: date, months: int = 3, currency: str | None = None,
                     billing_source: str | None = None) -> DsoResult:
    """Per currency: AR as of `as_of` (the open amounts as of then), sales of each of the
    `months` calendar months ending at `as_of` (amounts as of then of the invoices issued in
    the month and not cancelled by then), and DSO by the countback method."""
    periods = monthly_periods(as_of, months)
    invoices = await invoices_as_of(db, tenant_id, as_of, currency, issued_since=periods[-1][0],
                                    billing_source=billing_source)
    ar: dict[str, int] = {}
    sales: dict[str, list[int]] = {}
    for inv in invoices:
        if inv.open_minor > 0:
            ar[inv.currency] = ar.get(inv.currency, 0) + inv.open_minor
        for n, (start, end) in enumerate(periods):
            if start <= inv.issue_date <= end:
                sales.setdefault(inv.currency, [0] * len(periods))[n] += inv.amount_minor
    out: dict[str, DsoLine] = {}
    for cur in sorted(set(ar) | set(sales)):
        per_period = sales.get(cur, [0] * len(periods))
        balance = ar.get(cur, 0)
        days = dso_countback(balance, [(s, e, amount) for (s, e), amount in zip(periods, per_period)])
        out[cur] = DsoLine(balance, sum(per_period), days, per_period)
    return DsoResult(as_of, periods, out)


# --------------------------------------------------------------------------- CEI


@dataclass(frozen=True)
class CeiLine:
    opening_minor: int  # AR at the end of the day before the period
    sales_minor: int  # invoiced in the period
    closing_minor: int  # AR at the end of its last day
    closing_current_minor: int  # of which not yet due
    cei_percent: Decimal | None


async def cei_report(db: Db, tenant_id: str, first: date, last: date, currency: str | None = None,
                     billing_source: str | None = None) -> dict[str, CeiLine]:
    """Per currency, the collection effectiveness index of the days first..last (inclusive),
    from the history as of the day before and as of the last day."""
    before = await invoices_as_of(db, tenant_id, first - timedelta(days=1), currency, billing_source=billing_source)
    after = await invoices_as_of(db, tenant_id, last, currency, issued_since=first, billing_source=billing_source)
    opening: dict[str, int] = {}
    sales: dict[str, int] = {}
    closing: dict[str, int] = {}
    current: dict[str, int] = {}
    for inv in before:
        opening[inv.currency] = opening.get(inv.currency, 0) + max(0, inv.open_minor)
    for inv in after:
        if inv.issue_date >= first:
            sales[inv.currency] = sales.get(inv.currency, 0) + inv.amount_minor
        if inv.open_minor > 0:
            closing[inv.currency] = closing.get(inv.currency, 0) + inv.open_minor
            if inv.due_date > last:
                current[inv.currency] = current.get(inv.currency, 0) + inv.open_minor
    out = {}
    for cur in sorted(set(opening) | set(sales) | set(closing)):
        o, s, c, k = opening.get(cur, 0), sales.get(cur, 0), closing.get(cur, 0), current.get(cur, 0)
        out[cur] = CeiLine(o, s, c, k, collection_effectiveness(o, s, c, k))
    return out


# --------------------------------------------------------------------------- statement


async def customer_known(db: Db, tenant_id: str, customer_id: str) -> bool:
    """A customer is known by its master data or, for cash from an unknown payer, its ledger."""
    return bool(await db.fetchval(
        "SELECT EXISTS (SELECT 1 FROM customers WHERE tenant_id = $1 AND customer_id = $2)"
        " OR EXISTS (SELECT 1 FROM ledger_entries WHERE tenant_id = $1 AND customer_id = $2)",
        tenant_id, customer_id,
    ))


async def statement(db: Db, tenant_id: str, customer_id: str, start: date, end: date) -> dict[str, CurrencyStatement]:
    """The statement of account of one customer for [start, end], per currency, from the ledger."""
    before = await db.fetch(
        "SELECT currency, sum(amount_minor)::bigint AS amount_minor, min(booked_on) AS first FROM ledger_entries"
        " WHERE tenant_id = $1 AND customer_id = $2 AND booked_on < $3 GROUP BY currency",
        tenant_id, customer_id, start,
    )
    rows = await db.fetch(
        "SELECT entry_id, currency, kind, ref_id, amount_minor, booked_on, description FROM ledger_entries"
        " WHERE tenant_id = $1 AND customer_id = $2 AND booked_on BETWEEN $3 AND $4 ORDER BY booked_on, entry_id",
        tenant_id, customer_id, start, end,
    )
    # What came before the period enters as one line per currency, booked before it starts.
    entries: list[LedgerLine] = [
        LedgerLine(0, r["currency"], "opening", "", r["amount_minor"], r["first"]) for r in before
    ]
    entries += [LedgerLine(r["entry_id"], r["currency"], r["kind"], r["ref_id"], r["amount_minor"], r["booked_on"],
                           r["description"]) for r in rows]
    return build_statement(entries, start, end)


def default_period(start: date | None, end: date | None, today: date) -> tuple[date, date]:
    """The statement period when not given: up to today, from the first of that month."""
    end = end or today
    return start or end.replace(day=1), end

