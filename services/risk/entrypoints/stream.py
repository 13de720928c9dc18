"""The risk stream processor: a faust-streaming app for the early warnings (entrypoints/warnings.py),
whose agent keeps windowed tables over the invoicing, dunning and notifier events. The customers'
books, scores and credit are folded by the behaviour consumer of the service process
(bootstrap.wire_behaviour), which needs no windowed state."""
from __future__ import annotations

import os
import socket

import asyncpg
import faust

from services.risk.entrypoints.warnings import register as register_early_warnings
from services.risk.settings import RiskSettings
from shared.contract import Topics
from shared.logging import get_logger, stdlib_logging_config

log = get_logger(__name__)


def create_app(settings: RiskSettings) -> faust.App:
    topics = Topics(settings.topic_prefix)
    app = faust.App(
        settings.stream_group or f"{settings.topic_prefix}risk-stream",
        broker=[f"kafka://{h.strip()}" for h in settings.kafka_bootstrap_servers.split(",")],
        broker_credentials=settings.kafka.faust_credentials(),
        store="memory://",
        datadir=settings.stream_data_dir,
        processing_guarantee="at_least_once",
        topic_partitions=settings.kafka_partitions,
        topic_allow_declare=False,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.kafka_session_timeout_ms / 1000,
        broker_heartbeat_interval=settings.kafka_heartbeat_interval_ms / 1000,
        web_enabled=False,
        producer_acks=-1,
        # The windowed tables write a changelog record per window a fact falls in: send them in
        # batches (a request per record took a quarter of the worker's CPU).
        producer_linger=0.02,
        producer_max_batch_size=256 * 1024,
        logging_config=stdlib_logging_config(settings.service_name, settings.log_format),
    )
    # invoicing: the invoices and payments; dunning: promises, plans, disputes; notifier: bounces, opt-outs
    source = app.topic(topics.invoicing, topics.dunning, topics.notifier, key_serializer="raw", value_serializer="raw")
    worker_id = f"{socket.gethostname()}:{os.getpid()}"
    register_early_warnings(app, source, settings)  # the agent and its windowed tables

    @app.timer(interval=2.0)
    async def heartbeat() -> None:
        """Tell the API process (readiness) that a worker is alive and holds partitions."""
        assigned = len(app.consumer.assignment()) if app.consumer else 0
        conn = await asyncpg.connect(settings.database_url)
        try:
            await conn.execute(
                "INSERT INTO stream_heartbeat (worker, assigned) VALUES ($1, $2) ON CONFLICT (worker)"
                " DO UPDATE SET assigned = EXCLUDED.assigned, beat_at = now()",
                worker_id, assigned,
            )
        finally:
            await conn.close()

    return app
