"""`tahsilat up`'s admin key: kept, reused while every service accepts it, replaced when not."""
from __future__ import annotations

import stat
from pathlib import Path

import asyncpg
import pytest

from shared.db import migrate
from tahsilat.keys import stored_admin_key

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
