"""Billing sources that publish to `ar.ingest.v1` get the same validation and outcome as the
HTTP API. A record that is not signed with a live ingest secret of its source (or whose
signature is stale or seen before), cannot be read, or is rejected goes to the dead-letter topic
with the reason; the consumer carries on.

Record value (JSON): {"kind": "customer" | "invoice" | "payment" | "credit_note", "record": <the
same body as PUT /v1/customers/{id}, POST /v1/invoices, /v1/payments or /v1/credit-notes>}, and
optionally "tenant_id" and "billing_source", which must then be those of the signing secret;
headers: the signature (shared/contract/signing.py); key: "tenant_id:customer_id"."""
from __future__ import annotations

import time
import uuid
from itertools import groupby
from typing import Any, Literal

import asyncpg
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.invoicing.service_layer.commands import CreditNoteRecord, RecordPayment
from services.invoicing.service_layer.handlers import Invoicing
from services.invoicing.service_layer.ingest import InvoiceIngestor, validation_problem
from shared.contract.signing import Signed, claimed, matches
from shared.http import DomainError
from shared.inbox import claim_ids, record_id, seen_ids
from shared.processing import RawHandler


class IngestRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tenant_id: str | None = Field(default=None, min_length=1, max_length=200)
    billing_source: str | None = Field(default=None, min_length=1, max_length=100)
    kind: Literal["customer", "invoice", "payment", "credit_note"]
    record: dict[str, Any]


class Verifier:
    """Which tenant and source signed each record, or why a record is refused: unsigned, an
    unknown or retired secret, a signature that does not match the bytes, a timestamp outside
    the tolerance (wall-clock time), or signed bytes already taken on another record (a replay)."""

    def __init__(self, pool: asyncpg.Pool, tolerance_seconds: int, wall_clock=time.time) -> None:
        self.pool, self.tolerance, self.wall_clock = pool, tolerance_seconds, wall_clock
        self._pruned = 0.0

    async def verify(self, records: list, ids: list[uuid.UUID]) -> list[tuple[str, str] | str]:
        """Per record: (tenant, source) or the reason it is refused."""
        now = self.wall_clock()
        claims = [claimed(r.headers) for r in records]
        key_ids = list({c.key_id for c in claims if isinstance(c, Signed)})
        secrets = {row["secret_id"]: row for row in await self.pool.fetch(
            "SELECT secret_id, tenant_id, source, secret FROM ingest_secrets WHERE secret_id = ANY($1::text[])"
            " AND (retired_at IS NULL OR retired_at > now())", key_ids)} if key_ids else {}
        out: list[tuple[str, str] | str] = []
        fresh: dict[str, uuid.UUID] = {}
        for r, rid, claim in zip(records, ids, claims):
            if isinstance(claim, str):
                out.append(claim)
                continue
            row = secrets.get(claim.key_id)
            if row is None:
                out.append(f"forged: no live ingest secret {claim.key_id[:40]!r}")
            elif not matches(row["secret"], claim, r.value or b""):
                out.append("forged: the signature does not match the record")
            elif abs(now - claim.timestamp) > self.tolerance:
                out.append(f"stale or replayed: signed {int(now - claim.timestamp)} s ago, tolerance"
                           f" {self.tolerance} s")
            else:
                out.append((row["tenant_id"], row["source"]))
                fresh.setdefault(claim.signature, rid)
        if fresh:
            # The first record to bring a signature keeps it; the same bytes on another record are
            # a replay (a redelivery of the same record is the same record and passes).
            inserted = {row["signature"] for row in await self.pool.fetch(
                "INSERT INTO ingest_signatures (signature, record_id) SELECT * FROM unnest($1::text[], $2::uuid[])"
                " ON CONFLICT DO NOTHING RETURNING signature", list(fresh), list(fresh.values()))}
            first = dict(fresh)
            if len(inserted) < len(fresh):
                first.update((row["signature"], row["record_id"]) for row in await self.pool.fetch(
                    "SELECT signature, record_id FROM ingest_signatures WHERE signature = ANY($1::text[])",
                    [sig for sig in fresh if sig not in inserted]))
            for n, (claim, rid) in enumerate(zip(claims, ids)):
                if isinstance(out[n], tuple) and first[claim.signature] != rid:
                    out[n] = "replayed: the same signed record was taken before"
        if now - self._pruned > self.tolerance:
            self._pruned = now
            await self.pool.execute("DELETE FROM ingest_signatures WHERE seen_at < now() - make_interval(secs => $1)",
                                    float(2 * self.tolerance))
        return out


def ingest_handler(pool: asyncpg.Pool, ingestor: InvoiceIngestor, invoicing: Invoicing, consumer: str,
                   verifier: Verifier) -> RawHandler:
    """Records go through the same use cases as the HTTP API, consecutive ones of a source and kind
    together. The inbox (records have no event id: `record_id`, where each sits on the broker)
    keeps a redelivered record from being applied again: an invoice's older version must not
    adjust it back. Invoices and customers are marked in the transactions that apply them;
    payments and credit notes (idempotent by external id anyway) and rejects right after."""

    async def mark(db, marks: list[tuple[uuid.UUID, str, str]]) -> None:
        if marks:
            await claim_ids(db, consumer, [m[0] for m in marks], [m[1] for m in marks], [m[2] for m in marks])

    async def handle(records, reject) -> None:
        ids = [record_id(r) for r in records]
        seen = await seen_ids(pool, consumer, ids)
        rejected: list[tuple[uuid.UUID, str, str]] = []

        async def refuse(rid: uuid.UUID, r, tenant: str, reason: str) -> None:
            await reject(r, reason)
            rejected.append((rid, "ingest:rejected", tenant))

        fresh = [(rid, r) for rid, r in zip(ids, records) if rid not in seen]
        signers = await verifier.verify([r for _, r in fresh], [rid for rid, _ in fresh]) if fresh else []
        parsed = []
        for (rid, r), signer in zip(fresh, signers):
            if isinstance(signer, str):
                await refuse(rid, r, "?", signer)
                continue
            tenant, source = signer
            try:
                m = IngestRecord.model_validate_json(r.value or b"")
            except ValidationError as exc:
                field, reason = validation_problem(exc)
                await refuse(rid, r, tenant, f"unreadable ingest record: {field}: {reason}")
                continue
            if (m.tenant_id or tenant, m.billing_source or source) != (tenant, source):
                await refuse(rid, r, tenant, f"cross-tenant: the record names tenant {m.tenant_id!r}, source"
                                             f" {m.billing_source!r}; its signature is of {tenant!r}, {source!r}")
                continue
            parsed.append((rid, r, m, tenant, source))
        # Consecutive records of one source and kind go through as one batch, in order.
        for (tenant, source, kind), group in groupby(parsed, key=lambda p: (p[3], p[4], p[2].kind)):
            items = [(rid, r, m) for rid, r, m, _, _ in group]
            if kind in ("invoice", "customer"):
                async def in_transaction(conn, indexes: list[int], items=items, kind=kind, tenant=tenant) -> None:
                    await mark(conn, [(items[i][0], f"ingest:{kind}", tenant) for i in indexes])

                apply = ingestor.ingest if kind == "invoice" else ingestor.upsert_customers
                results = await apply(tenant, source, [m.record for _, _, m in items], in_transaction)
                for (rid, r, _), result in zip(items, results, strict=True):
                    if result.status == "rejected":
                        await refuse(rid, r, tenant, f"record.{result.field}: {result.reason}")
                continue
            done = []
            for rid, r, m in items:
                try:
                    if kind == "payment":
                        await invoicing.record_payment(tenant, source, RecordPayment.model_validate(m.record))
                    else:
                        await invoicing.record_credit_note(tenant, source, CreditNoteRecord.model_validate(m.record))
                    done.append((rid, f"ingest:{kind}", tenant))
                except ValidationError as exc:
                    field, reason = validation_problem(exc)
                    await refuse(rid, r, tenant, f"record.{field}: {reason}")
                except DomainError as exc:
                    await refuse(rid, r, tenant, f"record.{exc.field}: {exc.reason}")
            await mark(pool, done)
        await mark(pool, rejected)

    return handle
