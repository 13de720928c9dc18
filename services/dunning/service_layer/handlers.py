"""Dunning use cases: event handlers (run inside the consumer's inbox transaction) and the
step timer that turns due steps into NotificationRequested."""
from __future__ import annotations

import uuid

import asyncpg

from services.dunning.domain.policy import (
    notification_key, policy_for, policy_named, schedule_case, step_due_at,
)
from shared.clock import Clock
from shared.contract import (
    BalanceConfirmationRequested, BalanceContested, CreditApplied, CreditNoteIssued, CustomerUpserted, DisputeOpened, DunningStepExecuted, Envelope, InvoiceAdjusted, InvoiceCancelled, InvoiceIssued, InvoiceOverdue, InvoicePaid,
    NotificationRequested, PaymentReceived, PaymentReversed, RiskAssessed, Topics, new_envelope,
)
from shared.contract.events import NoticeItem
from shared.outbox import add_events

SOURCE = "dunning"


class Dunning:
    def __init__(self, pool: asyncpg.Pool, clock: Clock, topics: Topics) -> None:
        self.pool, self.clock, self.topics = pool, clock, topics

    def handlers(self) -> dict:
        return {
            "CustomerUpserted": self.on_customer_upserted,
            "InvoiceIssued": self.on_invoice_issued,
            "PaymentReceived": self.on_payment_received,
            "InvoicePaid": self.on_invoice_paid,
            "InvoiceOverdue": self.on_invoice_overdue,
            "InvoiceAdjusted": self.on_invoice_adjusted,
            "CreditApplied": self.on_payment_received,
            "CreditNoteIssued": self.on_payment_received,
            "BalanceConfirmationRequested": self.on_balance_confirmation_requested,
            "BalanceContested": self.on_balance_contested,
            "PaymentReversed": self.on_payment_reversed,
            "InvoiceCancelled": self.on_invoice_cancelled,
            "RiskAssessed": self.on_risk_assessed,
        }

    async def on_customer_upserted(self, conn: asyncpg.Connection, env: Envelope, p: CustomerUpserted) -> None:
        await conn.execute(
            "INSERT INTO dunning_customers (tenant_id, customer_id, timezone) VALUES ($1, $2, $3)"
            " ON CONFLICT (tenant_id, customer_id) DO UPDATE SET timezone = EXCLUDED.timezone, updated_at = now()",
            env.tenant_id, p.customer_id, p.timezone,
        )

    async def on_risk_assessed(self, conn: asyncpg.Connection, env: Envelope, p: RiskAssessed) -> None:
        await conn.execute(
            "INSERT INTO dunning_customers (tenant_id, customer_id, risk_segment, risk_score) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (tenant_id, customer_id) DO UPDATE SET risk_segment = EXCLUDED.risk_segment,"
            " risk_score = EXCLUDED.risk_score, updated_at = now()",
            env.tenant_id, p.customer_id, p.segment, p.score,
        )

    async def on_invoice_issued(self, conn: asyncpg.Connection, env: Envelope, p: InvoiceIssued) -> None:
        customer = await conn.fetchrow(
            "SELECT timezone, risk_segment FROM dunning_customers WHERE tenant_id = $1 AND customer_id = $2",
            env.tenant_id, p.customer_id,
        )
        timezone = customer["timezone"] if customer else "UTC"
        policy = policy_for(customer["risk_segment"] if customer else None)
        case_id = uuid.UUID(p.invoice_id)  # one case per invoice
        now = self.clock.now()
        inserted = await conn.fetchval(
            """INSERT INTO cases (tenant_id, case_id, customer_id, invoice_id, number, currency, amount_minor,
                 open_minor, due_date, policy, opened_at)
               VALUES ($1, $2, $3, $2, $4, $5, $6, $6, $7, $8, $9) ON CONFLICT DO NOTHING RETURNING 1""",
            env.tenant_id, case_id, p.customer_id, p.number, p.currency, p.amount_minor, p.due_date, policy.name, now,
        )
        if not inserted:
            return
        steps = schedule_case(policy, p.due_date, timezone, now)
        await conn.executemany(
            "INSERT INTO case_steps (tenant_id, case_id, step, channel, template, offset_days, due_at, status)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            [(env.tenant_id, case_id, s.name, s.channel, s.template, s.offset_days, s.due_at, s.status) for s in steps],
        )

    async def _reduce(self, conn: asyncpg.Connection, tenant_id: str, invoice_id: str, open_minor: int, reason: str) -> None:
        """Payment stops dunning for what it covers: a settled invoice cancels its remaining steps."""
        case_id = uuid.UUID(invoice_id)
        now = self.clock.now()
        closed = await conn.fetchval(
            "UPDATE cases SET open_minor = LEAST(open_minor, $3::bigint),"
            " status = CASE WHEN $3::bigint = 0 THEN 'closed' ELSE status END,"
            " closed_reason = CASE WHEN $3::bigint = 0 THEN $4 ELSE closed_reason END,"
            " closed_at = CASE WHEN $3::bigint = 0 THEN $5 ELSE closed_at END"
            " WHERE tenant_id = $1 AND case_id = $2 RETURNING status = 'closed'",
            tenant_id, case_id, open_minor, reason, now,
        )
        if closed:
            await conn.execute(
                "UPDATE case_steps SET status = 'cancelled' WHERE tenant_id = $1 AND case_id = $2 AND status = 'scheduled'",
                tenant_id, case_id,
            )

    async def on_payment_reversed(self, conn: asyncpg.Connection, env: Envelope, p: PaymentReversed) -> None:
        """A bounced payment: the re-opened invoices are dunned again from their next step on."""
        now = self.clock.now()
        for a in p.reopened:
            case_id = uuid.UUID(a.invoice_id)
            reopened = await conn.fetchval(
                "UPDATE cases SET open_minor = $3, status = 'open', closed_reason = NULL, closed_at = NULL"
                " WHERE tenant_id = $1 AND case_id = $2 RETURNING 1",
                env.tenant_id, case_id, a.invoice_open_minor,
            )
            if reopened:
                await conn.execute(
                    "UPDATE case_steps SET status = 'scheduled' WHERE tenant_id = $1 AND case_id = $2"
                    " AND status = 'cancelled' AND due_at > $3",
                    env.tenant_id, case_id, now,
                )

    async def on_payment_received(self, conn: asyncpg.Connection, env: Envelope,
                                  p: PaymentReceived | CreditApplied | CreditNoteIssued) -> None:
        for a in p.allocations:
            await self._reduce(conn, env.tenant_id, a.invoice_id, a.invoice_open_minor, "paid")

    async def on_invoice_paid(self, conn: asyncpg.Connection, env: Envelope, p: InvoicePaid) -> None:
        await self._reduce(conn, env.tenant_id, p.invoice_id, 0, "paid")

    async def on_invoice_adjusted(self, conn: asyncpg.Connection, env: Envelope, p: InvoiceAdjusted) -> None:
        """New amounts count from now on; a moved due date moves the steps not yet taken."""
        case_id = uuid.UUID(p.invoice_id)
        row = await conn.fetchrow(
            "UPDATE cases SET number = $3, amount_minor = $4, due_date = $5 WHERE tenant_id = $1 AND case_id = $2"
            " RETURNING customer_id, policy",
            env.tenant_id, case_id, p.number, p.amount_minor, p.due_date,
        )
        if row is None:
            return
        await conn.execute(
            "UPDATE cases SET open_minor = $3, status = 'open', closed_reason = NULL, closed_at = NULL"
            " WHERE tenant_id = $1 AND case_id = $2 AND $3::bigint > 0",
            env.tenant_id, case_id, p.open_amount_minor,
        )
        await self._reduce(conn, env.tenant_id, p.invoice_id, p.open_amount_minor, "paid")
        if "due_date" in p.changes:
            timezone = await conn.fetchval(
                "SELECT timezone FROM dunning_customers WHERE tenant_id = $1 AND customer_id = $2",
                env.tenant_id, row["customer_id"],
            ) or "UTC"
            steps = await conn.fetch(
                "SELECT step, channel, offset_days FROM case_steps WHERE tenant_id = $1 AND case_id = $2"
                " AND status = 'scheduled'", env.tenant_id, case_id,
            )
            await conn.executemany(
                "UPDATE case_steps SET due_at = $5 WHERE tenant_id = $1 AND case_id = $2 AND step = $3 AND channel = $4",
                [(env.tenant_id, case_id, r["step"], r["channel"],
                  step_due_at(p.due_date, r["offset_days"], timezone, policy_named(row["policy"]).send_hour_local))
                 for r in steps],
            )

    async def on_invoice_cancelled(self, conn: asyncpg.Connection, env: Envelope, p: InvoiceCancelled) -> None:
        await self._reduce(conn, env.tenant_id, p.invoice_id, 0, "cancelled")

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
            "INSERT INTO disputes (tenant_id, dispute_id, customer_id, origin, reason, opened_at)"
            " VALUES ($1, $2, $3, 'balance_confirmation', $4, $5) ON CONFLICT DO NOTHING RETURNING 1",
            env.tenant_id, dispute_id, p.customer_id, p.reason, now,
        )
        if opened:
            event = DisputeOpened(customer_id=p.customer_id, dispute_id=str(dispute_id), origin="balance_confirmation",
                                  reason=p.reason, opened_at=now)
            await add_events(conn, self.topics.dunning, [new_envelope(
                event, source=SOURCE, tenant_id=env.tenant_id, subject=str(dispute_id), time=now, caused_by=env)])

    async def on_invoice_overdue(self, conn: asyncpg.Connection, env: Envelope, p: InvoiceOverdue) -> None:
        await conn.execute(
            "UPDATE cases SET overdue_since = $3 WHERE tenant_id = $1 AND case_id = $2 AND overdue_since IS NULL",
            env.tenant_id, uuid.UUID(p.invoice_id), p.overdue_since,
        )

    async def claim_due_steps(self, limit: int = 200) -> int:
        """Execute the steps that are due (any replica may run this; SKIP LOCKED keeps them apart).
        A step of a closed case is cancelled instead of sent; a step overtaken by a later due
        step of the same case is skipped."""
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            # Catching up (downtime, or a case opened late): when a later step is due too, an
            # earlier one is stale ("due today" a week late); only the latest is sent.
            await conn.execute(
                """UPDATE case_steps SET status = 'skipped' WHERE (tenant_id, case_id, step, channel) IN (
                       SELECT s.tenant_id, s.case_id, s.step, s.channel FROM case_steps s
                       WHERE s.status = 'scheduled' AND s.due_at <= $1 AND EXISTS (
                           SELECT 1 FROM case_steps later
                           WHERE later.tenant_id = s.tenant_id AND later.case_id = s.case_id
                             AND later.offset_days > s.offset_days AND later.due_at <= $1
                             AND later.status IN ('scheduled', 'executed'))
                       FOR UPDATE OF s SKIP LOCKED)""",
                now,
            )
            rows = await conn.fetch(
                """SELECT s.tenant_id, s.case_id, s.step, s.channel, s.template, c.customer_id, c.invoice_id,
                          c.number, c.currency, c.open_minor, c.due_date, c.status AS case_status
                   FROM case_steps s JOIN cases c USING (tenant_id, case_id)
                   WHERE s.status = 'scheduled' AND s.due_at <= $1
                     AND NOT EXISTS (SELECT 1 FROM disputes d WHERE d.tenant_id = c.tenant_id
                                     AND d.customer_id = c.customer_id AND d.status = 'open'
                                     AND (d.invoice_id IS NULL OR d.invoice_id = c.invoice_id))
                   ORDER BY s.due_at LIMIT $2 FOR UPDATE OF s SKIP LOCKED""",
                now, limit,
            )
            if not rows:
                return 0
            events: list[Envelope] = []
            executed, cancelled = [], []
            for r in rows:
                key = (r["tenant_id"], r["case_id"], r["step"], r["channel"])
                if r["case_status"] != "open" or r["open_minor"] == 0:
                    cancelled.append(key)
                    continue
                executed.append(key)
                case_id = str(r["case_id"])
                request = NotificationRequested(
                    customer_id=r["customer_id"], notification_key=notification_key(case_id, r["step"], r["channel"]),
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
                        "UPDATE case_steps SET status = $5, executed_at = $6"
                        " WHERE tenant_id = $1 AND case_id = $2 AND step = $3 AND channel = $4",
                        [(*k, status, now) for k in keys],
                    )
            await add_events(conn, self.topics.dunning, events)
            return len(rows)
