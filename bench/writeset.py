"""The write-set yardstick of bench/ingest: COPY of exactly what ingesting new invoices writes.

Ingesting one new invoice writes (services/invoicing/service_layer/ingest.py, `_CREATE_INVOICES`
and `_UPSERT_CUSTOMERS`): an `invoices` row, an `overdue_timers` row, a `ledger_entries` row and
an `outbox` row holding the InvoiceIssued envelope; a new customer adds a `customers` row and a
CustomerUpserted `outbox` row. The relay later deletes every published outbox row by id, 2,000
at a time. The yardstick writes the same rows (the same values, so the same sizes: the envelopes
are built by PostgreSQL with the very `envelope_select` the ingest statements use) into a freshly
migrated invoicing database, so with the same keys, indexes and triggers, with asyncpg's binary
COPY (`copy_records_to_table`): each table its own COPY, all in one transaction (or one per chunk of
`ingest.CHUNK` invoices, as the ingest commits), then the outbox rows deleted by id in batches
of 2,000, each batch its own transaction, as the relay does. One transaction is the faster of
the two, by the ~50 commits (WAL flushes) it saves: 0.25-0.45 s of 7-26 s measured, a few per
cent; the rest of the difference drowns in the noise of a shared machine.

Why the deletes are in it: every path that stores invoices pays them (the relay trims what it
published, on the same two cores, and the ingest benchmarks are timed until the outbox is
empty), and a delete is index and heap work of the same kind as the insert. What is left out
is the relay's claim (a read) and the publishing itself: that is work no COPY does, and the
ingest path has to fit it into the other half. The time without the deletes is reported too
("stored after"), so the yardstick can be read either way."""
from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timezone

import asyncpg

from services.invoicing.domain.model import overdue_at
from services.invoicing.service_layer.ingest import CHUNK, SOURCE, stable_id
from shared.contract import CustomerUpserted, InvoiceIssued
from shared.outbox import envelope_select, iso_time

RELAY_BATCH = 2000  # OutboxRelay's default batch_size: the relay deletes this many rows per statement

TABLES = ("customers", "invoices", "overdue_timers", "ledger_entries", "outbox")
COLUMNS = {
    "customers": ("tenant_id", "customer_id", "name", "language", "timezone", "email", "phone", "credit_terms_days",
                  "billing_source", "placeholder"),
    "invoices": ("tenant_id", "invoice_id", "billing_source", "external_id", "customer_id", "number", "currency",
                 "amount_minor", "open_minor", "issue_date", "due_date", "issued_at"),
    "overdue_timers": ("tenant_id", "invoice_id", "due_at"),
    "ledger_entries": ("tenant_id", "customer_id", "currency", "kind", "ref_id", "amount_minor", "booked_on",
                       "recorded_at", "description"),
    "outbox": ("topic", "event_id", "tenant_id", "event_type", "key", "envelope"),
}  # the columns the ingest statements give; the rest take their defaults there and here alike

# The envelopes, built by PostgreSQL exactly as the ingest statements build them ($1 tenant,
# $2 time as ISO text, $3 billing source), returned as the JSON text the outbox stores.
_INVOICE_ENVELOPES = f"""
SELECT eid, envelope::text FROM (
  SELECT {envelope_select(InvoiceIssued, source=SOURCE, subject="i::text", data={
      "customer_id": "c", "invoice_id": "i::text", "billing_source": "$3::text", "external_id": "e", "number": "n",
      "currency": "cur", "amount_minor": "a", "issue_date": "iss", "due_date": "due"})}, ord
  FROM (SELECT *, gen_random_uuid() AS eid
        FROM unnest($4::uuid[], $5::text[], $6::text[], $7::text[], $8::text[], $9::bigint[], $10::date[], $11::date[])
          WITH ORDINALITY AS t(i, e, c, n, cur, a, iss, due, ord)) AS x
) AS y(eid, tenant_id, event_type, key, envelope, ord) ORDER BY ord"""

_CUSTOMER_ENVELOPES = f"""
SELECT eid, envelope::text FROM (
  SELECT {envelope_select(CustomerUpserted, source=SOURCE, subject="customer_id", data={
      "customer_id": "customer_id", "name": "name", "language": "language", "timezone": "timezone", "email": "email",
      "phone": "phone", "billing_source": "billing_source", "placeholder": "placeholder",
      "credit_terms_days": "credit_terms_days"})}, ord
  FROM (SELECT *, $3::text AS billing_source, false AS placeholder, gen_random_uuid() AS eid
        FROM unnest($4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::int[])
          WITH ORDINALITY AS t(customer_id, name, language, timezone, email, phone, credit_terms_days, ord)) AS x
) AS y(eid, tenant_id, event_type, key, envelope, ord) ORDER BY ord"""


@dataclass
class Chunk:
    """The rows one ingest transaction of `CHUNK` invoices writes, per table, in COPY order."""
    rows: dict[str, list[tuple]] = field(default_factory=lambda: {t: [] for t in TABLES})

    @property
    def outbox(self) -> int:
        return len(self.rows["outbox"])


async def build(conn: asyncpg.Connection, invoices: list[dict], *, tenant: str, source: str, topic: str,
                now: datetime, grace_days: int = 0, chunk: int = CHUNK,
                progress: Callable[[int], None] | None = None) -> list[Chunk]:
    """The write set of ingesting these new invoices (InvoiceRecord-shaped dicts with their
    customer's master data), chunk by chunk as the ingestor's transactions write it: a customer
    is new in the chunk of its first invoice; its CustomerUpserted goes before the chunk's
    InvoiceIssued events, as in the ingest transaction."""
    at = iso_time(now)
    seen: set[str] = set()
    chunks: list[Chunk] = []
    for start in range(0, len(invoices), chunk):
        part = invoices[start:start + chunk]
        c = Chunk()
        new = []
        for inv in part:
            cust = inv["customer"]
            if cust["id"] not in seen:
                seen.add(cust["id"])
                new.append(cust)
        new.sort(key=lambda cu: cu["id"])  # the upsert writes them in customer id order
        if new:
            cols = [[cu["id"] for cu in new], [cu["name"] for cu in new], [cu.get("language", "en") for cu in new],
                    [cu.get("timezone", "UTC") for cu in new], [cu.get("email") for cu in new],
                    [cu.get("phone") for cu in new], [cu.get("credit_terms_days") for cu in new]]
            envelopes = await conn.fetch(_CUSTOMER_ENVELOPES, tenant, at, source, *cols)
            for cu, env in zip(new, envelopes):
                c.rows["customers"].append((tenant, cu["id"], cu["name"], cu.get("language", "en"),
                                            cu.get("timezone", "UTC"), cu.get("email"), cu.get("phone"),
                                            cu.get("credit_terms_days"), source, False))
                c.rows["outbox"].append((topic, env["eid"], tenant, CustomerUpserted.event_type,
                                         f"{tenant}:{cu['id']}", env["envelope"]))
        ids = [uuid.UUID(stable_id(tenant, source, inv["external_id"])) for inv in part]
        issue = [date.fromisoformat(inv["issue_date"]) for inv in part]
        due = [date.fromisoformat(inv["due_date"]) for inv in part]
        numbers = [inv.get("number") or inv["external_id"] for inv in part]
        envelopes = await conn.fetch(
            _INVOICE_ENVELOPES, tenant, at, source, ids, [inv["external_id"] for inv in part],
            [inv["customer"]["id"] for inv in part], numbers, [inv["currency"] for inv in part],
            [inv["amount_minor"] for inv in part], issue, due)
        for inv, iid, iss, du, num, env in zip(part, ids, issue, due, numbers, envelopes):
            cust = inv["customer"]
            c.rows["invoices"].append((tenant, iid, source, inv["external_id"], cust["id"], num, inv["currency"],
                                       inv["amount_minor"], inv["amount_minor"], iss, du, now))
            # The same instant as the ingest path writes; in datetime.timezone.utc, which asyncpg
            # encodes several times faster than a ZoneInfo time (a client cost, not the database's).
            c.rows["overdue_timers"].append(
                (tenant, iid, overdue_at(du, cust.get("timezone", "UTC"), grace_days).astimezone(timezone.utc)))
            c.rows["ledger_entries"].append((tenant, cust["id"], inv["currency"], "invoice", str(iid),
                                             inv["amount_minor"], iss, now, f"invoice {num}"))
            c.rows["outbox"].append((topic, env["eid"], tenant, InvoiceIssued.event_type, f"{tenant}:{cust['id']}",
                                     env["envelope"]))
        chunks.append(c)
        if progress is not None:
            progress(start + len(part))
    return chunks


@dataclass
class Timing:
    """One COPY of the write set: seconds per part (each table's COPYs, the commits, the relay's
    deletes), and when everything was stored (before the deletes began, in total)."""
    parts: dict[str, float] = field(default_factory=dict)
    stored: float = 0.0
    total: float = 0.0

    def add(self, part: str, seconds: float) -> None:
        self.parts[part] = self.parts.get(part, 0.0) + seconds


async def copy(conn: asyncpg.Connection, chunks: list[Chunk], *, one_transaction: bool = False,
               progress: Callable[[int], None] | None = None) -> Timing:
    """COPY the write set into a freshly migrated invoicing database (empty, its outbox sequence
    unused, so the rows get ids 1, 2, … in COPY order: the deletes check that they removed every
    row they meant to). Each table its own COPY; a transaction per chunk (or one for all), then
    the chunk's outbox rows deleted by id, RELAY_BATCH at a time, a transaction per delete (like
    the relay, which deletes each batch it published in the transaction that claimed it). Each
    part is timed on its own (the attribution costs a clock read per statement)."""
    timing = Timing()
    clock = time.perf_counter
    next_id = await conn.fetchval("SELECT CASE WHEN is_called THEN last_value + 1 ELSE last_value END"
                                  " FROM outbox_id_seq")
    pending: list[int] = []  # outbox ids copied and not yet deleted
    started = clock()
    tx = conn.transaction() if one_transaction else None
    if tx is not None:
        await tx.start()
    done = 0
    for c in chunks:
        if tx is None:
            t = clock()
            await conn.execute("BEGIN")
            timing.add("begin/commit", clock() - t)
        for table in TABLES:
            rows = c.rows[table]
            if rows:
                t = clock()
                await conn.copy_records_to_table(table, records=rows, columns=COLUMNS[table])
                timing.add(table, clock() - t)
        pending.extend(range(next_id, next_id + c.outbox))
        next_id += c.outbox
        if tx is None:
            t = clock()
            await conn.execute("COMMIT")
            timing.add("begin/commit", clock() - t)
            pending = await _delete(conn, pending, timing, final=False)
        done += sum(len(r) for r in c.rows.values())
        if progress is not None:
            progress(done)
    if tx is not None:
        t = clock()
        await tx.commit()
        timing.add("begin/commit", clock() - t)
    timing.stored = clock() - started - timing.parts.get("relay deletes", 0.0)  # the COPYs and commits alone
    await _delete(conn, pending, timing, final=True)
    timing.total = clock() - started
    return timing


async def _delete(conn: asyncpg.Connection, pending: list[int], timing: Timing, *, final: bool) -> list[int]:
    """Delete the copied outbox rows by id, RELAY_BATCH at a time, each batch its own transaction;
    a partial batch is left for later (with the next chunk's rows) unless `final`. Returns what is left."""
    while len(pending) >= RELAY_BATCH or (final and pending):
        batch, pending = pending[:RELAY_BATCH], pending[RELAY_BATCH:]
        t = time.perf_counter()
        status = await conn.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[])", batch)
        timing.add("relay deletes", time.perf_counter() - t)
        if status != f"DELETE {len(batch)}":
            raise RuntimeError(f"write-set yardstick: deleting {len(batch)} outbox rows by id said {status!r}")
    return pending
