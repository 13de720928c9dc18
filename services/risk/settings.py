from __future__ import annotations

from pydantic import Field

from shared.settings import ServiceSettings


class RiskSettings(ServiceSettings):
    service_name: str = "risk"
    http_port: int = 8003
    stream_data_dir: str = Field(default="/tmp/tahsilat-risk-stream", description="faust's local state (a cache only)")
