"""Runs the whole platform on one machine: broker, one database per service, the four
services (risk as API + faust stream worker), and the SMTP/SMS sinks. Used by `tahsilat up`,
`tahsilat demo` and the end-to-end tests."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from shared.contract import Topics
from shared.db import ensure_database, drop_database, migrate, redact_url, with_database
from shared.kafka import BrokerUnavailable, ensure_topics
from tahsilat.embedded import Broker, StartupError, free_port, require_free, resolve_postgres, stop_process

SERVICES = ("invoicing", "dunning", "risk", "notifier")
DEFAULT_PORTS = {"invoicing": 8001, "dunning": 8002, "risk": 8003, "notifier": 8004, "sinks": 8025, "smtp": 2525,
                 "broker": 9092}


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


@dataclass
class Process:
    name: str
    args: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen | None = None


class Platform:
    def __init__(self, options: PlatformOptions | None = None, progress: Callable[[str], None] | None = None) -> None:
        self.options = options or PlatformOptions()
        self.say = progress or (lambda _msg: None)
        self.base_dir = self.options.base_dir.resolve()
        self.log_dir = self.base_dir / "logs"
        self.broker: Broker | None = None
        self.bootstrap = ""
        self.server_url = ""
        self.database_urls: dict[str, str] = {}
        self.ports: dict[str, int] = {}
        self.processes: list[Process] = []

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
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.ports = {k: (free_port() if o.free_ports else v) for k, v in DEFAULT_PORTS.items()}
        for name in (*SERVICES, "sinks", "smtp"):
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
        self._wait_ready(timeout)

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
            "PUBLIC_BASE_URL": self.url(service),  # links in messages point at the service that answers them
            "STREAM_DATA_DIR": str(self.base_dir / "risk-stream"),
        }
        if o.clock_file:
            env["CLOCK_FILE"] = str(o.clock_file)
        return env | o.extra_env

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> None:
        log = self.log_dir / f"{name}.log"
        process = Process(name, [sys.executable, *args], env, log)
        out = open(log, "ab")
        process.proc = subprocess.Popen(
            process.args, env={**os.environ, **env, "PYTHONUNBUFFERED": "1"}, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        out.close()
        self.processes.append(process)

    def _wait_ready(self, timeout: float) -> None:
        pending = {"sinks": f"{self.sinks_url}/health", **{s: f"{self.url(s)}/health/ready" for s in SERVICES}}
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
        """Processes that have stopped on their own, with their exit codes."""
        return {p.name: p.proc.returncode for p in self.processes if p.proc is not None and p.proc.poll() is not None}

    def restart(self, name: str) -> None:
        """Stop one process and start it again (tests: downtime and catch-up)."""
        self.stop_process(name)
        p = next(p for p in self.processes if p.name == name)
        self.processes.remove(p)
        self._spawn(name, p.args[1:], p.env)

    def stop_process(self, name: str) -> None:
        for p in self.processes:
            if p.name == name and p.proc is not None:
                stop_process(p.proc, grace=8)

    async def drop_databases(self) -> None:
        for url in self.database_urls.values():
            await drop_database(self.server_url, url.rsplit("/", 1)[-1].split("?")[0])

    def stop(self) -> None:
        # Services first, the broker last, so no client is left looping on a dead broker.
        for p in reversed(self.processes):
            if p.proc is not None:
                stop_process(p.proc, grace=8)
        self.processes.clear()
        if self.broker is not None:
            self.broker.stop()
            self.broker = None

    def describe(self) -> dict[str, str]:
        return {
            **{f"{s} API docs": f"{self.url(s)}/docs" for s in SERVICES},
            "captured emails and SMS": f"{self.sinks_url}/",
            "mailbox files": str(self.base_dir / "sinks" / "mailbox"),
            "SMS log": str(self.base_dir / "sinks" / "sms.jsonl"),
            "metrics": ", ".join(f"{self.url(s)}/metrics" for s in SERVICES),
            "logs": str(self.log_dir),
            "Kafka": self.bootstrap,
            "PostgreSQL": redact_url(self.server_url),
        }
