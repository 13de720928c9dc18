"""aiokafka wrappers: producer, topic creation, dead letters, and the consumer-group member that
hands each poll batch to a processor (shared/processing.py) and commits offsets only after it."""
from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    CommitFailedError, IllegalStateError, KafkaConnectionError, KafkaError, TopicAlreadyExistsError,
)

from shared.kafka_security import PLAINTEXT, KafkaSecurity
from shared.logging import get_logger
from shared.metrics import (
    CONSUMER_BATCH_RECORDS, CONSUMER_COMMIT_FAILURES, CONSUMER_LAG, DEAD_LETTERED, EVENTS_CONSUMED,
)
from shared.processing import backoff
from shared.shutdown import finish_within

log = get_logger(__name__)


class BrokerUnavailable(RuntimeError):
    pass


def create_producer(bootstrap: str, security: KafkaSecurity = PLAINTEXT) -> AIOKafkaProducer:
    # No idempotent producer: the embedded broker lacks it; the inbox makes redelivery harmless.
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        **security.aiokafka_options(),
        acks="all",
        enable_idempotence=False,
        linger_ms=5,
        max_batch_size=256 * 1024,
        request_timeout_ms=15_000,
    )


async def start_producer(bootstrap: str, security: KafkaSecurity = PLAINTEXT) -> AIOKafkaProducer:
    producer = create_producer(bootstrap, security)
    try:
        await producer.start()
    except KafkaConnectionError as exc:
        await producer.stop()
        raise BrokerUnavailable(f"cannot reach the Kafka broker at {bootstrap}: {exc}") from exc
    return producer


async def ensure_topics(bootstrap: str, topics: list[str], partitions: int, replication: int = 1,
                        security: KafkaSecurity = PLAINTEXT, configs: dict[str, dict[str, str]] | None = None) -> None:
    """Create the topics that do not exist yet (`configs`: a topic's own settings, by name)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **security.aiokafka_options())
    try:
        await admin.start()
    except KafkaConnectionError as exc:
        raise BrokerUnavailable(f"cannot reach the Kafka broker at {bootstrap}: {exc}") from exc
    try:
        existing = set(await admin.list_topics())
        missing = [NewTopic(t, partitions, replication, topic_configs=(configs or {}).get(t, {}))
                   for t in topics if t not in existing]
        if missing:
            try:
                await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass
    finally:
        await admin.close()


@dataclass
class ConsumerConfig:
    bootstrap: str
    group_id: str
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 3_000
    fetch_max_wait_ms: int = 50
    max_batch: int = 5_000
    poll_timeout_ms: int = 500
    security: KafkaSecurity = PLAINTEXT


class DeadLetters:
    """Copies records that cannot be applied to the dead-letter topic, unchanged, with why and
    where from in their headers. A failed send is retried until the broker takes it: a record
    is never skipped without its dead letter."""

    def __init__(self, producer: AIOKafkaProducer, topic: str, *, service: str, consumer: str) -> None:
        self.producer, self.topic, self.service, self.consumer = producer, topic, service, consumer

    async def __call__(self, record: Any, reason: str) -> None:
        original = record.headers or []
        headers = list(original.items() if isinstance(original, Mapping) else original) + [
            ("dlq_reason", reason[:2000].encode()),
            ("dlq_consumer", self.consumer.encode()),
            ("dlq_original_topic", record.topic.encode()),
            ("dlq_original_partition", str(record.partition).encode()),
            ("dlq_original_offset", str(record.offset).encode()),
        ]
        attempt = 0
        while True:
            try:
                await self.producer.send_and_wait(self.topic, value=record.value, key=record.key, headers=headers)
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the broker is away: wait, never drop the record
                attempt += 1
                log.warning("dead-letter send failed, retrying", consumer=self.consumer, error=repr(exc),
                            retry_in=backoff(attempt))
                await asyncio.sleep(backoff(attempt))
        DEAD_LETTERED.labels(self.service, self.consumer).inc()
        EVENTS_CONSUMED.labels(self.service, self.consumer, "?", "dead_lettered").inc()
        log.warning("record dead-lettered", consumer=self.consumer, topic=record.topic, partition=record.partition,
                    offset=record.offset, reason=reason)


@dataclass
class BatchSizer:
    """How many records to take per poll. Light traffic gives small batches anyway (a poll returns
    what is there); under load the limit doubles while batches fill up and stay quick, and halves
    when one takes too long (latency, and the group's poll deadline)."""

    size: int = 200
    minimum: int = 10
    maximum: int = 5_000
    target_seconds: float = 0.5

    def observe(self, taken: int, seconds: float) -> None:
        if seconds > 2 * self.target_seconds:
            self.size = max(self.minimum, self.size // 2)
        elif taken >= self.size and seconds < self.target_seconds:
            self.size = min(self.maximum, self.size * 2)


class BatchProcessor(Protocol):
    name: str

    async def process_batch(self, records: Sequence[Any]) -> None: ...


@runtime_checkable
class PreparingProcessor(BatchProcessor, Protocol):
    """A processor whose CPU-only first step (decoding the records) can run ahead, on the next
    batch, while the current one waits for its database."""

    def prepare(self, records: Sequence[Any]) -> Any: ...

    async def process_prepared(self, records: Sequence[Any], prepared: Any) -> None: ...


Partition = tuple[str, int]  # (topic, partition)


class _CommittedOffsets(ConsumerRebalanceListener):
    """Keeps the group's committed offset of each partition the member holds: read from the
    coordinator when a partition is assigned, then moved by the member's own commits."""

    def __init__(self) -> None:
        self.consumer: AIOKafkaConsumer | None = None
        self.offsets: dict[TopicPartition, int | None] = {}

    async def on_partitions_revoked(self, revoked) -> None:
        for tp in revoked:
            self.offsets.pop(tp, None)

    async def on_partitions_assigned(self, assigned) -> None:
        for tp in assigned:
            try:
                self.offsets[tp] = await self.consumer.committed(tp)
            except KafkaError as exc:  # unknown for now: the first commit sets it
                log.warning("could not read a committed offset", topic=tp.topic, partition=tp.partition,
                            error=repr(exc))
                self.offsets[tp] = None


class EventConsumer:
    """An aiokafka consumer-group member. Each poll batch goes through `processor` as a whole;
    offsets are committed only after it is done (so after its transactions committed). A refused
    commit (a rebalance took the partition) is not an error: the new owner reads those records
    again and the inbox makes that harmless. Anything else that breaks the loop ends `run()`;
    the service host restarts it."""

    def __init__(self, *, topics: list[str], processor: BatchProcessor, config: ConsumerConfig,
                 service: str = "") -> None:
        self.topics = topics
        self.processor = processor
        self.name = processor.name
        self.service = service
        self.config = config
        self.sizer = BatchSizer(maximum=config.max_batch)
        self.ready = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._committed = _CommittedOffsets()

    def positions(self) -> dict[Partition, tuple[int | None, int | None]]:
        """Each partition the member holds: (its log end offset as last fetched, None before
        the first fetch; the group's committed offset, None if unknown). Every record before the
        committed offset has been processed, by this member or an earlier one."""
        consumer = self._consumer
        if consumer is None:
            return {}
        return {(tp.topic, tp.partition): (consumer.highwater(tp), self._committed.offsets.get(tp))
                for tp in consumer.assignment()}

    async def run(self) -> None:
        cfg = self.config
        consumer = AIOKafkaConsumer(
            bootstrap_servers=cfg.bootstrap,
            **cfg.security.aiokafka_options(),
            group_id=cfg.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=cfg.session_timeout_ms,
            heartbeat_interval_ms=cfg.heartbeat_interval_ms,
            fetch_max_wait_ms=cfg.fetch_max_wait_ms,
            max_partition_fetch_bytes=8 * 1024 * 1024,
        )
        self._committed = _CommittedOffsets()
        self._committed.consumer = consumer
        consumer.subscribe(self.topics, listener=self._committed)
        await consumer.start()
        self._consumer = consumer
        read_ahead = isinstance(self.processor, PreparingProcessor)
        ahead: asyncio.Task | None = None
        try:
            while True:
                if ahead is None:
                    fetched = await self._fetch(consumer, read_ahead)
                else:
                    fetched, ahead = await ahead, None
                # Only the partitions still held: a batch fetched (or read ahead) across a
                # rebalance may hold records of a partition another member owns now; they are
                # neither applied nor committed here, the owner reads them from the committed offset.
                assigned = consumer.assignment()
                fetched = [(tp, rs, prepared) for tp, rs, prepared in fetched if tp in assigned]
                if not fetched:
                    continue
                if read_ahead:  # decode the next batch while this one waits for its database
                    ahead = asyncio.create_task(self._fetch(consumer, read_ahead))
                records = [r for _, rs, _ in fetched for r in rs]
                started = time.perf_counter()
                if read_ahead:
                    await self.processor.process_prepared(  # type: ignore[attr-defined]
                        records, [p for _, _, prepared in fetched for p in prepared])
                else:
                    await self.processor.process_batch(records)
                self.sizer.observe(len(records), time.perf_counter() - started)
                CONSUMER_BATCH_RECORDS.labels(self.service, self.name).observe(len(records))
                await self._commit(consumer, {tp: rs[-1].offset + 1 for tp, rs, _ in fetched})
        finally:
            if ahead is not None:
                ahead.cancel()
                with contextlib.suppress(BaseException):
                    await ahead
            self.ready.clear()
            self._consumer = None
            await finish_within(consumer.stop(), 10, f"consumer {self.name} stop")

    async def _fetch(self, consumer: AIOKafkaConsumer, prepare: bool) -> list[tuple[TopicPartition, list, Any]]:
        """The next poll batch: (partition, its records, what the processor prepared of them)."""
        batches = await consumer.getmany(timeout_ms=self.config.poll_timeout_ms, max_records=self.sizer.size)
        if consumer.assignment():
            self.ready.set()
        return [(tp, rs, self.processor.prepare(rs) if prepare else None)  # type: ignore[attr-defined]
                for tp, rs in batches.items() if rs]

    async def _commit(self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
        assigned = consumer.assignment()
        mine = {tp: offset for tp, offset in offsets.items() if tp in assigned}
        if mine:
            try:
                await consumer.commit(mine)
                self._committed.offsets.update(mine)
            except (CommitFailedError, IllegalStateError, KafkaError) as exc:
                CONSUMER_COMMIT_FAILURES.labels(self.service, self.name).inc()
                log.warning("offset commit refused (rebalance); the records will come again", consumer=self.name,
                            error=repr(exc))
        lag = 0
        for tp, offset in offsets.items():
            high = consumer.highwater(tp) if tp in assigned else None
            lag += max(0, (high or offset) - offset)
        CONSUMER_LAG.labels(self.service, self.name).set(lag)


__all__ = [
    "BatchProcessor", "BatchSizer", "BrokerUnavailable", "ConsumerConfig", "DeadLetters", "EventConsumer", "Partition",
    "PreparingProcessor",
    "TopicPartition", "create_producer", "ensure_topics", "start_producer",
]
