"""Credit limits, holds, groups and applications in the risk store.

`CreditState` is what a batch's credit checks need, loaded once: the limits and automatic holds
of the customers the batch touches and of their groups' parents, and the exposure of group
members the batch does not touch. The checks then run after every event on the books in memory."""
from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from services.risk.domain.book import CustomerBook
from services.risk.domain.credit import CreditLine, roll_up

Key = tuple[str, str]


@dataclass
class CreditState:
    books: Mapping[Key, CustomerBook]
    limits: dict[Key, dict[str, int]] = field(default_factory=dict)
    holds: dict[Key, dict[str, tuple[str, int | None, int | None, datetime]]] = field(default_factory=dict)
    members: dict[Key, list[str]] = field(default_factory=dict)  # a parent -> its members and itself
    base_exposure: dict[Key, dict[str, int]] = field(default_factory=dict)  # customers outside the batch
    changed: set[tuple[Key, str]] = field(default_factory=set)

    def exposure(self, key: Key) -> dict[str, int]:
        book = self.books.get(key)
        return book.exposure() if book is not None else self.base_exposure.get(key, {})

    def _lines(self, owner: Key, exposure: Mapping[str, int]) -> list[CreditLine]:
        limits, holds = self.limits.get(owner, {}), self.holds.get(owner, {})
        return [CreditLine(currency=c, limit_minor=limits.get(c), exposure_minor=exposure.get(c, 0), held=c in holds)
                for c in sorted(set(limits) | set(holds))]

    def lines_after(self, key: Key) -> Iterator[tuple[Key, str, list[CreditLine]]]:
        """(owner, scope, lines) to check once `key`'s book changed."""
        if key not in self.members:  # a parent's limit is its group's
            lines = self._lines(key, self.exposure(key))
            if lines:
                yield key, "customer", lines
        book = self.books.get(key)
        parent = (key[0], book.facts.parent_id) if book is not None and book.facts.parent_id else key
        if parent in self.members:
            group = roll_up({m: self.exposure((key[0], m)) for m in self.members[parent]})
            lines = self._lines(parent, group)
            if lines:
                yield parent, "group", lines

    def record(self, owner: Key, change: Any, line: CreditLine, scope: str, at: datetime) -> None:
        holds = self.holds.setdefault(owner, {})
        if change.action == "place":
            holds[line.currency] = (scope, line.limit_minor, line.exposure_minor, at)
        else:
            holds.pop(line.currency, None)
        self.changed.add((owner, line.currency))


async def load_state(conn: asyncpg.Connection, books: Mapping[Key, CustomerBook]) -> CreditState:
    state = CreditState(books)
    parents = {(k[0], b.facts.parent_id) for k, b in books.items() if b.facts.parent_id}
    owners = sorted(set(books) | parents)
    ts, cs = [k[0] for k in owners], [k[1] for k in owners]
    for r in await conn.fetch(
            "SELECT l.tenant_id, l.customer_id, l.currency, l.limit_minor FROM unnest($1::text[], $2::text[])"
            " AS k(tenant_id, customer_id) JOIN credit_limits l USING (tenant_id, customer_id)", ts, cs):
        state.limits.setdefault((r["tenant_id"], r["customer_id"]), {})[r["currency"]] = r["limit_minor"]
    for r in await conn.fetch(
            "SELECT h.tenant_id, h.customer_id, h.currency, h.scope, h.limit_minor, h.exposure_minor, h.placed_at"
            " FROM unnest($1::text[], $2::text[]) AS k(tenant_id, customer_id)"
            " JOIN credit_holds h USING (tenant_id, customer_id) WHERE h.kind = 'limit'", ts, cs):
        state.holds.setdefault((r["tenant_id"], r["customer_id"]), {})[r["currency"]] = (
            r["scope"], r["limit_minor"], r["exposure_minor"], r["placed_at"])
    # Groups matter only where the parent has a limit or a hold to follow.
    roots = sorted(k for k in owners if k in state.limits or k in state.holds)
    if not roots:
        return state
    for r in await conn.fetch(
            "SELECT c.tenant_id, c.parent_id, array_agg(c.customer_id ORDER BY c.customer_id) AS members"
            " FROM unnest($1::text[], $2::text[]) AS k(tenant_id, parent_id)"
            " JOIN risk_customers c USING (tenant_id, parent_id) GROUP BY 1, 2",
            [k[0] for k in roots], [k[1] for k in roots]):
        state.members[(r["tenant_id"], r["parent_id"])] = [r["parent_id"], *r["members"]]
    outside = sorted({(k[0], m) for k, ms in state.members.items() for m in ms} - set(books))
    state.base_exposure = await exposures(conn, outside)
    return state


async def exposures(conn: asyncpg.Connection, keys: list[Key]) -> dict[Key, dict[str, int]]:
    out: dict[Key, dict[str, int]] = {}
    for r in await conn.fetch(
            "SELECT k.tenant_id, k.customer_id, i.currency, sum(i.open_minor)::bigint AS open"
            " FROM unnest($1::text[], $2::text[]) AS k(tenant_id, customer_id)"
            " JOIN risk_invoices i USING (tenant_id, customer_id)"
            " WHERE i.status = 'open' AND i.open_minor > 0 GROUP BY 1, 2, 3",
            [k[0] for k in keys], [k[1] for k in keys]):
        out.setdefault((r["tenant_id"], r["customer_id"]), {})[r["currency"]] = r["open"]
    return out


async def save_holds(conn: asyncpg.Connection, state: CreditState) -> None:
    placed = [(o, c, state.holds[o][c]) for o, c in sorted(state.changed) if c in state.holds.get(o, {})]
    released = [(o, c) for o, c in sorted(state.changed) if c not in state.holds.get(o, {})]
    if released:
        await conn.execute(
            "DELETE FROM credit_holds h USING unnest($1::text[], $2::text[], $3::text[]) AS u(t, c, cur)"
            " WHERE h.tenant_id = u.t AND h.customer_id = u.c AND h.currency = u.cur AND h.kind = 'limit'",
            [o[0] for o, _ in released], [o[1] for o, _ in released], [c for _, c in released])
    if placed:
        await conn.execute(
            "INSERT INTO credit_holds (tenant_id, customer_id, currency, kind, scope, limit_minor, exposure_minor,"
            " placed_at) SELECT t, c, cur, 'limit', s, l, e, at FROM unnest($1::text[], $2::text[], $3::text[],"
            " $4::text[], $5::bigint[], $6::bigint[], $7::timestamptz[]) AS u(t, c, cur, s, l, e, at)"
            " ON CONFLICT (tenant_id, customer_id, currency, kind) DO UPDATE SET scope = EXCLUDED.scope,"
            " limit_minor = EXCLUDED.limit_minor, exposure_minor = EXCLUDED.exposure_minor, placed_at = EXCLUDED.placed_at",
            [o[0] for o, _, _ in placed], [o[1] for o, _, _ in placed], [c for _, c, _ in placed],
            [h[0] for _, _, h in placed], [h[1] for _, _, h in placed], [h[2] for _, _, h in placed],
            [h[3] for _, _, h in placed])
    state.changed.clear()


# -- reads and a person's changes (the API) ------------------------------------------------------

async def customer_credit(conn: asyncpg.Connection, tenant_id: str, customer_id: str) -> dict[str, Any]:
    """Limits, exposure and holds of a customer, and of its group when it has a parent or members."""
    row = await conn.fetchrow("SELECT parent_id, terms_days FROM risk_customers WHERE tenant_id = $1 AND customer_id = $2",
                              tenant_id, customer_id)
    members = [r["customer_id"] for r in await conn.fetch(
        "SELECT customer_id FROM risk_customers WHERE tenant_id = $1 AND parent_id = $2 ORDER BY customer_id",
        tenant_id, customer_id)]
    own = (await exposures(conn, [(tenant_id, customer_id)])).get((tenant_id, customer_id), {})
    limits = {r["currency"]: dict(r) for r in await conn.fetch(
        "SELECT currency, limit_minor, source, set_by, reason, set_at FROM credit_limits"
        " WHERE tenant_id = $1 AND customer_id = $2", tenant_id, customer_id)}
    holds = [dict(r) for r in await conn.fetch(
        "SELECT currency, kind, scope, limit_minor, exposure_minor, placed_by, reason, placed_at FROM credit_holds"
        " WHERE tenant_id = $1 AND customer_id = $2 ORDER BY currency, kind", tenant_id, customer_id)]
    group_exposure = None
    if members:
        per = await exposures(conn, [(tenant_id, m) for m in [customer_id, *members]])
        group_exposure = roll_up({k[1]: v for k, v in per.items()})
    return {"parent_id": row["parent_id"] if row else None, "terms_days": row["terms_days"] if row else None,
            "members": members, "exposure": own, "group_exposure": group_exposure, "limits": limits, "holds": holds}


async def set_limit(conn: asyncpg.Connection, tenant_id: str, customer_id: str, currency: str, limit_minor: int | None,
                    source: str, by: str | None, reason: str | None, at: datetime) -> int | None:
    """Set (or with None remove) a limit; returns the previous one."""
    previous = await conn.fetchval(
        "SELECT limit_minor FROM credit_limits WHERE tenant_id = $1 AND customer_id = $2 AND currency = $3 FOR UPDATE",
        tenant_id, customer_id, currency)
    if limit_minor is None:
        await conn.execute("DELETE FROM credit_limits WHERE tenant_id = $1 AND customer_id = $2 AND currency = $3",
                           tenant_id, customer_id, currency)
    else:
        await conn.execute(
            "INSERT INTO credit_limits (tenant_id, customer_id, currency, limit_minor, source, set_by, reason, set_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (tenant_id, customer_id, currency) DO UPDATE SET"
            " limit_minor = EXCLUDED.limit_minor, source = EXCLUDED.source, set_by = EXCLUDED.set_by,"
            " reason = EXCLUDED.reason, set_at = EXCLUDED.set_at",
            tenant_id, customer_id, currency, limit_minor, source, by, reason, at)
    return previous


async def lock_customer(conn: asyncpg.Connection, tenant_id: str, customer_id: str) -> None:
    """The same lock the stream takes before folding the customer's events."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1 || '/' || $2, 7321))", tenant_id, customer_id)


async def set_parent(conn: asyncpg.Connection, tenant_id: str, customer_id: str, parent_id: str | None) -> None:
    await conn.execute(
        "INSERT INTO risk_customers (tenant_id, customer_id, parent_id) VALUES ($1, $2, $3)"
        " ON CONFLICT (tenant_id, customer_id) DO UPDATE SET parent_id = EXCLUDED.parent_id",
        tenant_id, customer_id, parent_id)


async def is_parent(conn: asyncpg.Connection, tenant_id: str, customer_id: str) -> bool:
    return bool(await conn.fetchval(
        "SELECT 1 FROM risk_customers WHERE tenant_id = $1 AND parent_id = $2 LIMIT 1", tenant_id, customer_id))


async def parent_of(conn: asyncpg.Connection, tenant_id: str, customer_id: str) -> str | None:
    return await conn.fetchval("SELECT parent_id FROM risk_customers WHERE tenant_id = $1 AND customer_id = $2",
                               tenant_id, customer_id)


async def set_manual_hold(conn: asyncpg.Connection, tenant_id: str, customer_id: str, currency: str, on: bool,
                          by: str | None, reason: str | None, at: datetime) -> bool:
    """Place or lift a person's hold; False when nothing changed."""
    if on:
        status = await conn.execute(
            "INSERT INTO credit_holds (tenant_id, customer_id, currency, kind, placed_by, reason, placed_at)"
            " VALUES ($1, $2, $3, 'manual', $4, $5, $6) ON CONFLICT DO NOTHING",
            tenant_id, customer_id, currency, by, reason, at)
        return status.endswith(" 1")
    status = await conn.execute(
        "DELETE FROM credit_holds WHERE tenant_id = $1 AND customer_id = $2 AND currency = $3 AND kind = 'manual'",
        tenant_id, customer_id, currency)
    return status.endswith(" 1")


async def invoiced_last_year(conn: asyncpg.Connection, tenant_id: str, customer_id: str,
                             as_of: datetime) -> dict[str, tuple[int, int]]:
    """Per currency: what was invoiced in the year before `as_of` and over how many months of history."""
    rows = await conn.fetch(
        "SELECT currency, sum(amount_minor)::bigint AS total,"
        " (($2::date - min(issue_date)) / 30)::int + 1 AS months"
        " FROM risk_invoices WHERE tenant_id = $1 AND customer_id = $3 AND status <> 'cancelled'"
        " AND issue_date > $2::date - 365 AND issue_date <= $2::date GROUP BY currency",
        tenant_id, as_of.date(), customer_id)
    return {r["currency"]: (r["total"], min(12, r["months"])) for r in rows}


async def add_application(conn: asyncpg.Connection, tenant_id: str, customer_id: str, application: dict,
                          recommendation: dict, by: str | None, at: datetime) -> uuid.UUID:
    application_id = uuid.uuid4()
    await conn.execute(
        "INSERT INTO credit_applications (tenant_id, application_id, customer_id, application, recommendation,"
        " submitted_by, submitted_at) VALUES ($1, $2, $3, $4::text::jsonb, $5::text::jsonb, $6, $7)",
        tenant_id, application_id, customer_id, json.dumps(application), json.dumps(recommendation), by, at)
    return application_id


async def application(conn: asyncpg.Connection, tenant_id: str, application_id: uuid.UUID,
                      for_update: bool = False) -> dict | None:
    row = await conn.fetchrow(
        "SELECT application_id, customer_id, application::text, recommendation::text, status, decision::text,"
        " submitted_by, submitted_at, decided_by, decided_at FROM credit_applications"
        " WHERE tenant_id = $1 AND application_id = $2" + (" FOR UPDATE" if for_update else ""),
        tenant_id, application_id)
    if row is None:
        return None
    out = dict(row)
    for k in ("application", "recommendation", "decision"):
        out[k] = json.loads(out[k]) if out[k] is not None else None
    return out


async def decide_application(conn: asyncpg.Connection, tenant_id: str, application_id: uuid.UUID, status: str,
                             decision: dict, by: str | None, at: datetime) -> None:
    await conn.execute(
        "UPDATE credit_applications SET status = $3, decision = $4::text::jsonb, decided_by = $5, decided_at = $6"
        " WHERE tenant_id = $1 AND application_id = $2", tenant_id, application_id, status, json.dumps(decision), by, at)



async def latest_warnings(conn: asyncpg.Connection, tenant_id: str, customer_ids: list[str],
                          per_customer: int = 5) -> dict[str, list[dict]]:
    """The latest early warnings of each customer (the group view rolls them up)."""
    rows = await conn.fetch(
        "SELECT k.customer_id, w.* FROM unnest($2::text[]) AS k(customer_id) CROSS JOIN LATERAL ("
        "  SELECT signal, window_start, raised_at, explanation FROM risk_early_warnings e"
        "  WHERE e.tenant_id = $1 AND e.customer_id = k.customer_id ORDER BY raised_at DESC LIMIT $3) w",
        tenant_id, customer_ids, per_customer)
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["customer_id"], []).append(
            {k: r[k] for k in ("signal", "window_start", "raised_at", "explanation")})
    return out


async def place_limit_hold(conn: asyncpg.Connection, tenant_id: str, customer_id: str, currency: str, scope: str,
                           limit_minor: int | None, exposure_minor: int, at: datetime) -> None:
    await conn.execute(
        "INSERT INTO credit_holds (tenant_id, customer_id, currency, kind, scope, limit_minor, exposure_minor,"
        " placed_at) VALUES ($1, $2, $3, 'limit', $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        tenant_id, customer_id, currency, scope, limit_minor, exposure_minor, at)


async def release_limit_hold(conn: asyncpg.Connection, tenant_id: str, customer_id: str, currency: str) -> None:
    await conn.execute("DELETE FROM credit_holds WHERE tenant_id = $1 AND customer_id = $2 AND currency = $3"
                       " AND kind = 'limit'", tenant_id, customer_id, currency)


async def grades(conn: asyncpg.Connection, tenant_id: str, customer_ids: list[str]) -> dict[str, str | None]:
    return {r["customer_id"]: r["grade"] for r in await conn.fetch(
        "SELECT customer_id, grade FROM customer_risk WHERE tenant_id = $1 AND customer_id = ANY($2::text[])",
        tenant_id, customer_ids)}


async def holds_of(conn: asyncpg.Connection, tenant_id: str, customer_ids: list[str]) -> dict[str, list[dict]]:
    holds: dict[str, list[dict]] = {}
    for r in await conn.fetch(
            "SELECT customer_id, currency, kind, scope, placed_at FROM credit_holds WHERE tenant_id = $1"
            " AND customer_id = ANY($2::text[]) ORDER BY customer_id, currency", tenant_id, customer_ids):
        holds.setdefault(r["customer_id"], []).append({k: r[k] for k in ("currency", "kind", "scope", "placed_at")})
    return holds
