"""Importing invoice files into a real invoicing database: counts, the rejects file, the invoices
and the outbox they leave behind, the `tahsilat import invoices` command, and bounded memory."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pytest

from services.invoicing.bootstrap import MIGRATIONS
from services.invoicing.entrypoints.file_import import ImportFileError, import_invoices
from shared.clock import ManualClock
from shared.contract import Topics
from shared.db import create_pool, drop_database, migrate, with_database

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
TOPICS = Topics("fileimport.")


@pytest.fixture
async def pool(database):
    await migrate(database, MIGRATIONS)
    pool = await create_pool(database)
    await pool.execute("INSERT INTO billing_sources (tenant_id, name, default_currency, records_invoices, records_payments)"
                       " VALUES ('t1', 'erp', 'EUR', true, true), ('t1', 'bank-garanti', NULL, false, true)")
    try:
        yield pool
    finally:
        await pool.close()


def read_rejects(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


MIXED = """\
external_id,number,customer_id,customer_name,customer_language,customer_timezone,customer_email,currency,amount,issue_date,due_date,status
INV-1,N-1,C1,Anadolu Tekstil,tr,Europe/Istanbul,muhasebe@anadolu.example,,1250.50,2026-02-01,2026-03-01,
INV-2,,C1,,,,,,99.99,2026-02-01,2026-03-01,
INV-3,,C2,,,,,JPY,15000,2026-02-01,2026-03-01,
INV-4,,C3,,,,,KWD,12.345,2026-02-01,2026-03-01,
BAD-1,,C4,,,,,EUR,12.345,2026-02-01,2026-03-01,
BAD-2,,C4,,,,,XYZ,10,2026-02-01,2026-03-01,
BAD-3,,C4,,,,,,10,2026-03-01,2026-02-01,
BAD-4,,C4,,,,,,10,2026-02-31,2026-03-01,
INV-1,N-1,C1,Anadolu Tekstil,tr,Europe/Istanbul,muhasebe@anadolu.example,,1250.50,2026-02-01,2026-03-01,
INV-2,,C1,,,,,,120.00,2026-02-01,2026-03-15,
INV-3,,C2,,,,,JPY,15000,2026-02-01,2026-03-01,cancelled
BAD-5,,C9,,,,,,10,2026-02-01,2026-03-01,cancelled
INV-3,,C2,,,,,JPY,16000,2026-02-01,2026-03-01,
"""


async def test_a_mixed_file_imports_the_good_rows_and_explains_the_rest(pool, tmp_path):
    path = tmp_path / "invoices.csv"
    path.write_text(MIXED, encoding="utf-8")
    rejects = tmp_path / "invoices.csv.rejects.csv"
    rejects.write_text("stale\n")  # from an earlier run: replaced
    seen: list[tuple[int, int, int]] = []

    summary = await import_invoices(pool, ManualClock(T0), TOPICS, tenant_id="t1", source="erp", path=path,
                                    rejects_path=rejects, chunk=4, progress=lambda *a: seen.append(a))

    assert summary.rows == 13
    assert summary.counts == {"created": 4, "unchanged": 1, "adjusted": 1, "cancelled": 1, "rejected": 6}
    assert summary.rejects_path == rejects
    assert seen[-1] == (13, path.stat().st_size, path.stat().st_size)
    assert [s[0] for s in seen] == sorted(s[0] for s in seen)

    lines = read_rejects(rejects)
    assert [(r["row"], r["external_id"], r["field"]) for r in lines] == [
        ("6", "BAD-1", "amount"), ("7", "BAD-2", "currency"), ("8", "BAD-3", "record"), ("9", "BAD-4", "issue_date"),
        ("13", "BAD-5", "status"), ("14", "INV-3", "status"),
    ]
    assert "more decimals than EUR allows" in lines[0]["reason"]
    assert lines[1]["reason"] == "unknown ISO 4217 currency code 'XYZ'"
    assert "due_date must not be before issue_date" in lines[2]["reason"]
    assert "never issued" in lines[4]["reason"]
    assert "was cancelled" in lines[5]["reason"]  # the row after the cancellation cannot reopen it

    rows = {r["external_id"]: r for r in await pool.fetch("SELECT * FROM invoices WHERE tenant_id = 't1'")}
    assert set(rows) == {"INV-1", "INV-2", "INV-3", "INV-4"}
    assert (rows["INV-1"]["amount_minor"], rows["INV-1"]["currency"], rows["INV-1"]["number"]) == (125050, "EUR", "N-1")
    assert (rows["INV-2"]["amount_minor"], str(rows["INV-2"]["due_date"]), rows["INV-2"]["version"]) == (
        12000, "2026-03-15", 2)
    assert (rows["INV-3"]["amount_minor"], rows["INV-3"]["currency"], rows["INV-3"]["status"]) == (
        15000, "JPY", "cancelled")
    assert (rows["INV-4"]["amount_minor"], rows["INV-4"]["currency"]) == (12345, "KWD")
    assert all(r["billing_source"] == "erp" for r in rows.values())
    customers = {r["customer_id"]: r for r in await pool.fetch("SELECT * FROM customers")}
    assert set(customers) == {"C1", "C2", "C3"}  # C4 and C9 only appear in rejected rows
    assert (customers["C1"]["name"], customers["C1"]["language"], customers["C1"]["placeholder"]) == (
        "Anadolu Tekstil", "tr", False)
    assert customers["C2"]["placeholder"] is True

    outbox = await pool.fetch("SELECT topic, event_type, envelope FROM outbox ORDER BY id")
    assert {r["topic"] for r in outbox} == {TOPICS.invoicing}
    assert Counter(r["event_type"] for r in outbox) == {
        "CustomerUpserted": 3, "InvoiceIssued": 4, "InvoiceAdjusted": 1, "InvoiceCancelled": 1}
    issued = {r["envelope"]["data"]["external_id"]: r["envelope"]["data"] for r in outbox
              if r["event_type"] == "InvoiceIssued"}
    assert (issued["INV-1"]["amount_minor"], issued["INV-1"]["currency"]) == (125050, "EUR")

    # The same file again: nothing new. INV-2 goes back and forth (its first row adjusts it back, the
    # second forward again); INV-3 stays cancelled, so its open rows are rejected now.
    again = await import_invoices(pool, ManualClock(T0), TOPICS, tenant_id="t1", source="erp", path=path,
                                  rejects_path=rejects)
    assert again.counts == {"created": 0, "unchanged": 4, "adjusted": 2, "cancelled": 0, "rejected": 7}
    assert await pool.fetchval("SELECT count(*) FROM invoices") == 4
    assert [r["row"] for r in read_rejects(rejects)] == ["4", "6", "7", "8", "9", "13", "14"]


async def test_jsonl_and_a_clean_file_leave_no_rejects_file(pool, tmp_path):
    path = tmp_path / "invoices.jsonl"
    with open(path, "w") as f:
        for i in range(3):
            f.write(json.dumps({"external_id": f"J-{i}", "customer_id": "C1", "amount_minor": 100 + i,
                                "issue_date": "2026-02-01", "due_date": "2026-03-01"}) + "\n")
    rejects = tmp_path / "r.csv"
    summary = await import_invoices(pool, ManualClock(T0), TOPICS, tenant_id="t1", source="erp", path=path,
                                    rejects_path=rejects)
    assert summary.counts["created"] == 3 and summary.rejected == 0
    assert summary.rejects_path is None and not rejects.exists()
    assert await pool.fetchval("SELECT sum(amount_minor) FROM invoices WHERE currency = 'EUR'") == 303

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"external_id": "J-9"\n')
    summary = await import_invoices(pool, ManualClock(T0), TOPICS, tenant_id="t1", source="erp", path=bad,
                                    rejects_path=rejects)
    assert summary.rejected == 1
    [line] = read_rejects(rejects)
    assert (line["row"], line["field"]) == ("1", "line") and line["reason"].startswith("not valid JSON")


async def test_a_file_that_cannot_be_read_is_an_error(pool, tmp_path):
    with pytest.raises(ImportFileError, match="no such file"):
        await import_invoices(pool, ManualClock(T0), TOPICS, tenant_id="t1", source="erp",
                              path=tmp_path / "missing.csv", rejects_path=tmp_path / "r.csv")
    odd = tmp_path / "x.csv"
    odd.write_text("external_id,colour\n")
    with pytest.raises(ImportFileError, match="unknown column 'colour'"):
        await import_invoices(pool, ManualClock(T0), TOPICS, tenant_id="t1", source="erp", path=odd,
                              rejects_path=tmp_path / "r.csv")


def test_the_import_command(pg_server, tmp_path):
    prefix = f"climp_{uuid.uuid4().hex[:10]}"
    path = tmp_path / "march.csv"
    path.write_text(
        "external_id,customer_id,currency,amount,issue_date,due_date\n"
        "A-1,C1,EUR,10.00,2026-03-01,2026-03-31\n"
        "A-2,C1,EUR,10.001,2026-03-01,2026-03-31\n"
        "A-3,C2,TRY,1500.5,2026-03-01,2026-03-31\n",
        encoding="utf-8",
    )
    env = {**os.environ, "DATABASE_URL": pg_server, "COLUMNS": "120"}
    env.pop("TOPIC_PREFIX", None)
    try:
        registered = subprocess.run(
            [sys.executable, "-m", "tahsilat.cli", "sources", "register", "erp", "--tenant", "t1", "--db-prefix",
             prefix], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert registered.returncode == 0, registered.stdout + registered.stderr
        result = subprocess.run(
            [sys.executable, "-m", "tahsilat.cli", "import", "invoices", str(path), "--source", "erp",
             "--tenant", "t1", "--db-prefix", prefix],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
        )
        assert result.returncode == 1, result.stdout + result.stderr
        out = result.stdout
        for label, value in (("read", "3"), ("created", "2"), ("rejected", "1")):
            assert any(label in line and f" {value} " in line for line in out.splitlines()), out
        assert "rows/s" in out and "march.csv.rejects.csv" in out.replace("\n", "")
        [line] = read_rejects(tmp_path / "march.csv.rejects.csv")
        assert (line["row"], line["external_id"], line["field"]) == ("3", "A-2", "amount")

        missing = subprocess.run(
            [sys.executable, "-m", "tahsilat.cli", "import", "invoices", str(tmp_path / "nope.csv"), "--source",
             "erp", "--tenant", "t1", "--db-prefix", prefix],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
        )
        assert missing.returncode == 2 and "no such file" in missing.stdout
        assert len(missing.stdout.strip().splitlines()) == 1

        async def check() -> tuple[int, int]:
            import asyncpg

            conn = await asyncpg.connect(with_database(pg_server, f"{prefix}_invoicing"))
            try:
                return (await conn.fetchval("SELECT count(*) FROM invoices"),
                        await conn.fetchval("SELECT count(*) FROM outbox WHERE event_type = 'InvoiceIssued'"))
            finally:
                await conn.close()

        import asyncio

        assert asyncio.run(check()) == (2, 2)
    finally:
        import asyncio

        asyncio.run(drop_database(pg_server, f"{prefix}_invoicing"))


ROWS = 100_000


async def test_a_large_file_is_imported_in_bounded_memory(pool, tmp_path):
    """Memory follows the chunk, not the file: the resident set after the first fifth of the rows
    hardly grows over the other four fifths (holding the rows would add ~1 KB each)."""
    path = tmp_path / "big.csv"
    with open(path, "w", encoding="utf-8") as f:  # written streaming, as it is read
        f.write("external_id,customer_id,customer_name,customer_email,currency,amount,issue_date,due_date\n")
        for i in range(ROWS):
            c = i % 5000
            f.write(f"INV-{i:07d},C{c},Customer {c},billing{c}@example.com,EUR,{i % 9000 + 1}.{i % 100:02d},"
                    f"2026-02-01,2026-03-{i % 28 + 1:02d}\n")
    size_mb = path.stat().st_size / 2**20

    def rss_mb() -> float:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    peak = [0.0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.02):
            peak[0] = max(peak[0], rss_mb())

    at: dict[int, float] = {}

    def progress(rows: int, _done: int, _total: int) -> None:
        at[rows] = rss_mb()

    before = rss_mb()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    try:
        summary = await import_invoices(pool, ManualClock(T0), TOPICS, tenant_id="t1", source="erp", path=path,
                                        rejects_path=tmp_path / "big.rejects.csv", progress=progress)
    finally:
        stop.set()
        sampler.join()
    seconds = time.perf_counter() - started
    fifth = at[min(r for r in at if r >= ROWS // 5)]
    end = at[ROWS]
    print(f"\n{ROWS} rows ({size_mb:.0f} MB) in {seconds:.1f} s; RSS {before:.0f} MB before, {fifth:.0f} MB after a"
          f" fifth, {end:.0f} MB at the end, peak {peak[0]:.0f} MB")

    assert summary.counts["created"] == ROWS and summary.rejected == 0
    assert await pool.fetchval("SELECT count(*) FROM invoices") == ROWS
    assert peak[0] - before < 150, (before, peak[0])
    assert end - fifth < 40, (fifth, end)  # 80,000 more rows held would be ~100 MB more


# -- payments -----------------------------------------------------------------------------------

from services.invoicing.entrypoints.file_import import UNIDENTIFIED_CUSTOMER, import_payments  # noqa: E402

PAID_AT = datetime(2026, 3, 9, 9, 0, tzinfo=timezone.utc)


async def load_invoices(pool, tmp_path, text: str) -> None:
    path = tmp_path / "invoices-for-payments.csv"
    path.write_text(text, encoding="utf-8")
    summary = await import_invoices(pool, ManualClock(T0), TOPICS, tenant_id="t1", source="erp", path=path,
                                    rejects_path=tmp_path / "invoices.rejects.csv")
    assert summary.rejected == 0


async def open_invoices(pool) -> dict[str, tuple[int, str]]:
    return {r["external_id"]: (r["open_minor"], r["status"])
            for r in await pool.fetch("SELECT external_id, open_minor, status FROM invoices WHERE tenant_id = 't1'")}


async def payments_by_external_id(pool) -> dict[str, dict]:
    return {r["external_id"]: dict(r) for r in await pool.fetch(
        "SELECT external_id, billing_source, customer_id, currency, amount_minor, unapplied_minor, unapplied_reason,"
        " references_, status, received_at FROM payments WHERE tenant_id = 't1'")}


async def assert_ledger_reconciles(pool) -> None:
    """Per currency, over the whole tenant: the ledger balance equals what is open on invoices
    minus the unapplied cash and credit, to the cent."""
    ledger = {r["currency"]: r["s"] for r in await pool.fetch(
        "SELECT currency, sum(amount_minor) AS s FROM ledger_entries WHERE tenant_id = 't1' GROUP BY currency")}
    open_ = {r["currency"]: r["s"] for r in await pool.fetch(
        "SELECT currency, sum(open_minor) AS s FROM invoices WHERE tenant_id = 't1' GROUP BY currency")}
    unapplied = {r["currency"]: r["s"] for r in await pool.fetch(
        "SELECT currency, sum(unapplied_minor) AS s FROM payments WHERE tenant_id = 't1' GROUP BY currency")}
    assert ledger, "nothing booked"
    for currency in set(ledger) | set(open_) | set(unapplied):
        assert ledger.get(currency, 0) == open_.get(currency, 0) - unapplied.get(currency, 0), currency


INVOICES_FOR_PAYMENTS = """\
external_id,number,customer_id,currency,amount,issue_date,due_date
INV-1,N-1,C1,EUR,100.00,2026-02-01,2026-03-01
INV-2,N-2,C1,EUR,200.00,2026-02-01,2026-03-10
INV-3,N-3,C1,EUR,50.00,2026-02-01,2026-03-20
INV-4,N-4,C2,EUR,300.00,2026-02-01,2026-03-05
J-1,J-1,C3,JPY,15000,2026-02-01,2026-03-05
"""

PAYMENTS = """\
external_id,customer_id,currency,amount,amount_minor,received_at,invoice_refs,status,reason
P-1,C1,EUR,60.00,,2026-03-03,,,
P-2,C1,EUR,,5000,2026-03-04T10:00:00+03:00,N-3,,
P-3,C2,EUR,350.00,,2026-03-04,,,
P-4,STRANGER,EUR,12.34,,2026-03-05,INV-1,,
P-5,C1,XYZ,10,,2026-03-05,,,
P-6,C3,JPY,15000,,,J-1,,
P-7,C1,EUR,10.001,,,,,
P-1,C1,EUR,60.00,,2026-03-03,,,
P-6,C3,JPY,15000,,,,reversed,bounced: NSF
P-99,C1,EUR,1.00,,,,reversed,
P-1,C1,EUR,61.00,,2026-03-03,,,
"""


async def test_a_payment_file_applies_in_order_and_explains_the_rejects(pool, tmp_path):
    await load_invoices(pool, tmp_path, INVOICES_FOR_PAYMENTS)
    path = tmp_path / "payments.csv"
    path.write_text(PAYMENTS, encoding="utf-8")
    rejects = tmp_path / "payments.csv.rejects.csv"
    seen: list[tuple[int, int, int]] = []

    summary = await import_payments(pool, ManualClock(PAID_AT), TOPICS, tenant_id="t1", source="erp", path=path,
                                    rejects_path=rejects, progress=lambda *a: seen.append(a), progress_every=4)

    assert summary.rows == 11
    assert summary.counts == {"created": 5, "unchanged": 1, "reversed": 1, "rejected": 4, "skipped": 0}
    assert seen[-1] == (11, path.stat().st_size, path.stat().st_size) and [s[0] for s in seen] == [4, 8, 11]
    lines = read_rejects(rejects)
    assert [(r["row"], r["external_id"], r["field"]) for r in lines] == [
        ("6", "P-5", "currency"), ("8", "P-7", "amount"), ("11", "P-99", "external_id"), ("12", "P-1", "external_id"),
    ]
    assert lines[0]["reason"] == "unknown ISO 4217 currency code 'XYZ'"
    assert "more decimals than EUR allows" in lines[1]["reason"]
    assert "no payment recorded" in lines[2]["reason"]
    assert "a different payment is already recorded" in lines[3]["reason"]

    assert await open_invoices(pool) == {
        "INV-1": (4_000, "open"),   # P-1: partial, oldest first
        "INV-2": (20_000, "open"),
        "INV-3": (0, "paid"),       # P-2: by reference (its number), not the oldest
        "INV-4": (0, "paid"),       # P-3: over-paid by 50.00
        "J-1": (15_000, "open"),    # P-6 paid it, then bounced
    }
    payments = await payments_by_external_id(pool)
    assert (payments["P-1"]["received_at"], payments["P-1"]["amount_minor"]) == (
        datetime(2026, 3, 3, 12, tzinfo=timezone.utc), 6_000)  # a bare date: noon UTC
    assert payments["P-2"]["received_at"] == datetime(2026, 3, 4, 7, tzinfo=timezone.utc)
    assert (payments["P-3"]["unapplied_minor"], payments["P-3"]["unapplied_reason"]) == (
        5_000, "over-payment: no open invoice left in this currency")
    assert (payments["P-6"]["status"], payments["P-6"]["unapplied_minor"]) == ("reversed", 0)
    assert (payments["P-4"]["unapplied_minor"], payments["P-4"]["unapplied_reason"]) == (1_234, "unknown customer")
    assert payments["P-4"]["references_"] == ["INV-1"]
    assert set(payments) == {"P-1", "P-2", "P-3", "P-4", "P-6"}
    await assert_ledger_reconciles(pool)

    outbox = Counter(r["event_type"] for r in await pool.fetch("SELECT event_type FROM outbox"))
    assert (outbox["PaymentReceived"], outbox["PaymentReversed"]) == (5, 1)
    unapplied = await pool.fetch("SELECT external_id FROM payments WHERE unapplied_minor > 0 ORDER BY external_id")
    assert [u["external_id"] for u in unapplied] == ["P-3", "P-4"]

    again = await import_payments(pool, ManualClock(PAID_AT), TOPICS, tenant_id="t1", source="erp", path=path,
                                  rejects_path=rejects)
    assert again.counts == {"created": 0, "unchanged": 7, "reversed": 0, "rejected": 4, "skipped": 0}
    assert await pool.fetchval("SELECT count(*) FROM payments") == 5
    await assert_ledger_reconciles(pool)


async def test_an_over_payment_in_a_file_is_credit_and_jsonl_works_too(pool, tmp_path):
    await load_invoices(pool, tmp_path, INVOICES_FOR_PAYMENTS)
    path = tmp_path / "payments.jsonl"
    path.write_text("\n".join(json.dumps(p) for p in [
        {"external_id": "Q-1", "customer_id": "C2", "currency": "EUR", "amount_minor": 35_000},
        {"external_id": "Q-2", "customer_id": "C2", "currency": "EUR", "amount_minor": 1, "billing_source": "other"},
        {"external_id": "Q-3", "customer_id": "C1", "currency": "EUR", "amount_minor": -5},
    ]) + "\n", encoding="utf-8")
    rejects = tmp_path / "q.rejects.csv"
    summary = await import_payments(pool, ManualClock(PAID_AT), TOPICS, tenant_id="t1", source="erp", path=path,
                                    rejects_path=rejects)
    assert summary.counts == {"created": 1, "unchanged": 0, "reversed": 0, "rejected": 2, "skipped": 0}
    assert [(r["row"], r["field"]) for r in read_rejects(rejects)] == [("2", "billing_source"), ("3", "amount_minor")]
    q1 = (await payments_by_external_id(pool))["Q-1"]
    assert (q1["unapplied_minor"], q1["unapplied_reason"]) == (
        5_000, "over-payment: no open invoice left in this currency")
    assert (await open_invoices(pool))["INV-4"] == (0, "paid")
    await assert_ledger_reconciles(pool)


INVOICES_FOR_BANK = """\
external_id,number,customer_id,currency,amount,issue_date,due_date
INV-1001,INV-1001,C1,EUR,100.00,2026-02-01,2026-03-01
INV-1002,F-1002,C1,EUR,200.00,2026-02-01,2026-03-10
INV-1003,INV-1003,C1,EUR,300.00,2026-02-01,2026-03-20
INV-2001,INV-2001,C2,EUR,400.00,2026-02-01,2026-03-02
X-1,DUP-1,C3,EUR,10.00,2026-02-01,2026-03-02
X-2,DUP-1,C4,EUR,10.00,2026-02-01,2026-03-02
"""

STATEMENT = """\
date,amount,currency,reference,counterparty_id,transaction_id
2026-03-05,150.00,EUR,INV-1003 / ACME,C1,TX-1
2026-03-05,-49.90,EUR,card fee,,TX-2
2026-03-06,300.00,EUR,"Payment F-1002 and INV-1001, thanks",,TX-3
2026-03-06,400.00,EUR,INV-2001,,TX-4
2026-03-06,75.00,EUR,misc transfer,,TX-5
2026-03-07,20.00,EUR,DUP-1,,TX-6
2026-03-07,10.00,EUR,INV-2001,C1,TX-7
2026-03-08,100.00,EUR,INV-1003,,TX-8
2026-03-08,100.00,EUR,re INV-1003.,,TX-9
2026-03-08,5.00,EUR,,ACME LTD,TX-10
2026-03-08,5.00,XYZ,INV-1003,,TX-11
2026-03-08,5.00,EUR,,,TX 12
"""


async def test_a_bank_statement_finds_customers_and_invoices_and_keeps_the_rest(pool, tmp_path):
    await load_invoices(pool, tmp_path, INVOICES_FOR_BANK)
    path = tmp_path / "statement.csv"
    path.write_text(STATEMENT, encoding="utf-8")
    rejects = tmp_path / "statement.rejects.csv"

    summary = await import_payments(pool, ManualClock(PAID_AT), TOPICS, tenant_id="t1", source="bank-garanti",
                                    path=path, fmt="bank", rejects_path=rejects)

    assert summary.counts == {"created": 8, "unchanged": 0, "reversed": 0, "rejected": 3, "skipped": 1}
    assert summary.unidentified == 2
    assert [(r["row"], r["external_id"], r["field"]) for r in read_rejects(rejects)] == [
        ("11", "TX-10", "counterparty_id"), ("12", "TX-11", "currency"), ("13", "TX 12", "transaction_id"),
    ]

    payments = await payments_by_external_id(pool)
    assert set(payments) == {f"TX-{i}" for i in (1, 3, 4, 5, 6, 7, 8, 9)}  # TX-2 is a debit
    assert {p["billing_source"] for p in payments.values()} == {"bank-garanti"}
    customer_refs = {k: (p["customer_id"], p["references_"]) for k, p in payments.items()}
    assert customer_refs == {
        "TX-1": ("C1", ["INV-1003"]),                # the counterparty, and the invoice its reference names
        "TX-3": ("C1", ["F-1002", "INV-1001"]),      # no counterparty: the invoices say whose it is
        "TX-4": ("C2", ["INV-2001"]),
        "TX-5": (UNIDENTIFIED_CUSTOMER, []),         # nothing says whose: unapplied cash
        "TX-6": (UNIDENTIFIED_CUSTOMER, ["DUP-1"]),  # two customers have an invoice DUP-1
        "TX-7": ("C1", []),                          # INV-2001 is not C1's: oldest of C1's open instead
        "TX-8": ("C1", ["INV-1003"]),
        "TX-9": ("C1", ["INV-1003"]),
    }
    for tx in ("TX-5", "TX-6"):
        assert (payments[tx]["unapplied_minor"], payments[tx]["unapplied_reason"]) == (
            payments[tx]["amount_minor"], "unknown customer")
    assert payments["TX-1"]["received_at"] == datetime(2026, 3, 5, 12, tzinfo=timezone.utc)
    # In file order: TX-1 150 and TX-7 10 on INV-1003 (300), TX-8 100, TX-9 the last 40 and 60 of credit.
    assert (payments["TX-9"]["unapplied_minor"], payments["TX-9"]["unapplied_reason"]) == (
        6_000, "over-payment: no open invoice left in this currency")
    assert await open_invoices(pool) == {
        "INV-1001": (0, "paid"), "INV-1002": (0, "paid"), "INV-1003": (0, "paid"), "INV-2001": (0, "paid"),
        "X-1": (1_000, "open"), "X-2": (1_000, "open"),
    }
    unapplied = await pool.fetch("SELECT external_id, unapplied_minor, unapplied_reason FROM payments"
                                 " WHERE unapplied_minor > 0 ORDER BY external_id")
    assert [(u["external_id"], u["unapplied_minor"]) for u in unapplied] == [
        ("TX-5", 7_500), ("TX-6", 2_000), ("TX-9", 6_000)]
    await assert_ledger_reconciles(pool)

    # The statement again, now that its invoices are paid: every payment is recorded already.
    again = await import_payments(pool, ManualClock(PAID_AT), TOPICS, tenant_id="t1", source="bank-garanti",
                                  path=path, fmt="bank", rejects_path=rejects)
    assert again.counts == {"created": 0, "unchanged": 8, "reversed": 0, "rejected": 3, "skipped": 1}
    assert again.unidentified == 0
    assert await pool.fetchval("SELECT count(*) FROM payments") == 8
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE event_type = 'PaymentReceived'") == 8
    await assert_ledger_reconciles(pool)


def test_the_import_payments_command_reads_a_bank_statement(pg_server, tmp_path):
    prefix = f"climp_{uuid.uuid4().hex[:10]}"
    invoices = tmp_path / "invoices.csv"
    invoices.write_text("external_id,customer_id,currency,amount,issue_date,due_date\n"
                        "INV-1,C1,EUR,100.00,2026-03-01,2026-03-31\n"
                        "INV-2,C2,EUR,50.00,2026-03-01,2026-03-31\n", encoding="utf-8")
    statement = tmp_path / "march-statement.csv"
    statement.write_text("date,amount,currency,reference,counterparty_id,transaction_id\n"
                         "2026-03-05,100.00,EUR,INV-1,,TX-1\n"
                         "2026-03-05,-12.00,EUR,bank charges,,TX-2\n"
                         "2026-03-06,20.00,EUR,,C2,TX-3\n"
                         "2026-03-06,30.00,EUR,who knows,,TX-4\n", encoding="utf-8")
    env = {**os.environ, "DATABASE_URL": pg_server, "COLUMNS": "120"}
    env.pop("TOPIC_PREFIX", None)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "tahsilat.cli", "import", *args, "--tenant", "t1",
                               "--db-prefix", prefix], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)

    def shows(out: str, label: str, value: str) -> bool:
        return any(label in line and f" {value} " in line for line in out.splitlines())

    try:
        unregistered = run("payments", str(statement), "--source", "bank", "--format", "bank")
        assert unregistered.returncode == 2 and "'bank' is not registered" in unregistered.stdout, unregistered.stdout
        for name, records in (("erp", "invoices"), ("bank", "payments")):
            registered = subprocess.run(
                [sys.executable, "-m", "tahsilat.cli", "sources", "register", name, "--records", records,
                 "--tenant", "t1", "--db-prefix", prefix], cwd=ROOT, env=env, capture_output=True, text=True,
                timeout=120)
            assert registered.returncode == 0, registered.stdout + registered.stderr
        assert "may not record payments" in run("payments", str(statement), "--source", "erp", "--format",
                                                "bank").stdout
        assert run("invoices", str(invoices), "--source", "erp").returncode == 0
        result = run("payments", str(statement), "--source", "bank", "--format", "bank")
        assert result.returncode == 0, result.stdout + result.stderr
        out = result.stdout
        for label, value in (("read", "4"), ("created", "3"), ("skipped", "1"), ("rejected", "0")):
            assert shows(out, label, value), out
        assert "rows/s" in out and "UNIDENTIFIED" in out and not (tmp_path / "march-statement.csv.rejects.csv").exists()

        again = run("payments", str(statement), "--source", "bank", "--format", "bank")
        assert again.returncode == 0 and shows(again.stdout, "unchanged", "3"), again.stdout

        bad = tmp_path / "bad-statement.csv"
        bad.write_text("date,amount,currency,transaction_id\n2026-03-07,1.001,EUR,TX-9\n", encoding="utf-8")
        rejected = run("payments", str(bad), "--source", "bank", "--format", "bank")
        assert rejected.returncode == 1 and shows(rejected.stdout, "rejected", "1"), rejected.stdout
        [line] = read_rejects(tmp_path / "bad-statement.csv.rejects.csv")
        assert (line["row"], line["external_id"], line["field"]) == ("2", "TX-9", "amount")

        unknown = run("payments", str(statement), "--source", "bank", "--format", "mt940")
        assert unknown.returncode == 2 and "unknown format 'mt940'" in unknown.stdout

        async def check():
            import asyncpg

            conn = await asyncpg.connect(with_database(pg_server, f"{prefix}_invoicing"))
            try:
                return ({r["external_id"]: (r["customer_id"], r["unapplied_minor"]) for r in await conn.fetch(
                            "SELECT external_id, customer_id, unapplied_minor FROM payments")},
                        {r["external_id"]: r["open_minor"] for r in await conn.fetch(
                            "SELECT external_id, open_minor FROM invoices")})
            finally:
                await conn.close()

        import asyncio

        payments, open_ = asyncio.run(check())
        assert payments == {"TX-1": ("C1", 0), "TX-3": ("C2", 0), "TX-4": (UNIDENTIFIED_CUSTOMER, 3_000)}
        assert open_ == {"INV-1": 0, "INV-2": 3_000}
    finally:
        import asyncio

        asyncio.run(drop_database(pg_server, f"{prefix}_invoicing"))
