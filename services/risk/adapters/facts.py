"""The risk store's facts: customers' books loaded for a batch (locked, so two workers never
fold one customer at once) and written back set-based: the invoices an event changed and the
customers' counters. Every row is the state the events describe, so a replay gives the same rows."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

import asyncpg

from services.risk.domain.book import COUNTERS, CustomerBook, CustomerFacts, InvoiceFact

Key = tuple[str, str]  # (tenant, customer)

_INVOICE_COLUMNS = ("invoice_id", "currency", "amount_minor", "open_minor", "issue_date", "due_date", "updated_at",
                    "status", "paid_at", "days_late", "overdue_at", "reopened")
_FACT_COLUMNS = ("updated_at", *COUNTERS, "last_broken_at", "language", "terms_days", "parent_id")
# Settled invoices older than this before a batch's first event no longer move a score
# (the scorecard looks back at most 10 years); open ones and those an event names always load.
LOOKBACK = timedelta(days=3660)


async def load_books(conn: asyncpg.Connection, keys: Sequence[Key], named: Iterable[tuple[str, str]],
                     since: datetime) -> dict[Key, CustomerBook]:
    """The books of `keys`: the customer row (locked) and its invoices that are open, settled
    after `since - LOOKBACK`, or named by an event of the batch."""
    keys = sorted(set(keys))
    tenants, customers = [k[0] for k in keys], [k[1] for k in keys]
    # Lock in key order first (the row may not exist yet: the advisory lock covers that case).
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended(t || '/' || c, 7321))"
        " FROM unnest($1::text[], $2::text[]) AS k(t, c) ORDER BY t, c", tenants, customers)
    books = {k: CustomerBook(k[0], k[1]) for k in keys}
    for r in await conn.fetch(
            f"SELECT r.tenant_id, r.customer_id, {', '.join('r.' + c for c in _FACT_COLUMNS)}"
            " FROM unnest($1::text[], $2::text[]) AS k(tenant_id, customer_id)"
            " JOIN risk_customers r USING (tenant_id, customer_id)", tenants, customers):
        book = books[(r["tenant_id"], r["customer_id"])]
        book.facts, book.known = CustomerFacts(**{c: r[c] for c in _FACT_COLUMNS}), True
    named = sorted(set(named))
    cutoff = since - LOOKBACK
    for r in await conn.fetch(
            f"SELECT i.tenant_id, i.customer_id, {', '.join('i.' + c for c in _INVOICE_COLUMNS)}"
            " FROM unnest($1::text[], $2::text[]) AS k(tenant_id, customer_id)"
            " CROSS JOIN LATERAL (SELECT * FROM risk_invoices i WHERE i.tenant_id = k.tenant_id"
            "   AND i.customer_id = k.customer_id AND (i.status = 'open' OR i.issue_date >= $3::date"
            "   OR i.paid_at >= $3)) i"
            " UNION"
            f" SELECT i.tenant_id, i.customer_id, {', '.join('i.' + c for c in _INVOICE_COLUMNS)}"
            " FROM unnest($4::text[], $5::text[]) AS n(tenant_id, invoice_id)"
            " JOIN risk_invoices i USING (tenant_id, invoice_id)",
            tenants, customers, cutoff, [n[0] for n in named], [n[1] for n in named]):
        book = books.get((r["tenant_id"], r["customer_id"]))
        if book is not None:
            book.invoices[r["invoice_id"]] = InvoiceFact(**{c: r[c] for c in _INVOICE_COLUMNS})
    return books


async def save_books(conn: asyncpg.Connection, books: Iterable[CustomerBook]) -> None:
    """Write back what the batch changed: one statement for the invoices, one for the customers."""
    books = list(books)
    rows = [(b, b.invoices[i]) for b in books for i in sorted(b.changed_invoices)]
    if rows:
        await conn.execute(
            "INSERT INTO risk_invoices (tenant_id, customer_id, " + ", ".join(_INVOICE_COLUMNS) + ")"
            " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[],"
            "   $7::date[], $8::date[], $9::timestamptz[], $10::text[], $11::timestamptz[], $12::int[],"
            "   $13::timestamptz[], $14::int[])"
            " ON CONFLICT (tenant_id, invoice_id) DO UPDATE SET "
            + ", ".join(f"{c} = EXCLUDED.{c}" for c in _INVOICE_COLUMNS[1:]),
            [b.tenant_id for b, _ in rows], [b.customer_id for b, _ in rows],
            *([getattr(inv, c) for _, inv in rows] for c in _INVOICE_COLUMNS))
    changed = [b for b in books if b.facts_changed]
    if changed:
        types = {"updated_at": "timestamptz", "last_broken_at": "timestamptz", "language": "text",
                 "terms_days": "int", "parent_id": "text"}
        await conn.execute(
            "INSERT INTO risk_customers (tenant_id, customer_id, " + ", ".join(_FACT_COLUMNS) + ")"
            " SELECT * FROM unnest($1::text[], $2::text[], "
            + ", ".join(f"${i + 3}::{types.get(c, 'int')}[]" for i, c in enumerate(_FACT_COLUMNS)) + ")"
            " ON CONFLICT (tenant_id, customer_id) DO UPDATE SET "
            + ", ".join(f"{c} = EXCLUDED.{c}" for c in _FACT_COLUMNS if c != "parent_id"),
            [b.tenant_id for b in changed], [b.customer_id for b in changed],
            *([getattr(b.facts, c) for b in changed] for c in _FACT_COLUMNS))
    for b in books:
        b.changed_invoices.clear()
        b.known, b.facts_changed = b.known or b.facts_changed, False
