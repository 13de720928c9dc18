"""The notifier's email dispatch under load (issue #10): consolidated notices rendered and sent to
the local SMTP sink, against a raw aiosmtplib send loop to the same sink in the same run.

    .venv/bin/python -m bench.notify [--notices 20000] [--items 3] [--batch 50]

Quick check: `--notices 2000`.

The sink (`python -m tahsilat.sinks`) runs in its own process, as a provider would, and keeps
every message in memory and on disk. Both runs send over `--connections` SMTP connections at once,
each kept for many messages (the notifier's sender keeps 100 per connection).

1. Yardstick: one prepared message (the size of a rendered notice) sent `--notices` times over
   `--connections` aiosmtplib connections: the least sending that many emails can cost here.
   Also printed, for comparison with earlier runs: the yardstick of before the notifier kept
   its connections, `aiosmtplib.send` with a new connection per message, `--batch` at once.
2. The notifier: `--notices` pending notifications in a migrated notifier database (one per
   customer, `--items` invoices each, in EUR and TRY, with fees and interest; contacts in four
   languages), dispatched by `Notifier.dispatch_due()` until none is left: claim, contact rules
   (sending hours, the contact cap, opt-outs, suppressions), render (Jinja2, Babel, the
   consolidated table), a signed unsubscribe link, send, and record each outcome with its
   history and a NotificationSent in the outbox. Goal: rate >= 0.5 x the yardstick.

Prints the figures and PASS or BELOW TARGET; never fails on a figure. Checks that every notice
reached the sink exactly once. The database and the sink's files are removed at the end."""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import date, datetime, timedelta, timezone
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import asyncpg
import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from services.notifier.adapters.providers import SmsSender, WebhookSender, build_email_sender
from services.notifier.adapters.templates import Notice, render_email, sample_notice
from services.notifier.bootstrap import MIGRATIONS
from services.notifier.service_layer.handlers import Notifier
from services.notifier.settings import NotifierSettings
from shared.clock import ManualClock
from shared.contract import Topics
from shared.db import create_pool, drop_database, ensure_database, migrate, with_database
from tahsilat.embedded import free_port, resolve_postgres

console = Console()
NOW = datetime(2026, 6, 2, 9, 0, tzinfo=timezone.utc)  # a Tuesday, inside every customer's hours below
TENANT = "bench"
LANGUAGES = [("en", "Europe/London"), ("tr", "Europe/Istanbul"), ("cs", "Europe/Prague"), ("fa", "Asia/Tehran")]


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console)


async def start_sink(directory: Path) -> tuple[subprocess.Popen, int, int]:
    smtp_port, http_port = free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tahsilat.sinks", "--smtp-port", str(smtp_port), "--http-port", str(http_port),
         "--dir", str(directory)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient() as http:
        while True:
            try:
                if (await http.get(f"http://127.0.0.1:{http_port}/health")).status_code == 200:
                    return process, smtp_port, http_port
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the SMTP sink did not start")
            await asyncio.sleep(0.1)


def delivered(directory: Path) -> int:
    return sum(1 for _ in (directory / "mailbox").glob("*.eml"))


async def clear(http_port: int, directory: Path) -> None:
    async with httpx.AsyncClient() as http:
        await http.delete(f"http://127.0.0.1:{http_port}/messages")
    for f in (directory / "mailbox").glob("*.eml"):
        f.unlink()


def items_for(n: int, per_customer: int) -> list[dict]:
    out = []
    for i in range(per_customer):
        currency = "EUR" if i % 2 == 0 else "TRY"
        due = date(2026, 5, 1) + timedelta(days=i * 3)
        out.append({"invoice_id": str(uuid.UUID(int=n * 100 + i)), "number": f"INV-{n:06d}-{i}", "currency": currency,
                    "open_amount_minor": 123_450 + 1_000 * i + n % 997, "due_date": due.isoformat(),
                    "days_overdue": (NOW.date() - due).days, "fees_minor": 4_000 if i == 0 else 0,
                    "interest_minor": 1_285 + i})
    return out


async def build_database(server: str, name: str, notices: int, per_customer: int) -> str:
    await drop_database(server, name)
    await ensure_database(server, name)
    url = with_database(server, name)
    await migrate(url, MIGRATIONS)
    conn = await asyncpg.connect(url)  # plain: COPY writes jsonb in binary, as text the service codec cannot
    try:
        async with conn.transaction():
            contacts, rows = [], []
            for n in range(notices):
                language, tz = LANGUAGES[n % len(LANGUAGES)]
                customer = f"C{n:06d}"
                contacts.append((TENANT, customer, f"Customer {n}", language, tz, f"c{n}@bench.example", None,
                                 f"legacy-{n}"))
                rows.append((TENANT, f"case-{n}:overdue_7:email", customer, f"case-{n}", "overdue_7", "email",
                             "reminder_overdue", json.dumps(items_for(n, per_customer)), NOW, NOW))
            await conn.copy_records_to_table(
                "contacts", records=contacts,
                columns=["tenant_id", "customer_id", "name", "language", "timezone", "email", "phone",
                         "unsubscribe_token"])
            await conn.copy_records_to_table(
                "notifications", records=rows,
                columns=["tenant_id", "notification_key", "customer_id", "case_id", "step", "channel", "template",
                         "items", "send_after", "requested_at"])
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    return url


def sample_message() -> EmailMessage:
    """A message the size and shape of a rendered notice (text and HTML parts)."""
    rendered = render_email(Notice(template="reminder_overdue", name="Customer 1", items=items_for(1, 3),
                                   unsubscribe_url="https://ar.example.com/v1/unsubscribe/x"), "tr")
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "Tahsilat <collections@tahsilat.local>", "c1@bench.example", rendered.subject
    msg.set_content(rendered.text)
    msg.add_alternative(rendered.html, subtype="html")
    return msg


async def raw_loop(smtp_port: int, count: int, senders: int, *, keep_connections: bool = True) -> float:
    """`senders` loops sending the one message until `count` are sent: each over its own SMTP
    connection, kept; or, the yardstick of before the notifier kept its connections, with
    `aiosmtplib.send` (a new connection per message)."""
    msg = sample_message()
    left = count
    started = time.perf_counter()
    with _progress() as progress:
        task = progress.add_task("raw aiosmtplib loop" + ("" if keep_connections else ", a connection per message"),
                                 total=count)

        async def sender() -> None:
            nonlocal left
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=smtp_port, timeout=30)
            async with contextlib.AsyncExitStack() as stack:
                if keep_connections:
                    await stack.enter_async_context(client)
                while left > 0:
                    left -= 1
                    if keep_connections:
                        await client.send_message(msg)
                    else:
                        await aiosmtplib.send(msg, hostname="127.0.0.1", port=smtp_port, timeout=30)
                    progress.advance(task)

        await asyncio.gather(*(sender() for _ in range(senders)))
    return count / (time.perf_counter() - started)


async def notifier_run(url: str, smtp_port: int, count: int, batch: int, connections: int) -> tuple[float, int]:
    settings = NotifierSettings(database_url=url, kafka_bootstrap_servers="unused:9092", smtp_port=smtp_port,
                                smtp_tls="none", smtp_max_connections=connections, send_batch_size=batch,
                                contact_cap_messages=0, public_base_url="https://ar.example.com")
    email = build_email_sender(settings)
    pool = await create_pool(url, max_size=4)
    http = httpx.AsyncClient()
    try:
        notifier = Notifier(pool, ManualClock(NOW), Topics("bench."), settings, email,
                            SmsSender(settings.sms_url, http), WebhookSender(http))
        done = 0
        started = time.perf_counter()
        with _progress() as progress:
            task = progress.add_task("notifier dispatch", total=count)
            while done < count:
                claimed = await notifier.dispatch_due()
                if claimed == 0:
                    break
                done += claimed
                progress.update(task, completed=done)
        elapsed = time.perf_counter() - started
        statuses = dict(await pool.fetch("SELECT status, count(*) FROM notifications GROUP BY status"))
        if statuses != {"sent": count}:
            raise AssertionError(f"not every notice was sent once: {statuses}")
        return count / elapsed, email.connections_opened
    finally:
        await email.aclose()
        await http.aclose()
        await pool.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notices", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=3, help="invoices per notice")
    parser.add_argument("--batch", type=int, default=50, help="notifications claimed at once (SEND_BATCH_SIZE)")
    parser.add_argument("--connections", type=int, default=10, help="SMTP connections at once (SMTP_MAX_CONNECTIONS)")
    args = parser.parse_args()
    server, origin = await resolve_postgres(Path(os.environ.get("TAHSILAT_HOME", "var")) / "pg")
    console.print(f"PostgreSQL: {origin}; {os.cpu_count()} cores; {args.notices:,} notices of {args.items} items,"
                  f" claimed {args.batch} at a time, {args.connections} SMTP connections")
    name = f"bench_notify_{uuid.uuid4().hex[:8]}"
    directory = Path(tempfile.mkdtemp(prefix="bench-notify-"))
    sink, smtp_port, http_port = await start_sink(directory)
    try:
        with console.status("writing the notifications and contacts"):
            url = await build_database(server, name, args.notices, args.items)
        sample = sample_notice("reminder_overdue")
        console.print(f"one rendered notice: {len(sample_message().as_bytes()):,} bytes ({len(sample.items)} items)")

        raw = await raw_loop(smtp_port, args.notices, args.connections)
        if delivered(directory) != args.notices:
            raise AssertionError(f"the sink holds {delivered(directory)} of {args.notices} raw messages")
        await clear(http_port, directory)
        raw_new = await raw_loop(smtp_port, args.notices, args.batch, keep_connections=False)
        if delivered(directory) != args.notices:
            raise AssertionError(f"the sink holds {delivered(directory)} of {args.notices} raw messages")
        await clear(http_port, directory)

        rate, opened = await notifier_run(url, smtp_port, args.notices, args.batch, args.connections)
        if delivered(directory) != args.notices:
            raise AssertionError(f"the sink holds {delivered(directory)} of {args.notices} notices")
        ratio = rate / raw
        console.print(f"yardstick (raw aiosmtplib loop, {args.connections} connections kept): {raw:,.0f} emails/s")
        console.print(f"earlier yardstick (a connection per message, {args.batch} at once): {raw_new:,.0f} emails/s;"
                      f" the notifier's ratio to it: {rate / raw_new:.2f}")
        console.print(f"notifier (claim, rules, render, send, record): {rate:,.0f} emails/s"
                      f" over {opened:,} SMTP connections")
        console.print(f"ratio: {ratio:.2f} (goal >= 0.5): {'PASS' if ratio >= 0.5 else 'BELOW TARGET'}")
        console.print(f"every notice arrived once: {args.notices:,} in the sink")
    finally:
        sink.terminate()
        sink.wait(10)
        await drop_database(server, name)
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
