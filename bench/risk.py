"""The risk service's consumers (the behaviour consumer of `python -m services.risk serve` in the
worker role, and the faust early-warning stream, `python -m services.risk stream`) against a raw
aiokafka consume loop on the same broker and the same records, in the same run.

    .venv/bin/python -m bench.risk [--customers 5000] [--yardstick-runs 3] [--drain-timeout 1800]

Quick check (about a minute): `--quick` (= `--customers 800`). `--worker-log PATH` keeps the two processes' log.
`--only behaviour` or `--only warnings` runs that consumer's process alone, with the machine to itself.

The data: a payment history of `--customers` customers over the last ~14 months, built with the
contract models and `new_envelope` as the services publish them, one tenant, keyed by
`Envelope.key` (tenant:customer): per customer a CustomerUpserted, 3-6 invoices
(InvoiceIssued), payments with their allocations (PaymentReceived, partial ones for late payers)
and InvoicePaid with days_late drawn from the customer's profile (punctual -5..0, slightly late
1..10, late 15..40, very late 45..120 days), so the grades differ; InvoiceOverdue for what was
paid late and for the late payers' last invoice, still open; some payments reversed
(PaymentReversed); broken promises (PromiseToPayBroken, on the dunning topic) for late payers;
bounced emails (NotificationFailed, code bounced, on the notifier topic). About 18 events a
customer: ~90,000 by default. They are produced onto the invoicing, dunning and notifier topics
of a fresh embedded broker (6 partitions each, the platform's default) in event-time order, which
keeps each customer's order.

1. Yardstick: a raw loop in this process: AIOKafkaConsumer (own group, earliest, getmany of up to
   5,000 records, the consumers' batch size) over the three topics, `json.loads` of every value
   (the honest "raw" floor: no envelope model, no database), offsets committed after each batch;
   timed from its first batch to its last commit. The median of `--yardstick-runs` runs, each a
   new group.
   Ceiling (a second yardstick): the same loop, and per batch one INSERT of the whole batch's
   inbox rows (the inbox claim every consumer makes, `shared.inbox.claim_ids`) in its own
   transaction into a migrated database: the least any consumer with an inbox does here.
2. Risk: a fresh migrated risk database and the two processes, started together (their topic
   prefix that of the produced topics, a fresh STREAM_DATA_DIR), reading from the beginning. faust
   commits offsets every few seconds, so the honest measure of events through the consumers and
   the store is the inbox: timed per consumer (its name in the inbox: risk.behaviour,
   risk.warnings) from its first inbox row (its first batch's transaction start) until the first
   poll of the inbox (every 1% of the time so far, 0.2 s to 1 s) that saw its final count
   (risk.behaviour's count leaves out the events it has staged and not yet folded in order):
   every event for a consumer that handles
   every type (risk.behaviour), else the count it has once both groups have committed every
   offset (each commits after its batch's transaction). All together: from the first row of any
   until the last is done.
   PostgreSQL here may run with autovacuum off; then the bench ANALYZEs the risk database every
   5 s while the worker drains, as autovacuum would in production.

The goal: each risk consumer >= 0.10 of the yardstick (which does no database work at all); for
reference also bench.pipeline's goal for every consumer, >= 5,000 events/s.

Prints the figures (and the store's counts: risk_invoices rows, customer_risk rows per grade,
risk_assessments rows, RiskAssessed and other events in the outbox; dead letters; what the
processes' log says above info) and PASS or BELOW TARGET; never fails on a figure. The worker and
the broker are stopped, the databases dropped and the temporary directory removed at the end,
also on Ctrl-C or an error."""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, time as dtime, timedelta, timezone
from pathlib import Path

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from rich.console import Console
from rich.table import Table

from bench.pipeline import CommittedOffsets, CpuMeter, high_watermarks, load, progress_display
from services.risk.bootstrap import MIGRATIONS
from shared.contract import (
    CustomerUpserted, Envelope, InvoiceIssued, InvoiceOverdue, InvoicePaid, NotificationFailed, PaymentReceived,
    PaymentReversed, PromiseToPayBroken, Topics, new_envelope,
)
from shared.contract.events import Allocation
from shared.db import drop_database, ensure_database, migrate, with_database
from shared.inbox import claim_ids
from shared.kafka import create_producer, ensure_topics
from shared.logging import configure_logging
from tahsilat.embedded import Broker, free_port, resolve_postgres, stop_process

REPO = Path(__file__).resolve().parent.parent
TENANT = "bench"
PARTITIONS = 6  # the platform's default (ServiceSettings.kafka_partitions, PlatformOptions.partitions)
BATCH = 5_000  # records per poll batch: the consumers' default (consumer_max_batch)
GOAL_RATIO = 0.10  # risk / yardstick
GOAL_RATE = 5_000  # events/s: bench.pipeline's goal for every consumer, for reference
PROFILES = (("punctual", -5, 0), ("slightly late", 1, 10), ("late", 15, 40), ("very late", 45, 120))
LANGUAGES = ("en", "tr", "cs", "fa")
console = Console(width=max(Console().width, 150))


# -- the history ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Produced:
    topic: str
    key: bytes
    value: bytes
    type: str


def customer_history(c: int, end: datetime) -> list[tuple[datetime, str, object]]:
    """One customer's events as (event time, source, payload), in event-time order."""
    rnd = random.Random(c)
    cid = f"C{c:06d}"
    profile, least, most = PROFILES[c % len(PROFILES)]
    late_payer = least >= 15
    t0 = end - timedelta(days=430 - rnd.randint(0, 60), hours=rnd.randint(0, 23), minutes=rnd.randint(0, 59))
    out: list[tuple[datetime, str, object]] = [
        (t0, "invoicing", CustomerUpserted(customer_id=cid, name=f"Customer {c} ({profile})",
                                           language=LANGUAGES[c % len(LANGUAGES)], timezone="Europe/Istanbul",
                                           email=f"ap{c}@customer{c}.bench.example", billing_source="erp",
                                           credit_terms_days=30)),
    ]

    def at(day: date, hour: int) -> datetime:
        return datetime.combine(day, dtime(hour, rnd.randint(0, 59)), timezone.utc)

    n_invoices = rnd.randint(3, 6)
    last_payments: list[tuple[str, str, int, datetime]] = []  # (payment id, invoice id, amount, paid at)
    for k in range(n_invoices):
        issued_at = t0 + timedelta(days=30 * k + rnd.randint(0, 10), hours=1)
        issue, due = issued_at.date(), issued_at.date() + timedelta(days=30)
        amount = rnd.randint(50, 5_000) * 100
        iid, number = f"{cid}-I{k}", f"INV-{c:06d}-{k}"
        out.append((issued_at, "invoicing", InvoiceIssued(
            customer_id=cid, invoice_id=iid, billing_source="erp", external_id=iid, number=number, currency="EUR",
            amount_minor=amount, issue_date=issue, due_date=due)))
        overdue = InvoiceOverdue(customer_id=cid, invoice_id=iid, number=number, currency="EUR",
                                 open_amount_minor=amount, due_date=due,
                                 overdue_since=datetime.combine(due + timedelta(days=1), dtime(0), timezone.utc))
        if k == n_invoices - 1 and late_payer:  # the late payers' last invoice: overdue, still open
            out.append((at(due + timedelta(days=1), 6), "invoicing", overdue))
            if rnd.random() < 0.6:  # a promise to pay it, broken
                promised = due + timedelta(days=rnd.randint(5, 15))
                out.append((at(promised + timedelta(days=3), 8), "dunning", PromiseToPayBroken(
                    customer_id=cid, promise_id=str(uuid.UUID(int=c * 100 + k)), amount_minor=amount, paid_minor=0,
                    promised_date=promised, broken_at=at(promised + timedelta(days=3), 8))))
            continue
        days_late = rnd.randint(least, most)
        paid_day = due + timedelta(days=days_late)
        if days_late > 0:
            out.append((at(due + timedelta(days=1), 6), "invoicing", overdue))
        rest = amount
        if late_payer and rnd.random() < 0.5:  # part of it first, halfway to the settlement
            part = amount // 2
            rest = amount - part
            part_at = at(due + timedelta(days=days_late // 2), 10)
            out.append((part_at, "invoicing", PaymentReceived(
                customer_id=cid, payment_id=f"{cid}-P{k}a", billing_source="erp", external_id=f"{cid}-P{k}a",
                currency="EUR", amount_minor=part, received_at=part_at,
                allocations=[Allocation(invoice_id=iid, amount_minor=part, invoice_open_minor=rest)])))
            if rnd.random() < 0.5:  # ... after a promise to pay the rest, broken
                promised = due + timedelta(days=days_late // 2 + 2)
                out.append((at(promised + timedelta(days=3), 8), "dunning", PromiseToPayBroken(
                    customer_id=cid, promise_id=str(uuid.UUID(int=c * 100 + k)), amount_minor=rest, paid_minor=0,
                    promised_date=promised, broken_at=at(promised + timedelta(days=3), 8))))
        paid_at = at(paid_day, 11)
        out.append((paid_at, "invoicing", PaymentReceived(
            customer_id=cid, payment_id=f"{cid}-P{k}", billing_source="erp", external_id=f"{cid}-P{k}",
            currency="EUR", amount_minor=rest, received_at=paid_at,
            allocations=[Allocation(invoice_id=iid, amount_minor=rest, invoice_open_minor=0)])))
        out.append((paid_at + timedelta(seconds=1), "invoicing", InvoicePaid(
            customer_id=cid, invoice_id=iid, currency="EUR", amount_minor=amount, due_date=due, paid_at=paid_at,
            days_late=days_late)))
        last_payments.append((f"{cid}-P{k}", iid, rest, paid_at))
    if last_payments and rnd.random() < 0.12:  # the last payment bounced: its invoice is owed again
        payment_id, iid, paid, paid_at = last_payments[-1]
        reversed_at = paid_at + timedelta(days=2)
        out.append((reversed_at, "invoicing", PaymentReversed(
            customer_id=cid, payment_id=payment_id, billing_source="erp", external_id=payment_id, currency="EUR",
            amount_minor=paid, reversed_at=reversed_at, reason="returned by the bank",
            reopened=[Allocation(invoice_id=iid, amount_minor=paid, invoice_open_minor=paid)])))
    if rnd.random() < 0.10:  # an email bounced
        failed_at = t0 + timedelta(days=rnd.randint(40, 300), hours=3)
        out.append((failed_at, "notifier", NotificationFailed(
            customer_id=cid, notification_key=f"case-{cid}:overdue_7:email", channel="email",
            reason="550 5.1.1 user unknown", failed_at=failed_at, code="bounced", bounce_class="hard")))
    out.sort(key=lambda e: e[0])  # stable: an event's order among equal times is kept
    return out


def build_history(customers: int, topics: Topics, end: datetime) -> list[Produced]:
    """Every customer's events, in event-time order across customers (each customer's order kept),
    as the records to produce."""
    timed: list[tuple[datetime, Envelope]] = []
    for c in range(customers):
        for moment, source, payload in customer_history(c, end):
            timed.append((moment, new_envelope(payload, source=source, tenant_id=TENANT, subject=payload.customer_id,
                                               time=moment)))
    timed.sort(key=lambda e: e[0])
    topic_of = {"invoicing": topics.invoicing, "dunning": topics.dunning, "notifier": topics.notifier}
    return [Produced(topic_of[env.source], env.key.encode(), env.model_dump_json().encode(), env.type)
            for _, env in timed]


async def produce(bootstrap: str, records: list[Produced]) -> float:
    """Send every record (futures awaited in chunks); seconds until all were acknowledged."""
    producer = create_producer(bootstrap)
    await producer.start()
    try:
        with progress_display() as progress:
            task = progress.add_task("producing the history", total=len(records))
            started = time.perf_counter()
            for s in range(0, len(records), BATCH):
                chunk = records[s:s + BATCH]
                futures = [await producer.send(r.topic, r.value, key=r.key) for r in chunk]
                await asyncio.gather(*futures)
                progress.advance(task, len(chunk))
            return time.perf_counter() - started
    finally:
        await producer.stop()


# -- the yardsticks -------------------------------------------------------------------------------

async def raw_loop(bootstrap: str, topics: list[str], total: int, label: str, progress,
                   pool: asyncpg.Pool | None = None, consumer_name: str = "") -> float:
    """Consume every record of `topics` with a new group, json.loads each value, (with a pool: one
    INSERT of the batch's inbox rows, its own transaction), commit the offsets after each batch;
    seconds from the first batch to the last commit."""
    consumer = AIOKafkaConsumer(
        *topics, bootstrap_servers=bootstrap, group_id=f"bench-risk-raw-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False, auto_offset_reset="earliest", session_timeout_ms=6000, heartbeat_interval_ms=1000,
        fetch_max_wait_ms=20, max_partition_fetch_bytes=8 * 1024 * 1024)
    task = progress.add_task(label, total=total)
    await consumer.start()
    try:
        consumed, started = 0, None
        deadline = time.monotonic() + 1800
        while consumed < total:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{label}: {consumed} of {total} records after 1800 s")
            batches = await consumer.getmany(timeout_ms=500, max_records=BATCH)
            records = [r for rs in batches.values() for r in rs]
            if not records:
                continue
            if started is None:
                started = time.perf_counter()
            decoded = [json.loads(r.value) for r in records]
            if pool is not None:
                async with pool.acquire() as conn, conn.transaction():
                    await claim_ids(conn, consumer_name, [uuid.UUID(d["id"]) for d in decoded],
                                    [d["type"] for d in decoded], [d["tenant_id"] for d in decoded])
            await consumer.commit({tp: rs[-1].offset + 1 for tp, rs in batches.items()})
            consumed += len(records)
            progress.advance(task, len(records))
        seconds = time.perf_counter() - started
    finally:
        await consumer.stop()
    if consumed != total:
        raise RuntimeError(f"{label}: consumed {consumed} records, {total} were produced")
    if pool is not None and await pool.fetchval("SELECT count(*) FROM inbox WHERE consumer = $1",
                                                consumer_name) != total:
        raise RuntimeError(f"{label}: inbox row count differs from the records consumed")
    return seconds


def parse_cost(records: list[Produced], sample: int = 20_000) -> float:
    """Seconds per record of what the consumers' EventProcessor does to every record before any
    database work: Envelope.model_validate_json and the payload model."""
    chosen = records[:: max(1, len(records) // sample)]
    started = time.perf_counter()
    for r in chosen:
        Envelope.model_validate_json(r.value).payload()
    return (time.perf_counter() - started) / len(chosen)


# -- the risk worker ------------------------------------------------------------------------------

class Meter(CpuMeter):
    """CpuMeter (bench.pipeline) with this run's own processes: the worker and the broker."""

    def __init__(self, db_prefix: str, procs: dict[str, subprocess.Popen | None]) -> None:
        super().__init__(None, db_prefix)
        self.procs = procs

    def _pids(self) -> dict[int, str]:
        pids = super()._pids()
        for name, proc in self.procs.items():
            if proc is not None and proc.poll() is None:
                pids[proc.pid] = name
        return pids


@dataclass
class Agent:
    consumer: str  # its consumer name in the inbox
    events: int = 0  # inbox rows at the end
    first: float = float("nan")  # epoch: its first batch's transaction began
    last_batch: float = float("nan")  # epoch: its last batch's transaction began
    done: float = float("nan")  # epoch: the first poll that saw its final count
    by_type: dict[str, int] = field(default_factory=dict)
    quarters: list[float] = field(default_factory=list)  # events/s over each quarter of its events

    @property
    def seconds(self) -> float:
        return self.done - self.first

    @property
    def rate(self) -> float:
        return self.events / self.seconds


@dataclass
class Drain:
    agents: list[Agent]
    finished: bool
    launched: float
    committed: int
    records: int
    cpu: str  # the meter's line, from the first batch until done

    @property
    def first(self) -> float:
        return min(a.first for a in self.agents)

    @property
    def seconds(self) -> float:
        return max(a.done for a in self.agents) - self.first


class Worker:
    """The risk service's two consumers as the platform runs them, each its own process with this
    run's database and topic prefix: the risk service in the worker role (`serve`, ROLES
    worker,relay: the behaviour consumer, and the relay publishing what it raises) and the faust
    stream (`stream`: the early warnings)."""

    COMMANDS = {"risk-worker": "serve", "risk-stream": "stream"}
    GROUPS = {"risk-worker": "risk.behaviour", "risk-stream": "risk-stream"}  # after the topic prefix

    def __init__(self, url: str, bootstrap: str, prefix: str, work: Path,
                 names: tuple[str, ...] = ("risk-worker", "risk-stream")) -> None:
        self.names = names
        self.log = work / "risk.log"  # both processes, interleaved
        self.env = {**os.environ, "DATABASE_URL": url, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "TOPIC_PREFIX": prefix,
                    "KAFKA_PARTITIONS": str(PARTITIONS), "STREAM_DATA_DIR": str(work / "stream"),
                    "ROLES": "worker,relay", "HTTP_PORT": str(free_port()), "LOG_FORMAT": "console",
                    "LOG_LEVEL": "info"}
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self) -> None:
        with self.log.open("ab") as out:
            for name in self.names:
                self.procs[name] = subprocess.Popen([sys.executable, "-m", "services.risk", self.COMMANDS[name]],
                                                    env=self.env,
                                                    cwd=REPO, stdout=out, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        for proc in self.procs.values():
            stop_process(proc)

    def exited(self) -> dict[str, int]:
        return {name: p.returncode for name, p in self.procs.items() if p.poll() is not None}

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def complaints(self) -> list[tuple[str, int, str]]:
        """The log's lines above info (the console format's level: warning, error, critical; and
        tracebacks), grouped by message with its numbers blanked: (message, count, last line)."""
        try:
            text = _ANSI.sub("", self.log.read_text(errors="replace")).splitlines()
        except OSError:
            return []
        groups: dict[str, list] = {}
        for line in text:
            level = _LEVEL.search(line)
            if level is None and not line.startswith("Traceback"):
                continue
            message = re.sub(r"\s+", " ", line[level.end():] if level else line).strip()
            message = re.sub(r"\d+", "N", re.sub(r" \[[\w.]+\]", "", message))  # without its logger's name
            key = f"{level.group(1) if level else 'traceback'}: {message}"
            group = groups.setdefault(key, [0, line])
            group[0] += 1
            group[1] = line
        return sorted(((k, n, last) for k, (n, last) in groups.items()), key=lambda g: -g[1])


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_LEVEL = re.compile(r"\[(warning|error|critical)\s*\]")


async def analyze_loop(pool: asyncpg.Pool, every: float = 5.0) -> None:
    """What autovacuum's analyze would do while the worker fills the tables."""
    while True:
        await asyncio.sleep(every)
        await pool.execute("ANALYZE")


async def drain(worker: Worker, pool: asyncpg.Pool, bootstrap: str, groups: list[str],
                ends: dict[TopicPartition, int], total: int, timeout: float, meter: Meter) -> Drain:
    """Start the worker and poll its inbox (every 1% of the time so far) until every agent is done
    (see the module docstring) or `timeout` seconds have passed."""
    samples: list[tuple[float, dict[str, int]]] = []
    target = sum(ends.values())
    analyze = None
    if await pool.fetchval("SHOW autovacuum") == "off":
        analyze = asyncio.create_task(analyze_loop(pool))
    async with contextlib.AsyncExitStack() as stack:
        readers = [await stack.enter_async_context(CommittedOffsets(bootstrap, g, list(ends))) for g in groups]
        launched = time.time()
        worker.start()
        meter.procs.update(worker.procs)
        meter.start()  # restarted at its first batch
        deadline = time.monotonic() + timeout
        committed = 0
        finished = False
        cpu: str | None = None
        last_commit_check = 0.0
        try:
            with progress_display() as progress:
                tasks: dict[str, int] = {}
                join = progress.add_task("risk: starting, joining the groups", total=None)
                while True:
                    now = time.time()
                    # risk.behaviour stages a batch, then folds it in event order: done is folded
                    counts = {r["consumer"]: r["n"] for r in await pool.fetch(
                        "SELECT consumer, count(*) - CASE WHEN consumer = 'risk.behaviour'"
                        "   THEN (SELECT count(*) FROM risk_pending_events) ELSE 0 END AS n"
                        " FROM inbox GROUP BY consumer")}
                    samples.append((now, counts))
                    for name, n in counts.items():
                        if name not in tasks:
                            if join is not None:  # its first batch is in: the CPU from now on
                                progress.remove_task(join)
                                join = None
                                meter.start()
                            tasks[name] = progress.add_task(f"risk: {name} inbox", total=total)
                        progress.update(tasks[name], completed=n)
                    if cpu is None and counts and all(n >= total for n in counts.values()):
                        cpu = meter.stop()  # what it used to handle them, not the wait for its commit below
                    if counts and time.monotonic() - last_commit_check > 0.5:
                        last_commit_check = time.monotonic()
                        committed = min([await r.total() for r in readers])
                        # Every consumer has handled every record it takes: each commits an offset after
                        # its batch's transaction (each one's "done" is the first poll that saw its final
                        # count, not this moment).
                        stable = [c for t, c in samples if t >= now - 1.0]
                        if committed >= target and all(c == counts for c in stable):
                            finished = True
                            break
                    if worker.exited():
                        raise RuntimeError(f"a risk process exited: {worker.exited()}; the log ends:\n"
                                           f"{worker.tail()}")
                    if time.monotonic() > deadline:
                        console.print(f"[yellow]    out of time after {timeout:.0f} s: {counts}[/yellow]")
                        break
                    # Counting the inbox reads all of it, competing with the workers for PostgreSQL:
                    # poll at 1% of the time so far (0.2 s to 1 s), so a done time is that close.
                    await asyncio.sleep(min(1.0, max(0.2, (time.time() - launched) / 100)))
        finally:
            cpu = cpu or meter.stop()
            if analyze is not None:
                analyze.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await analyze
        committed_at = time.time()
    final = samples[-1][1]
    agents = []
    for name, n in sorted(final.items()):
        a = Agent(name, n)
        a.done = next(t for t, c in samples if c.get(name, 0) >= n)
        row = await pool.fetchrow("SELECT min(processed_at) AS first, max(processed_at) AS last FROM inbox"
                                  " WHERE consumer = $1", name)
        a.first, a.last_batch = row["first"].timestamp(), row["last"].timestamp()
        marks = [a.first] + [next(t for t, c in samples if c.get(name, 0) >= q * n / 4) for q in (1, 2, 3, 4)]
        a.quarters = [n / 4 / max(later - earlier, 1e-9) for earlier, later in zip(marks, marks[1:])]
        a.by_type = {r["event_type"]: r["n"] for r in await pool.fetch(
            "SELECT event_type, count(*) AS n FROM inbox WHERE consumer = $1 GROUP BY 1 ORDER BY 1", name)}
        agents.append(a)
    if committed < target:
        console.print(f"[yellow]    the risk groups had committed (the least of the two) {committed:,} of {target:,} offsets"
                      f" {committed_at - launched:.0f} s after launch[/yellow]")
    return Drain(agents, finished, launched, committed, target, cpu)


async def store_counts(pool: asyncpg.Pool) -> dict:
    return {
        "risk_invoices": await pool.fetchval("SELECT count(*) FROM risk_invoices"),
        "risk_invoices by status": {r["status"]: r["n"] for r in await pool.fetch(
            "SELECT status, count(*) AS n FROM risk_invoices GROUP BY 1 ORDER BY 1")},
        "risk_customers": await pool.fetchval("SELECT count(*) FROM risk_customers"),
        "customer_risk by grade": {r["grade"] or "(none)": r["n"] for r in await pool.fetch(
            "SELECT grade, count(*) AS n FROM customer_risk GROUP BY 1 ORDER BY 1")},
        "risk_assessments": await pool.fetchval("SELECT count(*) FROM risk_assessments"),
        "outbox by type": {r["event_type"]: r["n"] for r in await pool.fetch(
            "SELECT event_type, count(*) AS n FROM outbox GROUP BY 1 ORDER BY 1")},
    }


# -- the run --------------------------------------------------------------------------------------

def verdict(ok: bool) -> str:
    return "[green]PASS[/green]" if ok else "[red]BELOW TARGET[/red]"


async def run(args: argparse.Namespace, work: Path, broker: Broker) -> None:
    console.print(f"bench.risk: {os.cpu_count()} cores; {load()}")
    server, origin = await resolve_postgres(work / "pg")
    tag = uuid.uuid4().hex[:8]
    db_prefix = f"bench_{tag}"
    prefix = f"bench{tag}."
    topics = Topics(prefix)
    sources = [topics.invoicing, topics.dunning, topics.notifier]
    risk_db, ceiling_db = f"{db_prefix}_risk", f"{db_prefix}_ceiling"
    worker: Worker | None = None
    pools: list[asyncpg.Pool] = []
    try:
        bootstrap = broker.start()
        console.print(f"PostgreSQL: {origin}; broker {bootstrap} (embedded, memory); topics {prefix}*,"
                      f" {PARTITIONS} partitions each")
        await ensure_topics(bootstrap, topics.all(), PARTITIONS)
        meter = Meter(db_prefix, {"broker": broker.proc})

        # -- the history
        end = datetime.combine(datetime.now(timezone.utc).date(), dtime(0), timezone.utc)
        with console.status(f"building the history of {args.customers:,} customers"):
            started = time.perf_counter()
            records = build_history(args.customers, topics, end)
            built = time.perf_counter() - started
        total = len(records)
        types: dict[str, int] = {}
        for r in records:
            types[r.type] = types.get(r.type, 0) + 1
        size = sum(len(r.value) for r in records)
        console.print(f"[bold]1[/bold] history: {total:,} events ({size / total:,.0f} B each on average) for"
                      f" {args.customers:,} customers, built in {built:.1f} s: "
                      + ", ".join(f"{t} {n:,}" for t, n in sorted(types.items(), key=lambda kv: -kv[1])))
        produced = await produce(bootstrap, records)
        ends: dict[TopicPartition, int] = {}
        for t in sources:
            ends.update(await high_watermarks(bootstrap, t))
        on_broker = sum(ends.values())
        console.print(f"    produced in {produced:.1f} s ({total / produced:,.0f}/s); on the broker: "
                      + ", ".join(f"{t.removeprefix(prefix)} {sum(v for tp, v in ends.items() if tp.topic == t):,}"
                                  for t in sources))
        if on_broker != total:
            raise RuntimeError(f"the broker holds {on_broker:,} records of the {total:,} produced")
        per_record = parse_cost(records)
        console.print(f"    for reference, Envelope.model_validate_json + payload() alone (what every consumer"
                      f" does per record before any database work): {per_record * 1e6:,.1f} µs a record, at most"
                      f" {1 / per_record:,.0f}/s on one core")

        # -- the yardsticks
        console.print(f"[bold]2[/bold] yardstick: aiokafka getmany (up to {BATCH:,}) + json.loads, offsets committed"
                      f" after each batch ({args.yardstick_runs} runs, the median) …")
        meter.start()
        with progress_display() as progress:
            yard_times = [await raw_loop(bootstrap, sources, total, f"yardstick run {k + 1}", progress)
                          for k in range(args.yardstick_runs)]
        yard = total / statistics.median(yard_times)
        console.print(f"    {', '.join(f'{total / t:,.0f}' for t in yard_times)} events/s; median {yard:,.0f}/s;"
                      f" {load()}")
        console.print(f"    {meter.stop()}")

        console.print("    ceiling: the same, and one INSERT of the batch's inbox rows per batch, its own"
                      f" transaction, into a migrated database ({args.yardstick_runs} runs, the median) …")
        await ensure_database(server, ceiling_db)
        await migrate(with_database(server, ceiling_db), MIGRATIONS)
        ceiling_pool = await asyncpg.create_pool(with_database(server, ceiling_db), min_size=1, max_size=2)
        pools.append(ceiling_pool)
        meter.start()
        with progress_display() as progress:
            ceiling_times = [await raw_loop(bootstrap, sources, total, f"ceiling run {k + 1}", progress, ceiling_pool,
                                            f"bench.ceiling{k}") for k in range(args.yardstick_runs)]
        ceiling = total / statistics.median(ceiling_times)
        console.print(f"    {', '.join(f'{total / t:,.0f}' for t in ceiling_times)} events/s; median"
                      f" {ceiling:,.0f}/s; {load()}")
        console.print(f"    {meter.stop()}")
        await ceiling_pool.close()
        pools.remove(ceiling_pool)
        await drop_database(server, ceiling_db)

        # -- the risk worker
        names = {"both": ("risk-worker", "risk-stream"), "behaviour": ("risk-worker",),
                 "warnings": ("risk-stream",)}[args.only]
        console.print(f"[bold]3[/bold] risk: {' and '.join(names)} (`python -m services.risk serve` in the worker"
                      " role; `... stream`, faust) on a fresh migrated database, from the beginning of the three"
                      " topics …")
        await ensure_database(server, risk_db)
        risk_url = with_database(server, risk_db)
        await migrate(risk_url, MIGRATIONS)
        pool = await asyncpg.create_pool(risk_url, min_size=1, max_size=2)
        pools.append(pool)
        console.print(f"    PostgreSQL autovacuum: {await pool.fetchval('SHOW autovacuum')} (when off, the bench"
                      " ANALYZEs the risk database every 5 s in its stead)")
        worker = Worker(risk_url, bootstrap, prefix, work, names)
        d = await drain(worker, pool, bootstrap, [prefix + Worker.GROUPS[n] for n in names], ends, total,
                        args.drain_timeout, meter)
        console.print(f"    from its first batch until done, {d.cpu}")
        for a in d.agents:
            console.print(f"    {a.consumer}: {a.events:,} events from its first batch ({a.first - d.launched:.1f} s"
                          f" after launch) in {a.seconds:.2f} s: {a.rate:,.0f} events/s; its last batch began after"
                          f" {a.last_batch - a.first:.2f} s; events/s over each quarter of its events: "
                          + ", ".join(f"{q:,.0f}" for q in a.quarters) + "; handled: "
                          + ", ".join(f"{t} {n:,}" for t, n in a.by_type.items()))
        dead = sum((await high_watermarks(bootstrap, topics.dead_letter)).values())
        counts = await store_counts(pool)
        complaints = worker.complaints()
        worker.stop()

        # -- the report
        table = Table(title=f"risk stream: {total:,} events of {args.customers:,} customers (events/s = records of"
                            " the invoicing, dunning and notifier topics / s)")
        for col in ("consumer", "events", "s", "events/s", "ratio to yardstick", "goal", "verdict"):
            table.add_column(col, justify="left" if col in ("consumer", "goal", "verdict") else "right")
        table.add_row("yardstick: aiokafka + json.loads (median)", f"{total:,}", f"{statistics.median(yard_times):.2f}",
                      f"{yard:,.0f}", "1.000", "", "")
        table.add_row("ceiling: yardstick + one inbox INSERT a batch (median)", f"{total:,}",
                      f"{statistics.median(ceiling_times):.2f}", f"{ceiling:,.0f}", f"{ceiling / yard:.3f}", "", "")
        for a in d.agents:
            finished = d.finished and (a.events >= total or d.committed >= d.records)
            ok = finished and a.rate / yard >= GOAL_RATIO
            table.add_row(f"risk: {a.consumer}" + ("" if finished else " (out of time)"), f"{a.events:,}",
                          f"{a.seconds:.2f}", f"{a.rate:,.0f}", f"{a.rate / yard:.3f}", f">= {GOAL_RATIO:.2f}",
                          verdict(ok))
        if len(d.agents) > 1:
            rate = total / d.seconds
            table.add_row("risk: every consumer done", f"{total:,}", f"{d.seconds:.2f}", f"{rate:,.0f}",
                          f"{rate / yard:.3f}", f">= {GOAL_RATIO:.2f}", verdict(d.finished and rate / yard >= GOAL_RATIO))
        console.print(table)
        slowest = min((a.rate for a in d.agents), default=0.0)
        console.print(f"for reference, bench.pipeline's goal for every consumer, >= {GOAL_RATE:,} events/s:"
                      f" {slowest:,.0f}/s {verdict(d.finished and slowest >= GOAL_RATE)}; risk / ceiling"
                      f" {slowest / ceiling:.3f}")
        console.print("s: yardstick and ceiling from the first batch to the last commit; risk from the start of"
                      " its first batch's transaction (the first inbox row) until the first poll (every 1% of the"
                      " time so far) that"
                      " saw its final count in the inbox; the offset commits (faust's every ~2.8 s) come later and"
                      " are not counted.")
        console.print(f"store: risk_invoices {counts['risk_invoices']:,} ("
                      + ", ".join(f"{k} {v:,}" for k, v in counts["risk_invoices by status"].items())
                      + f"; InvoiceIssued {types.get('InvoiceIssued', 0):,}); risk_customers {counts['risk_customers']:,};"
                      f" customer_risk by grade: " + ", ".join(f"{k} {v:,}" for k, v in counts["customer_risk by grade"].items())
                      + f" (customers {args.customers:,}); risk_assessments {counts['risk_assessments']:,};"
                      " outbox: " + (", ".join(f"{k} {v:,}" for k, v in counts["outbox by type"].items()) or "empty")
                      + f"; dead letters {dead:,}; offsets committed {d.committed:,} of {d.records:,}")
        if complaints:
            console.print(f"[yellow]the worker's log has {sum(n for _, n, _ in complaints):,} lines above info:[/yellow]")
            for message, n, last in complaints[:10]:
                console.print(f"    {n:,} x {message[:160]}", markup=False, highlight=False)
                console.print(f"        last: {last[:300]}", markup=False, highlight=False)
        else:
            console.print("the worker's log has nothing above info")
        console.print(f"done; {load()}")
    finally:
        if worker is not None:
            await asyncio.to_thread(worker.stop)
            if args.worker_log is not None and worker.log.exists():
                shutil.copyfile(worker.log, args.worker_log)
                console.print(f"the worker's log: {args.worker_log}")
        for p in pools:
            await p.close()
        broker.stop()
        for name in (risk_db, ceiling_db):
            with contextlib.suppress(Exception):
                await drop_database(server, name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.risk", description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=5_000, help="about 18 events each")
    parser.add_argument("--quick", action="store_true", help="a run of about a minute: --customers 800")
    parser.add_argument("--yardstick-runs", type=int, default=3)
    parser.add_argument("--only", choices=("both", "behaviour", "warnings"), default="both",
                        help="run one consumer's process alone (default: both, as the platform runs them)")
    parser.add_argument("--worker-log", type=Path, help="keep a copy of the risk worker's log here")
    parser.add_argument("--drain-timeout", type=float, default=1800,
                        help="seconds the worker gets to handle every event; then its rate so far is reported")
    args = parser.parse_args(argv)
    if args.quick:
        args.customers = 800
    configure_logging("bench", "warning", "console")
    with tempfile.TemporaryDirectory(prefix="tahsilat-bench-risk-") as tmp:
        broker = Broker(log_file=Path(tmp) / "broker.log")
        try:
            asyncio.run(run(args, Path(tmp), broker))
        except KeyboardInterrupt:
            broker.stop()
            console.print("[yellow]interrupted; the worker and the broker were stopped, the databases dropped[/yellow]")
            return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
