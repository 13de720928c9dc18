"""Composition root of the risk service: the API process (HTTP + outbox relay) and the
faust stream process (`python -m services.risk stream`) share the database."""
from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from fastapi import FastAPI

from services.risk.entrypoints.api import router
from services.risk.settings import RiskSettings
from shared.clock import Clock
from shared.contract import Topics
from shared.db import migrate
from shared.host import ServiceHost
from shared.kafka import ensure_topics
from shared.logging import configure_logging

MIGRATIONS = Path(__file__).parent / "migrations"


def build(settings: RiskSettings, clock: Clock | None = None) -> FastAPI:
    host = ServiceHost(settings, migrations=MIGRATIONS, clock=clock)

    async def stream_worker_alive() -> bool:
        return bool(await host.pool.fetchval(
            "SELECT 1 FROM stream_heartbeat WHERE assigned > 0 AND beat_at > now() - interval '15 seconds' LIMIT 1"
        ))

    host.add_check("stream_worker", stream_worker_alive)
    app = host.create_api("Tahsilat risk", "Customer payment-risk scores with explanations.", lambda host, app: None)
    app.include_router(router)
    return app


def run_stream(settings: RiskSettings) -> None:
    """Run the faust worker (no web server: the API process serves health and metrics)."""
    from services.risk.entrypoints.stream import create_app
    from services.risk.entrypoints.warnings import ensure_table_topics

    configure_logging(settings.service_name, settings.log_level, settings.log_format)
    asyncio.run(migrate(settings.database_url, MIGRATIONS))
    asyncio.run(ensure_topics(settings.kafka_bootstrap_servers, Topics(settings.topic_prefix).all(),
                              settings.kafka_partitions, security=settings.kafka))
    app = create_app(settings)
    asyncio.run(ensure_table_topics(app, settings))  # the tables' changelogs: the app declares no topics
    level = {"warning": "warn"}.get(settings.log_level, settings.log_level)
    sys.argv = [sys.argv[0], "--quiet", "worker", "--without-web", "--loglevel", level]  # no banner: JSON logs only
    app.main()
