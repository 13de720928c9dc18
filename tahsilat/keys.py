"""API keys across the services: the same key is stored (hashed) in every service's database,
so one key works on every API of the tenant."""
from __future__ import annotations

import asyncpg

from shared.auth import new_key, store_api_key


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
