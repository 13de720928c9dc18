"""Composition root of the dunning service."""
from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.dunning.entrypoints.api import router
from services.dunning.service_layer.handlers import Dunning
from services.dunning.settings import DunningSettings
from shared.clock import Clock
from shared.host import ServiceHost

MIGRATIONS = Path(__file__).parent / "migrations"


def build(settings: DunningSettings, clock: Clock | None = None) -> FastAPI:
    host = ServiceHost(settings, migrations=MIGRATIONS, clock=clock)

    def wire(host: ServiceHost, app: FastAPI) -> None:
        dunning = Dunning(host.pool, host.clock, host.topics, settings.dispute_pause_days)
        app.state.dunning = dunning
        host.consume("events", [host.topics.invoicing, host.topics.risk], dunning.handlers())
        host.every("steps", lambda: dunning.claim_due_steps(settings.step_batch_size), wake_on="dunning_steps",
                   next_due=dunning.next_step_due)

    app = host.create_api("Tahsilat dunning", "Dunning cases, steps and policies.", wire)
    app.include_router(router)
    return app
