"""The risk store's facts: each invoice as invoicing's events describe it (risk_invoices) and the
counts of what else a customer did (risk_customers), written set-based per batch. Every write is
keyed and moves a row to the state an event describes, so a replay gives the same rows."""
from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg

from shared.processing import Event


def _allocations(events: Sequence[Event], field: str = "allocations") -> list[tuple[str, str, int, datetime]]:
    """(tenant, invoice, open after, event time) of every allocation, in order."""
    return [(e.envelope.tenant_id, a.invoice_id, a.invoice_open_minor, e.envelope.time)
            for e in events for a in getattr(e.payload, field)]


async def invoices_issued(conn: asyncpg.Connection, events: Sequence[Event]) -> None:
    ps = [e.payload for e in events]
    await conn.execute(
        "INSERT INTO risk_invoices (tenant_id, invoice_id, customer_id, currency, amount_minor, open_minor, issue_date,"
        " due_date, status, updated_at)"
        " SELECT t, i, c, cur, a, a, iss, due, 'open', at FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],"
        "   $5::bigint[], $6::date[], $7::date[], $8::timestamptz[]) AS u(t, i, c, cur, a, iss, due, at)"
        " ON CONFLICT (tenant_id, invoice_id) DO NOTHING",
        [e.envelope.tenant_id for e in events], [p.invoice_id for p in ps], [p.customer_id for p in ps],
        [p.currency for p in ps], [p.amount_minor for p in ps], [p.issue_date for p in ps], [p.due_date for p in ps],
        [e.envelope.time for e in events])


async def invoices_adjusted(conn: asyncpg.Connection, events: Sequence[Event]) -> None:
    last = {(e.envelope.tenant_id, e.payload.invoice_id): e for e in events}  # the latest adjustment wins
    es = list(last.values())
    ps = [e.payload for e in es]
    await conn.execute(
        "UPDATE risk_invoices r SET amount_minor = u.a, open_minor = u.o, issue_date = u.iss, due_date = u.due,"
        " status = CASE WHEN r.status = 'cancelled' THEN 'cancelled' WHEN u.o > 0 THEN 'open' ELSE r.status END,"
        " updated_at = u.at"
        " FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::date[], $6::date[], $7::timestamptz[])"
        "   AS u(t, i, a, o, iss, due, at)"
        " WHERE r.tenant_id = u.t AND r.invoice_id = u.i",
        [e.envelope.tenant_id for e in es], [p.invoice_id for p in ps], [p.amount_minor for p in ps],
        [p.open_amount_minor for p in ps], [p.issue_date for p in ps], [p.due_date for p in ps],
        [e.envelope.time for e in es])


async def invoices_cancelled(conn: asyncpg.Connection, events: Sequence[Event]) -> None:
    await conn.execute(
        "UPDATE risk_invoices r SET status = 'cancelled', open_minor = 0, updated_at = u.at"
        " FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS u(t, i, at)"
        " WHERE r.tenant_id = u.t AND r.invoice_id = u.i",
        [e.envelope.tenant_id for e in events], [e.payload.invoice_id for e in events],
        [e.envelope.time for e in events])


async def set_open_amounts(conn: asyncpg.Connection, rows: Sequence[tuple[str, str, int, datetime]],
                           reopen: bool = False) -> None:
    """What each invoice still owes after an allocation (the last one per invoice wins); a
    reversal re-opens a settled invoice."""
    last = {(t, i): (o, at) for t, i, o, at in rows}
    if not last:
        return
    keys = list(last)
    await conn.execute(
        "UPDATE risk_invoices r SET open_minor = u.o, updated_at = u.at"
        + (", status = CASE WHEN u.o > 0 AND r.status = 'paid' THEN 'open' ELSE r.status END,"
           " paid_at = CASE WHEN u.o > 0 THEN NULL ELSE r.paid_at END,"
           " days_late = CASE WHEN u.o > 0 THEN NULL ELSE r.days_late END, reopened = r.reopened + 1" if reopen else "")
        + " FROM unnest($1::text[], $2::text[], $3::bigint[], $4::timestamptz[]) AS u(t, i, o, at)"
        " WHERE r.tenant_id = u.t AND r.invoice_id = u.i AND r.status <> 'cancelled'",
        [k[0] for k in keys], [k[1] for k in keys], [last[k][0] for k in keys], [last[k][1] for k in keys])


async def allocations_applied(conn: asyncpg.Connection, events: Sequence[Event]) -> None:
    """PaymentReceived, CreditNoteIssued, CreditApplied: what each invoice still owes."""
    await set_open_amounts(conn, _allocations(events))


async def payments_reversed(conn: asyncpg.Connection, events: Sequence[Event]) -> None:
    await set_open_amounts(conn, _allocations(events, "reopened"), reopen=True)
    await count(conn, events, "payments_reversed")


async def invoices_paid(conn: asyncpg.Connection, events: Sequence[Event]) -> None:
    ps = [e.payload for e in events]
    await conn.execute(
        "UPDATE risk_invoices r SET status = 'paid', open_minor = 0, paid_at = u.p, days_late = u.d, updated_at = u.at"
        " FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::int[], $5::timestamptz[]) AS u(t, i, p, d, at)"
        " WHERE r.tenant_id = u.t AND r.invoice_id = u.i AND r.status <> 'cancelled'",
        [e.envelope.tenant_id for e in events], [p.invoice_id for p in ps], [p.paid_at for p in ps],
        [p.days_late for p in ps], [e.envelope.time for e in events])


async def invoices_overdue(conn: asyncpg.Connection, events: Sequence[Event]) -> None:
    ps = [e.payload for e in events]
    await conn.execute(
        "UPDATE risk_invoices r SET overdue_at = coalesce(r.overdue_at, u.o), open_minor = u.open, updated_at = u.at"
        " FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::bigint[], $5::timestamptz[]) AS u(t, i, o, open, at)"
        " WHERE r.tenant_id = u.t AND r.invoice_id = u.i AND r.status = 'open'",
        [e.envelope.tenant_id for e in events], [p.invoice_id for p in ps], [p.overdue_since for p in ps],
        [p.open_amount_minor for p in ps], [e.envelope.time for e in events])


COUNTERS = ("promises_kept", "promises_broken", "plans_broken", "disputes_opened", "disputes_rejected",
            "payments_reversed", "contacts_bounced", "contacts_opted_out")
_BROKEN = {"promises_broken", "plans_broken"}


async def count(conn: asyncpg.Connection, events: Sequence[Event], counter: str) -> None:
    """Add one to `counter` of each event's customer (events of one customer add up)."""
    if counter not in COUNTERS:
        raise ValueError(f"unknown counter {counter}")
    added: dict[tuple[str, str], tuple[int, datetime]] = {}
    for e in events:
        key = (e.envelope.tenant_id, e.payload.customer_id)
        n, _ = added.get(key, (0, e.envelope.time))
        added[key] = (n + 1, e.envelope.time)
    keys = sorted(added)
    broken = "u.at" if counter in _BROKEN else "NULL"
    await conn.execute(
        f"INSERT INTO risk_customers AS r (tenant_id, customer_id, {counter}, last_broken_at, updated_at)"
        f" SELECT t, c, n, {broken}, at FROM unnest($1::text[], $2::text[], $3::int[], $4::timestamptz[])"
        f"   AS u(t, c, n, at)"
        f" ON CONFLICT (tenant_id, customer_id) DO UPDATE SET {counter} = r.{counter} + EXCLUDED.{counter},"
        f" last_broken_at = coalesce(EXCLUDED.last_broken_at, r.last_broken_at), updated_at = EXCLUDED.updated_at",
        [k[0] for k in keys], [k[1] for k in keys], [added[k][0] for k in keys], [added[k][1] for k in keys])
