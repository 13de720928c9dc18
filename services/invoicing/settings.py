from __future__ import annotations

from pydantic import Field

from shared.settings import ServiceSettings


class InvoicingSettings(ServiceSettings):
    service_name: str = "invoicing"
    http_port: int = 8001
    overdue_grace_days: int = Field(default=0, ge=0, le=60)
    timer_batch_size: int = Field(default=500, ge=1)
    public_base_url: str = Field(default="http://127.0.0.1:8001", pattern=r"^https?://",
                                 description="where customers reach the balance-confirmation links")
    confirmation_link_days: int = Field(default=30, ge=1, le=365,
                                        description="how long a balance-confirmation link can be answered")
    ingest_signature_tolerance_seconds: int = Field(default=300, ge=10, le=86_400, description=(
        "how far a signed ingest record's timestamp may be from now (replays older than this are refused)"))
