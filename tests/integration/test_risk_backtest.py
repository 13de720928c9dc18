"""The risk backtest on a real risk database: a hand-made history of invoices and assessments
written with plain SQL, the exact report from `risk_backtest`, and `tahsilat report risk-backtest`
run through typer's CliRunner against a database named like the platform's (<prefix>_risk)."""
from __future__ import annotations

import asyncio
import json
import uuid
from datetime import date

import asyncpg
import pytest
from typer.testing import CliRunner

from services.risk.bootstrap import MIGRATIONS
from services.risk.domain.backtest import BacktestReport, GradeCalibration
from services.risk.service_layer.backtest import risk_backtest
from shared.db import drop_database, ensure_database, migrate, with_database
from tahsilat.cli import app

pytestmark = pytest.mark.integration

AS_OF = date(2026, 6, 30)

# Tenant t1. The grade at issue is the customer's latest assessment *before* the start (UTC
# midnight) of the issue date.
#   C1 assessed A (20) on 10 Jan 10:00 and C (70) on 1 Mar 00:00 exactly
#   C2 assessed C (80) on 1 Jan and B (50) on 15 Feb
# Tenant t2 has its own C1, assessed D (99) before everything: it must not leak into t1.
ASSESSMENTS = [
    ("t1", "C1", "2026-01-10 10:00+00", 20, "A"),
    ("t1", "C1", "2026-03-01 00:00+00", 70, "C"),
    ("t1", "C2", "2026-01-01 09:00+00", 80, "C"),
    ("t1", "C2", "2026-02-15 09:00+00", 50, "B"),
    ("t2", "C1", "2025-12-01 09:00+00", 99, "D"),
]
#            tenant invoice customer issue         due           status       paid_at                 days_late
INVOICES = [
    ("t1", "I1", "C1", "2026-01-05", "2026-02-04", "paid", "2026-02-06 12:00+00", 2),     # none, on time
    ("t1", "I2", "C1", "2026-02-01", "2026-03-03", "paid", "2026-04-07 12:00+00", 35),    # A 20, late
    ("t1", "I3", "C1", "2026-03-01", "2026-03-31", "open", None, None),                   # A 20 (the C of 1 Mar
                                                                                          # 00:00 is not before
                                                                                          # it), open 91 d: late
    ("t1", "I4", "C1", "2026-03-02", "2026-04-01", "paid", "2026-04-01 12:00+00", 0),     # C 70, on time
    ("t1", "I5", "C2", "2026-02-10", "2026-03-12", "paid", "2026-04-26 12:00+00", 45),    # C 80, late
    ("t1", "I6", "C2", "2026-03-01", "2026-03-31", "paid", "2026-04-10 12:00+00", None),  # B 50, on time (10 days
                                                                                          # late, from paid_at)
    ("t1", "I7", "C2", "2026-06-01", "2026-06-15", "open", None, None),                   # 15 d past due: undecided
    ("t1", "I8", "C2", "2026-02-01", "2026-03-03", "cancelled", None, None),              # cancelled
    ("t2", "I9", "C1", "2026-01-05", "2026-02-04", "open", None, None),                   # another tenant's
]

# Scores: late [20 (I2), 20 (I3), 80 (I5)] vs on time [70 (I4), 50 (I6)]; I1 has none.
#   20 loses to 70 and 50 (twice) → 0; 80 beats 70 and 50 → 2; 2 / 6 = 0.333
# Grades as ranks A0 B1 C2 D3: late [0, 0, 2] vs on time [2, 1]:
#   0 loses to both (twice) → 0; 2 ties 2 → ½, beats 1 → 1; 1.5 / 6 = 0.25
EXPECTED = BacktestReport(
    as_of=AS_OF, invoices=6, late=3, auc_score=0.333, auc_grade=0.25,
    calibration=(
        GradeCalibration("A", 2, 2, 1.0, 20.0),
        GradeCalibration("B", 1, 0, 0.0, 50.0),
        GradeCalibration("C", 2, 1, 0.5, 75.0),
        GradeCalibration("D", 0, 0, None, None),
        GradeCalibration("none", 1, 0, 0.0, None),
    ),
    excluded_cancelled=1, excluded_undecided=1,
)


async def load_history(url: str) -> None:
    await migrate(url, MIGRATIONS)
    conn = await asyncpg.connect(url)
    try:
        await conn.executemany(
            "INSERT INTO risk_assessments (tenant_id, event_id, customer_id, assessed_at, score, grade, segment)"
            " VALUES ($1, $2, $3, $4::text::timestamptz, $5, $6, 'standard')",
            [(t, uuid.uuid4(), c, at, score, grade) for t, c, at, score, grade in ASSESSMENTS])
        await conn.executemany(
            "INSERT INTO risk_invoices (tenant_id, invoice_id, customer_id, currency, amount_minor, open_minor,"
            " issue_date, due_date, status, paid_at, days_late, updated_at)"
            " VALUES ($1, $2, $3, 'EUR', 10000, CASE WHEN $6 = 'paid' THEN 0 ELSE 10000 END, $4::text::date,"
            " $5::text::date, $6, $7::text::timestamptz, $8, now())",
            INVOICES)
    finally:
        await conn.close()


async def test_backtest_of_a_hand_made_history(database):
    await load_history(database)
    conn = await asyncpg.connect(database)
    try:
        assert await risk_backtest(conn, "t1", AS_OF) == EXPECTED
        # Looked at on 15 Apr: I2 (paid 7 Apr) late, I5 (paid 26 Apr) still open 34 days past due: late;
        # I3 open 15 days past due and I7 not yet issued: undecided.
        earlier = await risk_backtest(conn, "t1", date(2026, 4, 15))
        assert (earlier.invoices, earlier.late, earlier.excluded_undecided, earlier.excluded_cancelled) == (5, 2, 2, 1)
        # t2's invoice, graded D by t2's own assessment of 1 Dec, open 146 days past due; t1's grades never leak
        other = await risk_backtest(conn, "t2", AS_OF)
        assert (other.invoices, other.late, other.calibration[3].invoices) == (1, 1, 1)
        nobody = await risk_backtest(conn, "t3", AS_OF)
        assert (nobody.invoices, nobody.auc_score, nobody.excluded_undecided) == (0, None, 0)
    finally:
        await conn.close()


def test_cli_prints_the_auc_and_the_table_and_json(pg_server):
    prefix = f"bt{uuid.uuid4().hex[:10]}"
    name = f"{prefix}_risk"
    runner = CliRunner()
    env = {"DATABASE_URL": pg_server, "COLUMNS": "200"}

    async def prepare() -> None:
        await ensure_database(pg_server, name)
        await load_history(with_database(pg_server, name))

    try:
        asyncio.run(prepare())
        args = ["report", "risk-backtest", "--tenant", "t1", "--as-of", "2026-06-30", "--db-prefix", prefix]
        result = runner.invoke(app, args, env=env)
        assert result.exit_code == 0, result.output
        assert "AUC of the score: 0.333" in result.output
        assert "AUC of the grade: 0.250" in result.output
        assert "excluded: 1 cancelled, 1 not yet decidable" in result.output
        table = {cells[0]: cells[1:] for cells in ([c.strip() for c in line.split("│")[1:-1]]
                                                   for line in result.output.splitlines() if line.startswith("│"))}
        assert table["C"] == ["2", "1", "0.500", "75.0"]  # invoices, late, late share, avg score
        assert table["none"] == ["1", "0", "0.000", ""]

        result = runner.invoke(app, [*args, "--json"], env=env)
        assert result.exit_code == 0, result.output
        assert json.loads(result.output) == EXPECTED.as_dict()

        bad = runner.invoke(app, ["report", "risk-backtest", "--tenant", "t1", "--as-of", "30/06/2026"], env=env)
        assert bad.exit_code == 2 and "as-of" in bad.output
        missing = runner.invoke(app, ["report", "risk-backtest", "--tenant", "t1", "--db-prefix", f"{prefix}x"],
                                env=env)
        assert missing.exit_code == 2 and "cannot read the risk database" in missing.output
    finally:
        asyncio.run(drop_database(pg_server, name))
