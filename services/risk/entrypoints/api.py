"""Risk HTTP API: a customer's current score with its explanation."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Request
from pydantic import BaseModel

from shared.auth import Principal, require_role
from shared.contract.events import RiskFactor

router = APIRouter(prefix="/v1")
Reader = Annotated[Principal, Depends(require_role("collector", "analytics", "billing-source"))]


class CustomerRisk(BaseModel):
    customer_id: str
    score: int
    segment: str
    factors: list[RiskFactor]
    assessed_at: datetime


@router.get("/customers/{customer_id}/risk", response_model=CustomerRisk, tags=["risk"])
async def customer_risk(customer_id: Annotated[str, Path(max_length=200)], principal: Reader, request: Request) -> CustomerRisk:
    row = await request.app.state.pool.fetchrow(
        "SELECT * FROM customer_risk WHERE tenant_id = $1 AND customer_id = $2", principal.tenant_id, customer_id
    )
    if row is None:
        raise HTTPException(404, f"no risk assessment for customer {customer_id!r} in this tenant yet")
    return CustomerRisk(customer_id=customer_id, score=row["score"], segment=row["segment"],
                        factors=row["factors"], assessed_at=row["assessed_at"])
