"""aiokafka wrappers: producer, topic creation, and an event consumer that commits offsets only
after the handler's database transaction (with its inbox row) has committed."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError
from pydantic import ValidationError

from shared.contract import Envelope, EventPayload, UnknownEventType
from shared.inbox import claim_event
from shared.logging import get_logger
from shared.metrics import DEAD_LETTERED, EVENT_HANDLER_SECONDS, EVENTS_CONSUMED

log = get_logger(__name__)

# Errors that say "the world is down", not "this record is bad": retry, never dead-letter.
TRANSIENT_ERRORS = (OSError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError, asyncpg.TooManyConnectionsError)


class BrokerUnavailable(RuntimeError):
    pass


def create_producer(bootstrap: str) -> AIOKafkaProducer:
    # No idempotent producer: the embedded broker lacks it; the inbox makes redelivery harmless.
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=False,
        linger_ms=5,
        max_batch_size=256 * 1024,
        request_timeout_ms=15_000,
    )


async def start_producer(bootstrap: str) -> AIOKafkaProducer:
    producer = create_producer(bootstrap)
    try:
        await producer.start()
    except KafkaConnectionError as exc:
        await producer.stop()
        raise BrokerUnavailable(f"cannot reach the Kafka broker at {bootstrap}: {exc}") from exc
    return producer


async def ensure_topics(bootstrap: str, topics: list[str], partitions: int, replication: int = 1) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
    except KafkaConnectionError as exc:
        raise BrokerUnavailable(f"cannot reach the Kafka broker at {bootstrap}: {exc}") from exc
    try:
        existing = set(await admin.list_topics())
        missing = [NewTopic(t, partitions, replication) for t in topics if t not in existing]
        if missing:
            try:
                await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass
    finally:
        await admin.close()


Handler = Callable[[asyncpg.Connection, Envelope, EventPayload], Awaitable[None]]


@dataclass
class ConsumerConfig:
    bootstrap: str
    group_id: str
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 3_000
    fetch_max_wait_ms: int = 50
    max_records: int = 200


class RecordProcessor:
    """Handles one consumed record: parse the envelope; in one transaction claim the inbox row
    and run the handler for its type. Unreadable records and records whose handler keeps
    failing go to the dead-letter topic with the cause; transient failures (database down) are
    retried without moving on. Used by the aiokafka consumer and by faust agents alike."""

    def __init__(
        self,
        *,
        service: str,
        name: str,
        handlers: Mapping[str, Handler],
        pool: asyncpg.Pool,
        producer: AIOKafkaProducer,
        dead_letter_topic: str,
        max_attempts: int = 3,
    ) -> None:
        self.service = service
        self.name = name
        self.handlers = dict(handlers)
        self.pool = pool
        self.producer = producer
        self.dead_letter_topic = dead_letter_topic
        self.max_attempts = max_attempts

    async def process(self, record: ConsumerRecord) -> None:
        try:
            envelope = Envelope.model_validate_json(record.value or b"")
        except ValidationError as exc:
            await self._dead_letter(record, f"unreadable envelope: {_first_error(exc)}")
            return
        handler = self.handlers.get(envelope.type)
        if handler is None:
            EVENTS_CONSUMED.labels(self.service, self.name, envelope.type, "ignored").inc()
            return
        try:
            payload = envelope.payload()
        except (ValidationError, UnknownEventType) as exc:
            reason = _first_error(exc) if isinstance(exc, ValidationError) else str(exc)
            await self._dead_letter(record, f"invalid {envelope.type} v{envelope.version} payload: {reason}")
            return
        attempt = 0
        while True:
            attempt += 1
            started = time.perf_counter()
            try:
                async with self.pool.acquire() as conn, conn.transaction():
                    if not await claim_event(conn, self.name, envelope):
                        EVENTS_CONSUMED.labels(self.service, self.name, envelope.type, "duplicate").inc()
                        return
                    await handler(conn, envelope, payload)
                EVENTS_CONSUMED.labels(self.service, self.name, envelope.type, "handled").inc()
                EVENT_HANDLER_SECONDS.labels(self.service, self.name).observe(time.perf_counter() - started)
                return
            except TRANSIENT_ERRORS as exc:
                delay = min(30.0, 0.2 * 2**min(attempt, 8))
                log.warning("transient error handling event, retrying", event_id=str(envelope.id), error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)
            except Exception as exc:  # noqa: BLE001 - any other failure is about this record
                if attempt >= self.max_attempts:
                    log.error("handler failed, dead-lettering", event_id=str(envelope.id), type=envelope.type, error=repr(exc))
                    await self._dead_letter(record, f"handler failed after {attempt} attempts: {exc!r}")
                    return
                await asyncio.sleep(0.1 * attempt)

    async def _dead_letter(self, record: ConsumerRecord, reason: str) -> None:
        await dead_letter(self.producer, self.dead_letter_topic, record, reason, service=self.service, consumer=self.name)

    async def process_batch(self, records: list[ConsumerRecord]) -> None:
        for record in records:
            await self.process(record)


async def dead_letter(producer: AIOKafkaProducer, topic: str, record: ConsumerRecord, reason: str, *,
                      service: str, consumer: str) -> None:
    """Copy `record` unchanged to the dead-letter topic, with why and where from in its headers."""
    original = record.headers or []
    headers = list(original.items() if isinstance(original, Mapping) else original) + [
        ("dlq_reason", reason[:2000].encode()),
        ("dlq_consumer", consumer.encode()),
        ("dlq_original_topic", record.topic.encode()),
        ("dlq_original_partition", str(record.partition).encode()),
        ("dlq_original_offset", str(record.offset).encode()),
    ]
    await producer.send_and_wait(topic, value=record.value, key=record.key, headers=headers)
    DEAD_LETTERED.labels(service, consumer).inc()
    EVENTS_CONSUMED.labels(service, consumer, "?", "dead_lettered").inc()
    log.warning("record dead-lettered", topic=record.topic, offset=record.offset, reason=reason)


BatchHandler = Callable[[list[ConsumerRecord], Callable[[ConsumerRecord, str], Awaitable[None]]], Awaitable[None]]


class BatchProcessor:
    """For consumers that handle raw records a batch at a time (billing-source ingest): the
    handler gets the records and a function that dead-letters one of them with a reason."""

    def __init__(self, *, service: str, name: str, handler: BatchHandler, producer: AIOKafkaProducer,
                 dead_letter_topic: str) -> None:
        self.service, self.name, self.handler = service, name, handler
        self.producer, self.dead_letter_topic = producer, dead_letter_topic

    async def process_batch(self, records: list[ConsumerRecord]) -> None:
        async def reject(record: ConsumerRecord, reason: str) -> None:
            await dead_letter(self.producer, self.dead_letter_topic, record, reason, service=self.service,
                              consumer=self.name)

        while True:
            try:
                await self.handler(records, reject)
                return
            except TRANSIENT_ERRORS as exc:  # the database is away: wait, never skip
                log.warning("transient error handling a batch, retrying", consumer=self.name, error=str(exc))
                await asyncio.sleep(1.0)


class EventConsumer:
    """An aiokafka consumer group member: records go through `processor`; a partition's offset
    is committed only after its records' transactions have committed (at-least-once + inbox)."""

    def __init__(self, *, topics: list[str], processor: RecordProcessor | BatchProcessor, config: ConsumerConfig) -> None:
        self.topics = topics
        self.processor = processor
        self.name = processor.name
        self.config = config
        self.ready = asyncio.Event()

    async def run(self) -> None:
        cfg = self.config
        consumer = AIOKafkaConsumer(
            *self.topics,
            bootstrap_servers=cfg.bootstrap,
            group_id=cfg.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=cfg.session_timeout_ms,
            heartbeat_interval_ms=cfg.heartbeat_interval_ms,
            fetch_max_wait_ms=cfg.fetch_max_wait_ms,
            max_partition_fetch_bytes=8 * 1024 * 1024,
        )
        await consumer.start()
        try:
            while True:
                batches = await consumer.getmany(timeout_ms=500, max_records=cfg.max_records)
                if consumer.assignment():
                    self.ready.set()
                for tp, records in batches.items():
                    await self.processor.process_batch(records)
                    await consumer.commit({tp: records[-1].offset + 1})
        finally:
            await consumer.stop()


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"]) or "(record)"
    return f"{field}: {err['msg']}"


__all__ = [
    "BatchHandler", "BatchProcessor", "BrokerUnavailable", "ConsumerConfig", "EventConsumer", "Handler",
    "RecordProcessor", "TopicPartition", "dead_letter",
    "create_producer", "ensure_topics", "start_producer",
]
