"""Billing sources publishing to ar.ingest.v1: same validation and outcome as the HTTP API;
what cannot be taken goes to the dead-letter topic with the reason, and the consumer carries on."""
from __future__ import annotations

import json
import re
import time
from datetime import datetime, timezone

import pytest

from services.invoicing.bootstrap import build
from services.invoicing.settings import InvoicingSettings
from shared.clock import ManualClock
from shared.contract import Topics
from shared.contract.signing import sign
from shared.kafka import start_producer
from tahsilat.streams import read_topic
from tests.support import FAST_KAFKA, api_key, client, running, wait_for

pytestmark = pytest.mark.integration


def record(kind: str, body: dict, source: str = "erp", tenant: str = "t1") -> bytes:
    return json.dumps({"tenant_id": tenant, "billing_source": source, "kind": kind, "record": body}).encode()


async def register(url: str, admin_key: str, name: str = "erp") -> dict:
    """Register `name` (invoices and payments); its ingest secret."""
    async with client(url, admin_key) as admin:
        r = await admin.post("/v1/billing-sources", json={"name": name, "default_currency": "EUR",
                                                         "records": ["invoices", "payments"]})
        assert r.status_code == 201, r.text
        return r.json()["ingest_secret"]


async def send(producer, topic: str, value: bytes, secret: dict, key: bytes = b"t1:C1", **sign_kw) -> None:
    await producer.send_and_wait(topic, value, key=key, headers=sign(value, secret["secret_id"], secret["secret"],
                                                                     **sign_kw))


def invoice(external_id: str, **over) -> dict:
    return {"external_id": external_id, "customer_id": "C1", "amount_minor": 10_000, "issue_date": "2026-02-01",
            "due_date": "2026-03-03"} | over


async def test_ingest_topic_records_are_applied_and_bad_ones_dead_lettered(database, kafka_bootstrap, topic_prefix):
    settings = InvoicingSettings(database_url=database, kafka_bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix,
                                 kafka_partitions=2, poll_interval_seconds=0.1, **FAST_KAFKA)
    app = build(settings, ManualClock(datetime(2026, 3, 1, tzinfo=timezone.utc)))
    topics = Topics(topic_prefix)
    producer = await start_producer(kafka_bootstrap)
    try:
        async with running(app) as url:
            secret = await register(url, await api_key(app, "t1", "admin"))
            sends = [
                record("invoice", invoice("A")),
                b"{not json",
                record("invoice", invoice("B", currency="XYZ")),
                record("invoice", invoice("C"), source="unknown-erp"),
                record("invoice", invoice("A")),  # again: unchanged, not an error
                record("invoice", invoice("A", amount_minor=9_000)),  # changed: adjusted
                record("payment", {"external_id": "P1", "customer_id": "C1", "currency": "EUR", "amount_minor": 9_000}),
                record("payment", {"external_id": "P2", "customer_id": "C1", "currency": "EUR"}),
                record("invoice", invoice("D")),
            ]
            for n, value in enumerate(sends):
                # each send signed anew (another second): the same signed bytes twice would be a replay
                await send(producer, topics.ingest, value, secret, timestamp=int(time.time()) - n)

            pool = app.state.pool

            async def all_applied():
                return await pool.fetchval("SELECT count(*) FROM invoices WHERE external_id = 'D'") == 1

            await wait_for(all_applied, message="the last record applied")
            rows = {r["external_id"]: r for r in await pool.fetch("SELECT * FROM invoices")}
            assert set(rows) == {"A", "D"}
            assert (rows["A"]["amount_minor"], rows["A"]["status"]) == (9_000, "paid")

            dead = await wait_for(lambda: _at_least(read_topic(kafka_bootstrap, topics.dead_letter), 4),
                                  message="four dead letters")
            # Records refused before they reach a use case come first.
            reasons = [h["dlq_reason"] for _, h in dead]
            assert reasons[0].startswith("unreadable ingest record")
            assert reasons[1] == ("cross-tenant: the record names tenant 't1', source 'unknown-erp'; its signature is"
                                  " of 't1', 'erp'")
            assert reasons[2] == "record.currency: unknown ISO 4217 currency code 'XYZ'"
            assert reasons[3] == "record.amount_minor: Field required"
            assert all(h["dlq_consumer"] == "invoicing.ingest" for _, h in dead)
    finally:
        await producer.stop()


async def _at_least(coro, n):
    items = await coro
    return items if len(items) >= n else None


CONSUMER = {"session_timeout_ms": 2000, "heartbeat_interval_ms": 500, "fetch_max_wait_ms": 20}


def _service(database, kafka_bootstrap, topic_prefix):
    settings = InvoicingSettings(database_url=database, kafka_bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix,
                                 kafka_partitions=2, poll_interval_seconds=0.1, **FAST_KAFKA)
    return build(settings, ManualClock(datetime(2026, 3, 1, tzinfo=timezone.utc)))


async def test_hostile_records_are_dead_lettered_with_the_field_and_ingest_carries_on(
        database, kafka_bootstrap, topic_prefix):
    topics = Topics(topic_prefix)
    app = _service(database, kafka_bootstrap, topic_prefix)
    producer = await start_producer(kafka_bootstrap)
    try:
        async with running(app) as url:
            secret = await register(url, await api_key(app, "t1", "admin"))
            for value in [
                record("invoice", invoice("A", customer={"id": "C1", "name": "Ac\x00me"}, customer_id=None)),
                record("invoice", invoice("B", number="N\u202e")),
                record("invoice", invoice("C", due_date="9999-12-31")),
                record("payment", {"external_id": "P1", "customer_id": "C1", "currency": "EUR", "amount_minor": 1,
                                   "received_at": "0001-01-01T00:00:00+05:00"}),
                record("invoice", invoice("D")),
            ]:
                await send(producer, topics.ingest, value, secret)
            pool = app.state.pool
            await wait_for(lambda: _invoice_count(pool, "D"), message="the good record after the hostile ones")
            dead = await wait_for(lambda: _at_least(read_topic(kafka_bootstrap, topics.dead_letter), 4),
                                  message="four dead letters")
            assert [h["dlq_reason"] for _, h in dead] == [
                "record.customer.name: must not contain a control character U+0000 at position 2",
                "record.number: must not contain a bidirectional control character U+202E at position 1",
                "record.due_date: must be between 1900-01-01 and 2999-12-31",
                "record.received_at: must be between 1900-01-01 and 2999-12-31",
            ]
            assert not await app.state.host.liveness()  # no consumer died on the way
    finally:
        await producer.stop()


async def test_a_redelivered_older_version_does_not_adjust_the_invoice_back(database, kafka_bootstrap, topic_prefix):
    from aiokafka import AIOKafkaConsumer

    topics = Topics(topic_prefix)
    producer = await start_producer(kafka_bootstrap)
    try:
        app = _service(database, kafka_bootstrap, topic_prefix)
        async with running(app) as url:
            secret = await register(url, await api_key(app, "t1", "admin"))
            for amount in (10_000, 9_000):
                await send(producer, topics.ingest, record("invoice", invoice("A", amount_minor=amount)), secret)
            await wait_for(lambda: _amount(app.state.pool, "A", 9_000), message="the second version applied")
        # Everything comes again (the committed offsets are lost, as after a group's offsets expire).
        group = f"{topic_prefix}invoicing.ingest"
        rewind = AIOKafkaConsumer(topics.ingest, bootstrap_servers=kafka_bootstrap, group_id=group,
                                  enable_auto_commit=False, **{k: v for k, v in CONSUMER.items()})
        await rewind.start()
        try:
            while not rewind.assignment():
                await rewind.getmany(timeout_ms=200)
            await rewind.commit({tp: 0 for tp in rewind.assignment()})
        finally:
            await rewind.stop()
        await send(producer, topics.ingest, record("invoice", invoice("Z")), secret)
        app = _service(database, kafka_bootstrap, topic_prefix)
        async with running(app):
            pool = app.state.pool
            await wait_for(lambda: _invoice_count(pool, "Z"), message="the sentinel after the redelivery")
            assert await pool.fetchval("SELECT amount_minor FROM invoices WHERE external_id = 'A'") == 9_000
            assert await pool.fetchval("SELECT version FROM invoices WHERE external_id = 'A'") == 2
            assert await pool.fetchval(
                "SELECT count(*) FROM ledger_entries WHERE kind = 'adjustment'") == 1
    finally:
        await producer.stop()


async def _invoice_count(pool, external_id):
    return await pool.fetchval("SELECT count(*) FROM invoices WHERE external_id = $1", external_id) == 1


async def _amount(pool, external_id, amount):
    return await pool.fetchval("SELECT amount_minor FROM invoices WHERE external_id = $1", external_id) == amount


async def test_unsigned_forged_stale_replayed_and_cross_tenant_records_are_dead_lettered_and_write_nothing(
        database, kafka_bootstrap, topic_prefix):
    """Only a live secret of the source makes a record count; the tenant and source are the
    secret's. Everything else goes to the dead-letter topic with the reason."""

    topics = Topics(topic_prefix)
    app = _service(database, kafka_bootstrap, topic_prefix)
    producer = await start_producer(kafka_bootstrap)
    try:
        async with running(app) as url:
            t1_admin = await api_key(app, "t1", "admin")
            erp = await register(url, t1_admin)
            other = await register(url, await api_key(app, "t2", "admin"), "erp")  # tenant t2's erp
            pool = app.state.pool
            good = record("invoice", invoice("OK-1"))
            await producer.send_and_wait(topics.ingest, record("invoice", invoice("U-1")), key=b"t1:C1")  # unsigned
            forged = dict(erp, secret="guessed")
            await send(producer, topics.ingest, record("invoice", invoice("F-1")), forged)
            tampered = sign(record("invoice", invoice("T-1")), erp["secret_id"], erp["secret"])
            await producer.send_and_wait(topics.ingest, record("invoice", invoice("T-1", amount_minor=1)),
                                         key=b"t1:C1", headers=tampered)
            await send(producer, topics.ingest, record("invoice", invoice("S-1")), erp,
                       timestamp=int(time.time()) - 3600)
            # tenant t2's secret naming tenant t1 in the body: the signer decides, and it differs
            await send(producer, topics.ingest, record("invoice", invoice("X-1")), other)
            headers = sign(good, erp["secret_id"], erp["secret"])
            await producer.send_and_wait(topics.ingest, good, key=b"t1:C1", headers=headers)
            await producer.send_and_wait(topics.ingest, good, key=b"t1:C1", headers=headers)  # replayed as is
            dead = await wait_for(lambda: _at_least(read_topic(kafka_bootstrap, topics.dead_letter), 6),
                                  message="six dead letters")
            reasons = [h["dlq_reason"] for _, h in dead]
            assert reasons[0].startswith("unsigned: no tahsilat-signing-key")
            assert reasons[1] == reasons[2] == "forged: the signature does not match the record"
            # signed an hour before it was sent; consumed a few seconds later on a busy machine
            stale = re.fullmatch(r"stale or replayed: signed (\d+) s ago, tolerance 300 s", reasons[3])
            assert stale and 3600 <= int(stale.group(1)) <= 3660, reasons[3]
            assert reasons[4] == ("cross-tenant: the record names tenant 't1', source 'erp'; its signature is of"
                                  " 't2', 'erp'")
            assert reasons[5] == "replayed: the same signed record was taken before"
            await wait_for(lambda: _invoice_count(pool, "OK-1"), message="the signed record applied")
            assert await pool.fetchval("SELECT array_agg(external_id) FROM invoices") == ["OK-1"]

            # Rotation: the new secret works at once; the old one is retired (grace 0) and refused.
            async with client(url, t1_admin) as admin:
                r = await admin.post("/v1/billing-sources/erp/ingest-secrets", json={"retire_others_after_seconds": 0})
                assert r.status_code == 201
                rotated = r.json()
                listed = (await admin.get("/v1/billing-sources/erp/ingest-secrets")).json()
                assert [s["secret_id"] for s in listed] == [erp["secret_id"], rotated["secret_id"]]
                assert "secret" not in listed[0] and listed[0]["retired_at"] is not None
            await send(producer, topics.ingest, record("invoice", invoice("OLD-1")), erp)
            await send(producer, topics.ingest, record("invoice", invoice("NEW-1")), rotated)
            await wait_for(lambda: _invoice_count(pool, "NEW-1"), message="the record signed with the new secret")
            dead = await wait_for(lambda: _at_least(read_topic(kafka_bootstrap, topics.dead_letter), 7),
                                  message="the old secret's record dead-lettered")
            assert dead[6][1]["dlq_reason"] == f"forged: no live ingest secret {erp['secret_id']!r}"
            assert not await _invoice_count(pool, "OLD-1")
    finally:
        await producer.stop()
