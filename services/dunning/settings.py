from __future__ import annotations

from pydantic import Field

from shared.settings import ServiceSettings


class DunningSettings(ServiceSettings):
    service_name: str = "dunning"
    http_port: int = 8002
    step_batch_size: int = Field(default=200, ge=1)
    dispute_pause_days: int = Field(default=30, ge=1, le=365,
                                    description="longest a dispute pauses dunning when nobody resolves it")
