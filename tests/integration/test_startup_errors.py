"""Start-up problems give one clear line saying what and how to fix it."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tahsilat.embedded import Broker, StartupError, free_port
from tahsilat.platform import Platform, PlatformOptions

pytestmark = pytest.mark.integration


def test_a_port_in_use_names_the_port_and_the_fix(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(StartupError, match=f"port {port} for the Kafka broker is already in use"):
            Broker(port).start()


def test_an_unreachable_broker_is_reported(tmp_path, pg_server):
    dead = f"127.0.0.1:{free_port()}"
    platform = Platform(PlatformOptions(base_dir=tmp_path, free_ports=True, kafka_bootstrap=dead,
                                        database_url=pg_server, db_prefix=f"err_{os.getpid()}"))
    try:
        with pytest.raises(StartupError, match=f"cannot reach the Kafka broker at {dead}"):
            platform.start(timeout=20)
    finally:
        import asyncio

        asyncio.run(platform.drop_databases())


def test_an_unreachable_database_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", f"postgresql://nobody@127.0.0.1:{free_port()}/x")
    platform = Platform(PlatformOptions(base_dir=tmp_path, free_ports=True, kafka_bootstrap="127.0.0.1:1"))
    with pytest.raises(StartupError, match="cannot connect to DATABASE_URL"):
        platform.start(timeout=20)


def test_a_service_without_configuration_says_which_setting_is_missing():
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS")}
    result = subprocess.run([sys.executable, "-m", "services.invoicing"], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0
    assert "DATABASE_URL: Field required" in result.stderr
    assert "KAFKA_BOOTSTRAP_SERVERS: Field required" in result.stderr


def test_the_cli_reports_a_bad_role_clearly():
    result = subprocess.run([sys.executable, "-m", "tahsilat.cli", "keys", "create", "--tenant", "t", "--role", "boss"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "role" in result.stdout and "boss" in result.stdout


def test_a_service_that_cannot_reach_its_database_says_so_in_one_line():
    env = dict(os.environ, DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/x",
               KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1")
    result = subprocess.run([sys.executable, "-m", "services.dunning"], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0
    assert "dunning: cannot reach the database at postgresql://postgres@127.0.0.1:" in result.stderr
    assert "Traceback" not in result.stderr


async def test_without_a_postgresql_server_an_embedded_one_starts_under_the_data_folder(tmp_path):
    import asyncpg

    from tahsilat.embedded import embedded_postgres

    url = embedded_postgres(tmp_path / "var" / "pgdata")
    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()
    assert (tmp_path / "var" / "pgdata" / "PG_VERSION").exists()


def test_the_compose_init_script_gives_each_service_a_role_that_reaches_its_own_database_only(pg_server):
    """deploy/compose/init-databases.sh run against a real PostgreSQL: each service's role owns
    its database (it can create its tables there) and cannot connect to another's."""
    import asyncio
    import subprocess
    from urllib.parse import urlparse

    import asyncpg

    from shared.db import with_database

    prefix = f"init_{uuid.uuid4().hex[:8]}_"
    server = urlparse(pg_server)
    env = {**os.environ, "PGHOST": server.hostname or "127.0.0.1", "PGPORT": str(server.port or 5432),
           "POSTGRES_USER": server.username or "postgres", "TAHSILAT_DB_PREFIX": prefix}
    script = Path(__file__).resolve().parents[2] / "deploy" / "compose" / "init-databases.sh"

    def as_role(role: str, database: str) -> str:
        return with_database(pg_server.replace(f"//{server.username}@", f"//{role}@", 1), database)

    async def check() -> None:
        own = await asyncpg.connect(as_role(f"{prefix}invoicing", f"{prefix}invoicing"))
        try:
            await own.execute("CREATE TABLE t (id int)")
            assert not await own.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        finally:
            await own.close()
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await asyncpg.connect(as_role(f"{prefix}invoicing", f"{prefix}dunning"))

    async def clean() -> None:
        conn = await asyncpg.connect(pg_server)
        try:
            for service in ("invoicing", "dunning", "risk", "notifier"):
                await conn.execute(f'DROP DATABASE IF EXISTS "{prefix}{service}" WITH (FORCE)')
                await conn.execute(f'DROP ROLE IF EXISTS "{prefix}{service}"')
        finally:
            await conn.close()

    try:
        done = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        asyncio.run(check())
    finally:
        asyncio.run(clean())
