"""Notifier HTTP API: notification history, contact rules, templates and their preview,
contacts' preferences and opt-outs, suppressions, unsubscribe links, provider webhooks."""
from __future__ import annotations

import html
import json
import secrets
import time as walltime
from datetime import date, datetime, time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field, field_validator, model_validator

from services.notifier.adapters import store
from services.notifier.adapters.templates import TemplateRejected, TemplateTexts, validate_override
from services.notifier.domain.delivery import ReportError, email_events, twilio_status
from services.notifier.domain.rules import ContactCap, SendingWindow
from services.notifier.domain.signatures import SignatureError, verify, verify_twilio
from services.notifier.service_layer import tracking
from services.notifier.service_layer.handlers import Notifier
from services.notifier.service_layer.previews import preview_notice
from shared.auth import Principal, require_role
from shared.contract.money import CurrencyCode
from shared.contract.templates import LANGUAGES, NOTICE_TEMPLATES
from shared.contract.text import SafeText
from shared.http import DomainError

router = APIRouter(prefix="/v1")
Reader = Annotated[Principal, Depends(require_role("collector", "analytics"))]
Collector = Annotated[Principal, Depends(require_role("collector"))]
Admin = Annotated[Principal, Depends(require_role("admin"))]
Language = Literal["en", "tr", "cs", "fa"]
TemplateName = Literal["reminder_pre_due", "reminder_due", "reminder_overdue", "final_notice", "balance_confirmation",
                       "settlement_offer"]
OptChannel = Literal["email", "sms", "webhook"]
Status = Literal["pending", "sending", "sent", "delivered", "failed", "suppressed"]


def _notifier(request: Request) -> Notifier:
    return request.app.state.notifier


# -- notifications ------------------------------------------------------------------------------

class NotificationOut(BaseModel):
    notification_key: str
    customer_id: str
    case_id: str
    step: str
    channel: str
    template: str
    status: str
    language: str | None
    fallback_from: str | None = Field(description="the customer's language when the tenant does not offer it")
    requested_at: datetime
    send_after: datetime
    deferred_reason: str | None
    sent_at: datetime | None
    delivered_at: datetime | None
    failed_at: datetime | None
    attempts: int
    interrupted: int = Field(description="sends cut off between the provider and the record (a crash): sent again")
    sms_segments: int | None
    last_error: str | None


class HistoryEntry(BaseModel):
    at: datetime
    status: str
    detail: str | None


class NotificationDetail(NotificationOut):
    history: list[HistoryEntry]


def _out(model: type[BaseModel], row: Any, **extra: Any) -> Any:
    return model(**{k: row[k] for k in model.model_fields if k not in extra}, **extra)


@router.get("/notifications", response_model=list[NotificationOut], tags=["notifications"])
async def list_notifications(
    principal: Reader, request: Request,
    customer_id: Annotated[str | None, Query(max_length=200)] = None,
    case_id: Annotated[str | None, Query(max_length=200)] = None,
    status: Status | None = None,
    channel: Literal["email", "sms", "webhook"] | None = None,
    since: Annotated[datetime | None, Query(description="requested at or after")] = None,
    until: Annotated[datetime | None, Query(description="requested before")] = None,
    after: Annotated[str | None, Query(max_length=600, description="the last key of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[NotificationOut]:
    """Notifications in the order they were requested, filtered; page with `after`."""
    for name, moment in (("since", since), ("until", until)):
        if moment is not None and moment.tzinfo is None:
            raise DomainError(name, "needs a timezone offset, e.g. 2026-03-01T00:00:00Z")
    pool = request.app.state.pool
    cursor = None
    if after:
        last = await store.notification(pool, principal.tenant_id, after)
        if last is None:
            raise DomainError("after", "no such notification")
        cursor = (last["requested_at"], after)
    rows = await store.list_notifications(pool, principal.tenant_id, customer_id=customer_id, case_id=case_id,
                                          status=status, channel=channel, since=since, until=until, after=cursor,
                                          limit=limit)
    return [_out(NotificationOut, r) for r in rows]


@router.get("/notifications/{notification_key}", response_model=NotificationDetail, tags=["notifications"])
async def get_notification(notification_key: str, principal: Reader, request: Request) -> NotificationDetail:
    """One notification and everything that happened to it: requested, deferred (why, until
    when), sent, delivered or failed, opted out."""
    pool = request.app.state.pool
    row = await store.notification(pool, principal.tenant_id, notification_key)
    if row is None:
        raise DomainError("notification_key", "no such notification", 404)
    history = [HistoryEntry(**dict(h)) for h in await store.history(pool, principal.tenant_id, notification_key)]
    return _out(NotificationDetail, row, history=history)


# -- contact rules --------------------------------------------------------------------------------

class ContactRulesIn(BaseModel):
    default_language: Language = "en"
    languages: list[Language] = Field(default=list(LANGUAGES), min_length=1,
                                      description="languages the tenant writes to customers in")
    allowed_send_start: time = Field(default=time(8), description="customers' local time")
    allowed_send_end: time = Field(default=time(21), description="exclusive; 00:00 is midnight")
    excluded_weekdays: list[int] = Field(default_factory=list, max_length=6, description="ISO, 1 Monday .. 7 Sunday")
    holidays: list[date] = Field(default_factory=list, max_length=400)
    contact_cap_messages: int = Field(default=7, ge=0, le=100, description="per customer per window; 0: no cap")
    contact_cap_days: int = Field(default=7, ge=1, le=90)
    sms_segment_limit: int = Field(default=3, ge=1, le=10)

    @field_validator("excluded_weekdays")
    @classmethod
    def _weekdays(cls, v: list[int]) -> list[int]:
        if any(d < 1 or d > 7 for d in v):
            raise ValueError("weekdays are 1 (Monday) to 7 (Sunday)")
        return sorted(set(v))

    @model_validator(mode="after")
    def _consistent(self):
        if self.default_language not in self.languages:
            raise ValueError("default_language must be one of languages")
        if self.allowed_send_end != time(0) and self.allowed_send_end <= self.allowed_send_start:
            raise ValueError("allowed_send_end must be after allowed_send_start")
        return self


@router.get("/settings", tags=["contact rules"])
async def get_settings(principal: Reader, request: Request) -> dict[str, Any]:
    n = _notifier(request)
    return (await store.tenant_rules(n.pool, [principal.tenant_id], n.default_rules))[principal.tenant_id].as_dict()


@router.put("/settings", tags=["contact rules"])
async def put_settings(body: ContactRulesIn, principal: Admin, request: Request) -> dict[str, Any]:
    """The tenant's contact rules: languages, allowed sending hours in the customer's timezone,
    excluded weekdays and holidays, the contact cap, the SMS length limit."""
    n = _notifier(request)
    rules = store.ContactRules(
        SendingWindow(body.allowed_send_start, body.allowed_send_end, frozenset(body.excluded_weekdays),
                      frozenset(body.holidays)),
        ContactCap(body.contact_cap_messages, body.contact_cap_days), body.default_language, tuple(body.languages),
        body.sms_segment_limit, custom=True)
    await store.put_tenant_rules(n.pool, principal.tenant_id, rules, principal.key_id)
    return rules.as_dict()


# -- templates ------------------------------------------------------------------------------------

class TemplateTextsIn(BaseModel):
    subject: str | None = Field(default=None, max_length=300)
    body: str | None = Field(default=None, max_length=20_000)
    sms: str | None = Field(default=None, max_length=2_000)


class TemplateOverrideIn(BaseModel):
    languages: dict[Language, TemplateTextsIn] = Field(min_length=1)


@router.get("/templates", tags=["templates"])
async def list_templates(principal: Reader, request: Request) -> list[dict[str, Any]]:
    """Every template, the languages shipped, and the tenant's own wording where it has one."""
    rows = await store.list_template_overrides(request.app.state.pool, principal.tenant_id)
    own: dict[str, dict[str, Any]] = {}
    for r in rows:
        own.setdefault(r["template"], {})[r["language"]] = {"subject": r["subject"], "body": r["body"],
                                                             "sms": r["sms"], "updated_at": r["updated_at"]}
    return [{"template": name, "languages": sorted(langs), "overrides": own.get(name, {})}
            for name, langs in sorted(NOTICE_TEMPLATES.items())]


@router.put("/templates/{template}", tags=["templates"])
async def put_template(template: TemplateName, body: TemplateOverrideIn, principal: Admin,
                       request: Request) -> dict[str, Any]:
    """Replace the tenant's wording of a template (Jinja2, sandboxed). Refused, naming the field,
    unless it renders for a sample notice in every language given and each SMS fits the
    tenant's segment limit."""
    n = _notifier(request)
    rules = (await store.tenant_rules(n.pool, [principal.tenant_id], n.default_rules))[principal.tenant_id]
    texts = {lang: TemplateTexts(subject=t.subject, body=t.body, sms=t.sms) for lang, t in body.languages.items()}
    try:
        validate_override(template, texts, sms_segment_limit=rules.sms_segment_limit)
    except TemplateRejected as exc:
        raise DomainError(exc.field, exc.reason) from None
    async with n.pool.acquire() as conn:
        await store.replace_template_override(conn, principal.tenant_id, template, texts, principal.key_id)
    return {"template": template, "languages": sorted(texts)}


@router.delete("/templates/{template}", status_code=204, tags=["templates"])
async def delete_template(template: TemplateName, principal: Admin, request: Request) -> Response:
    """Back to the shipped wording."""
    if not await store.delete_template_override(request.app.state.pool, principal.tenant_id, template):
        raise DomainError("template", "the tenant has no wording of its own for it", 404)
    return Response(status_code=204)


class PreviewItem(BaseModel):
    number: SafeText = Field(min_length=1, max_length=100)
    currency: CurrencyCode
    open_amount_minor: int = Field(ge=0)
    due_date: date
    days_overdue: int | None = Field(default=None, ge=0)
    fees_minor: int = Field(default=0, ge=0)
    interest_minor: int = Field(default=0, ge=0)


class PreviewRequest(BaseModel):
    template: TemplateName
    language: Language = "en"
    name: SafeText | None = Field(default=None, min_length=1, max_length=300)
    items: list[PreviewItem] | None = Field(default=None, min_length=1, max_length=500,
                                            description="the items to show; none: a sample notice")
    case_id: str | None = Field(default=None, max_length=200,
                                description="show this case's latest notice instead of a sample")
    overrides: dict[Language, TemplateTextsIn] | None = Field(
        default=None, description="wording to try before saving it; none: the tenant's saved wording")


@router.post("/templates/preview", tags=["templates"])
async def preview(body: PreviewRequest, principal: Reader, request: Request) -> dict[str, Any]:
    """Render a template as the customer would get it: for a sample notice, given items, or a
    real case's latest notice, with the tenant's wording and languages."""
    n = _notifier(request)
    overrides = None if body.overrides is None else {
        lang: TemplateTexts(subject=t.subject, body=t.body, sms=t.sms) for lang, t in body.overrides.items()}
    return await preview_notice(n.pool, n.default_rules, principal.tenant_id, body.template, body.language,
                                case_id=body.case_id, name=body.name, overrides=overrides,
                                items=[i.model_dump(mode="json") for i in body.items] if body.items else None)


# -- contacts -----------------------------------------------------------------------------------

def _masked_email(email: str | None) -> str | None:
    if not email or "@" not in email:
        return None if not email else "***"
    local, _, domain = email.partition("@")
    return f"{local[:1]}***@{domain}"


def _masked_phone(phone: str | None) -> str | None:
    return f"{phone[:3]}***{phone[-2:]}" if phone and len(phone) > 6 else ("***" if phone else None)


def _contact_out(row: Any) -> dict[str, Any]:
    return {
        "customer_id": row["customer_id"], "language": row["language"], "timezone": row["timezone"],
        "email": _masked_email(row["email"]), "phone": _masked_phone(row["phone"]),
        "opted_out": {"email": row["email_opt_out"], "sms": row["sms_opt_out"], "webhook": row["webhook_opt_out"]},
        "declined_channels": list(row["declined_channels"] or []), "webhook_url": row["webhook_url"],
    }


@router.get("/contacts/{customer_id}", tags=["contacts"])
async def get_contact(customer_id: str, principal: Reader, request: Request) -> dict[str, Any]:
    """A contact's channels (addresses masked), opt-outs and preferences."""
    row = await store.contact(request.app.state.pool, principal.tenant_id, customer_id)
    if row is None:
        raise DomainError("customer_id", "no such contact", 404)
    return _contact_out(row)


class PreferencesIn(BaseModel):
    declined_channels: list[OptChannel] = Field(default_factory=list, description="channels the contact does not want")
    webhook_url: str | None = Field(default=None, max_length=2000, pattern=r"^https?://[^\s]+$",
                                    description="the customer's own system, which gets notices as signed JSON")
    rotate_webhook_secret: bool = False


@router.put("/contacts/{customer_id}/preferences", tags=["contacts"])
async def put_preferences(customer_id: str, body: PreferencesIn, principal: Collector,
                          request: Request) -> dict[str, Any]:
    """Channel preferences; setting a webhook endpoint (or rotating) returns its signing secret,
    once."""
    pool = request.app.state.pool
    existing = await store.contact(pool, principal.tenant_id, customer_id)
    if existing is None:
        raise DomainError("customer_id", "no such contact", 404)
    new_secret = None
    if body.webhook_url and (body.rotate_webhook_secret or not existing["webhook_secret"]):
        new_secret = "whsec_" + secrets.token_urlsafe(32)
    row = await store.set_preferences(pool, principal.tenant_id, customer_id, sorted(set(body.declined_channels)),
                                      body.webhook_url, new_secret)
    out = _contact_out(row)
    if new_secret:
        out["webhook_secret"] = new_secret
    return out


class OptIn(BaseModel):
    channel: OptChannel


class OptInWithConsent(OptIn):
    consent: SafeText = Field(min_length=3, max_length=500,
                              description="how the person agreed again (who, when, how): carried by ContactOptedIn")


@router.post("/contacts/{customer_id}/opt-out", tags=["contacts"])
async def opt_out(customer_id: str, body: OptIn, principal: Collector, request: Request) -> dict[str, Any]:
    """The person asked a collector to stop messages on a channel."""
    changed = await tracking.set_opt_out(_notifier(request), principal.tenant_id, customer_id, body.channel, True,
                                         source="api")
    if changed is None:
        raise DomainError("customer_id", "no such contact", 404)
    return {"customer_id": customer_id, "channel": body.channel, "opted_out": True, "changed": changed}


@router.post("/contacts/{customer_id}/opt-in", tags=["contacts"])
async def opt_in(customer_id: str, body: OptInWithConsent, principal: Collector, request: Request) -> dict[str, Any]:
    """The person agreed to messages again; how they agreed is recorded."""
    changed = await tracking.set_opt_out(_notifier(request), principal.tenant_id, customer_id, body.channel, False,
                                         source="api", consent=f"{body.consent} (recorded by {principal.key_id})")
    if changed is None:
        raise DomainError("customer_id", "no such contact", 404)
    return {"customer_id": customer_id, "channel": body.channel, "opted_out": False, "changed": changed}


# -- suppressions ---------------------------------------------------------------------------------

class SuppressionIn(BaseModel):
    channel: OptChannel
    address: str = Field(min_length=3, max_length=2000)
    detail: SafeText | None = Field(default=None, max_length=500)

    @field_validator("address")
    @classmethod
    def _normalised(cls, v: str) -> str:
        return v.strip().lower() if "@" in v else v.strip()


@router.get("/suppressions", tags=["suppressions"])
async def list_suppressions(principal: Reader, request: Request, channel: OptChannel | None = None,
                            limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[dict[str, Any]]:
    rows = await store.list_suppressions(request.app.state.pool, principal.tenant_id, channel, limit)
    return [{"channel": r["channel"], "address": r["address"], "reason": r["reason"], "detail": r["detail"],
             "notification_key": r["notification_key"], "created_at": r["created_at"], "created_by": r["created_by"]}
            for r in rows]


@router.post("/suppressions", status_code=201, tags=["suppressions"])
async def add_suppression(body: SuppressionIn, principal: Collector, request: Request) -> dict[str, Any]:
    n = _notifier(request)
    async with n.pool.acquire() as conn:
        await store.add_suppressions(conn, [(principal.tenant_id, body.channel, body.address, "manual", body.detail,
                                             None)], n.clock.now(), principal.key_id)
    return {"channel": body.channel, "address": body.address}


@router.delete("/suppressions", status_code=204, tags=["suppressions"])
async def delete_suppression(principal: Admin, request: Request, channel: OptChannel,
                             address: Annotated[str, Query(min_length=3, max_length=2000)]) -> Response:
    """Lift a suppression (the address was fixed); admin only."""
    address = address.strip().lower() if "@" in address else address.strip()
    if not await store.delete_suppression(request.app.state.pool, principal.tenant_id, channel, address):
        raise DomainError("address", "not on the suppression list", 404)
    return Response(status_code=204)


# -- provider webhooks (signed by the provider, not an API key) ---------------------------------------

def _public_url(request: Request) -> str:
    """The URL the provider signed: ours as the world sees it (behind a proxy too)."""
    base = _notifier(request).settings.public_base_url.rstrip("/")
    query = f"?{request.url.query}" if request.url.query else ""
    return f"{base}{request.url.path}{query}"


async def _twilio_form(request: Request) -> dict[str, str]:
    n = _notifier(request)
    token = n.sms_auth_token
    if token is None:
        raise DomainError("webhook", "SMS webhooks are off: no SMS provider auth token is configured", 404)
    form = {k: str(v) for k, v in (await request.form()).items()}
    try:
        verify_twilio(token, _public_url(request), form, request.headers.get("x-twilio-signature", ""))
    except SignatureError as exc:
        raise DomainError("X-Twilio-Signature", str(exc), 403) from None
    return form


_TWIML_EMPTY = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


@router.post("/webhooks/sms/status", tags=["provider webhooks"], include_in_schema=True)
async def sms_status(request: Request) -> dict[str, Any]:
    """A Twilio-style SMS status callback (delivery receipt), signed with X-Twilio-Signature."""
    form = await _twilio_form(request)
    try:
        report = twilio_status(form)
    except ReportError as exc:
        raise DomainError(*str(exc).split(": ", 1)) from None
    if report is None:
        return {"applied": 0}
    result = await tracking.apply_reports(_notifier(request), [report])
    return {"applied": result.applied, "unknown": result.unknown}


@router.post("/webhooks/sms/inbound", tags=["provider webhooks"])
async def sms_inbound(request: Request) -> Response:
    """An SMS a person sent (Twilio-style, signed): STOP and its equivalents opt the number
    out of SMS, START opts it back in. Answers empty TwiML: the provider sends its own
    confirmation."""
    form = await _twilio_form(request)
    phone, text = form.get("From", ""), form.get("Body", "")
    if not phone:
        raise DomainError("From", "missing")
    await tracking.inbound_sms(_notifier(request), phone, text)
    return Response(_TWIML_EMPTY, media_type="application/xml")


@router.post("/webhooks/email/events", tags=["provider webhooks"])
async def email_webhook(request: Request) -> dict[str, Any]:
    """The email provider's events (delivered, bounce, dropped, deferred, spam report; SendGrid's
    array or SES's notifications, through SNS or not), signed with `Tahsilat-Signature:
    t=<unix>,v1=<HMAC-SHA256 of "t.body">` and at most WEBHOOK_TOLERANCE_SECONDS old."""
    n = _notifier(request)
    secret = n.settings.email_webhook_secret
    if secret is None:
        raise DomainError("webhook", "email events are off: EMAIL_WEBHOOK_SECRET is not set", 404)
    raw = await request.body()
    try:
        verify(secret.get_secret_value(), request.headers.get("tahsilat-signature", ""), raw, int(walltime.time()),
               tolerance_seconds=n.settings.webhook_tolerance_seconds)
    except SignatureError as exc:
        raise DomainError("Tahsilat-Signature", str(exc), 403) from None
    try:
        reports = email_events(json.loads(raw))
    except ValueError as exc:  # ReportError is one
        field, _, reason = str(exc).partition(": ")
        raise DomainError(field if reason else "body", reason or f"invalid JSON: {exc}") from None
    result = await tracking.apply_reports(n, reports)
    return {"applied": result.applied, "unknown": result.unknown, "ignored": result.ignored}


# -- unsubscribe links ------------------------------------------------------------------------

_DONE = ("You will receive no more collection emails. / Artık tahsilat e-postası almayacaksınız. /"
         " Nebudete dostávat další e-maily o pohledávkách. / دیگر ایمیل پیگیری پرداخت دریافت نخواهید کرد.")


def _unsubscribe_page(body: str) -> str:
    return ('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Unsubscribe</title>'
            '<meta name="viewport" content="width=device-width, initial-scale=1"></head>'
            f"<body><main>{body}</main></body></html>")


@router.get("/unsubscribe/{token}", response_class=HTMLResponse, tags=["opt-out"])
async def unsubscribe_page(token: str, request: Request) -> HTMLResponse:
    """The page the link opens. It changes nothing: mail scanners fetch links before people do."""
    opted_out = await tracking.unsubscribed(_notifier(request), token)
    if opted_out is None:
        raise DomainError("token", "unknown unsubscribe link", 404)
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
    if not await tracking.unsubscribe(_notifier(request), token):
        raise DomainError("token", "unknown unsubscribe link", 404)
    return HTMLResponse(_unsubscribe_page(f"<p>{html.escape(_DONE)}</p>"), headers=_NO_STORE)


_NO_STORE = {"Cache-Control": "no-store"}
