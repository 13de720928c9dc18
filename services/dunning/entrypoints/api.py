"""Dunning HTTP API: cases (one per customer and currency) with their items, notices and
charges; policies and their versions; holds, "do not chase" and customer groups; disputes."""
from __future__ import annotations

import json
import uuid
from datetime import date, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, Field

from services.dunning.adapters import policy_store
from services.dunning.adapters import views
from services.dunning.domain.policy import PolicyError, PolicySpec, parse_policy
from services.dunning.service_layer import planning
from services.dunning.service_layer.handlers import Commands
from shared.auth import Principal, require_role
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
                           notice_id=str(n["notice_id"]), items=json.loads(n["items"])) for n in notices.get(key, [])],
        charges=[ChargeOut(**{k: ch[k] for k in ChargeOut.model_fields if k not in ("invoice_id", "detail")},
                           invoice_id=str(ch["invoice_id"]), detail=json.loads(ch["detail"]))
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
        return cls(**{**{k: r[k] for k in cls.model_fields}, "document": json.loads(r["document"])})


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
        spec = PolicySpec.model_validate(json.loads(rows[0]["document"]))
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


# -- disputes -------------------------------------------------------------------------------------


class DisputeOut(BaseModel):
    dispute_id: str
    customer_id: str
    origin: str
    reason: str
    invoice_id: str | None
    status: str
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
    resolution: SafeText = Field(min_length=3, max_length=1000, description="what was decided")


@router.get("/disputes", response_model=list[DisputeOut], tags=["disputes"])
async def list_disputes(principal: Reader, request: Request,
                        status: Annotated[str | None, Query(pattern="^(open|resolved)$")] = None) -> list[DisputeOut]:
    """Disputes pause dunning: account-level ones (no invoice) pause every case of the customer."""
    rows = await views.disputes(request.app.state.pool, principal.tenant_id, status)
    return [DisputeOut.of(r) for r in rows]


@router.post("/disputes/{dispute_id}/resolve", response_model=DisputeOut, tags=["disputes"])
async def resolve_dispute(dispute_id: uuid.UUID, body: Resolution, principal: Collector, request: Request) -> DisputeOut:
    """Close a dispute with what was decided (DisputeResolved); what it paused is dunned again
    from the next step."""
    row = await request.app.state.dunning.resolve_dispute(principal.tenant_id, dispute_id, body.resolution,
                                                          principal.key_id)
    return DisputeOut.of(row)
