"""Runs the whole platform on one machine: broker, one database per service, the four
services (risk as API + faust stream worker), the console, and the SMTP/SMS sinks. Used by `tahsilat up`,
`tahsilat demo` and the end-to-end tests.

Once started, a supervisor thread restarts any of these processes that exits without being
asked to, with exponential backoff, and says so. The embedded broker is not restarted: it keeps
everything in memory, so when it dies the platform cannot go on (see `Platform.fatal`)."""
from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from shared.contract import Topics
from shared.db import database_name, drop_database, ensure_database, migrate, redact_url, with_database
from shared.kafka import BrokerUnavailable, ensure_topics
from tahsilat.embedded import (
    Broker, StartupError, free_port, require_free, resolve_postgres, stop_processes,
)
from tahsilat.sinks import TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN

SERVICES = ("invoicing", "dunning", "risk", "notifier")
DEFAULT_PORTS = {"invoicing": 8001, "dunning": 8002, "risk": 8003, "notifier": 8004, "console": 8005, "sinks": 8025,
                 "smtp": 2525, "broker": 9092}


RESTART_BACKOFF_BASE = 1.0  # seconds before the first restart of a crashed process
RESTART_BACKOFF_CAP = 30.0
RESTART_STABLE_AFTER = 60.0  # a process that stayed up this long starts again from the first delay
SUPERVISE_INTERVAL = 0.5


def restart_delay(failures: int, base: float = RESTART_BACKOFF_BASE, cap: float = RESTART_BACKOFF_CAP) -> float:
    """Seconds to wait before restarting a process that has now exited `failures` times in a row
    (1, 2, 4, 8 … capped): 1 s, 2 s, 4 s, …, 30 s, 30 s."""
    if failures < 1:
        raise ValueError("failures counts from 1")
    return min(cap, base * 2 ** min(failures - 1, 32))


def migrations_dir(service: str) -> Path:
    import importlib

    return Path(importlib.import_module(f"services.{service}").__file__).parent / "migrations"


@dataclass
class PlatformOptions:
    base_dir: Path = Path("var")
    topic_prefix: str = ""
    db_prefix: str = "tahsilat"
    fresh: bool = False  # drop the service databases first (the embedded broker forgets everything anyway)
    free_ports: bool = False  # tests: pick free ports instead of the defaults
    clock_file: Path | None = None
    partitions: int = 6
    poll_interval: float = 0.5
    log_level: str = "info"
    kafka_bootstrap: str | None = None  # else KAFKA_BOOTSTRAP_SERVERS, else the embedded broker
    database_url: str | None = None  # a server to create the databases on; else DATABASE_URL, else local/embedded
    extra_env: dict[str, str] = field(default_factory=dict)
    supervise: bool = True  # restart a process that exits on its own; off for tests that keep one down


@dataclass
class Process:
    name: str
    args: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen | None = None
    started_at: float = 0.0  # time.monotonic() of the last start
    stopping: bool = False  # stopped on purpose: never restarted
    failures: int = 0  # exits in a row without staying up RESTART_STABLE_AFTER seconds
    restart_at: float | None = None  # a restart is due then (monotonic)


class Platform:
    def __init__(self, options: PlatformOptions | None = None, progress: Callable[[str], None] | None = None,
                 warning: Callable[[str], None] | None = None) -> None:
        self.options = options or PlatformOptions()
        self.say = progress or (lambda _msg: None)
        self.warn = warning or self.say  # crashes, restarts, a dead broker
        self.base_dir = self.options.base_dir.resolve()
        self.log_dir = self.base_dir / "logs"
        self.broker: Broker | None = None
        self.bootstrap = ""
        self.server_url = ""
        self.database_urls: dict[str, str] = {}
        self.ports: dict[str, int] = {}
        self.processes: list[Process] = []
        self.restarts: dict[str, int] = {}  # restarts by the supervisor, per process name
        self.fatal: str | None = None  # set when the platform cannot go on (the embedded broker died)
        self._lock = threading.RLock()  # guards the processes against the supervisor thread
        self._halt = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._stopped = False

    # -- addresses -------------------------------------------------------------------------
    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    @property
    def sinks_url(self) -> str:
        return self.url("sinks")

    @property
    def topics(self) -> Topics:
        return Topics(self.options.topic_prefix)

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, timeout: float = 120.0) -> None:
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout: float) -> None:
        o = self.options
        self._stopped = False
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.ports = {k: (free_port() if o.free_ports else v) for k, v in DEFAULT_PORTS.items()}
        for name in (*SERVICES, "console", "sinks", "smtp"):
            require_free(self.ports[name], f"the {name} {'server' if name in ('sinks', 'smtp') else 'service'}")

        external = o.kafka_bootstrap or os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        if external:
            self.bootstrap = external
            self.say(f"Kafka: {external}")
        else:
            self.broker = Broker(self.ports["broker"], log_file=self.log_dir / "broker.log")
            self.bootstrap = self.broker.start()
            self.say(f"Kafka: embedded broker on {self.bootstrap}")
        asyncio.run(self._prepare_storage())

        self._spawn("sinks", ["-m", "tahsilat.sinks", "--smtp-port", str(self.ports["smtp"]),
                              "--http-port", str(self.ports["sinks"]), "--dir", str(self.base_dir / "sinks")], {})
        for service in SERVICES:
            self._spawn(service, ["-m", f"services.{service}", "serve"], self._service_env(service))
        self._spawn("risk-stream", ["-m", "services.risk", "stream"], self._service_env("risk"))
        self._spawn("console", ["-m", "services.console", "serve"], self._console_env())
        self._wait_ready(timeout)
        if o.supervise:
            self._start_supervisor()

    async def _prepare_storage(self) -> None:
        o = self.options
        if o.database_url:
            self.server_url, origin = o.database_url, redact_url(o.database_url)
        else:
            self.server_url, origin = await resolve_postgres(self.base_dir)
        self.say(f"PostgreSQL: {origin}")
        for service in SERVICES:
            name = f"{o.db_prefix}_{service}"
            if o.fresh:
                await drop_database(self.server_url, name)
            await ensure_database(self.server_url, name)
            self.database_urls[service] = with_database(self.server_url, name)
            await migrate(self.database_urls[service], migrations_dir(service))
        self.say(f"databases: {', '.join(f'{o.db_prefix}_{s}' for s in SERVICES)} (migrated)")
        try:
            await ensure_topics(self.bootstrap, self.topics.all(), o.partitions)
        except BrokerUnavailable as exc:
            raise StartupError(f"{exc}; check KAFKA_BOOTSTRAP_SERVERS or unset it to use the embedded broker") from None

    def _service_env(self, service: str) -> dict[str, str]:
        o = self.options
        env = {
            "DATABASE_URL": self.database_urls[service],
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "TOPIC_PREFIX": o.topic_prefix,
            "KAFKA_PARTITIONS": str(o.partitions),
            "HTTP_PORT": str(self.ports[service]),
            "HTTP_HOST": "127.0.0.1",
            "LOG_LEVEL": o.log_level,
            "LOG_FORMAT": "json",
            "POLL_INTERVAL_SECONDS": str(o.poll_interval),
            # Small group timeouts: joins in ~1 s instead of 5-30 s (see the broker notes in the README).
            "KAFKA_SESSION_TIMEOUT_MS": "6000",
            "KAFKA_HEARTBEAT_INTERVAL_MS": "1000",
            "KAFKA_FETCH_MAX_WAIT_MS": "20",
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(self.ports["smtp"]),
            "SMS_URL": f"{self.sinks_url}/sms",
            # SMS in the Twilio request shape, to the sink, which answers with signed status callbacks
            "SMS_PROVIDER": "twilio",
            "SMS_API_BASE": self.sinks_url,
            "SMS_ACCOUNT_SID": TWILIO_ACCOUNT_SID,
            "SMS_AUTH_TOKEN": TWILIO_AUTH_TOKEN,
            "SMS_FROM": "+15005550006",
            "WEBHOOK_ALLOW_PRIVATE_NETWORKS": "true",  # customers' "systems" here are local test servers
            "PUBLIC_BASE_URL": self.url(service),  # links in messages point at the service that answers them
            "STREAM_DATA_DIR": str(self.base_dir / "risk-stream"),
        }
        if service == "dunning":  # the link in each notice opens the customer's page on the console
            env["PORTAL_URL"] = f"{self.url('console')}/p"
        if o.clock_file:
            env["CLOCK_FILE"] = str(o.clock_file)
        return env | o.extra_env

    def _console_env(self) -> dict[str, str]:
        """The console: pages over the three APIs; a session secret of this run (a restart of
        `tahsilat up` signs everyone out)."""
        o = self.options
        self._session_secret = getattr(self, "_session_secret", None) or secrets.token_urlsafe(32)
        env = {"DUNNING_URL": self.url("dunning"), "INVOICING_URL": self.url("invoicing"), "RISK_URL": self.url("risk"),
               "SESSION_SECRET": self._session_secret, "HTTP_PORT": str(self.ports["console"]),
               "HTTP_HOST": "127.0.0.1", "LOG_LEVEL": o.log_level, "LOG_FORMAT": "json"}
        if o.clock_file:
            env["CLOCK_FILE"] = str(o.clock_file)
        return env

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> None:
        process = Process(name, [sys.executable, *args], env, self.log_dir / f"{name}.log")
        self._launch(process)
        with self._lock:
            self.processes.append(process)
            self.restarts.setdefault(name, 0)

    @staticmethod
    def _launch(process: Process, now: float | None = None) -> None:
        """Start (or start again) the process; its output goes on appending to its log."""
        with open(process.log, "ab") as out:
            process.proc = subprocess.Popen(
                process.args, env={**os.environ, **process.env, "PYTHONUNBUFFERED": "1"}, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        process.started_at = time.monotonic() if now is None else now
        process.restart_at = None

    def _wait_ready(self, timeout: float) -> None:
        pending = {"sinks": f"{self.sinks_url}/health",
                   **{s: f"{self.url(s)}/health/ready" for s in (*SERVICES, "console")}}
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2) as client:
            while pending:
                self._check_alive()
                for name, url in list(pending.items()):
                    try:
                        if client.get(url).status_code == 200:
                            del pending[name]
                            self.say(f"{name} ready")
                    except httpx.HTTPError:
                        pass
                if time.monotonic() > deadline:
                    raise StartupError(f"not ready after {timeout:.0f} s: {', '.join(pending)}; see {self.log_dir}")
                time.sleep(0.2)

    def _check_alive(self) -> None:
        for p in self.processes:
            if p.proc is not None and p.proc.poll() is not None:
                tail = p.log.read_text(errors="replace").strip().splitlines()[-5:] if p.log.exists() else []
                raise StartupError(f"{p.name} exited with code {p.proc.returncode}: " + " | ".join(tail))

    def exited(self) -> dict[str, int]:
        """Processes that have stopped on their own (not by stop_process()), with their exit codes;
        the supervisor restarts them after their backoff."""
        with self._lock:
            return {p.name: p.proc.returncode for p in self.processes
                    if p.proc is not None and not p.stopping and p.proc.poll() is not None}

    # -- supervision -----------------------------------------------------------------------
    def _start_supervisor(self) -> None:
        self._halt.clear()
        self._supervisor = threading.Thread(target=self._supervise_loop, name="tahsilat-supervisor", daemon=True)
        self._supervisor.start()

    def _supervise_loop(self) -> None:
        while not self._halt.wait(SUPERVISE_INTERVAL):
            try:
                self.supervise()
            except Exception as exc:  # noqa: BLE001 - the supervisor must outlive one bad pass
                self.warn(f"supervisor: {type(exc).__name__}: {exc}")
            if self.fatal:
                return

    def supervise(self, now: float | None = None) -> None:
        """One pass of the supervisor (its thread runs one every SUPERVISE_INTERVAL): notice
        processes that exited on their own and schedule their restart with backoff, restart
        those whose delay has passed, and notice a dead embedded broker."""
        if not self.options.supervise or self.fatal:
            return
        now = time.monotonic() if now is None else now
        messages: list[str] = []
        with self._lock:
            if self._stopped:
                return
            broker = self.broker.proc if self.broker is not None else None
            if broker is not None and broker.poll() is not None:
                self.fatal = (f"the Kafka broker exited with code {broker.returncode}; the platform cannot continue"
                              f" (the broker kept everything in memory): restart tahsilat up")
                messages.append(self.fatal)
            else:
                for p in self.processes:
                    if p.stopping or p.proc is None:
                        continue
                    if p.restart_at is None:
                        code = p.proc.poll()
                        if code is None:
                            continue
                        p.failures = 1 if now - p.started_at >= RESTART_STABLE_AFTER else p.failures + 1
                        delay = restart_delay(p.failures)
                        p.restart_at = now + delay
                        messages.append(f"{p.name} exited with code {code}; restarting in {delay:g} s"
                                        f" (restart {self.restarts.get(p.name, 0) + 1}); log: {p.log}")
                    elif now >= p.restart_at:
                        try:
                            self._launch(p, now)
                        except OSError as exc:
                            p.failures += 1
                            delay = restart_delay(p.failures)
                            p.restart_at = now + delay
                            messages.append(f"{p.name} could not be restarted ({exc}); trying again in {delay:g} s")
                            continue
                        self.restarts[p.name] = self.restarts.get(p.name, 0) + 1
                        messages.append(f"{p.name} restarted (pid {p.proc.pid})")
        for message in messages:  # outside the lock: the callback may be slow (a console)
            self.warn(message)

    def _stop_supervisor(self) -> None:
        self._halt.set()
        thread, self._supervisor = self._supervisor, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(10)

    # -- stopping on purpose ---------------------------------------------------------------
    def restart(self, name: str) -> None:
        """Stop one process and start it again (tests: downtime and catch-up). Not counted in
        `restarts`, which counts the supervisor's."""
        self.stop_process(name)
        with self._lock:
            p = next(p for p in self.processes if p.name == name)
            self._launch(p)
            p.failures = 0
            p.stopping = False

    def stop_process(self, name: str) -> None:
        """Stop one process; the supervisor leaves it down (until restart())."""
        with self._lock:
            procs = []
            for p in self.processes:
                if p.name == name:
                    p.stopping = True
                    p.restart_at = None
                    if p.proc is not None:
                        procs.append(p.proc)
        stop_processes(procs, grace=8)

    async def drop_databases(self) -> None:
        for url in self.database_urls.values():
            await drop_database(self.server_url, database_name(url))

    def add_replica(self, service: str) -> str:
        """Start one more process of `service` on the same database and consumer groups (on a port
        of its own: `url(name)`), as a second Kubernetes replica would run; returns its name."""
        with self._lock:
            n = sum(1 for p in self.processes if p.name.startswith(f"{service}-"))
        name = f"{service}-{n + 2}"
        self.ports[name] = free_port()
        self._spawn(name, ["-m", f"services.{service}", "serve"],
                    self._service_env(service) | {"HTTP_PORT": str(self.ports[name])})
        return name

    def pid(self, name: str) -> int | None:
        """The process id of process `name` (None if it is not running)."""
        with self._lock:
            p = next((p for p in self.processes if p.name == name), None)
        return p.proc.pid if p is not None and p.proc is not None and p.proc.poll() is None else None

    def stop(self) -> None:
        self._stop_supervisor()
        with self._lock:
            self._stopped = True
            processes = list(reversed(self.processes))
            for p in processes:
                p.stopping = True
            self.processes.clear()
        # Services first (together), the broker last, so no client is left looping on a dead broker.
        stop_processes([p.proc for p in processes if p.proc is not None], grace=8)
        if self.broker is not None:
            self.broker.stop()
            self.broker = None

    def describe(self) -> dict[str, str]:
        return {
            "console for collectors and managers": f"{self.url('console')}/",
            **{f"{s} API docs": f"{self.url(s)}/docs" for s in SERVICES},
            "captured emails and SMS": f"{self.sinks_url}/",
            "mailbox files": str(self.base_dir / "sinks" / "mailbox"),
            "SMS log": str(self.base_dir / "sinks" / "sms.jsonl"),
            "metrics": ", ".join(f"{self.url(s)}/metrics" for s in (*SERVICES, "console")),
            "logs": str(self.log_dir),
            "Kafka": self.bootstrap,
            "PostgreSQL": redact_url(self.server_url),
        }
