"""Billing sources that publish to `ar.ingest.v1` get the same validation and outcome as the
HTTP API. A record that cannot be read, names an unregistered billing source, or is rejected
goes to the dead-letter topic with the reason; the consumer carries on.

Record value (JSON): {"tenant_id": ..., "billing_source": ..., "kind": "customer" | "invoice" | "payment" | "credit_note",
"record": <the same body as PUT /v1/customers/{id}, POST /v1/invoices, /v1/payments or /v1/credit-notes>};
key: "tenant_id:customer_id"."""
from __future__ import annotations

from itertools import groupby
from typing import Any, Literal

import asyncpg
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.invoicing.service_layer.commands import CreditNoteRecord, RecordPayment
from services.invoicing.service_layer.handlers import Invoicing
from services.invoicing.service_layer.ingest import InvoiceIngestor, validation_problem
from shared.http import DomainError
from shared.processing import RawHandler


class IngestRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tenant_id: str = Field(min_length=1, max_length=200)
    billing_source: str = Field(min_length=1, max_length=100)
    kind: Literal["customer", "invoice", "payment", "credit_note"]
    record: dict[str, Any]


def ingest_handler(pool: asyncpg.Pool, ingestor: InvoiceIngestor, invoicing: Invoicing) -> RawHandler:
    async def handle(records, reject) -> None:
        parsed = []
        for r in records:
            try:
                parsed.append((r, IngestRecord.model_validate_json(r.value or b"")))
            except ValidationError as exc:
                field, reason = validation_problem(exc)
                await reject(r, f"unreadable ingest record: {field}: {reason}")
        if not parsed:
            return
        registered = {
            (row["tenant_id"], row["name"]) for row in await pool.fetch(
                "SELECT tenant_id, name FROM billing_sources WHERE tenant_id = ANY($1::text[])",
                list({m.tenant_id for _, m in parsed}))
        }
        # Consecutive records of one source and kind go through as one batch, in order.
        for (tenant, source, kind), group in groupby(parsed, key=lambda p: (p[1].tenant_id, p[1].billing_source, p[1].kind)):
            items = list(group)
            if (tenant, source) not in registered:
                for r, _ in items:
                    await reject(r, f"billing_source: {source!r} is not registered for tenant {tenant!r}")
                continue
            if kind in ("invoice", "customer"):
                apply = ingestor.ingest if kind == "invoice" else ingestor.upsert_customers
                results = await apply(tenant, source, [m.record for _, m in items])
                for (r, _), result in zip(items, results, strict=True):
                    if result.status == "rejected":
                        await reject(r, f"record.{result.field}: {result.reason}")
                continue
            for r, m in items:
                try:
                    if kind == "payment":
                        await invoicing.record_payment(tenant, source, RecordPayment.model_validate(m.record))
                    else:
                        await invoicing.record_credit_note(tenant, source, CreditNoteRecord.model_validate(m.record))
                except ValidationError as exc:
                    field, reason = validation_problem(exc)
                    await reject(r, f"record.{field}: {reason}")
                except DomainError as exc:
                    await reject(r, f"record.{exc.field}: {exc.reason}")

    return handle
