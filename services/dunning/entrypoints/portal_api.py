"""The customer portal over HTTP. The routes under /v1/portal/{token} take no API key: the
signed link is the credential, bound to one tenant and customer and ending at a time. Reading
changes nothing (mail scanners open links before people do); every change is a POST. The pages
are the console's (/p/{token}); these are what they call."""
from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field, field_validator

from services.dunning.service_layer.portal import Portal
from shared.auth import Principal, require_role
from shared.contract.events import DisputeReason, Language
from shared.contract.text import SafeText

router = APIRouter(prefix="/v1")
Token = Annotated[str, Path(min_length=10, max_length=2000, description="the signed link's token")]
Collector = Annotated[Principal, Depends(require_role("collector"))]
Manager = Annotated[Principal, Depends(require_role())]


def _portal(request: Request) -> Portal:
    return request.app.state.portal


# -- managers and collectors ----------------------------------------------------------------------

class PortalSettingsIn(BaseModel):
    payment_instructions: dict[Language, SafeText] = Field(
        default={}, description="per language, how to pay: bank, IBAN, the reference to quote (shown on the portal)")
    link_days: int = Field(default=30, ge=1, le=365, description="a notice's link works this many days")

    @field_validator("payment_instructions")
    @classmethod
    def _short(cls, v: dict[str, str]) -> dict[str, str]:
        for language, text in v.items():
            if len(text) > 2000:
                raise ValueError(f"the {language} instructions are longer than 2000 characters")
        return v


class PortalSettingsOut(PortalSettingsIn):
    updated_at: datetime | None
    updated_by: str | None


@router.get("/portal-settings", response_model=PortalSettingsOut, tags=["portal"])
async def get_portal_settings(principal: Collector, request: Request) -> PortalSettingsOut:
    return PortalSettingsOut(**await _portal(request).settings(principal.tenant_id))


@router.put("/portal-settings", response_model=PortalSettingsOut, tags=["portal"])
async def put_portal_settings(body: PortalSettingsIn, principal: Manager, request: Request) -> PortalSettingsOut:
    """What the portal tells customers about paying, and how long the links in notices work."""
    return PortalSettingsOut(**await _portal(request).put_settings(
        principal.tenant_id, body.payment_instructions, body.link_days, principal.key_id))


class LinkOut(BaseModel):
    token: str
    url: str | None = Field(description="the portal page (PORTAL_URL/<token>); none when PORTAL_URL is not set")
    expires_at: datetime


@router.post("/customers/{customer_id}/portal-link", response_model=LinkOut, status_code=201, tags=["portal"])
async def portal_link(customer_id: Annotated[str, Path(min_length=1, max_length=200)], principal: Collector,
                      request: Request) -> LinkOut:
    """A link for one customer, as the notices carry (for a collector to send by hand)."""
    portal = _portal(request)
    token, expires = await portal.link(principal.tenant_id, customer_id)
    return LinkOut(token=token, url=portal.url(token) if portal.base_url else None, expires_at=expires)


# -- the customer, by their link ------------------------------------------------------------------

@router.get("/portal/{token}", tags=["portal"])
async def portal_view(token: Token, request: Request) -> dict[str, Any]:
    """What the customer owes, per case and invoice (fees and interest included), what already
    holds each invoice (a promise, plan or dispute), what they may arrange alone, how to pay,
    and their language."""
    return await _portal(request).view(token)


@router.get("/portal/{token}/statement.pdf", tags=["portal"], responses={200: {"content": {"application/pdf": {}}}})
async def portal_statement(token: Token, request: Request) -> Response:
    pdf, customer_id = await _portal(request).statement_pdf(token)
    return Response(pdf, media_type="application/pdf",
                    headers={"Content-Disposition": 'attachment; filename="statement.pdf"'})


class PortalPromise(BaseModel):
    case_id: uuid.UUID
    promised_date: date


class PortalDispute(BaseModel):
    invoice_id: uuid.UUID | None = Field(default=None, description="none: the whole account")
    reason_code: DisputeReason
    description: SafeText = Field(min_length=3, max_length=2000)


class PortalPlan(BaseModel):
    case_id: uuid.UUID
    count: int = Field(ge=2, le=60)
    first_due: date
    every_days: int = Field(default=30, ge=7, le=92)


def _made(row, key: str) -> dict[str, Any]:
    return {key: str(row[key]), "status": row["status"]}


@router.post("/portal/{token}/promises", status_code=201, tags=["portal"])
async def portal_promise(token: Token, body: PortalPromise, request: Request) -> dict[str, Any]:
    """The customer promises to pay what is open in the case (and not yet promised, planned or
    disputed) by a date within the policy's limit: PromiseToPayRecorded, dunning pauses."""
    return _made(await _portal(request).promise(token, body.case_id, body.promised_date), "promise_id")


@router.post("/portal/{token}/disputes", status_code=201, tags=["portal"])
async def portal_dispute(token: Token, body: PortalDispute, request: Request) -> dict[str, Any]:
    """The customer disputes an invoice (or the account) with a reason: DisputeOpened, dunning
    pauses what it covers until someone resolves it."""
    return _made(await _portal(request).dispute(token, body.invoice_id, body.reason_code, body.description),
                 "dispute_id")


@router.post("/portal/{token}/payment-plans", status_code=201, tags=["portal"])
async def portal_plan(token: Token, body: PortalPlan, request: Request) -> dict[str, Any]:
    """The customer sets up a plan of equal instalments within the policy's limits:
    PaymentPlanAgreed, the covered invoices are not dunned while it holds."""
    return _made(await _portal(request).plan(token, body.case_id, body.count, body.first_due, body.every_days),
                 "plan_id")
