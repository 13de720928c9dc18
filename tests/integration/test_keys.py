"""API keys across the services (#8): `tahsilat up`'s admin key kept and reused; list, revoke,
rotate and expiry, each taking effect on every service within the stated time."""
from __future__ import annotations

import stat
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import asyncpg
import httpx
import pytest

from shared.auth import AUTH_CACHE_SECONDS
from shared.db import migrate
from tahsilat.keys import create_key, list_keys, revoke_key, rotate_key, stored_admin_key
from tests.support import wait_for

pytestmark = pytest.mark.integration


async def test_up_reuses_its_admin_key_until_it_is_revoked_or_the_databases_are_new(database, tmp_path):
    await migrate(database, Path(tmp_path / "none"))  # the shared migrations: api_keys
    urls = {"invoicing": database}
    path = tmp_path / "var" / "admin-key"

    first, reused = await stored_admin_key(urls, path)
    assert not reused and path.read_text().strip() == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # a secret: the owner's only

    again, reused = await stored_admin_key(urls, path)
    assert (again, reused) == (first, True)

    conn = await asyncpg.connect(database)
    try:
        await conn.execute("UPDATE api_keys SET revoked_at = now()")
        assert await conn.fetchval("SELECT count(*) FROM api_keys") == 1  # reuse minted nothing
    finally:
        await conn.close()
    replaced, reused = await stored_admin_key(urls, path)
    assert not reused and replaced != first and path.read_text().strip() == replaced

    path.write_text("thk_not_a_key\n")  # a damaged file: a new key, not a crash
    fresh, reused = await stored_admin_key(urls, path)
    assert not reused and fresh not in (first, replaced)


@pytest.fixture
async def two_services(pg_server, database, kafka_bootstrap, topic_prefix):
    """Invoicing and the notifier, each on its own database, as the platform runs them."""
    from services.invoicing.bootstrap import build as build_invoicing
    from services.invoicing.settings import InvoicingSettings
    from services.notifier.bootstrap import build as build_notifier
    from services.notifier.settings import NotifierSettings
    from shared.db import drop_database, ensure_database, with_database
    from tests.support import FAST_KAFKA, running

    other = f"{database.rsplit('/', 1)[1]}_n"
    await ensure_database(pg_server, other)
    common = {"kafka_bootstrap_servers": kafka_bootstrap, "topic_prefix": topic_prefix, "kafka_partitions": 2,
              "poll_interval_seconds": 0.1, **FAST_KAFKA}
    invoicing = build_invoicing(InvoicingSettings(database_url=database, **common))
    notifier = build_notifier(NotifierSettings(database_url=with_database(pg_server, other), **common))
    try:
        async with running(invoicing) as inv_url, running(notifier) as not_url:
            yield ({"invoicing": database, "notifier": with_database(pg_server, other)},
                   {"invoicing": f"{inv_url}/v1/reports/aging", "notifier": f"{not_url}/v1/notifications"})
    finally:
        await drop_database(pg_server, other)


async def statuses(urls: dict[str, str], token: str) -> dict[str, int]:
    async with httpx.AsyncClient(headers={"X-API-Key": token}, timeout=10) as http:
        return {name: (await http.get(url)).status_code for name, url in urls.items()}


async def test_a_revoked_or_rotated_key_is_refused_by_every_service_within_the_stated_time(two_services):
    databases, urls = two_services
    token = await create_key(databases, tenant_id="t1", role="admin", label="ops laptop")
    key_id = token.split("_")[1]
    assert await statuses(urls, token) == {"invoicing": 200, "notifier": 200}

    [info] = await list_keys(databases)
    assert (info.key_id, info.role, info.label, info.revoked_at) == (key_id, "admin", "ops laptop", None)
    assert info.last_used_at is not None  # both services saw it

    assert await revoke_key(databases, key_id)
    revoked = time.monotonic()
    await wait_for(lambda: _all(statuses(urls, token), 401), timeout=AUTH_CACHE_SECONDS + 5,
                   message="every service refusing the revoked key")
    assert time.monotonic() - revoked <= AUTH_CACHE_SECONDS + 5
    assert not await revoke_key(databases, key_id)  # already revoked

    second = await create_key(databases, tenant_id="t1", role="collector")
    rotated = await rotate_key(databases, second.split("_")[1])
    assert rotated and rotated != second
    assert await statuses(urls, rotated) == {"invoicing": 200, "notifier": 200}
    await wait_for(lambda: _all(statuses(urls, second), 401), timeout=AUTH_CACHE_SECONDS + 5,
                   message="the rotated-out key refused")
    new = next(k for k in await list_keys(databases, "t1") if k.key_id == rotated.split("_")[1])
    assert (new.role, new.tenant_id, new.revoked_at) == ("collector", "t1", None)


async def test_an_expired_key_is_refused_and_a_key_is_stored_everywhere_or_nowhere(two_services):
    databases, urls = two_services
    expired = await create_key(databases, tenant_id="t1", role="admin",
                               expires_at=datetime.now(timezone.utc) - timedelta(seconds=1))
    assert await statuses(urls, expired) == {"invoicing": 401, "notifier": 401}

    broken = {**databases, "nowhere": databases["invoicing"].rsplit("/", 1)[0] + "/no_such_database"}
    with pytest.raises(asyncpg.InvalidCatalogNameError):
        await create_key(broken, tenant_id="t1", role="admin")
    assert len(await list_keys(databases)) == 1  # the copies made before the failure were removed


async def _all(statuses_now, code: int) -> bool:
    return set((await statuses_now).values()) == {code}


def test_keys_from_the_command_line(pg_server, tmp_path):
    import asyncio
    import os
    import subprocess
    import sys
    import uuid

    from shared.db import drop_database, ensure_database, with_database

    prefix = f"keys_{uuid.uuid4().hex[:8]}"
    services = ("invoicing", "dunning", "risk", "notifier")

    async def prepare() -> None:
        for s in services:
            await ensure_database(pg_server, f"{prefix}_{s}")
            await migrate(with_database(pg_server, f"{prefix}_{s}"), Path(tmp_path / "none"))

    async def drop() -> None:
        for s in services:
            await drop_database(pg_server, f"{prefix}_{s}")

    env = dict(os.environ, DATABASE_URL=pg_server, COLUMNS="250", TAHSILAT_HOME=str(tmp_path))

    def tahsilat(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "tahsilat.cli", "keys", *args, "--db-prefix", prefix], env=env,
                              capture_output=True, text=True, timeout=60)

    asyncio.run(prepare())
    try:
        made = tahsilat("create", "--tenant", "t1", "--role", "collector", "--label", "desk [/x]", "--expires-days", "90")
        assert made.returncode == 0, made.stdout + made.stderr
        old_id = made.stdout.strip().split("_")[1]
        listed = tahsilat("list", "--tenant", "t1")
        assert old_id in listed.stdout and "desk [/x]" in listed.stdout and "active" in listed.stdout
        assert made.stdout.strip() not in listed.stdout  # never the secret

        rotated = tahsilat("rotate", old_id)
        assert rotated.returncode == 0 and rotated.stdout.strip().startswith("thk_"), rotated.stdout
        new_id = rotated.stdout.strip().split("_")[1]
        listed = tahsilat("list")
        assert old_id in listed.stdout and "revoked" in listed.stdout and new_id in listed.stdout

        revoked = tahsilat("revoke", new_id)
        assert revoked.returncode == 0 and "within 10 s" in revoked.stdout, revoked.stdout
        again = tahsilat("revoke", new_id)
        assert again.returncode == 1 and "no active key" in again.stdout
    finally:
        asyncio.run(drop())
