from __future__ import annotations

from pydantic import Field

from shared.settings import ServiceSettings


class DunningSettings(ServiceSettings):
    service_name: str = "dunning"
    http_port: int = 8002
    step_batch_size: int = Field(default=200, ge=1)
