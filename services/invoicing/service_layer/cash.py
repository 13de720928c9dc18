"""Cash application steps shared by the use cases (recording a payment, issuing an invoice to a
customer with credit, reversing a payment). Each runs inside the caller's transaction and
returns the events to put in the outbox."""
from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg

from services.invoicing.adapters import repository as repo
from services.invoicing.domain.model import CashApplication, OpenInvoice, allocate_payment
from shared.contract import CreditApplied, Envelope, InvoicePaid, PaymentReversed, new_envelope
from shared.contract.events import Allocation

SOURCE = "invoicing"


def _envelope(payload, tenant_id: str, subject: str, now: datetime) -> Envelope:
    return new_envelope(payload, source=SOURCE, tenant_id=tenant_id, subject=subject, time=now)


async def settle(conn: asyncpg.Connection, tenant_id: str, customer_id: str, payment_id: uuid.UUID,
                 application: CashApplication, open_invoices: list[OpenInvoice], paid_at: datetime,
                 now: datetime) -> list[Envelope]:
    """Record the allocations of `application`, lower the invoices' open amounts, and announce
    each invoice it settles (InvoicePaid)."""
    if not application.allocations:
        return []
    await conn.execute(
        """INSERT INTO allocations (tenant_id, payment_id, invoice_id, amount_minor, allocated_at)
           SELECT $1, $2, i, a, $3 FROM unnest($4::uuid[], $5::bigint[]) AS t(i, a)
           ON CONFLICT (tenant_id, payment_id, invoice_id)
           DO UPDATE SET amount_minor = allocations.amount_minor + EXCLUDED.amount_minor""",
        tenant_id, payment_id, now,
        [uuid.UUID(a.invoice_id) for a in application.allocations], [a.amount_minor for a in application.allocations],
    )
    await conn.execute(
        """UPDATE invoices SET open_minor = t.o,
             status = CASE WHEN t.o = 0 THEN 'paid' ELSE status END,
             paid_at = CASE WHEN t.o = 0 THEN $2 ELSE paid_at END
           FROM unnest($3::uuid[], $4::bigint[]) AS t(i, o)
           WHERE invoices.tenant_id = $1 AND invoices.invoice_id = t.i""",
        tenant_id, paid_at,
        [uuid.UUID(a.invoice_id) for a in application.allocations], [a.invoice_open_minor for a in application.allocations],
    )
    settled = application.settled
    if not settled:
        return []
    by_id = {i.invoice_id: i for i in open_invoices}
    amounts = {  # fees (kind 'fee') are settled quietly: InvoicePaid is about invoices
        str(r["invoice_id"]): r["amount_minor"] for r in await conn.fetch(
            "SELECT invoice_id, amount_minor FROM invoices WHERE tenant_id = $1 AND invoice_id = ANY($2::uuid[])"
            " AND kind = 'invoice'",
            tenant_id, [uuid.UUID(i) for i in settled])
    }
    return [
        _envelope(InvoicePaid(customer_id=customer_id, invoice_id=i, currency=by_id[i].currency, amount_minor=amounts[i],
                              due_date=by_id[i].due_date, paid_at=paid_at,
                              days_late=(paid_at.date() - by_id[i].due_date).days), tenant_id, i, now)
        for i in settled if i in amounts
    ]


async def apply_credit(conn: asyncpg.Connection, tenant_id: str, customer_id: str, currency: str,
                       now: datetime) -> list[Envelope]:
    """Unapplied credit on the customer's account (over-payments, oldest first) pays the open
    invoices in that currency, oldest first."""
    credits = await conn.fetch(
        "SELECT payment_id, unapplied_minor FROM payments WHERE tenant_id = $1 AND customer_id = $2 AND currency = $3"
        " AND unapplied_minor > 0 AND status = 'received' ORDER BY received_at, payment_id FOR UPDATE",
        tenant_id, customer_id, currency,
    )
    if not credits:
        return []
    open_invoices = [i for i in await repo.lock_open_invoices(conn, tenant_id, customer_id) if i.currency == currency]
    events: list[Envelope] = []
    for credit in credits:
        if not open_invoices:
            break
        application = allocate_payment(open_invoices, credit["unapplied_minor"], currency)
        events += await settle(conn, tenant_id, customer_id, credit["payment_id"], application, open_invoices, now, now)
        await conn.execute(
            "UPDATE payments SET unapplied_minor = $3,"
            " unapplied_reason = CASE WHEN $3::bigint = 0 THEN NULL ELSE unapplied_reason END"
            " WHERE tenant_id = $1 AND payment_id = $2",
            tenant_id, credit["payment_id"], application.unapplied_minor,
        )
        events.append(_envelope(CreditApplied(
            customer_id=customer_id, payment_id=str(credit["payment_id"]), currency=currency,
            allocations=[Allocation(**vars(a)) for a in application.allocations],
            unapplied_minor=application.unapplied_minor, applied_at=now), tenant_id, str(credit["payment_id"]), now))
        left = {a.invoice_id: a.invoice_open_minor for a in application.allocations}
        open_invoices = [
            OpenInvoice(i.invoice_id, i.number, i.external_id, i.currency, left.get(i.invoice_id, i.open_minor),
                        i.issue_date, i.due_date)
            for i in open_invoices if left.get(i.invoice_id, i.open_minor) > 0
        ]
    return events


async def reverse_payment(conn: asyncpg.Connection, tenant_id: str, payment: asyncpg.Record, reason: str | None,
                          now: datetime) -> list[Envelope]:
    """A bounced payment: everything it paid is owed again (the invoices it settled are open and
    their overdue timers armed again); the reversal is booked on the ledger."""
    reopened = await conn.fetch(  # an invoice open now for just what was undone was settled before
        """WITH undone AS (
               UPDATE allocations SET reversed_at = $3
               WHERE tenant_id = $1 AND payment_id = $2 AND reversed_at IS NULL
               RETURNING invoice_id, amount_minor)
           UPDATE invoices i SET open_minor = i.open_minor + undone.amount_minor, status = 'open', paid_at = NULL
           FROM undone WHERE i.tenant_id = $1 AND i.invoice_id = undone.invoice_id
           RETURNING i.invoice_id, undone.amount_minor, i.open_minor,
                     i.open_minor = undone.amount_minor AS was_settled""",
        tenant_id, payment["payment_id"], now,
    )
    await repo.rearm_overdue_timers(conn, tenant_id, [r["invoice_id"] for r in reopened if r["was_settled"]])
    await conn.execute(
        "UPDATE payments SET status = 'reversed', reversed_at = $3, reversal_reason = $4, unapplied_minor = 0"
        " WHERE tenant_id = $1 AND payment_id = $2",
        tenant_id, payment["payment_id"], now, reason,
    )
    await repo.book_ledger(conn, tenant_id, [
        (payment["customer_id"], payment["currency"], "payment_reversal", str(payment["payment_id"]),
         payment["amount_minor"], now.date(), f"reversal of payment {payment['external_id']}")], now)
    return [_envelope(PaymentReversed(
        customer_id=payment["customer_id"], payment_id=str(payment["payment_id"]),
        billing_source=payment["billing_source"], external_id=payment["external_id"], currency=payment["currency"],
        amount_minor=payment["amount_minor"],
        reopened=[Allocation(invoice_id=str(r["invoice_id"]), amount_minor=r["amount_minor"],
                             invoice_open_minor=r["open_minor"]) for r in reopened],
        reason=reason, reversed_at=now), tenant_id, str(payment["payment_id"]), now)]
