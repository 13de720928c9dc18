"""The dunning step timer under load (issue #9): due steps claimed and turned into consolidated
NotificationRequested events, against a raw SQL claim loop on the same data in the same run.

    .venv/bin/python -m bench.dunning [--customers 50000] [--invoices-per-customer 2] [--batch 200]

Quick check: `--customers 5000`.

The data: `--customers` customers with `--invoices-per-customer` open EUR invoices each, one case
per customer, every invoice with two steps due now (its overdue_7 email and SMS; the standard
policy) and its later steps still to come: 200,000 due steps across 50,000 customers by default. It is
written once into a template database (a migrated dunning database, COPY), and each run gets a
fresh copy of it (CREATE DATABASE ... TEMPLATE), so every run starts from the same rows.

1. Yardstick: a raw claim loop in SQL, one statement per batch of `--batch` steps: claim the due
   steps with FOR UPDATE SKIP LOCKED, mark them executed, and write one outbox row per step with a
   small JSON payload (no consolidation, no policy, no amounts): the least a timer can do. It
   gets its own index on (due_at) of the scheduled steps, so its ORDER BY ... LIMIT is an index
   scan (the engine reads the cases' timer, `cases.next_due_at`, instead).
   Ceiling: what the engine writes for a batch of cases (each step marked, one notice per case
   and channel with its items as JSON, two events per notice, the cases' timers moved) in one
   SQL statement per batch, no Python and nothing decided: the physical limit of that work here.
2. The engine: `Dunning.claim_due_steps(--batch)` until nothing is due, in one process, one claim
   loop (and again with two loops, STEP_CONCURRENCY=2, as the service runs them): claims
   `--batch` cases at a time, consolidates each case's items into one notice per channel, marks
   the steps, writes the notices and the outbox rows (NotificationRequested, DunningStepExecuted).
   Rate: due steps done per second; the ratio to the yardstick is the figure (goal >= 0.3).
3. Two workers: the same, in two processes on one copy (SKIP LOCKED shares the cases); goal
   >= 1.6x one worker where the cores allow: the machine's cores are printed, and PostgreSQL runs
   on the same cores.

Prints the figures and PASS or BELOW TARGET; never fails on a figure. The databases are dropped
at the end."""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import time
import uuid
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import asyncpg
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from services.dunning.adapters import policy_store
from services.dunning.bootstrap import MIGRATIONS
from services.dunning.domain.policy import parse_policy, plan_item
from services.dunning.service_layer.handlers import Dunning
from services.dunning.service_layer.portal import Portal
from shared.clock import ManualClock
from shared.contract import Topics
from shared.db import create_pool, drop_database, ensure_database, migrate, with_database
from tahsilat.embedded import resolve_postgres

console = Console()
NOW = datetime(2026, 6, 1, 10, 0, tzinfo=timezone.utc)
DUE = date(2026, 5, 24)  # overdue_7 falls due 2026-05-31 09:00 UTC: due at NOW, the rest later
TENANT = "bench"

_RAW_CLAIM = """
WITH claimed AS (
    SELECT tenant_id, invoice_id, round, step FROM item_steps
    WHERE status = 'scheduled' AND due_at <= $1 ORDER BY due_at LIMIT $2 FOR UPDATE SKIP LOCKED
), done AS (
    UPDATE item_steps s SET status = 'executed', executed_at = $1 FROM claimed c
    WHERE s.tenant_id = c.tenant_id AND s.invoice_id = c.invoice_id AND s.round = c.round AND s.step = c.step
    RETURNING s.tenant_id, s.invoice_id, s.step
)
INSERT INTO outbox (topic, event_id, tenant_id, event_type, key, envelope)
SELECT 'bench', gen_random_uuid(), tenant_id, 'StepDue', tenant_id || ':' || invoice_id,
       jsonb_build_object('invoice_id', invoice_id, 'step', step, 'at', $1::timestamptz)
FROM done"""


# The physical ceiling of the engine's work here: what the engine writes for a batch of cases
# (each due step marked, one notice per case and channel listing the items as JSON, two events
# per notice, the cases' timers moved), done by one SQL statement per batch and no Python, with
# nothing decided (no policy, pauses, minimums, stale steps, fees or interest).
_CEILING_CLAIM = """
WITH c AS (
    SELECT tenant_id, case_id, customer_id, notices FROM cases
    WHERE status = 'open' AND next_due_at <= $1 ORDER BY next_due_at LIMIT $2 FOR UPDATE SKIP LOCKED
), due AS MATERIALIZED (
    SELECT s.ctid AS row_id, s.tenant_id, s.invoice_id, s.step, s.channel, s.template, i.case_id, i.number,
           i.open_minor, i.due_date
    FROM c JOIN case_items i ON i.tenant_id = c.tenant_id AND i.case_id = c.case_id AND i.status = 'open'
    JOIN item_steps s ON s.tenant_id = i.tenant_id AND s.invoice_id = i.invoice_id AND s.round = i.round
     AND s.status = 'scheduled' AND s.due_at <= $1
), per_channel AS (
    SELECT tenant_id, case_id, channel, min(step) AS step, min(template) AS template, sum(open_minor) AS total,
           min(invoice_id::text)::uuid AS lead,
           jsonb_agg(jsonb_build_object('invoice_id', invoice_id, 'number', number, 'currency', 'EUR',
                     'open_amount_minor', open_minor, 'due_date', due_date, 'days_overdue', $1::date - due_date,
                     'fees_minor', 0, 'interest_minor', 0) ORDER BY due_date, number) AS items,
           row_number() OVER (PARTITION BY tenant_id, case_id ORDER BY channel) AS n
    FROM due GROUP BY tenant_id, case_id, channel
), notice AS (
    INSERT INTO notices (tenant_id, notice_id, case_id, customer_id, sequence, step, channel, template,
                         notification_key, currency, items, total_minor, created_at, lead_invoice)
    SELECT p.tenant_id, gen_random_uuid(), p.case_id, c.customer_id, c.notices + p.n, p.step, p.channel, p.template,
           p.case_id || ':' || p.step || ':' || p.channel || ':' || (c.notices + p.n), 'EUR', p.items, p.total, $1, p.lead
    FROM per_channel p JOIN c USING (tenant_id, case_id)
    RETURNING *
), marked AS (
    UPDATE item_steps s SET status = 'executed', executed_at = $1 FROM due WHERE s.ctid = due.row_id RETURNING 1
), moved AS (
    UPDATE cases k SET notices = k.notices + 2, next_due_at = (
        SELECT min(x.due_at) FROM case_items i JOIN item_steps x ON x.tenant_id = i.tenant_id
          AND x.invoice_id = i.invoice_id AND x.round = i.round AND x.status = 'scheduled' AND x.due_at > $1
        WHERE i.tenant_id = k.tenant_id AND i.case_id = k.case_id AND i.status = 'open')
    FROM c WHERE k.tenant_id = c.tenant_id AND k.case_id = c.case_id RETURNING 1
), events AS (
    INSERT INTO outbox (topic, event_id, tenant_id, event_type, key, envelope)
    SELECT 'bench', gen_random_uuid(), tenant_id, 'NotificationRequested', tenant_id || ':' || customer_id,
           jsonb_build_object('type', 'NotificationRequested', 'time', $1::timestamptz, 'data', jsonb_build_object(
             'customer_id', customer_id, 'notification_key', notification_key, 'case_id', case_id, 'step', step,
             'channel', channel, 'template', template, 'items', items, 'requested_at', $1::timestamptz))
    FROM notice
    UNION ALL
    SELECT 'bench', gen_random_uuid(), tenant_id, 'DunningStepExecuted', tenant_id || ':' || customer_id,
           jsonb_build_object('type', 'DunningStepExecuted', 'time', $1::timestamptz, 'data', jsonb_build_object(
             'customer_id', customer_id, 'case_id', case_id, 'invoice_id', lead_invoice, 'step', step,
             'channel', channel, 'executed_at', $1::timestamptz, 'notification_key', notification_key,
             'invoice_ids', (SELECT jsonb_agg(e->'invoice_id') FROM jsonb_array_elements(items) AS e)))
    FROM notice
    RETURNING 1
)
SELECT (SELECT count(*) FROM marked) AS steps, (SELECT count(*) FROM moved) AS cases"""


async def build_template(server: str, name: str, customers: int, per_customer: int) -> int:
    """A migrated dunning database holding the data; returns the number of due steps."""
    await drop_database(server, name)
    await ensure_database(server, name)
    url = with_database(server, name)
    await migrate(url, MIGRATIONS)
    pool = await create_pool(url, max_size=1)
    async with pool.acquire() as conn, conn.transaction():
        await policy_store.load_files(conn, [policy_store.SHIPPED], NOW)
    await pool.close()
    conn = await asyncpg.connect(url)
    try:
        spec = parse_policy((policy_store.SHIPPED / "standard.yaml").read_text())
        version = await conn.fetchval("SELECT version FROM policies WHERE tenant_id = '*' AND name = 'standard'"
                                      " AND status = 'active'")
        plan = plan_item(spec, DUE, "UTC")
        cases, items, steps = [], [], []
        with Progress(TextColumn("  {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console) as progress:
            task = progress.add_task("generating customers", total=customers)
            for c in range(customers):
                customer, case_id = f"C{c:07d}", uuid.uuid4()
                cases.append((TENANT, case_id, customer, "EUR", "open", NOW - timedelta(days=30),
                              NOW - timedelta(hours=1)))
                for n in range(per_customer):
                    invoice = uuid.uuid4()
                    items.append((TENANT, invoice, case_id, customer, f"INV-{c}-{n}", "EUR", 10_000 + n, 10_000 + n,
                                  DUE, "*", "standard", version, NOW - timedelta(days=30)))
                    for s in plan:
                        if s.offset_days < 7:
                            continue  # already sent in this story; overdue_7 (email and SMS) is due now
                        status = "scheduled"
                        due_at = s.due_at if s.offset_days > 7 else NOW - timedelta(hours=1)
                        steps.append((TENANT, invoice, 0, s.name, s.position, s.channel, s.template, s.offset_days,
                                      due_at, status))
                progress.advance(task)
            task = progress.add_task("writing (COPY)", total=3)
            await conn.copy_records_to_table("cases", records=cases, columns=(
                "tenant_id", "case_id", "customer_id", "currency", "status", "opened_at", "next_due_at"))
            progress.advance(task)
            await conn.copy_records_to_table("case_items", records=items, columns=(
                "tenant_id", "invoice_id", "case_id", "customer_id", "number", "currency", "amount_minor", "open_minor",
                "due_date", "policy_tenant", "policy_name", "policy_version", "joined_at"))
            progress.advance(task)
            await conn.copy_records_to_table("item_steps", records=steps, columns=(
                "tenant_id", "invoice_id", "round", "step", "position", "channel", "template", "offset_days", "due_at",
                "status"))
            progress.advance(task)
        await conn.execute("VACUUM ANALYZE")
        return await conn.fetchval("SELECT count(*) FROM item_steps WHERE due_at <= $1", NOW)
    finally:
        await conn.close()


async def copy_of(server: str, template: str, name: str) -> str:
    await drop_database(server, name)
    conn = await asyncpg.connect(with_database(server, "postgres"))
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    finally:
        await conn.close()
    return with_database(server, name)


async def raw_loop(url: str, batch: int) -> tuple[int, float]:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE INDEX ON item_steps (due_at) WHERE status = 'scheduled'")
        await conn.execute("ANALYZE item_steps")
        done, started = 0, time.perf_counter()
        while True:
            status = await conn.execute(_RAW_CLAIM, NOW, batch)
            n = int(status.split()[-1])
            if not n:
                return done, time.perf_counter() - started
            done += n
    finally:
        await conn.close()


async def ceiling_loop(url: str, batch: int) -> tuple[int, float]:
    """(due steps done, seconds) of the one-statement loop doing the engine's writes."""
    conn = await asyncpg.connect(url)
    try:
        done, started = 0, time.perf_counter()
        while True:
            row = await conn.fetchrow(_CEILING_CLAIM, NOW, batch)
            if not row["cases"]:
                return done, time.perf_counter() - started
            done += row["steps"]
    finally:
        await conn.close()


async def engine_loop(url: str, batch: int, start_at: float | None = None, loops: int = 1) -> tuple[int, int, float]:
    """(cases fired, notices, seconds) of one worker process running the step timer until nothing
    is due, with `loops` claim loops at once (STEP_CONCURRENCY)."""
    pool = await create_pool(url, max_size=loops + 1)  # as the service has it (JSON columns decoded)
    try:
        clock = ManualClock(NOW)
        dunning = Dunning(pool, clock, Topics("bench."))
        # as the service runs it with PORTAL_URL set: each notice carries the customer's signed link
        dunning.portal = Portal(pool, clock, dunning.arrangements, dunning.book, "https://pay.example.com/p")
        if start_at is not None:
            await asyncio.sleep(max(0.0, start_at - time.time()))

        async def loop() -> int:
            cases = 0
            while n := await dunning.claim_due_steps(batch):
                cases += n
            return cases

        started = time.perf_counter()
        cases = sum(await asyncio.gather(*(loop() for _ in range(loops))))
        elapsed = time.perf_counter() - started
        notices = await pool.fetchval("SELECT count(*) FROM notices")
        return cases, notices, elapsed
    finally:
        await pool.close()


def _worker(url: str, batch: int, start_at: float, out) -> None:
    out.put(asyncio.run(engine_loop(url, batch, start_at)))


async def count(url: str, sql: str, *args) -> int:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


async def steps_done(url: str) -> int:
    return await count(url, "SELECT count(*) FROM item_steps WHERE status <> 'scheduled' AND due_at <= $1", NOW)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=50_000)
    parser.add_argument("--invoices-per-customer", type=int, default=2)
    parser.add_argument("--batch", type=int, default=200)
    args = parser.parse_args()
    server, origin = await resolve_postgres(Path(os.environ.get("TAHSILAT_HOME", "var")) / "pg")
    run = uuid.uuid4().hex[:6]
    template, names = f"bench_dun_tmpl_{run}", [f"bench_dun_{run}_{n}" for n in range(5)]
    console.print(f"[bold]bench/dunning[/bold]: {args.customers:,} customers x {args.invoices_per_customer} invoices,"
                  f" batch {args.batch}; PostgreSQL: {origin}; cores: {os.cpu_count()}")
    try:
        due = await build_template(server, template, args.customers, args.invoices_per_customer)
        console.print(f"  due steps: {due:,} (overdue_7 email and SMS of every invoice) in {args.customers:,} cases")

        url = await copy_of(server, template, names[0])
        n, raw_s = await raw_loop(url, args.batch)
        raw_rate = n / raw_s
        console.print(f"  yardstick, raw SQL claim loop: {n:,} steps in {raw_s:.1f} s = {raw_rate:,.0f} steps/s")

        url = await copy_of(server, template, names[3])
        n, ceiling_s = await ceiling_loop(url, args.batch)
        ceiling_rate = n / ceiling_s
        console.print(f"  ceiling, the engine's writes in one SQL statement per batch: {n:,} steps in {ceiling_s:.1f} s"
                      f" = {ceiling_rate:,.0f} steps/s ({ceiling_rate / raw_rate:.2f} of the yardstick)")

        url = await copy_of(server, template, names[1])
        cases, notices, one_s = await engine_loop(url, args.batch)
        steps = await steps_done(url)
        one_rate = steps / one_s
        console.print(f"  engine, one worker: {steps:,} steps of {cases:,} cases -> {notices:,} notices in {one_s:.1f} s"
                      f" = {one_rate:,.0f} steps/s ({cases / one_s:,.0f} cases/s)")

        url = await copy_of(server, template, names[4])
        cases_c, notices_c, conc_s = await engine_loop(url, args.batch, loops=2)
        steps_c = await steps_done(url)
        conc_rate = steps_c / conc_s
        console.print(f"  engine, one worker with two claim loops (STEP_CONCURRENCY=2, as the service runs): {steps_c:,}"
                      f" steps in {conc_s:.1f} s = {conc_rate:,.0f} steps/s ({conc_rate / raw_rate:.2f} of the yardstick,"
                      f" {conc_rate / ceiling_rate:.2f} of the ceiling)")

        url = await copy_of(server, template, names[2])
        ctx = multiprocessing.get_context("spawn")
        out = ctx.Queue()
        start_at = time.time() + 3.0  # both processes up and connected before the clock starts
        workers = [ctx.Process(target=_worker, args=(url, args.batch, start_at, out)) for _ in range(2)]
        for w in workers:
            w.start()
        results = [out.get() for _ in workers]
        for w in workers:
            w.join()
        two_s = max(r[2] for r in results)
        steps2 = await steps_done(url)
        two_rate = steps2 / two_s
        notices2 = await count(url, "SELECT count(*) FROM notices")
        console.print(f"  engine, two workers: {steps2:,} steps, {sum(r[0] for r in results):,} cases"
                      f" ({' + '.join(f'{r[0]:,}' for r in results)}) -> {notices2:,} notices in {two_s:.1f} s"
                      f" = {two_rate:,.0f} steps/s")
        ratio, scale = one_rate / raw_rate, two_rate / one_rate
        console.print(f"\n  engine, one claim loop / yardstick: [bold]{ratio:.2f}[/bold] (goal >= 0.3): "
                      + ("[green]PASS[/green]" if ratio >= 0.3 else "[yellow]BELOW TARGET[/yellow]"))
        console.print(f"  one worker process as the service runs it (two claim loops) / yardstick: "
                      f"[bold]{conc_rate / raw_rate:.2f}[/bold] (goal >= 0.3): "
                      + ("[green]PASS[/green]" if conc_rate / raw_rate >= 0.3 else "[yellow]BELOW TARGET[/yellow]"))
        console.print(f"  engine / ceiling: [bold]{one_rate / ceiling_rate:.2f}[/bold] (the same writes in SQL alone;"
                      f" the goal, 0.3 of the yardstick, is {0.3 * raw_rate / ceiling_rate:.2f} of the ceiling)")
        console.print(f"  two workers / one: [bold]{scale:.2f}x[/bold] (goal >= 1.6x where the cores allow; "
                      f"{os.cpu_count()} cores shared with PostgreSQL): "
                      + ("[green]PASS[/green]" if scale >= 1.6 else "[yellow]BELOW TARGET[/yellow]"))
        if len({notices, notices2, notices_c}) > 1 or len({steps, steps2, steps_c}) > 1:
            console.print(f"[red]  the runs disagree: {notices}, {notices_c}, {notices2} notices;"
                          f" {steps}, {steps_c}, {steps2} steps[/red]")
    finally:
        for name in [*names, template]:
            await drop_database(server, name)


if __name__ == "__main__":
    asyncio.run(main())
