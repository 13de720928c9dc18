"""`tahsilat up` supervises: a service killed with kill -9 is restarted with backoff, the console
says so, and the service answers again (issue #7)."""
from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import uuid

import httpx
import psutil
import pytest

from shared.db import drop_database
from tahsilat.platform import SERVICES
from tests.support import wait_for

pytestmark = pytest.mark.e2e


def service_pid(parent: int, service: str) -> int:
    """The PID of `python -m services.<service> serve` started by the `tahsilat up` process."""
    [child] = [c for c in psutil.Process(parent).children()
               if c.cmdline()[-2:] == [f"services.{service}", "serve"]]
    return child.pid


async def test_up_restarts_a_service_killed_with_kill_9(tmp_path, kafka_bootstrap, pg_server):
    prefix = f"sup_{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, TAHSILAT_HOME=str(tmp_path), KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
               DATABASE_URL=pg_server, COLUMNS="300")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tahsilat.cli", "up", "--free-ports", "--db-prefix", prefix, "--topic-prefix", f"{prefix}."],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    lines: list[str] = []

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    async def said(pattern: str) -> re.Match | None:
        match = re.search(pattern, "".join(lines))
        if match is None and proc.poll() is not None and not reader.is_alive():
            raise AssertionError(f"tahsilat up exited with code {proc.returncode}:\n{''.join(lines)}")
        return match

    try:
        await wait_for(lambda: said(r"admin API key"), 120, 0.1, "tahsilat up to be running")
        urls = dict(re.findall(r"(\w+) API docs\s*│\s*(http://127\.0\.0\.1:\d+)/docs", "".join(lines)))
        assert set(urls) == set(SERVICES), "".join(lines)
        dunning = urls["dunning"]
        killed = service_pid(proc.pid, "dunning")

        os.kill(killed, signal.SIGKILL)

        await wait_for(lambda: said(r"dunning exited with code -9; restarting in 1 s \(restart 1\)"), 20, 0.1,
                       "the console to say dunning will be restarted")
        restarted = await wait_for(lambda: said(r"dunning restarted \(pid (\d+)\)"), 20, 0.1,
                                   "the console to say dunning was restarted")
        new_pid = int(restarted.group(1))
        assert new_pid != killed and service_pid(proc.pid, "dunning") == new_pid

        async with httpx.AsyncClient(timeout=5) as http:
            async def ready() -> bool:
                try:
                    return (await http.get(f"{dunning}/health/ready")).status_code == 200
                except httpx.TransportError:
                    return False

            await wait_for(ready, 60, 0.2, "dunning to be ready again")
        output = "".join(lines)
        assert "(restart 2)" not in output, output
        assert proc.poll() is None, output

        # Ctrl-C still stops everything, and nothing is restarted on the way out.
        proc.send_signal(signal.SIGINT)
        try:
            code = await asyncio.to_thread(proc.wait, 60)
        except subprocess.TimeoutExpired:
            raise AssertionError("tahsilat up did not stop within 60 s of Ctrl-C; it said:\n"
                                 + "".join(lines)) from None
        assert code == 0, "".join(lines)
        reader.join(10)
        output = "".join(lines)
        assert len(re.findall(r"dunning restarted", output)) == 1, output
        assert not re.search(r"(restarting in|restarted \(pid)", output.split("stopping…")[-1]), output
    finally:
        if proc.poll() is None:  # the test failed midway: its processes run in sessions of their own
            children = psutil.Process(proc.pid).children()
            os.killpg(proc.pid, signal.SIGKILL)
            for child in children:
                child.kill()
        for s in SERVICES:
            await drop_database(pg_server, f"{prefix}_{s}")
