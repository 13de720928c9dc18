"""`tahsilat outbox held | retry | discard` on a service database: what a person on call runs."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest

from shared.db import drop_database, ensure_database, migrate, with_database

pytestmark = pytest.mark.integration


def tahsilat(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tahsilat.cli", *args], env=env, capture_output=True, text=True,
                          timeout=60)


def test_a_held_event_is_listed_retried_and_discarded_from_the_command_line(pg_server, tmp_path):
    prefix = f"cli_{uuid.uuid4().hex[:8]}"
    url = with_database(pg_server, f"{prefix}_dunning")

    async def prepare() -> int:
        await ensure_database(pg_server, f"{prefix}_dunning")
        await migrate(url, Path(tmp_path))
        conn = await asyncpg.connect(url)
        try:
            row = await conn.fetchval(
                "INSERT INTO outbox (event_id, tenant_id, event_type, topic, key, envelope, attempts, next_attempt_at,"
                " last_error) VALUES (gen_random_uuid(), 't1', 'NotificationRequested', 'ar.dunning.v1', 't1:[/x]',"
                " '{}', 1, 'infinity', 'the event is 2000000 bytes, more than max_event_bytes') RETURNING id")
            await conn.execute(
                "INSERT INTO outbox (event_id, tenant_id, event_type, topic, key, envelope)"
                " VALUES (gen_random_uuid(), 't1', 'NotificationRequested', 'ar.dunning.v1', 't1:[/x]', '{}')")
            return row
        finally:
            await conn.close()

    env = dict(os.environ, DATABASE_URL=pg_server, COLUMNS="250", TAHSILAT_HOME=str(tmp_path))
    try:
        row = asyncio.run(prepare())
        listed = tahsilat("outbox", "held", "--service", "dunning", "--db-prefix", prefix, env=env)
        assert listed.returncode == 0, listed.stdout + listed.stderr
        assert "t1:[/x]" in listed.stdout and "needs a person" in listed.stdout and "max_event_bytes" in listed.stdout
        assert f"│ {row} " in listed.stdout and "│ 1 " in listed.stdout  # one event waits behind it

        retried = tahsilat("outbox", "retry", str(row), "--service", "dunning", "--db-prefix", prefix, env=env)
        assert retried.returncode == 0 and "goes out at the relay's next batch" in retried.stdout
        discarded = tahsilat("outbox", "discard", str(row), "--service", "dunning", "--db-prefix", prefix,
                             "--reason", "too big for the broker", env=env)
        assert discarded.returncode == 0 and "discarded" in discarded.stdout
        again = tahsilat("outbox", "discard", str(row), "--service", "dunning", "--db-prefix", prefix,
                         "--reason", "again", env=env)
        assert again.returncode == 1 and f"no held event {row}" in again.stdout
        assert "nothing held back" in tahsilat("outbox", "held", "--service", "dunning", "--db-prefix", prefix,
                                               env=env).stdout
        wrong = tahsilat("outbox", "held", "--service", "billing", env=env)
        assert wrong.returncode == 2 and "service: must be one of" in wrong.stdout
    finally:
        asyncio.run(drop_database(pg_server, f"{prefix}_dunning"))
