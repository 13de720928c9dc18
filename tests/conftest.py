"""Fixtures that start real infrastructure: a Kafka-protocol broker and PostgreSQL.

Where a Docker engine is reachable they use testcontainers (Apache Kafka, PostgreSQL);
otherwise the embedded broker and the local (or embedded) PostgreSQL. KAFKA_BOOTSTRAP_SERVERS
and DATABASE_URL point them at anything else."""
from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from shared.db import drop_database, ensure_database, with_database
from tests.support import docker_available


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory) -> Iterator[str]:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield os.environ["KAFKA_BOOTSTRAP_SERVERS"]
        return
    if docker_available():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as kafka:
            yield kafka.get_bootstrap_server()
        return
    from tahsilat.embedded import Broker

    broker = Broker(log_file=tmp_path_factory.mktemp("broker") / "broker.log")
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory) -> Iterator[str]:
    """URL of a PostgreSQL server on which tests may create databases."""
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"]
        return
    if docker_available():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16-alpine", driver=None) as pg:
            yield pg.get_connection_url()
        return
    from tahsilat.embedded import resolve_postgres

    url, _ = asyncio.run(resolve_postgres(Path(tmp_path_factory.mktemp("pg"))))
    yield url


@pytest.fixture
async def database(pg_server: str) -> AsyncIterator[str]:
    """A fresh, empty database for one test, dropped afterwards."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    await ensure_database(pg_server, name)
    try:
        yield with_database(pg_server, name)
    finally:
        await drop_database(pg_server, name)


@pytest.fixture
def topic_prefix() -> str:
    """Topics of their own per test: tests share one broker but never each other's events."""
    return f"t{uuid.uuid4().hex[:10]}."


def chromium_path() -> str | None:
    """Debian's chromium (what `make install` and CI install), or CHROMIUM if set."""
    for candidate in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


@pytest.fixture(scope="session")
async def browser():
    """Headless Chromium driven by Playwright. Without a chromium the browser tests are skipped,
    unless REQUIRE_BROWSER=1 (CI), where that is a failure."""
    path = chromium_path()
    if path is None:
        message = "no chromium: `make install` installs Debian's chromium, or set CHROMIUM"
        if os.environ.get("REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        instance = await pw.chromium.launch(executable_path=path, args=["--no-sandbox"])
        try:
            yield instance
        finally:
            await instance.close()


@pytest.fixture
def artifacts(request) -> Path:
    """test-artifacts/<test name>/: screenshots and the like, kept after the run."""
    folder = Path(__file__).resolve().parent.parent / "test-artifacts" / request.node.name.replace("/", "_")
    folder.mkdir(parents=True, exist_ok=True)
    return folder
