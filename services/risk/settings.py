from __future__ import annotations

from pydantic import Field

from shared.settings import ServiceSettings


class RiskSettings(ServiceSettings):
    service_name: str = "risk"
    http_port: int = 8003
    stream_data_dir: str = Field(default="/tmp/tahsilat-risk-stream", description="faust's local state (a cache only)")
    stream_group: str | None = Field(
        default=None, description="the early-warning stream's consumer group (faust app id); default"
        " `<topic prefix>risk-stream`. A new group over an empty risk database rebuilds the warnings from the start"
        " of the topics")
    behaviour_group: str | None = Field(
        default=None, description="the behaviour consumer's group (books, scores, credit; worker role); default"
        " `<topic prefix>risk.behaviour`. A new group over an empty risk database rebuilds the store from the start"
        " of the topics")
