"""Composition root of the dunning service."""
from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.dunning.adapters import policy_store
from services.dunning.entrypoints.api import router
from services.dunning.entrypoints.desk_api import router as desk_router
from services.dunning.entrypoints.portal_api import router as portal_router
from services.dunning.service_layer.desk import Desk
from services.dunning.service_layer.handlers import Commands, Dunning
from services.dunning.service_layer.portal import Portal
from services.dunning.settings import DunningSettings
from shared.clock import Clock
from shared.host import ServiceHost

MIGRATIONS = Path(__file__).parent / "migrations"


def build(settings: DunningSettings, clock: Clock | None = None) -> FastAPI:
    host = ServiceHost(settings, migrations=MIGRATIONS, clock=clock)

    def wire(host: ServiceHost, app: FastAPI) -> None:
        dunning = Dunning(host.pool, host.clock, host.topics, settings.dispute_pause_days,
                          dispute_alert_days=settings.dispute_alert_days)
        app.state.dunning = dunning
        app.state.commands = Commands(dunning)
        desk = Desk(host.pool, host.clock, host.topics, dunning.arrangements)
        app.state.desk = desk
        # the signed link in every notice opens the customer's page (PORTAL_URL: the console's /p)
        portal = Portal(host.pool, host.clock, dunning.arrangements, dunning.book, settings.portal_url)
        dunning.portal = portal
        app.state.portal = portal

        async def load_policies() -> None:
            """The shipped policy files and the operator's (DUNNING_POLICY_DIR); a changed file
            is a new version, and open cases on the policy it replaces are re-planned."""
            directories = [policy_store.SHIPPED] + ([settings.dunning_policy_dir] if settings.dunning_policy_dir else [])
            async with host.pool.acquire() as conn, conn.transaction():
                if await policy_store.load_files(conn, directories, host.clock.now()):
                    await dunning.replan(conn, tenants=["*"])

        host.on_start(load_policies)
        host.consume("events", [host.topics.invoicing, host.topics.risk, host.topics.notifier], dunning.handlers())
        # every interaction with a customer, from every service, into one timeline
        host.consume("contact-log", [host.topics.invoicing, host.topics.dunning, host.topics.notifier], desk.handlers())
        for n in range(settings.step_concurrency):
            host.every("steps" if n == 0 else f"steps-{n + 1}", lambda: dunning.claim_due_steps(settings.step_batch_size),
                       wake_on="dunning_steps", next_due=dunning.next_step_due)
        host.every("arrangements", dunning.arrangements.tick, next_due=dunning.arrangements.next_due)

    app = host.create_api("Tahsilat dunning", "Dunning cases, notices, charges and policies.", wire)
    app.include_router(router)
    app.include_router(desk_router)
    app.include_router(portal_router)
    return app
