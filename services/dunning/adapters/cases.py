"""SQL of dunning cases: items, their step timers, notices and charges (set-based: every
function takes the keys of a whole batch)."""
from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from datetime import datetime

import asyncpg

from shared.contract import DunningStepExecuted, NotificationRequested
from shared.outbox import envelope_select, iso_time

# When an open item may be dunned again: never while on hold, under an active payment plan or the
# customer is marked "do not chase"; not before an open dispute covering it stops pausing (an
# accepted one: until its credit note arrives), nor before the deadline of an open promise
# covering it, nor before the end of the pay-by day of an open settlement offer (an accepted one:
# until its credit note arrives). NULL: not paused. (Each lookup is by customer; the FILTER keeps the planner from
# answering max(deadline) by walking the deadline index of every tenant's promises.)
PAUSED_UNTIL = """GREATEST(
    CASE WHEN i.hold_reason IS NOT NULL OR dc.do_not_chase_reason IS NOT NULL
           OR EXISTS (SELECT 1 FROM payment_plans pp WHERE pp.tenant_id = i.tenant_id AND pp.customer_id = i.customer_id
                      AND pp.status = 'active' AND i.invoice_id = ANY(pp.invoice_ids))
         THEN 'infinity'::timestamptz END,
    (SELECT max(d.pause_until) FROM disputes d WHERE d.tenant_id = i.tenant_id AND d.customer_id = i.customer_id
       AND (d.status = 'open' OR (d.outcome = 'accepted' AND d.credit_applied_at IS NULL))
       AND (d.invoice_id IS NULL OR d.invoice_id = i.invoice_id)),
    (SELECT max(p.deadline) FILTER (WHERE p.deadline IS NOT NULL) FROM promises p WHERE p.tenant_id = i.tenant_id AND p.customer_id = i.customer_id
       AND p.status = 'open' AND i.invoice_id = ANY(p.invoice_ids)),
    (SELECT max(CASE WHEN o.status = 'open' THEN o.deadline ELSE o.pause_until END) FROM settlement_offers o
      WHERE o.tenant_id = i.tenant_id AND o.customer_id = i.customer_id AND i.invoice_id = ANY(o.invoice_ids)
        AND (o.status = 'open' OR (o.status = 'accepted' AND o.credit_applied_at IS NULL))))"""

# Per open item: its earliest scheduled step, pushed past the item's pause (an item without a
# scheduled step gives NULL, whatever its pause). The step's index answers min(due_at) directly.
# Items are looked up per key, in LATERAL subqueries the planner cannot flatten (an aggregate per
# case; behind OFFSET 0 per invoice): without statistics (a young database, a burst of invoices)
# it otherwise hashed every open item of the database for a batch of a few hundred, or computed
# the per-case minimum again for every case it was joined to.
_ITEM_DUE = f"""CASE WHEN nx.due_at IS NOT NULL THEN GREATEST(nx.due_at, {PAUSED_UNTIL}) END"""
_ITEM_JOINS = """LEFT JOIN dunning_customers dc ON dc.tenant_id = i.tenant_id AND dc.customer_id = i.customer_id
  CROSS JOIN LATERAL (SELECT min(s.due_at) AS due_at FROM item_steps s WHERE s.tenant_id = i.tenant_id
                        AND s.invoice_id = i.invoice_id AND s.round = i.round AND s.status = 'scheduled') nx"""

_REFRESH = f"""
WITH k AS MATERIALIZED (
    SELECT tenant_id, case_id, sum(n) AS n FROM unnest($1::text[], $2::uuid[], $4::int[]) AS k(tenant_id, case_id, n)
    GROUP BY tenant_id, case_id),
state AS MATERIALIZED (
    SELECT k.tenant_id, k.case_id, k.n, a.next_due_at, a.open_items > 0 AS has_open,
           (SELECT c.ctid FROM cases c WHERE c.tenant_id = k.tenant_id AND c.case_id = k.case_id) AS row_id
    FROM k CROSS JOIN LATERAL (
        SELECT min({_ITEM_DUE}) AS next_due_at, count(*) AS open_items
        FROM case_items i {_ITEM_JOINS}
        WHERE i.tenant_id = k.tenant_id AND i.case_id = k.case_id AND i.status = 'open') a)
UPDATE cases c SET next_due_at = state.next_due_at, notices = c.notices + state.n,
  status = CASE WHEN c.status = 'open' AND NOT state.has_open THEN 'closed' ELSE c.status END,
  closed_reason = CASE WHEN c.status = 'open' AND NOT state.has_open
    THEN (SELECT i.closed_reason FROM case_items i WHERE i.tenant_id = c.tenant_id AND i.case_id = c.case_id
          ORDER BY i.closed_at DESC NULLS LAST LIMIT 1) ELSE c.closed_reason END,
  closed_at = CASE WHEN c.status = 'open' AND NOT state.has_open THEN $3 ELSE c.closed_at END
FROM state WHERE c.ctid = state.row_id  -- found by key above: joined on the key, every case was hashed"""

# Items that just joined open cases can only bring a case's timer forward: the other items are
# not read again (a customer with a thousand open invoices costs the same as one with two). They
# are open, being new: no status condition, which would tempt the planner into a partial index
# of open items by tenant.
_ADVANCE = f"""
WITH item AS MATERIALIZED (
    SELECT i.tenant_id, i.case_id, {_ITEM_DUE} AS due
    FROM unnest($1::text[], $2::uuid[]) AS k(tenant_id, invoice_id)
    CROSS JOIN LATERAL (SELECT * FROM case_items i WHERE i.tenant_id = k.tenant_id AND i.invoice_id = k.invoice_id
                        OFFSET 0) i
    {_ITEM_JOINS}),
agg AS (SELECT tenant_id, case_id, min(due) AS due FROM item GROUP BY tenant_id, case_id)
UPDATE cases c SET next_due_at = LEAST(c.next_due_at, agg.due)
FROM agg WHERE c.tenant_id = agg.tenant_id AND c.case_id = agg.case_id AND agg.due IS NOT NULL"""


def _cols(rows: list[tuple]) -> list[list]:
    return [list(col) for col in zip(*rows)]


async def refresh(conn: asyncpg.Connection, keys: Iterable[tuple[str, uuid.UUID]], now: datetime,
                  notices: dict[tuple[str, uuid.UUID], int] | None = None) -> None:
    """After items, steps, holds or disputes changed: the case's timer moves to its next due
    step that is not paused, and a case without open items closes. `notices`: how many notices
    each case just sent (their count numbers the idempotency keys). The caller holds the cases
    locked, as every writer of cases and items does (case before items)."""
    keys = sorted(set(keys))
    if keys:
        counts = notices or {}
        status = await conn.execute(_REFRESH, [k[0] for k in keys], [k[1] for k in keys], now,
                                    [counts.get(k, 0) for k in keys])
        if int(status.split()[-1]) != len(keys):
            # the rows are updated by the ctid read in the same statement: a case changed by
            # another transaction meanwhile would be skipped, and its timer left wrong
            raise RuntimeError(f"{len(keys) - int(status.split()[-1])} case timers not moved: the caller must hold"
                               " the cases locked (lock_cases_of, open_cases, due_cases)")


async def advance(conn: asyncpg.Connection, items: Iterable[tuple[str, uuid.UUID]]) -> None:
    """New items (tenant, invoice) joined their open cases, which the caller holds locked and
    whose timers are up to date: each case's timer moves to the new items' earliest due step if
    that is sooner."""
    items = sorted(set(items))
    if items:
        await conn.execute(_ADVANCE, [k[0] for k in items], [k[1] for k in items])


async def refresh_customer(conn: asyncpg.Connection, tenant_id: str, customer_id: str, now: datetime) -> None:
    """A pause of the customer's invoices changed (a dispute, promise, plan, hold): the timers of
    the customer's open cases move."""
    rows = await conn.fetch(
        "SELECT case_id FROM cases WHERE tenant_id = $1 AND customer_id = $2 AND status = 'open'"
        " ORDER BY case_id FOR UPDATE", tenant_id, customer_id)
    await refresh(conn, [(tenant_id, r["case_id"]) for r in rows], now)


async def lock_cases_of(conn: asyncpg.Connection, invoices: Iterable[tuple[str, uuid.UUID]]) -> dict[tuple[str, uuid.UUID], asyncpg.Record]:
    """The items of these invoices, their cases locked first and in one order (the claim loop
    locks cases too: case before items everywhere, so the two never deadlock)."""
    invoices = sorted(set(invoices))
    if not invoices:
        return {}
    await conn.execute(
        "SELECT 1 FROM cases c WHERE (c.tenant_id, c.case_id) IN (SELECT i.tenant_id, i.case_id FROM case_items i"
        " JOIN unnest($1::text[], $2::uuid[]) AS k(tenant_id, invoice_id) USING (tenant_id, invoice_id))"
        " ORDER BY c.tenant_id, c.case_id FOR UPDATE OF c",
        [k[0] for k in invoices], [k[1] for k in invoices])
    rows = await conn.fetch(
        "SELECT i.* FROM case_items i JOIN unnest($1::text[], $2::uuid[]) AS k(tenant_id, invoice_id)"
        " USING (tenant_id, invoice_id)", [k[0] for k in invoices], [k[1] for k in invoices])
    return {(r["tenant_id"], r["invoice_id"]): r for r in rows}


async def open_cases(conn: asyncpg.Connection, keys: Iterable[tuple[str, str, str]], now: datetime) -> dict[tuple[str, str, str], uuid.UUID]:
    """The open case of each (tenant, customer, currency), opened where there is none."""
    keys = sorted(set(keys))
    if not keys:
        return {}
    cols = [[k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]]
    await conn.execute(
        "INSERT INTO cases (tenant_id, case_id, customer_id, currency, opened_at)"
        " SELECT t, gen_random_uuid(), c, cur, $4 FROM unnest($1::text[], $2::text[], $3::text[]) AS k(t, c, cur)"
        " ON CONFLICT (tenant_id, customer_id, currency) WHERE status = 'open' DO NOTHING", *cols, now)
    rows = await conn.fetch(
        "SELECT c.tenant_id, c.customer_id, c.currency, c.case_id FROM cases c"
        " JOIN unnest($1::text[], $2::text[], $3::text[]) AS k(tenant_id, customer_id, currency)"
        " USING (tenant_id, customer_id, currency) WHERE c.status = 'open'"
        " ORDER BY c.tenant_id, c.case_id FOR UPDATE OF c", *cols)
    return {(r["tenant_id"], r["customer_id"], r["currency"]): r["case_id"] for r in rows}


async def insert_items(conn: asyncpg.Connection, rows: list[tuple]) -> set[tuple[str, uuid.UUID]]:
    """rows: (tenant, invoice, case, customer, number, currency, amount, due_date, policy tenant,
    name, version, joined_at). An invoice already held by a case is left as it is."""
    if not rows:
        return set()
    inserted = await conn.fetch(
        """INSERT INTO case_items (tenant_id, invoice_id, case_id, customer_id, number, currency, amount_minor,
             open_minor, due_date, policy_tenant, policy_name, policy_version, joined_at)
           SELECT t, i, c, cu, n, cur, a, a, d, pt, pn, pv, j
           FROM unnest($1::text[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::text[], $7::bigint[],
                       $8::date[], $9::text[], $10::text[], $11::int[], $12::timestamptz[])
             AS u(t, i, c, cu, n, cur, a, d, pt, pn, pv, j)
           ON CONFLICT DO NOTHING RETURNING tenant_id, invoice_id""", *_cols(rows))
    return {(r["tenant_id"], r["invoice_id"]) for r in inserted}


async def insert_steps(conn: asyncpg.Connection, rows: list[tuple]) -> None:
    """rows: (tenant, invoice, round, step, position, channel, template, offset_days, due_at).
    A step of that name already in the round (sent, skipped) is not planned again."""
    if rows:
        await conn.execute(
            "INSERT INTO item_steps (tenant_id, invoice_id, round, step, position, channel, template, offset_days,"
            " due_at, status) SELECT *, 'scheduled' FROM unnest($1::text[], $2::uuid[], $3::int[], $4::text[],"
            " $5::int[], $6::text[], $7::text[], $8::int[], $9::timestamptz[]) ON CONFLICT DO NOTHING",
            *_cols(rows))


async def cancel_steps(conn: asyncpg.Connection, invoices: list[tuple[str, uuid.UUID]], reason: str,
                       after: datetime | None = None) -> None:
    """Cancel the scheduled steps of these invoices (only those due after `after`, if given)."""
    if invoices:
        await conn.execute(
            "UPDATE item_steps s SET status = 'cancelled', reason = $3 FROM unnest($1::text[], $2::uuid[])"
            " AS k(tenant_id, invoice_id) WHERE s.tenant_id = k.tenant_id AND s.invoice_id = k.invoice_id"
            " AND s.status = 'scheduled' AND ($4::timestamptz IS NULL OR s.due_at > $4)",
            [k[0] for k in invoices], [k[1] for k in invoices], reason, after)


async def reduce_items(conn: asyncpg.Connection, amounts: dict[tuple[str, uuid.UUID], int], reason: str,
                       now: datetime) -> list[asyncpg.Record]:
    """Open amounts go down (never up: a late redelivery of an older payment changes nothing);
    an item at zero is settled (or cancelled) and its remaining steps cancelled."""
    keys = sorted(amounts)
    rows = await conn.fetch(
        "UPDATE case_items i SET open_minor = LEAST(i.open_minor, k.open_minor),"
        " status = CASE WHEN k.open_minor = 0 AND i.status = 'open' THEN $4 ELSE i.status END,"
        " closed_reason = CASE WHEN k.open_minor = 0 AND i.status = 'open' THEN $5 ELSE i.closed_reason END,"
        " closed_at = CASE WHEN k.open_minor = 0 AND i.status = 'open' THEN $6 ELSE i.closed_at END"
        " FROM unnest($1::text[], $2::uuid[], $3::bigint[]) AS k(tenant_id, invoice_id, open_minor)"
        " WHERE i.tenant_id = k.tenant_id AND i.invoice_id = k.invoice_id"
        " RETURNING i.tenant_id, i.invoice_id, i.case_id, i.status",
        [k[0] for k in keys], [k[1] for k in keys], [amounts[k] for k in keys],
        "cancelled" if reason == "cancelled" else "settled", reason, now)
    closed = [(r["tenant_id"], r["invoice_id"]) for r in rows if r["status"] != "open"]
    await cancel_steps(conn, closed, reason)
    return rows


async def due_cases(conn: asyncpg.Connection, now: datetime, limit: int, tenant_id: str | None = None) -> list[asyncpg.Record]:
    """Claim cases whose timer is due (SKIP LOCKED: any number of workers share them)."""
    return await conn.fetch(
        "SELECT tenant_id, case_id, customer_id, currency, notices FROM cases"
        " WHERE status = 'open' AND next_due_at <= $1 AND ($3::text IS NULL OR tenant_id = $3)"
        " ORDER BY next_due_at LIMIT $2 FOR UPDATE SKIP LOCKED",
        now, limit, tenant_id)


async def claimed_items(conn: asyncpg.Connection, cases: list[asyncpg.Record], now: datetime) -> list[asyncpg.Record]:
    """The open items of claimed cases with what the claim needs: pause, timezone, whether in
    dunning this round, charges to date, and what was paid since each fell due (interest)."""
    return await conn.fetch(
        f"""SELECT i.tenant_id, i.invoice_id, i.case_id, i.number, i.currency, i.open_minor, i.due_date, i.round,
                   i.policy_tenant, i.policy_name, i.policy_version, coalesce(dc.timezone, 'UTC') AS timezone,
                   coalesce({PAUSED_UNTIL} > $3, false) AS paused,
                   EXISTS (SELECT 1 FROM item_steps s WHERE s.tenant_id = i.tenant_id AND s.invoice_id = i.invoice_id
                           AND s.round = i.round AND s.status = 'executed') AS in_dunning,
                   coalesce(ch.fees, 0) AS fees_minor, coalesce(ch.interest, 0) AS interest_minor, ch.interest_until,
                   pay.days AS pay_days, pay.amounts AS pay_amounts
            FROM case_items i
            JOIN unnest($1::text[], $2::uuid[]) AS k(tenant_id, case_id) USING (tenant_id, case_id)
            LEFT JOIN dunning_customers dc USING (tenant_id, customer_id)
            LEFT JOIN LATERAL (
                SELECT (sum(amount_minor) FILTER (WHERE kind <> 'interest'))::bigint AS fees,
                       (sum(amount_minor) FILTER (WHERE kind = 'interest'))::bigint AS interest,
                       max(period_end) FILTER (WHERE kind = 'interest') AS interest_until
                FROM charges c WHERE c.tenant_id = i.tenant_id AND c.invoice_id = i.invoice_id) ch ON true
            LEFT JOIN LATERAL (  -- payments (and reversals) since it fell due, by day where the customer is
                SELECT array_agg((p.paid_at AT TIME ZONE coalesce(dc.timezone, 'UTC'))::date) AS days,
                       array_agg(p.amount_minor) AS amounts
                FROM item_payments p WHERE p.tenant_id = i.tenant_id AND p.invoice_id = i.invoice_id
                  AND p.paid_at >= i.due_date) pay ON true
            WHERE i.status = 'open'""",
        [c["tenant_id"] for c in cases], [c["case_id"] for c in cases], now)


async def due_steps(conn: asyncpg.Connection, items: list[asyncpg.Record], now: datetime) -> list[asyncpg.Record]:
    if not items:
        return []
    return await conn.fetch(
        "SELECT s.* FROM item_steps s JOIN unnest($1::text[], $2::uuid[], $3::int[]) AS k(tenant_id, invoice_id, round)"
        " USING (tenant_id, invoice_id, round) WHERE s.status = 'scheduled' AND s.due_at <= $4",
        [i["tenant_id"] for i in items], [i["invoice_id"] for i in items], [i["round"] for i in items], now)


async def mark_steps(conn: asyncpg.Connection, rows: list[tuple], now: datetime) -> None:
    """rows: (tenant, invoice, round, step, status, reason, notice_id). Each row is found by its
    key (LATERAL behind OFFSET 0, then by its ctid in the same statement): joined directly, the
    planner hashed every scheduled step of the database for a batch of a few hundred."""
    if rows:
        await conn.execute(
            "UPDATE item_steps s SET status = m.status, reason = m.reason, notice_id = m.notice_id, executed_at = $8"
            " FROM (SELECT k.*, x.ctid AS row_id FROM unnest($1::text[], $2::uuid[], $3::int[], $4::text[], $5::text[],"
            " $6::text[], $7::uuid[]) AS k(tenant_id, invoice_id, round, step, status, reason, notice_id)"
            " CROSS JOIN LATERAL (SELECT t.ctid FROM item_steps t WHERE t.tenant_id = k.tenant_id"
            " AND t.invoice_id = k.invoice_id AND t.round = k.round AND t.step = k.step AND t.status = 'scheduled'"
            " OFFSET 0) x) m WHERE s.ctid = m.row_id",
            *_cols(rows), now)


async def insert_charges(conn: asyncpg.Connection, rows: list[tuple]) -> set[str]:
    """rows: (tenant, charge_id, kind, case, invoice, customer, currency, amount, start, end,
    detail (a dict), assessed_at). Returns the charge ids that are new: a charge is made once."""
    if not rows:
        return set()
    inserted = await conn.fetch(
        "INSERT INTO charges (tenant_id, charge_id, kind, case_id, invoice_id, customer_id, currency, amount_minor,"
        " period_start, period_end, detail, assessed_at) SELECT t, id, k, c, i, cu, cur, a, ps, pe, d::jsonb, at"
        " FROM unnest($1::text[], $2::text[], $3::text[], $4::uuid[], $5::uuid[], $6::text[], $7::text[],"
        " $8::bigint[], $9::date[], $10::date[], $11::text[], $12::timestamptz[])"
        " AS u(t, id, k, c, i, cu, cur, a, ps, pe, d, at) ON CONFLICT DO NOTHING RETURNING charge_id",
        *_cols([(*r[:10], json.dumps(r[10]), r[11]) for r in rows]))
    return {r["charge_id"] for r in inserted}


async def next_due(pool: asyncpg.Pool, now: datetime) -> datetime | None:
    return await pool.fetchval(
        "SELECT min(next_due_at) FROM cases WHERE status = 'open' AND next_due_at > $1 AND next_due_at < 'infinity'", now)


# The channels the notifier sends; a call or letter step is work for a person (adapters/tasks.py).
NOTIFIER_CHANNELS = ("email", "sms", "webhook")


def _notice_event_sql(payload, data: dict[str, str], where: str = "true") -> str:
    """A SELECT of the outbox rows of `payload` built from the notices just inserted (`ins`)."""
    return (f"SELECT $3, {envelope_select(payload, source='dunning', subject='x.case_id::text', data=data)}"
            f" FROM (SELECT *, gen_random_uuid() AS eid FROM ins WHERE {where} ORDER BY case_id, sequence) AS x")


# $1 tenant, $2 time (ISO text), $3 topic, $4... the notices' columns.
_NOTIFICATION_REQUESTED = _notice_event_sql(NotificationRequested, {
    "customer_id": "x.customer_id", "notification_key": "x.notification_key", "case_id": "x.case_id::text",
    "step": "x.step", "channel": "x.channel", "template": "coalesce(x.template, x.step)", "items": "x.items",
    "requested_at": "$2::text", "balances": "'[]'::json", "offer": "NULL::json",
    # the customer's links ($17: customer -> links, one JSON object: a keyed lookup per notice)
    "links": "coalesce(($17::jsonb -> x.customer_id)::json, '{}'::json)"},
    where="channel IN (" + ", ".join(f"'{c}'" for c in NOTIFIER_CHANNELS) + ")")
_STEP_EXECUTED = _notice_event_sql(DunningStepExecuted, {
    "customer_id": "x.customer_id", "case_id": "x.case_id::text", "invoice_id": "x.lead_invoice::text",
    "step": "x.step", "channel": "x.channel", "executed_at": "$2::text",
    "invoice_ids": "(SELECT json_agg(e->>'invoice_id') FROM jsonb_array_elements(x.items) AS e)",
    "notification_key": "x.notification_key"})
_INSERT_NOTICES = f"""
WITH ins AS (
    INSERT INTO notices (tenant_id, notice_id, case_id, customer_id, sequence, step, channel, template,
                         notification_key, currency, items, total_minor, created_at, lead_invoice)
    SELECT $1, n, c, cu, sq, st, ch, tp, k, cur, i::jsonb, tot, at, li
    FROM unnest($4::uuid[], $5::uuid[], $6::text[], $7::int[], $8::text[], $9::text[], $10::text[], $11::text[],
                $12::text[], $13::text[], $14::bigint[], $15::timestamptz[], $16::uuid[])
      AS u(n, c, cu, sq, st, ch, tp, k, cur, i, tot, at, li)
    RETURNING *)
INSERT INTO outbox (topic, event_id, tenant_id, event_type, key, envelope)
{_NOTIFICATION_REQUESTED}
UNION ALL
{_STEP_EXECUTED}"""


async def insert_notices(conn: asyncpg.Connection, tenant_id: str, rows: list[tuple], topic: str,
                         now: datetime, links: dict[str, dict[str, str]] | None = None) -> None:
    """rows: one tenant's (notice, case, customer, sequence, step, channel, template, key,
    currency, items (a list), total, created_at, lead invoice). In one statement: the notices,
    then each one's NotificationRequested (messages only; all of them first, in case and notice
    order), then its DunningStepExecuted, into the outbox; the envelopes are built by PostgreSQL
    from the rows (no per-notice Python: the claim's hot path). `links`: customer -> the links
    their messages carry (the portal)."""
    if rows:
        await conn.execute(_INSERT_NOTICES, tenant_id, iso_time(now), topic,
                           *_cols([(*r[:9], json.dumps(r[9]), *r[10:]) for r in rows]), links or {})