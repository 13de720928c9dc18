"""API keys across the services: the same key is stored (hashed) in every service's database,
so one key works on every API of the tenant."""
from __future__ import annotations

import os
from pathlib import Path

import asyncpg

from shared.auth import authenticate, new_key, store_api_key


async def create_key(
    database_urls: dict[str, str], *, tenant_id: str, role: str, source_name: str | None = None, label: str | None = None
) -> str:
    key_id, secret, token = new_key()
    for url in database_urls.values():
        conn = await asyncpg.connect(url)
        try:
            await store_api_key(conn, key_id=key_id, secret=secret, tenant_id=tenant_id, role=role,
                                source_name=source_name, label=label)
        finally:
            await conn.close()
    return token


async def stored_admin_key(database_urls: dict[str, str], path: Path) -> tuple[str, bool]:
    """`tahsilat up`'s admin key for the tenant `default`: the one kept in `path` while every
    service still accepts it, else a new one written there (owner-only). (token, reused)."""
    if path.exists():
        token = path.read_text(encoding="utf-8").strip()
        if await _valid_everywhere(database_urls, token):
            return token, True
    token = await create_key(database_urls, tenant_id="default", role="admin", label="tahsilat up")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
    return token, False


async def _valid_everywhere(database_urls: dict[str, str], token: str) -> bool:
    for url in database_urls.values():
        conn = await asyncpg.connect(url)
        try:
            principal = await authenticate(conn, token)
        except asyncpg.UndefinedTableError:
            principal = None
        finally:
            await conn.close()
        if principal is None or (principal.tenant_id, principal.role) != ("default", "admin"):
            return False
    return True
