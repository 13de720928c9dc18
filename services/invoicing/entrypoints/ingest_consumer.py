"""Billing sources that publish to `ar.ingest.v1` get the same validation and outcome as the
HTTP API. A record that cannot be read, names an unregistered billing source, or is rejected
goes to the dead-letter topic with the reason; the consumer carries on.

Record value (JSON): {"tenant_id": ..., "billing_source": ..., "kind": "customer" | "invoice" | "payment" | "credit_note",
"record": <the same body as PUT /v1/customers/{id}, POST /v1/invoices, /v1/payments or /v1/credit-notes>};
key: "tenant_id:customer_id"."""
from __future__ import annotations

import uuid
from itertools import groupby
from typing import Any, Literal

import asyncpg
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.invoicing.service_layer.commands import CreditNoteRecord, RecordPayment
from services.invoicing.service_layer.handlers import Invoicing
from services.invoicing.service_layer.ingest import InvoiceIngestor, validation_problem
from shared.http import DomainError
from shared.inbox import claim_ids, record_id, seen_ids
from shared.processing import RawHandler


class IngestRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tenant_id: str = Field(min_length=1, max_length=200)
    billing_source: str = Field(min_length=1, max_length=100)
    kind: Literal["customer", "invoice", "payment", "credit_note"]
    record: dict[str, Any]


def ingest_handler(pool: asyncpg.Pool, ingestor: InvoiceIngestor, invoicing: Invoicing, consumer: str) -> RawHandler:
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

        parsed = []
        for rid, r in zip(ids, records):
            if rid in seen:
                continue
            try:
                parsed.append((rid, r, IngestRecord.model_validate_json(r.value or b"")))
            except ValidationError as exc:
                field, reason = validation_problem(exc)
                await refuse(rid, r, "?", f"unreadable ingest record: {field}: {reason}")
        registered = {
            (row["tenant_id"], row["name"]) for row in await pool.fetch(
                "SELECT tenant_id, name FROM billing_sources WHERE tenant_id = ANY($1::text[])",
                list({m.tenant_id for _, _, m in parsed}))
        } if parsed else set()
        # Consecutive records of one source and kind go through as one batch, in order.
        for (tenant, source, kind), group in groupby(parsed, key=lambda p: (p[2].tenant_id, p[2].billing_source,
                                                                               p[2].kind)):
            items = list(group)
            if (tenant, source) not in registered:
                for rid, r, _ in items:
                    await refuse(rid, r, tenant, f"billing_source: {source!r} is not registered for tenant {tenant!r}")
                continue
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
