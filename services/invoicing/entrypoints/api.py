"""Invoicing HTTP API."""
from __future__ import annotations

import uuid
from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from pydantic import BaseModel, Field

from services.invoicing.adapters import repository as repo
from services.invoicing.domain.model import age_receivables
from services.invoicing.service_layer.commands import InvoiceRecord, RecordPayment
from services.invoicing.service_layer.handlers import Invoicing
from shared.auth import Principal, new_key, require_role, store_api_key
from shared.contract.money import CurrencyCode
from shared.http import DomainError

router = APIRouter(prefix="/v1")
Writer = Annotated[Principal, Depends(require_role("billing-source"))]
Reader = Annotated[Principal, Depends(require_role("billing-source", "collector", "analytics"))]
Admin = Annotated[Principal, Depends(require_role("admin"))]


def use_cases(request: Request) -> Invoicing:
    return request.app.state.invoicing


UseCases = Annotated[Invoicing, Depends(use_cases)]


class Created(BaseModel):
    id: str
    status: str
    changes: dict[str, dict[str, Any]] | None = Field(default=None, description="for adjusted invoices")


def _source(principal: Principal, requested: str | None) -> str:
    if principal.source_name:
        if requested and requested != principal.source_name:
            raise DomainError("billing_source", f"this API key belongs to billing source {principal.source_name!r}", 403)
        return principal.source_name
    if not requested:
        raise DomainError("billing_source", "required: this API key is not bound to a billing source")
    return requested


class ItemOut(BaseModel):
    index: int
    status: str = Field(description="created, unchanged, adjusted, cancelled or rejected")
    id: str | None = None
    field: str | None = Field(default=None, description="for rejected items: the field at fault")
    reason: str | None = None
    changes: dict[str, dict[str, Any]] | None = Field(default=None, description="for adjusted items: old and new values")


_STATUS_CODE = {"created": 201, "unchanged": 200, "adjusted": 200, "cancelled": 200}


@router.post("/invoices", response_model=Created, response_model_exclude_none=True, status_code=201,
             tags=["invoices"],
             responses={200: {"model": Created, "description": "already recorded: unchanged, adjusted or cancelled"},
                        409: {"description": "conflicts with what is recorded under this external_id"}})
async def ingest_invoice(body: InvoiceRecord, principal: Writer, request: Request, response: Response) -> Created:
    """Issue, adjust or cancel one invoice; (billing source, external_id) identifies it."""
    source = _source(principal, body.billing_source)
    [result] = await request.app.state.ingestor.ingest(principal.tenant_id, source, [body])
    if result.status == "rejected":
        raise DomainError(result.field or "body", result.reason or "rejected", 409 if result.id else 422)
    response.status_code = _STATUS_CODE[result.status]
    return Created(id=result.id, status=result.status, changes=result.changes)


class BulkInvoices(BaseModel):
    billing_source: str | None = Field(default=None, min_length=1, max_length=100)
    items: list[dict[str, Any]] = Field(min_length=1, max_length=10_000)


class BulkOut(BaseModel):
    summary: dict[str, int]
    results: list[ItemOut]


@router.post("/invoices/bulk", response_model=BulkOut, tags=["invoices"])
async def ingest_invoices(body: BulkInvoices, principal: Writer, request: Request) -> BulkOut:
    """Up to 10,000 invoices; a result per item. Valid items are kept even when others are rejected."""
    source = _source(principal, body.billing_source)
    results = await request.app.state.ingestor.ingest(principal.tenant_id, source, body.items)
    summary = dict.fromkeys(("created", "unchanged", "adjusted", "cancelled", "rejected"), 0)
    for r in results:
        summary[r.status] += 1
    return BulkOut(summary=summary, results=[ItemOut(**vars(r)) for r in results])


class BillingSourceIn(BaseModel):
    name: str = Field(min_length=1, max_length=100, pattern=r"^[a-z0-9][a-z0-9._-]*$")
    default_currency: CurrencyCode


class BillingSourceOut(BaseModel):
    name: str
    default_currency: str
    api_key: str = Field(description="shown once; only its hash is kept")


@router.post("/billing-sources", response_model=BillingSourceOut, status_code=201, tags=["billing sources"])
async def register_billing_source(body: BillingSourceIn, principal: Admin, request: Request) -> BillingSourceOut:
    """Register a billing source of this tenant and issue its API key (billing-source role, bound to it)."""
    pool = request.app.state.pool
    key_id, secret, token = new_key()
    async with pool.acquire() as conn, conn.transaction():
        created = await conn.fetchval(
            "INSERT INTO billing_sources (tenant_id, name, default_currency) VALUES ($1, $2, $3)"
            " ON CONFLICT DO NOTHING RETURNING 1",
            principal.tenant_id, body.name, body.default_currency,
        )
        if not created:
            raise DomainError("name", f"billing source {body.name!r} is already registered", 409)
        await store_api_key(conn, key_id=key_id, secret=secret, tenant_id=principal.tenant_id, role="billing-source",
                            source_name=body.name, label=f"billing source {body.name}")
    return BillingSourceOut(name=body.name, default_currency=body.default_currency, api_key=token)


@router.post("/payments", response_model=Created, status_code=201, tags=["payments"],
             responses={200: {"model": Created, "description": "already recorded, nothing changed"}})
async def record_payment(body: RecordPayment, principal: Writer, invoicing: UseCases, response: Response) -> Created:
    outcome, _ = await invoicing.record_payment(principal.tenant_id, _source(principal, body.billing_source), body)
    if outcome.status == "unchanged":
        response.status_code = status.HTTP_200_OK
    return Created(id=outcome.id, status=outcome.status)


class InvoiceOut(BaseModel):
    invoice_id: str
    billing_source: str
    external_id: str
    customer_id: str
    number: str
    currency: str
    amount_minor: int
    open_minor: int
    issue_date: date
    due_date: date
    status: str


@router.get("/invoices/{invoice_id}", response_model=InvoiceOut, tags=["invoices"])
async def get_invoice(invoice_id: uuid.UUID, principal: Reader, request: Request) -> InvoiceOut:
    row = await repo.get_invoice(request.app.state.pool, principal.tenant_id, invoice_id)
    if row is None:
        raise HTTPException(404, f"no invoice {invoice_id} in this tenant")
    return InvoiceOut(**{**dict(row), "invoice_id": str(row["invoice_id"])})


class AgingReport(BaseModel):
    as_of: date
    buckets: list[str]
    by_currency: dict[str, dict[str, int]]


@router.get("/reports/aging", response_model=AgingReport, tags=["reports"])
async def aging(principal: Reader, request: Request, as_of: Annotated[date | None, Query()] = None) -> AgingReport:
    as_of = as_of or request.app.state.host.clock.now().date()
    rows = await request.app.state.pool.fetch(
        "SELECT customer_id, currency, open_minor, due_date FROM invoices"
        " WHERE tenant_id = $1 AND status = 'open' AND open_minor > 0 AND issue_date <= $2",
        principal.tenant_id, as_of,
    )
    table = age_receivables([(r["customer_id"], r["currency"], r["open_minor"], r["due_date"]) for r in rows], as_of)
    return AgingReport(as_of=as_of, buckets=["current", "1-30", "31-60", "61-90", "90+"], by_currency=table)
