"""CloudEvents-aligned envelope around every integration event."""
from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from shared.contract.events import EventPayload
from shared.contract.registry import REGISTRY


class Envelope(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    id: uuid.UUID
    type: str = Field(min_length=1)
    version: int = Field(ge=1)
    source: str = Field(min_length=1)
    time: AwareDatetime
    tenant_id: str = Field(min_length=1)
    subject: str = Field(min_length=1, description="aggregate id, e.g. the invoice id")
    correlation_id: str
    causation_id: str | None = None
    data: dict[str, Any]

    def payload(self) -> EventPayload:
        return REGISTRY.parse(self.type, self.version, self.data)

    @property
    def key(self) -> str:
        return partition_key(self.tenant_id, str(self.data.get("customer_id", self.subject)))


def partition_key(tenant_id: str, customer_id: str) -> str:
    """Everything about one customer lands on one partition, in order."""
    return f"{tenant_id}:{customer_id}"


def new_envelope(
    payload: EventPayload,
    *,
    source: str,
    tenant_id: str,
    subject: str,
    time: datetime,
    caused_by: Envelope | None = None,
    correlation_id: str | None = None,
    event_id: uuid.UUID | None = None,
) -> Envelope:
    eid = event_id or uuid.uuid4()
    if caused_by is not None:
        correlation_id = caused_by.correlation_id
    return Envelope(
        id=eid,
        type=payload.event_type,
        version=payload.event_version,
        source=source,
        time=time,
        tenant_id=tenant_id,
        subject=subject,
        correlation_id=correlation_id or str(eid),
        causation_id=str(caused_by.id) if caused_by else None,
        data=payload.model_dump(mode="json"),
    )
