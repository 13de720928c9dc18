"""Invoice ingestion, set-based: one use case behind the single and bulk HTTP endpoints, the
file import and the Kafka ingest consumer, so every way in validates and decides alike.

Items are validated one by one (a bad item is rejected with its field and reason, the others
are kept), then applied in waves of distinct external ids, each wave in one transaction with a
handful of statements whatever its size."""
from __future__ import annotations

import asyncio
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from pydantic import ValidationError

from services.invoicing.adapters import repository as repo
from services.invoicing.domain.ingest import Decision, IncomingInvoice, RecordedInvoice, decide, waves
from services.invoicing.domain.model import overdue_at
from services.invoicing.service_layer import cash
from services.invoicing.service_layer.commands import CustomerIn, InvoiceRecord
from shared.clock import Clock
from shared.contract import (
    CustomerUpserted, Envelope, InvoiceAdjusted, InvoiceCancelled, InvoiceIssued, Topics, new_envelope,
)
from shared.contract.events import FieldChange
from shared.outbox import add_events

SOURCE = "invoicing"
CHUNK = 2000
_NS = uuid.UUID("6f1c2a1e-3c39-4a8e-9d5e-0b7c1d1f2a11")


def stable_id(*parts: str) -> uuid.UUID:
    """The same (tenant, source, external id) always maps to the same id."""
    return uuid.uuid5(_NS, "\x1f".join(parts))


@dataclass
class ItemResult:
    index: int
    status: str  # created | unchanged | adjusted | cancelled | rejected
    id: str | None = None
    field: str | None = None
    reason: str | None = None
    changes: dict[str, dict[str, Any]] | None = None


def validation_problem(exc: ValidationError) -> tuple[str, str]:
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"]) or "record"
    return field, err["msg"].removeprefix("Value error, ")


class _Race(Exception):
    """Another transaction created one of these invoices first: apply the wave again."""


_CUSTOMER_FIELDS = ("name", "language", "timezone", "email", "phone", "credit_terms_days")


class InvoiceIngestor:
    CUSTOMER_CACHE = 10_000  # validated customer master data kept for reuse (e-mail validation is slow)

    def __init__(self, pool: asyncpg.Pool, clock: Clock, topics: Topics, grace_days: int = 0, writers: int = 3) -> None:
        self.pool, self.clock, self.topics, self.grace_days = pool, clock, topics, grace_days
        self._writers = asyncio.Semaphore(writers)  # transactions of one ingest running side by side
        self._customers: OrderedDict[tuple, CustomerIn] = OrderedDict()

    def _validate(self, raw: dict | InvoiceRecord) -> InvoiceRecord:
        """InvoiceRecord.model_validate, reusing the validated customer when the same master data
        came before: invoices repeat their customer's data, and validating it (the e-mail address
        above all) costs more than the rest of the record. Only valid, all-text customer objects
        are reused, so every error is still the one a plain validation reports."""
        if isinstance(raw, InvoiceRecord):
            return raw
        customer = raw.get("customer") if isinstance(raw, dict) else None
        if isinstance(customer, dict) and all(v is None or type(v) is str for v in customer.values()):
            key = tuple(customer.items())
            validated = self._customers.get(key)
            if validated is None:
                try:
                    validated = CustomerIn.model_validate(customer)
                except ValidationError:
                    validated = None
                else:
                    self._customers[key] = validated
                    if len(self._customers) > self.CUSTOMER_CACHE:
                        self._customers.popitem(last=False)
            if validated is not None:
                raw = {**raw, "customer": validated}
        return InvoiceRecord.model_validate(raw)

    async def ingest(self, tenant_id: str, source: str, items: Sequence[dict | InvoiceRecord]) -> list[ItemResult]:
        results: list[ItemResult | None] = [None] * len(items)
        default_currency = await self.pool.fetchval(
            "SELECT default_currency FROM billing_sources WHERE tenant_id = $1 AND name = $2", tenant_id, source
        )
        valid: list[tuple[int, InvoiceRecord]] = []
        for i, raw in enumerate(items):
            try:
                record = self._validate(raw)
            except ValidationError as exc:
                field, reason = validation_problem(exc)
                results[i] = ItemResult(i, "rejected", field=field, reason=reason)
                continue
            if record.billing_source and record.billing_source != source:
                results[i] = ItemResult(i, "rejected", field="billing_source",
                                        reason=f"this request is for billing source {source!r}")
                continue
            if record.currency is None:
                if default_currency is None:
                    results[i] = ItemResult(i, "rejected", field="currency",
                                            reason=f"required: billing source {source!r} has no default currency")
                    continue
                record = record.model_copy(update={"currency": default_currency})
            valid.append((i, record))
        # Waves run one after the other (a repeated external id applies in order); the batches of
        # one wave have distinct ids and run side by side on separate connections.
        for wave in waves([r.external_id for _, r in valid]):
            batches = [[valid[j] for j in wave[k:k + CHUNK]] for k in range(0, len(wave), CHUNK)]
            for applied in await asyncio.gather(*(self._apply_with_retry(tenant_id, source, b) for b in batches)):
                for result in applied:
                    results[result.index] = result
        return [r for r in results if r is not None]

    async def _apply_with_retry(self, tenant_id: str, source: str,
                                batch: list[tuple[int, InvoiceRecord]]) -> list[ItemResult]:
        async with self._writers:
            for attempt in range(3):
                try:
                    return await self._apply(tenant_id, source, batch)
                except (_Race, asyncpg.DeadlockDetectedError):
                    if attempt == 2:
                        raise
        raise AssertionError("unreachable")

    async def _apply(self, tenant_id: str, source: str, batch: list[tuple[int, InvoiceRecord]]) -> list[ItemResult]:
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            # One index lookup per id (LATERAL), never a scan filtered by "= ANY($3)": that one is
            # linear in the source's invoices times the ids once the generic plan is cached. Sorted
            # ids lock the rows in one order in every transaction.
            rows = await conn.fetch(
                "SELECT i.* FROM unnest($3::text[]) AS x(external_id), LATERAL (SELECT * FROM invoices"
                " WHERE tenant_id = $1 AND billing_source = $2 AND external_id = x.external_id FOR UPDATE) AS i",
                tenant_id, source, sorted({r.external_id for _, r in batch}),
            )
            recorded = {row["external_id"]: row for row in rows}
            results: list[ItemResult] = []
            accepted: list[tuple[int, InvoiceRecord, Decision, uuid.UUID]] = []
            for i, rec in batch:
                row = recorded.get(rec.external_id)
                decision = decide(
                    IncomingInvoice(rec.customer_key, rec.number or rec.external_id, rec.currency, rec.amount_minor,
                                    rec.issue_date, rec.due_date, rec.status == "cancelled"),
                    None if row is None else RecordedInvoice(
                        row["customer_id"], row["number"], row["currency"], row["amount_minor"], row["open_minor"],
                        row["issue_date"], row["due_date"], row["status"]),
                )
                invoice_id = row["invoice_id"] if row else stable_id(tenant_id, source, rec.external_id)
                if decision.outcome == "rejected":
                    results.append(ItemResult(i, "rejected", str(invoice_id) if row else None,
                                              decision.field, decision.reason))
                else:
                    accepted.append((i, rec, decision, invoice_id))
                    results.append(ItemResult(i, decision.outcome, str(invoice_id),
                                              changes=decision.changes or None))
            events = await self._upsert_customers(
                conn, tenant_id, source, [rec.customer for _, rec, _, _ in accepted if rec.customer is not None],
                [rec.customer_key for _, rec, _, _ in accepted], now)
            timezones = {
                r["customer_id"]: r["timezone"] for r in await conn.fetch(
                    "SELECT c.customer_id, c.timezone FROM unnest($2::text[]) AS x(id), LATERAL (SELECT customer_id,"
                    " timezone FROM customers WHERE tenant_id = $1 AND customer_id = x.id OFFSET 0) AS c",
                    tenant_id, list({rec.customer_key for _, rec, _, _ in accepted}))
            }
            created = [(rec, inv_id) for _, rec, d, inv_id in accepted if d.outcome == "created"]
            events += await self._create(conn, tenant_id, source, created, timezones, now)
            events += await self._apply_credit(conn, tenant_id, created, now)
            for _, rec, decision, inv_id in accepted:
                if decision.outcome == "adjusted":
                    events.append(await self._adjust(conn, tenant_id, source, rec, decision, inv_id,
                                                     recorded[rec.external_id], timezones, now))
                elif decision.outcome == "cancelled":
                    events.append(await self._cancel(conn, tenant_id, source, recorded[rec.external_id], now))
            await add_events(conn, self.topics.invoicing, events)
        return results

    def _envelope(self, payload, tenant_id: str, subject: str, now: datetime) -> Envelope:
        return new_envelope(payload, source=SOURCE, tenant_id=tenant_id, subject=subject, time=now)

    async def upsert_customers(self, tenant_id: str, source: str, items: Sequence[dict | CustomerIn]) -> list[ItemResult]:
        """Customer master data on its own (before or without invoices): a result per item."""
        results: list[ItemResult] = []
        valid: list[CustomerIn] = []
        for i, raw in enumerate(items):
            try:
                customer = raw if isinstance(raw, CustomerIn) else CustomerIn.model_validate(raw)
            except ValidationError as exc:
                field, reason = validation_problem(exc)
                results.append(ItemResult(i, "rejected", field=field, reason=reason))
                continue
            valid.append(customer)
            results.append(ItemResult(i, "unchanged", customer.id))
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            events = await self._upsert_customers(conn, tenant_id, source, valid, [], now)
            await add_events(conn, self.topics.invoicing, events)
        changed = {e.subject for e in events}
        for r in results:
            if r.status == "unchanged" and r.id in changed:
                r.status = "upserted"
        return results

    async def _upsert_customers(self, conn, tenant_id: str, source: str, customers: list[CustomerIn],
                                referenced: list[str], now: datetime) -> list[Envelope]:
        """Master data (last one wins), and placeholders for referenced ids nobody knows."""
        wanted: dict[str, dict[str, Any]] = {}
        for c in customers:
            wanted[c.id] = {"customer_id": c.id, "name": c.name, "language": c.language, "timezone": c.timezone,
                            "email": c.email, "phone": c.phone, "credit_terms_days": c.credit_terms_days,
                            "billing_source": source, "placeholder": False}
        ids = list(set(wanted) | set(referenced))
        existing = {
            r["customer_id"]: r for r in await conn.fetch(
                "SELECT c.* FROM unnest($2::text[]) AS x(id), LATERAL (SELECT * FROM customers"
                " WHERE tenant_id = $1 AND customer_id = x.id OFFSET 0) AS c", tenant_id, ids)
        }
        for cid in ids:
            if cid not in wanted and cid not in existing:
                wanted[cid] = {"customer_id": cid, "name": cid, "language": "en", "timezone": "UTC", "email": None,
                               "phone": None, "credit_terms_days": None, "billing_source": source, "placeholder": True}
        changed = [  # sorted: concurrent writers lock customer rows in the same order
            w for cid, w in sorted(wanted.items())
            if cid not in existing or existing[cid]["placeholder"] != w["placeholder"]
            or any(existing[cid][f] != w[f] for f in _CUSTOMER_FIELDS)
        ]
        if not changed:
            return []
        await conn.execute(
            """INSERT INTO customers (tenant_id, customer_id, name, language, timezone, email, phone, credit_terms_days,
                                      billing_source, placeholder)
               SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                                        $8::int[], $9::text[], $10::boolean[])
               ON CONFLICT (tenant_id, customer_id) DO UPDATE SET
                 name = EXCLUDED.name, language = EXCLUDED.language, timezone = EXCLUDED.timezone,
                 email = EXCLUDED.email, phone = EXCLUDED.phone, credit_terms_days = EXCLUDED.credit_terms_days,
                 billing_source = EXCLUDED.billing_source, placeholder = EXCLUDED.placeholder, updated_at = now()""",
            tenant_id, *([w[k] for w in changed] for k in ("customer_id", *_CUSTOMER_FIELDS, "billing_source",
                                                            "placeholder")),
        )
        return [self._envelope(CustomerUpserted(**w), tenant_id, w["customer_id"], now) for w in changed]

    async def _create(self, conn, tenant_id: str, source: str, created: list[tuple[InvoiceRecord, uuid.UUID]],
                      timezones: dict[str, str], now: datetime) -> list[Envelope]:
        if not created:
            return []
        inserted = await conn.fetch(
            """INSERT INTO invoices (tenant_id, invoice_id, billing_source, external_id, customer_id, number, currency,
                                     amount_minor, open_minor, issue_date, due_date, issued_at)
               SELECT $1, i, $2, e, c, n, cur, a, a, iss, due, $3
               FROM unnest($4::uuid[], $5::text[], $6::text[], $7::text[], $8::text[], $9::bigint[], $10::date[],
                           $11::date[]) AS t(i, e, c, n, cur, a, iss, due)
               ON CONFLICT (tenant_id, billing_source, external_id) DO NOTHING RETURNING invoice_id""",
            tenant_id, source, now,
            [inv_id for _, inv_id in created], [r.external_id for r, _ in created], [r.customer_key for r, _ in created],
            [r.number or r.external_id for r, _ in created], [r.currency for r, _ in created],
            [r.amount_minor for r, _ in created], [r.issue_date for r, _ in created], [r.due_date for r, _ in created],
        )
        if len(inserted) != len(created):
            raise _Race()
        await conn.execute(
            "INSERT INTO overdue_timers (tenant_id, invoice_id, due_at) SELECT $1, * FROM unnest($2::uuid[], $3::timestamptz[])",
            tenant_id, [inv_id for _, inv_id in created],
            [overdue_at(r.due_date, timezones[r.customer_key], self.grace_days) for r, _ in created],
        )
        await repo.book_ledger(conn, tenant_id, [
            (r.customer_key, r.currency, "invoice", str(inv_id), r.amount_minor, r.issue_date,
             f"invoice {r.number or r.external_id}")
            for r, inv_id in created
        ], now)
        return [
            self._envelope(InvoiceIssued(
                customer_id=r.customer_key, invoice_id=str(inv_id), billing_source=source, external_id=r.external_id,
                number=r.number or r.external_id, currency=r.currency, amount_minor=r.amount_minor,
                issue_date=r.issue_date, due_date=r.due_date), tenant_id, str(inv_id), now)
            for r, inv_id in created
        ]

    async def _apply_credit(self, conn, tenant_id: str, created: list[tuple[InvoiceRecord, uuid.UUID]],
                            now: datetime) -> list[Envelope]:
        """Customers with unapplied credit have it applied to their new invoices at once."""
        if not created:
            return []
        with_credit = await conn.fetch(  # LATERAL: one index probe per customer, as for invoices above
            "SELECT DISTINCT p.customer_id, p.currency FROM unnest($2::text[]) AS x(id),"
            " LATERAL (SELECT customer_id, currency FROM payments WHERE tenant_id = $1 AND customer_id = x.id"
            " AND unapplied_minor > 0 AND status = 'received') AS p",
            tenant_id, sorted({r.customer_key for r, _ in created}),
        )
        events: list[Envelope] = []
        for row in with_credit:
            events += await cash.apply_credit(conn, tenant_id, row["customer_id"], row["currency"], now)
        return events

    async def _adjust(self, conn, tenant_id: str, source: str, rec: InvoiceRecord, decision: Decision,
                      invoice_id: uuid.UUID, row, timezones: dict[str, str], now: datetime) -> Envelope:
        number = rec.number or rec.external_id
        open_minor = decision.new_open_minor or 0
        await conn.execute(
            """UPDATE invoices SET number = $3, amount_minor = $4, open_minor = $5, issue_date = $6, due_date = $7,
                 status = CASE WHEN $5::bigint = 0 THEN 'paid' ELSE 'open' END, version = version + 1
               WHERE tenant_id = $1 AND invoice_id = $2""",
            tenant_id, invoice_id, number, rec.amount_minor, open_minor, rec.issue_date, rec.due_date,
        )
        if "due_date" in decision.changes:
            await conn.execute(
                "UPDATE overdue_timers SET due_at = $3 WHERE tenant_id = $1 AND invoice_id = $2 AND fired_at IS NULL",
                tenant_id, invoice_id, overdue_at(rec.due_date, timezones[rec.customer_key], self.grace_days),
            )
        delta = rec.amount_minor - row["amount_minor"]
        if delta:
            await repo.book_ledger(conn, tenant_id, [(rec.customer_key, rec.currency, "adjustment", str(invoice_id), delta,
                                                now.date(), f"adjustment of invoice {number}")], now)
        return self._envelope(InvoiceAdjusted(
            customer_id=rec.customer_key, invoice_id=str(invoice_id), billing_source=source, external_id=rec.external_id,
            number=number, currency=rec.currency, amount_minor=rec.amount_minor, open_amount_minor=open_minor,
            issue_date=rec.issue_date, due_date=rec.due_date,
            changes={k: FieldChange(**v) for k, v in decision.changes.items()}), tenant_id, str(invoice_id), now)

    async def _cancel(self, conn, tenant_id: str, source: str, row, now: datetime) -> Envelope:
        await conn.execute(
            "UPDATE invoices SET status = 'cancelled', open_minor = 0, cancelled_at = $3, version = version + 1"
            " WHERE tenant_id = $1 AND invoice_id = $2",
            tenant_id, row["invoice_id"], now,
        )
        await conn.execute(
            "UPDATE overdue_timers SET fired_at = $3 WHERE tenant_id = $1 AND invoice_id = $2 AND fired_at IS NULL",
            tenant_id, row["invoice_id"], now,
        )
        await repo.book_ledger(conn, tenant_id, [(row["customer_id"], row["currency"], "cancellation", str(row["invoice_id"]),
                                            -row["open_minor"], now.date(), f"cancellation of invoice {row['number']}")],
                         now)
        return self._envelope(InvoiceCancelled(
            customer_id=row["customer_id"], invoice_id=str(row["invoice_id"]), billing_source=source,
            external_id=row["external_id"], number=row["number"], currency=row["currency"], cancelled_at=now),
            tenant_id, str(row["invoice_id"]), now)
