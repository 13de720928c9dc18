"""Invoice ingestion, set-based: one use case behind the single and bulk HTTP endpoints, the
file import and the Kafka ingest consumer, so every way in validates and decides alike.

Items are validated one by one (a bad item is rejected with its field and reason, the others
are kept), then applied in waves of distinct external ids, each wave in one transaction with a
handful of statements whatever its size."""
from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import asyncpg
from pydantic import ValidationError

from services.invoicing.adapters import repository as repo
from services.invoicing.domain.ingest import Decision, IncomingInvoice, RecordedInvoice, decide, waves
from services.invoicing.domain.model import overdue_at
from services.invoicing.service_layer import cash
from services.invoicing.service_layer.commands import CustomerIn, InvoiceRecord
from services.invoicing.service_layer.sources import missing_right
from shared.clock import Clock
from shared.fairness import TenantGate
from shared.contract import (
    CustomerUpserted, Envelope, InvoiceAdjusted, InvoiceCancelled, InvoiceIssued, InvoicePaid, Topics, new_envelope,
)
from shared.contract.events import FieldChange
from shared.outbox import add_events, envelope_select, iso_time

SOURCE = "invoicing"
CHUNK = 2000
_NS = uuid.UUID("6f1c2a1e-3c39-4a8e-9d5e-0b7c1d1f2a11")


def stable_id(*parts: str) -> str:
    """The same (tenant, source, external id) always maps to the same id: str(uuid5(_NS, ...)),
    computed without building a UUID object (that took a tenth of a bulk ingest)."""
    digest = bytearray(hashlib.sha1(_NS.bytes + "\x1f".join(parts).encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass
class ItemResult:
    index: int
    status: str  # created | unchanged | adjusted | cancelled | rejected
    id: str | None = None
    field: str | None = None
    reason: str | None = None
    changes: dict[str, dict[str, Any]] | None = None


@dataclass
class CustomerWrite:
    timezones: dict[str, str]  # every customer named: its timezone
    changed: set[str]  # customers written (a CustomerUpserted each)
    refused: dict[str, tuple[str, list[str]]]  # customer -> (owning source, fields a change was refused for)

    def refusal(self, customer_id: str, source: str) -> str:
        owner, fields = self.refused[customer_id]
        return (f"customer {customer_id!r} not changed: its contact data belongs to billing source {owner!r},"
                f" not {source!r} (differs in {', '.join(fields)})")


def validation_problem(exc: ValidationError) -> tuple[str, str]:
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"]) or "record"
    return field, err["msg"].removeprefix("Value error, ")


# $1 tenant, $2 time (ISO text), $3 billing source, $4 topic, then one array per column. Only the
# customers that are new or differ are written (locked in customer id order, the same in every
# transaction): the same master data on every invoice of a file costs a read, not a row lock.
# A placeholder never overwrites. Contact data has an owner: the tenant's master-data source if it
# has one, else the source that created the customer (a placeholder has none); a differing change
# from another source is refused and reported with the fields it would have changed.
_OWNER = "coalesce((SELECT master_data_source FROM tenant_settings WHERE tenant_id = $1), {known})"
_UPSERT_CUSTOMERS = f"""
WITH w AS (
  SELECT * FROM unnest($5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::int[],
                       $12::boolean[])
    AS t(customer_id, name, language, timezone, email, phone, credit_terms_days, placeholder)
), k AS (
  SELECT w.*, c.timezone AS known_timezone, o.owner,
         c.customer_id IS NULL OR (NOT w.placeholder AND
           (c.name, c.language, c.timezone, c.email, c.phone, c.credit_terms_days, c.placeholder) IS DISTINCT FROM
           (w.name, w.language, w.timezone, w.email, w.phone, w.credit_terms_days, false)) AS differs,
         array_remove(ARRAY[
           CASE WHEN c.name IS DISTINCT FROM w.name THEN 'name' END,
           CASE WHEN c.language IS DISTINCT FROM w.language THEN 'language' END,
           CASE WHEN c.timezone IS DISTINCT FROM w.timezone THEN 'timezone' END,
           CASE WHEN c.email IS DISTINCT FROM w.email THEN 'email' END,
           CASE WHEN c.phone IS DISTINCT FROM w.phone THEN 'phone' END,
           CASE WHEN c.credit_terms_days IS DISTINCT FROM w.credit_terms_days THEN 'credit_terms_days' END
         ], NULL) AS fields
  FROM w LEFT JOIN LATERAL (SELECT * FROM customers WHERE tenant_id = $1 AND customer_id = w.customer_id OFFSET 0) AS c
    ON true
  LEFT JOIN LATERAL (SELECT {_OWNER.format(known="CASE WHEN c.placeholder THEN NULL ELSE c.billing_source END")}
                     AS owner) AS o ON c.customer_id IS NOT NULL
), up AS (
  INSERT INTO customers AS c (tenant_id, customer_id, name, language, timezone, email, phone, credit_terms_days,
                              billing_source, placeholder)
  SELECT $1, customer_id, name, language, timezone, email, phone, credit_terms_days, $3, placeholder
  FROM k WHERE differs AND coalesce(owner, $3) = $3 ORDER BY customer_id
  ON CONFLICT (tenant_id, customer_id) DO UPDATE SET
    name = EXCLUDED.name, language = EXCLUDED.language, timezone = EXCLUDED.timezone, email = EXCLUDED.email,
    phone = EXCLUDED.phone, credit_terms_days = EXCLUDED.credit_terms_days, billing_source = EXCLUDED.billing_source,
    placeholder = false, updated_at = now()
  WHERE NOT EXCLUDED.placeholder
    AND (c.name, c.language, c.timezone, c.email, c.phone, c.credit_terms_days, c.placeholder) IS DISTINCT FROM
        (EXCLUDED.name, EXCLUDED.language, EXCLUDED.timezone, EXCLUDED.email, EXCLUDED.phone,
         EXCLUDED.credit_terms_days, false)
    -- checked again on the row itself: it may have been created since k read it
    AND coalesce({_OWNER.format(known="CASE WHEN c.placeholder THEN NULL ELSE c.billing_source END")},
                 EXCLUDED.billing_source) = EXCLUDED.billing_source
  RETURNING c.*
), events AS (
  INSERT INTO outbox (topic, event_id, tenant_id, event_type, key, envelope)
  SELECT $4, {envelope_select(CustomerUpserted, source=SOURCE, subject="customer_id", data={
      "customer_id": "customer_id", "name": "name", "language": "language", "timezone": "timezone", "email": "email",
      "phone": "phone", "billing_source": "billing_source", "placeholder": "placeholder",
      "credit_terms_days": "credit_terms_days"})}
  FROM (SELECT *, gen_random_uuid() AS eid FROM up ORDER BY customer_id) AS x
)
SELECT k.customer_id, coalesce(up.timezone, k.known_timezone) AS timezone, up.customer_id IS NOT NULL AS changed,
       CASE WHEN k.differs AND NOT k.placeholder AND k.owner <> $3 THEN k.owner END AS refused_by,
       k.fields
FROM k LEFT JOIN up USING (customer_id)"""

# $1 tenant, $2 time (ISO text), $3 billing source, $4 time, $5 topic, then one array per column.
_CREATE_INVOICES = f"""
WITH s AS (
  SELECT * FROM unnest($6::uuid[], $7::text[], $8::text[], $9::text[], $10::text[], $11::bigint[], $12::date[],
                       $13::date[], $14::timestamptz[]) WITH ORDINALITY AS t(i, e, c, n, cur, a, iss, due, od, ord)
), ins AS (
  INSERT INTO invoices (tenant_id, invoice_id, billing_source, external_id, customer_id, number, currency,
                        amount_minor, open_minor, issue_date, due_date, issued_at)
  SELECT $1, i, $3, e, c, n, cur, a, a, iss, due, $4 FROM s
  ON CONFLICT (tenant_id, billing_source, external_id) DO NOTHING RETURNING 1
), timers AS (
  INSERT INTO overdue_timers (tenant_id, invoice_id, due_at) SELECT $1, i, od FROM s
), ledger AS (
  INSERT INTO ledger_entries (tenant_id, customer_id, currency, kind, ref_id, amount_minor, booked_on, recorded_at,
                              description)
  SELECT $1, c, cur, 'invoice', i::text, a, iss, $4, 'invoice ' || n FROM s
), events AS (
  INSERT INTO outbox (topic, event_id, tenant_id, event_type, key, envelope)
  SELECT $5, {envelope_select(InvoiceIssued, source=SOURCE, subject="i::text", data={
      "customer_id": "c", "invoice_id": "i::text", "billing_source": "$3::text", "external_id": "e", "number": "n",
      "currency": "cur", "amount_minor": "a", "issue_date": "iss", "due_date": "due"})}
  FROM (SELECT *, gen_random_uuid() AS eid FROM s ORDER BY ord) AS x
)
SELECT count(*) FROM ins"""


def _raw_key(index: int, raw: object) -> object:
    """What waves keep apart: the external id as sent (validation keeps it as it is); an item
    without a usable one is rejected later and gets a key of its own."""
    key = raw.external_id if isinstance(raw, InvoiceRecord) else raw.get("external_id") if isinstance(raw, dict) else None
    return key if isinstance(key, str) else ("\0item", index)


InTransaction = Callable[[asyncpg.Connection, list[int]], Awaitable[None]]


class _Race(Exception):
    """Another transaction created one of these invoices first: apply the wave again."""




class InvoiceIngestor:
    CUSTOMER_CACHE = 10_000  # validated customer master data kept for reuse (e-mail validation is slow)

    def __init__(self, pool: asyncpg.Pool, clock: Clock, topics: Topics, grace_days: int = 0, writers: int = 3) -> None:
        self.pool, self.clock, self.topics, self.grace_days = pool, clock, topics, grace_days
        # Chunk transactions running side by side, shared fairly: one tenant's bulk requests
        # never hold every writer while another tenant waits.
        self._writers = TenantGate(writers + 1, per_tenant=writers)
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

    async def ingest(self, tenant_id: str, source: str, items: Sequence[dict | InvoiceRecord],
                     in_transaction: InTransaction | None = None) -> list[ItemResult]:
        """A result per item, in item order. Waves run one after the other (a repeated external id
        applies in order); a wave is validated a chunk at a time and each chunk is written on its
        own connection while the next one is validated, so Python and PostgreSQL work side by side.
        `in_transaction(conn, indexes)` runs in each chunk's transaction with the positions of the
        items it took (not the rejected): a consumer records them in its inbox there."""
        rights = await repo.source_rights(self.pool, tenant_id, source)
        if (problem := missing_right(rights, source, "invoices")) is not None:
            return [ItemResult(i, "rejected", field="billing_source", reason=problem) for i in range(len(items))]
        default_currency = rights["default_currency"]
        results: list[ItemResult | None] = [None] * len(items)

        async def write(batch: list[tuple[int, InvoiceRecord]]) -> None:
            for result in await self._apply_with_retry(tenant_id, source, batch, in_transaction):
                results[result.index] = result

        for wave in waves([_raw_key(i, raw) for i, raw in enumerate(items)]):
            try:
                await self._write_wave(items, wave, source, default_currency, results, write)
            except ExceptionGroup as failed:  # callers see the first failure itself, as from a plain await
                raise failed.exceptions[0] from None
        return [r for r in results if r is not None]

    async def _write_wave(self, items: Sequence[dict | InvoiceRecord], wave: list[int], source: str,
                          default_currency: str | None, results: list[ItemResult | None], write) -> None:
        async with asyncio.TaskGroup() as writers:
            batch: list[tuple[int, InvoiceRecord]] = []
            for n, i in enumerate(wave, 1):
                record = self._admit(items[i], source, default_currency)
                if isinstance(record, ItemResult):
                    results[i] = replace(record, index=i)
                else:
                    batch.append((i, record))
                if len(batch) == CHUNK:
                    writers.create_task(write(batch))
                    batch = []
                if n % 256 == 0:
                    await asyncio.sleep(0)  # let the writers' statements go out and come back
            if batch:
                writers.create_task(write(batch))

    def _admit(self, raw: dict | InvoiceRecord, source: str, default_currency: str | None) -> InvoiceRecord | ItemResult:
        """The validated record, or why it is rejected (before anything is looked up)."""
        try:
            record = self._validate(raw)
        except ValidationError as exc:
            field, reason = validation_problem(exc)
            return ItemResult(0, "rejected", field=field, reason=reason)
        if record.billing_source and record.billing_source != source:
            return ItemResult(0, "rejected", field="billing_source", reason=f"this request is for billing source {source!r}")
        if record.currency is None:
            if default_currency is None:
                return ItemResult(0, "rejected", field="currency",
                                  reason=f"required: billing source {source!r} has no default currency")
            record = record.model_copy(update={"currency": default_currency})
        return record

    async def _apply_with_retry(self, tenant_id: str, source: str, batch: list[tuple[int, InvoiceRecord]],
                                in_transaction: InTransaction | None = None) -> list[ItemResult]:
        async with self._writers.slot(tenant_id):
            for attempt in range(3):
                try:
                    return await self._apply(tenant_id, source, batch, in_transaction)
                except (_Race, asyncpg.DeadlockDetectedError, asyncpg.UniqueViolationError):
                    if attempt == 2:
                        raise
        raise AssertionError("unreachable")

    async def _apply(self, tenant_id: str, source: str, batch: list[tuple[int, InvoiceRecord]],
                     in_transaction: InTransaction | None = None) -> list[ItemResult]:
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            # First, before any row lock: the customers' buckets, shared (never waits for another
            # ingest), so that a payment deciding there is no open invoice and this transaction's
            # credit query see each other (see repository.share_customer_buckets).
            await repo.share_customer_buckets(conn, tenant_id, {rec.customer_key for _, rec in batch})
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
            created: list[tuple[InvoiceRecord, str]] = []
            changed: list[tuple[InvoiceRecord, Decision, uuid.UUID]] = []  # adjusted or cancelled
            unchanged: list[InvoiceRecord] = []
            for i, rec in batch:
                row = recorded.get(rec.external_id)
                if row is None and rec.status == "open":  # the common case: new, no domain objects needed
                    invoice_id = stable_id(tenant_id, source, rec.external_id)
                    created.append((rec, invoice_id))
                    results.append(ItemResult(i, "created", invoice_id))
                    continue
                decision = decide(
                    IncomingInvoice(rec.customer_key, rec.number or rec.external_id, rec.currency, rec.amount_minor,
                                    rec.issue_date, rec.due_date, rec.status == "cancelled"),
                    None if row is None else RecordedInvoice(
                        row["customer_id"], row["number"], row["currency"], row["amount_minor"], row["open_minor"],
                        row["issue_date"], row["due_date"], row["status"]),
                )
                if decision.outcome == "rejected":
                    known = None if row is None else str(row["invoice_id"])
                    results.append(ItemResult(i, "rejected", known, decision.field, decision.reason))
                    continue
                invoice_id = row["invoice_id"]
                if decision.outcome == "unchanged":
                    unchanged.append(rec)  # its customer master data may still be news
                else:
                    changed.append((rec, decision, invoice_id))
                results.append(ItemResult(i, decision.outcome, str(invoice_id), changes=decision.changes or None))
            accepted = [rec for rec, _ in created] + [rec for rec, _, _ in changed] + unchanged
            # Customer events go out before the invoice events that name the customer.
            written = await self._upsert_customers(
                conn, tenant_id, source, [rec.customer for rec in accepted if rec.customer is not None],
                {rec.customer_key for rec in accepted}, now)
            timezones = written.timezones
            if written.refused:  # the invoice stands; the customer's data stays as its owner sent it
                by_index = {i: rec for i, rec in batch}
                for result in results:
                    rec = by_index[result.index]
                    if result.status != "rejected" and rec.customer is not None and rec.customer.id in written.refused:
                        result.reason = written.refusal(rec.customer.id, source)
            await self._create(conn, tenant_id, source, created, timezones, now)
            events = await self._apply_credit(conn, tenant_id, created, now)
            for rec, decision, inv_id in changed:
                if decision.outcome == "adjusted":
                    events += await self._adjust(conn, tenant_id, source, rec, decision, inv_id,
                                                 recorded[rec.external_id], timezones, now)
                else:
                    events.append(await self._cancel(conn, tenant_id, source, recorded[rec.external_id], now))
            await add_events(conn, self.topics.invoicing, events)
            if in_transaction is not None:
                await in_transaction(conn, [r.index for r in results if r.status != "rejected"])
        return results

    def _envelope(self, payload, tenant_id: str, subject: str, now: datetime) -> Envelope:
        return new_envelope(payload, source=SOURCE, tenant_id=tenant_id, subject=subject, time=now)

    async def upsert_customers(self, tenant_id: str, source: str, items: Sequence[dict | CustomerIn],
                               in_transaction: InTransaction | None = None) -> list[ItemResult]:
        """Customer master data on its own (before or without invoices): a result per item
        (`in_transaction` as for `ingest`)."""
        problem = missing_right(await repo.source_rights(self.pool, tenant_id, source), source, "invoices")
        if problem is not None:
            return [ItemResult(i, "rejected", field="billing_source", reason=problem) for i in range(len(items))]
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
            written = await self._upsert_customers(conn, tenant_id, source, valid, [], now)
            for r in results:
                if r.status == "unchanged" and r.id in written.refused:
                    r.status, r.reason = "rejected", written.refusal(r.id, source)
                    r.field = written.refused[r.id][1][0]
            if in_transaction is not None:
                await in_transaction(conn, [r.index for r in results if r.status != "rejected"])
        for r in results:
            if r.status == "unchanged" and r.id in written.changed:
                r.status = "upserted"
        return results

    async def _upsert_customers(self, conn, tenant_id: str, source: str, customers: list[CustomerIn],
                                referenced: Iterable[str], now: datetime) -> CustomerWrite:
        """Master data (last one wins), and placeholders for referenced ids nobody knows, with a
        CustomerUpserted for each customer that changed: one statement, the comparison and the
        events done by PostgreSQL. Returns every customer's timezone and the ids that changed."""
        wanted: dict[str, tuple] = {}
        for c in customers:
            wanted[c.id] = (c.id, c.name, c.language, c.timezone, c.email, c.phone, c.credit_terms_days, False)
        for cid in referenced:
            if cid not in wanted:
                wanted[cid] = (cid, cid, "en", "UTC", None, None, None, True)
        if not wanted:
            return CustomerWrite({}, set(), {})
        rows = await conn.fetch(_UPSERT_CUSTOMERS, tenant_id, iso_time(now), source, self.topics.invoicing,
                                *(list(col) for col in zip(*wanted.values())))
        timezones = {r["customer_id"]: r["timezone"] for r in rows}
        if None in timezones.values():
            # Inserted by a transaction that committed while this statement waited on it: the
            # statement's snapshot cannot see the row, a new statement can.
            timezones.update(await conn.fetch(
                "SELECT customer_id, timezone FROM customers WHERE tenant_id = $1 AND customer_id = ANY($2::text[])",
                tenant_id, [cid for cid, tz in timezones.items() if tz is None]))
        refused = {r["customer_id"]: (r["refused_by"], r["fields"]) for r in rows if r["refused_by"] is not None}
        return CustomerWrite(timezones, {r["customer_id"] for r in rows if r["changed"]}, refused)

    async def _create(self, conn, tenant_id: str, source: str, created: list[tuple[InvoiceRecord, str]],
                      timezones: dict[str, str], now: datetime) -> None:
        """New invoices with their overdue timers, ledger entries and InvoiceIssued events, in one
        statement: PostgreSQL builds the events, so nothing runs per invoice here but the lists."""
        if not created:
            return
        keys = [r.customer_key for r, _ in created]
        inserted = await conn.fetchval(
            _CREATE_INVOICES, tenant_id, iso_time(now), source, now, self.topics.invoicing,
            [inv_id for _, inv_id in created], [r.external_id for r, _ in created], keys,
            [r.number or r.external_id for r, _ in created], [r.currency for r, _ in created],
            [r.amount_minor for r, _ in created], [r.issue_date for r, _ in created], [r.due_date for r, _ in created],
            [overdue_at(r.due_date, timezones[k], self.grace_days) for (r, _), k in zip(created, keys)],
        )
        if inserted != len(created):
            raise _Race()

    async def _apply_credit(self, conn, tenant_id: str, created: list[tuple[InvoiceRecord, str]],
                            now: datetime) -> list[Envelope]:
        """Customers with unapplied credit have it applied to their new invoices at once (their
        buckets held shared since the transaction began: a payment not yet committed is waited for)."""
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
                      invoice_id: uuid.UUID, row, timezones: dict[str, str], now: datetime) -> list[Envelope]:
        """A changed record: InvoiceAdjusted. An adjustment down to what was already paid settles
        the invoice (paid now: InvoicePaid too, and its overdue timer fires quietly); one upwards
        re-opens a paid invoice (its overdue timer armed again). A moved due date moves the timer,
        fired or not, for when it is armed again."""
        number = rec.number or rec.external_id
        open_minor = decision.new_open_minor or 0
        reopened = row["status"] == "paid" and open_minor > 0
        settled = row["status"] == "open" and open_minor == 0
        await conn.execute(
            """UPDATE invoices SET number = $3, amount_minor = $4, open_minor = $5, issue_date = $6, due_date = $7,
                 status = CASE WHEN $5::bigint = 0 THEN 'paid' ELSE 'open' END,
                 paid_at = CASE WHEN $5::bigint = 0 THEN coalesce(paid_at, $8) END, version = version + 1
               WHERE tenant_id = $1 AND invoice_id = $2""",
            tenant_id, invoice_id, number, rec.amount_minor, open_minor, rec.issue_date, rec.due_date, now,
        )
        if "due_date" in decision.changes:
            await conn.execute(
                "UPDATE overdue_timers SET due_at = $3 WHERE tenant_id = $1 AND invoice_id = $2",
                tenant_id, invoice_id, overdue_at(rec.due_date, timezones[rec.customer_key], self.grace_days),
            )
        if reopened:
            await repo.rearm_overdue_timers(conn, tenant_id, [invoice_id])
        delta = rec.amount_minor - row["amount_minor"]
        if delta:
            await repo.book_ledger(conn, tenant_id, [(rec.customer_key, rec.currency, "adjustment", str(invoice_id), delta,
                                                now.date(), f"adjustment of invoice {number}")], now)
        events = [self._envelope(InvoiceAdjusted(
            customer_id=rec.customer_key, invoice_id=str(invoice_id), billing_source=source, external_id=rec.external_id,
            number=number, currency=rec.currency, amount_minor=rec.amount_minor, open_amount_minor=open_minor,
            issue_date=rec.issue_date, due_date=rec.due_date,
            changes={k: FieldChange(**v) for k, v in decision.changes.items()}), tenant_id, str(invoice_id), now)]
        if settled and row["kind"] == "invoice":  # as in cash.settle: fees are settled quietly
            events.append(self._envelope(InvoicePaid(
                customer_id=rec.customer_key, invoice_id=str(invoice_id), currency=rec.currency,
                amount_minor=rec.amount_minor, due_date=rec.due_date, paid_at=now,
                days_late=(now.date() - rec.due_date).days), tenant_id, str(invoice_id), now))
        return events

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
