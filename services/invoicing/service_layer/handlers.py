"""Invoicing use cases, one database transaction each; events go out through the outbox."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timezone

import asyncpg

from services.invoicing.adapters import repository as repo
from services.invoicing.domain.model import CashApplication, allocate_payment, unmatched_references
from services.invoicing.service_layer import cash
from services.invoicing.service_layer.commands import CreditNoteRecord, RecordPayment
from services.invoicing.service_layer.ingest import stable_id
from services.invoicing.service_layer.sources import require_right
from shared.clock import Clock
from shared.contract import (
    CreditNoteIssued, CreditNoteRequested, Envelope, SettlementAccepted, InterestAccrued, InvoiceOverdue, LateFeeAssessed, PaymentReceived, Topics, new_envelope,
)
from shared.contract.events import Allocation
from shared.http import DomainError
from shared.outbox import add_events

SOURCE = "invoicing"


@dataclass
class Outcome:
    id: str
    status: str  # created | unchanged
    events: int = 0


class Invoicing:
    def __init__(self, pool: asyncpg.Pool, clock: Clock, topics: Topics, grace_days: int = 0) -> None:
        self.pool, self.clock, self.topics, self.grace_days = pool, clock, topics, grace_days

    def _envelope(self, payload, tenant_id: str, subject: str, now: datetime) -> Envelope:
        return new_envelope(payload, source=SOURCE, tenant_id=tenant_id, subject=subject, time=now)

    async def record_payment(self, tenant_id: str, source: str, cmd: RecordPayment) -> tuple[Outcome, PaymentReceived | None]:
        """Apply a payment: by invoice reference first, else oldest open invoice first; what is
        left is unapplied credit. The same external id again changes nothing, even at the same
        moment (the id is locked first); status "reversed" reverses it (a bounced payment re-opens
        what it paid)."""
        now = self.clock.now()
        payment_id = stable_id(tenant_id, source, "payment", cmd.external_id)
        async with self.pool.acquire() as conn, conn.transaction():
            await require_right(conn, tenant_id, source, "payments")
            await repo.lock_receipt_key(conn, tenant_id, source, "payment", cmd.external_id)
            existing = await repo.get_payment_by_external(conn, tenant_id, source, cmd.external_id, lock=True)
            if cmd.status == "reversed":
                if existing is None:
                    raise DomainError("external_id", "no payment recorded under this external_id to reverse", 404)
                if existing["status"] == "reversed":
                    return Outcome(str(payment_id), "unchanged"), None
                await add_events(conn, self.topics.invoicing,
                                 await cash.reverse_payment(conn, tenant_id, existing, cmd.reason, now))
                return Outcome(str(payment_id), "reversed", 1), None
            if existing is not None:
                if (existing["customer_id"], existing["currency"], existing["amount_minor"]) != (
                    cmd.customer_id, cmd.currency, cmd.amount_minor
                ):
                    raise DomainError("external_id", "a different payment is already recorded under this external_id", 409)
                return Outcome(str(payment_id), "unchanged"), None
            received_at = cmd.received_at or now
            events, received = await self._receive(
                conn, tenant_id, source, "payment", payment_id, cmd.external_id, cmd.customer_id, cmd.currency,
                cmd.amount_minor, received_at, cmd.invoice_refs, None, now)
            await add_events(conn, self.topics.invoicing, events)
        return Outcome(str(payment_id), "created", len(events)), received

    async def record_credit_note(self, tenant_id: str, source: str, cmd: CreditNoteRecord) -> Outcome:
        """A credit note reduces what is owed: applied like a payment, booked as a credit note."""
        now = self.clock.now()
        note_id = stable_id(tenant_id, source, "credit_note", cmd.external_id)
        async with self.pool.acquire() as conn, conn.transaction():
            await require_right(conn, tenant_id, source, "invoices")
            await repo.lock_receipt_key(conn, tenant_id, source, "credit_note", cmd.external_id)
            existing = await conn.fetchrow(
                "SELECT * FROM payments WHERE tenant_id = $1 AND billing_source = $2 AND kind = 'credit_note'"
                " AND external_id = $3 FOR UPDATE", tenant_id, source, cmd.external_id)
            if existing is not None:
                if (existing["customer_id"], existing["currency"], existing["amount_minor"]) != (
                        cmd.customer_id, cmd.currency, cmd.amount_minor):
                    raise DomainError("external_id", "a different credit note is already recorded under this external_id",
                                      409)
                return Outcome(str(note_id), "unchanged")
            issued_at = datetime.combine(cmd.issue_date, time(12), timezone.utc)  # noon UTC: the same day everywhere
            events, _ = await self._receive(conn, tenant_id, source, "credit_note", note_id, cmd.external_id,
                                            cmd.customer_id, cmd.currency, cmd.amount_minor, issued_at,
                                            cmd.invoice_refs, cmd.reason, now)
            await add_events(conn, self.topics.invoicing, events)
        return Outcome(str(note_id), "created", len(events))

    async def _receive(self, conn: asyncpg.Connection, tenant_id: str, source: str, kind: str, receipt_id,
                       external_id: str, customer_id: str, currency: str, amount_minor: int, received_at: datetime,
                       refs: list[str], reason: str | None, now: datetime) -> tuple[list[Envelope], PaymentReceived | None]:
        """Money in the customer's favour (a payment or a credit note): apply it to the invoices it
        names, else oldest first; keep the rest as credit, saying why. A reference naming no open
        invoice (unknown, or already paid) keeps the whole amount unapplied for a person to look at.
        The customer's bucket is locked first: an invoice being created for the customer is waited
        for (and paid), one created after finds the credit."""
        await repo.lock_customer_bucket(conn, tenant_id, customer_id)
        customer = await repo.get_customer(conn, tenant_id, customer_id)
        open_invoices = await repo.lock_open_invoices(conn, tenant_id, customer_id) if customer else []
        unknown_refs = unmatched_references(open_invoices, currency, refs)
        if customer is None:
            application, why = CashApplication([], amount_minor), "unknown customer"
        elif refs and len(unknown_refs) == len(refs):
            application = CashApplication([], amount_minor)
            why = f"no open invoice matches the reference(s) {', '.join(unknown_refs)}"
        else:
            application = allocate_payment(open_invoices, amount_minor, currency, refs)
            why = "over-payment: no open invoice left in this currency" if application.unapplied_minor else None
        await conn.execute(
            """INSERT INTO payments (tenant_id, payment_id, billing_source, external_id, customer_id, currency,
                 amount_minor, unapplied_minor, unapplied_reason, references_, received_at, recorded_at, kind)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)""",
            tenant_id, receipt_id, source, external_id, customer_id, currency, amount_minor,
            application.unapplied_minor, why, refs, received_at, now, kind,
        )
        label = "payment" if kind == "payment" else "credit note"
        await repo.book_ledger(conn, tenant_id, [
            (customer_id, currency, kind, str(receipt_id), -amount_minor, received_at.astimezone(timezone.utc).date(),
             reason or f"{label} {external_id}")], now)
        allocations = [Allocation(**vars(a)) for a in application.allocations]
        received = None
        if kind == "payment":
            received = PaymentReceived(
                customer_id=customer_id, payment_id=str(receipt_id), billing_source=source, external_id=external_id,
                currency=currency, amount_minor=amount_minor, received_at=received_at, allocations=allocations,
                unapplied_minor=application.unapplied_minor)
            first = received
        else:
            first = CreditNoteIssued(
                customer_id=customer_id, credit_note_id=str(receipt_id), billing_source=source, external_id=external_id,
                currency=currency, amount_minor=amount_minor, issue_date=received_at.date(), allocations=allocations,
                unapplied_minor=application.unapplied_minor, reason=reason)
        events = [self._envelope(first, tenant_id, str(receipt_id), now)]
        events += await cash.settle(conn, tenant_id, customer_id, receipt_id, application, open_invoices,
                                    received_at, now)
        return events, received

    async def on_late_fee_assessed(self, conn: asyncpg.Connection, env: Envelope, p: LateFeeAssessed) -> None:
        await self._book_charge(conn, env, p.customer_id, "fee", p.fee_id, p.currency, p.amount_minor, p.assessed_at, p.reason)

    async def on_interest_accrued(self, conn: asyncpg.Connection, env: Envelope, p: InterestAccrued) -> None:
        reason = (f"late-payment interest ({p.jurisdiction}) {p.periods[0].start}..{p.periods[-1].end}"
                  if p.periods else f"late-payment interest ({p.jurisdiction})")
        await self._book_charge(conn, env, p.customer_id, "interest", p.accrual_id, p.currency, p.amount_minor, p.assessed_at, reason)

    async def on_credit_note_requested(self, conn: asyncpg.Connection, env: Envelope, p: CreditNoteRequested) -> None:
        """A collector accepted a dispute: the credit note is issued here (source `dunning`, once
        per request) and applied to the disputed invoice, else oldest first (CreditNoteIssued)."""
        await self._dunning_credit_note(conn, env.tenant_id, p.request_id, p.customer_id, p.currency, p.amount_minor,
                                        [p.invoice_number] if p.invoice_number else [], p.reason)

    async def on_settlement_accepted(self, conn: asyncpg.Connection, env: Envelope, p: SettlementAccepted) -> None:
        """A customer paid a settlement offer in time: the discount (what the covered invoices still
        owe, at most the discount) is credited to them, once per offer."""
        if p.credit_minor > 0:
            await self._dunning_credit_note(conn, env.tenant_id, f"settlement:{p.offer_id}", p.customer_id, p.currency,
                                            p.credit_minor, p.invoice_numbers, f"settlement discount (offer {p.offer_id})")

    async def _dunning_credit_note(self, conn: asyncpg.Connection, tenant_id: str, request_id: str, customer_id: str,
                                   currency: str, amount_minor: int, invoice_numbers: list[str], reason: str) -> None:
        """Issue and apply a credit note dunning asked for; `request_id` makes it once."""
        now = self.clock.now()
        note_id = stable_id(tenant_id, "dunning", "credit_note", request_id)
        await repo.lock_receipt_key(conn, tenant_id, "dunning", "credit_note", request_id)
        if await conn.fetchval("SELECT 1 FROM payments WHERE tenant_id = $1 AND payment_id = $2", tenant_id, note_id):
            return
        events, _ = await self._receive(conn, tenant_id, "dunning", "credit_note", note_id, request_id, customer_id,
                                        currency, amount_minor, now, invoice_numbers, reason, now)
        await add_events(conn, self.topics.invoicing, events)

    async def _book_charge(self, conn: asyncpg.Connection, env: Envelope, customer_id: str, kind: str, charge_key: str, currency: str,
                           amount_minor: int, assessed_at: datetime, reason: str) -> None:
        """Book a dunning fee or interest as a charge on the customer's account (in the consumer's
        inbox transaction): payable, aged and on the statement, but not dunned itself. Like an
        invoice it takes the customer's credit, so it holds the customer's bucket shared, as the
        invoice ingest does (a payment recorded at the same moment and this charge see each other)."""
        now = self.clock.now()
        charge_id = stable_id(env.tenant_id, "dunning", kind, charge_key)
        await repo.share_customer_buckets(conn, env.tenant_id, [customer_id])
        customer = await repo.get_customer(conn, env.tenant_id, customer_id)
        if customer is None:
            raise DomainError("customer_id", f"no customer {customer_id!r} to charge the {kind} to")
        prefix = "FEE" if kind == "fee" else "INT"
        inserted = await conn.fetchval(
            """INSERT INTO invoices (tenant_id, invoice_id, billing_source, external_id, customer_id, number, currency,
                 amount_minor, open_minor, issue_date, due_date, issued_at, kind)
               VALUES ($1, $2, 'dunning', $3, $4, $5, $6, $7, $7, $8, $8, $9, $10)
               ON CONFLICT DO NOTHING RETURNING 1""",
            env.tenant_id, charge_id, f"{kind}:{charge_key}", customer_id, f"{prefix}-{charge_key[:40]}", currency,
            amount_minor, assessed_at.date(), now, kind,
        )
        if not inserted:
            return
        await repo.book_ledger(conn, env.tenant_id, [
            (customer_id, currency, kind, str(charge_id), amount_minor, assessed_at.date(), reason)], now)
        await add_events(conn, self.topics.invoicing, await cash.apply_credit(conn, env.tenant_id, customer_id,
                                                                              currency, now))

    async def unapplied_cash(self, tenant_id: str, limit: int = 500, source: str | None = None) -> list[asyncpg.Record]:
        """Money received that is not on any invoice: for a person to resolve (`source`: only
        what that billing source recorded)."""
        return await self.pool.fetch(
            "SELECT payment_id, kind, billing_source, external_id, customer_id, currency, amount_minor, unapplied_minor,"
            " unapplied_reason, received_at FROM payments"
            " WHERE tenant_id = $1 AND unapplied_minor > 0 AND status = 'received'"
            " AND ($3::text IS NULL OR billing_source = $3) ORDER BY received_at LIMIT $2",
            tenant_id, limit, source,
        )

    async def fire_overdue_timers(self, limit: int = 500) -> int:
        """Claim due timers (SKIP LOCKED: any replica may run this) and publish InvoiceOverdue
        for invoices still open. Each timer fires once; late if the service was down."""
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                """WITH due AS (
                       SELECT tenant_id, invoice_id FROM overdue_timers
                       WHERE fired_at IS NULL AND due_at <= $1 ORDER BY due_at LIMIT $2 FOR UPDATE SKIP LOCKED)
                   UPDATE overdue_timers t SET fired_at = $1 FROM due
                   WHERE t.tenant_id = due.tenant_id AND t.invoice_id = due.invoice_id
                   RETURNING t.tenant_id, t.invoice_id, t.due_at""",
                now, limit,
            )
            if not rows:
                return 0
            invoices = await conn.fetch(
                "SELECT i.* FROM invoices i JOIN unnest($1::text[], $2::uuid[]) AS k(tenant_id, invoice_id)"
                " USING (tenant_id, invoice_id) WHERE i.status = 'open' AND i.open_minor > 0",
                [r["tenant_id"] for r in rows], [r["invoice_id"] for r in rows],
            )
            due_at = {(r["tenant_id"], r["invoice_id"]): r["due_at"] for r in rows}
            events = [
                self._envelope(
                    InvoiceOverdue(
                        customer_id=i["customer_id"], invoice_id=str(i["invoice_id"]), number=i["number"],
                        currency=i["currency"], open_amount_minor=i["open_minor"], due_date=i["due_date"],
                        overdue_since=due_at[(i["tenant_id"], i["invoice_id"])],
                    ),
                    i["tenant_id"], str(i["invoice_id"]), now,
                )
                for i in invoices
            ]
            await add_events(conn, self.topics.invoicing, events)
            return len(rows)
