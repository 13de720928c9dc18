"""Risk HTTP API: a customer's grade with its factors (in the asker's language), the tenant's
scorecard, credit (limits, exposure, headroom, holds, dealer groups), credit applications and
their decisions, and early warnings."""
from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, Field, model_validator

from services.risk.adapters import scorecards as cards
from services.risk.adapters import warnings as warning_store
from services.risk.domain.credit import CreditApplicationInput, CreditPolicy
from services.risk.domain.scorecard import Scorecard, explained
from services.risk.service_layer import credit
from shared.auth import Principal, require_role
from shared.contract.events import RiskFactor, SecurityRequirement
from shared.contract.money import CurrencyCode
from shared.contract.text import SafeText
from shared.http import DomainError

router = APIRouter(prefix="/v1")
Reader = Annotated[Principal, Depends(require_role("collector", "analytics", "billing-source"))]
Collector = Annotated[Principal, Depends(require_role("collector"))]
Admin = Annotated[Principal, Depends(require_role("admin"))]
CustomerId = Annotated[SafeText, Path(min_length=1, max_length=200)]
Language = Literal["en", "tr", "cs", "fa"]


def _now(request: Request) -> datetime:
    return request.app.state.host.clock.now()


def _by(principal: Principal) -> str:
    return f"key:{principal.key_id}"


def _topics(request: Request):
    return request.app.state.host.topics


# -- risk ----------------------------------------------------------------------------------------

class CustomerRisk(BaseModel):
    customer_id: str
    score: int
    grade: str | None
    segment: str
    language: str = Field(description="the language the factors are explained in")
    factors: list[RiskFactor]
    assessed_at: datetime
    history: list[dict[str, Any]] = Field(description="the latest changes of score and grade, newest first")


@router.get("/customers/{customer_id}/risk", response_model=CustomerRisk, tags=["risk"])
async def customer_risk(customer_id: CustomerId, principal: Reader, request: Request,
                        language: Annotated[Language | None, Query(description="default: the customer's")] = None
                        ) -> CustomerRisk:
    pool = request.app.state.pool
    row = await pool.fetchrow(
        "SELECT r.score, r.grade, r.segment, r.factors, r.assessed_at, c.language FROM customer_risk r"
        " LEFT JOIN risk_customers c USING (tenant_id, customer_id) WHERE r.tenant_id = $1 AND r.customer_id = $2",
        principal.tenant_id, customer_id)
    if row is None:
        raise DomainError("customer_id", f"no risk assessment for customer {customer_id!r} in this tenant yet", 404)
    history = await pool.fetch(
        "SELECT assessed_at, score, grade, segment FROM risk_assessments WHERE tenant_id = $1 AND customer_id = $2"
        " ORDER BY assessed_at DESC, event_id LIMIT 20", principal.tenant_id, customer_id)
    lang = language or row["language"] or "en"
    factors = explained([RiskFactor.model_validate(f) for f in row["factors"]], lang)
    return CustomerRisk(customer_id=customer_id, score=row["score"], grade=row["grade"], segment=row["segment"],
                        language=lang, factors=factors, assessed_at=row["assessed_at"],
                        history=[dict(r) for r in history])


class ScorecardOut(BaseModel):
    own: bool = Field(description="false: the shipped scorecard")
    scorecard: Scorecard


@router.get("/scorecard", response_model=ScorecardOut, tags=["risk"])
async def get_scorecard(principal: Reader, request: Request) -> ScorecardOut:
    async with request.app.state.pool.acquire() as conn:
        card, own = await cards.scorecard(conn, principal.tenant_id)
    return ScorecardOut(own=own, scorecard=card)


@router.put("/scorecard", response_model=ScorecardOut, tags=["risk"])
async def put_scorecard(body: Scorecard, principal: Admin, request: Request) -> ScorecardOut:
    """Factors, weights, bands, grade bounds and grade -> dunning segment. New assessments use it;
    past ones stay as they were made."""
    async with request.app.state.pool.acquire() as conn:
        await cards.save_scorecard(conn, principal.tenant_id, body, _now(request), _by(principal))
    return ScorecardOut(own=True, scorecard=body)


@router.get("/customers/{customer_id}/warnings", tags=["risk"])
async def customer_warnings(customer_id: CustomerId, principal: Reader, request: Request) -> list[dict[str, Any]]:
    """The customer's early warnings, newest first, with the evidence each rests on."""
    async with request.app.state.pool.acquire() as conn:
        return await warning_store.customer_warnings(conn, principal.tenant_id, customer_id)


# -- credit --------------------------------------------------------------------------------------

@router.get("/customers/{customer_id}/credit", tags=["credit"])
async def customer_credit(customer_id: CustomerId, principal: Reader, request: Request) -> dict[str, Any]:
    """Per currency: limit, exposure (the group's for a parent), headroom, hold, and the engine's
    recommended limit; the customer's group."""
    async with request.app.state.pool.acquire() as conn:
        return await credit.credit_view(conn, principal.tenant_id, customer_id, _now(request))


class LimitIn(BaseModel):
    limit_minor: int | None = Field(default=None, ge=0, le=10**15)
    use_recommendation: bool = Field(default=False, description="take the engine's recommended limit")
    reason: SafeText | None = Field(default=None, max_length=500)

    @model_validator(mode="after")
    def _one(self) -> "LimitIn":
        if (self.limit_minor is None) == (not self.use_recommendation):
            raise ValueError("give either limit_minor or use_recommendation: true")
        return self


@router.put("/customers/{customer_id}/credit/limits/{currency}", tags=["credit"])
async def put_limit(customer_id: CustomerId, currency: CurrencyCode, body: LimitIn, principal: Collector,
                    request: Request) -> dict[str, Any]:
    async with request.app.state.pool.acquire() as conn, conn.transaction():
        return await credit.set_limit(conn, _topics(request), principal.tenant_id, customer_id, currency,
                                      limit_minor=body.limit_minor, use_recommendation=body.use_recommendation,
                                      by=_by(principal), reason=body.reason, at=_now(request))


@router.delete("/customers/{customer_id}/credit/limits/{currency}", tags=["credit"])
async def delete_limit(customer_id: CustomerId, currency: CurrencyCode, principal: Collector,
                       request: Request) -> dict[str, Any]:
    async with request.app.state.pool.acquire() as conn, conn.transaction():
        return await credit.set_limit(conn, _topics(request), principal.tenant_id, customer_id, currency,
                                      limit_minor=None, use_recommendation=False, by=_by(principal),
                                      reason="removed", at=_now(request))


class HoldIn(BaseModel):
    currency: CurrencyCode | None = Field(default=None, description="omit: every currency")
    reason: SafeText | None = Field(default=None, max_length=500)


@router.post("/customers/{customer_id}/credit/hold", tags=["credit"])
async def place_hold(customer_id: CustomerId, body: HoldIn, principal: Collector, request: Request) -> dict[str, Any]:
    async with request.app.state.pool.acquire() as conn, conn.transaction():
        changed = await credit.set_manual_hold(conn, _topics(request), principal.tenant_id, customer_id, on=True,
                                               currency=body.currency, by=_by(principal), reason=body.reason,
                                               at=_now(request))
    return {"customer_id": customer_id, "currency": body.currency, "held": True, "changed": changed}


@router.delete("/customers/{customer_id}/credit/hold", tags=["credit"])
async def lift_hold(customer_id: CustomerId, principal: Collector, request: Request,
                    currency: Annotated[CurrencyCode | None, Query()] = None) -> dict[str, Any]:
    """Lifts a person's hold; a hold for exceeding the limit lifts itself once the exposure is back
    within it (or the limit is raised)."""
    async with request.app.state.pool.acquire() as conn, conn.transaction():
        changed = await credit.set_manual_hold(conn, _topics(request), principal.tenant_id, customer_id, on=False,
                                               currency=currency, by=_by(principal), reason=None, at=_now(request))
    return {"customer_id": customer_id, "currency": currency, "held": False, "changed": changed}


class ParentIn(BaseModel):
    parent_id: SafeText | None = Field(min_length=1, max_length=200, description="null: leave the group")


@router.put("/customers/{customer_id}/parent", tags=["credit"])
async def put_parent(customer_id: CustomerId, body: ParentIn, principal: Collector, request: Request) -> dict[str, Any]:
    async with request.app.state.pool.acquire() as conn, conn.transaction():
        await credit.set_parent(conn, principal.tenant_id, customer_id, body.parent_id)
    return {"customer_id": customer_id, "parent_id": body.parent_id}


@router.get("/groups/{parent_id}", tags=["credit"])
async def group(parent_id: CustomerId, principal: Reader, request: Request) -> dict[str, Any]:
    """A dealer group: the parent's limit against the whole group's exposure, and every member
    with its own exposure, grade, holds and latest warnings."""
    async with request.app.state.pool.acquire() as conn:
        return await credit.group_view(conn, principal.tenant_id, parent_id, _now(request))


# -- credit applications ---------------------------------------------------------------------------

class ApplicationIn(CreditApplicationInput):
    customer_id: SafeText = Field(min_length=1, max_length=200)
    sector: SafeText = Field(min_length=1, max_length=60)


@router.post("/credit-applications", status_code=201, tags=["credit"])
async def submit_application(body: ApplicationIn, principal: Collector, request: Request) -> dict[str, Any]:
    """A new customer's application: the engine's recommended limit, terms and security, with why."""
    app = CreditApplicationInput.model_validate(body.model_dump(exclude={"customer_id"}))
    async with request.app.state.pool.acquire() as conn, conn.transaction():
        return await credit.submit_application(conn, principal.tenant_id, body.customer_id, app, _by(principal),
                                               _now(request))


@router.get("/credit-applications/{application_id}", tags=["credit"])
async def get_application(application_id: uuid.UUID, principal: Reader, request: Request) -> dict[str, Any]:
    async with request.app.state.pool.acquire() as conn:
        found = await credit.application(conn, principal.tenant_id, application_id)
    if found is None:
        raise DomainError("application_id", "no such credit application in this tenant", 404)
    return found


class DecisionIn(BaseModel):
    approve: bool
    limit_minor: int | None = Field(default=None, ge=0, le=10**15, description="omit: the recommended")
    terms_days: int | None = Field(default=None, ge=0, le=365)
    security: list[SecurityRequirement] | None = None
    note: SafeText | None = Field(default=None, max_length=1000)


@router.post("/credit-applications/{application_id}/decision", tags=["credit"])
async def decide_application(application_id: uuid.UUID, body: DecisionIn, principal: Collector,
                             request: Request) -> dict[str, Any]:
    """Approve the recommendation as it is, change it, or decline; recorded with who and when."""
    async with request.app.state.pool.acquire() as conn, conn.transaction():
        return await credit.decide_application(
            conn, _topics(request), principal.tenant_id, application_id, approve=body.approve,
            limit_minor=body.limit_minor, terms_days=body.terms_days, security=body.security, note=body.note,
            by=_by(principal), at=_now(request))


class PolicyOut(BaseModel):
    own: bool
    policy: CreditPolicy


@router.get("/credit-policy", response_model=PolicyOut, tags=["credit"])
async def get_credit_policy(principal: Reader, request: Request) -> PolicyOut:
    async with request.app.state.pool.acquire() as conn:
        policy, own = await cards.credit_policy(conn, principal.tenant_id)
    return PolicyOut(own=own, policy=policy)


@router.put("/credit-policy", response_model=PolicyOut, tags=["credit"])
async def put_credit_policy(body: CreditPolicy, principal: Admin, request: Request) -> PolicyOut:
    async with request.app.state.pool.acquire() as conn:
        await cards.save_credit_policy(conn, principal.tenant_id, body, _now(request), _by(principal))
    return PolicyOut(own=True, policy=body)
