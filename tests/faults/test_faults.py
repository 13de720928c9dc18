"""Fault injection: the platform as separate processes under load (invoices, payments, due steps
and notices flowing), one kind of fault per test, then the invariants of harness.check.

    make faults                 # the long profile: three kills per service, a 30 s broker freeze
    pytest tests/faults         # the short profile (CI): one kill per service, a 10 s freeze
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import httpx
import pytest

from shared.clock import FileClock
from shared.db import database_name
from tahsilat.platform import SERVICES, Platform
from tests.faults.harness import LONG, TENANT, Load, check, settle, start_platform
from tests.support import wait_for

pytestmark = [pytest.mark.faults, pytest.mark.timeout(900)]

FREEZE_SECONDS = 30 if LONG else 10
KILL_ROUNDS = 3 if LONG else 1


@dataclass
class Run:
    platform: Platform
    clock: FileClock
    load: Load
    faults: int = 0


@contextlib.asynccontextmanager
async def platform_under_load(tmp_path, embedded_pg, prefix, scenario: str, record) -> AsyncIterator[Run]:
    """The platform with the load flowing; the test injects its faults (counting them in
    `run.faults`); afterwards the load stops, the platform settles and the invariants are checked."""
    platform, clock = await asyncio.to_thread(start_platform, tmp_path, embedded_pg.url, prefix)
    load = Load(platform, clock)
    stop = asyncio.Event()
    task = None
    try:
        await load.prepare()
        task = asyncio.create_task(load.run(stop))
        await wait_for(lambda: _at_least(load, 40), timeout=60, message="the load flowing")
        run = Run(platform, clock, load)
        yield run
        stop.set()
        await task
        await settle(platform, clock)
        findings = await check(platform, scenario)
        findings.faults = run.faults
        record(findings)
        assert findings.ok, findings.problems
    finally:
        stop.set()
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        await asyncio.to_thread(platform.stop)
        with contextlib.suppress(Exception):
            await platform.drop_databases()


async def _at_least(load: Load, n: int) -> bool:
    return len(load.sent_invoices) >= n


async def more_load(load: Load, n: int = 20, timeout: float = 90) -> None:
    """Wait until `n` more invoices went through (the platform works again)."""
    target = len(load.sent_invoices) + n
    await wait_for(lambda: _at_least(load, target), timeout=timeout, message=f"{n} more invoices taken")


async def ready(platform, service: str) -> bool:
    try:
        async with httpx.AsyncClient(timeout=2) as http:
            return (await http.get(f"{platform.url(service)}/health/ready")).status_code == 200
    except httpx.HTTPError:
        return False


async def restarted(platform, name: str, before: int) -> bool:
    service = "risk" if name == "risk-stream" else name
    return platform.restarts.get(name, 0) > before and platform.pid(name) is not None and await ready(platform, service)


async def test_kill_9_each_service_in_turn(tmp_path, embedded_pg, prefix, record):
    async with platform_under_load(tmp_path, embedded_pg, prefix, "kill -9 each service", record) as run:
        platform = run.platform
        for _ in range(KILL_ROUNDS):
            for name in ("invoicing", "dunning", "risk", "risk-stream", "notifier"):
                before = platform.restarts.get(name, 0)
                os.kill(platform.pid(name), signal.SIGKILL)
                run.faults += 1
                await wait_for(lambda: restarted(platform, name, before), timeout=120, message=f"{name} back")
                await more_load(run.load)


async def test_broker_frozen(tmp_path, embedded_pg, prefix, record):
    async with platform_under_load(tmp_path, embedded_pg, prefix, f"broker frozen {FREEZE_SECONDS} s", record) as run:
        platform, load = run.platform, run.load
        broker = platform.broker.proc.pid
        os.kill(broker, signal.SIGSTOP)
        try:
            await asyncio.sleep(FREEZE_SECONDS)  # the fault itself: the broker answers nothing meanwhile
        finally:
            os.kill(broker, signal.SIGCONT)
        run.faults += 1
        await more_load(load, timeout=180)
        for service in SERVICES:
            await wait_for(lambda: ready(platform, service), timeout=120, message=f"{service} ready again")


async def test_database_connections_killed_and_postgresql_restarted(tmp_path, embedded_pg, prefix, record):
    scenario = "database backends killed, PostgreSQL restarted"
    async with platform_under_load(tmp_path, embedded_pg, prefix, scenario, record) as run:
        platform, load = run.platform, run.load
        for _ in range(KILL_ROUNDS):
            for service in SERVICES:
                admin = await asyncpg.connect(embedded_pg.url)
                try:
                    killed = await admin.fetchval(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                        " WHERE datname = $1 AND pid <> pg_backend_pid()",
                        database_name(platform.database_urls[service]))
                finally:
                    await admin.close()
                assert killed > 0
                run.faults += 1
                await more_load(load, n=10)
        await asyncio.to_thread(embedded_pg.restart)
        run.faults += 1
        await more_load(load, timeout=180)


async def test_two_relays_and_two_dunning_workers_with_a_forced_rebalance(tmp_path, embedded_pg, prefix, record):
    scenario = "two relays + two dunning workers, rebalanced"
    async with platform_under_load(tmp_path, embedded_pg, prefix, scenario, record) as run:
        platform, load = run.platform, run.load
        second = platform.add_replica("dunning")  # joins the group: a rebalance; its relay stands by
        await wait_for(lambda: ready(platform, second), timeout=60, message="a second dunning worker")
        await more_load(load, n=40)
        before = platform.restarts.get("dunning", 0)
        os.kill(platform.pid("dunning"), signal.SIGKILL)  # the first one dies: its partitions and the outbox move
        await more_load(load, n=40)
        await wait_for(lambda: restarted(platform, "dunning", before), timeout=120, message="dunning back")
        await asyncio.to_thread(platform.stop_process, second)  # and the second one leaves: another rebalance
        await more_load(load, n=40)
        run.faults = 3


async def test_a_consumer_stopped_inside_its_transaction_applies_the_event_once_after_restart(
        tmp_path, embedded_pg, prefix, record):
    scenario = "consumer killed inside its transaction"
    async with platform_under_load(tmp_path, embedded_pg, prefix, scenario, record) as run:
        platform, load = run.platform, run.load
        dunning_db = platform.database_urls["dunning"]
        holder = await asyncpg.connect(dunning_db)
        tx = holder.transaction()
        await tx.start()
        # An uncommitted row for a new customer: dunning's upsert of that customer waits on it,
        # inside the transaction of its batch (inbox rows claimed, changes half made).
        await holder.execute("INSERT INTO dunning_customers (tenant_id, customer_id) VALUES ($1, 'CX')", TENANT)
        async with httpx.AsyncClient(base_url=platform.url("invoicing"), headers={"X-API-Key": load.key}) as http:
            body = load._invoice(99_999)
            body["customer"] = {**body["customer"], "id": "CX", "timezone": "Asia/Tokyo"}
            assert (await http.post("/v1/invoices", json=body)).status_code == 201
        load.sent_invoices[body["external_id"]] = body
        await wait_for(lambda: _waiting_on_lock(holder, dunning_db), timeout=60,
                       message="dunning's handler waiting inside its transaction")
        before = platform.restarts.get("dunning", 0)
        os.kill(platform.pid("dunning"), signal.SIGKILL)
        started = time.monotonic()
        # The killed process's backend still waits; once it has the row it finds no client to commit.
        await tx.rollback()
        await holder.close()
        await wait_for(lambda: restarted(platform, "dunning", before), timeout=120, message="dunning back")
        conn = await asyncpg.connect(dunning_db)
        try:
            # Wait for the timezone, not the row: RiskAssessed (another topic, so another order) may
            # create the row first with the default timezone.
            assert await wait_for(lambda: conn.fetchval(
                "SELECT timezone = 'Asia/Tokyo' FROM dunning_customers WHERE tenant_id = $1 AND customer_id = 'CX'",
                TENANT), timeout=120, message="the customer applied after the restart")
            assert await wait_for(lambda: conn.fetchval("SELECT count(*) FROM cases WHERE customer_id = 'CX'"),
                                  timeout=60, message="its invoice's case") == 1
        finally:
            await conn.close()
        assert time.monotonic() - started < 120
        run.faults = 1


async def _waiting_on_lock(holder, url: str) -> bool:
    return bool(await holder.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'"
        " AND pid <> pg_backend_pid()", database_name(url)))

