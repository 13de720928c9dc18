"""The `tahsilat` command: run the platform, the demo, and manage API keys."""
from __future__ import annotations

import asyncio
import os
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from shared.auth import ROLES
from shared.clock import FileClock
from tahsilat.embedded import StartupError, resolve_postgres
from tahsilat.platform import SERVICES, Platform, PlatformOptions

app = typer.Typer(help="Tahsilat: accounts-receivable collections platform.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys (stored hashed, one tenant and role each).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
console = Console()
VAR = Path(os.environ.get("TAHSILAT_HOME", "var"))


def _start(options: PlatformOptions) -> Platform:
    platform = Platform(options, progress=lambda msg: console.print(f"[dim]·[/dim] {msg}"))
    try:
        platform.start()
    except StartupError as exc:
        console.print(f"[red]cannot start:[/red] {exc}")
        raise typer.Exit(2) from None
    return platform


def _run_until_stopped(platform: Platform) -> None:
    """Block until Ctrl-C or SIGTERM; say so at once if a service process dies meanwhile."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    reported: set[str] = set()
    while not stop.wait(1.0):
        for name, code in platform.exited().items():
            if name not in reported:
                reported.add(name)
                console.print(f"[red]{name} exited with code {code}[/red]; see {platform.log_dir / (name + '.log')}")


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
        token = asyncio.run(_admin_key(platform))
        t = Table(title="Tahsilat is running (Ctrl-C stops it)", show_header=False)
        for k, v in platform.describe().items():
            t.add_row(k, v)
        t.add_row("admin API key (tenant default)", token)
        console.print(t)
        _run_until_stopped(platform)
    finally:
        console.print("stopping…")
        platform.stop()


async def _admin_key(platform: Platform) -> str:
    from tahsilat.keys import create_key

    return await create_key(platform.database_urls, tenant_id="default", role="admin", label="tahsilat up")


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
    label: Annotated[str | None, typer.Option()] = None,
    db_prefix: Annotated[str, typer.Option(help="database name prefix of the platform")] = "tahsilat",
) -> None:
    """Create an API key valid on every service API of TENANT. Printed once; only its hash is kept."""
    if role not in ROLES:
        console.print(f"[red]role:[/red] must be one of {', '.join(ROLES)}, not {role!r}")
        raise typer.Exit(2)

    async def create() -> str:
        from shared.db import with_database
        from tahsilat.keys import create_key

        server, _ = await resolve_postgres(VAR)
        urls = {s: with_database(server, f"{db_prefix}_{s}") for s in SERVICES}
        return await create_key(urls, tenant_id=tenant, role=role, source_name=source, label=label)

    try:
        token = asyncio.run(create())
    except (StartupError, OSError) as exc:
        console.print(f"[red]cannot create the key:[/red] {exc}")
        raise typer.Exit(2) from None
    except Exception as exc:  # noqa: BLE001 - e.g. the databases were never created
        console.print(f"[red]cannot create the key:[/red] {exc} (has `tahsilat up` run once?)")
        raise typer.Exit(2) from None
    console.print(token)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
