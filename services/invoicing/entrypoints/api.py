"""Invoicing HTTP API."""
from __future__ import annotations

import html
import json
import uuid
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field, ValidationError

from services.invoicing.adapters import repository as repo
from services.invoicing.domain.model import reserved_source
from services.invoicing.domain.reports import parse_buckets
from services.invoicing.service_layer.commands import (
    BusinessDate, CreditNoteRecord, CustomerIn, InvoiceRecord, RecordPayment,
)
from services.invoicing.service_layer import reports, sources
from services.invoicing.service_layer.sources import Right
from services.invoicing.service_layer.handlers import Invoicing
from services.invoicing.service_layer.ingest import validation_problem
from shared.auth import Principal, require_role
from shared.contract.money import CurrencyCode, to_major, validate_currency
from shared.contract.text import unsafe_character
from shared.http import DomainError, raw_json_body
from shared.periods import PeriodError, month_ends, parse_period

router = APIRouter(prefix="/v1")
Writer = Annotated[Principal, Depends(require_role("billing-source"))]
Reader = Annotated[Principal, Depends(require_role("billing-source", "collector", "analytics"))]
# A customer's whole ledger (every source's entries, cash from any source): not for a billing source.
LedgerReader = Annotated[Principal, Depends(require_role("collector", "analytics"))]
Admin = Annotated[Principal, Depends(require_role("admin"))]


def use_cases(request: Request) -> Invoicing:
    return request.app.state.invoicing


UseCases = Annotated[Invoicing, Depends(use_cases)]


class Created(BaseModel):
    id: str
    status: str
    changes: dict[str, dict[str, Any]] | None = Field(default=None, description="for adjusted invoices")


def _source(principal: Principal, requested: str | None) -> str:
    if principal.role == "billing-source" and not principal.source_name:
        raise DomainError("billing_source", "this billing-source key is bound to no source; create one with --source",
                          403)
    if principal.source_name:
        if requested and requested != principal.source_name:
            raise DomainError("billing_source", f"this API key belongs to billing source {principal.source_name!r}", 403)
        source = principal.source_name
    elif not requested:
        raise DomainError("billing_source", "required: this API key is not bound to a billing source")
    else:
        source = requested
    if reserved_source(source):
        raise DomainError("billing_source", f"{source!r} is reserved for the platform's own records", 403)
    return source


class ItemOut(BaseModel):
    index: int
    status: str = Field(description="created, unchanged, adjusted, cancelled, reversed or rejected")
    id: str | None = None
    field: str | None = Field(default=None, description="for rejected items: the field at fault")
    reason: str | None = Field(default=None, description=(
        "for rejected items: why; for others, a note (e.g. the customer's contact data was not changed)"))
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
        raise DomainError(result.field or "body", result.reason or "rejected",
                          403 if result.field == "billing_source" else 409 if result.id else 422)
    response.status_code = _STATUS_CODE[result.status]
    return Created(id=result.id, status=result.status, changes=result.changes)


class BulkInvoices(BaseModel):
    billing_source: str | None = Field(default=None, min_length=1, max_length=100)
    items: list[dict[str, Any]] = Field(min_length=1, max_length=10_000)


class BulkOut(BaseModel):
    summary: dict[str, int]
    results: list[ItemOut]


_bulk_invoices_body, _bulk_invoices_doc = raw_json_body(BulkInvoices)


@router.post("/invoices/bulk", response_model=BulkOut, tags=["invoices"], openapi_extra=_bulk_invoices_doc)
async def ingest_invoices(body: Annotated[BulkInvoices, _bulk_invoices_body], principal: Writer,
                          request: Request) -> BulkOut:
    """Up to 10,000 invoices; a result per item. Valid items are kept even when others are rejected."""
    source = _source(principal, body.billing_source)
    results = await request.app.state.ingestor.ingest(principal.tenant_id, source, body.items)
    summary = dict.fromkeys(("created", "unchanged", "adjusted", "cancelled", "rejected"), 0)
    for r in results:
        summary[r.status] += 1
    # Built by the use case, so not validated again: 10,000 item models cost more than the reply.
    return BulkOut.model_construct(summary=summary, results=[ItemOut.model_construct(**vars(r)) for r in results])


Records = Field(default=["invoices"], min_length=1, description=(
    "what the source may record: invoices (with credit notes and customer master data) and/or payments;"
    " a bank import records payments only"))


class BillingSourceIn(BaseModel):
    name: str = Field(min_length=1, max_length=100, pattern=r"^[a-z0-9][a-z0-9._-]*$")
    default_currency: CurrencyCode | None = None
    records: list[Right] = Records


class IngestSecretOut(BaseModel):
    secret_id: str
    created_at: datetime
    retired_at: datetime | None = None
    secret: str | None = Field(default=None, description=(
        "shown once: sign each record for the ingest topic with it (HMAC-SHA256, see the README)"))


class BillingSourceOut(BaseModel):
    name: str
    default_currency: str | None
    records: list[str]
    api_key: str | None = Field(default=None, description="shown once, at registration; only its hash is kept")
    ingest_secret: IngestSecretOut | None = Field(default=None, description="at registration")


@router.post("/billing-sources", response_model=BillingSourceOut, response_model_exclude_none=True, status_code=201,
             tags=["billing sources"])
async def register_billing_source(body: BillingSourceIn, principal: Admin, request: Request) -> BillingSourceOut:
    """Register a billing source of this tenant and issue its API key (billing-source role, bound to it)."""
    registered = await sources.register(request.app.state.pool, principal.tenant_id, body.name, body.default_currency,
                                        body.records)
    return _source_out(registered)


def _source_out(registered: sources.Registered) -> BillingSourceOut:
    secret = registered.ingest_secret
    return BillingSourceOut(**{**vars(registered), "ingest_secret": None if secret is None else vars(secret)})


@router.get("/billing-sources", response_model=list[BillingSourceOut], response_model_exclude_none=True,
            tags=["billing sources"])
async def list_billing_sources(principal: Admin, request: Request) -> list[BillingSourceOut]:
    return [_source_out(s) for s in await sources.list_sources(request.app.state.pool, principal.tenant_id)]


class BillingSourcePatch(BaseModel):
    default_currency: CurrencyCode | None = None
    records: list[Right] | None = Field(default=None, min_length=1)


@router.patch("/billing-sources/{name}", response_model=BillingSourceOut, response_model_exclude_none=True,
              tags=["billing sources"])
async def update_billing_source(name: Annotated[str, PathParam(max_length=100)], body: BillingSourcePatch,
                                principal: Admin, request: Request) -> BillingSourceOut:
    """Change a source's default currency or what it may record (e.g. allow it to record payments)."""
    updated = await sources.update(request.app.state.pool, principal.tenant_id, name,
                                   default_currency=body.default_currency, records=body.records)
    return _source_out(updated)


class Rotation(BaseModel):
    retire_others_after_seconds: int | None = Field(default=86_400, ge=0, le=90 * 86_400, description=(
        "the source's other secrets stop verifying after this long (time to deploy the new one); null: never"))


@router.post("/billing-sources/{name}/ingest-secrets", response_model=IngestSecretOut, status_code=201,
             response_model_exclude_none=True, tags=["billing sources"])
async def rotate_ingest_secret(name: Annotated[str, PathParam(max_length=100)], body: Rotation, principal: Admin,
                               request: Request) -> IngestSecretOut:
    """A new ingest secret for the source (shown once); the old ones retire after a grace period."""
    made = await sources.rotate_ingest_secret(request.app.state.pool, principal.tenant_id, name,
                                              body.retire_others_after_seconds)
    return IngestSecretOut(**vars(made))


@router.get("/billing-sources/{name}/ingest-secrets", response_model=list[IngestSecretOut],
            response_model_exclude_none=True, tags=["billing sources"])
async def list_ingest_secrets(name: Annotated[str, PathParam(max_length=100)], principal: Admin,
                              request: Request) -> list[IngestSecretOut]:
    """The source's ingest secrets (never the secret itself) and when each retires."""
    return [IngestSecretOut(**vars(s)) for s in await sources.ingest_secrets(request.app.state.pool,
                                                                              principal.tenant_id, name)]


@router.delete("/billing-sources/{name}/ingest-secrets/{secret_id}", status_code=204, tags=["billing sources"])
async def retire_ingest_secret(name: Annotated[str, PathParam(max_length=100)],
                               secret_id: Annotated[str, PathParam(max_length=100)], principal: Admin,
                               request: Request) -> Response:
    """Retire a secret now: records signed with it go to the dead-letter topic from now on."""
    await sources.retire_ingest_secret(request.app.state.pool, principal.tenant_id, name, secret_id)
    return Response(status_code=204)


class MasterData(BaseModel):
    master_data_source: str | None = Field(description=(
        "the billing source that owns every customer's contact data; null: the source that created each customer"))


@router.put("/settings/master-data-source", response_model=MasterData, tags=["billing sources"])
async def set_master_data_source(body: MasterData, principal: Admin, request: Request) -> MasterData:
    await sources.set_master_data_source(request.app.state.pool, principal.tenant_id, body.master_data_source)
    return body


@router.get("/settings/master-data-source", response_model=MasterData, tags=["billing sources"])
async def get_master_data_source(principal: Admin, request: Request) -> MasterData:
    return MasterData(master_data_source=await sources.master_data_source(request.app.state.pool,
                                                                          principal.tenant_id))


@router.post("/payments", response_model=Created, response_model_exclude_none=True, status_code=201,
             tags=["payments"],
             responses={200: {"model": Created, "description": "already recorded (unchanged) or reversed"}})
async def record_payment(body: RecordPayment, principal: Writer, invoicing: UseCases, response: Response) -> Created:
    """Record (or, with status "reversed", reverse) one payment and apply it to open invoices."""
    outcome, _ = await invoicing.record_payment(principal.tenant_id, _source(principal, body.billing_source), body)
    if outcome.status != "created":
        response.status_code = status.HTTP_200_OK
    return Created(id=outcome.id, status=outcome.status)


class BulkPayments(BaseModel):
    billing_source: str | None = Field(default=None, min_length=1, max_length=100)
    items: list[dict[str, Any]] = Field(min_length=1, max_length=10_000)


@router.post("/payments/bulk", response_model=BulkOut, tags=["payments"])
async def record_payments(body: BulkPayments, principal: Writer, invoicing: UseCases) -> BulkOut:
    """Up to 10,000 payments, applied in order; a result per item, valid items kept."""
    source = _source(principal, body.billing_source)
    results: list[ItemOut] = []
    for index, raw in enumerate(body.items):
        try:
            cmd = RecordPayment.model_validate(raw)
            if cmd.billing_source and cmd.billing_source != source:
                raise DomainError("billing_source", f"this request is for billing source {source!r}")
            outcome, _ = await invoicing.record_payment(principal.tenant_id, source, cmd)
            results.append(ItemOut(index=index, status=outcome.status, id=outcome.id))
        except ValidationError as exc:
            field, reason = validation_problem(exc)
            results.append(ItemOut(index=index, status="rejected", field=field, reason=reason))
        except DomainError as exc:
            results.append(ItemOut(index=index, status="rejected", field=exc.field, reason=exc.reason))
    summary = dict.fromkeys(("created", "unchanged", "reversed", "rejected"), 0)
    for r in results:
        summary[r.status] += 1
    return BulkOut(summary=summary, results=results)


class UnappliedCash(BaseModel):
    payment_id: str
    kind: str = Field(description="payment or credit_note")
    billing_source: str
    external_id: str
    customer_id: str
    currency: str
    amount_minor: int
    unapplied_minor: int
    unapplied_reason: str | None
    received_at: datetime


@router.get("/payments/unapplied", response_model=list[UnappliedCash], tags=["payments"])
async def unapplied_cash(principal: Reader, invoicing: UseCases) -> list[UnappliedCash]:
    """Money received that is on no invoice (unknown customer, over-payment): to be resolved by a
    person. A billing source's key sees what that source recorded."""
    rows = await invoicing.unapplied_cash(principal.tenant_id, source=principal.source_name)
    return [UnappliedCash(**{**dict(r), "payment_id": str(r["payment_id"])}) for r in rows]


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
    if row is None or (principal.source_name and row["billing_source"] != principal.source_name):
        raise HTTPException(404, f"no invoice {invoice_id} in this tenant")
    return InvoiceOut(**{**dict(row), "invoice_id": str(row["invoice_id"])})


class AgingReport(BaseModel):
    as_of: date
    buckets: list[str]
    by_currency: dict[str, dict[str, int]] = Field(description="currency -> bucket -> open amount (minor units)")
    by_customer: dict[str, dict[str, dict[str, int]]] | None = Field(
        default=None, description="with by=customer: customer -> currency -> bucket -> open amount")


@router.get("/reports/aging", response_model=AgingReport, response_model_exclude_none=True, tags=["reports"])
async def aging(
    principal: Reader, request: Request,
    as_of: Annotated[BusinessDate | None, Query(description="default: today")] = None,
    currency: Annotated[str | None, Query(description="only this currency")] = None,
    buckets: Annotated[str, Query(description="upper bounds in days past due")] = "0,30,60,90",
    by: Annotated[Literal["currency", "customer"], Query()] = "currency",
) -> AgingReport:
    """Open receivables as of a date (history replayed: payments received and adjustments booked
    by then), per currency and, with by=customer, per customer and currency."""
    as_of = as_of or request.app.state.host.clock.now().date()
    result = await reports.aging_report(request.app.state.pool, principal.tenant_id, as_of, _buckets(buckets),
                                        _currency(currency), by_customer=by == "customer",
                                        billing_source=principal.source_name)
    return AgingReport(as_of=result.as_of, buckets=result.buckets, by_currency=result.by_currency,
                       by_customer=result.by_customer)


class AgingTrend(BaseModel):
    days: list[date] = Field(description="the month ends before as_of's month, then as_of, oldest first")
    buckets: list[str]
    by_currency: dict[str, dict[date, dict[str, int]]] = Field(
        description="currency -> day -> bucket -> open amount (minor units), zeros before a currency had any")


@router.get("/reports/aging-trend", response_model=AgingTrend, tags=["reports"])
async def aging_trend(
    principal: Reader, request: Request,
    as_of: Annotated[BusinessDate | None, Query(description="the last point; default: today")] = None,
    points: Annotated[int, Query(ge=2, le=36, description="how many points: month ends, then as_of")] = 6,
    buckets: Annotated[str, Query(description="upper bounds in days past due")] = "0,30,60,90",
) -> AgingTrend:
    """The aging at each month end up to a day: how overdue receivables are moving."""
    as_of = as_of or request.app.state.host.clock.now().date()
    spec = _buckets(buckets)
    trend = await reports.aging_trend(request.app.state.pool, principal.tenant_id, as_of, points, spec,
                                      billing_source=principal.source_name)
    return AgingTrend(days=month_ends(as_of, points), buckets=[name for name, _, _ in spec], by_currency=trend)


def _buckets(spec: str):
    try:
        return parse_buckets(spec)
    except ValueError as exc:
        raise DomainError("buckets", str(exc)) from None


def _currency(code: str | None) -> str | None:
    if code is None:
        return None
    try:
        return validate_currency(code)
    except ValueError as exc:
        raise DomainError("currency", str(exc)) from None


class DsoOut(BaseModel):
    ar_minor: int = Field(description="open receivables as of the date")
    sales_minor: int = Field(description="invoiced over the periods")
    dso_days: float = Field(description="days sales outstanding, countback method")


class DsoReport(BaseModel):
    as_of: date
    months: int
    periods: list[dict[str, date]] = Field(description="newest first: start and end, both inclusive")
    by_currency: dict[str, DsoOut]


@router.get("/reports/dso", response_model=DsoReport, tags=["reports"])
async def dso(
    principal: Reader, request: Request,
    as_of: Annotated[BusinessDate | None, Query(description="default: today")] = None,
    months: Annotated[int, Query(ge=1, le=36, description="calendar months ending at as_of")] = 3,
    currency: Annotated[str | None, Query(description="only this currency")] = None,
) -> DsoReport:
    """Days sales outstanding per currency by the countback method: the AR balance as of the
    date is matched against the sales of the latest months, newest first."""
    as_of = as_of or request.app.state.host.clock.now().date()
    result = await reports.dso_report(request.app.state.pool, principal.tenant_id, as_of, months, _currency(currency),
                                      billing_source=principal.source_name)
    return DsoReport(
        as_of=as_of, months=months, periods=[{"start": s, "end": e} for s, e in result.periods],
        by_currency={cur: DsoOut(ar_minor=line.ar_minor, sales_minor=line.sales_minor,
                                 dso_days=round(line.dso_days, 2))
                     for cur, line in result.by_currency.items()},
    )


class CeiOut(BaseModel):
    opening_minor: int = Field(description="AR at the end of the day before the period")
    sales_minor: int = Field(description="invoiced in the period")
    closing_minor: int = Field(description="AR at the end of the period")
    closing_current_minor: int = Field(description="of which not yet due")
    cei_percent: Decimal | None = Field(description="(opening + sales - closing) / (opening + sales - closing current)"
                                                    " x 100; none when nothing was collectible")


class CeiReport(BaseModel):
    first: date
    last: date
    by_currency: dict[str, CeiOut]


@router.get("/reports/cei", response_model=CeiReport, tags=["reports"])
async def cei(
    principal: Reader, request: Request,
    period: Annotated[str, Query(max_length=40, description="2026-03, 2026-Q1, 2026, or 2026-03-01..2026-03-15")],
    currency: Annotated[str | None, Query(description="only this currency")] = None,
) -> CeiReport:
    """Collection effectiveness index per currency: what was collected of what could have been
    collected in the period (100: everything that fell due)."""
    try:
        first, end = parse_period(period)
    except PeriodError as e:
        raise DomainError("period", str(e)) from None
    last = end - timedelta(days=1)
    result = await reports.cei_report(request.app.state.pool, principal.tenant_id, first, last, _currency(currency),
                                      billing_source=principal.source_name)
    return CeiReport(first=first, last=last, by_currency={cur: CeiOut(**vars(line)) for cur, line in result.items()})


class StatementLineOut(BaseModel):
    booked_on: date
    kind: str
    ref_id: str
    description: str
    amount_minor: int = Field(description="signed: + the customer owes more")
    balance_minor: int = Field(description="running balance after this line")


class CurrencyStatementOut(BaseModel):
    opening_minor: int
    lines: list[StatementLineOut]
    closing_minor: int


class StatementOut(BaseModel):
    customer_id: str
    from_: date = Field(serialization_alias="from")
    to: date
    by_currency: dict[str, CurrencyStatementOut]


@router.get("/customers/{customer_id}/statement", response_model=StatementOut, response_model_by_alias=True,
            tags=["reports"])
async def customer_statement(
    customer_id: str, principal: LedgerReader, request: Request,
    from_: Annotated[BusinessDate | None, Query(alias="from", description="default: the first of to's month")] = None,
    to: Annotated[BusinessDate | None, Query(description="default: today")] = None,
) -> StatementOut:
    """Statement of account for a period, per currency: the opening balance, every entry
    (invoice, adjustment, cancellation, credit note, payment, fee) with the running balance,
    and the closing balance. It is the ledger: closing = opening + the lines, to the cent."""
    if from_ is not None and to is not None and from_ > to:
        raise DomainError("from", f"{from_} is after to ({to})")
    start, end = reports.default_period(from_, to, request.app.state.host.clock.now().date())
    if start > end:
        raise DomainError("from", f"{start} is after to ({end})")
    pool = request.app.state.pool
    if not await reports.customer_known(pool, principal.tenant_id, customer_id):
        raise HTTPException(404, f"no customer {customer_id!r} in this tenant")
    by_currency = await reports.statement(pool, principal.tenant_id, customer_id, start, end)
    return StatementOut(
        customer_id=customer_id, from_=start, to=end,
        by_currency={
            cur: CurrencyStatementOut(
                opening_minor=st.opening_minor, closing_minor=st.closing_minor,
                lines=[StatementLineOut(**vars(line)) for line in st.lines])
            for cur, st in by_currency.items()
        },
    )


# -- balance confirmation ------------------------------------------------------------------
Collector = Annotated[Principal, Depends(require_role("collector"))]


class ConfirmationRequest(BaseModel):
    as_of: BusinessDate | None = Field(default=None, description="default: today")


@router.post("/customers/{customer_id}/balance-confirmations", status_code=201, tags=["balance confirmation"])
async def request_balance_confirmation(customer_id: Annotated[str, PathParam(max_length=200)], body: ConfirmationRequest,
                                       principal: Collector, request: Request) -> dict:
    """Send the customer their balance and open items as of a date, to confirm or contest."""
    return await request.app.state.confirmations.request(principal.tenant_id, customer_id, body.as_of)


def _confirmation_page(request: Request, token: str, row, message: str | None = None) -> HTMLResponse:
    confirmations = request.app.state.confirmations
    balances = "".join(f"<li>{html.escape(b['currency'])} {to_major(b['balance_minor'], b['currency']):,}</li>"
                       for b in row["balances"])
    if not message and confirmations.expired(row):
        message = "This link has expired; ask us for a new statement. / Bu bağlantının süresi doldu."
    if message or row["status"] != "requested":
        action = f"<p><strong>{html.escape(message or 'This balance was already ' + row['status'] + '.')}</strong></p>"
    else:
        confirm = html.escape(confirmations.action_url(token, "confirm"))
        contest = html.escape(confirmations.action_url(token, "contest"))
        action = (f'<form id="confirm" method="post" action="{confirm}"><button>Confirm / Onayla</button></form>'
                  f'<form id="contest" method="post" action="{contest}"><label>Reason / Neden <input name="reason"'
                  ' required maxlength="1000"></label><button>Contest / İtiraz et</button></form>')
    return HTMLResponse(
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Balance confirmation</title>'
        '<meta name="viewport" content="width=device-width, initial-scale=1"></head>'
        f"<body><main><h1>Balance as of {row['as_of'].isoformat()}</h1><ul>{balances}</ul>{action}</main></body></html>",
        headers={"Cache-Control": "no-store"})


@router.get("/balance-confirmations/{token}", response_class=HTMLResponse, tags=["balance confirmation"])
async def confirmation_page(token: str, request: Request) -> HTMLResponse:
    """The page the link in the email opens (the token is the credential)."""
    row = await request.app.state.confirmations.find(token)
    if row is None:
        raise HTTPException(404, "unknown confirmation link")
    return _confirmation_page(request, token, row)


async def _reason(request: Request) -> str:
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            body = json.loads(await request.body())
        except ValueError as exc:
            raise DomainError("body", f"invalid JSON: {exc}") from None
        reason = body.get("reason") if isinstance(body, dict) else None
    else:
        reason = (await request.form()).get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise DomainError("reason", "required: say what is wrong with the balance")
    if (problem := unsafe_character(reason)) is not None:
        raise DomainError("reason", f"must not contain a {problem}")
    return reason.strip()[:1000]


@router.post("/balance-confirmations/{token}/confirm", response_class=HTMLResponse, tags=["balance confirmation"])
async def confirm_balance(token: str, request: Request) -> HTMLResponse:
    status_ = await request.app.state.confirmations.answer(token, None)
    return _confirmation_page(request, token, await request.app.state.confirmations.find(token),
                              f"Thank you: balance {status_}.")


@router.post("/balance-confirmations/{token}/contest", response_class=HTMLResponse, tags=["balance confirmation"])
async def contest_balance(token: str, request: Request) -> HTMLResponse:
    status_ = await request.app.state.confirmations.answer(token, await _reason(request))
    return _confirmation_page(request, token, await request.app.state.confirmations.find(token),
                              f"Thank you: balance {status_}; our collections team will contact you.")


# -- customer master data ------------------------------------------------------------------
class BulkCustomers(BaseModel):
    billing_source: str | None = Field(default=None, min_length=1, max_length=100)
    items: list[dict[str, Any]] = Field(min_length=1, max_length=10_000)


@router.put("/customers/{customer_id}", response_model=Created, response_model_exclude_none=True, tags=["customers"])
async def upsert_customer(customer_id: Annotated[str, PathParam(max_length=200)], body: CustomerIn,
                          principal: Writer, request: Request) -> Created:
    """Create or update a customer's master data; CustomerUpserted goes out when anything changed."""
    if body.id != customer_id:
        raise DomainError("id", f"must match the customer id in the path ({customer_id!r})")
    [result] = await request.app.state.ingestor.upsert_customers(principal.tenant_id, _source(principal, None), [body])
    if result.status == "rejected":  # another source owns the data (409), or this one may not write it (403)
        raise DomainError(result.field or "body", result.reason or "rejected",
                          403 if result.field == "billing_source" else 409)
    return Created(id=customer_id, status=result.status)


@router.post("/customers/bulk", response_model=BulkOut, tags=["customers"])
async def upsert_customers(body: BulkCustomers, principal: Writer, request: Request) -> BulkOut:
    """Up to 10,000 customers; a result per item (upserted, unchanged or rejected)."""
    results = await request.app.state.ingestor.upsert_customers(
        principal.tenant_id, _source(principal, body.billing_source), body.items)
    summary = dict.fromkeys(("upserted", "unchanged", "rejected"), 0)
    for r in results:
        summary[r.status] += 1
    return BulkOut(summary=summary, results=[ItemOut(**vars(r)) for r in results])


# -- credit notes --------------------------------------------------------------------------
@router.post("/credit-notes", response_model=Created, response_model_exclude_none=True, status_code=201,
             tags=["credit notes"], responses={200: {"model": Created, "description": "already recorded"}})
async def record_credit_note(body: CreditNoteRecord, principal: Writer, invoicing: UseCases,
                             response: Response) -> Created:
    """A credit note reduces what is owed: applied to the invoices it names, else oldest first."""
    outcome = await invoicing.record_credit_note(principal.tenant_id, _source(principal, body.billing_source), body)
    if outcome.status != "created":
        response.status_code = status.HTTP_200_OK
    return Created(id=outcome.id, status=outcome.status)
