"""PostgreSQL plumbing: pools, one database per service, ordered SQL migrations."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

SHARED_MIGRATIONS = Path(__file__).parent / "migrations"


class DatabaseUnavailable(RuntimeError):
    pass


# What a database restart, a failover, a full connection pool or a lost race between
# transactions raises: the same work succeeds later, so it is retried with backoff and never
# treated as the record's fault (never dead-lettered).
TRANSIENT_DB_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable
    asyncio.TimeoutError,  # connecting or acquiring took too long
    asyncpg.InterfaceError,  # the connection closed under us
    asyncpg.PostgresConnectionError,  # class 08
    asyncpg.OperatorInterventionError,  # class 57: admin/crash shutdown, cannot connect now, cancelled
    asyncpg.TransactionRollbackError,  # class 40: serialization failure, deadlock
    asyncpg.InsufficientResourcesError,  # class 53: too many connections, out of memory, disk full
    asyncpg.PostgresSystemError,  # class 58: I/O error
    asyncpg.ReadOnlySQLTransactionError,  # a failover left us on a standby for a moment
    asyncpg.LockNotAvailableError,
    asyncpg.IdleInTransactionSessionTimeoutError,
)


def is_statement_timeout(exc: BaseException) -> bool:
    """A statement ran past statement_timeout (or was cancelled): less work at once may pass."""
    return isinstance(exc, asyncpg.QueryCanceledError)


def is_transient(exc: BaseException) -> bool:
    """True when `exc` says the database is away or busy, not that the work itself is wrong."""
    return isinstance(exc, TRANSIENT_DB_ERRORS)


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    await conn.set_type_codec("json", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def create_pool(url: str, *, max_size: int = 10, statement_timeout_ms: int = 0) -> asyncpg.Pool:
    """`statement_timeout_ms` (0: none) ends any statement that runs longer, and a transaction
    left idle twice as long: a runaway query or a stuck client cannot hold rows and a
    connection for ever."""
    settings = {} if not statement_timeout_ms else {
        "statement_timeout": str(statement_timeout_ms),
        "idle_in_transaction_session_timeout": str(2 * statement_timeout_ms)}
    try:
        return await asyncpg.create_pool(url, min_size=1, max_size=max_size, init=_init_connection,
                                         server_settings=settings)
    except (OSError, asyncpg.PostgresError) as exc:
        raise DatabaseUnavailable(f"cannot reach the database at {redact_url(url)}: {exc}") from exc


def redact_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def with_database(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + dbname))


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


async def ensure_database(server_url: str, dbname: str) -> None:
    """Create `dbname` on the server of `server_url` unless it exists."""
    try:
        conn = await asyncpg.connect(with_database(server_url, "postgres"))
    except (OSError, asyncpg.PostgresError) as exc:
        raise DatabaseUnavailable(f"cannot reach PostgreSQL at {redact_url(server_url)}: {exc}") from exc
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", dbname)
        if not exists:
            try:
                await conn.execute(f'CREATE DATABASE "{dbname}"')
            except asyncpg.DuplicateDatabaseError:
                pass
    finally:
        await conn.close()


async def drop_database(server_url: str, dbname: str) -> None:
    conn = await asyncpg.connect(with_database(server_url, "postgres"))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
    finally:
        await conn.close()


def _migration_files(directory: Path, namespace: str) -> list[tuple[str, Path]]:
    return [(f"{namespace}:{p.stem}", p) for p in sorted(directory.glob("*.sql"))]


async def migrate(url: str, service_migrations: Path) -> list[str]:
    """Apply the shared migrations (outbox, inbox, api keys), then the service's own, each once.
    An advisory lock lets several replicas start at the same time."""
    files = _migration_files(SHARED_MIGRATIONS, "shared") + _migration_files(service_migrations, "service")
    conn = await asyncpg.connect(url)
    applied: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock(7220301)")
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, path in files:
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(path.read_text())
                await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
            applied.append(version)
        await conn.execute("SELECT pg_advisory_unlock(7220301)")
    finally:
        await conn.close()
    return applied
