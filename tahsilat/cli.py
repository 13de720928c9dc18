"""The `tahsilat` command: run the platform, the demo, manage API keys, import files."""
from __future__ import annotations

import asyncio
import os
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from shared.auth import ROLES
from shared.clock import FileClock
from tahsilat.embedded import StartupError, resolve_postgres
from tahsilat.platform import SERVICES, Platform, PlatformOptions

app = typer.Typer(help="Tahsilat: accounts-receivable collections platform.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys (stored hashed, one tenant and role each).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
import_app = typer.Typer(help="Import files of billing records into the platform's databases.", no_args_is_help=True)
app.add_typer(import_app, name="import")
console = Console()
VAR = Path(os.environ.get("TAHSILAT_HOME", "var"))
DbPrefixOption = Annotated[str, typer.Option(help="database name prefix of the platform")]
ADMIN_KEY_FILE = VAR / "admin-key"  # reused by the next `tahsilat up` while the databases still accept it


def _start(options: PlatformOptions) -> Platform:
    # Messages carry process names, paths and exit codes: printed as text, never as rich markup.
    platform = Platform(options, progress=lambda msg: console.print(f"[dim]·[/dim] {escape(msg)}"),
                        warning=lambda msg: console.print(f"[bold yellow]![/bold yellow] {escape(msg)}"))
    try:
        platform.start()
    except StartupError as exc:
        console.print(f"[red]cannot start:[/red] {exc}")
        raise typer.Exit(2) from None
    return platform


def _run_until_stopped(platform: Platform) -> None:
    """Block until Ctrl-C or SIGTERM. Meanwhile the platform's supervisor restarts a process that
    crashes, with backoff, and says so. If the embedded broker dies nothing can go on: exit 1."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(0.5):
            if platform.fatal:  # the supervisor has said why
                raise typer.Exit(1)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@app.command()
def up(
    fresh: Annotated[bool, typer.Option(help="drop the service databases first")] = False,
    free_ports: Annotated[bool, typer.Option(help="pick free ports instead of 8001-8004, 8025, 2525, 9092")] = False,
    db_prefix: Annotated[str, typer.Option(help="database names are <prefix>_<service>")] = "tahsilat",
    topic_prefix: Annotated[str, typer.Option(help="prefix of every topic and consumer group")] = "",
) -> None:
    """Start the whole platform and keep it running until Ctrl-C."""
    platform = _start(PlatformOptions(base_dir=VAR, fresh=fresh, free_ports=free_ports, db_prefix=db_prefix,
                                      topic_prefix=topic_prefix))
    try:
        token, reused = asyncio.run(_admin_key(platform))
        t = Table(title="Tahsilat is running (Ctrl-C stops it)", show_header=False)
        for k, v in platform.describe().items():
            t.add_row(k, v)
        t.add_row("admin API key (tenant default)",
                  f"{token}\n[dim]{'the one from before, ' if reused else ''}kept in {escape(str(ADMIN_KEY_FILE))}[/dim]")
        console.print(t)
        _run_until_stopped(platform)
    finally:
        console.print("stopping…")
        platform.stop()


async def _admin_key(platform: Platform) -> tuple[str, bool]:
    from tahsilat.keys import stored_admin_key

    return await stored_admin_key(platform.database_urls, ADMIN_KEY_FILE)


@app.command()
def demo(
    customers: Annotated[int, typer.Option(min=3, help="how many customers")] = 300,
    invoices_per_customer: Annotated[int, typer.Option(min=1)] = 10,
    keep_running: Annotated[bool, typer.Option(help="keep the platform up after the summary")] = True,
) -> None:
    """Start the platform on fresh databases, replay a few weeks of billing, print a summary."""
    from tahsilat.demo import print_summary, run_demo

    clock_file = (VAR / "demo-clock.json").resolve()
    VAR.mkdir(parents=True, exist_ok=True)
    clock_file.unlink(missing_ok=True)
    platform = _start(PlatformOptions(base_dir=VAR, fresh=True, clock_file=clock_file, log_level="warning"))
    try:
        summary = asyncio.run(run_demo(platform, FileClock(clock_file), console, customers=customers,
                                       invoices_per_customer=invoices_per_customer))
        print_summary(console, summary, platform)
        if keep_running:
            console.print("[bold]The platform keeps running; Ctrl-C stops it.[/bold]")
            _run_until_stopped(platform)
    finally:
        console.print("stopping…")
        platform.stop()


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="tenant id the key is scoped to")],
    role: Annotated[str, typer.Option(help=f"one of: {', '.join(ROLES)}")],
    source: Annotated[str | None, typer.Option(help="billing source name (billing-source keys)")] = None,
    records: Annotated[str | None, typer.Option(help=(
        "what the billing source may record: invoices, payments or invoices,payments"
        " (registers the source if needed; default for a new source: invoices)"))] = None,
    label: Annotated[str | None, typer.Option()] = None,
    expires_days: Annotated[int | None, typer.Option(min=1, help="the key stops working after this many days")] = None,
    db_prefix: DbPrefixOption = "tahsilat",
) -> None:
    """Create an API key valid on every service API of TENANT. Printed once; only its hash is kept."""
    if role not in ROLES:
        console.print(f"[red]role:[/red] must be one of {', '.join(ROLES)}, not {escape(role)!r}")
        raise typer.Exit(2)
    if role == "billing-source" and not source:
        console.print("[red]source:[/red] required for a billing-source key: it writes as that source only")
        raise typer.Exit(2)
    rights = _records(records)
    if source is not None:
        from services.invoicing.domain.model import reserved_source

        if reserved_source(source):
            console.print(f"[red]source:[/red] {escape(source)!r} is reserved for the platform's own records")
            raise typer.Exit(2)

    async def create() -> str:
        from tahsilat.keys import create_key

        urls = {s: await _service_database(s, db_prefix) for s in SERVICES}
        return await create_key(urls, tenant_id=tenant, role=role, source_name=source, label=label,
                                expires_at=_expiry(expires_days), records=rights)

    try:
        token = asyncio.run(create())
    except (StartupError, OSError) as exc:
        console.print(f"[red]cannot create the key:[/red] {exc}")
        raise typer.Exit(2) from None
    except Exception as exc:  # noqa: BLE001 - e.g. the databases were never created
        console.print(f"[red]cannot create the key:[/red] {exc} (has `tahsilat up` run once?)")
        raise typer.Exit(2) from None
    console.print(token)


def _expiry(days: int | None):
    from datetime import datetime, timedelta, timezone

    return None if days is None else datetime.now(timezone.utc) + timedelta(days=days)


def _keys_call(db_prefix: str, call):
    """Run `call(urls)` against every service's database; failures become one line and exit 2."""
    async def run():
        urls = {s: await _service_database(s, db_prefix) for s in SERVICES}
        return await call(urls)

    try:
        return asyncio.run(run())
    except Exception as exc:  # noqa: BLE001 - e.g. the databases were never created
        console.print(f"[red]cannot reach the keys:[/red] {escape(str(exc))} (has `tahsilat up` run once?)")
        raise typer.Exit(2) from None


@keys_app.command("list")
def keys_list(
    tenant: Annotated[str | None, typer.Option(help="only this tenant's keys")] = None,
    db_prefix: DbPrefixOption = "tahsilat",
) -> None:
    """Every key (never its secret): tenant, role, source, when it was created and last used,
    when it expires, whether it is revoked."""
    from datetime import datetime, timezone

    from tahsilat.keys import list_keys

    keys = _keys_call(db_prefix, lambda urls: list_keys(urls, tenant))
    t = Table(title="API keys")
    for column in ("key id", "tenant", "role", "source", "label", "created", "last used", "expires", "state"):
        t.add_column(column)
    now = datetime.now(timezone.utc)
    for k in keys:
        state = "revoked" if k.revoked_at else "expired" if k.expires_at and k.expires_at <= now else "active"
        t.add_row(*(escape(str(v)) if v is not None else "" for v in (
            k.key_id, k.tenant_id, k.role, k.source_name, k.label, _when(k.created_at), _when(k.last_used_at),
            _when(k.expires_at))), state)
    console.print(t)
    if not keys:
        console.print("no keys")


def _when(moment) -> str | None:
    return None if moment is None else moment.strftime("%Y-%m-%d %H:%M")


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="the key id: the part between thk_ and the next _")],
    db_prefix: DbPrefixOption = "tahsilat",
) -> None:
    """Revoke a key on every service; each stops accepting it within 10 seconds."""
    from shared.auth import AUTH_CACHE_SECONDS
    from tahsilat.keys import revoke_key

    if not _keys_call(db_prefix, lambda urls: revoke_key(urls, key_id)):
        console.print(f"[red]no active key {escape(key_id)}[/red]")
        raise typer.Exit(1)
    console.print(f"key {escape(key_id)} revoked; every service refuses it within {AUTH_CACHE_SECONDS:.0f} s")


@keys_app.command("rotate")
def keys_rotate(
    key_id: Annotated[str, typer.Argument(help="the key id: the part between thk_ and the next _")],
    expires_days: Annotated[int | None, typer.Option(min=1, help="the new key stops working after this many days")] = None,
    db_prefix: DbPrefixOption = "tahsilat",
) -> None:
    """A new key with the same tenant, role and source, printed once; the old one is revoked."""
    from tahsilat.keys import rotate_key

    token = _keys_call(db_prefix, lambda urls: rotate_key(urls, key_id, expires_at=_expiry(expires_days)))
    if token is None:
        console.print(f"[red]no active key {escape(key_id)}[/red]")
        raise typer.Exit(1)
    console.print(token)


IMPORT_INVOICES_HELP = "\n\n".join([
    "Import invoices from a CSV or JSON Lines file, streamed: any size, in bounded memory.",
    "Each row is decided like a POST /v1/invoices: a new invoice is created, the same record again is unchanged,"
    " a changed one is adjusted, status \"cancelled\" cancels it, so importing a file twice is safe.",
    "CSV: a header row naming the columns (any order) external_id, number, customer_id, customer_name,"
    " customer_language, customer_timezone, customer_email, customer_phone, currency, amount_minor or amount"
    " (a decimal such as 1234.56, converted exactly), issue_date, due_date, status. An empty cell means"
    " \"not given\". JSON Lines: one invoice record (the POST /v1/invoices body) per line.",
    "Rejected rows go to the rejects file (row, external_id, field, reason), which each run replaces.",
    "The events are written to the invoicing outbox in the same transactions as the invoices; the running"
    " invoicing service's outbox relay publishes them (`tahsilat up` starts it). The database is migrated first,"
    " so the import also works before the platform ever ran.",
    "Exit code: 0 every row imported, 1 some rows rejected, 2 the file or the database could not be used.",
])


@import_app.command("invoices", help=IMPORT_INVOICES_HELP)
def import_invoices_command(
    file: Annotated[Path, typer.Argument(help="a .csv, .jsonl or .ndjson file", show_default=False)],
    source: Annotated[str, typer.Option(help="the billing source the invoices come from")],
    tenant: Annotated[str, typer.Option(help="the tenant the invoices belong to")],
    rejects: Annotated[Path | None, typer.Option(help="where rejected rows go (default: FILE.rejects.csv)")] = None,
    format: Annotated[str | None, typer.Option("--format", help="csv or jsonl (default: from the extension)")] = None,
    db_prefix: DbPrefixOption = "tahsilat",
    topic_prefix: Annotated[str, typer.Option(envvar="TOPIC_PREFIX", help="topic prefix of the platform")] = "",
    grace_days: Annotated[int, typer.Option(envvar="OVERDUE_GRACE_DAYS", min=0, max=60,
                                            help="days after the due date before an invoice is overdue")] = 0,
    chunk: Annotated[int, typer.Option(min=1, max=10_000, help="rows per batch")] = 5000,
) -> None:
    from services.invoicing.entrypoints.file_import import RecordReader

    rejects_path = rejects or file.with_name(file.name + ".rejects.csv")
    summary = _run_import_command(
        lambda: RecordReader(file, format),
        lambda: _import_invoices(file, rejects_path, format=format, source=source, tenant=tenant, db_prefix=db_prefix,
                                 topic_prefix=topic_prefix, grace_days=grace_days, chunk=chunk),
        "rows of finished batches stay imported; importing the file again is safe")
    _print_import_summary(summary, file)
    raise typer.Exit(1 if summary.rejected else 0)


async def _import_invoices(file: Path, rejects_path: Path, *, format: str | None, source: str, tenant: str,
                           db_prefix: str, topic_prefix: str, grace_days: int, chunk: int):
    from services.invoicing.entrypoints.file_import import import_invoices

    return await _run_import(file, db_prefix, topic_prefix, lambda pool, clock, topics, progress: import_invoices(
        pool, clock, topics, tenant_id=tenant, source=source, path=file, rejects_path=rejects_path, chunk=chunk,
        progress=progress, fmt=format, grace_days=grace_days))


def _run_import_command(check_file, start, after_failure: str):
    """Check the file before touching the database, run the import, and turn any failure into
    one clear line and exit code 2."""
    from services.invoicing.entrypoints.file_import import ImportFileError
    from shared.db import DatabaseUnavailable

    try:
        check_file()
        return asyncio.run(start())
    except (ImportFileError, StartupError, DatabaseUnavailable, OSError) as exc:
        console.print(f"[red]cannot import:[/red] {exc}")
        raise typer.Exit(2) from None
    except Exception as exc:  # noqa: BLE001 - e.g. the database went away midway
        console.print(f"[red]import failed:[/red] {type(exc).__name__}: {exc} ({after_failure})")
        raise typer.Exit(2) from None


async def _run_import(file: Path, db_prefix: str, topic_prefix: str, run):
    """Open the invoicing database (migrated), show a byte-based progress bar, and run the import.
    The events go to the outbox; the running service's relay publishes them."""
    from rich.progress import (
        BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn,
    )

    from services.invoicing.bootstrap import MIGRATIONS
    from shared.clock import clock_from
    from shared.contract import Topics
    from shared.db import create_pool, migrate

    url = await _service_database("invoicing", db_prefix, create=True)
    await migrate(url, MIGRATIONS)
    pool = await create_pool(url, max_size=4)
    try:
        with Progress(TextColumn("[bold]importing[/bold] {task.description}"), BarColumn(), DownloadColumn(),
                      TextColumn("{task.fields[rows]:,} rows"), TimeElapsedColumn(), TimeRemainingColumn(),
                      console=console, transient=False) as bar:
            task = bar.add_task(file.name, total=file.stat().st_size, rows=0)

            def progress(rows: int, done: int, total: int) -> None:
                bar.update(task, completed=done, total=total, rows=rows)

            return await run(pool, clock_from(os.environ.get("CLOCK_FILE")), Topics(topic_prefix), progress)
    finally:
        await pool.close()


async def _service_database(service: str, db_prefix: str, create: bool = False) -> str:
    """URL of <db-prefix>_<service> on the platform's PostgreSQL (DATABASE_URL, local or embedded)."""
    from shared.db import ensure_database, with_database

    server, _ = await resolve_postgres(VAR)
    if create:
        await ensure_database(server, f"{db_prefix}_{service}")
    return with_database(server, f"{db_prefix}_{service}")


def _summary_table(summary, file: Path, statuses: tuple[str, ...]) -> None:
    t = Table(title=f"import of {escape(file.name)}", show_header=False)
    t.add_row("read", f"{summary.rows:,}")
    for status in statuses:
        t.add_row(status, f"{summary.counts[status]:,}")
    t.add_row("rows/s", f"{summary.rows_per_second:,.0f}")
    t.add_row("seconds", f"{summary.seconds:.1f}")
    console.print(t)


def _rejects_and_outbox(summary) -> None:
    if summary.rejects_path is not None:
        console.print(f"[yellow]{summary.rejected:,} rejected rows[/yellow] (row, field, reason):"
                      f" {escape(str(summary.rejects_path))}")
    else:
        console.print("[green]no rows rejected[/green]")
    console.print("events are in the invoicing outbox; the running invoicing service publishes them")


def _print_import_summary(summary, file: Path) -> None:
    _summary_table(summary, file, ("created", "unchanged", "adjusted", "cancelled", "rejected"))
    _rejects_and_outbox(summary)


IMPORT_PAYMENTS_HELP = "\n\n".join([
    "Import payments from a CSV file, a JSON Lines file or a bank statement, streamed: any size, in bounded"
    " memory. Payments are recorded one by one in file order, each like a POST /v1/payments: applied by invoice"
    " reference, else to the oldest open invoice first; the rest is credit; a payment for an unknown customer is"
    " kept as unapplied cash. The same payment again is unchanged, so importing a file twice is safe.",
    "CSV (--format csv): a header row naming the columns (any order) external_id, customer_id, currency,"
    " amount_minor or amount (a decimal such as 1234.56, converted exactly), received_at (ISO date-time with an"
    " offset, or a bare date = 12:00 UTC that day), invoice_refs (numbers or external ids separated by ';' or"
    " spaces), status (received or reversed), reason. JSON Lines: one POST /v1/payments body per line.",
    "Bank statement (--format bank): columns date, amount, currency, reference, counterparty_id, transaction_id."
    " Credits become payments with the transaction id as external id; debits and zero amounts are skipped. The"
    " invoices paid are the words of the reference equal to an open invoice's number or external id (of the"
    " counterparty, or of any customer when counterparty_id is empty: then their customer pays, if they are all"
    " one customer's). A credit nobody can be identified for is kept as unapplied cash of customer"
    " UNIDENTIFIED, never dropped.",
    "Rejected rows go to the rejects file (row, external_id, field, reason), which each run replaces.",
    "The events are written to the invoicing outbox in the same transactions as the payments; the running"
    " invoicing service's outbox relay publishes them. The database is migrated first.",
    "Exit code: 0 every row imported (or skipped), 1 some rows rejected, 2 the file or the database could not"
    " be used.",
])


@import_app.command("payments", help=IMPORT_PAYMENTS_HELP)
def import_payments_command(
    file: Annotated[Path, typer.Argument(help="a .csv, .jsonl or .ndjson file, or a bank statement CSV",
                                         show_default=False)],
    source: Annotated[str, typer.Option(help="the billing source (or bank account) the payments come from")],
    tenant: Annotated[str, typer.Option(help="the tenant the payments belong to")],
    rejects: Annotated[Path | None, typer.Option(help="where rejected rows go (default: FILE.rejects.csv)")] = None,
    format: Annotated[str | None, typer.Option("--format",
                                               help="csv, jsonl or bank (default: csv or jsonl from the extension)")
                      ] = None,
    db_prefix: DbPrefixOption = "tahsilat",
    topic_prefix: Annotated[str, typer.Option(envvar="TOPIC_PREFIX", help="topic prefix of the platform")] = "",
) -> None:
    from services.invoicing.entrypoints.file_import import PaymentReader

    rejects_path = rejects or file.with_name(file.name + ".rejects.csv")
    summary = _run_import_command(
        lambda: PaymentReader(file, format),
        lambda: _import_payments(file, rejects_path, format=format, source=source, tenant=tenant, db_prefix=db_prefix,
                                 topic_prefix=topic_prefix),
        "payments recorded so far stay recorded; importing the file again is safe")
    _print_payment_import_summary(summary, file)
    raise typer.Exit(1 if summary.rejected else 0)


async def _import_payments(file: Path, rejects_path: Path, *, format: str | None, source: str, tenant: str,
                           db_prefix: str, topic_prefix: str):
    from services.invoicing.entrypoints.file_import import import_payments

    return await _run_import(file, db_prefix, topic_prefix, lambda pool, clock, topics, progress: import_payments(
        pool, clock, topics, tenant_id=tenant, source=source, path=file, rejects_path=rejects_path, fmt=format,
        progress=progress))


def _print_payment_import_summary(summary, file: Path) -> None:
    from services.invoicing.entrypoints.file_import import UNIDENTIFIED_CUSTOMER

    _summary_table(summary, file, ("created", "unchanged", "reversed", "skipped", "rejected"))
    if summary.skipped:
        console.print(f"{summary.skipped:,} debits and zero amounts skipped (only credits are payments)")
    if summary.unidentified:
        console.print(f"[yellow]{summary.unidentified:,} credits could not be matched to a customer[/yellow]: kept"
                      f" as unapplied cash of customer {UNIDENTIFIED_CUSTOMER} (GET /v1/payments/unapplied)")
    _rejects_and_outbox(summary)


# --------------------------------------------------------------------------- reports

report_app = typer.Typer(help="Receivables reports read from the invoicing database: aging, DSO;"
                              " collections reads the dunning database, risk-backtest the risk database.",
                         no_args_is_help=True)
app.add_typer(report_app, name="report")


def _report_date(value: str | None, field: str):
    from datetime import date

    if value is None:
        return date.today()
    try:
        return date.fromisoformat(value)
    except ValueError:
        console.print(f"[red]{field}:[/red] not a date (YYYY-MM-DD): {value!r}")
        raise typer.Exit(2) from None


def _report_query(db_prefix: str, query):
    """Run `query(db)` against <db-prefix>_invoicing on the platform's PostgreSQL."""
    return _service_query("invoicing", db_prefix, query)


def _service_query(service: str, db_prefix: str, query, service_pool: bool = False):
    """Run `query(pool)` against <db-prefix>_<service> on the platform's PostgreSQL; a database
    that cannot be reached is one clear line and exit code 2. `service_pool`: a pool as the
    services have it (JSON columns decoded), for running a service's own use case."""

    async def run():
        import asyncpg

        from shared.db import create_pool

        url = await _service_database(service, db_prefix)
        pool = await (create_pool(url, max_size=2) if service_pool else asyncpg.create_pool(url, min_size=1, max_size=2))
        try:
            return await query(pool)
        finally:
            await pool.close()

    try:
        return asyncio.run(run())
    except (StartupError, OSError) as exc:
        console.print(f"[red]cannot read the {service} database:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    except Exception as exc:  # noqa: BLE001 - e.g. the database was never created
        console.print(f"[red]cannot read the {service} database:[/red] {escape(str(exc))} (has `tahsilat up` run once?)")
        raise typer.Exit(2) from None


def _money(amount_minor: int, currency: str) -> str:
    from shared.contract.money import to_major

    return f"{to_major(amount_minor, currency):,}"


@report_app.command("aging")
def report_aging(
    tenant: Annotated[str, typer.Option(help="tenant id")],
    as_of: Annotated[str | None, typer.Option(help="YYYY-MM-DD; default: today")] = None,
    by: Annotated[str, typer.Option(help="currency or customer")] = "currency",
    buckets: Annotated[str, typer.Option(help="upper bounds in days past due")] = "0,30,60,90",
    currency: Annotated[str | None, typer.Option(help="only this currency")] = None,
    db_prefix: DbPrefixOption = "tahsilat",
) -> None:
    """AR aging as of a date: open amounts per days-past-due bucket, per currency or customer."""
    from services.invoicing.domain.reports import parse_buckets
    from services.invoicing.service_layer.reports import aging_report

    if by not in ("currency", "customer"):
        console.print(f"[red]by:[/red] must be currency or customer, not {by!r}")
        raise typer.Exit(2)
    try:
        parsed = parse_buckets(buckets)
    except ValueError as exc:
        console.print(f"[red]buckets:[/red] {exc}")
        raise typer.Exit(2) from None
    day = _report_date(as_of, "as-of")
    result = _report_query(db_prefix, lambda conn: aging_report(conn, tenant, day, parsed, currency,
                                                                by_customer=by == "customer"))
    columns = [*result.buckets, "total"]
    t = Table(title=f"AR aging of {escape(tenant)} as of {day} (open amounts, days past due)")
    if by == "customer":
        t.add_column("customer")
    t.add_column("currency")
    for name in columns:
        t.add_column(name, justify="right")
    if by == "customer":
        for customer, per_currency in (result.by_customer or {}).items():
            for cur, row in per_currency.items():
                t.add_row(escape(customer), cur, *(_money(row[c], cur) for c in columns))
        if result.by_customer:
            t.add_section()
    for cur, row in result.by_currency.items():
        t.add_row(*(["all"] if by == "customer" else []), cur, *(_money(row[c], cur) for c in columns))
    console.print(t)
    if not result.by_currency:
        console.print("nothing open")


@report_app.command("dso")
def report_dso(
    tenant: Annotated[str, typer.Option(help="tenant id")],
    as_of: Annotated[str | None, typer.Option(help="YYYY-MM-DD; default: today")] = None,
    months: Annotated[int, typer.Option(min=1, max=36, help="calendar months ending at as-of")] = 3,
    currency: Annotated[str | None, typer.Option(help="only this currency")] = None,
    db_prefix: DbPrefixOption = "tahsilat",
) -> None:
    """Days sales outstanding per currency by the countback method."""
    from services.invoicing.service_layer.reports import dso_report

    day = _report_date(as_of, "as-of")
    result = _report_query(db_prefix, lambda conn: dso_report(conn, tenant, day, months, currency))
    first, last = result.periods[-1][0], result.periods[0][1]
    t = Table(title=f"DSO of {escape(tenant)} as of {day} (countback over {first} to {last})")
    t.add_column("currency")
    t.add_column("AR", justify="right")
    for start, _end in result.periods:
        t.add_column(f"sales {start:%Y-%m}", justify="right")
    t.add_column("DSO (days)", justify="right")
    for cur, line in result.by_currency.items():
        t.add_row(cur, _money(line.ar_minor, cur), *(_money(s, cur) for s in line.sales_by_period),
                  f"{line.dso_days:.1f}")
    console.print(t)
    if not result.by_currency:
        console.print("no receivables and no sales")


async def _receivables(pool, tenant: str, first, end) -> tuple[dict, dict]:
    """Per currency: CEI of the period and DSO (3 months, countback) at its last day; and the
    aging trend: per currency, the open amount per bucket at each of the six month ends up to it."""
    from datetime import timedelta

    from services.invoicing.service_layer.reports import aging_trend, cei_report, dso_report

    last = end - timedelta(days=1)
    cei = await cei_report(pool, tenant, first, last)
    dso = await dso_report(pool, tenant, last)
    receivables = {cur: {**{k: v for k, v in vars(cei[cur]).items() if k != "cei_percent"},
                         "cei_percent": str(cei[cur].cei_percent) if cei[cur].cei_percent is not None else None,
                         "dso_days": round(dso.by_currency[cur].dso_days, 2) if cur in dso.by_currency else 0.0}
                   for cur in cei}
    return receivables, await aging_trend(pool, tenant, last)


@report_app.command("collections")
def report_collections(
    tenant: Annotated[str, typer.Option(help="tenant id")],
    period: Annotated[str, typer.Option(help="2026-03 (a month), 2026-Q1, 2026, or 2026-03-01..2026-03-15")],
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="print it as CSV (section, name, currency, metric, value)")] = False,
    db_prefix: DbPrefixOption = "tahsilat",
) -> None:
    """CEI and DSO per currency (the invoicing database), which dunning steps work (paid within 7
    days of each), promises kept, dispute reasons, and each collector's figures (the dunning
    database) for a period."""
    import csv
    import json
    import sys

    from shared.periods import PeriodError, parse_period
    from services.dunning.service_layer.reports import collections_report, report_rows
    from shared.contract.text import spreadsheet_cell

    try:
        first, end = parse_period(period)
    except PeriodError as exc:
        console.print(f"[red]period:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    report = _service_query("dunning", db_prefix, lambda pool: collections_report(pool, tenant, first, end),
                            service_pool=True)
    report["receivables"], report["aging_trend"] = _service_query(
        "invoicing", db_prefix, lambda pool: _receivables(pool, tenant, first, end))
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    if as_csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(["section", "name", "currency", "metric", "value"])
        for row in report_rows(report):
            writer.writerow([spreadsheet_cell(c) for c in row])
        for cur, line in sorted(report["receivables"].items()):
            for metric, value in line.items():
                writer.writerow(["receivables", "all", cur, metric, value])
        for cur, days in sorted(report["aging_trend"].items()):
            for day, buckets in days.items():
                for bucket, value in buckets.items():
                    writer.writerow(["aging", day, cur, spreadsheet_cell(bucket), value])
        return

    def money(per_currency: dict) -> str:
        return ", ".join(f"{_money(v, c)} {c}" for c, v in sorted(per_currency.items())) or "0"

    console.print(f"[bold]Collections of {escape(tenant)}, {report['from']} to {report['to']}[/bold]")
    t = Table(title="receivables")
    for column in ("currency", "opening", "sales", "closing", "not yet due", "CEI %", f"DSO at {report['to']}"):
        t.add_column(column, justify="left" if column == "currency" else "right")
    for cur, line in report["receivables"].items():
        t.add_row(cur, _money(line["opening_minor"], cur), _money(line["sales_minor"], cur),
                  _money(line["closing_minor"], cur), _money(line["closing_current_minor"], cur),
                  line["cei_percent"] or "-", f"{line['dso_days']:.1f}")
    console.print(t)
    for cur, days in sorted(report["aging_trend"].items()):
        t = Table(title=f"aging at each month end ({cur})")
        buckets = next(iter(days.values()))
        t.add_column("as of")
        for bucket in buckets:
            t.add_column(bucket, justify="right")
        for day, values in days.items():
            t.add_row(day, *(_money(v, cur) for v in values.values()))
        console.print(t)
    t = Table(title="dunning steps: paid within 7 days")
    for column in ("step", "channel", "notices", "listed", "collected in 7 days", "%"):
        t.add_column(column, justify="left" if column in ("step", "channel") else "right")
    for s in report["steps"]:
        t.add_row(escape(s["step"]), s["channel"], str(s["notices"]), money(s["listed_minor"]),
                  money(s["collected_7d_minor"]), ", ".join(f"{v} ({c})" for c, v in s["collected_7d_percent"].items()))
    console.print(t)
    p = report["promises"]
    console.print(f"promises: {p['taken']} taken, {p['kept']} kept, {p['broken']} broken, {p['open']} open"
                  f" (kept rate {p['kept_rate_percent'] or '-'} %)")
    if report["disputes"]:
        console.print("disputes: " + ", ".join(f"{d['reason_code']} {d['disputes']}" for d in report["disputes"]))
    t = Table(title="collectors")
    for column in ("collector", "tasks done", "reached", "promises", "kept", "collected in 7 days"):
        t.add_column(column, justify="left" if column == "collector" else "right")
    for c in report["collectors"]:
        t.add_row(escape(c["collector"]), str(c["tasks_done"]), str(c["contacts_reached"]),
                  str(c["promises"]["taken"]), str(c["promises"]["kept"]), money(c["collected_7d_minor"]))
    console.print(t)


@report_app.command("risk-backtest")
def report_risk_backtest(
    tenant: Annotated[str, typer.Option(help="tenant id")],
    as_of: Annotated[str | None, typer.Option(help="YYYY-MM-DD; default: today")] = None,
    db_prefix: DbPrefixOption = "tahsilat",
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """How well the risk grade at issue predicted "paid 30+ days late": AUC, late share per grade."""
    import json

    from services.risk.service_layer.backtest import risk_backtest

    day = _report_date(as_of, "as-of")
    report = _service_query("risk", db_prefix, lambda pool: risk_backtest(pool, tenant, day))
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2))
        return

    def auc(value: float | None) -> str:
        return "n/a (needs late and on-time invoices)" if value is None else f"{value:.3f}"

    console.print(f"[bold]Risk backtest of {escape(tenant)} as of {day}[/bold]: {report.invoices} invoices decided,"
                  f" {report.late} paid 30+ days late or still open 30+ days past due")
    console.print(f"AUC of the score: {auc(report.auc_score)}   AUC of the grade: {auc(report.auc_grade)}"
                  "   (0.5 = a coin toss, 1 = perfect)")
    t = Table(title="Calibration per grade at issue")
    for column in ("grade", "invoices", "late", "late share", "avg score"):
        t.add_column(column, justify="left" if column == "grade" else "right")
    for row in report.calibration:
        t.add_row(row.grade, str(row.invoices), str(row.late),
                  "" if row.late_share is None else f"{row.late_share:.3f}",
                  "" if row.average_score is None else f"{row.average_score:.1f}")
    console.print(t)
    console.print(f"excluded: {report.excluded_cancelled} cancelled, {report.excluded_undecided} not yet decidable"
                  " (open and under 30 days past due)")


# --------------------------------------------------------------------------- billing sources

sources_app = typer.Typer(help="Billing sources of a tenant and what each may record.", no_args_is_help=True)
app.add_typer(sources_app, name="sources")
RecordsHelp = "what the source may record: invoices, payments or invoices,payments"


def _records(records: str | None) -> tuple[str, ...] | None:
    rights = None if records is None else tuple(r.strip() for r in records.split(",") if r.strip())
    if rights is not None and (not rights or set(rights) - {"invoices", "payments"}):
        console.print(f"[red]records:[/red] must name invoices and/or payments, not {escape(records or '')!r}")
        raise typer.Exit(2)
    return rights


@sources_app.command("register")
def sources_register(
    name: Annotated[str, typer.Argument(help="the billing source's name, e.g. erp or bank-garanti")],
    tenant: Annotated[str, typer.Option(help="tenant id")],
    records: Annotated[str, typer.Option(help=RecordsHelp)] = "invoices",
    currency: Annotated[str | None, typer.Option(help="default currency of its amounts")] = None,
    db_prefix: DbPrefixOption = "tahsilat",
) -> None:
    """Register a billing source (or change what a registered one may record). No key is made:
    `tahsilat keys create --role billing-source --source NAME` makes one."""
    from services.invoicing.domain.model import reserved_source
    from shared.contract.money import validate_currency

    rights = _records(records)
    if reserved_source(name):
        console.print(f"[red]name:[/red] {escape(name)!r} is reserved for the platform's own records")
        raise typer.Exit(2)
    try:
        currency = None if currency is None else validate_currency(currency)
    except ValueError as exc:
        console.print(f"[red]currency:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None

    async def register() -> None:
        from services.invoicing.bootstrap import MIGRATIONS
        from shared.db import migrate
        from tahsilat.keys import register_source

        url = await _service_database("invoicing", db_prefix, create=True)
        await migrate(url, MIGRATIONS)
        await register_source(url, tenant, name, rights, currency)

    try:
        asyncio.run(register())
    except (StartupError, OSError) as exc:
        console.print(f"[red]cannot register the source:[/red] {exc}")
        raise typer.Exit(2) from None
    console.print(f"billing source {escape(name)} of {escape(tenant)} may record {', '.join(rights or ())}")


# --------------------------------------------------------------------------- outbox

dunning_app = typer.Typer(help="Dunning: look ahead at what goes out, without sending.", no_args_is_help=True)
app.add_typer(dunning_app, name="dunning")


@dunning_app.command("plan")
def dunning_plan(
    tenant: Annotated[str, typer.Option(help="tenant id")],
    date: Annotated[str, typer.Option("--date", help="YYYY-MM-DD (UTC): the day to look at")],
    db_prefix: DbPrefixOption = "tahsilat",
) -> None:
    """What the dunning engine would send on a day, to whom, for how much, if nothing is paid
    meanwhile. Nothing is sent or stored."""
    from services.dunning.service_layer.handlers import Dunning
    from services.dunning.service_layer.planning import dry_run
    from shared.contract import Topics
    from shared.http import DomainError

    day = _report_date(date, "date")

    async def query(pool):
        # the platform's time: CLOCK_FILE as the services have it, else the demo's (no file: the system's)
        clock = FileClock(Path(os.environ.get("CLOCK_FILE") or VAR / "demo-clock.json"))
        try:
            return await dry_run(Dunning(pool, clock, Topics("")), tenant, day)
        except DomainError as exc:
            return exc

    notices = _service_query("dunning", db_prefix, query, service_pool=True)
    if isinstance(notices, DomainError):
        console.print(f"[red]{notices.field}:[/red] {escape(notices.reason)}")
        raise typer.Exit(2)
    t = Table(title=f"Dunning notices of {escape(tenant)} on {day} (dry run: nothing is sent)")
    for column in ("time (UTC)", "customer", "step", "channel", "items", "total"):
        t.add_column(column, justify="right" if column in ("items", "total") else "left")
    for n in notices:
        t.add_row(n["at"].strftime("%H:%M"), escape(n["customer_id"]), n["step"], n["channel"], str(len(n["items"])),
                  f"{_money(n['total_minor'], n['currency'])} {n['currency']}")
    console.print(t)
    if not notices:
        console.print("nothing goes out that day")


notify_app = typer.Typer(help="Notifier: see a notice as the customer would, before it goes out.", no_args_is_help=True)
app.add_typer(notify_app, name="notify")


@notify_app.command("preview")
def notify_preview(
    template: Annotated[str, typer.Option(help="reminder_pre_due, reminder_due, reminder_overdue, final_notice,"
                                               " balance_confirmation or settlement_offer")],
    language: Annotated[str, typer.Option(help="en, tr, cs or fa")] = "en",
    tenant: Annotated[str | None, typer.Option(help="use this tenant's wording and languages (reads the notifier"
                                                    " database)")] = None,
    case_id: Annotated[str | None, typer.Option("--case-id", help="a real case's latest notice instead of a sample"
                                                                  " (needs --tenant)")] = None,
    html: Annotated[Path | None, typer.Option(help="also write the HTML part to this file")] = None,
    db_prefix: DbPrefixOption = "tahsilat",
) -> None:
    """Render a notice: the email's subject and text, and the SMS with its encoding and segments."""
    from services.notifier.adapters.store import ContactRules
    from services.notifier.domain.rules import ContactCap, SendingWindow
    from services.notifier.service_layer.previews import preview_notice
    from shared.contract.templates import LANGUAGES, NOTICE_TEMPLATES
    from shared.http import DomainError

    if template not in NOTICE_TEMPLATES:
        console.print(f"[red]template:[/red] must be one of {', '.join(sorted(NOTICE_TEMPLATES))}, not {escape(template)!r}")
        raise typer.Exit(2)
    if language not in LANGUAGES:
        console.print(f"[red]language:[/red] must be one of {', '.join(LANGUAGES)}, not {escape(language)!r}")
        raise typer.Exit(2)
    if case_id and not tenant:
        console.print("[red]case-id:[/red] needs --tenant (the case's notices are the tenant's)")
        raise typer.Exit(2)
    shipped = ContactRules(SendingWindow(), ContactCap(), "en", LANGUAGES, 3)

    async def render(pool):
        try:
            return await preview_notice(pool, shipped, tenant or "", template, language, case_id=case_id,
                                        overrides=None if tenant else {})
        except DomainError as exc:
            return exc

    if tenant:
        result = _service_query("notifier", db_prefix, render, service_pool=True)
    else:
        result = asyncio.run(_preview_without_database(render))
    if isinstance(result, DomainError):
        console.print(f"[red]{result.field}:[/red] {escape(result.reason)}")
        raise typer.Exit(2)
    fallback = f" (fell back from {result['fallback_from']})" if result["fallback_from"] else ""
    console.print(f"[bold]{template}[/bold] in {result['language']}{fallback}")
    console.print(f"[bold]Subject:[/bold] {escape(result['subject'])}\n")
    console.print(result["text"], markup=False, highlight=False)
    sms = result["sms"]
    console.print(f"\n[bold]SMS[/bold] ({sms['encoding']}, {sms['segments']} of at most {sms['limit']} segments):")
    console.print(sms["text"], markup=False, highlight=False)
    if html:
        html.write_text(result["html"], encoding="utf-8")
        console.print(f"\nHTML written to {escape(str(html))}")


async def _preview_without_database(render):
    """A preview of the shipped wording needs no database: the store is asked for nothing."""

    class NoDatabase:
        async def fetch(self, *_args):
            return []

    return await render(NoDatabase())


outbox_app = typer.Typer(
    help="Events a service could not publish. Each holds back the later events of its key (its customer)"
         " until it goes out or a person discards it.", no_args_is_help=True)
app.add_typer(outbox_app, name="outbox")
ServiceOption = Annotated[str, typer.Option(help=f"one of: {', '.join(SERVICES)}")]


def _check_service(service: str) -> None:
    if service not in SERVICES:
        console.print(f"[red]service:[/red] must be one of {', '.join(SERVICES)}, not {escape(service)!r}")
        raise typer.Exit(2)


@outbox_app.command("held")
def outbox_held(
    service: ServiceOption,
    tenant: Annotated[str | None, typer.Option(help="only this tenant's events")] = None,
    db_prefix: DbPrefixOption = "tahsilat",
) -> None:
    """List the events held back, with why and how many later events of their key wait behind each."""
    from shared.outbox import held_events

    _check_service(service)
    held = _service_query(service, db_prefix, lambda pool: held_events(pool, tenant))
    if not held:
        console.print(f"{service}: nothing held back")
        return
    t = Table(title=f"{service}: events held back")
    for column in ("id", "type", "key", "attempts", "next try", "waiting behind", "error"):
        t.add_column(column)
    for h in held:
        t.add_row(str(h.id), h.event_type, h.key, str(h.attempts),
                  h.next_attempt_at.isoformat(timespec="seconds") if h.next_attempt_at else "needs a person",
                  str(h.held_back), (h.last_error or "")[:120])
    console.print(t, markup=False)


@outbox_app.command("retry")
def outbox_retry(
    row: Annotated[int, typer.Argument(help="the id `tahsilat outbox held` shows")],
    service: ServiceOption,
    db_prefix: DbPrefixOption = "tahsilat",
) -> None:
    """Publish a held event again at the relay's next batch (e.g. after the broker's limit was raised)."""
    from shared.outbox import retry_held

    _check_service(service)
    if not _service_query(service, db_prefix, lambda pool: retry_held(pool, row)):
        console.print(f"[red]no held event {row}[/red] in {service}")
        raise typer.Exit(1)
    console.print(f"{service}: event {row} goes out at the relay's next batch")


@outbox_app.command("discard")
def outbox_discard(
    row: Annotated[int, typer.Argument(help="the id `tahsilat outbox held` shows")],
    service: ServiceOption,
    reason: Annotated[str, typer.Option(help="why it is given up (kept with it in outbox_discarded)")],
    db_prefix: DbPrefixOption = "tahsilat",
) -> None:
    """Give up a held event: it is kept aside with who and why, and its key's later events go out."""
    from shared.outbox import discard_held

    _check_service(service)
    by = f"cli {os.environ.get('USER', 'unknown')}"
    if not _service_query(service, db_prefix, lambda pool: discard_held(pool, row, by=by, reason=reason)):
        console.print(f"[red]no held event {row}[/red] in {service}")
        raise typer.Exit(1)
    console.print(f"{service}: event {row} discarded; its key moves on")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
