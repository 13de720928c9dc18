"""The risk service: the faust stream worker as a real process, the API in-process, one database.
Scores from payment behaviour, idempotent on redelivery, dead-lettering, tenant scoping."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from aiokafka.partitioner import murmur2
from fastapi import FastAPI

from services.risk.bootstrap import build
from services.risk.settings import RiskSettings
from shared.clock import ManualClock
from shared.contract import Envelope, InvoiceIssued, InvoicePaid, Topics, new_envelope, partition_key
from shared.kafka import start_producer
from tahsilat.embedded import stop_process
from tahsilat.streams import read_events, read_topic
from tests.support import FAST_KAFKA, api_key, client, running, wait_for

pytestmark = pytest.mark.integration

TENANT = "t1"
PARTITIONS = 2
REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 3, 10, 10, 0, tzinfo=timezone.utc)


def partition_of(customer_id: str, tenant_id: str = TENANT) -> int:
    """The partition aiokafka's default partitioner picks for this customer's key."""
    return (murmur2(partition_key(tenant_id, customer_id).encode()) & 0x7FFFFFFF) % PARTITIONS


def customer_on(partition: int, prefix: str) -> str:
    """A customer id whose events land on `partition`."""
    return next(f"{prefix}-{i}" for i in range(1000) if partition_of(f"{prefix}-{i}") == partition)


def issued(customer_id: str, invoice_id: str) -> Envelope:
    payload = InvoiceIssued(
        customer_id=customer_id, invoice_id=invoice_id, billing_source="erp", external_id=f"ext-{invoice_id}",
        number=f"INV-{invoice_id}", currency="TRY", amount_minor=100_000, issue_date=date(2026, 1, 15),
        due_date=date(2026, 2, 14),
    )
    return new_envelope(payload, source="invoicing", tenant_id=TENANT, subject=invoice_id, time=NOW)


def paid(customer_id: str, invoice_id: str, days_late: int) -> Envelope:
    due = date(2026, 2, 14)
    payload = InvoicePaid(
        customer_id=customer_id, invoice_id=invoice_id, currency="TRY", amount_minor=100_000, due_date=due,
        paid_at=datetime.combine(due + timedelta(days=days_late), datetime.min.time(), timezone.utc),
        days_late=days_late,
    )
    return new_envelope(payload, source="invoicing", tenant_id=TENANT, subject=invoice_id, time=NOW)


@dataclass
class Risk:
    app: FastAPI
    url: str
    topics: Topics
    producer: Any
    bootstrap: str
    worker: subprocess.Popen

    async def publish(self, env: Envelope) -> int:
        """Publish on the invoicing topic; returns the partition it landed on."""
        meta = await self.producer.send_and_wait(self.topics.invoicing, env.model_dump_json().encode(),
                                                 key=env.key.encode())
        return meta.partition

    async def behaviour(self, customer_id: str) -> dict | None:
        """The customer's invoices as risk folded them, and how many assessments moved."""
        self.check_worker()
        pool = self.app.state.pool
        invoices = [dict(r) for r in await pool.fetch(
            "SELECT invoice_id, status, open_minor, days_late FROM risk_invoices WHERE tenant_id = $1"
            " AND customer_id = $2 ORDER BY invoice_id", TENANT, customer_id)]
        moves = await pool.fetchval("SELECT count(*) FROM risk_assessments WHERE tenant_id = $1 AND customer_id = $2",
                                    TENANT, customer_id)
        return {"invoices": invoices, "assessments": moves} if invoices else None

    async def assessed(self, customer_id: str) -> list[Envelope]:
        self.check_worker()
        return [e for e in await read_events(self.bootstrap, self.topics.risk)
                if e.type == "RiskAssessed" and e.data["customer_id"] == customer_id]

    def check_worker(self) -> None:
        if self.worker.poll() is not None:
            raise AssertionError(f"the stream worker exited with {self.worker.returncode}")


@pytest.fixture
async def risk(database: str, kafka_bootstrap: str, topic_prefix: str, tmp_path: Path) -> AsyncIterator[Risk]:
    settings = RiskSettings(database_url=database, kafka_bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix,
                            kafka_partitions=PARTITIONS, poll_interval_seconds=0.1, **FAST_KAFKA)
    app = build(settings, ManualClock(NOW))
    async with running(app) as url:  # migrates the database and creates the topics first
        env = {
            **os.environ,
            "DATABASE_URL": database, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "TOPIC_PREFIX": topic_prefix,
            "KAFKA_PARTITIONS": str(PARTITIONS), "KAFKA_SESSION_TIMEOUT_MS": "2000",
            "KAFKA_HEARTBEAT_INTERVAL_MS": "500", "STREAM_DATA_DIR": str(tmp_path / "stream"),
            "LOG_FORMAT": "console",
        }
        log_path = tmp_path / "stream-worker.log"
        with log_path.open("wb") as log:
            worker = subprocess.Popen([sys.executable, "-m", "services.risk", "stream"], env=env, cwd=REPO,
                                      stdout=log, stderr=subprocess.STDOUT)
        producer = await start_producer(kafka_bootstrap)
        try:
            yield Risk(app, url, Topics(topic_prefix), producer, kafka_bootstrap, worker)
        except BaseException:
            print(log_path.read_text(errors="replace")[-6000:])  # shown by pytest on failure
            raise
        finally:
            await producer.stop()
            await asyncio.to_thread(stop_process, worker)


async def test_scores_payment_behaviour_idempotently_and_dead_letters_garbage(risk: Risk):
    c1_issued, c2_issued, c1_paid = issued("c1", "i-1"), issued("c2", "i-2"), paid("c1", "i-1", days_late=12)
    used = {await risk.publish(e) for e in (c1_issued, c2_issued, c1_paid)}

    async def c1_scored() -> dict | None:
        async with client(risk.url, collector) as api:
            response = await api.get("/v1/customers/c1/risk")
        if response.status_code != 200:
            return None
        factors = {f["name"]: f for f in response.json()["factors"]}
        return response.json() if factors.get("late_share", {}).get("value") == 1.0 else None

    collector = await api_key(risk.app, TENANT, "collector")
    body = await wait_for(c1_scored, timeout=25, message="c1's risk with late_share 1.0")
    factors = {f["name"]: f for f in body["factors"]}
    # one invoice settled, 12 days late: late share 1.0 -> 18 points; 12 days beyond terms -> 12
    assert factors["late_share"]["points"] == 18 and factors["late_share"]["explanation"] == (
        "1 of 1 invoices settled in the last year were paid late")
    assert factors["days_beyond_terms"]["value"] == 12.0 and factors["days_beyond_terms"]["points"] == 12
    assert factors["recent_very_late"]["points"] == 0
    assert (body["score"], body["grade"], body["segment"]) == (30, "B", "medium")
    async with client(risk.url, collector) as api:
        turkish = (await api.get("/v1/customers/c1/risk", params={"language": "tr"})).json()
    assert {f["name"]: f["explanation"] for f in turkish["factors"]}["late_share"] == (
        "Son bir yılda kapanan 1 faturanın 1 tanesi geç ödendi")

    # Issued on 10 March, due 14 February: 24 days overdue at once (24 days -> 8 points, 24 days
    # beyond terms -> 20, all of it overdue -> 12: 40, grade C); paid 12 days late: 30, grade B
    c1 = await wait_for(lambda: _assessed_times(risk, "c1", 2), message="two RiskAssessed for c1")
    c2 = await wait_for(lambda: risk.assessed("c2"), message="RiskAssessed for c2")
    assert [(e.data["score"], e.data["grade"], e.data["previous_grade"]) for e in c1] == [(40, "C", None),
                                                                                          (30, "B", "C")]
    assert [(e.data["score"], e.data["grade"]) for e in c2] == [(40, "C")]
    assert c1[-1].causation_id == str(c1_paid.id) and c1[-1].correlation_id == c1_paid.correlation_id
    before = {c: await risk.behaviour(c) for c in ("c1", "c2")}
    assert before["c1"] == {"invoices": [{"invoice_id": "i-1", "status": "paid", "open_minor": 0, "days_late": 12}],
                            "assessments": 2}
    assert before["c2"]["invoices"][0]["status"] == "open" and before["c2"]["assessments"] == 1

    # Redeliver the same envelopes. Then one sentinel per partition they are on (order is per
    # partition only): once the sentinels are counted, the redelivered records were consumed.
    for env in (c1_issued, c2_issued, c1_paid):
        await risk.publish(env)
    sentinels = [customer_on(p, "sentinel") for p in sorted(used)]
    for s in sentinels:
        await risk.publish(issued(s, f"i-{s}"))
    for s in sentinels:
        await wait_for(lambda: risk.behaviour(s), message=f"sentinel {s} counted")
    assert {c: await risk.behaviour(c) for c in ("c1", "c2")} == before
    assert len(await risk.assessed("c1")) == 2 and len(await risk.assessed("c2")) == 1

    # A record that is not an envelope goes to the dead-letter topic; the worker keeps going.
    await risk.producer.send_and_wait(risk.topics.invoicing, b"not json", key=partition_key(TENANT, "c5").encode())
    await risk.publish(issued("c5", "i-5"))  # same key, same partition: after the garbage
    assert await wait_for(lambda: risk.behaviour("c5"), message="c5 counted after the garbage record")

    async def dead_lettered() -> list[dict]:
        return [h for env, h in await read_topic(risk.bootstrap, risk.topics.dead_letter) if env is None]

    [headers] = await wait_for(dead_lettered, message="the garbage record on the dead-letter topic")
    assert headers["dlq_reason"].startswith("unreadable envelope")
    assert headers["dlq_original_topic"] == risk.topics.invoicing
    assert headers["dlq_consumer"] == "risk.behaviour"
    risk.check_worker()


async def test_risk_api_answers_404_for_unknown_customers_and_other_tenants(risk: Risk):
    await risk.publish(issued("c1", "i-1"))
    collector = await api_key(risk.app, TENANT, "collector")
    other_tenant = await api_key(risk.app, "t2", "collector")
    async with client(risk.url, collector) as api:

        async def c1_scored() -> bool:
            risk.check_worker()
            return (await api.get("/v1/customers/c1/risk")).status_code == 200

        await wait_for(c1_scored, timeout=25, message="c1 assessed")
        assert (await api.get(f"/v1/customers/unknown-{uuid.uuid4().hex[:6]}/risk")).status_code == 404
    async with client(risk.url, other_tenant) as t2:
        response = await t2.get("/v1/customers/c1/risk")
        assert response.status_code == 404
    async with client(risk.url, "thk_000000000000_nope") as bad:
        assert (await bad.get("/v1/customers/c1/risk")).status_code == 401



async def _assessed_times(risk: Risk, customer_id: str, n: int) -> list[Envelope] | None:
    events = await risk.assessed(customer_id)
    return events if len(events) >= n else None
