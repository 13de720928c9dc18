"""API keys: `thk_<key id>_<secret>`, only a SHA-256 of the secret is stored. Each key is scoped
to one tenant and one role; every query a request makes is filtered by that tenant."""
from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

import asyncpg
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import APIKeyHeader

ROLES = ("admin", "billing-source", "collector", "analytics")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="Tahsilat API key")


@dataclass(frozen=True)
class Principal:
    key_id: str
    tenant_id: str
    role: str
    source_name: str | None


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_key() -> tuple[str, str, str]:
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(24)
    return key_id, secret, f"thk_{key_id}_{secret}"


async def store_api_key(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    key_id: str,
    secret: str,
    tenant_id: str,
    role: str,
    source_name: str | None = None,
    label: str | None = None,
    expires_at: datetime | None = None,
) -> None:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    await conn.execute(
        "INSERT INTO api_keys (key_id, tenant_id, role, source_name, secret_hash, label, expires_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (key_id) DO NOTHING",
        key_id, tenant_id, role, source_name, _hash(secret), label, expires_at,
    )


# Verified keys are remembered briefly (by hash, never the secret): a revocation takes effect
# within this many seconds, and a busy API does not look up its key on every request.
AUTH_CACHE_SECONDS = 10.0
_verified: dict[tuple[int, str], tuple[float, Principal]] = {}


async def authenticate(pool: asyncpg.Pool, token: str) -> Principal | None:
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != "thk":
        return None
    _, key_id, secret = parts
    digest = _hash(secret)
    cached = _verified.get((id(pool), digest))
    now = time.monotonic()
    if cached and cached[0] > now and cached[1].key_id == key_id:
        return cached[1]
    row = await pool.fetchrow(
        "SELECT tenant_id, role, source_name, secret_hash FROM api_keys WHERE key_id = $1 AND revoked_at IS NULL"
        " AND (expires_at IS NULL OR expires_at > now())",
        key_id,
    )
    if row is None or not hmac.compare_digest(row["secret_hash"], digest):
        return None
    # Verified at most every AUTH_CACHE_SECONDS per key and process, so last_used_at is exact
    # to about that and costs no write per request.
    await pool.execute("UPDATE api_keys SET last_used_at = now() WHERE key_id = $1", key_id)
    principal = Principal(key_id=key_id, tenant_id=row["tenant_id"], role=row["role"], source_name=row["source_name"])
    if len(_verified) > 10_000:
        _verified.clear()
    _verified[(id(pool), digest)] = (now + AUTH_CACHE_SECONDS, principal)
    return principal


async def current_principal(request: Request, api_key: Annotated[str | None, Depends(_header)]) -> Principal:
    if not api_key:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing API key: send it in the X-API-Key header")
    principal = await authenticate(request.app.state.pool, api_key)
    if principal is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "invalid or revoked API key")
    limiter: RateLimiter | None = getattr(request.app.state, "rate_limiter", None)
    if limiter is not None and (wait := limiter.take(principal.key_id)) > 0:
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS,
                            f"too many requests for this API key; try again in {math.ceil(wait)} s",
                            headers={"Retry-After": str(math.ceil(wait))})
    return principal


class RateLimiter:
    """A token bucket per API key, in this process: `per_minute` requests a minute on average,
    up to `burst` at once. With several replicas behind a load balancer each has its own."""

    def __init__(self, per_minute: int, burst: int, clock=time.monotonic) -> None:
        self.rate, self.burst, self.clock = per_minute / 60.0, float(burst), clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key id -> (tokens, when)

    def take(self, key_id: str) -> float:
        """0 if the request may go now, else the seconds until it may."""
        now = self.clock()
        tokens, then = self._buckets.get(key_id, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        if tokens >= 1:
            self._buckets[key_id] = (tokens - 1, now)
            if len(self._buckets) > 100_000:  # keys are few; bound it anyway
                self._buckets.clear()
            return 0.0
        self._buckets[key_id] = (tokens, now)
        return (1 - tokens) / self.rate


def require_role(*roles: str):
    """Dependency: the caller's key must have one of `roles` (admin may do everything)."""

    async def check(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
        if principal.role != "admin" and principal.role not in roles:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN, f"role {principal.role!r} may not do this; needs one of {', '.join(roles)}"
            )
        return principal

    return check
