"""Dunning HTTP API: cases with their steps, and the policies in force."""
from __future__ import annotations

import uuid
from dataclasses import asdict
from datetime import date, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, Field

from services.dunning.domain.policy import DEFAULT_POLICIES
from shared.auth import Principal, require_role
from shared.contract.text import SafeText

router = APIRouter(prefix="/v1")
Reader = Annotated[Principal, Depends(require_role("collector", "analytics"))]
Collector = Annotated[Principal, Depends(require_role("collector"))]


class StepOut(BaseModel):
    round: int = 0  # a case that closes and opens again is dunned again in a new round
    step: str
    channel: str
    template: str
    offset_days: int
    due_at: datetime
    status: str
    executed_at: datetime | None


class CaseOut(BaseModel):
    case_id: str
    customer_id: str
    invoice_id: str
    number: str
    currency: str
    amount_minor: int
    open_minor: int
    due_date: date
    policy: str
    status: str
    closed_reason: str | None
    overdue_since: datetime | None
    round: int = 0
    steps: list[StepOut] = []


async def _steps(pool, tenant_id: str, case_ids: list[uuid.UUID]) -> dict[uuid.UUID, list[StepOut]]:
    rows = await pool.fetch(
        "SELECT * FROM case_steps WHERE tenant_id = $1 AND case_id = ANY($2::uuid[]) ORDER BY round, due_at, channel",
        tenant_id, case_ids,
    )
    out: dict[uuid.UUID, list[StepOut]] = {}
    for r in rows:
        out.setdefault(r["case_id"], []).append(StepOut(**{k: r[k] for k in StepOut.model_fields}))
    return out


def _case(r, steps) -> CaseOut:
    return CaseOut(**{**{k: r[k] for k in CaseOut.model_fields if k not in ("steps", "case_id", "invoice_id")},
                      "case_id": str(r["case_id"]), "invoice_id": str(r["invoice_id"]), "steps": steps})


@router.get("/cases", response_model=list[CaseOut], tags=["cases"])
async def list_cases(
    principal: Reader, request: Request,
    customer_id: Annotated[str | None, Query(max_length=200)] = None,
    status: Annotated[str | None, Query(pattern="^(open|closed)$")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[CaseOut]:
    pool = request.app.state.pool
    rows = await pool.fetch(
        "SELECT * FROM cases WHERE tenant_id = $1 AND ($2::text IS NULL OR customer_id = $2)"
        " AND ($3::text IS NULL OR status = $3) ORDER BY due_date, case_id LIMIT $4",
        principal.tenant_id, customer_id, status, limit,
    )
    steps = await _steps(pool, principal.tenant_id, [r["case_id"] for r in rows])
    return [_case(r, steps.get(r["case_id"], [])) for r in rows]


@router.get("/cases/{case_id}", response_model=CaseOut, tags=["cases"])
async def get_case(case_id: uuid.UUID, principal: Reader, request: Request) -> CaseOut:
    pool = request.app.state.pool
    row = await pool.fetchrow("SELECT * FROM cases WHERE tenant_id = $1 AND case_id = $2", principal.tenant_id, case_id)
    if row is None:
        raise HTTPException(404, f"no case {case_id} in this tenant")
    steps = await _steps(pool, principal.tenant_id, [case_id])
    return _case(row, steps.get(case_id, []))


@router.get("/policies", tags=["policies"])
async def policies(principal: Reader) -> list[dict]:
    return [asdict(p) for p in DEFAULT_POLICIES.values()]


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
    rows = await request.app.state.pool.fetch(
        "SELECT * FROM disputes WHERE tenant_id = $1 AND ($2::text IS NULL OR status = $2) ORDER BY opened_at",
        principal.tenant_id, status,
    )
    return [DisputeOut.of(r) for r in rows]


@router.post("/disputes/{dispute_id}/resolve", response_model=DisputeOut, tags=["disputes"])
async def resolve_dispute(dispute_id: uuid.UUID, body: Resolution, principal: Collector, request: Request) -> DisputeOut:
    """Close a dispute with what was decided (DisputeResolved); what it paused is dunned again
    from the next step."""
    row = await request.app.state.dunning.resolve_dispute(principal.tenant_id, dispute_id, body.resolution,
                                                          principal.key_id)
    return DisputeOut.of(row)
