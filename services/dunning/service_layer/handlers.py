"""Dunning use cases: event handlers (run inside the consumer's inbox transaction), the step
timer that turns due steps into consolidated notices, and the commands of the API."""
from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg

from services.dunning.adapters import case_file
from services.dunning.adapters import cases as repo
from services.dunning.adapters import policy_store
from services.dunning.adapters import tasks as task_repo
from services.dunning.adapters.policy_store import PolicyBook, PolicyRef, Resolver
from services.dunning.service_layer.arrangements import Arrangements
from services.dunning.service_layer.desk import place_new
from services.dunning.domain.charges import compensation_minor, interest_on_balance, load_jurisdictions
from services.dunning.domain.consolidation import DueStep, Item, Notice, consolidate, days_overdue
from services.dunning.domain.policy import PolicySpec, notification_key, plan_item, step_due_at
from shared.clock import Clock
from shared.contract import (
    BalanceConfirmationRequested, BalanceContested, CaseEscalatedToLegal, DisputeOpened, DunningStepExecuted, Envelope,
    InterestAccrued, InvoiceAdjusted, LateFeeAssessed, NotificationRequested, PaymentReversed, Topics, new_envelope,
)
from shared.contract.events import InterestPeriod
from shared.http import DomainError
from shared.outbox import add_events
from shared.processing import Event, Handler, each

SOURCE = "dunning"
Key = tuple[str, uuid.UUID]  # (tenant, invoice) or (tenant, case)


def _last_per(events: list[Event], key) -> dict:
    """The last event per key, keys sorted (rows are then locked in one order by every transaction)."""
    latest = {key(e): e for e in events}
    return {k: latest[k] for k in sorted(latest)}


class Dunning:
    def __init__(self, pool: asyncpg.Pool, clock: Clock, topics: Topics, dispute_pause_days: int = 30,
                 book: PolicyBook | None = None, dispute_alert_days: int = 14) -> None:
        self.pool, self.clock, self.topics = pool, clock, topics
        self.dispute_pause = timedelta(days=dispute_pause_days)
        self.book = book or PolicyBook()
        self.arrangements = Arrangements(pool, clock, topics, self.dispute_pause, timedelta(days=dispute_alert_days),
                                         self.book)
        self.portal = None  # the customer portal (bootstrap): its signed link goes into each notice

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
            "NotificationFailed": self.on_notifications_failed,
        }

    # -- customers and policies -----------------------------------------------------------------

    async def on_customers_upserted(self, conn: asyncpg.Connection, events: list[Event]) -> None:
        latest = _last_per(events, lambda e: (e.envelope.tenant_id, e.payload.customer_id))
        await conn.execute(
            "INSERT INTO dunning_customers (tenant_id, customer_id, timezone, language)"
            " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])"
            " ON CONFLICT (tenant_id, customer_id) DO UPDATE SET timezone = EXCLUDED.timezone,"
            " language = EXCLUDED.language, updated_at = now()",
            [k[0] for k in latest], [k[1] for k in latest], [e.payload.timezone for e in latest.values()],
            [e.payload.language for e in latest.values()],
        )

    async def on_risk_assessed(self, conn: asyncpg.Connection, events: list[Event]) -> None:
        """A customer moving to another segment gets that segment's policy for the steps to come."""
        latest = _last_per(events, lambda e: (e.envelope.tenant_id, e.payload.customer_id))
        changed = await conn.fetch(
            "WITH old AS (SELECT k.tenant_id, k.customer_id, c.risk_segment FROM unnest($1::text[], $2::text[])"
            " AS k(tenant_id, customer_id) LEFT JOIN dunning_customers c USING (tenant_id, customer_id))"
            " INSERT INTO dunning_customers (tenant_id, customer_id, risk_segment, risk_score, risk_grade)"
            " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::text[])"
            " ON CONFLICT (tenant_id, customer_id) DO UPDATE SET risk_segment = EXCLUDED.risk_segment,"
            " risk_score = EXCLUDED.risk_score, risk_grade = EXCLUDED.risk_grade, updated_at = now()"
            " RETURNING tenant_id, customer_id,"
            " (SELECT old.risk_segment FROM old WHERE old.tenant_id = dunning_customers.tenant_id"
            "  AND old.customer_id = dunning_customers.customer_id) IS DISTINCT FROM risk_segment AS moved",
            [k[0] for k in latest], [k[1] for k in latest], [e.payload.segment for e in latest.values()],
            [e.payload.score for e in latest.values()], [e.payload.grade for e in latest.values()],
        )
        moved = [(r["tenant_id"], r["customer_id"]) for r in changed if r["moved"]]
        if moved:
            await self.replan(conn, customers=moved)

    async def _customers(self, conn: asyncpg.Connection, keys: set[tuple[str, str]]) -> dict[tuple[str, str], asyncpg.Record]:
        rows = await conn.fetch(
            "SELECT c.tenant_id, c.customer_id, c.timezone, c.risk_segment, c.customer_group"
            " FROM unnest($1::text[], $2::text[]) AS k(tenant_id, customer_id)"
            " JOIN dunning_customers c USING (tenant_id, customer_id)",
            [k[0] for k in keys], [k[1] for k in keys],
        )
        return {(r["tenant_id"], r["customer_id"]): r for r in rows}

    async def _resolve(self, conn: asyncpg.Connection, customers: dict, tenants: set[str]):
        resolver: Resolver = await PolicyBook.resolver(conn, tenants)

        def ref_of(tenant_id: str, customer_id: str) -> PolicyRef:
            c = customers.get((tenant_id, customer_id))
            return resolver(tenant_id, c["risk_segment"] if c else None, c["customer_group"] if c else None)
        return ref_of

    async def replan(self, conn: asyncpg.Connection, *, customers: list[tuple[str, str]] | None = None,
                     tenants: list[str] | None = None) -> int:
        """Open items whose policy is no longer the one that applies (a new version, another
        segment or group) take the new policy for their future steps; what was sent stays sent,
        and a step of the same name is not sent again. Returns the items re-planned."""
        now = self.clock.now()
        items = await conn.fetch(
            "SELECT i.tenant_id, i.invoice_id, i.case_id, i.customer_id, i.due_date, i.round, i.policy_tenant,"
            " i.policy_name, i.policy_version FROM case_items i"
            " WHERE i.status = 'open' AND (($1::text[] IS NOT NULL AND (i.tenant_id, i.customer_id) IN"
            "   (SELECT * FROM unnest($1::text[], $2::text[]))) OR ($3::text[] IS NOT NULL AND"
            "   (i.tenant_id = ANY($3::text[]) OR '*' = ANY($3::text[]))))"
            " ORDER BY i.tenant_id, i.case_id",
            [c[0] for c in customers] if customers else None, [c[1] for c in customers] if customers else None,
            tenants)
        if not items:
            return 0
        await conn.execute(
            "SELECT 1 FROM cases WHERE (tenant_id, case_id) IN (SELECT * FROM unnest($1::text[], $2::uuid[]))"
            " ORDER BY tenant_id, case_id FOR UPDATE",
            [i["tenant_id"] for i in items], [i["case_id"] for i in items])
        customer_rows = await self._customers(conn, {(i["tenant_id"], i["customer_id"]) for i in items})
        ref_of = await self._resolve(conn, customer_rows, {i["tenant_id"] for i in items})
        moved, steps = [], []
        for i in items:
            ref = ref_of(i["tenant_id"], i["customer_id"])
            if ref == PolicyRef(i["policy_tenant"], i["policy_name"], i["policy_version"]):
                continue
            spec = await self.book.spec(conn, ref)
            c = customer_rows.get((i["tenant_id"], i["customer_id"]))
            moved.append((i["tenant_id"], i["invoice_id"], ref))
            steps += [(i["tenant_id"], i["invoice_id"], i["round"], s.name, s.position, s.channel, s.template,
                       s.offset_days, s.due_at)
                      for s in plan_item(spec, i["due_date"], c["timezone"] if c else "UTC") if s.due_at > now]
        if not moved:
            return 0
        await repo.cancel_steps(conn, [(m[0], m[1]) for m in moved], "replanned", after=now)
        await conn.execute(
            "UPDATE case_items i SET policy_tenant = k.pt, policy_name = k.pn, policy_version = k.pv"
            " FROM unnest($1::text[], $2::uuid[], $3::text[], $4::text[], $5::int[]) AS k(tenant_id, invoice_id, pt, pn, pv)"
            " WHERE i.tenant_id = k.tenant_id AND i.invoice_id = k.invoice_id",
            [m[0] for m in moved], [m[1] for m in moved], [m[2].tenant_id for m in moved], [m[2].name for m in moved],
            [m[2].version for m in moved])
        # a cancelled step of the old plan must not block the new plan's step of the same name
        await conn.execute(
            "DELETE FROM item_steps s USING unnest($1::text[], $2::uuid[]) AS k(tenant_id, invoice_id)"
            " WHERE s.tenant_id = k.tenant_id AND s.invoice_id = k.invoice_id AND s.status = 'cancelled'"
            " AND s.reason = 'replanned'", [m[0] for m in moved], [m[1] for m in moved])
        await repo.insert_steps(conn, steps)
        await repo.refresh(conn, {(i["tenant_id"], i["case_id"]) for i in items}, now)
        return len(moved)

    # -- invoices and payments ------------------------------------------------------------------

    async def on_invoices_issued(self, conn: asyncpg.Connection, events: list[Event]) -> None:
        """Each invoice joins its customer's open case in its currency (opened if there is
        none), with its own schedule from the customer's policy and timezone."""
        now = self.clock.now()
        first = {(e.envelope.tenant_id, e.payload.invoice_id): e for e in reversed(events)}  # the first one counts
        keys = {(t, e.payload.customer_id) for (t, _), e in first.items()}
        customers = await self._customers(conn, keys)
        ref_of = await self._resolve(conn, customers, {t for t, _ in keys})
        case_of = await repo.open_cases(
            conn, {(t, e.payload.customer_id, e.payload.currency) for (t, _), e in first.items()}, now)
        rows, plans = [], {}
        for (tenant_id, invoice_id), e in sorted(first.items()):
            p = e.payload
            ref = ref_of(tenant_id, p.customer_id)
            case_id = case_of[(tenant_id, p.customer_id, p.currency)]
            rows.append((tenant_id, uuid.UUID(invoice_id), case_id, p.customer_id, p.number, p.currency, p.amount_minor,
                         p.due_date, ref.tenant_id, ref.name, ref.version, now))
            c = customers.get((tenant_id, p.customer_id))
            plans[(tenant_id, uuid.UUID(invoice_id))] = (case_id, plan_item(
                await self.book.spec(conn, ref), p.due_date, c["timezone"] if c else "UTC"))
        inserted = await repo.insert_items(conn, rows)
        await repo.insert_steps(conn, [
            (t, i, 0, s.name, s.position, s.channel, s.template, s.offset_days, s.due_at)
            for (t, i) in sorted(inserted) for s in plans[(t, i)][1]])
        await repo.advance(conn, inserted)

    async def _reduce(self, conn: asyncpg.Connection, amounts: dict[tuple[str, str], int], reason: str) -> None:
        """Payment takes what it covers out of dunning: open amounts go down, a settled item
        leaves its case (its steps cancelled), a case without open items closes."""
        if not amounts:
            return
        now = self.clock.now()
        keyed = {(t, uuid.UUID(i)): v for (t, i), v in amounts.items()}
        items = await repo.lock_cases_of(conn, keyed)
        keyed = {k: v for k, v in keyed.items() if k in items}
        if keyed:
            rows = await repo.reduce_items(conn, keyed, reason, now)
            await repo.refresh(conn, {(r["tenant_id"], r["case_id"]) for r in rows}, now)

    @staticmethod
    def _lowest(pairs) -> dict[tuple[str, str], int]:
        """Open amounts only go down within a batch of payments: the lowest one is where they end."""
        lowest: dict[tuple[str, str], int] = {}
        for key, amount in pairs:
            lowest[key] = min(amount, lowest.get(key, amount))
        return lowest

    async def on_allocations(self, conn: asyncpg.Connection, events: list[Event]) -> None:
        """PaymentReceived, CreditApplied, CreditNoteIssued: what each allocation leaves open,
        and what was paid when (for backtests and the collection reports)."""
        now = self.clock.now()
        await self.arrangements.on_credit_notes(conn, [
            (e.envelope.tenant_id, e.payload.external_id) for e in events
            if e.envelope.type == "CreditNoteIssued" and e.payload.external_id.startswith(("dispute:", "settlement:"))],
            now)
        await self._record_payments(conn, [
            (e.envelope.tenant_id, uuid.UUID(a.invoice_id), self._payment_ref(e.payload), a.amount_minor,
             self._paid_at(e), now) for e in events for a in e.payload.allocations])
        await self._reduce(conn, self._lowest(
            ((e.envelope.tenant_id, a.invoice_id), a.invoice_open_minor) for e in events for a in e.payload.allocations),
            "paid")
        await self.arrangements.on_payments(
            conn, {(e.envelope.tenant_id, e.payload.customer_id) for e in events if e.payload.allocations}, now)

    @staticmethod
    def _payment_ref(p) -> str:
        return getattr(p, "payment_id", None) or f"credit-note:{p.credit_note_id}"

    @staticmethod
    def _paid_at(e: Event) -> datetime:
        p = e.payload
        return getattr(p, "received_at", None) or getattr(p, "applied_at", None) or e.envelope.time

    @staticmethod
    async def _record_payments(conn: asyncpg.Connection, rows: list[tuple]) -> None:
        """rows: (tenant, invoice, payment ref, amount, paid at, recorded at); invoices dunning never
        held are left out."""
        if rows:
            await conn.execute(
                "INSERT INTO item_payments (tenant_id, invoice_id, payment_ref, amount_minor, paid_at, recorded_at)"
                " SELECT k.* FROM unnest($1::text[], $2::uuid[], $3::text[], $4::bigint[], $5::timestamptz[],"
                " $6::timestamptz[]) AS k(tenant_id, invoice_id, payment_ref, amount_minor, paid_at, recorded_at)"
                " WHERE EXISTS (SELECT 1 FROM case_items i WHERE i.tenant_id = k.tenant_id AND i.invoice_id = k.invoice_id)"
                " ON CONFLICT DO NOTHING", *[list(c) for c in zip(*rows)])

    async def on_invoices_paid(self, conn: asyncpg.Connection, events: list[Event]) -> None:
        await self._reduce(conn, {(e.envelope.tenant_id, e.payload.invoice_id): 0 for e in events}, "paid")

    async def on_invoices_cancelled(self, conn: asyncpg.Connection, events: list[Event]) -> None:
        await self._reduce(conn, {(e.envelope.tenant_id, e.payload.invoice_id): 0 for e in events}, "cancelled")

    async def on_invoices_overdue(self, conn: asyncpg.Connection, events: list[Event]) -> None:
        first = {(e.envelope.tenant_id, e.payload.invoice_id): e.payload.overdue_since for e in reversed(events)}
        keys = sorted(first)
        await conn.execute(
            "UPDATE case_items i SET overdue_since = k.since FROM unnest($1::text[], $2::uuid[], $3::timestamptz[])"
            " AS k(tenant_id, invoice_id, since) WHERE i.tenant_id = k.tenant_id AND i.invoice_id = k.invoice_id"
            " AND i.overdue_since IS NULL",
            [k[0] for k in keys], [uuid.UUID(k[1]) for k in keys], [first[k] for k in keys],
        )

    async def _reopen(self, conn: asyncpg.Connection, tenant_id: str, invoice_id: uuid.UUID, open_minor: int) -> None:
        """The invoice is owed again. An open item just takes the new amount; a settled one
        joins the customer's open case in a new round with its own schedule: its future steps,
        and at once the latest past one (the customer hears that they owe again, even when every
        step of the last round had passed)."""
        now = self.clock.now()
        item = (await repo.lock_cases_of(conn, [(tenant_id, invoice_id)])).get((tenant_id, invoice_id))
        if item is None:
            return
        if item["status"] == "open":
            await conn.execute("UPDATE case_items SET open_minor = $3 WHERE tenant_id = $1 AND invoice_id = $2",
                               tenant_id, invoice_id, open_minor)
            return
        case_id = (await repo.open_cases(conn, [(tenant_id, item["customer_id"], item["currency"])], now))[
            (tenant_id, item["customer_id"], item["currency"])]
        customers = await self._customers(conn, {(tenant_id, item["customer_id"])})
        ref = (await self._resolve(conn, customers, {tenant_id}))(tenant_id, item["customer_id"])
        c = customers.get((tenant_id, item["customer_id"]))
        round_ = item["round"] + 1
        await conn.execute(
            "UPDATE case_items SET status = 'open', open_minor = $3, round = $4, case_id = $5, closed_reason = NULL,"
            " closed_at = NULL, joined_at = $6, policy_tenant = $7, policy_name = $8, policy_version = $9"
            " WHERE tenant_id = $1 AND invoice_id = $2",
            tenant_id, invoice_id, open_minor, round_, case_id, now, ref.tenant_id, ref.name, ref.version)
        steps = plan_item(await self.book.spec(conn, ref), item["due_date"], c["timezone"] if c else "UTC")
        await repo.insert_steps(conn, [(tenant_id, invoice_id, round_, s.name, s.position, s.channel, s.template,
                                        s.offset_days, s.due_at) for s in steps])
        await repo.refresh(conn, {(tenant_id, case_id), (tenant_id, item["case_id"])}, now)

    async def on_payment_reversed(self, conn: asyncpg.Connection, env: Envelope, p: PaymentReversed) -> None:
        """A bounced payment: the invoices it paid are dunned again."""
        await self._record_payments(conn, [(env.tenant_id, uuid.UUID(a.invoice_id), f"reversal:{p.payment_id}",
                                            -a.amount_minor, p.reversed_at, self.clock.now()) for a in p.reopened])
        for a in p.reopened:
            await self._reopen(conn, env.tenant_id, uuid.UUID(a.invoice_id), a.invoice_open_minor)

    async def on_invoice_adjusted(self, conn: asyncpg.Connection, env: Envelope, p: InvoiceAdjusted) -> None:
        """New amounts count from now on; a moved due date moves the steps not yet taken; an
        invoice adjusted up after it was settled is dunned again."""
        now = self.clock.now()
        invoice_id = uuid.UUID(p.invoice_id)
        item = (await repo.lock_cases_of(conn, [(env.tenant_id, invoice_id)])).get((env.tenant_id, invoice_id))
        if item is None:
            return
        await conn.execute(
            "UPDATE case_items SET number = $3, amount_minor = $4, due_date = $5 WHERE tenant_id = $1 AND invoice_id = $2",
            env.tenant_id, invoice_id, p.number, p.amount_minor, p.due_date)
        if p.open_amount_minor > 0:
            await self._reopen(conn, env.tenant_id, invoice_id, p.open_amount_minor)
        else:
            await self._reduce(conn, {(env.tenant_id, p.invoice_id): 0}, "paid")
        if "due_date" in p.changes:
            row = await conn.fetchrow(
                "SELECT i.round, i.case_id, i.policy_tenant, i.policy_name, i.policy_version,"
                " coalesce(c.timezone, 'UTC') AS timezone FROM case_items i LEFT JOIN dunning_customers c"
                " USING (tenant_id, customer_id) WHERE i.tenant_id = $1 AND i.invoice_id = $2", env.tenant_id, invoice_id)
            spec = await self.book.spec(conn, PolicyRef(row["policy_tenant"], row["policy_name"], row["policy_version"]))
            steps = await conn.fetch(
                "SELECT step, offset_days FROM item_steps WHERE tenant_id = $1 AND invoice_id = $2 AND round = $3"
                " AND status = 'scheduled'", env.tenant_id, invoice_id, row["round"])
            await conn.executemany(
                "UPDATE item_steps SET due_at = $5 WHERE tenant_id = $1 AND invoice_id = $2 AND round = $3 AND step = $4",
                [(env.tenant_id, invoice_id, row["round"], s["step"],
                  step_due_at(p.due_date, s["offset_days"], row["timezone"], spec.send_hour_local)) for s in steps])
            await repo.refresh(conn, [(env.tenant_id, row["case_id"])], now)

    # -- the step timer -----------------------------------------------------------------------

    async def next_step_due(self) -> datetime | None:
        """When the next case falls due (the step timer sleeps until then)."""
        return await repo.next_due(self.pool, self.clock.now())

    async def claim_due_steps(self, limit: int = 200) -> int:
        """Fire the cases whose steps are due: one notice per channel per case, listing every
        item due (domain/consolidation.py), with its fees and interest, each charged once. Any
        number of workers may run this: a case is claimed with SKIP LOCKED, its steps marked in
        the same transaction as the notices go into the outbox."""
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            claimed = await repo.due_cases(conn, now, limit)
            if not claimed:
                return 0
            await self._fire(conn, claimed, now)
            return len(claimed)

    async def _fire(self, conn: asyncpg.Connection, claimed: list[asyncpg.Record], now: datetime) -> int:
        """Decide, write and publish (to the outbox) what the claimed cases send; the events written."""
        items = await repo.claimed_items(conn, claimed, now)
        live = [i for i in items if not i["paused"]]
        steps = await repo.due_steps(conn, live, now)
        specs = await self.book.specs(conn, (PolicyRef(i["policy_tenant"], i["policy_name"], i["policy_version"])
                                             for i in live))
        spec_of = {(i["tenant_id"], i["invoice_id"]): specs[PolicyRef(i["policy_tenant"], i["policy_name"],
                                                                     i["policy_version"])] for i in live}
        items_by_case: dict[Key, list] = defaultdict(list)
        for i in live:
            items_by_case[(i["tenant_id"], i["case_id"])].append(i)
        steps_by_item: dict[Key, list] = defaultdict(list)
        for s in steps:
            steps_by_item[(s["tenant_id"], s["invoice_id"])].append(s)

        # First every case's decision and charges; the charges are written before the notices
        # are made, because a notice states the fees and interest to date, the new ones included
        # (a charge already made, e.g. an invoice's compensation, is not new and not added twice).
        decided = []
        charges: list[tuple] = []
        for case in claimed:
            rows = items_by_case.get((case["tenant_id"], case["case_id"]), [])
            if not rows:
                continue
            tenant_id = case["tenant_id"]
            today = now.astimezone(ZoneInfo(rows[0]["timezone"])).date()
            due = []
            for i in rows:
                by_name = {s.name: s for s in spec_of[(tenant_id, i["invoice_id"])].steps}
                for s in steps_by_item.get((tenant_id, i["invoice_id"]), []):
                    policy_step = by_name.get(s["step"])
                    due.append(DueStep(str(i["invoice_id"]), i["round"], s["step"], s["position"], s["offset_days"],
                                       s["channel"], s["template"],
                                       policy_step.fee if policy_step else {},
                                       policy_step.min_overdue if policy_step else {}))
            decision = consolidate(case["currency"], [self._item(i) for i in rows], due, today)
            charges += self._charges(tenant_id, case, rows, decision.notices, spec_of, today, now)
            decided.append((case, decision, today))
        new = await repo.insert_charges(conn, charges)
        added: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])  # (tenant, invoice) -> [fees, interest]
        for ch in charges:
            if ch[1] in new:
                added[(ch[0], str(ch[4]))][1 if ch[2] == "interest" else 0] += ch[7]
        # the items' ids as asyncpg gave them (no uuid.UUID(str) per line: this runs per step)
        invoice_uuid = {str(i["invoice_id"]): i["invoice_id"] for i in live}
        no_charges = (0, 0)

        marks, notices, counts, escalated = [], [], {}, []
        for case, decision, today in decided:
            tenant_id, case_id, currency = case["tenant_id"], str(case["case_id"]), case["currency"]
            sequence = case["notices"]
            notice_of_channel = {}
            for notice in decision.notices:
                if notice.step.channel == "legal":  # not a message: the case goes to legal (below)
                    escalated.append((case, notice))
                    continue
                sequence += 1
                notice_id = uuid.uuid5(case["case_id"], f"notice:{sequence}")
                notice_of_channel[notice.step.channel] = notice_id
                key = notification_key(case_id, notice.step.name, notice.step.channel, sequence)
                # NoticeItem's fields as JSON, built directly: this runs for every notice
                lines = []
                for i in notice.items:
                    fees, interest = added.get((tenant_id, i.invoice_id), no_charges)
                    lines.append({"invoice_id": i.invoice_id, "number": i.number, "currency": currency,
                                  "open_amount_minor": i.open_minor, "due_date": i.due_date.isoformat(),
                                  "days_overdue": days_overdue(i, today), "fees_minor": i.fees_minor + fees,
                                  "interest_minor": i.interest_minor + interest})
                total = sum(x["open_amount_minor"] + x["fees_minor"] + x["interest_minor"] for x in lines)
                notices.append((tenant_id, notice_id, case["case_id"], case["customer_id"], sequence, notice.step.name,
                                notice.step.channel, notice.step.template, key, currency, lines, total, now,
                                invoice_uuid[notice.lead_invoice]))
            counts[(tenant_id, case["case_id"])] = sequence - case["notices"]
            for (invoice_id, round_, name), channel in decision.executed.items():
                marks.append((tenant_id, invoice_uuid[invoice_id], round_, name, "executed", None,
                              notice_of_channel.get(channel)))
            for (invoice_id, round_, name), reason in decision.skipped.items():
                marks.append((tenant_id, invoice_uuid[invoice_id], round_, name, "skipped", reason, None))
        await repo.mark_steps(conn, marks, now)
        # the notices with their NotificationRequested and DunningStepExecuted; a call or letter
        # step is a task for a person instead of a message
        tasks = []
        for tenant_id in sorted({n[0] for n in notices}):
            mine = [n[1:] for n in notices if n[0] == tenant_id]
            links = (await self.portal.notice_links(conn, tenant_id, {n[2] for n in mine}, now)
                     if self.portal is not None else {})
            await repo.insert_notices(conn, tenant_id, mine, self.topics.dunning, now, links)
            tasks += await task_repo.from_steps(conn, tenant_id, [n[0] for n in mine
                                                                  if n[5] not in repo.NOTIFIER_CHANNELS], now)
            # the desk's rules (high amount, high risk, unanswered notices) on the messages sent
            tasks += await task_repo.from_rules(conn, tenant_id, [n[0] for n in mine if n[5] in repo.NOTIFIER_CHANNELS],
                                                now, tuple(repo.NOTIFIER_CHANNELS))
        events = [self._charge_event(ch, now) for ch in charges if ch[1] in new] + await place_new(conn, tasks, now)
        for case, notice in escalated:
            events.append(await self._escalate(conn, case, notice, now))
        await add_events(conn, self.topics.dunning, events)
        await repo.refresh(conn, [(c["tenant_id"], c["case_id"]) for c in claimed], now, counts)
        return len(notices) + len(events)

    async def on_notifications_failed(self, conn: asyncpg.Connection, events: list[Event]) -> None:
        """The notifier could not deliver a dunning notice (opted out, no address, bounced): a
        collector is asked to reach the customer another way, once per notice."""
        now = self.clock.now()
        rows = await task_repo.from_failures(conn, [(e.envelope.tenant_id, e.payload.notification_key, e.payload.reason)
                                                    for e in events], now)
        await add_events(conn, self.topics.dunning, await place_new(conn, rows, now))

    async def _escalate(self, conn: asyncpg.Connection, case, notice: Notice, now: datetime) -> Envelope:
        """The legal step: automatic dunning of the case ends (its invoices stay owed, payments
        still count), and the case file, frozen now, goes with CaseEscalatedToLegal."""
        tenant_id, case_id = case["tenant_id"], case["case_id"]
        await conn.execute(
            "UPDATE cases SET status = 'legal', closed_reason = 'legal', closed_at = $3 WHERE tenant_id = $1"
            " AND case_id = $2", tenant_id, case_id, now)
        open_items = await conn.fetch(
            "SELECT invoice_id FROM case_items WHERE tenant_id = $1 AND case_id = $2 AND status = 'open'",
            tenant_id, case_id)
        await repo.cancel_steps(conn, [(tenant_id, r["invoice_id"]) for r in open_items], "legal")
        document = await case_file.build(conn, tenant_id, case_id, now)
        await conn.execute(
            "INSERT INTO case_files (tenant_id, case_id, document, created_at) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT DO NOTHING", tenant_id, case_id, document, now)
        return new_envelope(CaseEscalatedToLegal(
            customer_id=case["customer_id"], case_id=str(case_id), currency=case["currency"],
            total_minor=document["statement"]["totals"]["total_minor"],
            invoice_ids=[str(r["invoice_id"]) for r in open_items], case_file=document, escalated_at=now),
            source=SOURCE, tenant_id=tenant_id, subject=str(case_id), time=now)

    @staticmethod
    def _item(r: asyncpg.Record) -> Item:
        return Item(str(r["invoice_id"]), r["number"], r["due_date"], r["open_minor"], r["round"], r["in_dunning"],
                    r["fees_minor"], r["interest_minor"])

    def _charges(self, tenant_id: str, case, rows, notices: list[Notice], spec_of, today: date,
                 now: datetime) -> list[tuple]:
        """What the notices charge: each step's fee (once per notice, or per invoice it lists),
        and under a jurisdiction the fixed compensation (once per invoice) and the interest
        accrued since the last charge (keyed by its end date: never charged twice)."""
        if not notices:
            return []
        currency, case_id, customer_id = case["currency"], case["case_id"], case["customer_id"]
        by_id = {str(r["invoice_id"]): r for r in rows}
        out: list[tuple] = []

        def charge(charge_id: str, kind: str, invoice_id: str, amount: int, start=None, end=None, detail=None):
            if amount > 0:
                out.append((tenant_id, charge_id, kind, case_id, uuid.UUID(invoice_id), customer_id, currency, amount,
                            start, end, detail or {}, now))

        for notice in notices:
            lead = by_id[notice.lead_invoice]
            spec: PolicySpec = spec_of[(tenant_id, lead["invoice_id"])]
            fee = notice.step.fee.get(currency, 0)
            targets = [i.invoice_id for i in notice.items] if spec.fee_per == "invoice" else [notice.lead_invoice]
            for invoice_id in targets:
                charge(f"fee:{invoice_id}:r{by_id[invoice_id]['round']}:{notice.step.name}", "fee", invoice_id, fee,
                       detail={"step": notice.step.name})
        seen: set[str] = set()
        jurisdictions = load_jurisdictions()
        for notice in notices:
            for item in notice.items:
                if item.invoice_id in seen or item.due_date >= today:
                    continue
                seen.add(item.invoice_id)
                spec = spec_of[(tenant_id, by_id[item.invoice_id]["invoice_id"])]
                if spec.charges is None:
                    continue
                j = jurisdictions[spec.charges.jurisdiction]
                if spec.charges.compensation:
                    charge(f"compensation:{item.invoice_id}", "compensation", item.invoice_id,
                           compensation_minor(j, currency), detail={"jurisdiction": j.code})
                if spec.charges.interest:
                    row = by_id[item.invoice_id]
                    start = row["interest_until"] or item.due_date + timedelta(days=1)
                    # on what was owed each day: a part payment inside the span splits it
                    accrued = interest_on_balance(j, item.open_minor, zip(row["pay_days"] or (), row["pay_amounts"] or ()),
                                                  start, today) if today > start else None
                    if accrued and accrued.amount_minor > 0:
                        charge(f"interest:{item.invoice_id}:{today.isoformat()}", "interest", item.invoice_id,
                               accrued.amount_minor, start, today,
                               {"jurisdiction": j.code, "principal_minor": item.open_minor,
                                "periods": [{"start": p.start.isoformat(), "end": p.end.isoformat(), "days": p.days,
                                             "annual_rate": str(p.annual_rate), "principal_minor": p.principal_minor}
                                            for p in accrued.pieces]})
        return out

    def _charge_event(self, ch: tuple, now: datetime) -> Envelope:
        tenant_id, charge_id, kind, case_id, invoice_id, customer_id, currency, amount, start, end, detail, _ = ch
        if kind == "interest":
            payload = InterestAccrued(
                customer_id=customer_id, accrual_id=charge_id, case_id=str(case_id), invoice_id=str(invoice_id),
                currency=currency, amount_minor=amount, principal_minor=detail["principal_minor"],
                jurisdiction=detail["jurisdiction"], periods=[InterestPeriod(**p) for p in detail["periods"]],
                assessed_at=now)
        else:
            reason = (f"statutory compensation ({detail['jurisdiction']})" if kind == "compensation"
                      else f"dunning fee, step {detail['step']}")
            payload = LateFeeAssessed(customer_id=customer_id, fee_id=charge_id, case_id=str(case_id),
                                      invoice_id=str(invoice_id), currency=currency, amount_minor=amount,
                                      reason=reason, assessed_at=now)
        return new_envelope(payload, source=SOURCE, tenant_id=tenant_id, subject=str(case_id), time=now)

    # -- balance confirmations and disputes --------------------------------------------------------

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
            await repo.refresh_customer(conn, env.tenant_id, p.customer_id, now)
            event = DisputeOpened(customer_id=p.customer_id, dispute_id=str(dispute_id), origin="balance_confirmation",
                                  reason=p.reason, opened_at=now)
            await add_events(conn, self.topics.dunning, [new_envelope(
                event, source=SOURCE, tenant_id=env.tenant_id, subject=str(dispute_id), time=now, caused_by=env)])


class Commands:
    """What people change through the API: policies, holds, "do not chase", customer groups.
    One transaction each; every change that moves timers re-plans or refreshes the cases."""

    def __init__(self, dunning: Dunning) -> None:
        self.dunning, self.pool, self.clock = dunning, dunning.pool, dunning.clock

    async def add_policy(self, tenant_id: str, spec: PolicySpec, source: str, by: str, activate: bool) -> asyncpg.Record:
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            version = await policy_store.add_version(conn, tenant_id, spec, source, by, now)
            if activate:
                await self._activate(conn, tenant_id, spec.name, version, now)
            return await policy_store.get(conn, tenant_id, spec.name, version)

    async def activate_policy(self, tenant_id: str, name: str, version: int) -> asyncpg.Record:
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            await self._activate(conn, tenant_id, name, version, now)
            return await policy_store.get(conn, tenant_id, name, version)

    async def _activate(self, conn: asyncpg.Connection, tenant_id: str, name: str, version: int, now: datetime) -> None:
        if await policy_store.activate(conn, tenant_id, name, version, now) is None:
            raise DomainError("version", f"policy {name!r} has no version {version}", 404)
        await self.dunning.replan(conn, tenants=[tenant_id])

    async def set_do_not_chase(self, tenant_id: str, customer_id: str, reason: str | None, by: str) -> asyncpg.Record:
        """reason None lifts the flag."""
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "INSERT INTO dunning_customers (tenant_id, customer_id, do_not_chase_reason, do_not_chase_by,"
                " do_not_chase_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id, customer_id) DO UPDATE SET"
                " do_not_chase_reason = $3, do_not_chase_by = $4, do_not_chase_at = $5, updated_at = now()"
                " RETURNING *", tenant_id, customer_id, reason, by if reason else None, now if reason else None)
            await repo.refresh_customer(conn, tenant_id, customer_id, now)
            return row

    async def set_customer_group(self, tenant_id: str, customer_id: str, group: str | None) -> asyncpg.Record:
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "INSERT INTO dunning_customers (tenant_id, customer_id, customer_group) VALUES ($1, $2, $3)"
                " ON CONFLICT (tenant_id, customer_id) DO UPDATE SET customer_group = $3, updated_at = now()"
                " RETURNING *", tenant_id, customer_id, group)
            await self.dunning.replan(conn, customers=[(tenant_id, customer_id)])
            return row

    async def set_hold(self, tenant_id: str, invoice_id: uuid.UUID, reason: str | None, by: str) -> asyncpg.Record:
        """Hold one invoice out of dunning (reason None releases it)."""
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            items = await repo.lock_cases_of(conn, [(tenant_id, invoice_id)])
            if (tenant_id, invoice_id) not in items:
                raise DomainError("invoice_id", f"no invoice {invoice_id} in dunning in this tenant", 404)
            row = await conn.fetchrow(
                "UPDATE case_items SET hold_reason = $3, hold_by = $4, hold_at = $5 WHERE tenant_id = $1"
                " AND invoice_id = $2 RETURNING *", tenant_id, invoice_id, reason, by if reason else None,
                now if reason else None)
            await repo.refresh(conn, [(tenant_id, row["case_id"])], now)
            return row
