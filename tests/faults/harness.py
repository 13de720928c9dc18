"""The fault-injection harness: a platform of separate processes on its own broker and its own
embedded PostgreSQL, a load of invoices, payments, due steps and notices flowing through it, and
a checker of what must hold after any fault:

- every InvoiceIssued has its dunning case;
- every executed step has exactly one NotificationRequested (one event id; deliveries of the
  same event again are counted, they are harmless to consumers with an inbox);
- every notification sent has exactly one message in the sinks (a second one is tolerated only
  for a send the notifier reports as interrupted: the crash window, counted separately);
- per-key order as a plain consumer reads it: an invoice's first event is its InvoiceIssued, and
  a case's notices come in the order of its steps;
- the dead-letter topic is empty.
"""
from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, time as dtime, timedelta, timezone
from pathlib import Path

import asyncpg
import httpx

from shared.clock import FileClock
from shared.contract import Envelope
from tahsilat.platform import SERVICES, Platform, PlatformOptions
from tahsilat.streams import read_records

TENANT = "t1"
SOURCE = "erp"
PROFILE = os.environ.get("FAULTS_PROFILE", "short")
LONG = PROFILE == "long"


def start_platform(base: Path, database_url: str, prefix: str, **extra_env: str) -> tuple[Platform, FileClock]:
    clock_file = base / "clock.json"
    clock = FileClock(clock_file)
    clock.set(datetime(2026, 3, 2, 12, 0, tzinfo=timezone.utc))  # midday for the customers (UTC): contact hours
    env = {"SEND_LEASE_SECONDS": "5", "LOG_LEVEL": "warning", **extra_env}
    platform = Platform(PlatformOptions(
        base_dir=base, db_prefix=prefix, fresh=True, free_ports=True, clock_file=clock_file, partitions=3,
        poll_interval=0.2, database_url=database_url, log_level="warning", extra_env=env))
    platform.start(timeout=180)
    return platform, clock


@dataclass
class Load:
    """Invoices (some already overdue, some due soon) and payments at a steady pace, the clock a
    day further every few seconds so steps fall due; a request that fails (a service is down) is
    sent again later with the same external id, which changes nothing if it had gone through."""

    platform: Platform
    clock: FileClock
    key: str = ""
    customers: int = 30
    sent_invoices: dict[str, dict] = field(default_factory=dict)  # external id -> body, acknowledged
    sent_payments: set[str] = field(default_factory=set)
    retries: int = 0
    days: int = 0
    rnd: random.Random = field(default_factory=lambda: random.Random(7))

    async def prepare(self) -> None:
        from tahsilat.keys import create_key

        self.key = await create_key(self.platform.database_urls, tenant_id=TENANT, role="billing-source",
                                    source_name=SOURCE, records=("invoices", "payments"))

    def _invoice(self, n: int) -> dict:
        c = self.rnd.randrange(self.customers)
        today = self.clock.now().date()
        due = today + timedelta(days=self.rnd.randint(-16, 4))
        return {
            "external_id": f"INV-{n:05d}", "number": f"INV-{n:05d}",
            "customer": {"id": f"C{c:03d}", "name": f"Customer {c}", "language": "en", "timezone": "UTC",
                         "email": f"c{c}@example.com", "phone": f"+4477009{c:05d}"},
            "currency": "EUR", "amount_minor": self.rnd.randint(10_00, 900_00),
            "issue_date": (due - timedelta(days=30)).isoformat(), "due_date": due.isoformat(),
        }

    async def run(self, stop: asyncio.Event, invoices_per_second: float = 12.0, day_every: float = 4.0) -> None:
        pending_invoices: list[dict] = []
        pending_payments: list[dict] = []
        n = 0
        next_day = time.monotonic() + day_every
        async with httpx.AsyncClient(base_url=self.platform.url("invoicing"), timeout=10,
                                     headers={"X-API-Key": self.key}) as http:
            while not stop.is_set():
                batch = [self._invoice(n + i) for i in range(max(1, int(invoices_per_second / 4)))]
                n += len(batch)
                pending_invoices += batch
                if self.sent_invoices and self.rnd.random() < 0.8:
                    ext = self.rnd.choice(sorted(self.sent_invoices))
                    if f"PAY-{ext}" not in self.sent_payments | {p["external_id"] for p in pending_payments}:
                        inv = self.sent_invoices[ext]
                        amount = inv["amount_minor"] if self.rnd.random() < 0.7 else inv["amount_minor"] // 2
                        pending_payments.append({"external_id": f"PAY-{ext}", "customer_id": inv["customer"]["id"],
                                                 "currency": "EUR", "amount_minor": amount, "invoice_refs": [ext]})
                pending_invoices = await self._send_invoices(http, pending_invoices)
                pending_payments = await self._send_payments(http, pending_payments)
                if time.monotonic() >= next_day:
                    self.clock.advance(timedelta(days=1))
                    self.days += 1
                    next_day = time.monotonic() + day_every
                await asyncio.sleep(0.25)
            deadline = time.monotonic() + 120
            while (pending_invoices or pending_payments) and time.monotonic() < deadline:
                pending_invoices = await self._send_invoices(http, pending_invoices)
                pending_payments = await self._send_payments(http, pending_payments)
                await asyncio.sleep(0.5)
            if pending_invoices or pending_payments:
                raise AssertionError(f"could not deliver {len(pending_invoices)} invoices, {len(pending_payments)}"
                                     " payments after the faults")

    async def _send_invoices(self, http: httpx.AsyncClient, items: list[dict]) -> list[dict]:
        if not items:
            return []
        try:
            r = await http.post("/v1/invoices/bulk", json={"items": items})
        except httpx.HTTPError:
            self.retries += 1
            return items
        if r.status_code != 200:
            self.retries += 1
            return items
        results = r.json()["results"]
        bad = [x for x in results if x["status"] == "rejected"]
        assert not bad, bad[:3]
        for item in items:
            self.sent_invoices[item["external_id"]] = item
        return []

    async def _send_payments(self, http: httpx.AsyncClient, items: list[dict]) -> list[dict]:
        left = []
        for p in items:
            try:
                r = await http.post("/v1/payments", json=p)
            except httpx.HTTPError:
                self.retries += 1
                left.append(p)
                continue
            if r.status_code >= 500 or r.status_code == 503:
                self.retries += 1
                left.append(p)
                continue
            assert r.status_code in (200, 201), r.text
            self.sent_payments.add(p["external_id"])
        return left


# -- settling ---------------------------------------------------------------------------------

async def _db(platform: Platform, service: str) -> asyncpg.Connection:
    return await asyncpg.connect(platform.database_urls[service])


async def settled(platform: Platform, clock: FileClock) -> dict[str, int]:
    """What is still in flight; all zeros when the platform has settled."""
    now = clock.now()
    out: dict[str, int] = {}
    for service in SERVICES:
        conn = await _db(platform, service)
        try:
            out[f"{service} outbox"] = await conn.fetchval("SELECT count(*) FROM outbox")
            if service == "invoicing":
                issued = await conn.fetchval("SELECT count(*) FROM invoices WHERE kind = 'invoice'")
            if service == "dunning":
                out["cases missing"] = issued - await conn.fetchval("SELECT count(*) FROM case_items")
                out["cases due"] = await conn.fetchval(
                    "SELECT count(*) FROM cases WHERE status = 'open' AND next_due_at <= $1", now)
            if service == "risk":  # every invoice folded into its customer's book, nothing staged or held
                out["risk books missing"] = issued - await conn.fetchval("SELECT count(*) FROM risk_invoices")
                out["risk events waiting"] = await conn.fetchval("SELECT count(*) FROM risk_pending_events")
            if service == "notifier":
                out["notices due"] = await conn.fetchval(
                    "SELECT count(*) FROM notifications WHERE status IN ('pending', 'sending') AND send_after <= $1",
                    now)
                requested = await conn.fetchval("SELECT count(*) FROM notifications")
        finally:
            await conn.close()
    conn = await _db(platform, "dunning")
    try:
        executed = await conn.fetchval("SELECT count(*) FROM notices")
    finally:
        await conn.close()
    out["requests not yet stored"] = executed - requested
    return out


async def settle(platform: Platform, clock: FileClock, timeout: float = 240) -> None:
    """Wait until nothing is in flight, then move the clock on two hours (within contact hours and
    before the next day's steps) so notices deferred a minute (contact not known yet) or waiting
    for a send retry come due, and wait again."""
    for _ in range(2):
        deadline = time.monotonic() + timeout
        while True:
            last = await settled(platform, clock)
            if not any(last.values()):
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"the platform did not settle within {timeout} s: {last}")
            await asyncio.sleep(1.0)
        clock.advance(timedelta(hours=2))


# -- checking ---------------------------------------------------------------------------------

@dataclass
class Findings:
    scenario: str
    invoices: int = 0
    cases_missing: int = 0
    steps_executed: int = 0
    steps_without_one_request: int = 0
    requests_without_step: int = 0
    redeliveries: int = 0  # the same event id on a topic more than once
    notifications_sent: int = 0
    sink_messages: int = 0
    missing_messages: int = 0
    extra_messages: int = 0
    crash_window_duplicates: int = 0
    order_violations: int = 0
    risk_books_missing: int = 0  # issued invoices the risk behaviour consumer has not folded
    dead_letters: int = 0
    faults: int = 0
    restarts: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.cases_missing or self.steps_without_one_request or self.requests_without_step
                    or self.missing_messages or self.extra_messages or self.order_violations or self.dead_letters
                    or self.risk_books_missing)


def _envelopes(records) -> list[Envelope]:
    return [Envelope.model_validate_json(r.value) for r in records]


async def check(platform: Platform, scenario: str) -> Findings:
    f = Findings(scenario)
    f.restarts = sum(platform.restarts.values())
    topics = platform.topics
    invoicing = _envelopes(await read_records(platform.bootstrap, topics.invoicing))
    dunning_records = await read_records(platform.bootstrap, topics.dunning)
    dunning = _envelopes(dunning_records)
    f.dead_letters = len(await read_records(platform.bootstrap, topics.dead_letter))
    ids = Counter(e.id for e in invoicing + dunning)
    f.redeliveries = sum(n - 1 for n in ids.values())

    issued = {e.data["invoice_id"] for e in invoicing if e.type == "InvoiceIssued"}
    f.invoices = len(issued)
    conn = await _db(platform, "dunning")
    try:
        in_cases = {str(r["invoice_id"]) for r in await conn.fetch("SELECT invoice_id FROM case_items")}
        notices = await conn.fetch("SELECT notification_key, sequence FROM notices")
    finally:
        await conn.close()
    f.cases_missing = len(issued - in_cases)
    if f.cases_missing:
        f.problems.append(f"no case for {sorted(issued - in_cases)[:3]}")
    conn = await _db(platform, "risk")
    try:
        in_books = {r["invoice_id"] for r in await conn.fetch("SELECT invoice_id FROM risk_invoices")}
    finally:
        await conn.close()
    f.risk_books_missing = len(issued - in_books)
    if f.risk_books_missing:
        f.problems.append(f"not in risk's books: {sorted(issued - in_books)[:3]}")

    # one NotificationRequested per notice; a case's notices go out in the order they were made
    offsets = {n["notification_key"]: (n["sequence"], 0) for n in notices}
    f.steps_executed = len(offsets)
    requested: dict[str, set] = defaultdict(set)
    for e in dunning:
        if e.type == "NotificationRequested":
            requested[e.data["notification_key"]].add(e.id)
    f.steps_without_one_request = sum(1 for k in offsets if len(requested.get(k, ())) != 1)
    f.requests_without_step = sum(1 for k in requested if k not in offsets)
    if f.steps_without_one_request or f.requests_without_step:
        f.problems.append(f"steps/requests mismatch, e.g. {[k for k in offsets if len(requested.get(k, ())) != 1][:3]}"
                          f" {[k for k in requested if k not in offsets][:3]}")

    # Order: an invoice's first event is its InvoiceIssued; a case's notices follow its steps.
    first_seen: set = set()
    seen_invoice: set[str] = set()
    for e in invoicing:
        if e.id in first_seen:
            continue
        first_seen.add(e.id)
        mentioned = {e.data.get("invoice_id")} | {a["invoice_id"] for a in e.data.get("allocations", [])} \
            | {a["invoice_id"] for a in e.data.get("reopened", [])}
        mentioned.discard(None)
        if e.type == "InvoiceIssued":
            seen_invoice.add(e.data["invoice_id"])
        elif mentioned - seen_invoice:
            f.order_violations += 1
            f.problems.append(f"{e.type} before InvoiceIssued of {sorted(mentioned - seen_invoice)[:1]}")
    last_step: dict[str, tuple[int, int]] = {}
    first_seen.clear()
    for e in dunning:
        if e.type != "NotificationRequested" or e.id in first_seen:
            continue
        first_seen.add(e.id)
        at = offsets.get(e.data["notification_key"])
        if at is None:
            continue
        case = e.data["case_id"]
        if at < last_step.get(case, (-1, -10_000)):
            f.order_violations += 1
            f.problems.append(f"case {case}: a notice of step {at} after one of {last_step[case]}")
        last_step[case] = max(at, last_step.get(case, at))

    # Notices: one message per sent notification, and up to one more per interrupted send (the
    # provider took it, the record did not happen): such a row may even be pending again, its
    # repeat deferred (by the contact cap, say), with its first copy in the sink already.
    conn = await _db(platform, "notifier")
    try:
        rows = {r["notification_key"]: (r["sent"], r["interrupted"]) for r in await conn.fetch(
            "SELECT notification_key, status IN ('sent', 'delivered') AS sent, interrupted FROM notifications"
            " WHERE status IN ('sent', 'delivered') OR interrupted > 0")}
    finally:
        await conn.close()
    f.notifications_sent = sum(1 for sent, _ in rows.values() if sent)
    async with httpx.AsyncClient(base_url=platform.sinks_url, timeout=30) as http:
        emails = (await http.get("/emails")).json()
        sms = (await http.get("/sms")).json()
    # .strip(): a long header is folded on the wire and the sink keeps the unfolded leading space
    messages = Counter([(m["headers"].get("X-Tahsilat-Notification-Key") or "").strip() for m in emails]
                       + [s["message_id"] for s in sms])
    f.sink_messages = sum(messages.values())
    for k, (sent, interrupted) in rows.items():
        n = messages.get(k, 0)
        if sent and n == 0:
            f.missing_messages += 1
        more = n - int(sent)
        if more > 0:
            f.crash_window_duplicates += min(more, interrupted)
            f.extra_messages += max(0, more - interrupted)
    f.extra_messages += sum(n for k, n in messages.items() if k not in rows)
    if f.missing_messages or f.extra_messages:
        f.problems.append(f"messages: {f.missing_messages} missing, {f.extra_messages} extra")
    return f


def today_at(d: date, hour: int) -> datetime:
    return datetime.combine(d, dtime(hour), timezone.utc)
