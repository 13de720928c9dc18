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
    await pool.execute("INSERT INTO billing_sources (tenant_id, name, default_currency) VALUES ('t1', 'erp', 'EUR')")
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
    assert summary.rejects_path == rejects and summary.source_registered
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
