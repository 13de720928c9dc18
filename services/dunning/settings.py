from __future__ import annotations

from pathlib import Path

from pydantic import Field

from shared.settings import ServiceSettings


class DunningSettings(ServiceSettings):
    service_name: str = "dunning"
    http_port: int = 8002
    step_batch_size: int = Field(default=200, ge=1, description="cases fired per transaction of the step timer")
    step_concurrency: int = Field(default=2, ge=1, le=8,
                                  description="claim loops of the step timer per process: while one waits for"
                                              " PostgreSQL the other decides (they share the cases, SKIP LOCKED)")
    consumer_members: int = Field(default=2, ge=1, le=8, description=(
        "members of each consumer group in one process: while one waits for PostgreSQL the other works"))
    dispute_pause_days: int = Field(default=30, ge=1, le=365,
                                    description="longest a dispute pauses dunning when nobody resolves it")
    dispute_alert_days: int = Field(default=14, ge=1, le=365,
                                    description="a dispute open this long raises DisputeAgeing (once)")
    portal_url: str | None = Field(default=None, pattern=r"^https?://\S+$", description=(
        "where customers open their page: each notice links to <this>/<signed token> (the console's /p,"
        " e.g. https://pay.example.com/p); unset: notices carry no portal link"))
    dunning_policy_dir: Path | None = Field(default=None, description="a directory of policy YAML files loaded at start, for"
                                                               " every tenant, besides the shipped ones")
