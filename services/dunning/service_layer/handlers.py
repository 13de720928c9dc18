"""Dunning use cases: event handlers (run inside the consumer's inbox transaction) and the
step timer that turns due steps into NotificationRequested."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import asyncpg

from services.dunning.domain.policy import (
    notification_key, policy_for, policy_named, schedule_case, step_due_at,
)
from shared.clock import Clock
from shared.contract import (
    BalanceConfirmationRequested, BalanceContested, DisputeOpened, DisputeResolved, DunningStepExecuted, Envelope, InvoiceAdjusted,
    InvoiceIssued, NotificationRequested, PaymentReversed, Topics, new_envelope,
)
from shared.contract.events import NoticeItem
from shared.http import DomainError
from shared.outbox import add_events
from shared.processing import Event, Handler, each

SOURCE = "dunning"


# $1 tenants, $2 case ids, $3 open amounts, $4 reason, $5 time: lower the open amounts; a case
# whose invoice is settled closes (the first reason stays).
_REDUCE = """
UPDATE cases c SET open_minor = LEAST(c.open_minor, t.open_minor),
  status = CASE WHEN t.open_minor = 0 THEN 'closed' ELSE c.status END,
  closed_reason = CASE WHEN t.open_minor = 0 AND c.status = 'open' THEN $4 ELSE c.closed_reason END,
  closed_at = CASE WHEN t.open_minor = 0 AND c.status = 'open' THEN $5 ELSE c.closed_at END
FROM unnest($1::text[], $2::uuid[], $3::bigint[]) AS t(tenant_id, case_id, open_minor)
WHERE c.tenant_id = t.tenant_id AND c.case_id = t.case_id
RETURNING c.tenant_id, c.case_id, c.status = 'closed' AS closed"""


def _last_per(events: list[Event], key) -> dict:
    """The last event per key, keys sorted (rows are then locked in one order by every transaction)."""
    latest = {key(e): e for e in events}
    return {k: latest[k] for k in sorted(latest)}


class Dunning:
    def __init__(self, pool: asyncpg.Pool, clock: Clock, topics: Topics, dispute_pause_days: int = 30) -> None:
        self.pool, self.clock, self.topics = pool, clock, topics
        self.dispute_pause = timedelta(days=dispute_pause_days)

    def handlers(self) -> dict[str, Handler]:
        """Set-based handlers for what arrives in volume; one at a time for the rare kinds."""
        return {
            "CustomerUpserted": self.on_customers_upserted,
            "RiskAssessed": self.on_risk_assessed,
            "InvoiceIssued": self.on_invoices_issued,
            "PaymentReceived": self.on_allocations,
            "CreditApplied": self.on_allocations,
            "CreditNoteIssued": self.on_allocations,
            "InvoicePaid": self.on_invoices_paid,
            "InvoiceCancelled": self.on_invoices_cancelled,
            "InvoiceOverdue": self.on_invoices_overdue,
            "InvoiceAdjusted": each(self.on_invoice_adjusted),
            "PaymentReversed": each(self.on_payment_reversed),
            "BalanceConfirmationRequested": each(self.on_balance_confirmation_requested),
            "BalanceContested": each(self.on_balance_contested),
        }

    async def on_customers_upserted(self, conn: asyncpg.Connection, events: list[Event]) -> None:
        latest = _last_per(events, lambda e: (e.envelope.tenant_id, e.payload.customer_id))
        await conn.execute(
            "INSERT INTO dunning_customers (tenant_id, customer_id, timezone)"
            " SELECT * FROM unnest($1::text[], $2::text[], $3::text[])"
            " ON CONFLICT (tenant_id, customer_id) DO UPDATE SET timezone = EXCLUDED.timezone, updated_at = now()",
            [k[0] for k in latest], [k[1] for k in latest], [e.payload.timezone for e in latest.values()],
        )

    async def on_risk_assessed(self, conn: asyncpg.Connection, events: list[Event]) -> None:
        latest = _last_per(events, lambda e: (e.envelope.tenant_id, e.payload.customer_id))
        await conn.execute(
            "INSERT INTO dunning_customers (tenant_id, customer_id, risk_segment, risk_score)"
            " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int[])"
            " ON CONFLICT (tenant_id, customer_id) DO UPDATE SET risk_segment = EXCLUDED.risk_segment,"
            " risk_score = EXCLUDED.risk_score, updated_at = now()",
            [k[0] for k in latest], [k[1] for k in latest], [e.payload.segment for e in latest.values()],
            [e.payload.score for e in latest.values()],
        )

    async def _customers(self, conn: asyncpg.Connection, keys: set[tuple[str, str]]) -> dict[tuple[str, str], asyncpg.Record]:
        rows = await conn.fetch(
            "SELECT c.tenant_id, c.customer_id, c.timezone, c.risk_segment FROM unnest($1::text[], $2::text[])"
            " AS k(tenant_id, customer_id) JOIN dunning_customers c USING (tenant_id, customer_id)",
            [k[0] for k in keys], [k[1] for k in keys],
        )
        return {(r["tenant_id"], r["customer_id"]): r for r in rows}

    async def on_invoices_issued(self, conn: asyncpg.Connection, events: list[Event]) -> None:
        """One case per invoice, its steps scheduled from the customer's policy and timezone."""
        now = self.clock.now()
        customers = await self._customers(conn, {(e.envelope.tenant_id, e.payload.customer_id) for e in events})
        first = {(e.envelope.tenant_id, e.payload.invoice_id): e for e in reversed(events)}  # ON CONFLICT keeps the first
        cases, steps = [], []
        for (tenant_id, invoice_id), e in sorted(first.items()):
            p: InvoiceIssued = e.payload
            customer = customers.get((tenant_id, p.customer_id))
            policy = policy_for(customer["risk_segment"] if customer else None)
            cases.append((tenant_id, uuid.UUID(invoice_id), p.customer_id, p.number, p.currency, p.amount_minor,
                          p.due_date, policy.name))
            timezone = customer["timezone"] if customer else "UTC"
            steps += [(tenant_id, invoice_id, s.name, s.channel, s.template, s.offset_days, s.due_at, s.status)
                      for s in schedule_case(policy, p.due_date, timezone, now)]
        opened = await conn.fetch(
            """INSERT INTO cases (tenant_id, case_id, customer_id, invoice_id, number, currency, amount_minor,
                 open_minor, due_date, policy, opened_at)
               SELECT t, i, c, i, n, cur, a, a, d, pol, $9
               FROM unnest($1::text[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::date[],
                           $8::text[]) AS u(t, i, c, n, cur, a, d, pol)
               ON CONFLICT DO NOTHING RETURNING tenant_id, case_id""",
            *(list(col) for col in zip(*cases)), now,
        )
        new = {(r["tenant_id"], str(r["case_id"])) for r in opened}
        steps = [s for s in steps if (s[0], s[1]) in new]
        if steps:
            await conn.execute(
                "INSERT INTO case_steps (tenant_id, case_id, step, channel, template, offset_days, due_at, status)"
                " SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::int[],"
                " $7::timestamptz[], $8::text[])",
                *(list(col) for col in zip(*steps)),
            )

    async def _reduce(self, conn: asyncpg.Connection, amounts: dict[tuple[str, str], int], reason: str) -> None:
        """Payment stops dunning for what it covers: open amounts go down, and a settled invoice's
        case closes with its remaining steps cancelled. `amounts`: (tenant, invoice) -> open amount."""
        if not amounts:
            return
        keys = sorted(amounts)
        rows = await conn.fetch(_REDUCE, [k[0] for k in keys], [uuid.UUID(k[1]) for k in keys],
                                [amounts[k] for k in keys], reason, self.clock.now())
        closed = [(r["tenant_id"], r["case_id"]) for r in rows if r["closed"]]
        if closed:
            await conn.execute(
                "UPDATE case_steps s SET status = 'cancelled' FROM unnest($1::text[], $2::uuid[]) AS k(tenant_id, case_id)"
                " WHERE s.tenant_id = k.tenant_id AND s.case_id = k.case_id AND s.status = 'scheduled'",
                [c[0] for c in closed], [c[1] for c in closed],
            )

    @staticmethod
    def _lowest(pairs) -> dict[tuple[str, str], int]:
        """Open amounts only go down within a batch of payments: the lowest one is where they end."""
        lowest: dict[tuple[str, str], int] = {}
        for key, amount in pairs:
            lowest[key] = min(amount, lowest.get(key, amount))
        return lowest

    async def on_allocations(self, conn: asyncpg.Connection, events: list[Event]) -> None:
        """PaymentReceived, CreditApplied, CreditNoteIssued: what each allocation leaves open."""
        await self._reduce(conn, self._lowest(
            ((e.envelope.tenant_id, a.invoice_id), a.invoice_open_minor) for e in events for a in e.payload.allocations),
            "paid")

    async def on_invoices_paid(self, conn: asyncpg.Connection, events: list[Event]) -> None:
        await self._reduce(conn, {(e.envelope.tenant_id, e.payload.invoice_id): 0 for e in events}, "paid")

    async def on_invoices_cancelled(self, conn: asyncpg.Connection, events: list[Event]) -> None:
        await self._reduce(conn, {(e.envelope.tenant_id, e.payload.invoice_id): 0 for e in events}, "cancelled")

    async def on_invoices_overdue(self, conn: asyncpg.Connection, events: list[Event]) -> None:
        first = {(e.envelope.tenant_id, e.payload.invoice_id): e.payload.overdue_since for e in reversed(events)}
        keys = sorted(first)
        await conn.execute(
            "UPDATE cases c SET overdue_since = k.since FROM unnest($1::text[], $2::uuid[], $3::timestamptz[])"
            " AS k(tenant_id, case_id, since) WHERE c.tenant_id = k.tenant_id AND c.case_id = k.case_id"
            " AND c.overdue_since IS NULL",
            [k[0] for k in keys], [uuid.UUID(k[1]) for k in keys], [first[k] for k in keys],
        )

    async def _reopen(self, conn: asyncpg.Connection, tenant_id: str, case_id: uuid.UUID, open_minor: int) -> None:
        """The invoice is owed again. An open case just takes the new amount; a closed one opens
        in a new round, scheduled from now: its future steps, and the latest past one at once (the
        customer hears that they owe again, even when every step of the last round had passed)."""
        case = await conn.fetchrow(
            "UPDATE cases c SET open_minor = $3, status = 'open', closed_reason = NULL, closed_at = NULL,"
            " round = c.round + CASE WHEN old.status = 'closed' THEN 1 ELSE 0 END"
            " FROM (SELECT status FROM cases WHERE tenant_id = $1 AND case_id = $2 FOR UPDATE) AS old"
            " WHERE c.tenant_id = $1 AND c.case_id = $2 RETURNING c.customer_id, c.due_date, c.policy, c.round,"
            " old.status AS was",
            tenant_id, case_id, open_minor,
        )
        if case is None or case["was"] == "open":
            return
        timezone = await conn.fetchval(
            "SELECT timezone FROM dunning_customers WHERE tenant_id = $1 AND customer_id = $2",
            tenant_id, case["customer_id"]) or "UTC"
        steps = schedule_case(policy_named(case["policy"]), case["due_date"], timezone, self.clock.now())
        await conn.executemany(
            "INSERT INTO case_steps (tenant_id, case_id, round, step, channel, template, offset_days, due_at, status)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            [(tenant_id, case_id, case["round"], s.name, s.channel, s.template, s.offset_days, s.due_at, s.status)
             for s in steps],
        )

    async def on_payment_reversed(self, conn: asyncpg.Connection, env: Envelope, p: PaymentReversed) -> None:
        """A bounced payment: the invoices it paid are dunned again."""
        for a in p.reopened:
            await self._reopen(conn, env.tenant_id, uuid.UUID(a.invoice_id), a.invoice_open_minor)

    async def on_invoice_adjusted(self, conn: asyncpg.Connection, env: Envelope, p: InvoiceAdjusted) -> None:
        """New amounts count from now on; a moved due date moves the steps not yet taken; an
        invoice adjusted up after it was settled is dunned again."""
        case_id = uuid.UUID(p.invoice_id)
        row = await conn.fetchrow(
            "UPDATE cases SET number = $3, amount_minor = $4, due_date = $5 WHERE tenant_id = $1 AND case_id = $2"
            " RETURNING customer_id, policy",
            env.tenant_id, case_id, p.number, p.amount_minor, p.due_date,
        )
        if row is None:
            return
        if p.open_amount_minor > 0:
            await self._reopen(conn, env.tenant_id, case_id, p.open_amount_minor)
        else:
            await self._reduce(conn, {(env.tenant_id, p.invoice_id): 0}, "paid")
        if "due_date" in p.changes:
            timezone = await conn.fetchval(
                "SELECT timezone FROM dunning_customers WHERE tenant_id = $1 AND customer_id = $2",
                env.tenant_id, row["customer_id"],
            ) or "UTC"
            steps = await conn.fetch(
                "SELECT round, step, channel, offset_days FROM case_steps WHERE tenant_id = $1 AND case_id = $2"
                " AND status = 'scheduled'", env.tenant_id, case_id,
            )
            await conn.executemany(
                "UPDATE case_steps SET due_at = $6 WHERE tenant_id = $1 AND case_id = $2 AND round = $3 AND step = $4"
                " AND channel = $5",
                [(env.tenant_id, case_id, r["round"], r["step"], r["channel"],
                  step_due_at(p.due_date, r["offset_days"], timezone, policy_named(row["policy"]).send_hour_local))
                 for r in steps],
            )

    async def on_balance_confirmation_requested(self, conn: asyncpg.Connection, env: Envelope,
                                                p: BalanceConfirmationRequested) -> None:
        """Dunning owns what is said to the customer: the statement goes out as a notification."""
        now = self.clock.now()
        request = NotificationRequested(
            customer_id=p.customer_id, notification_key=notification_key(p.confirmation_id, "balance_confirmation", "email"),
            case_id=p.confirmation_id, step="balance_confirmation", channel="email", template="balance_confirmation",
            items=p.items, requested_at=now, links={"confirm": p.confirm_url, "contest": p.contest_url},
            balances=p.balances,
        )
        await add_events(conn, self.topics.dunning, [new_envelope(
            request, source=SOURCE, tenant_id=env.tenant_id, subject=p.confirmation_id, time=now, caused_by=env)])

    async def on_balance_contested(self, conn: asyncpg.Connection, env: Envelope, p: BalanceContested) -> None:
        """A contested balance opens an account-level dispute: no reminders until it is resolved."""
        now = self.clock.now()
        dispute_id = uuid.uuid5(uuid.UUID(p.confirmation_id), "dispute")
        opened = await conn.fetchval(
            "INSERT INTO disputes (tenant_id, dispute_id, customer_id, origin, reason, opened_at, pause_until)"
            " VALUES ($1, $2, $3, 'balance_confirmation', $4, $5, $6) ON CONFLICT DO NOTHING RETURNING 1",
            env.tenant_id, dispute_id, p.customer_id, p.reason, now, now + self.dispute_pause,
        )
        if opened:
            event = DisputeOpened(customer_id=p.customer_id, dispute_id=str(dispute_id), origin="balance_confirmation",
                                  reason=p.reason, opened_at=now)
            await add_events(conn, self.topics.dunning, [new_envelope(
                event, source=SOURCE, tenant_id=env.tenant_id, subject=str(dispute_id), time=now, caused_by=env)])

    async def resolve_dispute(self, tenant_id: str, dispute_id: uuid.UUID, resolution: str, by: str) -> asyncpg.Record:
        """A collector closes a dispute: dunning of what it paused goes on at the next step."""
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT * FROM disputes WHERE tenant_id = $1 AND dispute_id = $2 FOR UPDATE", tenant_id, dispute_id)
            if row is None:
                raise DomainError("dispute_id", f"no dispute {dispute_id} in this tenant", 404)
            if row["status"] != "open":
                raise DomainError("dispute_id", f"the dispute was already {row['status']}", 409)
            row = await conn.fetchrow(
                "UPDATE disputes SET status = 'resolved', resolved_at = $3, resolution = $4, resolved_by = $5"
                " WHERE tenant_id = $1 AND dispute_id = $2 RETURNING *", tenant_id, dispute_id, now, resolution, by)
            event = DisputeResolved(customer_id=row["customer_id"], dispute_id=str(dispute_id), resolution=resolution,
                                    resolved_by=by, resolved_at=now)
            await add_events(conn, self.topics.dunning, [new_envelope(
                event, source=SOURCE, tenant_id=tenant_id, subject=str(dispute_id), time=now)])
        return row

    async def next_step_due(self) -> datetime | None:
        """When the next scheduled step falls due (the step timer sleeps until then)."""
        return await self.pool.fetchval(
            "SELECT min(due_at) FROM case_steps WHERE status = 'scheduled' AND due_at > $1", self.clock.now())

    async def claim_due_steps(self, limit: int = 200) -> int:
        """Execute the steps that are due (any replica may run this; SKIP LOCKED keeps them apart).
        A step of a closed case is cancelled instead of sent; a step overtaken by a later due
        step of the same case is skipped."""
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            # Catching up (downtime, or a case opened late): when a later step is due too, an
            # earlier one is stale ("due today" a week late); only the latest is sent.
            await conn.execute(
                """UPDATE case_steps SET status = 'skipped' WHERE (tenant_id, case_id, round, step, channel) IN (
                       SELECT s.tenant_id, s.case_id, s.round, s.step, s.channel FROM case_steps s
                       WHERE s.status = 'scheduled' AND s.due_at <= $1 AND EXISTS (
                           SELECT 1 FROM case_steps later
                           WHERE later.tenant_id = s.tenant_id AND later.case_id = s.case_id
                             AND later.round = s.round
                             AND later.offset_days > s.offset_days AND later.due_at <= $1
                             AND later.status IN ('scheduled', 'executed'))
                       FOR UPDATE OF s SKIP LOCKED)""",
                now,
            )
            rows = await conn.fetch(
                """SELECT s.tenant_id, s.case_id, s.round, s.step, s.channel, s.template, c.customer_id, c.invoice_id,
                          c.number, c.currency, c.open_minor, c.due_date, c.status AS case_status
                   FROM case_steps s JOIN cases c USING (tenant_id, case_id)
                   WHERE s.status = 'scheduled' AND s.due_at <= $1
                     AND NOT EXISTS (SELECT 1 FROM disputes d WHERE d.tenant_id = c.tenant_id
                                     AND d.customer_id = c.customer_id AND d.status = 'open'
                                     AND d.pause_until > $1
                                     AND (d.invoice_id IS NULL OR d.invoice_id = c.invoice_id))
                   ORDER BY s.due_at LIMIT $2 FOR UPDATE OF s SKIP LOCKED""",
                now, limit,
            )
            if not rows:
                return 0
            events: list[Envelope] = []
            executed, cancelled = [], []
            for r in rows:
                key = (r["tenant_id"], r["case_id"], r["round"], r["step"], r["channel"])
                if r["case_status"] != "open" or r["open_minor"] == 0:
                    cancelled.append(key)
                    continue
                executed.append(key)
                case_id = str(r["case_id"])
                request = NotificationRequested(
                    customer_id=r["customer_id"], notification_key=notification_key(case_id, r["step"], r["channel"], r["round"]),
                    case_id=case_id, step=r["step"], channel=r["channel"], template=r["template"],
                    items=[NoticeItem(invoice_id=str(r["invoice_id"]), number=r["number"], currency=r["currency"],
                                      open_amount_minor=r["open_minor"], due_date=r["due_date"])],
                    requested_at=now,
                )
                requested = new_envelope(request, source=SOURCE, tenant_id=r["tenant_id"], subject=case_id, time=now)
                step_done = DunningStepExecuted(
                    customer_id=r["customer_id"], case_id=case_id, invoice_id=str(r["invoice_id"]),
                    step=r["step"], channel=r["channel"], executed_at=now,
                )
                events += [requested, new_envelope(step_done, source=SOURCE, tenant_id=r["tenant_id"],
                                                   subject=case_id, time=now, caused_by=requested)]
            for keys, status in ((executed, "executed"), (cancelled, "cancelled")):
                if keys:
                    await conn.executemany(
                        "UPDATE case_steps SET status = $6, executed_at = $7"
                        " WHERE tenant_id = $1 AND case_id = $2 AND round = $3 AND step = $4 AND channel = $5",
                        [(*k, status, now) for k in keys],
                    )
            await add_events(conn, self.topics.dunning, events)
            return len(rows)
