"""Composition root of the risk service. The service process (`serve`) runs the API and the
outbox relay and, in the worker role, the behaviour consumer: the events folded in order into
the customers' books, scores and credit (service_layer/ordering.py). The faust stream process
(`python -m services.risk stream`) runs the early warnings. Both share the database."""
from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from fastapi import FastAPI

from services.risk.entrypoints.api import router
from services.risk.service_layer.handlers import Risk
from services.risk.service_layer.ordering import OrderedRisk, Parsed, staging_handlers
from services.risk.settings import RiskSettings
from shared.clock import Clock
from shared.contract import Topics
from shared.db import migrate
from shared.host import ServiceHost
from shared.kafka import EventConsumer, ensure_topics
from shared.logging import configure_logging
from shared.processing import EventProcessor

MIGRATIONS = Path(__file__).parent / "migrations"


def build(settings: RiskSettings, clock: Clock | None = None) -> FastAPI:
    host = ServiceHost(settings, migrations=MIGRATIONS, clock=clock)

    async def stream_worker_alive() -> bool:
        return bool(await host.pool.fetchval(
            "SELECT 1 FROM stream_heartbeat WHERE assigned > 0 AND beat_at > now() - interval '15 seconds' LIMIT 1"
        ))

    host.add_check("stream_worker", stream_worker_alive)
    app = host.create_api("Tahsilat risk", "Customer payment-risk scores with explanations.", wire_behaviour)
    app.include_router(router)
    return app


def wire_behaviour(host: ServiceHost, app: FastAPI) -> None:
    """The behaviour consumer: each batch staged (inbox, one transaction), then folded in order as
    far as the consumer's partitions allow; a timer folds what became due without a new batch
    and, once a minute, retries the events whose fold failed."""
    settings: RiskSettings = host.settings  # type: ignore[assignment]
    topics = host.topics
    risk = Risk(host.clock, topics)
    running: list[OrderedRisk] = []
    parsed: Parsed = {}

    def ordered(processor: EventProcessor, consumer: EventConsumer) -> OrderedRisk:
        running[:] = [OrderedRisk(risk, host.pool, processor, positions=consumer.positions, parsed=parsed)]
        return running[0]

    async def fold_waiting() -> int:
        return await running[0].advance_if_idle() if running else 0

    async def retry_held() -> int:
        if running:
            await running[0].advance_if_idle(retry_failed=True)
        return 0  # once a minute, whatever it folded

    # invoicing: the invoices and payments; dunning: promises, plans, disputes; notifier: bounces, opt-outs
    host.consume("behaviour", [topics.invoicing, topics.dunning, topics.notifier], staging_handlers(parsed),
                 group=settings.behaviour_group, around=ordered)
    host.every("risk-fold-waiting", fold_waiting, 1.0)
    host.every("risk-retry-held", retry_held, 60.0)


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
