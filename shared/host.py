"""The process host every service shares: database (migrated), producer, outbox relay,
consumers, durable-timer loops, the HTTP API with health and metrics, and clean shutdown."""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path

import asyncpg
import uvicorn
from fastapi import FastAPI

from shared.clock import Clock, clock_from
from shared.contract import Topics
from shared.db import create_pool, migrate
from shared.http import install_error_handlers, install_health
from shared.kafka import (
    BatchHandler, BatchProcessor, ConsumerConfig, EventConsumer, Handler, RecordProcessor, ensure_topics, start_producer,
)
from shared.logging import configure_logging, get_logger
from shared.metrics import TIMERS_FIRED
from shared.outbox import OutboxRelay
from shared.settings import ServiceSettings

log = get_logger(__name__)

TimerFn = Callable[[], Awaitable[int]]


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
        self._consumer_specs: list[tuple[str, list[str], Mapping[str, Handler] | BatchHandler]] = []
        self._timers: list[tuple[str, float, TimerFn]] = []
        self._tasks: list[asyncio.Task] = []
        self._on_stop: list[Callable[[], Awaitable[None]]] = []
        self._checks: dict[str, Callable[[], Awaitable[bool]]] = {}

    # -- composition -------------------------------------------------------------------
    def consume(self, name: str, topics: list[str], handlers: Mapping[str, Handler]) -> None:
        """Register a consumer group `<prefix><service>.<name>` (runs in the worker role)."""
        self._consumer_specs.append((name, topics, handlers))

    def consume_batches(self, name: str, topics: list[str], handler: BatchHandler) -> None:
        """Register a consumer group whose handler takes raw records a batch at a time."""
        self._consumer_specs.append((name, topics, handler))

    def every(self, name: str, fn: TimerFn, interval: float | None = None) -> None:
        """Run `fn` forever (worker role); it returns how much it did, 0 means sleep a while."""
        self._timers.append((name, interval or self.settings.poll_interval_seconds, fn))

    def add_check(self, name: str, fn: Callable[[], Awaitable[bool]]) -> None:
        """An extra readiness check (e.g. a worker in another process is alive)."""
        self._checks[name] = fn

    def on_stop(self, fn: Callable[[], Awaitable[None]]) -> None:
        """Close a resource the wiring opened (an HTTP client, ...) when the service stops."""
        self._on_stop.append(fn)

    # -- lifecycle -----------------------------------------------------------------------
    async def open(self) -> None:
        """Migrate, connect to the database and the broker."""
        s = self.settings
        await migrate(s.database_url, self.migrations)
        self.pool = await create_pool(s.database_url, max_size=s.db_pool_max)
        await ensure_topics(s.kafka_bootstrap_servers, self.topics.all(), s.kafka_partitions)
        self.producer = await start_producer(s.kafka_bootstrap_servers)

    async def start_background(self) -> None:
        """Start the outbox relay, and in the worker role the consumers and timer loops."""
        s = self.settings
        self.relay = OutboxRelay(self.pool, self.producer, service=self.name, poll_interval=s.poll_interval_seconds)
        self._spawn("outbox-relay", self.relay.run())
        if s.has_role("worker"):
            for name, topics, handlers in self._consumer_specs:
                consumer = EventConsumer(
                    topics=topics,
                    processor=(self.processor(name, handlers) if isinstance(handlers, Mapping) else BatchProcessor(
                        service=self.name, name=f"{self.name}.{name}", handler=handlers, producer=self.producer,
                        dead_letter_topic=self.topics.dead_letter)),
                    config=ConsumerConfig(
                        bootstrap=s.kafka_bootstrap_servers,
                        group_id=f"{s.topic_prefix}{self.name}.{name}",
                        session_timeout_ms=s.kafka_session_timeout_ms,
                        heartbeat_interval_ms=s.kafka_heartbeat_interval_ms,
                        fetch_max_wait_ms=s.kafka_fetch_max_wait_ms,
                    ),
                )
                self.consumers.append(consumer)
                self._spawn(f"consumer:{name}", consumer.run())
            for name, interval, fn in self._timers:
                self._spawn(f"timer:{name}", self._loop(name, interval, fn))
        log.info("service started", roles=s.roles, consumers=len(self.consumers), timers=len(self._timers))

    def _spawn(self, name: str, coro) -> None:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._task_done)
        self._tasks.append(task)

    def _task_done(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("background task died", task=task.get_name(), error=repr(task.exception()))

    def processor(self, name: str, handlers: Mapping[str, Handler]) -> RecordProcessor:
        return RecordProcessor(
            service=self.name, name=f"{self.name}.{name}", handlers=handlers, pool=self.pool,
            producer=self.producer, dead_letter_topic=self.topics.dead_letter,
        )

    async def _loop(self, name: str, interval: float, fn: TimerFn) -> None:
        while True:
            try:
                done = await fn()
                if done:
                    TIMERS_FIRED.labels(self.name, name).inc(done)
                    continue
            except Exception as exc:  # noqa: BLE001 - keep the loop alive; the next tick retries
                log.warning("timer loop error", timer=name, error=repr(exc))
            await asyncio.sleep(interval)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        for fn in self._on_stop:
            with contextlib.suppress(Exception):
                await fn()
        if self.producer is not None:
            with contextlib.suppress(Exception):
                await self.producer.stop()
        if self.pool is not None:
            await self.pool.close()
        log.info("service stopped")

    async def readiness(self) -> dict[str, bool]:
        checks: dict[str, bool] = {}
        try:
            checks["database"] = self.pool is not None and await self.pool.fetchval("SELECT 1") == 1
        except Exception:  # noqa: BLE001
            checks["database"] = False
        checks["producer"] = self.producer is not None
        checks["tasks"] = bool(self._tasks) and not any(t.done() for t in self._tasks)
        for c in self.consumers:
            checks[f"consumer:{c.name}"] = c.ready.is_set()
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
                await self.start_background()
                yield
            finally:
                await self.stop()

        app = FastAPI(title=title, description=description, version="1.0.0", lifespan=lifespan)
        app.state.host = self
        install_error_handlers(app)
        install_health(app, self.readiness)
        return app


def serve(app: FastAPI, settings: ServiceSettings) -> None:
    """Run one service process until SIGINT/SIGTERM."""
    configure_logging(settings.service_name, settings.log_level, settings.log_format)
    config = uvicorn.Config(
        app, host=settings.http_host, port=settings.http_port, log_config=None, access_log=False, lifespan="on"
    )
    uvicorn.Server(config).run()


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
                                           lifespan="on"))
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
        await asyncio.wait_for(task, 60)
