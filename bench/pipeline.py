"""The event pipeline through the embedded platform (issue #7): consumer throughput against a
yardstick in the same run, and end-to-end latency at a steady rate.

    .venv/bin/python -m bench.pipeline [--invoices 200000] [--customers 20000] [--rate 1000] [--seconds 60]
                                       [--only throughput|latency] [--no-together]
                                       [--drain-timeout 600] [--settle-timeout 300]

Quick check: `--invoices 20000 --customers 2000 --seconds 10`.

1. Throughput. A fresh `Platform` (broker, one database per service, every service as its own
   process, sinks) with the consuming processes (dunning, risk, notifier; and risk-stream, the
   early warnings, which this bench leaves stopped: bench.risk measures it) stopped. The
   invoices (due in the future: no step falls due, nothing is sent) go in through the bulk API,
   requests of 10,000 two at a time, and are timed until the relay has published every event. Then:
   - yardstick: a raw loop in this process, AIOKafkaConsumer (own group, earliest, manual commit)
     over the invoicing topic and asyncpg inserting one row per record (event id, key, the value as
     jsonb), one transaction per poll batch, offsets committed after each; timed from its first
     batch to its last commit (the median of three runs, each a new group and table);
   - each consumer alone (`Platform.restart`), timed from when it can work (dunning, notifier:
     GET /health/ready is 200, i.e. its consumer holds partitions; risk, whose readiness also
     needs risk-stream: its first inbox transaction) until its group's committed offsets cover
     every record of the topic (risk.behaviour: and has folded every event it staged);
     the start of its last batch's transaction (the inbox) is printed as well. A consumer still
     draining after --drain-timeout is reported with the rate it had until then;
   - after each: its write-set ceiling. The rows it left in its database (the tables that grew)
     are COPYed into a freshly migrated copy of that database, one transaction per 5,000 records,
     with no reads, no foreign-key checks or triggers, no topic to read: the least writing that set
     costs here. Its ratio to the yardstick is the most any consumer writing that set could reach,
     so it says whether the 0.5 goal is within this machine; the consumer's ratio to it is how
     close it comes (`--no-ceiling` skips it);
   - all three together, on a second set of invoices (for new customers) ingested while they were
     stopped: each catches up on the same backlog while sharing the two cores.
   The goals: >= 5,000 events/s through each consumer, and >= 0.5 of the yardstick.
2. Latency. A second fresh platform, every process running, its FileClock set to 12:00 UTC today
   (the customers' timezone is UTC, so contact hours never defer; the tenant's contact cap is off,
   so a customer's fourth overdue invoice in a few seconds is not deferred a week). The customers
   are registered first. Then `--rate` invoices/s for `--seconds` s go in as small bulk requests on a monotonic
   schedule (50 every 50 ms); one in ten is 8-10 days overdue, so its case's latest past step
   (overdue_7, email and SMS) is due the moment the case opens. Measured per invoice:
   (a) InvoiceIssued committed -> case committed: dunning's `cases.opened_at` (its clock in the
       handler, just before its transaction commits) minus the arrival of the bulk reply (after
       invoicing's commit), so it slightly understates; "from invoicing's transaction start"
       (`invoices.issued_at`) bounds it from above;
   (b) step due -> email accepted by the SMTP sink: the sink's `received_at` minus the step's due
       moment, which is when the notice's lead invoice (whose step it is) joined its case (the step is
       due as it joins). Invoices that join before the step runs share its notice, so there are
       fewer emails than overdue invoices: the emails expected are dunning's email notices.
   Yardstick for (a), in the same run: a raw aiokafka + asyncpg loop on the invoicing topic with
   the services' fetch settings (one row per record, a transaction per poll), timed the same way
   from the bulk reply to its commit: the relay, broker and PostgreSQL on the same loaded machine,
   without a service's work.
   FileClock times are real time plus a fixed offset, subtracted before comparing with the
   wall-clock times of the replies and the sinks. Goals: p99 < 150 ms and < 500 ms.

It prints PASS or BELOW TARGET and never fails on a figure. Both platforms are stopped and their
databases dropped at the end, also on Ctrl-C or an error. The machine's load average and the CPU
each process used are printed with every phase, since others may share the machine, and so are
the tables PostgreSQL read most rows of (pg_stat_user_tables): a table read whole per batch or
per row is what makes a rate fall as the tables grow."""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, time as dtime, timedelta, timezone
from pathlib import Path

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench.ingest import post_invoices
from services.dunning.bootstrap import MIGRATIONS as DUNNING_MIGRATIONS
from services.notifier.bootstrap import MIGRATIONS as NOTIFIER_MIGRATIONS
from services.risk.bootstrap import MIGRATIONS as RISK_MIGRATIONS
from shared.clock import FileClock
from shared.db import drop_database, ensure_database, migrate, with_database
from shared.kafka import ConsumerConfig
from shared.logging import configure_logging
from tahsilat.keys import create_key
from tahsilat.platform import Platform, PlatformOptions
from tahsilat.streams import read_records

TENANT = "bench"
SOURCE = "erp"
LANGUAGES = ("en", "tr", "cs", "fa")
ZONES = ("Europe/Istanbul", "Europe/Prague", "Asia/Tehran", "Europe/London")
TARGET_RATE = 5_000  # events/s through each consumer
TARGET_RATIO = 0.5  # of the yardstick
TARGET_P99 = {"case": 0.150, "email": 0.500}  # seconds
MAX_IN_FLIGHT = 8  # latency phase: paced bulk requests outstanding at once
console = Console(width=max(Console().width, 150))


@dataclass(frozen=True)
class Consumer:
    process: str  # the platform's process name
    group: str  # consumer group, after the topic prefix
    inbox: str  # its consumer name in the inbox
    service: str  # whose database
    handles: str  # what it does with the invoicing topic's records
    waiting: str | None = None  # SQL counting records it took (offsets committed) but has not finished


CONSUMERS = (
    Consumer("dunning", "dunning.events", "dunning.events", "dunning",
             "opens a case with its steps per InvoiceIssued, keeps CustomerUpserted's timezone"),
    Consumer("risk", "risk.behaviour", "risk.behaviour", "risk",
             "folds InvoiceIssued into payment behaviour, may publish RiskAssessed; ignores CustomerUpserted",
             # a batch's events wait, staged, until no partition can deliver an earlier one
             "SELECT count(*) FROM risk_pending_events"),
    Consumer("notifier", "notifier.requests", "notifier.requests", "notifier",
             "keeps CustomerUpserted as contacts; parses and ignores InvoiceIssued"),
)


# -- where the CPU went -----------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_of(pid: int) -> float | None:
    try:
        parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(parts[11]) + int(parts[12])) / _TICK  # utime + stime


def _machine_busy() -> float:
    fields_ = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields_[3] + fields_[4]  # idle + iowait
    return (sum(fields_[:8]) - idle) / _TICK


class CpuMeter:
    """CPU seconds of each platform process, of this run's PostgreSQL backends (their process title
    names our databases) and of the whole machine, between start() and stop()."""

    def __init__(self, platform: Platform | None, db_prefix: str) -> None:
        self.platform, self.db_prefix = platform, db_prefix

    def _pids(self) -> dict[int, str]:
        pids: dict[int, str] = {os.getpid(): "bench (this process)"}
        if self.platform is not None:
            for p in list(self.platform.processes):
                if p.proc is not None:
                    pids[p.proc.pid] = p.name
            if self.platform.broker is not None and self.platform.broker.proc is not None:
                pids[self.platform.broker.proc.pid] = "broker"
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                if title.startswith("postgres: ") and f" {self.db_prefix}_" in title:
                    pids[int(entry.name)] = "postgres (this run's backends)"
        return pids

    def _sample(self) -> dict[int, tuple[str, float]]:
        out = {}
        for pid, name in self._pids().items():
            cpu = _cpu_of(pid)
            if cpu is not None:
                out[pid] = (name, cpu)
        return out

    def start(self) -> None:
        self._t0, self._m0, self._s0 = time.monotonic(), _machine_busy(), self._sample()

    def stop(self) -> str:
        wall = time.monotonic() - self._t0
        machine = _machine_busy() - self._m0
        used: dict[str, float] = {}
        for pid, (name, cpu) in self._sample().items():
            before = self._s0.get(pid)
            used[name] = used.get(name, 0.0) + cpu - (before[1] if before and before[0] == name else 0.0)
        ours = sum(used.values())
        parts = [f"{name} {cpu / wall:.2f}" for name, cpu in sorted(used.items(), key=lambda kv: -kv[1])
                 if cpu / wall >= 0.01]
        others = max(0.0, machine - ours) / wall
        return (f"cores used over {wall:.1f} s: " + ", ".join(parts)
                + f"; machine {machine / wall:.2f} of {os.cpu_count()}, of which not this run ~{others:.2f}")


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f}"


def progress_display() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True)


def percentile(values: list[float], q: float) -> float:
    """Nearest rank."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


# -- the platform ---------------------------------------------------------------------------------

def new_platform(work: Path, tag: str, clock_file: Path | None = None) -> Platform:
    run = uuid.uuid4().hex[:8]
    options = PlatformOptions(
        base_dir=work / tag, topic_prefix=f"bench{run}.", db_prefix=f"bench_{run}", fresh=True, free_ports=True,
        log_level="warning", clock_file=clock_file)
    return Platform(options, warning=lambda msg: console.print(f"[yellow]platform: {msg}[/yellow]"))


async def start_platform(platform: Platform) -> None:
    started = time.monotonic()
    await asyncio.to_thread(platform.start)
    console.print(f"    platform up in {time.monotonic() - started:.1f} s: broker {platform.bootstrap}, databases"
                  f" {platform.options.db_prefix}_*, logs in {platform.log_dir}")


async def shut_down(platform: Platform, extra_databases: list[str]) -> None:
    try:
        await asyncio.to_thread(platform.stop)
    finally:
        if platform.server_url:
            await platform.drop_databases()
            for name in extra_databases:
                await drop_database(platform.server_url, name)


async def stop_processes(platform: Platform, names: list[str]) -> None:
    await asyncio.gather(*(asyncio.to_thread(platform.stop_process, n) for n in names))


async def billing_source_key(platform: Platform) -> str:
    admin = await create_key(platform.database_urls, tenant_id=TENANT, role="admin", label="bench admin")
    async with httpx.AsyncClient(base_url=platform.url("invoicing"), timeout=30) as http:
        r = await http.post("/v1/billing-sources", json={"name": SOURCE, "default_currency": "EUR"},
                            headers={"X-API-Key": admin})
        r.raise_for_status()
        return r.json()["api_key"]


async def without_contact_cap(platform: Platform) -> None:
    """The latency phase measures the pipeline, not the contact rules: with a customer getting
    several overdue invoices in a few seconds, the default cap (7 messages a week) would defer
    the rest of their notices by a week."""
    admin = await create_key(platform.database_urls, tenant_id=TENANT, role="admin", label="bench rules")
    async with httpx.AsyncClient(base_url=platform.url("notifier"), timeout=30) as http:
        r = await http.put("/v1/settings", json={"contact_cap_messages": 0}, headers={"X-API-Key": admin})
        r.raise_for_status()
    console.print("    the bench tenant's contact cap is off (PUT /v1/settings on the notifier)")


async def relay_metrics(http: httpx.AsyncClient, url: str) -> tuple[int, int]:
    """(events published, outbox backlog) from a service's metrics: no query on its outbox, whose
    count(*) would read every row (and every dead row: this server may not vacuum) while we wait."""
    text = (await http.get(f"{url}/metrics")).text
    published = backlog = 0
    for line in text.splitlines():
        if line.startswith("tahsilat_outbox_published_total{"):
            published += int(float(line.rsplit(" ", 1)[1]))
        elif line.startswith("tahsilat_outbox_backlog{"):
            backlog += int(float(line.rsplit(" ", 1)[1]))
    return published, backlog


async def outbox_drained(url: str, pool: asyncpg.Pool, since: int, expected: int, progress: Progress, what: str,
                         timeout: float = 1800) -> int:
    """Wait until the service's relay has published `expected` events more than `since` (its
    metrics), or its backlog gauge says 0 and the outbox has no row; returns what it published."""
    task = progress.add_task(f"{what}: events published", total=expected)
    deadline = time.monotonic() + timeout
    last_check = 0.0
    async with httpx.AsyncClient(timeout=10) as http:
        while True:
            published, backlog = await relay_metrics(http, url)
            progress.update(task, completed=published - since)
            if published - since >= expected:
                return published - since
            if backlog == 0 and time.monotonic() - last_check > 1.0:
                last_check = time.monotonic()
                if await pool.fetchval("SELECT NOT EXISTS (SELECT 1 FROM outbox)"):
                    return published - since
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: {published - since} of {expected} events published after {timeout} s")
            await asyncio.sleep(0.2)


async def high_watermarks(bootstrap: str, topic: str) -> dict[TopicPartition, int]:
    """Each partition's high watermark, as a fetch reports it (ListOffsets answers short on the
    embedded broker when the last record batch holds several records)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=20,
                                max_partition_fetch_bytes=1024)
    await consumer.start()
    try:
        deadline = time.monotonic() + 30
        while not (partitions := consumer.partitions_for_topic(topic)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no metadata for {topic}")
            await consumer._client.force_metadata_update()  # noqa: SLF001 - as tahsilat.streams does
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, 0)
        while any(consumer.highwater(tp) is None for tp in tps):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no high watermark for {topic}")
            await consumer.getmany(timeout_ms=200, max_records=1)
        return {tp: consumer.highwater(tp) for tp in tps}
    finally:
        await consumer.stop()


class CommittedOffsets:
    """A group's committed offsets, read without joining it."""

    def __init__(self, bootstrap: str, group: str, tps: list[TopicPartition]) -> None:
        self.tps = tps
        self.consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)

    async def __aenter__(self) -> CommittedOffsets:
        await self.consumer.start()
        return self

    async def __aexit__(self, *_exc) -> None:
        await self.consumer.stop()

    async def total(self) -> int:
        offsets = await asyncio.gather(*(self.consumer.committed(tp) for tp in self.tps))
        return sum(o or 0 for o in offsets)


async def table_reads(pools: dict[str, asyncpg.Pool], services: tuple[str, ...]) -> str:
    """The tables PostgreSQL read most rows of, per service database: by sequential scans, or by
    index scans that fetch many rows each (an index chosen for its first column only). A table that
    grows and is read whole per batch or per row is what makes a rate fall as it runs."""
    found = []
    for s in services:
        for r in await pools[s].fetch(
                "SELECT relname, seq_scan, seq_tup_read, idx_scan, idx_tup_fetch, n_live_tup,"
                " last_analyze IS NULL AND last_autoanalyze IS NULL AS never"
                " FROM pg_stat_user_tables WHERE seq_tup_read > 100000"
                " OR (idx_tup_fetch > 100000 AND idx_tup_fetch > 20 * idx_scan)"
                " ORDER BY greatest(seq_tup_read, idx_tup_fetch) DESC LIMIT 4"):
            parts = []
            if r["seq_tup_read"] > 100_000:
                parts.append(f"{r['seq_tup_read']:,} rows by {r['seq_scan']:,} sequential scans")
            if r["idx_tup_fetch"] > 100_000 and r["idx_tup_fetch"] > 20 * (r["idx_scan"] or 0):
                parts.append(f"{r['idx_tup_fetch']:,} rows by {r['idx_scan']:,} index scans"
                             f" ({r['idx_tup_fetch'] / max(1, r['idx_scan']):,.0f} a scan)")
            found.append(f"{s}.{r['relname']} {' and '.join(parts)} ({r['n_live_tup']:,} live"
                         f"{', never analyzed' if r['never'] else ''})")
    return "rows read: " + ("; ".join(found) or "no table read more than 100,000 rows in bulk")


# -- throughput -----------------------------------------------------------------------------------

def throughput_invoice(i: int, customers: int, tag: str, today: date) -> dict:
    """The i-th invoice of set `tag`, with its customer's master data; due in 16-45 days, so no
    step of its case falls due during the run."""
    c = i % customers
    issue = today - timedelta(days=i % 30)
    return {
        "external_id": f"{tag}-{i:08d}",
        "number": f"{tag}/{i:08d}",
        "customer": {"id": f"{tag}C-{c:06d}", "name": f"Customer {tag}{c}", "language": LANGUAGES[c % 4],
                     "timezone": ZONES[c % 4], "email": f"ap{c}@customer{c}.{tag.lower()}.example",
                     "phone": f"+9055{c:08d}"},
        "currency": "EUR",
        "amount_minor": 1000 + (i * 7919) % 5_000_000,
        "issue_date": issue.isoformat(),
        "due_date": (issue + timedelta(days=45)).isoformat(),
    }


async def bulk_ingest(url: str, token: str, n: int, customers: int, tag: str, batch: int, concurrency: int,
                      progress: Progress) -> float:
    """Post n invoices in requests of `batch`, `concurrency` at a time; seconds until all stored."""
    today = datetime.now(timezone.utc).date()
    starts = iter(range(0, n, batch))
    task = progress.add_task(f"set {tag}: invoices posted", total=n)
    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        async def client() -> None:
            for s in starts:
                items = [throughput_invoice(i, customers, tag, today) for i in range(s, min(s + batch, n))]
                await post_invoices(http, token, items)
                progress.advance(task, len(items))

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        return time.perf_counter() - started


async def ingest_set(platform: Platform, pool: asyncpg.Pool, token: str, n: int, customers: int, tag: str,
                     meter: CpuMeter) -> dict:
    url = platform.url("invoicing")
    async with httpx.AsyncClient(timeout=10) as http:
        before, _ = await relay_metrics(http, url)
    meter.start()
    async with AutovacuumStandIn({"invoicing": pool}, ("invoicing",)):  # the relay's claim reads the outbox
        with progress_display() as progress:
            started = time.perf_counter()
            stored = await bulk_ingest(url, token, n, customers, tag, 10_000, 2, progress)
            # One InvoiceIssued per invoice, one CustomerUpserted per (new) customer.
            await outbox_drained(url, pool, before, n + min(n, customers), progress, "invoicing relay")
            published = time.perf_counter() - started
    console.print(f"    {n:,} invoices stored in {stored:.1f} s ({n / stored:,.0f}/s), all published after"
                  f" {published:.1f} s ({n / published:,.0f}/s); {load()}")
    console.print(f"    {meter.stop()}")
    return {"stored": stored, "published": published}


@dataclass
class Drain:
    name: str
    records: int  # to consume
    launched: float  # epoch: restart() called
    started: float = math.nan  # epoch: could work (ready, or its first transaction)
    ended: float = math.nan  # epoch: committed offsets covered every record (or the time limit came)
    committed: int = 0  # records its group had committed by `ended`
    ready: float | None = None
    first_tx: float | None = None
    last_tx: float | None = None
    handled: dict[str, int] = field(default_factory=dict)  # inbox rows by event type
    workers: int = 1  # processes in its consumer group

    @property
    def finished(self) -> bool:
        return self.committed >= self.records

    @property
    def seconds(self) -> float:
        return self.ended - self.started

    @property
    def rate(self) -> float:
        """Records per second; for a drain that ran out of time, what it committed until then."""
        return self.committed / self.seconds

    @property
    def handled_rate(self) -> float:
        return self.committed / ((self.last_tx or math.nan) - self.started)


async def drain(platform: Platform, pools: dict[str, asyncpg.Pool], consumers: list[Consumer],
                ends: dict[TopicPartition, int], label: str, timeout: float, workers: int = 1) -> list[Drain]:
    """Start `consumers` together and time each until its group's committed offsets on the
    invoicing topic reach `ends` (the high watermarks), or `timeout` seconds have passed. With
    `workers` > 1, each runs that many processes in its group (the others as replicas, as more
    Kubernetes pods would), stopped again at the end."""
    target = sum(ends.values())
    tps = list(ends)
    prefix = platform.options.topic_prefix
    readers = {c.process: CommittedOffsets(platform.bootstrap, prefix + c.group, tps) for c in consumers}
    for r in readers.values():
        await r.__aenter__()
    analyze = AutovacuumStandIn(pools, tuple(sorted({c.service for c in consumers})))
    await analyze.__aenter__()
    replicas: list[str] = []
    try:
        baseline = {c.process: await readers[c.process].total() for c in consumers}
        launched = time.time()
        since = datetime.fromtimestamp(launched - 1, timezone.utc)
        await asyncio.gather(*(asyncio.to_thread(platform.restart, c.process) for c in consumers))
        replicas += [platform.add_replica(c.process) for c in consumers for _ in range(workers - 1)]
        state = {c.process: Drain(c.process, target - baseline[c.process], launched, workers=workers)
                 for c in consumers}
        pending = set(state)
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=1) as http:
            with progress_display() as progress:
                tasks = {c.process: progress.add_task(f"{label}: {c.process} committed", total=state[c.process].records)
                         for c in consumers}
                while pending:
                    now = time.time()
                    out_of_time = time.monotonic() > deadline
                    for c in consumers:
                        d = state[c.process]
                        if c.process not in pending:
                            continue
                        if d.ready is None and c.process != "risk":  # its readiness needs risk-stream
                            try:
                                if (await http.get(f"{platform.url(c.service)}/health/ready")).status_code == 200:
                                    d.ready = now
                            except httpx.HTTPError:
                                pass
                        if d.first_tx is None:
                            first = await pools[c.service].fetchval(
                                "SELECT min(processed_at) FROM inbox WHERE consumer = $1 AND processed_at >= $2",
                                c.inbox, since)
                            d.first_tx = first.timestamp() if first is not None else None
                        d.committed = await readers[c.process].total() - baseline[c.process]
                        if c.waiting:
                            d.committed = max(0, d.committed - await pools[c.service].fetchval(c.waiting))
                        progress.update(tasks[c.process], completed=d.committed)
                        if d.finished or out_of_time:
                            d.ended = time.time()
                            pending.discard(c.process)
                    exited = {k: v for k, v in platform.exited().items() if k in pending}
                    if exited:
                        raise RuntimeError(f"{label}: exited while draining: {exited}; see {platform.log_dir}")
                    await asyncio.sleep(0.2)
        for c in consumers:
            d = state[c.process]
            d.started = min(t for t in (d.ready, d.first_tx, d.ended) if t is not None)
            row = await pools[c.service].fetchrow(
                "SELECT max(processed_at) AS last FROM inbox WHERE consumer = $1 AND processed_at >= $2",
                c.inbox, since)
            d.last_tx = row["last"].timestamp() if row["last"] is not None else None
            d.handled = {r["event_type"]: r["n"] for r in await pools[c.service].fetch(
                "SELECT event_type, count(*) AS n FROM inbox WHERE consumer = $1 AND processed_at >= $2"
                " GROUP BY event_type ORDER BY event_type", c.inbox, since)}
        return [state[c.process] for c in consumers]
    finally:
        await stop_processes(platform, replicas)
        await analyze.__aexit__(None, None, None)
        for r in readers.values():
            await r.__aexit__(None, None, None)


class AutovacuumStandIn:
    """What autovacuum does for a production database, for a local PostgreSQL that runs with
    autovacuum off: every few seconds, ANALYZE the services' databases, and VACUUM each table with
    more dead rows than autovacuum's default trigger (50 + 20% of its live rows). Without it no
    service table is ever analyzed, and a plan made while a table was empty stays cached in the
    services' connections (ANALYZE is what invalidates it), reading every case of the tenant per
    row once the table has grown; and a table whose rows come and go (an outbox, risk's staged
    events) grows by every row it ever held, which each scan of it then reads."""

    def __init__(self, pools: dict[str, asyncpg.Pool], services: tuple[str, ...], every: float = 5.0) -> None:
        self.pools, self.services, self.every = pools, services, every
        self.runs = self.vacuums = 0
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> "AutovacuumStandIn":
        if await self.pools["invoicing"].fetchval("SHOW autovacuum") == "off":
            self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *exc) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            for s in self.services:
                await self.pools[s].execute("ANALYZE")
                for table in await self.pools[s].fetch(
                        "SELECT relname FROM pg_stat_user_tables WHERE n_dead_tup > 50 + 0.2 * n_live_tup"):
                    await self.pools[s].execute(f"VACUUM {_ident(table['relname'])}")
                    self.vacuums += 1
            self.runs += 1


def describe_drain(d: Drain, yardstick_rate: float) -> str:
    how = "ready" if d.ready is not None and d.started == d.ready else "first transaction"
    handled = ", ".join(f"{t} {n:,}" for t, n in d.handled.items()) or "nothing"
    if d.finished:
        what = (f"{d.records:,} records in {d.seconds:.2f} s from {how} ({d.started - d.launched:.1f} s after launch)"
                " to all committed")
    else:
        what = (f"[red]OUT OF TIME[/red]: {d.committed:,} of {d.records:,} records committed {d.seconds:.0f} s after"
                f" {how} ({d.started - d.launched:.1f} s after launch)")
    return (f"    {d.name}: {what}: {d.rate:,.0f} events/s, {d.rate / yardstick_rate:.3f} of the yardstick;"
            f" last batch began after {(d.last_tx or math.nan) - d.started:.2f} s ({d.handled_rate:,.0f}/s);"
            f" handled: {handled}")


_YARD_TABLE = ("CREATE TABLE {t} (event_id uuid PRIMARY KEY, partition int NOT NULL, \"offset\" bigint NOT NULL,"
               " key text NOT NULL, value jsonb NOT NULL)")
_YARD_INSERT = ("INSERT INTO {t} (event_id, partition, \"offset\", key, value)"
                " SELECT (j ->> 'id')::uuid, p, o, k, j FROM (SELECT p, o, k, v::jsonb AS j"
                " FROM unnest($1::int[], $2::bigint[], $3::text[], $4::text[]) AS u(p, o, k, v)) AS s")


async def insert_records(pool: asyncpg.Pool, insert: str, records: list) -> None:
    """The yardsticks' write: one row per record (_YARD_INSERT), the batch in one transaction."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(insert, [r.partition for r in records], [r.offset for r in records],
                           [r.key.decode() for r in records], [r.value.decode() for r in records])


async def yardstick_once(bootstrap: str, topic: str, pool: asyncpg.Pool, table: str, total: int,
                         progress: Progress, label: str) -> float:
    """The raw loop: consume every record of `topic` with a new group, insert one row per record,
    one transaction per poll batch, offsets committed after it; seconds from the first batch to
    the last commit."""
    await pool.execute(_YARD_TABLE.format(t=table))
    insert = _YARD_INSERT.format(t=table)
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=f"{table}-{uuid.uuid4().hex[:6]}", enable_auto_commit=False,
        auto_offset_reset="earliest", session_timeout_ms=6000, heartbeat_interval_ms=1000, fetch_max_wait_ms=20,
        max_partition_fetch_bytes=8 * 1024 * 1024)
    task = progress.add_task(label, total=total)
    await consumer.start()
    try:
        consumed, started = 0, None
        deadline = time.monotonic() + 1800
        while consumed < total:
            if time.monotonic() > deadline:
                raise TimeoutError(f"yardstick: {consumed} of {total} records after 1800 s")
            batches = await consumer.getmany(timeout_ms=500, max_records=5000)
            records = [r for rs in batches.values() for r in rs]
            if not records:
                continue
            if started is None:
                started = time.perf_counter()
            await insert_records(pool, insert, records)
            await consumer.commit({tp: rs[-1].offset + 1 for tp, rs in batches.items()})
            consumed += len(records)
            progress.advance(task, len(records))
        seconds = time.perf_counter() - started
    finally:
        await consumer.stop()
    if await pool.fetchval(f"SELECT count(*) FROM {table}") != total:
        raise RuntimeError("yardstick: row count differs from the records consumed")
    return seconds


# -- the write-set ceiling ---------------------------------------------------------------------------

SCALED = ("dunning", "risk")  # what --workers runs more processes of
MIGRATIONS = {"dunning": DUNNING_MIGRATIONS, "risk": RISK_MIGRATIONS, "notifier": NOTIFIER_MIGRATIONS}
CEILING_BATCH = 5000  # records a transaction: the yardstick's poll batch


async def row_counts(pool: asyncpg.Pool) -> dict[str, int]:
    tables = [r["relname"] for r in await pool.fetch(
        "SELECT relname FROM pg_stat_user_tables WHERE schemaname = 'public' AND relname <> 'schema_migrations'")]
    return {t: await pool.fetchval(f"SELECT count(*) FROM {_ident(t)}") for t in tables}


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass
class Ceiling:
    tables: dict[str, int]  # rows written, by table
    transactions: int
    seconds: float  # the COPYs
    records: int

    @property
    def rate(self) -> float:
        return self.records / self.seconds

    def with_topic(self, yard_rate: float) -> float:
        """Records/s if reading the topic (what the yardstick spends a record) came on top."""
        return self.records / (self.seconds + self.records / yard_rate)


async def write_set_ceiling(server: str, service: str, source: asyncpg.Pool, grew: list[str], records: int,
                            db_name: str) -> Ceiling:
    """What the consumer left in its database, written again into a freshly migrated copy of it
    with binary COPY and nothing else: its rows split evenly over one transaction per
    CEILING_BATCH records. No reads, no decisions, no foreign-key checks or triggers
    (session_replication_role = replica), so an upper bound on what any consumer writing that set
    could do here. Rows it wrote and deleted again (outbox rows the relay published) are not in it."""
    url = with_database(server, db_name)
    await ensure_database(server, db_name)
    await migrate(url, MIGRATIONS[service])
    rows = {}
    for t in grew:
        columns = [r["column_name"] for r in await source.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' AND table_name = $1"
            " AND is_generated = 'NEVER' ORDER BY ordinal_position", t)]
        rows[t] = (columns, await source.fetch(f"SELECT {', '.join(map(_ident, columns))} FROM {_ident(t)}"))
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SET session_replication_role = replica")
        await conn.execute(f"TRUNCATE {', '.join(map(_ident, grew))}")  # what the migrations seeded
        k = max(1, math.ceil(records / CEILING_BATCH))
        started = time.perf_counter()
        for i in range(k):
            async with conn.transaction():
                for t, (columns, all_rows) in rows.items():
                    part = all_rows[len(all_rows) * i // k: len(all_rows) * (i + 1) // k]
                    if part:
                        await conn.copy_records_to_table(t, records=[tuple(r) for r in part], columns=columns)
        seconds = time.perf_counter() - started
    finally:
        await conn.close()
        await drop_database(server, db_name)
    return Ceiling({t: len(r) for t, (_, r) in rows.items()}, k, seconds, records)


def describe_ceiling(c: Ceiling, d: Drain, yard_rate: float) -> str:
    tables = ", ".join(f"{t} {n:,}" for t, n in sorted(c.tables.items(), key=lambda kv: -kv[1]))
    bound = c.with_topic(yard_rate)
    return (f"    ceiling: its write set ({sum(c.tables.values()):,} rows: {tables}) by COPY alone in"
            f" {c.transactions} transactions: {c.seconds:.2f} s = {c.rate:,.0f} records/s ({c.rate / yard_rate:.3f}"
            f" of the yardstick); {d.name} / it: {d.rate / c.rate:.3f}. With the yardstick's whole time per record"
            f" added (reading the topic, and its own inserts): {bound:,.0f}/s; {d.name} / that: {d.rate / bound:.3f}")


async def throughput(args: argparse.Namespace, work: Path, summary: dict) -> None:
    platform = new_platform(work, "throughput")
    yard_db = f"{platform.options.db_prefix}_yardstick"
    pools: dict[str, asyncpg.Pool] = {}
    try:
        console.print(f"[bold]throughput[/bold]: starting the platform …; {load()}")
        await start_platform(platform)
        meter = CpuMeter(platform, platform.options.db_prefix)
        await stop_processes(platform, [c.process for c in CONSUMERS] + ["risk-stream"])
        console.print("    stopped dunning, risk, risk-stream and notifier (the invoicing topic fills up for them;"
                      " risk-stream, the early warnings, stays stopped: bench.risk measures it)")
        for s in ("invoicing", "dunning", "risk", "notifier"):
            pools[s] = await asyncpg.create_pool(platform.database_urls[s], min_size=1, max_size=2)
        console.print(f"    PostgreSQL autovacuum: {await pools['invoicing'].fetchval('SHOW autovacuum')}"
                      " (when off, every 5 s the bench ANALYZEs the services' databases and VACUUMs the tables"
                      " autovacuum would, in its stead)")
        token = await billing_source_key(platform)
        topic = platform.topics.invoicing
        n, customers = args.invoices, args.customers

        console.print(f"[bold]1[/bold] ingest: {n:,} invoices for {customers:,} customers through the bulk API"
                      " (requests of 10,000, 2 at a time) …")
        summary["ingest"] = await ingest_set(platform, pools["invoicing"], token, n, customers, "A", meter)
        console.print(f"    {await table_reads(pools, ('invoicing',))}")
        ends = await high_watermarks(platform.bootstrap, topic)
        records = sum(ends.values())
        console.print(f"    invoicing topic: {records:,} records ({n:,} InvoiceIssued + {records - n:,} others,"
                      f" expected {customers:,} CustomerUpserted) in {len(ends)} partitions:"
                      f" {', '.join(f'{v:,}' for v in ends.values())}")

        console.print(f"[bold]2[/bold] yardstick: aiokafka getmany + asyncpg, one row per record, a transaction"
                      f" and an offset commit per batch ({args.yardstick_runs} runs) …")
        server = platform.server_url
        await ensure_database(server, yard_db)
        pools["yardstick"] = await asyncpg.create_pool(with_database(server, yard_db), min_size=1, max_size=2)
        timings = []
        meter.start()
        with progress_display() as progress:
            for k in range(args.yardstick_runs):
                timings.append(await yardstick_once(platform.bootstrap, topic, pools["yardstick"], f"raw_{k}", records,
                                                    progress, f"yardstick run {k + 1}"))
        yard = statistics.median(timings)
        yard_rate = records / yard
        console.print(f"    {', '.join(f'{records / t:,.0f}' for t in timings)} records/s; median {yard_rate:,.0f}/s;"
                      f" {load()}")
        console.print(f"    {meter.stop()}")
        summary["yardstick"] = {"rate": yard_rate, "runs": [records / t for t in timings]}

        console.print("[bold]3[/bold] each consumer alone, from its committed offsets (none) to the end of the topic …")
        alone = []
        chosen = [c for c in CONSUMERS if c.process in args.consumers]
        for c in chosen:
            console.print(f"    {c.process}: {c.handles}"
                          f"{f' ({args.workers} workers)' if args.workers > 1 and c.process in SCALED else ''} …")
            before = await row_counts(pools[c.service])
            meter.start()
            [d] = await drain(platform, pools, [c], ends, "alone", args.drain_timeout,
                              args.workers if c.process in SCALED else 1)
            console.print(describe_drain(d, yard_rate) + f"; {load()}")
            console.print(f"    {meter.stop()}")
            console.print(f"    {await table_reads(pools, (c.service,))}")
            if args.ceiling and d.finished:
                grew = [t for t, n in (await row_counts(pools[c.service])).items() if n > before.get(t, 0)]
                ceiling = await write_set_ceiling(server, c.service, pools[c.service], grew, d.records,
                                                  f"{platform.options.db_prefix}_ceiling")
                console.print(describe_ceiling(ceiling, d, yard_rate))
                summary.setdefault("ceilings", {})[c.process] = ceiling
            await stop_processes(platform, [c.process])
            alone.append(d)
        summary["alone"] = alone

        if args.together:
            console.print(f"[bold]4[/bold] {', '.join(c.process for c in chosen)} together: another {n:,} invoices"
                          f" for {customers:,} new customers"
                          " while they are stopped, then they catch up side by side …")
            summary["ingest B"] = await ingest_set(platform, pools["invoicing"], token, n, customers, "B", meter)
            ends_b = await high_watermarks(platform.bootstrap, topic)
            meter.start()
            together = await drain(platform, pools, chosen, ends_b, "together", args.drain_timeout)
            for d in together:
                console.print(describe_drain(d, yard_rate))
            wall = max(d.ended for d in together) - min(d.launched for d in together)
            console.print(f"    all three done {wall:.1f} s after their launch; {load()}")
            console.print(f"    {meter.stop()}")
            console.print(f"    {await table_reads(pools, ('invoicing', 'dunning', 'risk', 'notifier'))}")
            summary["together"] = together
        broker = platform.broker.proc.pid if platform.broker and platform.broker.proc else None
        if broker:
            rss = next((int(line.split()[1]) // 1024 for line in Path(f"/proc/{broker}/status").read_text().splitlines()
                        if line.startswith("VmRSS:")), 0)
            console.print(f"    broker RSS at the end: {rss:,} MB")
    finally:
        for pool in pools.values():
            await pool.close()
        await shut_down(platform, [yard_db])


# -- latency --------------------------------------------------------------------------------------

def latency_customer(c: int) -> dict:
    return {"id": f"LC-{c:06d}", "name": f"Customer {c}", "language": LANGUAGES[c % 4], "timezone": "UTC",
            "email": f"ap{c}@latency{c}.example", "phone": f"+9055{c:08d}"}


def latency_invoice(i: int, customers: int, today: date) -> dict:
    """One in ten is 8-10 days overdue (its overdue_7 step, email and SMS, is due as its case
    opens); the others are due in 30 days."""
    if i % 10 == 0:
        due = today - timedelta(days=8 + (i // 10) % 3)
        issue = due - timedelta(days=30)
    else:
        issue, due = today, today + timedelta(days=30)
    return {"external_id": f"L-{i:08d}", "customer_id": f"LC-{i % customers:06d}", "currency": "EUR",
            "amount_minor": 1000 + (i * 7919) % 5_000_000, "issue_date": issue.isoformat(), "due_date": due.isoformat()}


def summarize(values: list[float], expected: int | None = None) -> dict:
    """Percentiles of `values`; the `expected` ones that never arrived count as infinitely late."""
    settled = len(values)
    values = values + [math.inf] * max(0, (expected or 0) - settled)
    if not values:
        return {"count": 0, "of": 0, "p50": math.nan, "p90": math.nan, "p99": math.nan, "max": math.nan}
    return {"count": settled, "of": len(values), "p50": percentile(values, 0.5), "p90": percentile(values, 0.9),
            "p99": percentile(values, 0.99), "max": max(values)}


def ms(seconds: float) -> str:
    if math.isinf(seconds):
        return "never"
    return "-" if math.isnan(seconds) else f"{seconds * 1000:,.0f}"


class LatencyYardstick:
    """The latency phase's yardstick, in the same run on the same loaded machine: a raw loop with
    its own group, from the end of the invoicing topic, with the services' fetch settings,
    inserting one row per record in one transaction per poll, then committing offsets. For each
    InvoiceIssued, the moment its transaction had committed, so it compares with (a): the same
    relay, broker and PostgreSQL, without a service's work."""

    def __init__(self, bootstrap: str, topic: str, pool: asyncpg.Pool) -> None:
        self.bootstrap, self.topic, self.pool = bootstrap, topic, pool
        self.committed: dict[str, float] = {}
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        await self.pool.execute(_YARD_TABLE.format(t="latency_raw"))
        self.consumer = AIOKafkaConsumer(
            self.topic, bootstrap_servers=self.bootstrap, group_id=f"latency-raw-{uuid.uuid4().hex[:6]}",
            enable_auto_commit=False, auto_offset_reset="latest", session_timeout_ms=10_000,
            heartbeat_interval_ms=1_000, fetch_max_wait_ms=ConsumerConfig.fetch_max_wait_ms,
            max_partition_fetch_bytes=8 * 1024 * 1024)
        await self.consumer.start()
        deadline = time.monotonic() + 60
        while not self.consumer.assignment():  # joined, and at the end of every partition
            if time.monotonic() > deadline:
                raise TimeoutError("the latency yardstick got no partitions")
            await self.consumer.getmany(timeout_ms=100)
        for tp in self.consumer.assignment():
            await self.consumer.position(tp)
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        insert = _YARD_INSERT.format(t="latency_raw")
        while True:
            batches = await self.consumer.getmany(timeout_ms=500, max_records=5000)
            records = [r for rs in batches.values() for r in rs]
            if not records:
                continue
            await insert_records(self.pool, insert, records)
            done = time.time()
            await self.consumer.commit({tp: rs[-1].offset + 1 for tp, rs in batches.items()})
            for r in records:
                envelope = json.loads(r.value)
                if envelope.get("type") == "InvoiceIssued":
                    self.committed[envelope["data"]["invoice_id"]] = done

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            if not self._task.cancelled() and self._task.exception() is not None:
                raise self._task.exception()
        await self.consumer.stop()


async def latency(args: argparse.Namespace, work: Path, summary: dict) -> None:
    (work / "latency").mkdir(parents=True, exist_ok=True)
    clock_file = work / "latency" / "clock.json"
    today = datetime.now(timezone.utc).date()
    FileClock(clock_file).set(datetime.combine(today, dtime(12), timezone.utc))  # noon for the customers (UTC)
    offset = float(json.loads(clock_file.read_text())["offset_seconds"])
    platform = new_platform(work, "latency", clock_file)
    pools: dict[str, asyncpg.Pool] = {}
    try:
        console.print(f"[bold]latency[/bold]: starting a fresh platform, its clock at 12:00 UTC"
                      f" (offset {offset:+,.0f} s)"
                      f" …; {load()}")
        await start_platform(platform)
        meter = CpuMeter(platform, platform.options.db_prefix)
        for s in ("invoicing", "dunning", "risk", "notifier"):
            pools[s] = await asyncpg.create_pool(platform.database_urls[s], min_size=1, max_size=2)
        token = await billing_source_key(platform)
        await without_contact_cap(platform)
        customers = args.customers
        http = httpx.AsyncClient(base_url=platform.url("invoicing"), timeout=60,
                                 limits=httpx.Limits(max_connections=MAX_IN_FLIGHT + 2))
        sinks = httpx.AsyncClient(base_url=platform.sinks_url, timeout=60)
        analyze: AutovacuumStandIn | None = None
        yardstick: LatencyYardstick | None = None
        try:
            with progress_display() as progress:
                task = progress.add_task("customers registered", total=customers)
                for s in range(0, customers, 10_000):
                    items = [latency_customer(c) for c in range(s, min(s + 10_000, customers))]
                    r = await http.post("/v1/customers/bulk", json={"items": items}, headers={"X-API-Key": token})
                    r.raise_for_status()
                    progress.advance(task, len(items))
                known = progress.add_task("contacts known to dunning and the notifier", total=2 * customers)
                deadline = time.monotonic() + 300
                while True:
                    have = (await pools["dunning"].fetchval("SELECT count(*) FROM dunning_customers")
                            + await pools["notifier"].fetchval("SELECT count(*) FROM contacts"))  # before measuring
                    progress.update(known, completed=have)
                    if have >= 2 * customers:
                        break
                    if time.monotonic() > deadline:
                        raise TimeoutError("customers did not reach dunning and the notifier")
                    await asyncio.sleep(0.5)
            total = args.rate * args.seconds
            chunk = args.chunk
            interval = chunk / args.rate
            overdue = sum(1 for i in range(total) if i % 10 == 0)
            console.print(f"    {customers:,} customers registered and known downstream; sending {args.rate:,}"
                          f" invoices/s for {args.seconds} s: {chunk} every {interval * 1000:.0f} ms, at most"
                          f" {MAX_IN_FLIGHT} requests in flight; {overdue:,} of {total:,} overdue …")
            replies: dict[str, tuple[float, float]] = {}  # invoice id -> (request sent, reply arrived), epoch
            round_trips: list[float] = []
            lateness: list[float] = []
            slots = asyncio.Semaphore(MAX_IN_FLIGHT)

            async def post(items: list[dict]) -> None:
                try:
                    sent = time.time()
                    r = await http.post("/v1/invoices/bulk", json={"items": items}, headers={"X-API-Key": token})
                    arrived = time.time()
                    r.raise_for_status()
                    body = r.json()
                    if body["summary"]["created"] != len(items):
                        raise RuntimeError(f"bulk API: unexpected summary {body['summary']}")
                    for res in body["results"]:
                        replies[res["id"]] = (sent, arrived)
                    round_trips.append(arrived - sent)
                    progress.advance(sending, len(items))
                finally:
                    slots.release()

            yard_db = f"{platform.options.db_prefix}_yardstick"
            await ensure_database(platform.server_url, yard_db)
            pools["yardstick"] = await asyncpg.create_pool(with_database(platform.server_url, yard_db), min_size=1,
                                                           max_size=2)
            yardstick = LatencyYardstick(platform.bootstrap, platform.topics.invoicing, pools["yardstick"])
            await yardstick.start()
            console.print("    yardstick: a raw aiokafka + asyncpg loop on the invoicing topic runs alongside,"
                          " one row per record, a transaction per poll")
            meter.start()
            analyze = await AutovacuumStandIn(pools, ("invoicing", "dunning", "risk", "notifier")).__aenter__()
            with progress_display() as progress:
                sending = progress.add_task("invoices sent (paced)", total=total)
                requests = []
                began, began_wall = time.monotonic(), time.time()
                for k, s in enumerate(range(0, total, chunk)):
                    due = began + k * interval
                    if (wait := due - time.monotonic()) > 0:
                        await asyncio.sleep(wait)
                    await slots.acquire()
                    lateness.append(time.monotonic() - due)
                    items = [latency_invoice(i, customers, today) for i in range(s, min(s + chunk, total))]
                    requests.append(asyncio.create_task(post(items)))
                await asyncio.gather(*requests)
                sent_for = max(a for _, a in replies.values()) - began_wall
                console.print(f"    sent {len(replies):,} invoices in {sent_for:.1f} s:"
                              f" {len(replies) / sent_for:,.0f}/s;"
                              f" bulk round trip p50 {ms(percentile(round_trips, 0.5))} ms, p99"
                              f" {ms(percentile(round_trips, 0.99))} ms; requests started late by up to"
                              f" {ms(max(lateness))} ms; {load()}")
                console.print(f"    {meter.stop()}")

                # Settle: every case opened, no step left due, every email notice received. Items
                # that join a case before its step runs share one notice: fewer emails than overdue
                # invoices.
                meter.start()
                cases_task = progress.add_task("cases opened", total=len(replies))
                mail_task = progress.add_task("email notices received", total=overdue)
                emails: dict[str, dict] = {}
                since = cases = 0
                email_notices, steps_due = overdue, 1
                clock = FileClock(clock_file)
                deadline = time.monotonic() + args.settle_timeout
                while True:
                    # The statistics' insert count (flushed within a second), not count(*), which would
                    # read the whole table every time while the pipeline works through it.
                    if cases < len(replies):
                        cases = await pools["dunning"].fetchval(
                            "SELECT n_tup_ins FROM pg_stat_user_tables WHERE relname = 'case_items'")
                        if cases >= len(replies):  # once, to be sure
                            cases = await pools["dunning"].fetchval("SELECT count(*) FROM case_items")
                    for m in (await sinks.get("/emails", params={"since_id": since})).json():
                        since = max(since, m["id"])
                        # strip(): the header is folded after its name, and the sink keeps the fold's space
                        emails[m["headers"].get("X-Tahsilat-Notification-Key", "").strip()] = m
                    if cases >= len(replies):
                        steps_due = await pools["dunning"].fetchval(
                            "SELECT count(*) FROM cases WHERE status = 'open' AND next_due_at <= $1", clock.now())
                        email_notices = await pools["dunning"].fetchval(
                            "SELECT count(*) FROM notices WHERE channel = 'email'")
                    progress.update(cases_task, completed=cases)
                    progress.update(mail_task, completed=len(emails), total=email_notices)
                    if cases >= len(replies) and steps_due == 0 and len(emails) >= email_notices:
                        break
                    if time.monotonic() > deadline:
                        console.print(f"[yellow]    not settled after {args.settle_timeout:.0f} s: {cases:,} of"
                                      f" {len(replies):,} cases, {steps_due:,} cases with a step due,"
                                      f" {len(emails):,} of {email_notices:,} emails[/yellow]")
                        break
                    await asyncio.sleep(0.5)
                sms = (await sinks.get("/sms")).json()
            console.print(f"    at the end: {cases:,} cases, {len(emails):,} emails, {len(sms):,} SMS; {load()}")
            console.print(f"    {meter.stop()}")
            console.print(f"    {await table_reads(pools, ('invoicing', 'dunning', 'risk', 'notifier'))}")
        finally:
            if analyze is not None:
                await analyze.__aexit__(None, None, None)
            if yardstick is not None:
                await yardstick.stop()
            await http.aclose()
            await sinks.aclose()

        def real(moment: datetime | None) -> float:  # a service clock's time as wall-clock epoch
            return math.nan if moment is None else moment.timestamp() - offset

        # an invoice is "in its case" when it joined it; a case's notice was due when its first item joined
        items = await pools["dunning"].fetch("SELECT invoice_id, case_id, joined_at FROM case_items")
        opened = {str(r["invoice_id"]): real(r["joined_at"]) for r in items}
        case_opened: dict[str, float] = {}
        for r in items:
            case_opened[str(r["case_id"])] = min(real(r["joined_at"]), case_opened.get(str(r["case_id"]), math.inf))
        # a notice was due when its lead invoice (the one whose step it is) joined its case
        notices = await pools["dunning"].fetch("SELECT notification_key, channel, lead_invoice, case_id, created_at"
                                               " FROM notices")
        executed = {r["notification_key"]: real(r["created_at"]) for r in notices}
        due_at = {r["notification_key"]: opened.get(str(r["lead_invoice"]),
                                                    case_opened.get(str(r["case_id"]), math.nan)) for r in notices}
        expected = {ch: sum(1 for r in notices if r["channel"] == ch) for ch in ("email", "sms")}
        issued = {str(r["invoice_id"]): real(r["issued_at"]) for r in await pools["invoicing"].fetch(
            "SELECT invoice_id, issued_at FROM invoices")}
        dispatched = {r["notification_key"]: real(r["sent_at"]) for r in await pools["notifier"].fetch(
            "SELECT notification_key, sent_at FROM notifications WHERE sent_at IS NOT NULL")}
        statuses = {r["status"]: r["n"] for r in await pools["notifier"].fetch(
            "SELECT status, count(*) AS n FROM notifications GROUP BY status")}

        # The notifier's inbox tells when it stored each NotificationRequested (its batch's transaction
        # began then; the inbox has PostgreSQL's clock, real time): the event ids are on the topic.
        key_of = {}
        for record in await read_records(platform.bootstrap, platform.topics.dunning, timeout=120):
            envelope = json.loads(record.value)
            if envelope.get("type") == "NotificationRequested":
                key_of[envelope["id"]] = envelope["data"]["notification_key"]
        stored = {key_of.get(str(r["event_id"])): r["processed_at"].timestamp() for r in await pools["notifier"].fetch(
            "SELECT event_id, processed_at FROM inbox WHERE event_type = 'NotificationRequested'")}

        case_lat = [opened[i] - reply for i, (_, reply) in replies.items() if i in opened]
        raw_lat = [yardstick.committed[i] - reply for i, (_, reply) in replies.items() if i in yardstick.committed]
        case_upper = [opened[i] - issued[i] for i in replies if i in opened and i in issued]
        email_lat, sms_lat = [], []
        stages: dict[str, list[float]] = {"opened": [], "stored": [], "dispatched": [], "sink": []}
        for key, m in emails.items():
            if key not in due_at:
                continue
            received = datetime.fromisoformat(m["received_at"]).timestamp()
            email_lat.append(received - due_at[key])
            step = executed.get(key, math.nan)
            for stage, (later, earlier) in {"opened": (step, due_at[key]),
                                            "stored": (stored.get(key, math.nan), step),
                                            "dispatched": (dispatched.get(key, math.nan), stored.get(key, math.nan)),
                                            "sink": (received, dispatched.get(key, math.nan))}.items():
                if not math.isnan(later - earlier):
                    stages[stage].append(later - earlier)
        for m in sms:
            if (key := m.get("message_id") or "") in due_at:
                sms_lat.append(datetime.fromisoformat(m["received_at"]).timestamp() - due_at[key])
        arrivals = sorted([datetime.fromisoformat(m["received_at"]).timestamp() for m in emails.values()]
                          + [datetime.fromisoformat(m["received_at"]).timestamp() for m in sms])
        if len(arrivals) > 1:
            console.print(f"    the sinks received {len(arrivals):,} messages (email and SMS) over"
                          f" {arrivals[-1] - arrivals[0]:.1f} s: {len(arrivals) / (arrivals[-1] - arrivals[0]):,.0f}/s;"
                          f" the invoices asked for {2 * args.rate // 10:,}/s")
        rows = {
            "(a) InvoiceIssued committed -> case committed": (summarize(case_lat, len(replies)), TARGET_P99["case"]),
            "    same, from invoicing's transaction start": (summarize(case_upper, len(replies)), None),
            "    yardstick: raw loop, its row committed": (summarize(raw_lat, len(replies)), None),
            "(b) step due -> email accepted by the SMTP sink": (summarize(email_lat, expected["email"]),
                                                                TARGET_P99["email"]),
            "    1. case opened -> step executed (dunning timer)": (summarize(stages["opened"]), None),
            "    2. step executed -> stored by the notifier": (summarize(stages["stored"]), None),
            "    3. stored -> notifier dispatch began": (summarize(stages["dispatched"]), None),
            "    4. dispatch began -> SMTP sink accepted": (summarize(stages["sink"]), None),
            "    step due -> SMS accepted by the SMS sink": (summarize(sms_lat, expected["sms"]), None),
        }
        summary["latency"] = {"rows": rows, "sent": len(replies), "seconds": sent_for, "rate": len(replies) / sent_for,
                              "missing cases": len(replies) - len(case_lat),
                              "missing emails": expected["email"] - len(email_lat),
                              "notifications": statuses}
        console.print(f"    notifications by status: {', '.join(f'{k} {v:,}' for k, v in sorted(statuses.items()))}")
    finally:
        for pool in pools.values():
            await pool.close()
        await shut_down(platform, [f"{platform.options.db_prefix}_yardstick"])


# -- the report -----------------------------------------------------------------------------------

def verdict(ok: bool) -> str:
    return "[green]PASS[/green]" if ok else "[red]BELOW TARGET[/red]"


def report(args: argparse.Namespace, summary: dict) -> None:
    if "yardstick" in summary:
        yard = summary["yardstick"]["rate"]
        table = Table(title=f"throughput: {args.invoices:,} invoices for {args.customers:,} customers"
                            " (events/s = invoicing-topic records / s)")
        for col in ("consumer", "records", "s", "events/s", "ratio to yardstick", "target", "verdict",
                    "to last batch's start"):
            table.add_column(col, justify="left" if col in ("consumer", "verdict") else "right")
        ingest = summary["ingest"]
        table.add_row("bulk API ingest, stored and published", f"{args.invoices:,}", f"{ingest['published']:.2f}",
                      f"{args.invoices / ingest['published']:,.0f}", "", "", "", "")
        table.add_row("yardstick: aiokafka + asyncpg (median)", "", "", f"{yard:,.0f}", "1.000", "", "",
                      "runs " + ", ".join(f"{r:,.0f}" for r in summary["yardstick"]["runs"]))
        for label, drains in (("alone", summary.get("alone", [])), ("together", summary.get("together", []))):
            for d in drains:
                ok = d.finished and d.rate >= TARGET_RATE and d.rate / yard >= TARGET_RATIO
                records = f"{d.records:,}" if d.finished else f"{d.committed:,} of {d.records:,}"
                seconds = f"{d.seconds:.2f}" + ("" if d.finished else " (out of time)")
                workers = f", {d.workers} workers" if d.workers > 1 else ""
                table.add_row(f"{d.name} ({label}{workers})", records, seconds,
                              f"{d.rate:,.0f}",
                              f"{d.rate / yard:.3f}", f">= {TARGET_RATE:,}/s, >= {TARGET_RATIO}", verdict(ok),
                              f"{(d.last_tx or math.nan) - d.started:.2f} s: {d.handled_rate:,.0f}/s")
        for name, c in summary.get("ceilings", {}).items():
            mine = next(d for d in summary["alone"] if d.name == name)
            table.add_row(f"{name}'s write set by COPY alone", f"{c.records:,}", f"{c.seconds:.2f}", f"{c.rate:,.0f}",
                          f"{c.rate / yard:.3f}", "", "", f"{name} alone / it: {mine.rate / c.rate:.3f}")
        console.print(table)
        console.print("s: from when the consumer could work (dunning, notifier: ready; risk: its first"
                      " inbox transaction) until its group's committed offsets covered every record; the last"
                      " column ends at the start of the last batch's transaction instead. Write set by COPY alone:"
                      " the rows the consumer left in its database, COPYed into a fresh copy of it, one transaction"
                      f" per {CEILING_BATCH:,} records, with no reads, checks or triggers and no topic to read: a"
                      " ceiling for any consumer that writes that set here (its ratio to the yardstick is the"
                      " most a consumer writing it could reach).")
    if "latency" in summary:
        lat = summary["latency"]
        table = Table(title=f"latency: {lat['sent']:,} invoices in {lat['seconds']:.1f} s ({lat['rate']:,.0f}/s"
                            f" of {args.rate:,}/s asked), ms")
        for col in ("measure", "count", "p50", "p90", "p99", "max", "target p99", "verdict"):
            table.add_column(col, justify="left" if col in ("measure", "verdict") else "right")
        for name, (s, target) in lat["rows"].items():
            ok = target is not None and s["count"] > 0 and s["p99"] < target
            count = f"{s['count']:,}" if s["count"] == s["of"] else f"{s['count']:,} of {s['of']:,}"
            table.add_row(name, count, ms(s["p50"]), ms(s["p90"]), ms(s["p99"]), ms(s["max"]),
                          "" if target is None else f"< {target * 1000:.0f}", "" if target is None else verdict(ok))
        console.print(table)
        console.print("(a) ends at dunning's clock in its handler, just before its commit, and starts at the bulk"
                      " reply's arrival, after invoicing's commit; (b) starts when the notice's lead invoice joined its"
                      " case, the moment its step fell due; 2 ends when the notifier's consumer batch began its"
                      " transaction; 3 ends at the notifier's clock as its dispatch batch began. \"never\": not there"
                      " when the run stopped"
                      f" waiting (cases missing: {lat['missing cases']:,}, emails missing: {lat['missing emails']:,}),"
                      " counted as infinitely late.")


async def run(args: argparse.Namespace, work: Path) -> None:
    console.print(f"bench.pipeline: {os.cpu_count()} cores; {load()}")
    summary: dict = {}
    try:
        if args.only in (None, "throughput"):
            await throughput(args, work, summary)
        if args.only in (None, "latency"):
            await latency(args, work, summary)
    finally:
        report(args, summary)
        console.print(f"done; {load()}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--invoices", type=int, default=200_000, help="throughput: invoices per set")
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--rate", type=int, default=1_000, help="latency: invoices per second")
    parser.add_argument("--seconds", type=int, default=60, help="latency: how long to send")
    parser.add_argument("--chunk", type=int, default=50, help="latency: invoices per paced bulk request")
    parser.add_argument("--yardstick-runs", type=int, default=3)
    parser.add_argument("--drain-timeout", type=float, default=600,
                        help="throughput: seconds a consumer gets to drain the topic; then its rate so far is reported")
    parser.add_argument("--settle-timeout", type=float, default=300,
                        help="latency: seconds after the last invoice for every case, email and SMS to arrive")
    parser.add_argument("--no-together", dest="together", action="store_false",
                        help="throughput: skip the run of all three consumers together (and its second ingest)")
    parser.add_argument("--only", choices=("throughput", "latency"))
    parser.add_argument("--consumers", type=lambda v: v.split(","), default=[c.process for c in CONSUMERS],
                        help="throughput: which to time, comma-separated (default: dunning,risk,notifier)")
    parser.add_argument("--workers", type=int, default=1,
                        help="throughput, each alone: processes in dunning's and risk's consumer group (replicas)")
    parser.add_argument("--no-ceiling", dest="ceiling", action="store_false",
                        help="throughput: skip each consumer's write-set ceiling")
    args = parser.parse_args(argv)
    configure_logging("bench", "warning", "console")
    with tempfile.TemporaryDirectory(prefix="tahsilat-pipeline-") as tmp:
        try:
            asyncio.run(run(args, Path(tmp)))
        except KeyboardInterrupt:
            console.print("[yellow]interrupted; the platform was stopped and its databases dropped[/yellow]")
            return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
