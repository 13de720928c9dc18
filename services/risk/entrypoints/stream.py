"""The risk stream processor: a faust-streaming app. Its agent takes the records a batch at a
time and hands each batch to the shared EventProcessor, so the inbox, the one transaction per
batch and dead-lettering are the same as in every other consumer; the batch is staged and then
folded in event order (service_layer/ordering.py), and faust commits the offsets after the
agent has processed the batch."""
from __future__ import annotations

import os
import socket

import asyncpg
import faust

from services.risk.entrypoints.warnings import register as register_early_warnings
from services.risk.service_layer.handlers import Risk
from services.risk.service_layer.ordering import OrderedRisk, staging_handlers
from services.risk.settings import RiskSettings
from shared.clock import Clock, clock_from
from shared.contract import Topics
from shared.db import create_pool
from shared.kafka import DeadLetters, start_producer
from shared.processing import EventProcessor
from shared.logging import get_logger, stdlib_logging_config

log = get_logger(__name__)


def create_app(settings: RiskSettings, clock: Clock | None = None) -> faust.App:
    topics = Topics(settings.topic_prefix)
    clock = clock or clock_from(settings.clock_file)
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
        logging_config=stdlib_logging_config(settings.service_name, settings.log_format),
    )
    # invoicing: the invoices and payments; dunning: promises, plans, disputes; notifier: bounces, opt-outs
    source = app.topic(topics.invoicing, topics.dunning, topics.notifier, key_serializer="raw", value_serializer="raw")
    risk = Risk(clock, topics)
    worker_id = f"{socket.gethostname()}:{os.getpid()}"
    source_topics = {topics.invoicing, topics.dunning, topics.notifier}
    running: dict[str, OrderedRisk] = {}

    def positions() -> dict[tuple[str, int], tuple[int | None, int | None]]:
        """Log end and committed offset of each source partition this worker holds."""
        consumer = app.consumer
        return {(tp.topic, tp.partition): (consumer.highwater(tp), consumer._committed_offset.get(tp))
                for tp in consumer.assignment() if tp.topic in source_topics}

    @app.agent(source, name="assess-payment-behaviour")
    async def assess_payment_behaviour(stream):
        pool = await create_pool(settings.database_url, max_size=settings.db_pool_max,
                                 statement_timeout_ms=settings.db_statement_timeout_ms)
        producer = await start_producer(settings.kafka_bootstrap_servers, settings.kafka)  # for dead letters
        name = "risk.behaviour"
        processor = OrderedRisk(risk, pool, EventProcessor(
            service=settings.service_name, name=name, handlers=staging_handlers(), pool=pool,
            dead_letter=DeadLetters(producer, topics.dead_letter, service=settings.service_name, consumer=name),
        ), positions=positions)
        running["behaviour"] = processor
        log.info("risk stream agent started")
        try:
            async for events in stream.take_events(settings.consumer_max_batch, within=0.02):
                try:
                    await processor.process_batch([e.message for e in events])
                except BaseException:
                    # faust acknowledges a taken batch even when its processing is interrupted (a
                    # stop): mark the messages done without acknowledging them, so their offsets are
                    # never committed and they come again.
                    for e in events:
                        e.message.acked = True
                    raise
        finally:
            running.pop("behaviour", None)
            await producer.stop()
            await pool.close()

    register_early_warnings(app, source, settings)  # a second agent and its windowed tables

    ticks = 0

    @app.timer(interval=1.0)
    async def fold_waiting() -> None:
        """Fold staged events whose turn came without a new batch (a partition reached its end);
        once a minute, retry those whose fold failed."""
        nonlocal ticks
        processor = running.get("behaviour")
        if processor is not None and app.consumer is not None:
            ticks += 1
            await processor.advance_if_idle(retry_failed=ticks % 60 == 0)

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
