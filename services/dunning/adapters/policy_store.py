"""Policies in the dunning database: versions are immutable, one is active per name and per
(segment, customer group) slot of a tenant; '*' holds the policies shipped as files."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import asyncpg

from services.dunning.domain.policy import ANY_TENANT, PolicySpec, parse_policy

SHIPPED = Path(__file__).resolve().parent.parent / "policies"


@dataclass(frozen=True)
class PolicyRef:
    tenant_id: str
    name: str
    version: int


class PolicyBook:
    """Reads policies; versions never change once written, so each is parsed once."""

    def __init__(self) -> None:
        self._specs: dict[PolicyRef, PolicySpec] = {}

    async def spec(self, conn: asyncpg.Connection, ref: PolicyRef) -> PolicySpec:
        if ref not in self._specs:
            document = await conn.fetchval(
                "SELECT document FROM policies WHERE tenant_id = $1 AND name = $2 AND version = $3",
                ref.tenant_id, ref.name, ref.version)
            if document is None:
                raise LookupError(f"policy {ref.name} v{ref.version} of {ref.tenant_id} is not stored")
            self._specs[ref] = PolicySpec.model_validate(document)
        return self._specs[ref]

    async def specs(self, conn: asyncpg.Connection, refs) -> dict[PolicyRef, PolicySpec]:
        return {ref: await self.spec(conn, ref) for ref in set(refs)}

    @staticmethod
    async def resolver(conn: asyncpg.Connection, tenants: set[str]) -> "Resolver":
        rows = await conn.fetch(
            "SELECT tenant_id, name, version, segment, customer_group FROM policies"
            " WHERE status = 'active' AND tenant_id = ANY($1::text[])", sorted(tenants | {ANY_TENANT}))
        return Resolver({(r["tenant_id"], r["segment"], r["customer_group"]): PolicyRef(r["tenant_id"], r["name"], r["version"])
                         for r in rows})


@dataclass(frozen=True)
class Resolver:
    """The policy for a customer: the tenant's own for its segment and group, else its own for
    the segment, else the shipped one for the segment, else the shipped medium-segment policy."""

    active: dict[tuple[str, str, str | None], PolicyRef]

    def __call__(self, tenant_id: str, segment: str | None, group: str | None) -> PolicyRef:
        segment = segment or "medium"
        for key in ((tenant_id, segment, group), (tenant_id, segment, None), (ANY_TENANT, segment, group),
                    (ANY_TENANT, segment, None), (ANY_TENANT, "medium", None)):
            if key in self.active:
                return self.active[key]
        raise LookupError(f"no active dunning policy for tenant {tenant_id!r}, segment {segment!r}")


async def add_version(conn: asyncpg.Connection, tenant_id: str, spec: PolicySpec, source: str, by: str,
                      now: datetime) -> int:
    """A new version of the named policy, as a draft; the version number."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext('dunning-policy:' || $1 || ':' || $2))", tenant_id, spec.name)
    version = await conn.fetchval(
        "SELECT coalesce(max(version), 0) + 1 FROM policies WHERE tenant_id = $1 AND name = $2", tenant_id, spec.name)
    await conn.execute(
        "INSERT INTO policies (tenant_id, name, version, segment, customer_group, document, source, status, created_at,"
        " created_by) VALUES ($1, $2, $3, $4, $5, $6, $7, 'draft', $8, $9)",
        tenant_id, spec.name, version, spec.segment, spec.customer_group, spec.model_dump(mode="json"), source, now, by)
    return version


async def activate(conn: asyncpg.Connection, tenant_id: str, name: str, version: int, now: datetime) -> asyncpg.Record | None:
    """Make a version the active one of its name and of its (segment, group) slot; the policy
    active there before is retired. None when there is no such version."""
    row = await conn.fetchrow(
        "SELECT segment, customer_group, status FROM policies WHERE tenant_id = $1 AND name = $2 AND version = $3"
        " FOR UPDATE", tenant_id, name, version)
    if row is None or row["status"] == "active":
        return row
    await conn.execute(
        "UPDATE policies SET status = 'retired' WHERE tenant_id = $1 AND status = 'active'"
        " AND (name = $2 OR (segment = $3 AND coalesce(customer_group, '') = coalesce($4, '')))",
        tenant_id, name, row["segment"], row["customer_group"])
    return await conn.fetchrow(
        "UPDATE policies SET status = 'active', activated_at = $4 WHERE tenant_id = $1 AND name = $2 AND version = $3"
        " RETURNING segment, customer_group, status", tenant_id, name, version, now)


async def load_files(conn: asyncpg.Connection, directories: list[Path], now: datetime) -> list[PolicyRef]:
    """Load the policy files (the shipped ones, then an operator's directory) for every tenant:
    a file whose content changed becomes a new version; in each (segment, group) slot the file
    read last is active (an operator's file replaces the shipped one of its segment). A bad
    file stops the start with its name, line and field. Returns the versions newly active."""
    specs: dict[str, tuple[PolicySpec, str]] = {}
    winner: dict[tuple[str, str | None], str] = {}
    for directory in directories:
        for path in sorted(directory.glob("*.yaml")):
            text = path.read_text(encoding="utf-8")
            spec = parse_policy(text, str(path))
            specs[spec.name] = (spec, text)
            winner[spec.slot] = spec.name
    activated = []
    for name, (spec, text) in sorted(specs.items()):
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('dunning-policy:*:' || $1))", name)
        latest = await conn.fetchrow(
            "SELECT version, document, status FROM policies WHERE tenant_id = '*' AND name = $1"
            " ORDER BY version DESC LIMIT 1", name)
        if latest is not None and PolicySpec.model_validate(latest["document"]) == spec:
            version, status = latest["version"], latest["status"]
        else:
            version, status = await add_version(conn, ANY_TENANT, spec, text, "file", now), "draft"
        if winner[spec.slot] == name and status != "active":
            await activate(conn, ANY_TENANT, name, version, now)
            activated.append(PolicyRef(ANY_TENANT, name, version))
    return activated


async def get(conn: asyncpg.Connection, tenant_id: str, name: str, version: int) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT * FROM policies WHERE tenant_id = $1 AND name = $2 AND version = $3", tenant_id, name, version)


async def listing(conn, tenant_id: str, name: str | None = None) -> list[asyncpg.Record]:
    """The tenant's versions and the shipped ones ('*'), newest first per name."""
    return await conn.fetch(
        "SELECT * FROM policies WHERE tenant_id IN ($1, '*') AND ($2::text IS NULL OR name = $2)"
        " ORDER BY tenant_id = '*', name, version DESC", tenant_id, name)
