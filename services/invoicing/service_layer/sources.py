"""Billing sources: registration, what each may record, and who owns customer contact data."""
from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import asyncpg

from services.invoicing.adapters import repository as repo
from services.invoicing.domain.model import reserved_source
from shared.auth import new_key, store_api_key
from shared.http import DomainError

Right = Literal["invoices", "payments"]
RIGHTS: tuple[Right, ...] = ("invoices", "payments")


@dataclass(frozen=True)
class Registered:
    name: str
    default_currency: str | None
    records: list[str]
    api_key: str | None = None
    ingest_secret: IngestSecret | None = None


@dataclass(frozen=True)
class IngestSecret:
    secret_id: str
    created_at: datetime
    retired_at: datetime | None = None
    secret: str | None = None  # only when it is made


def missing_right(rights: asyncpg.Record | None, source: str, right: Right) -> str | None:
    """Why `source` may not record `right`, or None if it may."""
    if rights is None:
        return (f"billing source {source!r} is not registered in this tenant;"
                " register it first (POST /v1/billing-sources)")
    if not rights[f"records_{right}"]:
        what = "payments" if right == "payments" else "invoices, credit notes or customers"
        return (f"billing source {source!r} may not record {what}; an admin grants it"
                f" (PATCH /v1/billing-sources/{source} with records)")
    return None


async def require_right(conn: asyncpg.Connection | asyncpg.Pool, tenant_id: str, source: str, right: Right) -> None:
    if (problem := missing_right(await repo.source_rights(conn, tenant_id, source), source, right)) is not None:
        raise DomainError("billing_source", problem, 403)


async def register(pool: asyncpg.Pool, tenant_id: str, name: str, default_currency: str | None,
                   records: list[Right]) -> Registered:
    """Register a billing source and issue its API key (billing-source role, bound to it)."""
    if reserved_source(name):
        raise DomainError("name", f"{name!r} is reserved for the platform's own records")
    key_id, secret, token = new_key()
    async with pool.acquire() as conn, conn.transaction():
        created = await conn.fetchval(
            "INSERT INTO billing_sources (tenant_id, name, default_currency, records_invoices, records_payments)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING 1",
            tenant_id, name, default_currency, "invoices" in records, "payments" in records,
        )
        if not created:
            raise DomainError("name", f"billing source {name!r} is already registered", 409)
        await store_api_key(conn, key_id=key_id, secret=secret, tenant_id=tenant_id, role="billing-source",
                            source_name=name, label=f"billing source {name}")
        ingest_secret = await _new_ingest_secret(conn, tenant_id, name)
    return Registered(name, default_currency, sorted(set(records)), token, ingest_secret)


def _registered(row: asyncpg.Record) -> Registered:
    return Registered(row["name"], row["default_currency"],
                      [r for r in RIGHTS if row[f"records_{r}"]])


async def update(pool: asyncpg.Pool, tenant_id: str, name: str, *, default_currency: str | None = None,
                 records: list[Right] | None = None) -> Registered:
    row = await pool.fetchrow(
        "UPDATE billing_sources SET default_currency = coalesce($3, default_currency),"
        " records_invoices = coalesce($4, records_invoices), records_payments = coalesce($5, records_payments)"
        " WHERE tenant_id = $1 AND name = $2 RETURNING *",
        tenant_id, name, default_currency,
        None if records is None else "invoices" in records, None if records is None else "payments" in records)
    if row is None:
        raise DomainError("name", f"no billing source {name!r} in this tenant", 404)
    return _registered(row)


async def list_sources(pool: asyncpg.Pool, tenant_id: str) -> list[Registered]:
    rows = await pool.fetch("SELECT * FROM billing_sources WHERE tenant_id = $1 ORDER BY name", tenant_id)
    return [_registered(r) for r in rows]


async def set_master_data_source(pool: asyncpg.Pool, tenant_id: str, source: str | None) -> None:
    """`source` owns every customer's contact data from now on (None: each customer's creator)."""
    if source is not None and await repo.source_rights(pool, tenant_id, source) is None:
        raise DomainError("master_data_source", f"billing source {source!r} is not registered in this tenant", 404)
    await pool.execute(
        "INSERT INTO tenant_settings (tenant_id, master_data_source) VALUES ($1, $2)"
        " ON CONFLICT (tenant_id) DO UPDATE SET master_data_source = EXCLUDED.master_data_source, updated_at = now()",
        tenant_id, source)


async def master_data_source(pool: asyncpg.Pool, tenant_id: str) -> str | None:
    return await pool.fetchval("SELECT master_data_source FROM tenant_settings WHERE tenant_id = $1", tenant_id)


async def _new_ingest_secret(conn: asyncpg.Connection, tenant_id: str, source: str) -> IngestSecret:
    secret_id, secret = f"isk_{secrets.token_hex(8)}", secrets.token_urlsafe(32)
    created = await conn.fetchval(
        "INSERT INTO ingest_secrets (secret_id, tenant_id, source, secret) VALUES ($1, $2, $3, $4) RETURNING created_at",
        secret_id, tenant_id, source, secret)
    return IngestSecret(secret_id, created, secret=secret)


async def rotate_ingest_secret(pool: asyncpg.Pool, tenant_id: str, source: str,
                               retire_others_after_seconds: int | None = None) -> IngestSecret:
    """A new ingest secret for `source`, shown once; the source's other live secrets retire after
    `retire_others_after_seconds` (None: they stay live until retired by hand)."""
    async with pool.acquire() as conn, conn.transaction():
        if await repo.source_rights(conn, tenant_id, source) is None:
            raise DomainError("name", f"no billing source {source!r} in this tenant", 404)
        if retire_others_after_seconds is not None:
            await conn.execute(
                "UPDATE ingest_secrets SET retired_at = now() + make_interval(secs => $3)"
                " WHERE tenant_id = $1 AND source = $2 AND (retired_at IS NULL OR retired_at > now() + make_interval(secs => $3))",
                tenant_id, source, float(retire_others_after_seconds))
        return await _new_ingest_secret(conn, tenant_id, source)


async def retire_ingest_secret(pool: asyncpg.Pool, tenant_id: str, source: str, secret_id: str) -> None:
    done = await pool.fetchval(
        "UPDATE ingest_secrets SET retired_at = least(coalesce(retired_at, now()), now())"
        " WHERE tenant_id = $1 AND source = $2 AND secret_id = $3 RETURNING 1", tenant_id, source, secret_id)
    if not done:
        raise DomainError("secret_id", f"no ingest secret {secret_id!r} of billing source {source!r}", 404)


async def ingest_secrets(pool: asyncpg.Pool, tenant_id: str, source: str) -> list[IngestSecret]:
    if await repo.source_rights(pool, tenant_id, source) is None:
        raise DomainError("name", f"no billing source {source!r} in this tenant", 404)
    rows = await pool.fetch("SELECT secret_id, created_at, retired_at FROM ingest_secrets"
                            " WHERE tenant_id = $1 AND source = $2 ORDER BY created_at", tenant_id, source)
    return [IngestSecret(r["secret_id"], r["created_at"], r["retired_at"]) for r in rows]
