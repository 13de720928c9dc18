"""Reading a topic from the start to its current end, as an analytics consumer would
(no consumer group; the end is the partition's high watermark, which this broker reports right)."""
from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from shared.contract import Envelope


async def read_records(bootstrap: str, topic: str, timeout: float = 30.0) -> list[ConsumerRecord]:
    """Every record of `topic`, partition by partition in offset order."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=20)
    await consumer.start()
    out: list[ConsumerRecord] = []
    try:
        partitions = consumer.partitions_for_topic(topic)
        deadline = time.monotonic() + timeout
        while not partitions:
            if time.monotonic() > deadline:
                return out
            await consumer._client.force_metadata_update()  # noqa: SLF001 - aiokafka has no public call for this
            partitions = consumer.partitions_for_topic(topic)
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        while True:
            batches = await consumer.getmany(*tps, timeout_ms=200, max_records=5000)
            for records in batches.values():
                out.extend(records)
            done = True
            for tp in tps:
                hw = consumer.highwater(tp)
                if hw is None or await consumer.position(tp) < hw:
                    done = False
            if done:
                out.sort(key=lambda r: (r.partition, r.offset))
                return out
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {topic} to its end within {timeout} s")
            await asyncio.sleep(0)
    finally:
        await consumer.stop()


async def read_topic(bootstrap: str, topic: str, timeout: float = 30.0) -> list[tuple[Envelope | None, dict]]:
    """All records of `topic`: (envelope or None if unreadable, headers)."""
    out: list[tuple[Envelope | None, dict]] = []
    for r in await read_records(bootstrap, topic, timeout):
        try:
            env = Envelope.model_validate_json(r.value or b"")
        except ValueError:
            env = None
        out.append((env, {k: v.decode(errors="replace") for k, v in (r.headers or [])}))
    return out


async def read_events(bootstrap: str, topic: str, timeout: float = 30.0) -> list[Envelope]:
    return [env for env, _ in await read_topic(bootstrap, topic, timeout) if env is not None]
