"""`tahsilat report collections` over a dunning database holding hand-made rows: notices,
payments, promises and closed tasks, with the figures worked out by hand."""
from __future__ import annotations

import asyncio
import csv
import io
import json
import uuid
from datetime import date, datetime, timedelta, timezone

import pytest
from typer.testing import CliRunner

from services.dunning.bootstrap import MIGRATIONS
from services.invoicing.bootstrap import MIGRATIONS as INVOICING_MIGRATIONS
from shared.db import drop_database, ensure_database, migrate, with_database
from tahsilat.cli import app

pytestmark = pytest.mark.integration
T = datetime(2026, 3, 10, 9, tzinfo=timezone.utc)
A, B = uuid.uuid4(), uuid.uuid4()


async def _history(url: str) -> None:
    import asyncpg

    await migrate(url, MIGRATIONS)
    conn = await asyncpg.connect(url)
    try:
        case = uuid.uuid4()
        items = [{"invoice_id": str(A), "open_amount_minor": 60_000}, {"invoice_id": str(B), "open_amount_minor": 40_000}]
        await conn.execute(
            "INSERT INTO notices (tenant_id, notice_id, case_id, customer_id, sequence, step, channel, template,"
            " notification_key, currency, items, total_minor, created_at) VALUES"
            " ('t1', $1, $2, 'C1', 1, '=due', 'email', 'x', 'k1', 'EUR', $3::jsonb, 100000, $4),"
            " ('t2', $5, $2, 'C1', 1, 'due', 'email', 'x', 'k1', 'EUR', $3::jsonb, 100000, $4)",
            uuid.uuid4(), case, json.dumps(items), T, uuid.uuid4())
        # A: 45,000 two days later; B: 40,000 ten days later (too late); A: 30,000 three days later (capped)
        await conn.executemany(
            "INSERT INTO item_payments (tenant_id, invoice_id, payment_ref, amount_minor, paid_at, recorded_at)"
            " VALUES ('t1', $1, $2, $3, $4, $4)",
            [(A, "p1", 45_000, T + timedelta(days=2)), (B, "p2", 40_000, T + timedelta(days=10)),
             (A, "p3", 30_000, T + timedelta(days=3))])
        await conn.execute("INSERT INTO collectors (tenant_id, collector_id, name, key_id, updated_at)"
                           " VALUES ('t1', 'ali', 'Ali', 'abc123', now())")
        await conn.executemany(
            "INSERT INTO promises (tenant_id, promise_id, customer_id, case_id, currency, invoice_ids, amount_minor,"
            " promised_date, grace_days, deadline, channel, taken_by, status, paid_minor, created_at)"
            " VALUES ('t1', $1, 'C1', $2, 'EUR', $3, $4, '2026-03-15', 0, $5, 'phone', $6, $7, $8, $5)",
            [(uuid.uuid4(), case, [A], 60_000, T, "abc123", "kept", 60_000),
             (uuid.uuid4(), case, [B], 40_000, T, "abc123", "broken", 0),
             (uuid.uuid4(), case, [B], 40_000, T, "zzz999", "open", 0)])
        await conn.execute(
            "INSERT INTO collector_tasks (tenant_id, task_id, source_key, kind, case_id, customer_id, currency, step,"
            " invoice_ids, overdue_minor, days_overdue, priority, due_at, status, outcome, created_at, done_at, done_by)"
            " VALUES ('t1', $1, 's1', 'call', $2, 'C1', 'EUR', 'due', $3, 100000, 1, 1000, $4, 'done', 'reached', $4,"
            " $4, 'abc123')", uuid.uuid4(), case, [A, B], T)
    finally:
        await conn.close()


def test_the_collections_report_from_the_command_line(pg_server):
    prefix = f"cr{uuid.uuid4().hex[:10]}"
    url = with_database(pg_server, f"{prefix}_dunning")
    runner = CliRunner()
    env = {"DATABASE_URL": pg_server, "COLUMNS": "200"}
    asyncio.run(ensure_database(pg_server, f"{prefix}_dunning"))
    asyncio.run(ensure_database(pg_server, f"{prefix}_invoicing"))
    try:
        asyncio.run(_history(url))
        asyncio.run(migrate(with_database(pg_server, f"{prefix}_invoicing"), INVOICING_MIGRATIONS))
        args = ["report", "collections", "--tenant", "t1", "--period", "2026-03", "--db-prefix", prefix]
        result = runner.invoke(app, [*args, "--json"], env=env)
        assert result.exit_code == 0, result.output
        report = json.loads(result.output)
        [step] = report["steps"]
        # listed 600 + 400; collected: A 45,000 + 30,000 capped at 60,000, B too late
        assert (step["step"], step["listed_minor"], step["collected_7d_minor"], step["collected_7d_percent"]) == (
            "=due", {"EUR": 100_000}, {"EUR": 60_000}, {"EUR": "60.0"})
        assert (report["promises"]["taken"], report["promises"]["kept_rate_percent"]) == (3, "50.0")
        ali, other = report["collectors"]
        # the task's invoices: 75,000 on A within 7 days of the call, capped at the 100,000 it was about
        assert (ali["collector"], ali["tasks_done"], ali["contacts_reached"], ali["collected_7d_minor"]) == (
            "ali", 1, 1, {"EUR": 75_000})
        assert (ali["promises"]["taken"], ali["promises"]["kept"], ali["promises"]["broken"]) == (2, 1, 1)
        assert (other["collector"], other["promises"]["open"]) == ("zzz999", 1)
        assert report["receivables"] == {}  # no invoices in this invoicing database (CEI by hand: test_reports)

        result = runner.invoke(app, [*args, "--csv"], env=env)
        assert result.exit_code == 0, result.output
        rows = list(csv.reader(io.StringIO(result.output)))
        assert rows[0] == ["section", "name", "currency", "metric", "value"]
        # a step name that starts like a formula is not run by a spreadsheet
        assert ["step", "'=due (email)", "EUR", "collected_7d_minor", "60000"] in rows

        result = runner.invoke(app, args, env=env)
        assert result.exit_code == 0, result.output
        assert "kept rate 50.0 %" in result.output and "ali" in result.output

        bad = runner.invoke(app, ["report", "collections", "--tenant", "t1", "--period", "March"], env=env)
        assert bad.exit_code == 2 and "period" in bad.output
    finally:
        asyncio.run(drop_database(pg_server, f"{prefix}_dunning"))
        asyncio.run(drop_database(pg_server, f"{prefix}_invoicing"))
