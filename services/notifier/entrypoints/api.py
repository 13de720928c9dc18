"""Notifier HTTP API: notification history, template preview, unsubscribe links."""
from __future__ import annotations

import html
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


_DONE = ("You will receive no more collection emails. / Artık tahsilat e-postası almayacaksınız. /"
         " Nebudete dostávat další e-maily o pohledávkách. / دیگر ایمیل پیگیری پرداخت دریافت نخواهید کرد.")


def _unsubscribe_page(body: str) -> str:
    return ('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Unsubscribe</title>'
            '<meta name="viewport" content="width=device-width, initial-scale=1"></head>'
            f"<body><main>{body}</main></body></html>")


@router.get("/unsubscribe/{token}", response_class=HTMLResponse, tags=["opt-out"])
async def unsubscribe_page(token: str, request: Request) -> HTMLResponse:
    """The page the link opens. It changes nothing: mail scanners fetch links before people do."""
    opted_out = await request.app.state.notifier.email_opted_out(token)
    if opted_out is None:
        raise HTTPException(404, "unknown unsubscribe link")
    if opted_out:
        return HTMLResponse(_unsubscribe_page(f"<p>{html.escape(_DONE)}</p>"), headers=_NO_STORE)
    action = html.escape(str(request.url.path))
    return HTMLResponse(_unsubscribe_page(
        "<h1>Stop collection emails? / Tahsilat e-postaları durdurulsun mu?</h1>"
        f'<form method="post" action="{action}"><button type="submit">Unsubscribe / Aboneliği iptal et</button></form>'),
        headers=_NO_STORE)


@router.post("/unsubscribe/{token}", response_class=HTMLResponse, tags=["opt-out"])
async def unsubscribe(token: str, request: Request) -> HTMLResponse:
    """Unsubscribe: the page's button, and RFC 8058 one-click (a POST of
    `List-Unsubscribe=One-Click` from the mail client), honoured at once, no login."""
    if not await request.app.state.notifier.unsubscribe(token):
        raise HTTPException(404, "unknown unsubscribe link")
    return HTMLResponse(_unsubscribe_page(f"<p>{html.escape(_DONE)}</p>"), headers=_NO_STORE)


_NO_STORE = {"Cache-Control": "no-store"}
