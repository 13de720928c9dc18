"""API keys across the services: the same key is stored (hashed) in every service's database,
so one key works on every API of the tenant."""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import asyncpg

from shared.auth import authenticate, new_key, store_api_key


async def create_key(
    database_urls: dict[str, str], *, tenant_id: str, role: str, source_name: str | None = None,
    label: str | None = None, expires_at: datetime | None = None, records: tuple[str, ...] | None = None,
) -> str:
    """One key, stored in every service's database in one transaction each; if a database
    fails, the copies already made are removed again, so a key works everywhere or nowhere.
    A billing-source key's source is registered first if it is not (allowed to record
    `records`, default invoices); `records` given for a registered source replaces its rights."""
    if role == "billing-source":
        if not source_name:
            raise ValueError("a billing-source key needs its source: it writes as that source only")
        if "invoicing" in database_urls:
            await register_source(database_urls["invoicing"], tenant_id, source_name, records)
    key_id, secret, token = new_key()
    stored: list[str] = []
    try:
        for url in database_urls.values():
            conn = await asyncpg.connect(url)
            try:
                await store_api_key(conn, key_id=key_id, secret=secret, tenant_id=tenant_id, role=role,
                                    source_name=source_name, label=label, expires_at=expires_at)
            finally:
                await conn.close()
            stored.append(url)
    except BaseException:
        for url in stored:
            await _each(url, "DELETE FROM api_keys WHERE key_id = $1", key_id)
        raise
    return token


@dataclass(frozen=True)
class KeyInfo:
    key_id: str
    tenant_id: str
    role: str
    source_name: str | None
    label: str | None
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None


async def list_keys(database_urls: dict[str, str], tenant_id: str | None = None) -> list[KeyInfo]:
    """Every key (never a secret), with when it was last used on any service."""
    merged: dict[str, KeyInfo] = {}
    for url in database_urls.values():
        conn = await asyncpg.connect(url)
        try:
            rows = await conn.fetch(
                "SELECT key_id, tenant_id, role, source_name, label, created_at, expires_at, last_used_at, revoked_at"
                " FROM api_keys WHERE $1::text IS NULL OR tenant_id = $1 ORDER BY created_at, key_id", tenant_id)
        finally:
            await conn.close()
        for r in rows:
            info = KeyInfo(**dict(r))
            seen = merged.get(info.key_id)
            if seen is not None:
                used = max((t for t in (seen.last_used_at, info.last_used_at) if t is not None), default=None)
                revoked = seen.revoked_at or info.revoked_at
                info = replace(seen, last_used_at=used, revoked_at=revoked)
            merged[info.key_id] = info
    return list(merged.values())


async def revoke_key(database_urls: dict[str, str], key_id: str, by: str = "cli") -> bool:
    """Revoke everywhere; each service stops accepting it within AUTH_CACHE_SECONDS. False: no
    such key (or already revoked)."""
    found = False
    for url in database_urls.values():
        found |= await _each(url, "UPDATE api_keys SET revoked_at = now(), revoked_by = $2"
                                  " WHERE key_id = $1 AND revoked_at IS NULL", key_id, by) != "UPDATE 0"
    return found


async def rotate_key(database_urls: dict[str, str], key_id: str, by: str = "cli",
                     expires_at: datetime | None = None) -> str | None:
    """A new key with the same tenant, role, source and label (and `expires_at`), then the old
    one revoked. The new token, or None if there is no such active key."""
    active = [k for k in await list_keys(database_urls) if k.key_id == key_id and k.revoked_at is None]
    if not active:
        return None
    old = active[0]
    token = await create_key(database_urls, tenant_id=old.tenant_id, role=old.role, source_name=old.source_name,
                             label=old.label, expires_at=expires_at)
    await revoke_key(database_urls, key_id, by=f"{by} (rotated)")
    return token


async def _each(url: str, sql: str, *args) -> str:
    conn = await asyncpg.connect(url)
    try:
        return await conn.execute(sql, *args)
    finally:
        await conn.close()


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


async def register_source(invoicing_url: str, tenant_id: str, source: str, records: tuple[str, ...] | None,
                          currency: str | None = None) -> None:
    """Register `source` in the invoicing database if it is not; `records` (and `currency`) given
    replace what a registered source may record (and its default currency)."""
    wanted = records or ("invoices",)
    conn = await asyncpg.connect(invoicing_url)
    try:
        await conn.execute(
            "INSERT INTO billing_sources (tenant_id, name, default_currency, records_invoices, records_payments)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id, name) DO UPDATE SET"
            " records_invoices = CASE WHEN $6 THEN EXCLUDED.records_invoices ELSE billing_sources.records_invoices END,"
            " records_payments = CASE WHEN $6 THEN EXCLUDED.records_payments ELSE billing_sources.records_payments END,"
            " default_currency = coalesce(EXCLUDED.default_currency, billing_sources.default_currency)",
            tenant_id, source, currency, "invoices" in wanted, "payments" in wanted, records is not None)
    finally:
        await conn.close()
