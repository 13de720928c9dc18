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
