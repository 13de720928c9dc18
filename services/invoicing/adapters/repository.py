"""SQL for the invoicing store. Every statement is scoped by tenant_id."""
from __future__ import annotations

import asyncpg

from services.invoicing.domain.model import OpenInvoice


# Cash and charges meet under advisory locks on customer buckets, so that neither misses the
# other: an invoice created while a payment decides there is no open invoice, the payment kept as
# credit while the invoice's credit query finds none. Whatever creates charges and then applies
# credit (the invoice ingest, a fee) holds its customers' buckets SHARED from its first statement
# to its end: such transactions never wait for one another. Whatever decides "no open invoice,
# keep it as credit" (a payment, a credit note) holds its customer's bucket EXCLUSIVE, first: it
# waits for the open ingests of that bucket to commit (its next statement sees their invoices),
# and an ingest that comes after waits for it (its credit query sees the credit). A few buckets
# rather than one lock per customer: an ingest of thousands of customers takes a bounded number
# of locks, in one statement, in bucket order (no two of them wait on each other in a cycle).
# Always taken before any row lock; two customers sharing a bucket only serialise more than needed.
CUSTOMER_LOCKS = 7220302  # first key of the two-int advisory locks (a space apart from the one-bigint keys)
CUSTOMER_BUCKETS = 64  # a power of two
_BUCKET = f"hashtext($2 || ':' || {{}}) & {CUSTOMER_BUCKETS - 1}"


async def share_customer_buckets(conn: asyncpg.Connection, tenant_id: str, customer_ids) -> None:
    """Hold the buckets of these customers shared until the transaction ends (charges that apply credit)."""
    await conn.execute(
        f"SELECT pg_advisory_xact_lock_shared($1, b) FROM unnest(ARRAY("
        f"SELECT DISTINCT {_BUCKET.format('c')} FROM unnest($3::text[]) AS c ORDER BY 1)) AS b",
        CUSTOMER_LOCKS, tenant_id, list(customer_ids),
    )


async def lock_customer_bucket(conn: asyncpg.Connection, tenant_id: str, customer_id: str) -> None:
    """Hold this customer's bucket exclusively until the transaction ends (cash that may find nothing open)."""
    await conn.execute(f"SELECT pg_advisory_xact_lock($1, {_BUCKET.format('$3::text')})",
                       CUSTOMER_LOCKS, tenant_id, customer_id)


async def get_customer(conn: asyncpg.Connection, tenant_id: str, customer_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT * FROM customers WHERE tenant_id = $1 AND customer_id = $2", tenant_id, customer_id
    )


async def source_rights(conn: asyncpg.Connection | asyncpg.Pool, tenant_id: str, source: str) -> asyncpg.Record | None:
    """The registered source's default currency and what it may record, or None."""
    return await conn.fetchrow(
        "SELECT default_currency, records_invoices, records_payments FROM billing_sources"
        " WHERE tenant_id = $1 AND name = $2", tenant_id, source)


async def get_invoice_by_external(conn: asyncpg.Connection, tenant_id: str, source: str, external_id: str):
    return await conn.fetchrow(
        "SELECT * FROM invoices WHERE tenant_id = $1 AND billing_source = $2 AND external_id = $3",
        tenant_id, source, external_id,
    )


async def get_invoice(conn: asyncpg.Connection | asyncpg.Pool, tenant_id: str, invoice_id) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM invoices WHERE tenant_id = $1 AND invoice_id = $2", tenant_id, invoice_id)


async def lock_open_invoices(conn: asyncpg.Connection, tenant_id: str, customer_id: str) -> list[OpenInvoice]:
    rows = await conn.fetch(
        "SELECT invoice_id, number, external_id, currency, open_minor, issue_date, due_date FROM invoices"
        " WHERE tenant_id = $1 AND customer_id = $2 AND status = 'open' ORDER BY due_date FOR UPDATE",
        tenant_id, customer_id,
    )
    return [
        OpenInvoice(str(r["invoice_id"]), r["number"], r["external_id"], r["currency"], r["open_minor"],
                    r["issue_date"], r["due_date"])
        for r in rows
    ]


async def rearm_overdue_timers(conn: asyncpg.Connection, tenant_id: str, invoice_ids: list) -> None:
    """Invoices open again after they were settled (a payment reversed, an adjustment upwards):
    their overdue timers are armed again. One whose moment has passed fires at the next tick
    (InvoiceOverdue, overdue since that moment), once per re-opening; one not yet due just waits.
    Every one of these timers is updated, fired or not, so that a tick that claimed it at the
    same moment (and saw the invoice still paid) is waited for and its firing undone, not lost."""
    if invoice_ids:
        await conn.execute(
            "UPDATE overdue_timers SET fired_at = NULL WHERE tenant_id = $1 AND invoice_id = ANY($2::uuid[])",
            tenant_id, invoice_ids,
        )


async def lock_receipt_key(conn: asyncpg.Connection, tenant_id: str, source: str, kind: str, external_id: str) -> None:
    """Serialise the transactions recording one (tenant, source, kind, external id) until they end:
    a lookup FOR UPDATE cannot lock a payment or credit note that does not exist yet, so two
    requests with the same id would both insert it. A transaction-scoped advisory lock on a 64-bit
    hash of the key (a collision only makes two receipts wait for each other)."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                       "\x1f".join((tenant_id, source, kind, external_id)))


async def get_payment_by_external(conn: asyncpg.Connection, tenant_id: str, source: str, external_id: str,
                                  lock: bool = False):
    return await conn.fetchrow(
        "SELECT * FROM payments WHERE tenant_id = $1 AND billing_source = $2 AND kind = 'payment' AND external_id = $3"
        + (" FOR UPDATE" if lock else ""),
        tenant_id, source, external_id,
    )


async def allocations_of(conn: asyncpg.Connection | asyncpg.Pool, tenant_id: str, payment_id) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT invoice_id, amount_minor FROM allocations WHERE tenant_id = $1 AND payment_id = $2 ORDER BY invoice_id",
        tenant_id, payment_id,
    )


async def book_ledger(conn: asyncpg.Connection, tenant_id: str, entries: list[tuple], now) -> None:
    """Ledger entries: (customer, currency, kind, ref, signed amount, booked on, description)."""
    entries = [e for e in entries if e[4] != 0]
    if entries:
        await conn.execute(
            "INSERT INTO ledger_entries (tenant_id, customer_id, currency, kind, ref_id, amount_minor, booked_on,"
            " recorded_at, description)"
            " SELECT $1, c, cur, k, r, a, b, $2, d FROM unnest($3::text[], $4::text[], $5::text[], $6::text[],"
            " $7::bigint[], $8::date[], $9::text[]) AS t(c, cur, k, r, a, b, d)",
            tenant_id, now, *(list(col) for col in zip(*entries)),
        )
