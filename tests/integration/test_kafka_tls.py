"""Every Kafka client goes over TLS when the settings say so: a service whose broker is reachable
only through TLS starts, publishes and consumes; a plaintext client gets nowhere. The broker is
the embedded one behind a TLS-terminating proxy (it advertises the proxy's port), with a
certificate from a throw-away CA."""
from __future__ import annotations

import asyncio
import contextlib
import ssl
from datetime import datetime, timezone

import pytest
import trustme

from services.invoicing.bootstrap import build
from services.invoicing.settings import InvoicingSettings
from shared.clock import ManualClock
from shared.contract import Topics
from shared.kafka import BrokerUnavailable, start_producer
from shared.kafka_security import KafkaSecurity
from shared.settings import ServiceSettings
from tahsilat.embedded import Broker, free_port
from tests.support import FAST_KAFKA, api_key, client, running, wait_for

pytestmark = pytest.mark.integration


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


@pytest.fixture
async def tls_broker(tmp_path):
    """(bootstrap, CA file, handshakes done): TLS on the advertised port, the broker behind it."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    tls_port = free_port()
    broker = Broker(log_file=tmp_path / "broker.log", advertised_port=tls_port)
    handshakes = []

    async def forward(client_reader, client_writer):
        handshakes.append(client_writer.get_extra_info("ssl_object") is not None)
        broker_reader, broker_writer = await asyncio.open_connection("127.0.0.1", broker.port)
        await asyncio.gather(_pipe(client_reader, broker_writer), _pipe(broker_reader, client_writer))

    server = await asyncio.start_server(forward, "127.0.0.1", tls_port, ssl=server_context)
    await asyncio.to_thread(broker.start)
    try:
        yield f"127.0.0.1:{tls_port}", str(ca_file), handshakes
    finally:
        server.close()
        broker.stop()


async def test_a_service_talks_to_the_broker_only_over_tls(tls_broker, database, topic_prefix):
    bootstrap, ca_file, handshakes = tls_broker
    settings = InvoicingSettings(
        database_url=database, kafka_bootstrap_servers=bootstrap, topic_prefix=topic_prefix, kafka_partitions=1,
        poll_interval_seconds=0.1, kafka_security_protocol="SSL", kafka_ssl_cafile=ca_file, **FAST_KAFKA)
    app = build(settings, ManualClock(datetime(2026, 3, 1, tzinfo=timezone.utc)))
    async with running(app) as url:
        async with client(url, await api_key(app, "t1", "billing-source", "erp")) as erp:
            r = await erp.post("/v1/invoices", json={
                "external_id": "TLS-1", "customer_id": "C1", "amount_minor": 100, "currency": "EUR",
                "issue_date": "2026-02-01", "due_date": "2026-03-03"})
            assert r.status_code == 201, r.text
        # The relay published it over TLS: the outbox empties.
        await wait_for(lambda: _outbox_empty(app.state.pool), message="the outbox relayed over TLS")
        # and the consumers joined their groups over TLS
        await wait_for(lambda: _ready(app), message="every consumer assigned over TLS")
    assert handshakes and all(handshakes)

    # Read it back over TLS; a plaintext client cannot even start.
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(Topics(topic_prefix).invoicing, bootstrap_servers=bootstrap,
                                auto_offset_reset="earliest", **settings.kafka.aiokafka_options())
    await consumer.start()
    try:
        records = await wait_for(lambda: _some(consumer), message="the event read back over TLS")
        assert any(b"TLS-1" in r.value for r in records)
    finally:
        await consumer.stop()
    with pytest.raises(BrokerUnavailable):
        producer = await asyncio.wait_for(start_producer(bootstrap), 20)
        await producer.stop()


async def _ready(app) -> bool:
    return all((await app.state.host.readiness()).values())


async def _outbox_empty(pool) -> bool:
    return await pool.fetchval("SELECT count(*) FROM outbox") == 0


async def _some(consumer):
    batches = await consumer.getmany(timeout_ms=500)
    return [r for rs in batches.values() for r in rs] or None


def test_sasl_settings_reach_every_kind_of_client():
    base = {"service_name": "x", "database_url": "postgresql://h/db", "kafka_bootstrap_servers": "k:9093"}
    with pytest.raises(ValueError, match="KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD are required"):
        ServiceSettings(**base, kafka_security_protocol="SASL_SSL")
    with pytest.raises(ValueError, match="go together"):
        ServiceSettings(**base, kafka_ssl_certfile="/c.pem")
    settings = ServiceSettings(**base, kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="SCRAM-SHA-256",
                               kafka_sasl_username="tahsilat", kafka_sasl_password="s3cret-pw")
    assert "s3cret-pw" not in repr(settings)
    options = settings.kafka.aiokafka_options()
    assert options == {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-256",
                       "sasl_plain_username": "tahsilat", "sasl_plain_password": "s3cret-pw"}
    credentials = settings.kafka.faust_credentials()
    assert (credentials.username, credentials.password, credentials.mechanism.value) == (
        "tahsilat", "s3cret-pw", "SCRAM-SHA-256")
    plain = KafkaSecurity(protocol="SASL_SSL", sasl_mechanism="PLAIN", sasl_username="u", sasl_password="p")
    assert plain.aiokafka_options()["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    assert KafkaSecurity().aiokafka_options() == {"security_protocol": "PLAINTEXT"}
    assert KafkaSecurity().faust_credentials() is None
