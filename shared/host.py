"""The process host every service shares: database (migrated), producer, outbox relay,
consumers, durable-timer loops, the HTTP API with health and metrics, and clean shutdown."""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import uvicorn
from fastapi import FastAPI

from shared.auth import RateLimiter
from shared.clock import Clock, clock_from
from shared.contract import Topics
from shared.db import create_pool, migrate
from shared.http import (
    KEEP_ALIVE_SECONDS, OpsGuard, SecurityHeaders, install_error_handlers, install_health, install_outbox_admin,
)
from shared.inbox import prune_inbox
from shared.kafka import BatchProcessor, ConsumerConfig, DeadLetters, EventConsumer, ensure_topics, start_producer
from shared.logging import configure_logging, get_logger
from shared.metrics import INBOX_PRUNED, TASK_RESTARTS, TIMERS_FIRED
from shared.outbox import OutboxRelay
from shared.processing import EventProcessor, Handler, RawBatchProcessor, RawHandler
from shared.settings import ServiceSettings
from shared.shutdown import cancel_all, finish_within

log = get_logger(__name__)

TimerFn = Callable[[], Awaitable[int]]
NextDue = Callable[[], Awaitable[datetime | None]]
Around = Callable[[EventProcessor, EventConsumer], BatchProcessor]
"""Wraps a consumer's processor in one that also sees the consumer (where its partitions stand)."""


class ServiceHost:
    def __init__(self, settings: ServiceSettings, *, migrations: Path, clock: Clock | None = None) -> None:
        self.settings = settings
        self.name = settings.service_name
        self.migrations = migrations
        self.clock: Clock = clock or clock_from(settings.clock_file)
        self.topics = Topics(settings.topic_prefix)
        self.pool: asyncpg.Pool | None = None
        self.producer = None
        self.relay: OutboxRelay | None = None
        self.consumers: list[EventConsumer] = []
        self._consumer_specs: list[tuple[str, list[str], Mapping[str, Handler] | RawHandler, str | None,
                                         Around | None]] = []
        self._timers: list[tuple[str, float, TimerFn, str | None, NextDue | None]] = []
        self._tasks: list[asyncio.Task] = []
        self._down: dict[str, str] = {}  # supervised task -> why it is down, until it is restarted
        self._on_stop: list[Callable[[], Awaitable[None]]] = []
        self._on_start: list[Callable[[], Awaitable[None]]] = []
        self._checks: dict[str, Callable[[], Awaitable[bool]]] = {}

    # -- composition -------------------------------------------------------------------
    def consume(self, name: str, topics: list[str], handlers: Mapping[str, Handler], *, group: str | None = None,
                around: Around | None = None) -> None:
        """Register a consumer group (worker role), `<prefix><service>.<name>` unless `group` names
        another, whose poll batches go through an EventProcessor: one transaction each, set-based
        handlers per event type; `around` wraps that processor (see `Around`)."""
        self._consumer_specs.append((name, topics, handlers, group, around))

    def consume_raw(self, name: str, topics: list[str], handler: RawHandler) -> None:
        """Register a consumer group whose handler takes raw records a batch at a time."""
        self._consumer_specs.append((name, topics, handler, None, None))

    def every(self, name: str, fn: TimerFn, interval: float | None = None, *, wake_on: str | None = None,
              next_due: NextDue | None = None) -> None:
        """Run `fn` forever (worker role); it returns how much it did, 0 means sleep a while: until
        the `next_due` time it reports (a durable timer's next row), a NOTIFY on channel `wake_on`
        (new rows that may be due already), or `interval` at the most."""
        self._timers.append((name, interval or self.settings.poll_interval_seconds, fn, wake_on, next_due))

    def add_check(self, name: str, fn: Callable[[], Awaitable[bool]]) -> None:
        """An extra readiness check (e.g. a worker in another process is alive)."""
        self._checks[name] = fn

    def on_start(self, fn: Callable[[], Awaitable[None]]) -> None:
        """Run once the database is migrated, before any consumer or timer starts (e.g. loading
        configuration files into the database); an error stops the start."""
        self._on_start.append(fn)

    def on_stop(self, fn: Callable[[], Awaitable[None]]) -> None:
        """Close a resource the wiring opened (an HTTP client, ...) when the service stops."""
        self._on_stop.append(fn)

    # -- lifecycle -----------------------------------------------------------------------
    async def open(self) -> None:
        """Migrate, connect to the database and the broker."""
        s = self.settings
        await migrate(s.database_url, self.migrations)
        self.pool = await create_pool(s.database_url, max_size=s.db_pool_max,
                                      statement_timeout_ms=s.db_statement_timeout_ms)
        await ensure_topics(s.kafka_bootstrap_servers, self.topics.all(), s.kafka_partitions, security=s.kafka)
        self.producer = await start_producer(s.kafka_bootstrap_servers, s.kafka)

    def dead_letters(self, consumer: str) -> DeadLetters:
        return DeadLetters(self.producer, self.topics.dead_letter, service=self.name, consumer=consumer)

    def processor(self, name: str, handlers: Mapping[str, Handler]) -> EventProcessor:
        consumer = f"{self.name}.{name}"
        return EventProcessor(service=self.name, name=consumer, handlers=handlers, pool=self.pool,
                              dead_letter=self.dead_letters(consumer))

    async def start_background(self) -> None:
        """Start the outbox relay (relay role), the consumers and timer loops (worker role), each
        supervised: a task that dies is restarted with backoff, and liveness is red meanwhile."""
        s = self.settings
        if s.has_role("relay"):
            self.relay = OutboxRelay(self.pool, self.producer, service=self.name, poll_interval=s.poll_interval_seconds)
            self._spawn("outbox-relay", self.relay.run)
        if s.has_role("worker"):
            for name, topics, handlers, group, around in self._consumer_specs:
                # several members of the group in this process: while one waits for PostgreSQL
                # another works; each partition has one member, so per-key order holds (a consumer
                # wrapped to order across partitions keeps one)
                members = 1 if around is not None else s.consumer_members
                for member in range(members):
                    self._add_consumer(name, topics, handlers, group, around,
                                       f"consumer:{name}" + (f"#{member + 1}" if members > 1 else ""))
            for name, interval, fn, wake_on, next_due in self._timers:
                self._spawn(f"timer:{name}", lambda name=name, interval=interval, fn=fn, wake_on=wake_on,
                            next_due=next_due: self._loop(name, interval, fn, wake_on, next_due))
            if self._consumer_specs:
                self._spawn("timer:inbox-prune", lambda: self._loop("inbox-prune", 3600.0, self._prune_inbox))
        log.info("service started", roles=s.roles, consumers=len(self.consumers), timers=len(self._timers))

    def _add_consumer(self, name: str, topics: list[str], handlers: Any, group: str | None, around: Any,
                      task: str) -> None:
        s = self.settings
        consumer_name = f"{self.name}.{name}"
        processor = (self.processor(name, handlers) if isinstance(handlers, Mapping) else RawBatchProcessor(
            service=self.name, name=consumer_name, handler=handlers, dead_letter=self.dead_letters(consumer_name)))
        consumer = EventConsumer(
            topics=topics, processor=processor, service=self.name,
            config=ConsumerConfig(
                bootstrap=s.kafka_bootstrap_servers,
                group_id=group or f"{s.topic_prefix}{self.name}.{name}",
                session_timeout_ms=s.kafka_session_timeout_ms,
                heartbeat_interval_ms=s.kafka_heartbeat_interval_ms,
                fetch_max_wait_ms=s.kafka_fetch_max_wait_ms,
                max_batch=s.consumer_max_batch,
                security=s.kafka,
            ),
        )
        if around is not None:
            consumer.processor = around(processor, consumer)
        self.consumers.append(consumer)
        self._spawn(task, consumer.run)

    def _spawn(self, name: str, start: Callable[[], Awaitable[None]]) -> None:
        self._tasks.append(asyncio.create_task(self._supervise(name, start), name=name))

    async def _supervise(self, name: str, start: Callable[[], Awaitable[None]]) -> None:
        """Run `start()` for ever: when it ends or raises, say so, mark the service not live,
        wait (doubling from 0.5 s to 30 s; a run of a minute resets it) and start it again."""
        loop = asyncio.get_running_loop()
        failures = 0
        while True:
            began = loop.time()
            try:
                await start()
                why = "returned"
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - whatever it was, the task comes back
                why = repr(exc)
            failures = 1 if loop.time() - began > 60 else failures + 1
            delay = min(30.0, 0.5 * 2 ** (failures - 1))
            self._down[name] = why
            TASK_RESTARTS.labels(self.name, name).inc()
            log.error("background task died; restarting it", task=name, error=why, restart_in=delay)
            try:
                await asyncio.sleep(delay)
            finally:
                self._down.pop(name, None)

    async def _loop(self, name: str, interval: float, fn: TimerFn, wake_on: str | None = None,
                    next_due: NextDue | None = None) -> None:
        wake = asyncio.Event()

        def on_notify(*_args) -> None:
            wake.set()

        listener = None
        if wake_on:
            listener = await self.pool.acquire()
            await listener.add_listener(wake_on, on_notify)
        try:
            while True:
                if listener is not None and listener.is_closed():
                    raise ConnectionError(f"lost the connection listening on {wake_on!r}")  # the host restarts us
                wake.clear()
                delay = interval
                try:
                    done = await fn()
                    if done:
                        TIMERS_FIRED.labels(self.name, name).inc(done)
                        continue
                    if next_due is not None and (due := await next_due()) is not None:
                        delay = min(interval, max(0.0, (due - self.clock.now()).total_seconds()))
                except Exception as exc:  # noqa: BLE001 - keep the loop alive; the next tick retries
                    log.warning("timer loop error", timer=name, error=repr(exc))
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(wake.wait(), delay)
        finally:
            if listener is not None:
                with contextlib.suppress(Exception):
                    await listener.remove_listener(wake_on, on_notify)
                with contextlib.suppress(Exception):
                    await self.pool.release(listener)

    async def _prune_inbox(self) -> int:
        older = self.clock.now() - timedelta(days=self.settings.inbox_retention_days)
        pruned = await prune_inbox(self.pool, older)
        INBOX_PRUNED.labels(self.name).inc(pruned)
        return pruned

    async def stop(self) -> None:
        # Each step is bounded: a replica that hangs while stopping keeps its partitions and its
        # Kubernetes slot, and the others wait for it.
        await cancel_all(self._tasks, 15, "background tasks")
        self._tasks.clear()
        for fn in self._on_stop:
            await finish_within(fn(), 5, "on-stop hook")
        if self.producer is not None:
            await finish_within(self.producer.stop(), 10, "producer stop")
        if self.pool is not None and not await finish_within(self.pool.close(), 5, "database pool close"):
            self.pool.terminate()
        log.info("service stopped")

    async def liveness(self) -> dict[str, str]:
        """Background tasks that died and wait to be restarted, with why (empty: live)."""
        return dict(self._down)

    async def readiness(self) -> dict[str, bool]:
        checks: dict[str, bool] = {}
        try:
            checks["database"] = self.pool is not None and await self.pool.fetchval("SELECT 1") == 1
        except Exception:  # noqa: BLE001
            checks["database"] = False
        checks["producer"] = self.producer is not None
        checks["tasks"] = not self._down
        for c in self.consumers:  # a consumer with several members is ready when one holds partitions
            checks[f"consumer:{c.name}"] = checks.get(f"consumer:{c.name}", False) or c.ready.is_set()
        for name, fn in self._checks.items():
            try:
                checks[name] = await fn()
            except Exception:  # noqa: BLE001
                checks[name] = False
        return checks

    # -- HTTP ----------------------------------------------------------------------------
    def create_api(self, title: str, description: str, wire: Callable[[ServiceHost, FastAPI], None]) -> FastAPI:
        """The service's FastAPI app. `wire(host, app)` runs once the pool and producer exist:
        it builds the use cases and registers consumers and timers."""

        @contextlib.asynccontextmanager
        async def lifespan(app: FastAPI) -> AsyncIterator[None]:
            await self.open()
            app.state.pool = self.pool
            try:
                wire(self, app)
                for start in self._on_start:
                    await start()
                await self.start_background()
                yield
            finally:
                await self.stop()

        app = FastAPI(title=title, description=description, version="1.0.0", lifespan=lifespan,
                      max_body_size=self.settings.max_request_bytes)
        app.state.host = self
        if self.settings.rate_limit_per_minute:
            app.state.rate_limiter = RateLimiter(self.settings.rate_limit_per_minute, self.settings.rate_limit_burst)
        # Outermost, around FastAPI's own error and body-limit middleware, so that 500s and 413s
        # carry the headers too (add_middleware would place it inside those).
        stack = app.build_middleware_stack
        ops_token = self.settings.ops_token.get_secret_value() if self.settings.ops_token else None
        app.build_middleware_stack = lambda: SecurityHeaders(OpsGuard(stack(), ops_token) if ops_token else stack())
        install_error_handlers(app)
        install_health(app, self.readiness, self.liveness)
        install_outbox_admin(app)
        return app


def serve(app: FastAPI, settings: ServiceSettings) -> None:
    """Run one service process until SIGINT/SIGTERM."""
    configure_logging(settings.service_name, settings.log_level, settings.log_format)
    config = uvicorn.Config(
        app, host=settings.http_host, port=settings.http_port, log_config=None, access_log=False, lifespan="on",
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
    )
    uvicorn.Server(config).run()


def _in_flight(server: uvicorn.Server) -> str:
    """What keeps a stopping server's connections open: the requests still being answered."""
    requests, idle = [], 0
    for connection in list(server.server_state.connections):
        cycle = getattr(connection, "cycle", None)
        if cycle is None or cycle.response_complete:
            idle += 1
        else:
            requests.append(f"{cycle.scope.get('method')} {cycle.scope.get('path')}")
    return f"requests still in flight: {requests or 'none'}; other connections open: {idle}"


@contextlib.asynccontextmanager
async def serve_in_process(app: FastAPI, host: str = "127.0.0.1", port: int = 0,
                           timeout: float = 30.0) -> AsyncIterator[str]:
    """Serve `app` (lifespan included) inside the running event loop; yields its base URL.
    Port 0 picks a free one. For tests and benchmarks that drive a service over real HTTP."""
    if port == 0:
        import socket

        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False,
                                           lifespan="on", timeout_keep_alive=KEEP_ALIVE_SECONDS))
    task = asyncio.create_task(server.serve())
    deadline = asyncio.get_running_loop().time() + timeout
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("the service stopped during start-up")
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("the service did not start")
        await asyncio.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(task), 60)
        except TimeoutError:
            task.cancel()
            raise TimeoutError(f"the service did not stop within 60 s: {_in_flight(server)}") from None
