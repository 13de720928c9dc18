"""An analytics consumer that is not Python's aiokafka: librdkafka (confluent-kafka) reads every
topic of a running platform from the beginning, and every record must be a readable envelope of a
known event type, keyed `tenant_id:customer_id`, on the partition the Java client's murmur2
partitioner gives that key, with each key's events in time order (issue #7)."""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone

import httpx
import pytest
from aiokafka.partitioner import murmur2
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from shared.contract import REGISTRY, Envelope
from tahsilat.keys import create_key
from tests.support import module_platform, wait_for

pytestmark = pytest.mark.e2e

START = datetime(2026, 3, 1, 10, 0, tzinfo=timezone.utc)
ENVELOPE_FIELDS = {"id", "type", "version", "source", "time", "tenant_id", "subject", "correlation_id", "data"}
KNOWN_TYPES = {event_type for (event_type, _version), _model in REGISTRY.items()}


@pytest.fixture(scope="module")
def platform(kafka_bootstrap, pg_server, tmp_path_factory):
    yield from module_platform(kafka_bootstrap, pg_server, tmp_path_factory, "an", START, partitions=3)


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def read_from_beginning(bootstrap: str, topics: list[str], timeout: float = 30.0) -> dict[str, list[Record]]:
    """Every record of `topics` as librdkafka reads it: its own consumer group, no commits, every
    partition assigned from the beginning and read to its end.

    The end is where the fetch says the partition ends (partition EOF, from the fetch response's
    high watermark). `get_watermark_offsets(cached=False)` asks ListOffsets, which the embedded
    broker answers short when the last record batch holds several records (it gives that batch's
    base offset + 1), so it only serves as a lower bound."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"analytics-{uuid.uuid4().hex}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "fetch.wait.max.ms": 50,
    })
    try:
        metadata = consumer.list_topics(timeout=10)
        tps = []
        for topic in topics:
            meta = metadata.topics.get(topic)
            assert meta is not None and meta.error is None, f"{topic}: {meta and meta.error}"
            tps += [TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(meta.partitions)]
        listed_end = {(tp.topic, tp.partition): consumer.get_watermark_offsets(tp, timeout=10, cached=False)[1]
                      for tp in tps}
        consumer.assign(tps)
        out: dict[str, list[Record]] = {t: [] for t in topics}
        at_end: dict[tuple[str, int], int] = {}
        deadline = time.monotonic() + timeout
        while not (len(at_end) == len(tps) and all(at_end[tp] >= listed_end[tp] for tp in at_end)):
            if time.monotonic() > deadline:
                missing = sorted(tp for tp in listed_end if at_end.get(tp, -1) < listed_end[tp])
                raise TimeoutError(f"not at the end of {missing} after {timeout} s")
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            tp = (msg.topic(), msg.partition())
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    at_end[tp] = msg.offset()
                    continue
                raise KafkaException(msg.error())
            at_end.pop(tp, None)  # a record after the end: the end has moved
            out[msg.topic()].append(Record(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value()))
        for tp, end in at_end.items():  # the cached watermark is the last fetch's: at or past where we stopped
            assert consumer.get_watermark_offsets(TopicPartition(*tp), cached=True)[1] >= end, tp
        return out
    finally:
        consumer.close()


def java_partition(key: bytes, partitions: int) -> int:
    """The partition the Java client (and aiokafka, and the outbox relay) choose for `key`."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def customer(cid: str, language: str, tz: str) -> dict:
    return {"id": cid, "name": f"Customer {cid}", "language": language, "timezone": tz,
            "email": f"{cid.lower()}@analytics.example"}


async def test_a_librdkafka_consumer_reads_every_topic_from_the_beginning(platform):
    p, clock = platform
    source = {"X-API-Key": await create_key(p.database_urls, tenant_id="acme", role="billing-source",
                                            source_name="erp", records=("invoices", "payments"))}
    inv = p.url("invoicing")
    customers = [customer("AN1", "en", "Europe/London"), customer("AN2", "tr", "Europe/Istanbul")]
    async with httpx.AsyncClient(timeout=30) as http:
        for n, (c, amount) in enumerate([(customers[0], 10_000), (customers[0], 25_000), (customers[1], 40_000)]):
            r = await http.post(f"{inv}/v1/invoices", headers=source, json={
                "external_id": f"AN-{n}", "customer": c, "currency": "EUR", "amount_minor": amount,
                "issue_date": "2026-02-10", "due_date": "2026-03-10"})
            assert r.status_code == 201, r.text
        r = await http.post(f"{inv}/v1/payments", headers=source, json={
            "external_id": "AN-PAY-1", "customer_id": "AN1", "currency": "EUR", "amount_minor": 10_000})
        assert r.status_code == 201, r.text
        # Three days before the due date: the pre-due step fires and its email goes out.
        clock.set(datetime(2026, 3, 7, 10, 0, tzinfo=timezone.utc))

        topics = p.topics
        expected = {topics.invoicing: {"CustomerUpserted", "InvoiceIssued", "PaymentReceived", "InvoicePaid"},
                    topics.dunning: {"NotificationRequested", "DunningStepExecuted"},
                    topics.notifier: {"NotificationSent"}}

        async def everything_published():
            read = await asyncio.to_thread(read_from_beginning, p.bootstrap, topics.all())
            seen = {t: {json.loads(r.value).get("type") for r in read[t]} for t in expected}
            sent_to = {json.loads(r.value)["data"]["customer_id"] for r in read[topics.notifier]}
            return read if all(expected[t] <= seen[t] for t in expected) and sent_to >= {"AN1", "AN2"} else None

        read = await wait_for(everything_published, 60, 0.3, "the events on the invoicing, dunning and notifier topics")

    envelope_topics = [topics.invoicing, topics.dunning, topics.risk, topics.notifier]
    by_key: dict[tuple[str, bytes], list[tuple[int, datetime, str]]] = defaultdict(list)
    for topic in envelope_topics:
        for r in read[topic]:
            where = f"{topic}[{r.partition}]@{r.offset}"
            raw = json.loads(r.value)
            assert isinstance(raw, dict) and ENVELOPE_FIELDS <= raw.keys(), f"{where}: {raw}"
            env = Envelope.model_validate(raw)
            assert env.type in KNOWN_TYPES, f"{where}: unknown type {env.type}"
            env.payload()  # the data fits the registered model of its (type, version)
            key = f"{env.tenant_id}:{env.data['customer_id']}".encode()
            assert r.key == key, f"{where}: key {r.key!r}, expected {key!r}"
            assert r.partition == java_partition(r.key, p.options.partitions), f"{where}: key {r.key!r}"
            by_key[(topic, r.key)].append((r.offset, env.time, env.type))
    for (topic, key), events in by_key.items():
        times = [t for _offset, t, _type in sorted(events)]
        assert times == sorted(times), f"{topic} {key!r}: times go back: {sorted(events)}"

    assert {k for (t, k) in by_key if t == topics.invoicing} == {b"acme:AN1", b"acme:AN2"}
    assert read[topics.ingest] == []  # nobody sent through the ingest topic
    assert read[topics.dead_letter] == [], [json.loads(r.value or b"null") for r in read[topics.dead_letter]]
