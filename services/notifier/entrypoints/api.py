"""Notifier HTTP API: notification history, template preview, unsubscribe links."""
from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from services.notifier.adapters.templates import render_email, render_sms
from shared.auth import Principal, require_role
from shared.contract.money import CurrencyCode
from shared.contract.text import SafeText

router = APIRouter(prefix="/v1")
Reader = Annotated[Principal, Depends(require_role("collector", "analytics"))]


class NotificationOut(BaseModel):
    notification_key: str
    customer_id: str
    case_id: str
    step: str
    channel: str
    template: str
    status: str
    language: str | None
    send_after: datetime
    sent_at: datetime | None
    last_error: str | None


@router.get("/notifications", response_model=list[NotificationOut], tags=["notifications"])
async def list_notifications(
    principal: Reader, request: Request,
    customer_id: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[NotificationOut]:
    rows = await request.app.state.pool.fetch(
        "SELECT * FROM notifications WHERE tenant_id = $1 AND ($2::text IS NULL OR customer_id = $2)"
        " ORDER BY requested_at, notification_key LIMIT $3",
        principal.tenant_id, customer_id, limit,
    )
    return [NotificationOut(**{k: r[k] for k in NotificationOut.model_fields}) for r in rows]


class PreviewItem(BaseModel):
    number: SafeText = Field(min_length=1, max_length=100)
    currency: CurrencyCode
    open_amount_minor: int = Field(ge=0)
    due_date: date


class PreviewRequest(BaseModel):
    template: Literal["reminder_pre_due", "reminder_due", "reminder_overdue", "final_notice"]
    language: Literal["en", "tr", "cs", "fa"] = "en"
    name: SafeText = Field(default="Example Customer", min_length=1, max_length=300)
    items: list[PreviewItem] = Field(min_length=1, max_length=500)


@router.post("/templates/preview", tags=["templates"])
async def preview(body: PreviewRequest, principal: Reader) -> dict:
    items = [i.model_dump(mode="json") for i in body.items]
    email = render_email(body.template, body.language, body.name, items, "https://example.invalid/unsubscribe")
    return {"subject": email.subject, "text": email.text, "html": email.html,
            "sms": render_sms(body.template, body.language, body.name, items)}


@router.api_route("/unsubscribe/{token}", methods=["GET", "POST"], response_class=HTMLResponse, tags=["opt-out"])
async def unsubscribe(token: str, request: Request) -> str:
    """One-click unsubscribe (RFC 8058): honoured at once, no login."""
    done = await request.app.state.pool.fetchval(
        "UPDATE contacts SET email_opt_out = true, updated_at = now() WHERE unsubscribe_token = $1 RETURNING 1", token
    )
    if not done:
        raise HTTPException(404, "unknown unsubscribe link")
    return "<html><body><p>You will receive no more collection emails. / Artık tahsilat e-postası almayacaksınız.</p></body></html>"
