"""Invoice ingestion throughput, measured against yardsticks in the same run.

    .venv/bin/python -m bench.ingest [--invoices 100000]

1. yardsticks:
   a. asyncpg COPY (`copy_records_to_table`) of the invoice rows into a bare table with the
      columns of `invoices` (no keys, no indexes): the fastest way rows get into PostgreSQL (the
      median of three such copies; the old yardstick). For reference, the same COPY into a copy
      of the real `invoices` table with its keys and indexes.
   b. the write-set COPY (the goal's yardstick, bench/writeset.py): COPY of exactly what
      ingesting the invoices writes (invoices, overdue timers, ledger entries, their InvoiceIssued
      events in the outbox, and per new customer its row and CustomerUpserted event) into the
      real tables of a freshly migrated invoicing database, in one transaction (the faster way;
      `--writeset-transactions chunk` commits every 2,000 invoices, as the ingest does), and then
      the relay's deletes of those outbox rows by id, 2,000 at a time (the median of three, each
      into a new database).
2. bulk HTTP API: the invoicing service, started as in production (`python -m services.invoicing
   serve`, its own process), receives the invoices in requests of 10,000 items from this
   process; timed until every invoice is stored AND every event is published (outbox backlog 0).
3. file import: the same number of invoices from a CSV through `import_invoices` in this process,
   as `tahsilat import invoices` runs it, timed until stored and published (the service's outbox
   relay publishes the events).

It prints invoices/s, the ratio of each path to the write-set COPY (the goal of issue #7: bulk API
and file import >= 0.50, reported as GOAL MET or BELOW GOAL, never failing), the ratio to the
bare COPY with the old targets (bulk API >= 0.10, file import >= 0.20), what each part of the
write set costs per invoice, and the peak RSS of the service and of the file import (this
process). The broker is the embedded one (or KAFKA_BOOTSTRAP_SERVERS); PostgreSQL is
DATABASE_URL, else the local server, else the embedded one. The databases it creates are
dropped at the end."""
from __future__ import annotations

import argparse
import asyncio
import csv
import ctypes
import gc
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import date, timedelta
from pathlib import Path

import asyncpg
import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench import writeset
from services.invoicing.bootstrap import MIGRATIONS
from services.invoicing.entrypoints.file_import import import_invoices
from shared.auth import new_key, store_api_key
from shared.clock import SystemClock
from shared.contract import Topics
from shared.db import create_pool, drop_database, ensure_database, migrate, with_database
from shared.logging import configure_logging
from tahsilat.embedded import Broker, free_port, resolve_postgres

TENANT = "bench"
BARE = "COPY, bare table"  # the old yardstick
CEILING = "COPY into invoices"  # the real table, its keys and indexes, nothing else of the write set
WRITESET = "COPY of the write set"  # the goal's yardstick (issue #7)
GOAL = 0.50  # bulk API and file import, to the write-set COPY
OLD_TARGETS = {"bulk API": 0.10, "file import": 0.20}  # to the bare COPY, before issue #7
LANGUAGES = ("en", "tr", "cs", "fa")
TODAY = date.today()
STORED: dict[str, float] = {}  # seconds until every invoice was stored (the rest is the relay catching up)
ZONES = ("Europe/Istanbul", "Europe/Prague", "Asia/Tehran", "Europe/London")
console = Console(width=max(Console().width, 120))


def peak_rss_mb(pid: int | None = None) -> float:
    """Peak resident memory of this process, or of another one (its VmHWM, since the last reset)."""
    try:
        for line in Path(f"/proc/{pid or 'self'}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    if pid is None:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    return float("nan")


def reset_peak_rss() -> None:
    """Start this process's peak RSS afresh (Linux: clear_refs 5), so that the file import's peak
    is its own and not the yardsticks' rows'; where that is not allowed the peak includes them."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # glibc keeps freed memory mapped until asked
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


class InvoicingProcess:
    """`python -m services.invoicing serve` on a free port, API and outbox relay (roles api and
    relay; no consumers or timers: nothing else runs), until stopped."""

    def __init__(self, database_url: str, bootstrap: str, prefix: str, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "DATABASE_URL": database_url, "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
               "TOPIC_PREFIX": prefix, "KAFKA_PARTITIONS": "6", "HTTP_HOST": "127.0.0.1", "HTTP_PORT": str(self.port),
               "POLL_INTERVAL_SECONDS": "0.2", "LOG_LEVEL": "warning",
               "ROLES": "api,relay"}  # the relay runs only in the relay role (not in "api")
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "services.invoicing", "serve"], env=env, stdout=out,
                                         stderr=subprocess.STDOUT)

    async def ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=2) as http:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the invoicing service exited ({self.proc.returncode}); see {self.log}")
                try:
                    if (await http.get(f"{self.url}/health/ready")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the invoicing service was not ready after {timeout} s; see {self.log}")
                await asyncio.sleep(0.1)

    async def published(self) -> int:
        """Events its outbox relay has published (its metrics)."""
        async with httpx.AsyncClient(timeout=5) as http:
            text = (await http.get(f"{self.url}/metrics")).text
        return sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
                   if line.startswith("tahsilat_outbox_published_total{"))

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# -- the data --------------------------------------------------------------------------------------

def invoice(i: int, customers: int, prefix: str) -> dict:
    """The i-th invoice: an InvoiceRecord dict with its customer's master data."""
    c = i % customers
    issue = TODAY - timedelta(days=i % 30)  # due in the future: no overdue events during the run
    return {
        "external_id": f"{prefix}-{i:08d}",
        "number": f"{prefix}/{i:08d}",
        "customer": {"id": f"CUST-{c:06d}", "name": f"Customer {c}", "language": LANGUAGES[c % 4],
                     "timezone": ZONES[c % 4], "email": f"ap{c}@customer{c}.example"},
        "currency": "EUR",
        "amount_minor": 1000 + (i * 7919) % 5_000_000,
        "issue_date": issue.isoformat(),
        "due_date": (issue + timedelta(days=45)).isoformat(),
    }


def copy_row(i: int, customers: int, prefix: str, issued_at) -> tuple:
    r = invoice(i, customers, prefix)
    issue, due = date.fromisoformat(r["issue_date"]), date.fromisoformat(r["due_date"])
    return (TENANT, uuid.uuid4(), "erp", r["external_id"], r["customer"]["id"], r["number"], r["currency"],
            r["amount_minor"], r["amount_minor"], issue, due, "open", issued_at, None, 1, None)


def write_csv(path: Path, n: int, customers: int, prefix: str) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["external_id", "number", "customer_id", "customer_name", "customer_language", "customer_timezone",
                    "customer_email", "currency", "amount", "issue_date", "due_date"])
        for i in range(n):
            r = invoice(i, customers, prefix)
            c = r["customer"]
            w.writerow([r["external_id"], r["number"], c["id"], c["name"], c["language"], c["timezone"], c["email"],
                        r["currency"], f"{r['amount_minor'] // 100}.{r['amount_minor'] % 100:02d}", r["issue_date"],
                        r["due_date"]])


# -- helpers ---------------------------------------------------------------------------------------

async def until_published(pool: asyncpg.Pool, expected_invoices: int, source: str, progress: Progress,
                          timeout: float = 1800, stall: float = 120) -> None:
    """Wait until `expected_invoices` invoices of `source` are stored and the outbox is drained."""
    task = progress.add_task("relay: outbox backlog", total=None)
    deadline = time.monotonic() + timeout
    last, moved = None, time.monotonic()
    while True:
        stored = await pool.fetchval("SELECT count(*) FROM invoices WHERE tenant_id = $1 AND billing_source = $2",
                                     TENANT, source)
        backlog = await pool.fetchval("SELECT count(*) FROM outbox")
        progress.update(task, description=f"relay: outbox backlog {backlog:,}")
        if stored >= expected_invoices and backlog == 0:
            progress.update(task, total=1, completed=1)
            return
        if backlog != last:
            last, moved = backlog, time.monotonic()
        if time.monotonic() > deadline:
            raise TimeoutError(f"not published after {timeout} s: {stored} stored, backlog {backlog}")
        if time.monotonic() - moved > stall:
            raise TimeoutError(f"the outbox relay published nothing for {stall:.0f} s (backlog {backlog:,}):"
                               " is a relay running?")
        await asyncio.sleep(0.05)


def progress_display() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True)


# -- the three measurements ------------------------------------------------------------------------

COPY_COLUMNS = ("tenant_id", "invoice_id", "billing_source", "external_id", "customer_id", "number", "currency",
                "amount_minor", "open_minor", "issue_date", "due_date", "status", "issued_at", "paid_at", "version",
                "cancelled_at")


async def yardsticks(server: str, n: int, customers: int) -> tuple[float, float]:
    """Seconds to COPY the rows into a bare table (the old yardstick), and into a copy of the real
    `invoices` table with its keys and indexes (the invoices alone, none of the rest of the write
    set); each the median of three copies, since a run of a few tenths of a second is noisy."""
    name = f"bench_{uuid.uuid4().hex[:8]}_copy"
    await ensure_database(server, name)
    try:
        await migrate(with_database(server, name), MIGRATIONS)
        conn = await asyncpg.connect(with_database(server, name))
        try:
            now = SystemClock().now()
            rows = [copy_row(i, customers, "INV", now) for i in range(n)]
            medians = []
            with progress_display() as progress:
                task = progress.add_task("COPY into a bare table, then into invoices: copies", total=6)
                for like in ("", " INCLUDING ALL"):
                    timings = []
                    for attempt in range(3):
                        table = f"copy_{len(medians)}_{attempt}"
                        if like:
                            await conn.execute(f"CREATE TABLE {table} (LIKE invoices{like})")
                        else:
                            await conn.execute(f"CREATE TABLE {table} ({_BARE_COLUMNS})")
                        started = time.perf_counter()
                        await conn.copy_records_to_table(table, records=rows, columns=COPY_COLUMNS)
                        timings.append(time.perf_counter() - started)
                        assert await conn.fetchval(f"SELECT count(*) FROM {table}") == n
                        progress.advance(task)
                    medians.append(sorted(timings)[1])
        finally:
            await conn.close()
    finally:
        await drop_database(server, name)
    return medians[0], medians[1]


async def writeset_yardstick(server: str, n: int, customers: int, topic: str,
                             one_transaction: bool) -> tuple[writeset.Timing, list[writeset.Timing]]:
    """The goal's yardstick (bench/writeset.py): the write set of ingesting the invoices (the
    bulk API's, billing source "erp") COPY'd into the real tables of a freshly migrated invoicing
    database, and its outbox rows deleted by id as the relay deletes them; three times, each
    into a new database. Returns the median attempt (by total time) and all three."""
    now = SystemClock().now()
    invoices = [invoice(i, customers, "INV") for i in range(n)]
    timings: list[writeset.Timing] = []
    chunks: list[writeset.Chunk] | None = None
    with progress_display() as progress:
        for attempt in range(3):
            name = f"bench_{uuid.uuid4().hex[:8]}_writeset"
            await ensure_database(server, name)
            try:
                await migrate(with_database(server, name), MIGRATIONS)
                conn = await asyncpg.connect(with_database(server, name))
                try:
                    if chunks is None:  # built once (PostgreSQL builds the envelopes: nothing is written)
                        task = progress.add_task("write set: invoices prepared", total=n)
                        chunks = await writeset.build(
                            conn, invoices, tenant=TENANT, source="erp", topic=topic, now=now,
                            progress=lambda done: progress.update(task, completed=done))
                        progress.remove_task(task)
                        rows = sum(len(r) for c in chunks for r in c.rows.values())
                    task = progress.add_task(f"write set: COPY {attempt + 1}/3, rows", total=rows)
                    timing = await writeset.copy(conn, chunks, one_transaction=one_transaction,
                                                 progress=lambda done: progress.update(task, completed=done))
                    progress.remove_task(task)
                    counts = {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in writeset.TABLES}
                    expected = {"customers": min(n, customers), "invoices": n, "overdue_timers": n,
                                "ledger_entries": n, "outbox": 0}
                    if counts != expected:
                        raise RuntimeError(f"write-set COPY: rows {counts}, expected {expected}")
                    timings.append(timing)
                finally:
                    await conn.close()
            finally:
                await drop_database(server, name)
    return sorted(timings, key=lambda t: t.total)[1], timings


_BARE_COLUMNS = ", ".join(f"{c} {t}" for c, t in zip(COPY_COLUMNS, (
    "text", "uuid", "text", "text", "text", "text", "char(3)", "bigint", "bigint", "date", "date", "text", "timestamptz",
    "timestamptz", "int", "timestamptz")))  # no keys, no indexes


async def post_invoices(http: httpx.AsyncClient, token: str, items: list[dict]) -> None:
    """One bulk request that must create every item (a benchmark measures nothing otherwise)."""
    r = await http.post("/v1/invoices/bulk", json={"items": items}, headers={"X-API-Key": token})
    r.raise_for_status()
    summary = r.json()["summary"]
    if summary["created"] != len(items):
        raise RuntimeError(f"bulk API: unexpected summary {summary}")


async def bulk_api(url: str, pool: asyncpg.Pool, n: int, customers: int, batch: int, concurrency: int) -> float:
    key_id, secret, admin = new_key()
    await store_api_key(pool, key_id=key_id, secret=secret, tenant_id=TENANT, role="admin")
    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        r = await http.post("/v1/billing-sources", json={"name": "erp", "default_currency": "EUR"},
                            headers={"X-API-Key": admin})
        r.raise_for_status()
        token = r.json()["api_key"]
        requests = [[invoice(i, customers, "INV") for i in range(s, min(s + batch, n))] for s in range(0, n, batch)]
        with progress_display() as progress:
            task = progress.add_task("bulk API: invoices posted", total=n)
            started = time.perf_counter()
            pending = iter(requests)

            async def client() -> None:  # one of `concurrency` clients posting the next request
                for items in pending:
                    await post_invoices(http, token, items)
                    progress.advance(task, len(items))

            await asyncio.gather(*(client() for _ in range(concurrency)))
            STORED["bulk API"] = time.perf_counter() - started
            await until_published(pool, n, "erp", progress)
            return time.perf_counter() - started


async def file_import(pool: asyncpg.Pool, topics: Topics, path: Path, n: int) -> float:
    await pool.execute("INSERT INTO billing_sources (tenant_id, name, default_currency) VALUES ($1, 'file', 'EUR')",
                       TENANT)
    with progress_display() as progress:
        task = progress.add_task("file import: rows", total=n)
        started = time.perf_counter()
        summary = await import_invoices(pool, SystemClock(), topics, tenant_id=TENANT, source="file", path=path,
                                        rejects_path=path.with_suffix(".rejects.csv"),
                                        progress=lambda rows, *_: progress.update(task, completed=rows))
        if summary.counts["created"] != n:
            raise RuntimeError(f"file import: unexpected counts {summary.counts}")
        STORED["file import"] = time.perf_counter() - started
        await until_published(pool, n, "file", progress)
        return time.perf_counter() - started


# -- main ------------------------------------------------------------------------------------------

async def run(n: int, customers: int, batch: int, concurrency: int, work: Path, bootstrap: str,
              one_transaction: bool) -> None:
    server, origin = await resolve_postgres(work / "pg")
    console.print(f"PostgreSQL: {origin}; broker: {bootstrap}; {n:,} invoices, {customers:,} customers")
    results: dict[str, float] = {}
    prefix = f"bench{uuid.uuid4().hex[:6]}."

    console.print("[bold]1/4[/bold] yardsticks: COPY into a bare table, and into `invoices` with its indexes …")
    results[BARE], results[CEILING] = await yardsticks(server, n, customers)
    console.print(f"    {n / results[BARE]:,.0f} and {n / results[CEILING]:,.0f} invoices/s")

    mode = "one transaction in all" if one_transaction else f"a transaction per {writeset.CHUNK:,} invoices"
    console.print(f"[bold]2/4[/bold] yardstick of the goal: COPY of the write set into a migrated database ({mode}),"
                  f" then the relay's deletes, {writeset.RELAY_BATCH:,} rows each …")
    median, attempts = await writeset_yardstick(server, n, customers, Topics(prefix).invoicing, one_transaction)
    results[WRITESET] = median.total
    STORED[WRITESET] = median.stored
    console.print(f"    {n / median.total:,.0f} invoices/s (three copies: "
                  f"{', '.join(f'{n / t.total:,.0f}' for t in attempts)}); peak RSS {peak_rss_mb():,.0f} MB")

    with progress_display() as progress:
        progress.add_task("writing the CSV", total=None)
        csv_path = work / "invoices.csv"
        write_csv(csv_path, n, customers, "FILE")
    reset_peak_rss()  # the yardsticks' rows are gone: the file import's peak is its own
    name = f"bench_{uuid.uuid4().hex[:8]}_invoicing"
    await ensure_database(server, name)
    try:
        url = with_database(server, name)
        await migrate(url, MIGRATIONS)
        service = InvoicingProcess(url, bootstrap, prefix, work / "invoicing.log")
        pool = await create_pool(url, max_size=8)
        try:
            with progress_display() as progress:
                progress.add_task("starting the invoicing service", total=None)
                await service.ready()
            console.print(f"[bold]3/4[/bold] bulk HTTP API: {-(-n // batch)} requests of {batch:,} items,"
                          f" {concurrency} at a time …")
            results["bulk API"] = await bulk_api(service.url, pool, n, customers, batch, concurrency)
            console.print(f"    {n / results['bulk API']:,.0f} invoices/s; peak RSS of the service"
                          f" {peak_rss_mb(service.proc.pid):,.0f} MB")

            console.print(f"[bold]4/4[/bold] file import: {csv_path.stat().st_size / 2**20:,.1f} MB CSV …")
            results["file import"] = await file_import(pool, Topics(prefix), csv_path, n)
            console.print(f"    {n / results['file import']:,.0f} invoices/s; peak RSS of the import"
                          f" {peak_rss_mb():,.0f} MB")
            events = await service.published()
            service_rss = peak_rss_mb(service.proc.pid)
        finally:
            await pool.close()
            service.stop()
    finally:
        await drop_database(server, name)

    bare, goal_base = n / results[BARE], n / results[WRITESET]
    table = Table(title=f"ingesting {n:,} invoices (stored and published)",
                  caption=f"THE GOAL (issue #7): bulk API and file import >= {GOAL:.2f} of the write-set COPY"
                          " (the GOAL RATIO column)")
    for col in ("path", "stored s", "published s", "invoices/s", "to bare COPY", "old target",
                "GOAL RATIO: to write-set COPY", f"goal >= {GOAL:.2f}"):
        table.add_column(col, justify="left" if col in ("path", "old target") or col.startswith("goal") else "right",
                         no_wrap=col == "path")
    for path, seconds in results.items():
        rate = n / seconds
        old = OLD_TARGETS.get(path)
        old_cell = "" if old is None else f"{old:.2f} {'met' if rate / bare >= old else 'not met'}"
        goal = ""
        if path in OLD_TARGETS:
            goal = "[green]MET[/green]" if rate / goal_base >= GOAL else "[red]BELOW GOAL[/red]"
        elif path == WRITESET:
            goal = "(yardstick)"
        stored = STORED.get(path)
        table.add_row(path, "" if stored is None else f"{stored:.2f}", f"{seconds:.2f}", f"{rate:,.0f}",
                      f"{rate / bare:.3f}", old_cell, f"[bold]{rate / goal_base:.3f}[/bold]", goal)
    console.print(table)
    console.print(f"{BARE}: the invoice rows alone into a table without keys or indexes (the old yardstick)."
                  f" {CEILING}: the same rows into a copy of the real table with its keys and indexes. {WRITESET}:"
                  f" every row ingesting writes (invoices, timers, ledger entries, customers, outbox) into the real"
                  f" tables, {mode}; stored after = the COPYs and commits, published after = with the relay's"
                  f" deletes of the outbox rows by id.")

    parts = Table(title=f"{WRITESET}: where its time goes (the median of the three copies)")
    for col in ("part", "rows", "s", "µs per invoice", "share"):
        parts.add_column(col, justify="left" if col == "part" else "right")
    rows = {"customers": min(n, customers), "invoices": n, "overdue_timers": n, "ledger_entries": n,
            "outbox": n + min(n, customers), "relay deletes": n + min(n, customers)}
    for part, seconds in median.parts.items():
        parts.add_row(part, f"{rows[part]:,}" if part in rows else "", f"{seconds:.3f}", f"{seconds / n * 1e6:.1f}",
                      f"{seconds / median.total:.0%}")
    other = median.total - sum(median.parts.values())
    parts.add_row("(Python between statements)", "", f"{other:.3f}", f"{other / n * 1e6:.1f}",
                  f"{other / median.total:.0%}")
    parts.add_row("total", "", f"{median.total:.3f}", f"{median.total / n * 1e6:.1f}", "100%")
    console.print(parts)
    console.print(f"events published: {events:,}; peak RSS: the service {service_rss:,.0f} MB,"
                  f" the file import (this process) {peak_rss_mb():,.0f} MB")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--invoices", type=int, default=100_000)
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=10_000, help="items per bulk request (at most 10,000)")
    parser.add_argument("--concurrency", type=int, default=1,
                        help="bulk requests in flight at once, as a billing source catching up would send them")
    parser.add_argument("--writeset-transactions", choices=("chunk", "one"), default="one",
                        help="the write-set COPY: one transaction in all (default: the faster, by the ~50 commits"
                             " it saves), or a transaction per chunk of the ingest's chunk size")
    args = parser.parse_args(argv)
    configure_logging("bench", "warning", "console")
    with tempfile.TemporaryDirectory(prefix="tahsilat-bench-") as tmp:
        work = Path(tmp)
        external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        broker = None if external else Broker(log_file=work / "broker.log")
        try:
            bootstrap = external or broker.start()
            asyncio.run(run(args.invoices, args.customers, args.batch, args.concurrency, work, bootstrap,
                            args.writeset_transactions == "one"))
        finally:
            if broker is not None:
                broker.stop()


if __name__ == "__main__":
    sys.exit(main())
