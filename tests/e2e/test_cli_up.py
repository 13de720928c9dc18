"""`tahsilat up` starts everything, serves, and on Ctrl-C stops every process it started."""
from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import uuid

import httpx
import pytest

from shared.db import drop_database
from tahsilat.platform import SERVICES

pytestmark = pytest.mark.e2e


def test_up_runs_until_ctrl_c_and_shuts_down_cleanly(tmp_path, kafka_bootstrap, pg_server):
    prefix = f"up_{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, TAHSILAT_HOME=str(tmp_path), KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
               DATABASE_URL=pg_server, COLUMNS="200")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tahsilat.cli", "up", "--free-ports", "--db-prefix", prefix, "--topic-prefix", f"{prefix}."],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 120
        while not any("Tahsilat is running" in line for line in lines):
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "".join(lines)
            lines.append(line)
            assert time.monotonic() < deadline, "".join(lines)
        while not any("admin API key" in line for line in lines):
            lines.append(proc.stdout.readline())
        output = "".join(lines)
        urls = dict(re.findall(r"(\w+) API docs\s*│\s*(http://127\.0\.0\.1:\d+)/docs", output))
        assert set(urls) == set(SERVICES), output
        token = re.search(r"(thk_\w+_[\w-]+)", output).group(1)
        with httpx.Client(timeout=10) as http:
            for url in urls.values():
                assert http.get(f"{url}/health/ready").status_code == 200
            r = http.get(f"{urls['invoicing']}/v1/reports/aging", headers={"X-API-Key": token})
            assert r.status_code == 200, r.text

        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
        with httpx.Client(timeout=2) as http:
            for url in urls.values():
                with pytest.raises(httpx.TransportError):
                    http.get(f"{url}/health/live")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for s in SERVICES:
            asyncio.run(drop_database(pg_server, f"{prefix}_{s}"))
