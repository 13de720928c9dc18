"""Dunning HTTP API: cases (one per customer and currency) with their items, notices and
charges; policies and their versions; holds, "do not chase" and customer groups; disputes."""
from __future__ import annotations

import asyncio
import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel, Field

from services.dunning.adapters import case_file, policy_store
from services.dunning.adapters import views
from services.dunning.domain.arrangements import Instalment, PromiseChannel
from services.dunning.domain.policy import PolicyError, PolicySpec, parse_policy
from services.dunning.service_layer import planning
from services.dunning.service_layer.handlers import Commands
from shared.auth import Principal, require_role
from shared.contract.events import DisputeReason
from shared.contract.money import CurrencyCode
from shared.contract.text import SafeText
from shared.http import DomainError

router = APIRouter(prefix="/v1")
Reader = Annotated[Principal, Depends(require_role("collector", "analytics"))]
Collector = Annotated[Principal, Depends(require_role("collector"))]
Admin = Annotated[Principal, Depends(require_role())]
Name = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]


def _commands(request: Request) -> Commands:
    return request.app.state.commands


class StepOut(BaseModel):
    round: int
    step: str
    channel: str
    template: str | None
    offset_days: int
    due_at: datetime
    status: str
    reason: str | None = Field(description="why skipped or cancelled: stale, below_minimum, paid, replanned ...")
    executed_at: datetime | None
    notice_id: str | None


class ItemOut(BaseModel):
    invoice_id: str
    number: str
    amount_minor: int
    open_minor: int
    due_date: date
    status: str
    closed_reason: str | None
    round: int = Field(description="a re-opened invoice is dunned again in a new round")
    policy: str = Field(description="name and version of the policy of its schedule, e.g. standard@1")
    hold_reason: str | None
    hold_by: str | None
    steps: list[StepOut] = []


class NoticeOut(BaseModel):
    notice_id: str
    sequence: int
    step: str
    channel: str
    template: str | None
    notification_key: str
    items: list[dict[str, Any]]
    total_minor: int
    created_at: datetime


class ChargeOut(BaseModel):
    charge_id: str
    kind: str
    invoice_id: str
    amount_minor: int
    period_start: date | None
    period_end: date | None
    detail: dict[str, Any]
    assessed_at: datetime


class CaseOut(BaseModel):
    case_id: str
    customer_id: str
    currency: str
    status: str
    closed_reason: str | None
    opened_at: datetime
    closed_at: datetime | None
    next_due_at: datetime | None = Field(description="when its next step falls due (none while all is paused)")
    open_minor: int = Field(description="what its open items still owe")
    items: list[ItemOut] = []
    notices: list[NoticeOut] = []
    charges: list[ChargeOut] = []


def _str(v):
    return str(v) if v is not None else None


def _case(c, items, steps, notices, charges) -> CaseOut:
    key = c["case_id"]
    its = [ItemOut(**{k: i[k] for k in ("number", "amount_minor", "open_minor", "due_date", "status", "closed_reason",
                                        "round", "hold_reason", "hold_by")},
                   invoice_id=str(i["invoice_id"]), policy=f"{i['policy_name']}@{i['policy_version']}",
                   steps=[StepOut(**{k: s[k] for k in StepOut.model_fields if k != "notice_id"},
                                  notice_id=_str(s["notice_id"])) for s in steps.get(i["invoice_id"], [])])
           for i in items.get(key, [])]
    next_due = c["next_due_at"]
    return CaseOut(
        case_id=str(key), customer_id=c["customer_id"], currency=c["currency"], status=c["status"],
        closed_reason=c["closed_reason"], opened_at=c["opened_at"], closed_at=c["closed_at"],
        next_due_at=next_due if next_due is None or next_due.year < 9999 else None,
        open_minor=sum(i.open_minor for i in its if i.status == "open"), items=its,
        notices=[NoticeOut(**{k: n[k] for k in NoticeOut.model_fields if k not in ("notice_id", "items")},
                           notice_id=str(n["notice_id"]), items=n["items"]) for n in notices.get(key, [])],
        charges=[ChargeOut(**{k: ch[k] for k in ChargeOut.model_fields if k not in ("invoice_id", "detail")},
                           invoice_id=str(ch["invoice_id"]), detail=ch["detail"])
                 for ch in charges.get(key, [])])


@router.get("/cases", response_model=list[CaseOut], tags=["cases"])
async def list_cases(
    principal: Reader, request: Request,
    customer_id: Annotated[str | None, Query(max_length=200)] = None,
    status: Annotated[str | None, Query(pattern="^(open|closed|legal)$")] = None,
    invoice_id: Annotated[uuid.UUID | None, Query(description="the case holding this invoice")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[CaseOut]:
    """Cases with their items and steps, notices and charges."""
    found = await views.cases(request.app.state.pool, principal.tenant_id, customer_id=customer_id, status=status,
                              invoice_id=invoice_id, limit=limit)
    return [_case(c, *found[1:]) for c in found[0]]


@router.get("/cases/{case_id}", response_model=CaseOut, tags=["cases"])
async def get_case(case_id: uuid.UUID, principal: Reader, request: Request) -> CaseOut:
    found = await views.cases(request.app.state.pool, principal.tenant_id, case_id=case_id, limit=1)
    if not found[0]:
        raise DomainError("case_id", f"no case {case_id} in this tenant", 404)
    return _case(found[0][0], *found[1:])


@router.get("/cases/{case_id}/case-file", tags=["cases"],
            responses={200: {"content": {"application/json": {}, "application/pdf": {}}}})
async def get_case_file(case_id: uuid.UUID, principal: Reader, request: Request,
                        format: Annotated[Literal["json", "pdf"], Query(description="json or pdf")] = "json"):
    """The case file of a case handed over to legal, as it was at the hand-over: statement of
    account, notices, contact log, promises, plans, disputes, fees and interest. The PDF is in
    the customer's language."""
    document = await views.case_file(request.app.state.pool, principal.tenant_id, case_id)
    if document is None:
        raise DomainError("case_id", f"case {case_id} of this tenant has not been handed over to legal", 404)
    if format == "pdf":
        pdf = await asyncio.to_thread(case_file.render_pdf, document)
        return Response(pdf, media_type="application/pdf",
                        headers={"Content-Disposition": f'attachment; filename="case-file-{case_id}.pdf"'})
    return document


# -- policies -------------------------------------------------------------------------------------


class PolicyIn(BaseModel):
    source: str = Field(min_length=1, max_length=100_000, description="the policy as YAML (or JSON)")
    activate: bool = Field(default=False, description="make it the active version at once")


class PolicyOut(BaseModel):
    tenant_id: str = Field(description="'*': shipped with Tahsilat, for tenants without their own")
    name: str
    version: int
    segment: str
    customer_group: str | None
    status: str
    document: dict[str, Any]
    source: str
    created_at: datetime
    created_by: str
    activated_at: datetime | None

    @classmethod
    def of(cls, r) -> "PolicyOut":
        return cls(**{**{k: r[k] for k in cls.model_fields}, "document": r["document"]})


def _parse(body: PolicyIn):
    try:
        return parse_policy(body.source, "source")
    except PolicyError as e:
        raise DomainError("source", "; ".join(e.problems)) from None


@router.get("/policies", response_model=list[PolicyOut], tags=["policies"])
async def list_policies(principal: Reader, request: Request,
                        status: Annotated[str | None, Query(pattern="^(draft|active|retired)$")] = None) -> list[PolicyOut]:
    """Every version of the tenant's policies and of the shipped ones."""
    async with request.app.state.pool.acquire() as conn:
        rows = await policy_store.listing(conn, principal.tenant_id)
    return [PolicyOut.of(r) for r in rows if status is None or r["status"] == status]


@router.get("/policies/{name}/versions", response_model=list[PolicyOut], tags=["policies"])
async def policy_versions(name: Name, principal: Reader, request: Request) -> list[PolicyOut]:
    async with request.app.state.pool.acquire() as conn:
        rows = await policy_store.listing(conn, principal.tenant_id, name)
    if not rows:
        raise DomainError("name", f"no policy {name!r}", 404)
    return [PolicyOut.of(r) for r in rows]


@router.post("/policies", response_model=PolicyOut, status_code=201, tags=["policies"])
async def create_policy(body: PolicyIn, principal: Admin, request: Request) -> PolicyOut:
    """A new policy, or a new version of one of the tenant's policies (same name). Validated:
    errors name the line and field. Activating re-plans the future steps of open cases."""
    spec = _parse(body)
    return PolicyOut.of(await _commands(request).add_policy(principal.tenant_id, spec, body.source, principal.key_id,
                                                            body.activate))


@router.put("/policies/{name}", response_model=PolicyOut, status_code=201, tags=["policies"])
async def update_policy(name: Name, body: PolicyIn, principal: Admin, request: Request) -> PolicyOut:
    """A new version of the named policy."""
    spec = _parse(body)
    if spec.name != name:
        raise DomainError("source", f"the document is policy {spec.name!r}, not {name!r}")
    return PolicyOut.of(await _commands(request).add_policy(principal.tenant_id, spec, body.source, principal.key_id,
                                                            body.activate))


@router.post("/policies/{name}/versions/{version}/activate", response_model=PolicyOut, tags=["policies"])
async def activate_policy(name: Name, version: Annotated[int, Path(ge=1, le=2**31 - 1)], principal: Admin,
                          request: Request) -> PolicyOut:
    """Make a version active (the one active before in its name or segment slot is retired);
    open cases take it for the steps to come, what was sent stays sent."""
    return PolicyOut.of(await _commands(request).activate_policy(principal.tenant_id, name, version))


class PlannedNotice(BaseModel):
    at: datetime = Field(description="when it would go out")
    customer_id: str
    case_id: str
    currency: str
    step: str
    channel: str
    template: str | None
    items: list[dict[str, Any]]
    total_minor: int = Field(description="open amounts, fees and interest to date")


@router.get("/dunning/plan", response_model=list[PlannedNotice], tags=["policies"])
async def plan(principal: Reader, request: Request,
               day: Annotated[date, Query(alias="date", description="the day (UTC) to look at")]) -> list[PlannedNotice]:
    """Dry run: what would go out on that day, to whom, for how much, if nothing is paid
    meanwhile. Nothing is sent or stored."""
    return [PlannedNotice(**n) for n in await planning.dry_run(request.app.state.dunning, principal.tenant_id, day)]


class BacktestIn(BaseModel):
    source: str | None = Field(default=None, max_length=100_000, description="a policy as YAML, not stored")
    name: Name | None = Field(default=None, description="or a stored policy of the tenant (or a shipped one)")
    version: int | None = Field(default=None, ge=1, le=2**31 - 1)
    first_due: date = Field(description="invoices due from this day ...")
    last_due: date = Field(description="... to this day")


class BacktestStep(BaseModel):
    step: str
    channel: str
    offset_days: int
    notices: int = Field(description="consolidated notices it would have sent")
    invoices: int
    open_at_step: dict[str, int] = Field(description="per currency: owed on those invoices at the step")
    paid_within_7_days: dict[str, int] = Field(description="per currency: paid on them within 7 days after it")


@router.post("/policies/backtest", response_model=list[BacktestStep], tags=["policies"])
async def backtest(body: BacktestIn, principal: Reader, request: Request) -> list[BacktestStep]:
    """Run a policy over the stored history: notices per step, and what was paid within 7 days
    of each step."""
    if (body.source is None) == (body.name is None):
        raise DomainError("source", "give either source (YAML) or name (and version) of a stored policy")
    if body.last_due < body.first_due:
        raise DomainError("last_due", "comes before first_due")
    if body.source is not None:
        spec = _parse(PolicyIn(source=body.source))
    else:
        async with request.app.state.pool.acquire() as conn:
            rows = [r for r in await policy_store.listing(conn, principal.tenant_id, body.name)
                    if body.version in (None, r["version"]) and (body.version or r["status"] == "active")]
        if not rows:
            raise DomainError("name", f"no policy {body.name!r}" + (f" v{body.version}" if body.version else " active"), 404)
        spec = PolicySpec.model_validate(rows[0]["document"])
    steps = await planning.backtest(request.app.state.dunning, principal.tenant_id, spec, body.first_due, body.last_due)
    return [BacktestStep(**vars(s)) for s in steps]


# -- holds, do not chase, groups -------------------------------------------------------------------


class Reason(BaseModel):
    reason: SafeText = Field(min_length=3, max_length=500, description="why, for whoever looks next")


class HoldOut(BaseModel):
    invoice_id: str
    hold_reason: str | None
    hold_by: str | None
    hold_at: datetime | None


@router.put("/invoices/{invoice_id}/hold", response_model=HoldOut, tags=["holds"])
async def hold_invoice(invoice_id: uuid.UUID, body: Reason, principal: Collector, request: Request) -> HoldOut:
    """Hold an invoice out of dunning until released."""
    row = await _commands(request).set_hold(principal.tenant_id, invoice_id, body.reason, principal.key_id)
    return HoldOut(invoice_id=str(row["invoice_id"]), **{k: row[k] for k in ("hold_reason", "hold_by", "hold_at")})


@router.delete("/invoices/{invoice_id}/hold", response_model=HoldOut, tags=["holds"])
async def release_invoice(invoice_id: uuid.UUID, principal: Collector, request: Request) -> HoldOut:
    row = await _commands(request).set_hold(principal.tenant_id, invoice_id, None, principal.key_id)
    return HoldOut(invoice_id=str(row["invoice_id"]), **{k: row[k] for k in ("hold_reason", "hold_by", "hold_at")})


class CustomerOut(BaseModel):
    customer_id: str
    timezone: str
    risk_segment: str
    customer_group: str | None
    do_not_chase_reason: str | None
    do_not_chase_by: str | None
    do_not_chase_at: datetime | None

    @classmethod
    def of(cls, r) -> "CustomerOut":
        return cls(**{k: r[k] for k in cls.model_fields})


class GroupIn(BaseModel):
    customer_group: str | None = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$",
                                       description="policies may target a group; null: none")


CustomerId = Annotated[str, Path(min_length=1, max_length=200)]


@router.put("/customers/{customer_id}/do-not-chase", response_model=CustomerOut, tags=["holds"])
async def do_not_chase(customer_id: CustomerId, body: Reason, principal: Collector, request: Request) -> CustomerOut:
    """Stop every reminder to this customer until lifted (insolvency, key account, legal advice)."""
    return CustomerOut.of(await _commands(request).set_do_not_chase(principal.tenant_id, customer_id, body.reason,
                                                                     principal.key_id))


@router.delete("/customers/{customer_id}/do-not-chase", response_model=CustomerOut, tags=["holds"])
async def lift_do_not_chase(customer_id: CustomerId, principal: Collector, request: Request) -> CustomerOut:
    return CustomerOut.of(await _commands(request).set_do_not_chase(principal.tenant_id, customer_id, None,
                                                                     principal.key_id))


@router.put("/customers/{customer_id}/group", response_model=CustomerOut, tags=["policies"])
async def customer_group(customer_id: CustomerId, body: GroupIn, principal: Collector, request: Request) -> CustomerOut:
    """Put a customer in a group (policies may target one); open cases are re-planned."""
    return CustomerOut.of(await _commands(request).set_customer_group(principal.tenant_id, customer_id,
                                                                       body.customer_group))


# -- promises, payment plans ---------------------------------------------------------------------


def _arrangements(request: Request):
    return request.app.state.dunning.arrangements


class PromiseIn(BaseModel):
    amount_minor: int = Field(gt=0, le=10**15)
    promised_date: date
    channel: PromiseChannel = Field(description="how the customer gave it")
    invoice_ids: list[uuid.UUID] | None = Field(default=None, max_length=1000,
                                                description="the invoices it covers; default: all open in the case")
    grace_days: int = Field(default=3, ge=0, le=30, description="days after the promised date before it is broken")
    note: SafeText | None = Field(default=None, max_length=1000)


class PromiseOut(BaseModel):
    promise_id: str
    customer_id: str
    case_id: str
    currency: str
    invoice_ids: list[str]
    amount_minor: int
    promised_date: date
    grace_days: int
    deadline: datetime = Field(description="kept if paid before this, else broken")
    channel: str
    taken_by: str
    note: str | None
    status: str
    paid_minor: int
    created_at: datetime
    resolved_at: datetime | None

    @classmethod
    def of(cls, r) -> "PromiseOut":
        return cls(**{**{k: r[k] for k in cls.model_fields if k not in ("promise_id", "case_id", "invoice_ids")},
                      "promise_id": str(r["promise_id"]), "case_id": str(r["case_id"]),
                      "invoice_ids": [str(i) for i in r["invoice_ids"]]})


@router.post("/cases/{case_id}/promises", response_model=PromiseOut, status_code=201, tags=["promises"])
async def record_promise(case_id: uuid.UUID, body: PromiseIn, principal: Collector, request: Request) -> PromiseOut:
    """The customer promises to pay an amount by a date: the covered invoices are not dunned
    until then (plus grace). Kept when payments cover it; otherwise broken and dunning resumes."""
    row = await _arrangements(request).record_promise(
        principal.tenant_id, case_id, amount_minor=body.amount_minor, promised_date=body.promised_date,
        channel=body.channel, taken_by=principal.key_id, invoice_ids=body.invoice_ids, grace_days=body.grace_days,
        note=body.note)
    return PromiseOut.of(row)


@router.get("/promises", response_model=list[PromiseOut], tags=["promises"])
async def list_promises(principal: Reader, request: Request,
                        status: Annotated[str | None, Query(pattern="^(open|kept|broken|cancelled)$")] = None,
                        customer_id: Annotated[str | None, Query(max_length=200)] = None) -> list[PromiseOut]:
    rows = await views.arrangements(request.app.state.pool, "promises", principal.tenant_id, status, customer_id)
    return [PromiseOut.of(r) for r in rows]


@router.delete("/promises/{promise_id}", response_model=PromiseOut, tags=["promises"])
async def cancel_promise(promise_id: uuid.UUID, principal: Collector, request: Request) -> PromiseOut:
    """Withdraw an open promise (taken by mistake): dunning resumes at once."""
    return PromiseOut.of(await _arrangements(request).cancel_promise(principal.tenant_id, promise_id))


class OfferIn(BaseModel):
    discount_percent: Decimal = Field(gt=0, le=50, max_digits=5, decimal_places=2,
                                      description="off everything overdue in the case, within the policy's limit")
    pay_by: date = Field(description="the last day to pay, in the customer's timezone, within the policy's limit")
    note: SafeText | None = Field(default=None, max_length=1000)


class OfferOut(BaseModel):
    offer_id: str
    customer_id: str
    case_id: str
    currency: str
    invoice_ids: list[str]
    owed_minor: int = Field(description="everything overdue the offer covers")
    discount_percent: Decimal
    discount_minor: int
    pay_minor: int = Field(description="what settles it: owed less the discount")
    pay_by: date
    deadline: datetime = Field(description="accepted if paid before this, else expired")
    offered_by: str
    note: str | None
    status: str
    paid_minor: int
    credit_minor: int | None = Field(description="the credit note invoicing issues once accepted")
    created_at: datetime
    resolved_at: datetime | None

    @classmethod
    def of(cls, r) -> "OfferOut":
        return cls(**{**{k: r[k] for k in cls.model_fields if k not in ("offer_id", "case_id", "invoice_ids")},
                      "offer_id": str(r["offer_id"]), "case_id": str(r["case_id"]),
                      "invoice_ids": [str(i) for i in r["invoice_ids"]]})


@router.post("/cases/{case_id}/settlement-offers", response_model=OfferOut, status_code=201, tags=["settlements"])
async def offer_settlement(case_id: uuid.UUID, body: OfferIn, principal: Collector, request: Request) -> OfferOut:
    """Offer a discount for paying everything overdue in the case by a date, within the limits of
    the policy (`settlement` in the policy document). The customer is told by email; the overdue
    invoices are not dunned until the day ends. Paid in time: accepted, and invoicing credits
    the discount; otherwise it expires and dunning resumes."""
    row = await _arrangements(request).offer_settlement(
        principal.tenant_id, case_id, discount_percent=body.discount_percent, pay_by=body.pay_by,
        offered_by=principal.key_id, note=body.note)
    return OfferOut.of(row)


@router.get("/settlement-offers", response_model=list[OfferOut], tags=["settlements"])
async def list_offers(principal: Reader, request: Request,
                      status: Annotated[str | None, Query(pattern="^(open|accepted|expired|withdrawn)$")] = None,
                      customer_id: Annotated[str | None, Query(max_length=200)] = None) -> list[OfferOut]:
    rows = await views.arrangements(request.app.state.pool, "settlement_offers", principal.tenant_id, status, customer_id)
    return [OfferOut.of(r) for r in rows]


@router.delete("/settlement-offers/{offer_id}", response_model=OfferOut, tags=["settlements"])
async def withdraw_offer(offer_id: uuid.UUID, principal: Collector, request: Request) -> OfferOut:
    """Withdraw an open offer: dunning resumes at once."""
    return OfferOut.of(await _arrangements(request).withdraw_offer(principal.tenant_id, offer_id, principal.key_id))


class InstalmentIn(BaseModel):
    due_date: date
    amount_minor: int = Field(gt=0, le=10**15)


class PlanIn(BaseModel):
    instalments: list[InstalmentIn] | None = Field(default=None, min_length=1, max_length=120,
                                                   description="explicit instalments, adding up to what is owed")
    count: int | None = Field(default=None, ge=1, le=120, description="or: this many equal instalments ...")
    first_due: date | None = Field(default=None, description="... the first due then ...")
    every_days: int = Field(default=30, ge=1, le=366, description="... and every this many days")
    invoice_ids: list[uuid.UUID] | None = Field(default=None, max_length=1000,
                                                description="the invoices it covers; default: all open in the case")
    grace_days: int = Field(default=3, ge=0, le=30, description="days after an instalment's date before the plan breaks")


class InstalmentOut(BaseModel):
    sequence: int
    due_date: date
    amount_minor: int
    reminded_at: datetime | None


class PlanOut(BaseModel):
    plan_id: str
    customer_id: str
    case_id: str
    currency: str
    invoice_ids: list[str]
    total_minor: int
    grace_days: int
    status: str
    paid_minor: int
    missed_sequence: int | None
    agreed_by: str
    created_at: datetime
    resolved_at: datetime | None
    instalments: list[InstalmentOut] = []

    @classmethod
    def of(cls, r, instalments=()) -> "PlanOut":
        return cls(**{**{k: r[k] for k in cls.model_fields if k not in ("plan_id", "case_id", "invoice_ids", "instalments")},
                      "plan_id": str(r["plan_id"]), "case_id": str(r["case_id"]),
                      "invoice_ids": [str(i) for i in r["invoice_ids"]],
                      "instalments": [InstalmentOut(**{k: i[k] for k in InstalmentOut.model_fields}) for i in instalments]})


@router.post("/cases/{case_id}/payment-plans", response_model=PlanOut, status_code=201, tags=["payment plans"])
async def agree_plan(case_id: uuid.UUID, body: PlanIn, principal: Collector, request: Request) -> PlanOut:
    """The customer pays what the covered invoices owe in instalments, each reminded before it is
    due; the invoices are not dunned while the plan holds. A missed instalment breaks it."""
    instalments = ([Instalment(n + 1, i.due_date, i.amount_minor) for n, i in enumerate(body.instalments)]
                   if body.instalments else None)
    row = await _arrangements(request).agree_plan(
        principal.tenant_id, case_id, instalments=instalments, count=body.count, first_due=body.first_due,
        every_days=body.every_days, invoice_ids=body.invoice_ids, grace_days=body.grace_days,
        agreed_by=principal.key_id)
    found = await views.plan(request.app.state.pool, principal.tenant_id, row["plan_id"])
    return PlanOut.of(*found)


@router.get("/payment-plans", response_model=list[PlanOut], tags=["payment plans"])
async def list_plans(principal: Reader, request: Request,
                     status: Annotated[str | None, Query(pattern="^(active|completed|broken|cancelled)$")] = None,
                     customer_id: Annotated[str | None, Query(max_length=200)] = None) -> list[PlanOut]:
    rows = await views.arrangements(request.app.state.pool, "payment_plans", principal.tenant_id, status, customer_id)
    return [PlanOut.of(r) for r in rows]


@router.get("/payment-plans/{plan_id}", response_model=PlanOut, tags=["payment plans"])
async def get_plan(plan_id: uuid.UUID, principal: Reader, request: Request) -> PlanOut:
    found = await views.plan(request.app.state.pool, principal.tenant_id, plan_id)
    if found is None:
        raise DomainError("plan_id", f"no payment plan {plan_id} in this tenant", 404)
    return PlanOut.of(*found)


# -- disputes -------------------------------------------------------------------------------------


class DisputeIn(BaseModel):
    customer_id: str = Field(min_length=1, max_length=200)
    invoice_id: uuid.UUID | None = Field(default=None, description="the invoice disputed; none: the whole account")
    reason_code: DisputeReason
    description: SafeText = Field(min_length=3, max_length=2000, description="what the customer says")


class DisputeOut(BaseModel):
    dispute_id: str
    customer_id: str
    origin: str
    reason: str
    reason_code: str
    invoice_id: str | None
    currency: str | None
    disputed_minor: int | None
    status: str
    outcome: str | None = None
    credit_minor: int | None = None
    opened_by: str | None = None
    opened_at: datetime
    pause_until: datetime = Field(description="dunning goes on after this even if nobody resolves the dispute")
    resolved_at: datetime | None = None
    resolution: str | None = None
    resolved_by: str | None = None

    @classmethod
    def of(cls, r) -> "DisputeOut":
        return cls(**{**{k: r[k] for k in cls.model_fields}, "dispute_id": str(r["dispute_id"]),
                      "invoice_id": str(r["invoice_id"]) if r["invoice_id"] else None})


class Resolution(BaseModel):
    outcome: Literal["accepted", "rejected"] = Field(
        default="rejected", description="accepted: a credit note is requested from invoicing; rejected: dunning resumes")
    resolution: SafeText = Field(min_length=3, max_length=1000, description="what was decided")
    credit_minor: int | None = Field(default=None, gt=0, le=10**15,
                                     description="accepted: how much to credit (default: the disputed invoice's open amount)")
    currency: CurrencyCode | None = Field(default=None, description="accepted on the whole account: the credit's currency")


@router.post("/disputes", response_model=DisputeOut, status_code=201, tags=["disputes"])
async def open_dispute(body: DisputeIn, principal: Collector, request: Request) -> DisputeOut:
    """Record a dispute on an invoice or the whole account, with its reason code: what it covers
    is not dunned until it is resolved (or `DISPUTE_PAUSE_DAYS` pass)."""
    row = await _arrangements(request).open_dispute(
        principal.tenant_id, customer_id=body.customer_id, invoice_id=body.invoice_id, currency=None,
        reason_code=body.reason_code, description=body.description, opened_by=principal.key_id)
    return DisputeOut.of(row)


class DisputeReasonRow(BaseModel):
    reason_code: str
    disputes: int
    open: int
    accepted: int
    rejected: int
    credited_minor: dict[str, int] = Field(description="per currency: credit notes requested")


@router.get("/reports/disputes", response_model=list[DisputeReasonRow], tags=["disputes"])
async def dispute_reasons(principal: Reader, request: Request,
                          opened_from: Annotated[date | None, Query(alias="from")] = None,
                          opened_to: Annotated[date | None, Query(alias="to")] = None) -> list[DisputeReasonRow]:
    """Disputes by reason code: which process keeps causing them."""
    return [DisputeReasonRow(**r) for r in await views.dispute_reasons(
        request.app.state.pool, principal.tenant_id, opened_from, opened_to)]


@router.get("/disputes", response_model=list[DisputeOut], tags=["disputes"])
async def list_disputes(principal: Reader, request: Request,
                        status: Annotated[str | None, Query(pattern="^(open|resolved)$")] = None,
                        customer_id: Annotated[str | None, Query(max_length=200)] = None) -> list[DisputeOut]:
    """Disputes pause dunning: account-level ones (no invoice) pause every case of the customer."""
    rows = await views.disputes(request.app.state.pool, principal.tenant_id, status, customer_id)
    return [DisputeOut.of(r) for r in rows]


@router.post("/disputes/{dispute_id}/resolve", response_model=DisputeOut, tags=["disputes"])
async def resolve_dispute(dispute_id: uuid.UUID, body: Resolution, principal: Collector, request: Request) -> DisputeOut:
    """Close a dispute (DisputeResolved): accepted, a credit note is requested from invoicing
    (CreditNoteRequested); rejected, what it paused is dunned again from the latest step due."""
    row = await _arrangements(request).resolve_dispute(
        principal.tenant_id, dispute_id, outcome=body.outcome, resolution=body.resolution,
        credit_minor=body.credit_minor, by=principal.key_id, currency=body.currency)
    return DisputeOut.of(row)
