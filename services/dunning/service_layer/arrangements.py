"""Promises to pay, payment plans, settlement offers and disputes: what a collector agrees with a customer, and the
timer that decides whether it held. Each pauses the invoices it covers (adapters/cases.py,
PAUSED_UNTIL); when it ends, the cases' timers move and dunning goes on with the latest step due."""
from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import asyncpg

from services.dunning.adapters import cases as repo
from services.dunning.adapters import tasks as task_repo
from services.dunning.adapters.policy_store import PolicyBook, PolicyRef
from services.dunning.domain.arrangements import (
    ArrangementError, Instalment, check_instalments, check_promise, end_of_day, plan_state, promise_outcome,
    resolve_dispute, settlement_credit, settlement_outcome, settlement_terms, split_instalments,
)
from services.dunning.domain.policy import step_due_at
from services.dunning.service_layer.desk import place_new
from shared.clock import Clock
from shared.contract import (
    CreditNoteRequested, DisputeAgeing, DisputeOpened, DisputeResolved, Envelope, NotificationRequested,
    PaymentPlanAgreed, PaymentPlanBroken, PaymentPlanCompleted, PromiseToPayBroken, PromiseToPayKept,
    PromiseToPayRecorded, SettlementAccepted, SettlementOffered, SettlementOfferEnded, Topics, new_envelope,
)
from shared.contract.events import NoticeItem, OfferTerms, PlanInstalment
from shared.http import DomainError
from shared.outbox import add_events

SOURCE = "dunning"
REMIND_DAYS_BEFORE = 3  # an instalment reminder goes out three days before it is due, 09:00 local

_PAID_SINCE = """(SELECT coalesce(sum(p.amount_minor), 0) FROM item_payments p
                   WHERE p.tenant_id = a.tenant_id AND p.invoice_id = ANY(a.invoice_ids) AND p.recorded_at >= a.created_at)"""
# A settlement offer counts what was paid by the end of its pay-by day (a payment made on the day
# but recorded later still counts when it arrives, as long as the offer is open).
_PAID_IN_TIME = """(SELECT coalesce(sum(p.amount_minor), 0) FROM item_payments p
                     WHERE p.tenant_id = a.tenant_id AND p.invoice_id = ANY(a.invoice_ids)
                       AND p.recorded_at >= a.created_at AND p.paid_at < a.deadline)"""


def _domain(e: ArrangementError) -> DomainError:
    return DomainError(e.field, e.reason)


class Arrangements:
    def __init__(self, pool: asyncpg.Pool, clock: Clock, topics: Topics, dispute_pause: timedelta,
                 dispute_alert: timedelta, book: PolicyBook | None = None) -> None:
        self.pool, self.clock, self.topics = pool, clock, topics
        self.book = book or PolicyBook()
        self.dispute_pause, self.dispute_alert = dispute_pause, dispute_alert

    @contextlib.asynccontextmanager
    async def _transaction(self, conn: asyncpg.Connection | None) -> AsyncIterator[asyncpg.Connection]:
        """The caller's transaction (a collector's call outcome does several things at once), or a new one."""
        if conn is not None:
            yield conn
            return
        async with self.pool.acquire() as own, own.transaction():
            yield own

    def _event(self, payload, tenant_id: str, subject: str, now: datetime, caused_by: Envelope | None = None) -> Envelope:
        return new_envelope(payload, source=SOURCE, tenant_id=tenant_id, subject=subject, time=now, caused_by=caused_by)

    async def _case_items(self, conn: asyncpg.Connection, tenant_id: str, case_id: uuid.UUID,
                          invoice_ids: list[uuid.UUID] | None, overdue_only: bool = False,
                          ) -> tuple[asyncpg.Record, list[asyncpg.Record], str]:
        """The open case (locked) and its open items covered (all when none are named; only those
        past their due date in the customer's today with `overdue_only`), oldest first."""
        case = await conn.fetchrow(
            "SELECT c.*, coalesce(dc.timezone, 'UTC') AS timezone FROM cases c LEFT JOIN dunning_customers dc"
            " USING (tenant_id, customer_id) WHERE c.tenant_id = $1 AND c.case_id = $2 FOR UPDATE OF c",
            tenant_id, case_id)
        if case is None:
            raise DomainError("case_id", f"no case {case_id} in this tenant", 404)
        if case["status"] != "open":
            raise DomainError("case_id", f"the case is {case['status']}", 409)
        items = await conn.fetch(
            "SELECT * FROM case_items WHERE tenant_id = $1 AND case_id = $2 AND status = 'open' ORDER BY due_date",
            tenant_id, case_id)
        if invoice_ids:
            known = {i["invoice_id"] for i in items}
            if missing := [str(i) for i in invoice_ids if i not in known]:
                raise DomainError("invoice_ids", f"not open in this case: {', '.join(missing)}")
            items = [i for i in items if i["invoice_id"] in set(invoice_ids)]
        if overdue_only:
            today = self.clock.now().astimezone(ZoneInfo(case["timezone"])).date()
            items = [i for i in items if i["due_date"] < today]
        covered = await conn.fetch(
            "SELECT 'promise' AS kind, promise_id AS id, invoice_ids FROM promises WHERE tenant_id = $1"
            " AND customer_id = $2 AND status = 'open' UNION ALL SELECT 'payment plan', plan_id, invoice_ids"
            " FROM payment_plans WHERE tenant_id = $1 AND customer_id = $2 AND status = 'active'"
            " UNION ALL SELECT 'settlement offer', offer_id, invoice_ids FROM settlement_offers WHERE tenant_id = $1"
            " AND customer_id = $2 AND status = 'open'",
            tenant_id, case["customer_id"])
        for c in covered:
            if overlap := {i["invoice_id"] for i in items} & set(c["invoice_ids"]):
                raise DomainError("invoice_ids", f"{sorted(map(str, overlap))[0]} is already under {c['kind']} {c['id']}",
                                  409)
        if not items:
            raise DomainError("invoice_ids", "nothing overdue to settle" if overdue_only else "nothing open to cover",
                              409 if overdue_only else 422)
        return case, items, case["timezone"]

    # -- promises ---------------------------------------------------------------------------------

    async def record_promise(self, tenant_id: str, case_id: uuid.UUID, *, amount_minor: int, promised_date: date,
                             channel: str, taken_by: str, invoice_ids: list[uuid.UUID] | None, grace_days: int,
                             note: str | None, conn: asyncpg.Connection | None = None) -> asyncpg.Record:
        """The customer promised to pay: the covered invoices wait until the promised day plus
        grace (PromiseToPayRecorded)."""
        now = self.clock.now()
        async with self._transaction(conn) as conn:
            case, items, timezone = await self._case_items(conn, tenant_id, case_id, invoice_ids)
            today = now.astimezone(ZoneInfo(timezone)).date()
            try:
                check_promise(amount_minor, promised_date, today, sum(i["open_minor"] for i in items))
            except ArrangementError as e:
                raise _domain(e) from None
            promise_id = uuid.uuid4()
            row = await conn.fetchrow(
                "INSERT INTO promises (tenant_id, promise_id, customer_id, case_id, currency, invoice_ids, amount_minor,"
                " promised_date, grace_days, deadline, channel, taken_by, note, created_at)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) RETURNING *",
                tenant_id, promise_id, case["customer_id"], case_id, case["currency"], [i["invoice_id"] for i in items],
                amount_minor, promised_date, grace_days, end_of_day(promised_date + timedelta(days=grace_days), timezone),
                channel, taken_by, note, now)
            await repo.refresh(conn, [(tenant_id, case_id)], now)
            await add_events(conn, self.topics.dunning, [self._event(PromiseToPayRecorded(
                customer_id=case["customer_id"], promise_id=str(promise_id), case_id=str(case_id),
                currency=case["currency"], amount_minor=amount_minor, promised_date=promised_date, channel=channel,
                taken_by=taken_by, invoice_ids=[str(i["invoice_id"]) for i in items], recorded_at=now),
                tenant_id, str(case_id), now)])
            return row

    async def cancel_promise(self, tenant_id: str, promise_id: uuid.UUID) -> asyncpg.Record:
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "UPDATE promises SET status = 'cancelled', resolved_at = $3 WHERE tenant_id = $1 AND promise_id = $2"
                " AND status = 'open' RETURNING *", tenant_id, promise_id, now)
            if row is None:
                raise DomainError("promise_id", f"no open promise {promise_id} in this tenant", 404)
            await repo.refresh_customer(conn, tenant_id, row["customer_id"], now)
            return row

    # -- payment plans ------------------------------------------------------------------------------

    async def agree_plan(self, tenant_id: str, case_id: uuid.UUID, *, instalments: list[Instalment] | None,
                         count: int | None, first_due: date | None, every_days: int, invoice_ids: list[uuid.UUID] | None,
                         grace_days: int, agreed_by: str, conn: asyncpg.Connection | None = None) -> asyncpg.Record:
        """The customer pays what the covered invoices owe in instalments; they are not dunned
        while the plan holds (PaymentPlanAgreed)."""
        now = self.clock.now()
        async with self._transaction(conn) as conn:
            case, items, timezone = await self._case_items(conn, tenant_id, case_id, invoice_ids)
            total = sum(i["open_minor"] for i in items)
            today = now.astimezone(ZoneInfo(timezone)).date()
            try:
                if instalments is None:
                    if count is None or first_due is None:
                        raise ArrangementError("instalments", "give the instalments, or count and first_due")
                    instalments = split_instalments(total, count, first_due, every_days)
                check_instalments(instalments, total, today)
            except ArrangementError as e:
                raise _domain(e) from None
            plan_id = uuid.uuid4()
            first_deadline = end_of_day(instalments[0].due_date + timedelta(days=grace_days), timezone)
            row = await conn.fetchrow(
                "INSERT INTO payment_plans (tenant_id, plan_id, customer_id, case_id, currency, invoice_ids, total_minor,"
                " grace_days, next_check_at, agreed_by, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
                " RETURNING *", tenant_id, plan_id, case["customer_id"], case_id, case["currency"],
                [i["invoice_id"] for i in items], total, grace_days, first_deadline, agreed_by, now)
            await conn.executemany(
                "INSERT INTO plan_instalments (tenant_id, plan_id, sequence, due_date, amount_minor, remind_at)"
                " VALUES ($1, $2, $3, $4, $5, $6)",
                [(tenant_id, plan_id, i.sequence, i.due_date, i.amount_minor,
                  max(now, step_due_at(i.due_date, -REMIND_DAYS_BEFORE, timezone, 9))) for i in instalments])
            await repo.refresh(conn, [(tenant_id, case_id)], now)
            await add_events(conn, self.topics.dunning, [self._event(PaymentPlanAgreed(
                customer_id=case["customer_id"], plan_id=str(plan_id), case_id=str(case_id), currency=case["currency"],
                total_minor=total, instalments=[PlanInstalment(**vars(i)) for i in instalments],
                invoice_ids=[str(i["invoice_id"]) for i in items], agreed_by=agreed_by, agreed_at=now),
                tenant_id, str(case_id), now)])
            return row

    # -- disputes ----------------------------------------------------------------------------------

    async def open_dispute(self, tenant_id: str, *, customer_id: str, invoice_id: uuid.UUID | None,
                           currency: str | None, reason_code: str, description: str, opened_by: str,
                           conn: asyncpg.Connection | None = None, origin: str = "collector") -> asyncpg.Record:
        """A dispute on one invoice or the whole account pauses what it covers (DisputeOpened)."""
        now = self.clock.now()
        async with self._transaction(conn) as conn:
            # one customer's disputes one at a time: a form sent twice (a double click) opens one
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1 || ':' || $2, 7))",
                               tenant_id, customer_id)
            already = await conn.fetchval(
                "SELECT dispute_id FROM disputes WHERE tenant_id = $1 AND customer_id = $2 AND status = 'open'"
                " AND invoice_id IS NOT DISTINCT FROM $3", tenant_id, customer_id, invoice_id)
            if already is not None:
                raise DomainError("invoice_id" if invoice_id else "customer_id",
                                  f"already disputed: dispute {already} is open", 409)
            disputed = None
            if invoice_id is not None:
                item = await conn.fetchrow(
                    "SELECT * FROM case_items WHERE tenant_id = $1 AND invoice_id = $2 AND customer_id = $3",
                    tenant_id, invoice_id, customer_id)
                if item is None:
                    raise DomainError("invoice_id", f"no invoice {invoice_id} of customer {customer_id} in dunning", 404)
                if item["status"] != "open":
                    raise DomainError("invoice_id", f"the invoice is {item['status']}: nothing to dispute", 409)
                currency, disputed = item["currency"], item["open_minor"]
            dispute_id = uuid.uuid4()
            row = await conn.fetchrow(
                "INSERT INTO disputes (tenant_id, dispute_id, customer_id, origin, reason, invoice_id, opened_at,"
                " pause_until, reason_code, currency, disputed_minor, opened_by)"
                " VALUES ($1, $2, $3, $12, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING *",
                tenant_id, dispute_id, customer_id, description, invoice_id, now, now + self.dispute_pause, reason_code,
                currency, disputed, opened_by, origin)
            await repo.refresh_customer(conn, tenant_id, customer_id, now)
            await add_events(conn, self.topics.dunning, [self._event(DisputeOpened(
                customer_id=customer_id, dispute_id=str(dispute_id), origin=origin, reason=description,
                invoice_ids=[str(invoice_id)] if invoice_id else [], opened_at=now, reason_code=reason_code),
                tenant_id, str(dispute_id), now)])
            return row

    async def resolve_dispute(self, tenant_id: str, dispute_id: uuid.UUID, *, outcome: str, resolution: str,
                              credit_minor: int | None, by: str, currency: str | None = None) -> asyncpg.Record:
        """Accepted: a credit note is requested from invoicing (for the disputed amount unless
        given), which settles what it covers. Rejected: dunning resumes at the next step."""
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT d.*, i.number, i.open_minor FROM disputes d LEFT JOIN case_items i ON i.tenant_id = d.tenant_id"
                " AND i.invoice_id = d.invoice_id WHERE d.tenant_id = $1 AND d.dispute_id = $2 FOR UPDATE OF d",
                tenant_id, dispute_id)
            if row is None:
                raise DomainError("dispute_id", f"no dispute {dispute_id} in this tenant", 404)
            disputed = row["open_minor"] if row["invoice_id"] else (row["disputed_minor"] or credit_minor or 0)
            try:
                resolve_dispute(row["status"], outcome, credit_minor, disputed)
            except ArrangementError as e:
                raise DomainError(e.field, e.reason, 409 if e.field == "dispute_id" else 422) from None
            credit = (credit_minor or row["open_minor"]) if outcome == "accepted" else None
            currency = row["currency"] or currency
            if outcome == "accepted" and (credit is None or currency is None):
                raise DomainError("credit_minor", "an account-level dispute accepted needs the amount and currency to credit")
            updated = await conn.fetchrow(
                "UPDATE disputes SET status = 'resolved', resolved_at = $3, resolution = $4, resolved_by = $5,"
                " outcome = $6, credit_minor = $7, currency = coalesce(currency, $8),"
                " pause_until = CASE WHEN $6 = 'accepted' THEN $9 ELSE pause_until END"
                " WHERE tenant_id = $1 AND dispute_id = $2 RETURNING *",
                tenant_id, dispute_id, now, resolution, by, outcome, credit, currency, now + self.dispute_pause)
            await repo.refresh_customer(conn, tenant_id, row["customer_id"], now)
            events = [self._event(DisputeResolved(
                customer_id=row["customer_id"], dispute_id=str(dispute_id), resolution=resolution, resolved_by=by,
                resolved_at=now, outcome=outcome, credit_minor=credit), tenant_id, str(dispute_id), now)]
            if credit:
                events.append(self._event(CreditNoteRequested(
                    customer_id=row["customer_id"], request_id=f"dispute:{dispute_id}", dispute_id=str(dispute_id),
                    invoice_id=str(row["invoice_id"]) if row["invoice_id"] else None, invoice_number=row["number"],
                    currency=currency, amount_minor=credit, reason=f"dispute accepted: {resolution}"[:500],
                    requested_at=now), tenant_id, str(dispute_id), now))
            await add_events(conn, self.topics.dunning, events)
            return updated

    # -- settlement offers ---------------------------------------------------------------------------

    async def offer_settlement(self, tenant_id: str, case_id: uuid.UUID, *, discount_percent: Decimal, pay_by: date,
                               offered_by: str, note: str | None) -> asyncpg.Record:
        """A discount for paying everything overdue in the case by `pay_by`, within the limits of
        the policy of its oldest overdue invoice. Those invoices are not dunned until the pay-by
        day ends, and the customer is told by email (SettlementOffered, NotificationRequested)."""
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            case, items, timezone = await self._case_items(conn, tenant_id, case_id, None, overdue_only=True)
            today = now.astimezone(ZoneInfo(timezone)).date()
            lead = items[0]
            ref = PolicyRef(lead["policy_tenant"], lead["policy_name"], lead["policy_version"])
            limits = (await self.book.spec(conn, ref)).settlement
            if limits is None:
                raise DomainError("case_id", f"the policy {ref.name}@{ref.version} of its oldest overdue invoice allows"
                                             " no settlement offers", 409)
            try:
                terms = settlement_terms(sum(i["open_minor"] for i in items), discount_percent, pay_by, today,
                                         (today - lead["due_date"]).days, max_percent=limits.max_discount_percent,
                                         max_days=limits.max_days, min_days_overdue=limits.min_days_overdue)
            except ArrangementError as e:
                raise DomainError(e.field, e.reason, 409 if e.field == "case_id" else 422) from None
            offer_id = uuid.uuid4()
            row = await conn.fetchrow(
                "INSERT INTO settlement_offers (tenant_id, offer_id, customer_id, case_id, currency, invoice_ids,"
                " owed_minor, discount_percent, discount_minor, pay_minor, pay_by, deadline, offered_by, note, created_at)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) RETURNING *",
                tenant_id, offer_id, case["customer_id"], case_id, case["currency"], [i["invoice_id"] for i in items],
                terms.owed_minor, discount_percent, terms.discount_minor, terms.pay_minor, pay_by,
                end_of_day(pay_by, timezone), offered_by, note, now)
            await repo.refresh(conn, [(tenant_id, case_id)], now)
            invoice_ids = [str(i["invoice_id"]) for i in items]
            await add_events(conn, self.topics.dunning, [
                self._event(SettlementOffered(
                    customer_id=case["customer_id"], offer_id=str(offer_id), case_id=str(case_id),
                    currency=case["currency"], invoice_ids=invoice_ids, owed_minor=terms.owed_minor,
                    discount_minor=terms.discount_minor, pay_minor=terms.pay_minor, pay_by=pay_by,
                    offered_by=offered_by, offered_at=now), tenant_id, str(case_id), now),
                self._event(NotificationRequested(
                    customer_id=case["customer_id"], notification_key=f"settlement:{offer_id}:email",
                    case_id=str(case_id), step="settlement_offer", channel="email", template="settlement_offer",
                    requested_at=now,
                    items=[NoticeItem(invoice_id=str(i["invoice_id"]), number=i["number"], currency=i["currency"],
                                      open_amount_minor=i["open_minor"], due_date=i["due_date"]) for i in items],
                    offer=OfferTerms(currency=case["currency"], pay_minor=terms.pay_minor,
                                     discount_minor=terms.discount_minor, pay_by=pay_by)),
                    tenant_id, str(case_id), now),
            ])
            return row

    async def withdraw_offer(self, tenant_id: str, offer_id: uuid.UUID, by: str) -> asyncpg.Record:
        """An open offer is withdrawn (made by mistake, or the terms changed): dunning resumes."""
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "UPDATE settlement_offers SET status = 'withdrawn', resolved_at = $3, resolved_by = $4"
                " WHERE tenant_id = $1 AND offer_id = $2 AND status = 'open' RETURNING *", tenant_id, offer_id, now, by)
            if row is None:
                status = await conn.fetchval("SELECT status FROM settlement_offers WHERE tenant_id = $1 AND offer_id = $2",
                                             tenant_id, offer_id)
                if status is None:
                    raise DomainError("offer_id", f"no settlement offer {offer_id} in this tenant", 404)
                raise DomainError("offer_id", f"the offer is already {status}", 409)
            await repo.refresh_customer(conn, tenant_id, row["customer_id"], now)
            await add_events(conn, self.topics.dunning, [self._event(SettlementOfferEnded(
                customer_id=row["customer_id"], offer_id=str(offer_id), case_id=str(row["case_id"]), outcome="withdrawn",
                paid_minor=0, ended_at=now), tenant_id, str(row["case_id"]), now)])
            return row

    async def _settle(self, conn: asyncpg.Connection, offers: list[asyncpg.Record], now: datetime) -> int:
        """Open offers (locked) with what was paid in time: accepted once that reaches the
        settlement amount (invoicing credits what is still open, at most the discount), expired
        when the pay-by day has ended first."""
        events: list[Envelope] = []
        touched: set[tuple[str, str]] = set()
        for o in offers:
            outcome = settlement_outcome(o["pay_minor"], o["paid"], o["deadline"], now)
            if outcome == "open":
                continue
            touched.add((o["tenant_id"], o["customer_id"]))
            if outcome == "expired":
                await conn.execute(
                    "UPDATE settlement_offers SET status = 'expired', paid_minor = $3, resolved_at = $4"
                    " WHERE tenant_id = $1 AND offer_id = $2", o["tenant_id"], o["offer_id"], o["paid"], now)
                events.append(self._event(SettlementOfferEnded(
                    customer_id=o["customer_id"], offer_id=str(o["offer_id"]), case_id=str(o["case_id"]),
                    outcome="expired", paid_minor=o["paid"], ended_at=now), o["tenant_id"], str(o["case_id"]), now))
                continue
            still = await conn.fetch(
                "SELECT number, open_minor FROM case_items WHERE tenant_id = $1 AND invoice_id = ANY($2::uuid[])"
                " AND status = 'open' AND open_minor > 0 ORDER BY due_date, number", o["tenant_id"], o["invoice_ids"])
            credit = settlement_credit(o["discount_minor"], sum(r["open_minor"] for r in still))
            # until the credit note arrives the invoices stay paused: the discount is not dunned
            await conn.execute(
                "UPDATE settlement_offers SET status = 'accepted', paid_minor = $3, credit_minor = $4::bigint,"
                " resolved_at = $5, pause_until = CASE WHEN $4::bigint > 0 THEN $6::timestamptz END,"
                " credit_applied_at = CASE WHEN $4::bigint = 0 THEN $5::timestamptz END"
                " WHERE tenant_id = $1 AND offer_id = $2",
                o["tenant_id"], o["offer_id"], o["paid"], credit, now, now + self.dispute_pause)
            events.append(self._event(SettlementAccepted(
                customer_id=o["customer_id"], offer_id=str(o["offer_id"]), case_id=str(o["case_id"]),
                currency=o["currency"], paid_minor=o["paid"], discount_minor=o["discount_minor"], credit_minor=credit,
                invoice_numbers=[r["number"] for r in still], accepted_at=now), o["tenant_id"], str(o["case_id"]), now))
        for tenant_id, customer_id in sorted(touched):
            await repo.refresh_customer(conn, tenant_id, customer_id, now)
        await add_events(conn, self.topics.dunning, events)
        return len(events)

    # -- payments and the arrangements timer ---------------------------------------------------------

    async def on_credit_notes(self, conn: asyncpg.Connection, requests: list[tuple[str, str]], now: datetime) -> None:
        """Credit notes invoicing issued for accepted disputes and settlements ((tenant, request id)
        = "dispute:<id>" or "settlement:<id>"): what they still held back is dunned again, for
        whatever the credit left open."""
        offers = [(t, uuid.UUID(r.removeprefix("settlement:"))) for t, r in requests if r.startswith("settlement:")]
        if offers:
            await conn.execute(
                "UPDATE settlement_offers o SET credit_applied_at = $3 FROM unnest($1::text[], $2::uuid[])"
                " AS k(tenant_id, offer_id) WHERE o.tenant_id = k.tenant_id AND o.offer_id = k.offer_id"
                " AND o.credit_applied_at IS NULL", [o[0] for o in offers], [o[1] for o in offers], now)
        disputes = [(t, uuid.UUID(r.removeprefix("dispute:"))) for t, r in requests if r.startswith("dispute:")]
        if disputes:
            await conn.execute(
                "UPDATE disputes d SET credit_applied_at = $3 FROM unnest($1::text[], $2::uuid[]) AS k(tenant_id, dispute_id)"
                " WHERE d.tenant_id = k.tenant_id AND d.dispute_id = k.dispute_id AND d.credit_applied_at IS NULL",
                [d[0] for d in disputes], [d[1] for d in disputes], now)

    async def on_payments(self, conn: asyncpg.Connection, customers: set[tuple[str, str]], now: datetime) -> None:
        """Payments just recorded: a promise they cover is kept, a plan they finish completes
        (inside the consumer's transaction)."""
        if not customers:
            return
        keys = sorted(customers)
        tenants, ids = [k[0] for k in keys], [k[1] for k in keys]
        promises = await conn.fetch(
            f"SELECT a.*, {_PAID_SINCE} AS paid FROM promises a JOIN unnest($1::text[], $2::text[]) AS k(tenant_id,"
            " customer_id) USING (tenant_id, customer_id) WHERE a.status = 'open' ORDER BY a.tenant_id, a.promise_id"
            " FOR UPDATE OF a", tenants, ids)
        plans = await conn.fetch(
            f"SELECT a.*, {_PAID_SINCE} AS paid FROM payment_plans a JOIN unnest($1::text[], $2::text[]) AS k(tenant_id,"
            " customer_id) USING (tenant_id, customer_id) WHERE a.status = 'active' ORDER BY a.tenant_id, a.plan_id"
            " FOR UPDATE OF a", tenants, ids)
        await self._decide(conn, promises, plans, now, at_deadline=False)
        offers = await conn.fetch(
            f"SELECT a.*, {_PAID_IN_TIME} AS paid FROM settlement_offers a JOIN unnest($1::text[], $2::text[])"
            " AS k(tenant_id, customer_id) USING (tenant_id, customer_id) WHERE a.status = 'open'"
            " ORDER BY a.tenant_id, a.offer_id FOR UPDATE OF a", tenants, ids)
        await self._settle(conn, offers, now)

    async def tick(self, limit: int = 200) -> int:
        """Promises, instalments and settlement offers whose deadline passed, instalment reminders,
        disputes open too long: each claimed with SKIP LOCKED, decided once."""
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            promises = await conn.fetch(
                f"SELECT a.*, {_PAID_SINCE} AS paid FROM promises a WHERE a.status = 'open' AND a.deadline <= $1"
                " ORDER BY a.deadline LIMIT $2 FOR UPDATE SKIP LOCKED", now, limit)
            plans = await conn.fetch(
                f"SELECT a.*, {_PAID_SINCE} AS paid FROM payment_plans a WHERE a.status = 'active'"
                " AND a.next_check_at <= $1 ORDER BY a.next_check_at LIMIT $2 FOR UPDATE SKIP LOCKED", now, limit)
            done = await self._decide(conn, promises, plans, now, at_deadline=True)
            done += await self._settle(conn, await conn.fetch(
                f"SELECT a.*, {_PAID_IN_TIME} AS paid FROM settlement_offers a WHERE a.status = 'open'"
                " AND a.deadline <= $1 ORDER BY a.deadline LIMIT $2 FOR UPDATE SKIP LOCKED", now, limit), now)
            done += await self._remind_instalments(conn, now, limit)
            done += await self._alert_disputes(conn, now, limit)
            return done

    async def next_due(self) -> datetime | None:
        return await self.pool.fetchval(
            "SELECT least((SELECT min(deadline) FROM promises WHERE status = 'open'),"
            " (SELECT min(next_check_at) FROM payment_plans WHERE status = 'active'),"
            " (SELECT min(remind_at) FROM plan_instalments WHERE reminded_at IS NULL),"
            " (SELECT min(opened_at) + $1::interval FROM disputes WHERE status = 'open' AND alerted_at IS NULL),"
            " (SELECT min(deadline) FROM settlement_offers WHERE status = 'open'))",
            self.dispute_alert)

    async def _decide(self, conn: asyncpg.Connection, promises, plans, now: datetime, at_deadline: bool) -> int:
        events: list[Envelope] = []
        touched: set[tuple[str, str]] = set()
        broken: list[tuple[str, str, uuid.UUID, str, str]] = []
        for p in promises:
            outcome = promise_outcome(p["amount_minor"], p["paid"], p["deadline"], now)
            if outcome == "open":
                continue
            await conn.execute(
                "UPDATE promises SET status = $3, paid_minor = $4, resolved_at = $5 WHERE tenant_id = $1 AND promise_id = $2",
                p["tenant_id"], p["promise_id"], outcome, p["paid"], now)
            payload = (PromiseToPayKept(customer_id=p["customer_id"], promise_id=str(p["promise_id"]),
                                        amount_minor=p["amount_minor"], paid_minor=p["paid"], kept_at=now)
                       if outcome == "kept" else
                       PromiseToPayBroken(customer_id=p["customer_id"], promise_id=str(p["promise_id"]),
                                          amount_minor=p["amount_minor"], paid_minor=p["paid"],
                                          promised_date=p["promised_date"], broken_at=now))
            events.append(self._event(payload, p["tenant_id"], str(p["case_id"]), now))
            touched.add((p["tenant_id"], p["customer_id"]))
            if outcome == "broken":
                broken.append((p["tenant_id"], p["customer_id"], p["case_id"], str(p["promise_id"]), "broken_promise"))
        for plan in plans:
            instalments = [Instalment(r["sequence"], r["due_date"], r["amount_minor"]) for r in await conn.fetch(
                "SELECT * FROM plan_instalments WHERE tenant_id = $1 AND plan_id = $2 ORDER BY sequence",
                plan["tenant_id"], plan["plan_id"])]
            timezone = await conn.fetchval(
                "SELECT timezone FROM dunning_customers WHERE tenant_id = $1 AND customer_id = $2",
                plan["tenant_id"], plan["customer_id"]) or "UTC"
            state = plan_state(instalments, plan["paid"], now, plan["grace_days"], timezone)
            open_next = next((i for i, covered in zip(instalments, state.paid) if covered < i.amount_minor), None)
            next_check = end_of_day(open_next.due_date + timedelta(days=plan["grace_days"]), timezone) if open_next else None
            await conn.execute(
                "UPDATE payment_plans SET status = $3, paid_minor = $4, missed_sequence = $5, next_check_at = $6,"
                " resolved_at = CASE WHEN $3::text <> 'active' THEN $7::timestamptz END WHERE tenant_id = $1 AND plan_id = $2",
                plan["tenant_id"], plan["plan_id"], state.status, plan["paid"], state.missed, next_check, now)
            if state.status == "active":
                continue
            payload = (PaymentPlanCompleted(customer_id=plan["customer_id"], plan_id=str(plan["plan_id"]),
                                            paid_minor=plan["paid"], completed_at=now)
                       if state.status == "completed" else
                       PaymentPlanBroken(customer_id=plan["customer_id"], plan_id=str(plan["plan_id"]),
                                         missed_sequence=state.missed, paid_minor=plan["paid"], broken_at=now))
            events.append(self._event(payload, plan["tenant_id"], str(plan["case_id"]), now))
            touched.add((plan["tenant_id"], plan["customer_id"]))
            if state.status == "broken":
                broken.append((plan["tenant_id"], plan["customer_id"], plan["case_id"], str(plan["plan_id"]),
                               "broken_plan"))
        for tenant_id, customer_id in sorted(touched):
            await repo.refresh_customer(conn, tenant_id, customer_id, now)
        # a broken promise or plan is a call for a collector
        events += await place_new(conn, await task_repo.from_broken(conn, broken, now), now)
        await add_events(conn, self.topics.dunning, events)
        return len(events)

    async def _remind_instalments(self, conn: asyncpg.Connection, now: datetime, limit: int) -> int:
        """A reminder before each instalment still to pay (one per instalment, by its key)."""
        rows = await conn.fetch(
            f"""SELECT i.*, a.customer_id, a.case_id, a.currency, {_PAID_SINCE} AS paid,
                   (SELECT coalesce(sum(amount_minor), 0) FROM plan_instalments e WHERE e.tenant_id = i.tenant_id
                     AND e.plan_id = i.plan_id AND e.sequence < i.sequence) AS before,
                   (SELECT count(*) FROM plan_instalments e WHERE e.tenant_id = i.tenant_id AND e.plan_id = i.plan_id) AS n
                FROM plan_instalments i JOIN payment_plans a USING (tenant_id, plan_id)
                WHERE i.reminded_at IS NULL AND i.remind_at <= $1 AND a.status = 'active'
                ORDER BY i.remind_at LIMIT $2 FOR UPDATE OF i SKIP LOCKED""", now, limit)
        events = []
        for r in rows:
            await conn.execute("UPDATE plan_instalments SET reminded_at = $4 WHERE tenant_id = $1 AND plan_id = $2"
                               " AND sequence = $3", r["tenant_id"], r["plan_id"], r["sequence"], now)
            still = r["amount_minor"] - max(0, min(r["amount_minor"], r["paid"] - r["before"]))
            if still <= 0:
                continue
            key = f"plan:{r['plan_id']}:{r['sequence']}"
            events.append(self._event(NotificationRequested(
                customer_id=r["customer_id"], notification_key=key, case_id=str(r["case_id"]), step="plan_instalment",
                channel="email", template="reminder_pre_due", requested_at=now,
                items=[NoticeItem(invoice_id=str(r["plan_id"]), number=f"{r['sequence']}/{r['n']}", currency=r["currency"],
                                  open_amount_minor=still, due_date=r["due_date"])]),
                r["tenant_id"], str(r["case_id"]), now))
        await add_events(conn, self.topics.dunning, events)
        return len(rows)

    async def _alert_disputes(self, conn: asyncpg.Connection, now: datetime, limit: int) -> int:
        rows = await conn.fetch(
            "UPDATE disputes SET alerted_at = $1 WHERE (tenant_id, dispute_id) IN (SELECT tenant_id, dispute_id"
            " FROM disputes WHERE status = 'open' AND alerted_at IS NULL AND opened_at + $2::interval <= $1"
            " ORDER BY opened_at LIMIT $3 FOR UPDATE SKIP LOCKED) RETURNING *", now, self.dispute_alert, limit)
        await add_events(conn, self.topics.dunning, [self._event(DisputeAgeing(
            customer_id=r["customer_id"], dispute_id=str(r["dispute_id"]), reason_code=r["reason_code"],
            opened_at=r["opened_at"], age_days=(now - r["opened_at"]).days), r["tenant_id"], str(r["dispute_id"]), now)
            for r in rows])
        return len(rows)
