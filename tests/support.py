"""Helpers for tests: run a service in-process on a free port, wait on conditions, read topics."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
from fastapi import FastAPI

from shared.auth import new_key, store_api_key
from shared.host import serve_in_process

T = TypeVar("T")

FAST_KAFKA = {"kafka_session_timeout_ms": 2000, "kafka_heartbeat_interval_ms": 500, "kafka_fetch_max_wait_ms": 20}


def docker_available() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:  # noqa: BLE001 - no engine, no socket, no permission: all mean "no"
        return False


async def wait_for(condition: Callable[[], Awaitable[T]], timeout: float = 20.0, interval: float = 0.1,
                   message: str = "condition") -> T:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await condition()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {message} (last value: {last!r})")


def running(app: FastAPI):
    """Serve `app` (lifespan included) on a free port; yields its base URL."""
    return serve_in_process(app)


async def api_key(app: FastAPI, tenant_id: str, role: str, source_name: str | None = None) -> str:
    key_id, secret, token = new_key()
    await store_api_key(app.state.pool, key_id=key_id, secret=secret, tenant_id=tenant_id, role=role,
                        source_name=source_name)
    if source_name and await app.state.pool.fetchval("SELECT to_regclass('billing_sources') IS NOT NULL"):
        # invoicing: a test's source may record everything unless the test registers it itself
        await app.state.pool.execute(
            "INSERT INTO billing_sources (tenant_id, name, records_invoices, records_payments)"
            " VALUES ($1, $2, true, true) ON CONFLICT DO NOTHING", tenant_id, source_name)
    return token


def client(base_url: str, token: str | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base_url, headers={"X-API-Key": token} if token else {}, timeout=30)


def module_platform(kafka_bootstrap: str, pg_server: str, tmp_path_factory, name: str, start, partitions: int = 3):
    """The whole platform as processes for one e2e module (its own topics and databases, the
    movable clock at `start`), stopped and its databases dropped afterwards: yields (platform, clock)."""
    import asyncio
    import uuid

    from shared.clock import FileClock
    from tahsilat.platform import Platform, PlatformOptions

    base = tmp_path_factory.mktemp(name)
    clock_file = base / "clock.json"
    FileClock(clock_file).set(start)
    run = uuid.uuid4().hex[:8]
    p = Platform(PlatformOptions(base_dir=base, topic_prefix=f"{name}{run}.", db_prefix=f"{name}_{run}", fresh=True,
                                 free_ports=True, clock_file=clock_file, partitions=partitions, poll_interval=0.2,
                                 kafka_bootstrap=kafka_bootstrap, database_url=pg_server))
    p.start()
    try:
        yield p, FileClock(clock_file)
    finally:
        p.stop()
        asyncio.run(p.drop_databases())
