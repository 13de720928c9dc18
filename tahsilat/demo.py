"""The demo: three billing sources, a few hundred customers (en and tr) who each pay in their
own way (reliably, slowly, worse and worse, hardly at all), a few thousand invoices due over the
last five months, most of them paid (some late, some partially). It replays that history on the
platform's clock so that reminders go out and grades move when they would have, then prints what
happened."""
from __future__ import annotations

import asyncio
import random
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, time as dtime, timedelta, timezone

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from shared.clock import FileClock
from shared.contract.money import to_major
from tahsilat.platform import SERVICES, Platform
from tahsilat.streams import read_events

SOURCES = (("sap-erp", "EUR"), ("chargebee", "USD"), ("legacy-as400", "TRY"))
EN_ZONES = ("Europe/London", "America/New_York", "Europe/Dublin")
ROUND_DAYS = 7
TENANT = "demo"


# How customers pay, with the share of customers that pay that way. A real billing system does
# not know these: they stay in the Seed (for tests), never in what is posted.
PROFILE_WEIGHTS = {"reliable": 0.40, "steady": 0.25, "slow": 0.15, "deteriorating": 0.10, "delinquent": 0.10}
HISTORY_DAYS = 150  # due dates from this many days ago ...
AHEAD_DAYS = 10  # ... to this many days ahead: a customer is graded before most of its invoices are issued


@dataclass
class Seed:
    customers: list[dict]
    invoices: list[dict]  # request bodies, plus "_source"
    payments: list[dict]  # request bodies, plus "_source" and "_on" (the day it arrives)
    profiles: dict[str, str] = field(default_factory=dict)  # customer id -> payment behaviour profile


def assign_profiles(rnd: random.Random, customers: int) -> list[str]:
    """Each customer's profile, shuffled: each profile's count is its weight's share of the
    customers (largest remainders), so the spread holds for every seed, not only lucky ones."""
    exact = {p: w * customers for p, w in PROFILE_WEIGHTS.items()}
    counts = {p: int(x) for p, x in exact.items()}
    by_remainder = sorted(exact, key=lambda p: exact[p] - counts[p], reverse=True)
    for p in by_remainder[:customers - sum(counts.values())]:
        counts[p] += 1
    profiles = [p for p, n in counts.items() for _ in range(n)]
    rnd.shuffle(profiles)
    return profiles


def _payment_terms(rnd: random.Random, profile: str, k: int, invoices: int, deterioration: int,
                   amount: int) -> tuple[int, int] | None:
    """(days after the due date it is paid, amount paid) for the customer's k-th invoice in due
    date order, or None: never paid."""
    if profile == "reliable":
        return -rnd.randint(0, 5), amount
    if profile == "steady":
        return (rnd.randint(1, 10) if rnd.random() < 0.3 else -rnd.randint(0, 2)), amount
    if profile == "slow":
        return rnd.randint(15, 45), amount
    if profile == "deteriorating":  # on time at first, each invoice later than the last
        return round(deterioration * k / max(invoices - 1, 1)), amount
    r = rnd.random()  # delinquent
    if r < 0.5:
        return None
    if r < 0.8:
        return rnd.randint(30, 70), amount
    return rnd.randint(10, 60), amount // 2


def make_seed(today: date, customers: int = 300, invoices_per_customer: int = 10, seed: int = 7) -> Seed:
    """The demo's billing history, the same for the same seed. Each customer pays by a profile
    (PROFILE_WEIGHTS), so that risk grades have real differences to find."""
    rnd = random.Random(seed)
    people, invoices, payments, profiles = [], [], [], {}
    for n, profile in enumerate(assign_profiles(rnd, customers)):
        source, currency = SOURCES[n % len(SOURCES)]
        turkish = rnd.random() < 0.5
        cust = {
            "id": f"CUST-{n:04d}",
            "name": f"{rnd.choice(['Anadolu', 'Ege', 'Marmara', 'Karadeniz']) if turkish else rnd.choice(['Acme', 'Globex', 'Initech', 'Umbrella'])} {n}",
            "language": "tr" if turkish else "en",
            "timezone": "Europe/Istanbul" if turkish else rnd.choice(EN_ZONES),
            "email": f"billing{n}@example.com",
            "phone": f"+90555{n:07d}" if turkish else f"+44770090{n:04d}",
            "_source": source,
            "_currency": "TRY" if turkish and source != "sap-erp" else currency,
        }
        people.append(cust)
        profiles[cust["id"]] = profile
        dues = sorted(today + timedelta(days=rnd.randint(-HISTORY_DAYS, AHEAD_DAYS))
                      for _ in range(invoices_per_customer))
        deterioration = rnd.randint(40, 60)  # how late a deteriorating customer's last invoice is paid
        for k, due in enumerate(dues):
            issue = due - timedelta(days=30)
            amount = rnd.randint(50_00, 5_000_00)
            ext = f"{source[:3].upper()}-{n:04d}-{k:02d}"
            invoices.append({
                "external_id": ext, "number": ext,
                "customer": {k2: v for k2, v in cust.items() if not k2.startswith("_")},
                "currency": cust["_currency"], "amount_minor": amount,
                "issue_date": issue.isoformat(), "due_date": due.isoformat(), "_source": source,
            })
            terms = _payment_terms(rnd, profile, k, invoices_per_customer, deterioration, amount)
            if terms is None:
                continue
            days_after_due, paid = terms
            on = max(due + timedelta(days=days_after_due), issue)
            if on > today:
                continue
            payments.append({
                "external_id": f"PAY-{ext}", "customer_id": cust["id"], "currency": cust["_currency"],
                "amount_minor": paid, "invoice_refs": [ext],
                "received_at": datetime.combine(on, dtime(12), timezone.utc).isoformat(),
                "_source": source, "_on": on,
            })
    return Seed(people, invoices, payments, profiles)


async def _post_all(client: httpx.AsyncClient, path: str, bodies: list[dict], keys: dict[str, str], progress, task) -> None:
    """Send through the bulk endpoint, one request per billing source and 1,000 items."""
    by_source: dict[str, list[dict]] = {}
    for b in bodies:
        by_source.setdefault(b["_source"], []).append({k: v for k, v in b.items() if not k.startswith("_")})
    for source, items in by_source.items():
        for start in range(0, len(items), 1000):
            batch = items[start:start + 1000]
            r = await client.post(f"{path}/bulk", json={"items": batch}, headers={"X-API-Key": keys[source]})
            rejected = [x for x in r.json().get("results", []) if x["status"] == "rejected"] if r.status_code == 200 else []
            if r.status_code != 200 or rejected:
                raise RuntimeError(f"{path}/bulk refused demo data: {r.status_code} {rejected[:1] or r.text[:300]}")
            progress.advance(task, len(batch))


_METRIC = re.compile(r'^(tahsilat_(?:outbox_backlog|events_consumed_total|timers_fired_total))\{([^}]*)\} ([0-9.e+]+)$', re.M)


async def settle(client: httpx.AsyncClient, platform: Platform, quiet_polls: int = 3, timeout: float = 120) -> None:
    """Wait until no outbox has a backlog and no consumer or timer has done anything for a while."""
    last, quiet = None, 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        backlog, activity = 0.0, 0.0
        for s in SERVICES:
            text = (await client.get(f"{platform.url(s)}/metrics")).text
            for name, _labels, value in _METRIC.findall(text):
                if name == "tahsilat_outbox_backlog":
                    backlog += float(value)
                else:
                    activity += float(value)
        quiet = quiet + 1 if (backlog == 0 and activity == last) else 0
        last = activity
        if quiet >= quiet_polls:
            return
        await asyncio.sleep(0.3)
    raise TimeoutError("the pipeline did not settle")


DEMO_COLLECTORS = (("ayse", "Ayşe Yılmaz", "tr", "Europe/Istanbul"), ("jane", "Jane Doe", "en", "Europe/London"))


async def _collectors(platform: Platform, admin_key: str) -> dict[str, str]:
    """Two collectors with keys of their own, and desk rules that give them calls to make: the
    console (sign in with their key) then shows their worklists."""
    from tahsilat.keys import create_key

    keys = {}
    async with httpx.AsyncClient(base_url=platform.url("dunning"), timeout=30,
                                 headers={"X-API-Key": admin_key}) as dunning:
        for collector_id, name, language, zone in DEMO_COLLECTORS:
            key = await create_key(platform.database_urls, tenant_id=TENANT, role="collector", label=f"demo {name}")
            r = await dunning.put(f"/v1/collectors/{collector_id}", json={
                "name": name, "key_id": key.split("_")[1], "language": language, "timezone": zone,
                "work_start": "00:00", "work_end": "23:59", "work_days": [1, 2, 3, 4, 5, 6, 7], "capacity": 60})
            r.raise_for_status()
            keys[name] = key
        r = await dunning.put("/v1/desk/settings", json={
            "assignment": "round_robin", "high_amount": {"EUR": "3000.00", "USD": "3000.00", "TRY": "100000.00"},
            "unanswered_notices": 3})
        r.raise_for_status()
    return keys


async def run_demo(platform: Platform, clock: FileClock, console: Console, *, customers: int = 300,
                   invoices_per_customer: int = 10) -> dict:
    from tahsilat.keys import create_key

    started = time.monotonic()
    today = datetime.now(timezone.utc).date()
    seed = make_seed(today, customers, invoices_per_customer)
    keys = {s: await create_key(platform.database_urls, tenant_id=TENANT, role="billing-source", source_name=s,
                                records=("invoices", "payments"))
            for s, _ in SOURCES}
    admin_key = await create_key(platform.database_urls, tenant_id=TENANT, role="admin", label="demo admin")
    collector_keys = await _collectors(platform, admin_key)

    first = min(date.fromisoformat(i["issue_date"]) for i in seed.invoices)
    rounds = []
    day = first
    while day < today:
        rounds.append(day)
        day += timedelta(days=ROUND_DAYS)
    rounds.append(today)
    at_1400 = lambda d: datetime.combine(d, dtime(14), timezone.utc)  # noqa: E731 - business hours in TR, UK and US

    posted_inv, posted_pay = set(), set()
    async with httpx.AsyncClient(base_url=platform.url("invoicing"), timeout=30) as client:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console) as progress:
            t_inv = progress.add_task("invoices", total=len(seed.invoices))
            t_pay = progress.add_task("payments", total=len(seed.payments))
            t_days = progress.add_task("days replayed", total=len(rounds))
            clock.set(at_1400(first))
            for day in rounds:
                # Everything that happened up to `day` arrives, then the clock moves to `day`.
                inv = [i for i in seed.invoices if date.fromisoformat(i["issue_date"]) <= day and i["external_id"] not in posted_inv]
                pay = [p for p in seed.payments if p["_on"] <= day and p["external_id"] not in posted_pay]
                await _post_all(client, "/v1/invoices", inv, keys, progress, t_inv)
                posted_inv.update(i["external_id"] for i in inv)
                await _post_all(client, "/v1/payments", pay, keys, progress, t_pay)
                posted_pay.update(p["external_id"] for p in pay)
                await settle(client, platform)
                clock.set(at_1400(day))
                await settle(client, platform)
                progress.advance(t_days)
        aging = (await client.get("/v1/reports/aging", headers={"X-API-Key": admin_key})).json()
    summary = await summarize(platform, aging)
    async with httpx.AsyncClient(timeout=10) as c:
        collectors = (await c.get(f"{platform.url('dunning')}/v1/collectors", headers={"X-API-Key": admin_key})).json()
    summary["worklists"] = {c["name"]: c["open_tasks"] for c in collectors}
    summary["seconds"] = time.monotonic() - started
    summary["admin_key"] = admin_key
    summary["collector_keys"] = collector_keys
    summary["source_keys"] = keys
    return summary


async def summarize(platform: Platform, aging: dict) -> dict:
    t = platform.topics
    invoicing = await read_events(platform.bootstrap, t.invoicing)
    notifier = await read_events(platform.bootstrap, t.notifier)
    risk = await read_events(platform.bootstrap, t.risk)
    dead = await read_events(platform.bootstrap, t.dead_letter)
    async with httpx.AsyncClient(timeout=10) as c:
        emails = len((await c.get(f"{platform.sinks_url}/emails")).json())
        sms = len((await c.get(f"{platform.sinks_url}/sms")).json())
    return {
        "issued_by_source": Counter(e.data["billing_source"] for e in invoicing if e.type == "InvoiceIssued"),
        "payments": sum(1 for e in invoicing if e.type == "PaymentReceived"),
        "paid": sum(1 for e in invoicing if e.type == "InvoicePaid"),
        "overdue": sum(1 for e in invoicing if e.type == "InvoiceOverdue"),
        "sent": Counter((e.data["channel"], e.data["language"]) for e in notifier if e.type == "NotificationSent"),
        "failed": sum(1 for e in notifier if e.type == "NotificationFailed"),
        **risk_counts(risk),
        "dead_letters": len(dead),
        "emails_in_sink": emails,
        "sms_in_sink": sms,
        "aging": aging,
    }


def risk_counts(risk_events) -> dict[str, Counter]:
    """Customers per latest segment and per latest grade, from the RiskAssessed events (the risk
    topic carries other events too). An assessment without a grade counts under its segment."""
    latest = {e.data["customer_id"]: e.data for e in risk_events if e.type == "RiskAssessed"}
    return {"segments": Counter(d["segment"] for d in latest.values()),
            "grades": Counter(d.get("grade") or d["segment"] for d in latest.values())}


def print_summary(console: Console, summary: dict, platform: Platform) -> None:
    t = Table(title="Invoices issued per billing source")
    t.add_column("source")
    t.add_column("invoices", justify="right")
    for source, n in sorted(summary["issued_by_source"].items()):
        t.add_row(source, str(n))
    console.print(t)
    console.print(f"Payments received: {summary['payments']}  invoices settled: {summary['paid']}  "
                  f"invoices overdue: {summary['overdue']}  dead letters: {summary['dead_letters']}")
    t = Table(title="Reminders sent")
    for col in ("channel", "language", "sent"):
        t.add_column(col, justify="right" if col == "sent" else "left")
    for (channel, language), n in sorted(summary["sent"].items()):
        t.add_row(channel, language, str(n))
    console.print(t)
    console.print(f"Captured: {summary['emails_in_sink']} emails, {summary['sms_in_sink']} SMS; "
                  f"suppressed/failed: {summary['failed']}")
    console.print("Risk segments: " + ", ".join(f"{k} {v}" for k, v in sorted(summary["segments"].items())))
    console.print("Risk grades: " + ", ".join(f"{k} {v}" for k, v in sorted(summary["grades"].items())))
    aging = summary["aging"]
    t = Table(title=f"AR aging as of {aging['as_of']} (open amounts, days past due)")
    t.add_column("currency")
    for b in [*aging["buckets"], "total"]:
        t.add_column(b, justify="right")
    for currency, row in sorted(aging["by_currency"].items()):
        t.add_row(currency, *(f"{to_major(row[b], currency):,}" for b in [*aging["buckets"], "total"]))
    console.print(t)
    if summary.get("worklists"):
        console.print("Collectors' worklists: " + ", ".join(f"{name} {n} open tasks"
                                                           for name, n in summary["worklists"].items()))
    t = Table(title="Where to look", show_header=False)
    t.add_column("what")
    t.add_column("where", overflow="fold")  # keys in full, wrapped rather than cut
    for k, v in platform.describe().items():
        t.add_row(k, v)
    t.add_row("admin API key (tenant demo)", summary["admin_key"])
    for name, key in summary.get("collector_keys", {}).items():
        t.add_row(f"collector {name}: console key", key)
    console.print(t)
    console.print(f"Demo took {summary['seconds']:.0f} s.")
