"""The console's worklist of 500 tasks (issue #12): how long the page takes from request to the
last byte of HTML, against the dunning API call it is built on, in the same run.

    .venv/bin/python -m bench.console [--tasks 500] [--requests 40]

A migrated dunning database gets `--tasks` open call tasks for one collector, each for its own
customer with an open invoice and a risk grade (COPY). Dunning and the console run as they do in
`tahsilat up`, each its own uvicorn server (here in this process, on one event loop: the page
waits for the API call anyway), over real HTTP on 127.0.0.1:

1. Yardstick: `GET /v1/worklist?limit=500` on dunning with the collector's key: the JSON the page
   is built from.
2. The page: `GET /worklist` on the console with the collector's session, in English and in
   Persian (Persian digits, right to left): the API call, 500 rows formatted (money, dates,
   digits) and rendered, sent.

Prints p50 / p95 / max in ms for each, the page's time over the yardstick's, and PASS when the
page's p95 is under the goal (300 ms); never fails on a figure. The database is dropped at the end."""
from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from services.console.bootstrap import build as build_console
from services.console.settings import ConsoleSettings
from services.dunning.bootstrap import MIGRATIONS, build as build_dunning
from services.dunning.settings import DunningSettings
from shared.auth import new_key, store_api_key
from shared.clock import ManualClock
from shared.contract import Topics
from shared.db import create_pool, drop_database, ensure_database, migrate, with_database
from shared.host import serve_in_process
from shared.kafka import ensure_topics
from shared.logging import configure_logging
from tahsilat.embedded import Broker, resolve_postgres

console = Console()
NOW = datetime(2026, 6, 1, 10, 0, tzinfo=timezone.utc)
TENANT = "bench"
GOAL_MS = 300.0


async def seed(url: str, tasks: int) -> tuple[str, str]:
    """`tasks` open tasks for collector ayse; returns (collector key, manager key)."""
    pool = await create_pool(url, max_size=2)
    try:
        keys = []
        for role in ("collector", "admin"):
            key_id, secret, token = new_key()
            await store_api_key(pool, key_id=key_id, secret=secret, tenant_id=TENANT, role=role, source_name=None)
            keys.append((key_id, token))
        await pool.execute(
            "INSERT INTO collectors (tenant_id, collector_id, name, key_id, language, timezone, work_start, work_end,"
            " work_days, capacity, active, updated_at) VALUES ($1, 'ayse', 'Ayşe Yılmaz', $2, 'en', 'UTC', '09:00',"
            " '17:00', '{1,2,3,4,5}', $3, true, $4)", TENANT, keys[0][0], tasks + 10, NOW)
        grades = "ABCD"
        customers, cases, items, rows = [], [], [], []
        for n in range(tasks):
            cid, case, invoice = f"CUST-{n:05d}", uuid.uuid4(), uuid.uuid4()
            owed = 10_000 + (n * 7_919) % 5_000_000
            days = 1 + n % 120
            due = (NOW - timedelta(days=days)).date()
            customers.append((TENANT, cid, grades[n % 4], "en"))
            cases.append((TENANT, case, cid, "EUR", NOW - timedelta(days=days + 30)))
            items.append((TENANT, invoice, case, cid, f"INV-{n:06d}", "EUR", owed, owed, due, TENANT, "standard", 1,
                          NOW - timedelta(days=days)))
            rows.append((TENANT, uuid.uuid4(), f"bench:{n}", "call", case, cid, "EUR", "final_14", [invoice], owed,
                         days, owed // 100 * days, NOW - timedelta(hours=n % 48), "high_amount", "ayse", NOW, NOW))
        await pool.copy_records_to_table("dunning_customers", records=customers,
                                         columns=["tenant_id", "customer_id", "risk_grade", "language"])
        await pool.copy_records_to_table("cases", records=cases,
                                         columns=["tenant_id", "case_id", "customer_id", "currency", "opened_at"])
        await pool.copy_records_to_table("case_items", records=items, columns=[
            "tenant_id", "invoice_id", "case_id", "customer_id", "number", "currency", "amount_minor", "open_minor",
            "due_date", "policy_tenant", "policy_name", "policy_version", "joined_at"])
        await pool.copy_records_to_table("collector_tasks", records=rows, columns=[
            "tenant_id", "task_id", "source_key", "kind", "case_id", "customer_id", "currency", "step", "invoice_ids",
            "overdue_minor", "days_overdue", "priority", "due_at", "rule", "assigned_to", "assigned_at", "created_at"])
        return keys[0][1], keys[1][1]
    finally:
        await pool.close()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def timed(client: httpx.AsyncClient, url: str, n: int, progress: Progress, label: str, check) -> list[float]:
    for _ in range(3):  # warm: connections, template compilation, caches
        check(await client.get(url))
    times = []
    task = progress.add_task(label, total=n)
    for _ in range(n):
        started = time.perf_counter()
        response = await client.get(url)
        times.append((time.perf_counter() - started) * 1000)
        check(response)
        progress.advance(task)
    return times


async def run(args: argparse.Namespace, work: Path, broker: Broker) -> None:
    console.print(f"bench.console: {os.cpu_count()} cores; {args.tasks} tasks, {args.requests} requests each")
    server, origin = await resolve_postgres(work / "pg")
    name = f"bench_console_{uuid.uuid4().hex[:8]}"
    url = with_database(server, name)
    try:
        bootstrap = broker.start()
        prefix = f"benchc{uuid.uuid4().hex[:6]}."
        await ensure_topics(bootstrap, Topics(prefix).all(), 1)
        await ensure_database(server, name)
        await migrate(url, MIGRATIONS)
        with console.status(f"seeding {args.tasks} tasks (COPY)"):
            collector_key, _ = await seed(url, args.tasks)
        clock = ManualClock(NOW)
        dunning = build_dunning(DunningSettings(database_url=url, kafka_bootstrap_servers=bootstrap, topic_prefix=prefix,
                                                kafka_partitions=1, rate_limit_per_minute=0, log_level="warning",
                                                roles="api"), clock)
        async with serve_in_process(dunning) as dunning_url:
            web = build_console(ConsoleSettings(dunning_url=dunning_url, invoicing_url=dunning_url, risk_url=dunning_url,
                                                session_secret=uuid.uuid4().hex * 2, log_level="warning"))
            web.state.clock = clock
            async with serve_in_process(web) as console_url, httpx.AsyncClient(timeout=30) as http:
                figures: dict[str, list[float]] = {}

                def rows_of(r: httpx.Response) -> None:
                    r.raise_for_status()
                    shown = len(r.json()) if r.headers["content-type"].startswith("application/json") else \
                        len(re.findall(r"<tr>\s*<th scope=\"row\">", r.text))
                    if shown != args.tasks:
                        raise SystemExit(f"expected {args.tasks} tasks, got {shown}")

                with Progress(console=console, transient=True) as progress:
                    async with httpx.AsyncClient(timeout=30, headers={"X-API-Key": collector_key}) as api:
                        figures["yardstick: dunning GET /v1/worklist (JSON)"] = await timed(
                            api, f"{dunning_url}/v1/worklist?limit={args.tasks}", args.requests, progress, "API",
                            rows_of)
                    for language in ("en", "fa"):
                        http.cookies.clear()
                        r = await http.post(f"{console_url}/signin", data={"key": collector_key, "language": language})
                        if r.status_code != 303:
                            raise SystemExit(f"sign-in failed: {r.status_code} {r.text[:200]}")
                        figures[f"console GET /worklist ({language})"] = await timed(
                            http, f"{console_url}/worklist", args.requests, progress, f"page {language}", rows_of)
    finally:
        broker.stop()
        await drop_database(server, name)

    table = Table(title=f"The worklist of {args.tasks} tasks: ms per request, {args.requests} requests")
    for column in ("", "p50", "p95", "max", "x yardstick (p50)"):
        table.add_column(column, justify="right" if column else "left")
    base = statistics.median(next(iter(figures.values())))
    for label, times in figures.items():
        table.add_row(label, f"{statistics.median(times):.1f}", f"{percentile(times, 95):.1f}", f"{max(times):.1f}",
                      f"{statistics.median(times) / base:.2f}")
    console.print(table)
    worst = max(percentile(t, 95) for label, t in figures.items() if label.startswith("console"))
    verdict = "PASS" if worst < GOAL_MS else "BELOW TARGET"
    console.print(f"page p95 {worst:.1f} ms against the goal of {GOAL_MS:.0f} ms: {verdict}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.console", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--requests", type=int, default=40)
    args = parser.parse_args(argv)
    configure_logging("bench", "warning", "console")
    with tempfile.TemporaryDirectory(prefix="tahsilat-bench-console-") as tmp:
        broker = Broker(log_file=Path(tmp) / "broker.log")
        asyncio.run(run(args, Path(tmp), broker))
    return 0


if __name__ == "__main__":
    sys.exit(main())
