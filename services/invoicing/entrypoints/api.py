"""Invoicing HTTP API."""
from __future__ import annotations

import uuid
from datetime import date
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from pydantic import BaseModel

from services.invoicing.adapters import repository as repo
from services.invoicing.domain.model import age_receivables
from services.invoicing.service_layer.commands import IssueInvoice, RecordPayment
from services.invoicing.service_layer.handlers import Invoicing
from shared.auth import Principal, require_role
from shared.http import DomainError

router = APIRouter(prefix="/v1")
Writer = Annotated[Principal, Depends(require_role("billing-source"))]
Reader = Annotated[Principal, Depends(require_role("billing-source", "collector", "analytics"))]


def use_cases(request: Request) -> Invoicing:
    return request.app.state.invoicing


UseCases = Annotated[Invoicing, Depends(use_cases)]


class Created(BaseModel):
    id: str
    status: str


def _source(principal: Principal, requested: str | None) -> str:
    if principal.source_name:
        if requested and requested != principal.source_name:
            raise DomainError("billing_source", f"this API key belongs to billing source {principal.source_name!r}", 403)
        return principal.source_name
    if not requested:
        raise DomainError("billing_source", "required: this API key is not bound to a billing source")
    return requested


@router.post("/invoices", response_model=Created, status_code=201, tags=["invoices"],
             responses={200: {"model": Created, "description": "already recorded, nothing changed"}})
async def issue_invoice(body: IssueInvoice, principal: Writer, invoicing: UseCases, response: Response) -> Created:
    outcome = await invoicing.issue_invoice(principal.tenant_id, _source(principal, body.billing_source), body)
    if outcome.status == "unchanged":
        response.status_code = status.HTTP_200_OK
    return Created(id=outcome.id, status=outcome.status)


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
