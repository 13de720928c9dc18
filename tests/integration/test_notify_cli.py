"""`tahsilat notify preview`: a notice as the customer would get it, from the command line: the
shipped wording without a database, a tenant's own wording and languages from the notifier's."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid

import asyncpg
import pytest

from services.notifier.bootstrap import MIGRATIONS
from shared.db import drop_database, ensure_database, migrate, with_database

pytestmark = pytest.mark.integration


def tahsilat(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tahsilat.cli", "notify", "preview", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def test_preview_of_the_shipped_wording_needs_no_database(tmp_path):
    env = dict(os.environ, COLUMNS="250", TAHSILAT_HOME=str(tmp_path), DATABASE_URL="postgresql://nobody@127.0.0.1:1/x")
    html = tmp_path / "fa.html"
    result = tahsilat("--template", "final_notice", "--language", "fa", "--html", str(html), env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "final_notice in fa" in result.stdout and "SMS (UCS-2, 2 of at most 3 segments)" in result.stdout
    assert "۲٬۲۷۱٫۳۷" in result.stdout  # the sample's EUR total, in Persian digits
    assert '<html lang="fa" dir="rtl">' in html.read_text(encoding="utf-8")
    bad = tahsilat("--template", "dear_john", env=env)
    assert bad.returncode == 2 and "template:" in bad.stdout
    bad = tahsilat("--template", "final_notice", "--case-id", "c1", env=env)
    assert bad.returncode == 2 and "needs --tenant" in bad.stdout


def test_preview_with_a_tenants_wording_and_languages(pg_server, tmp_path):
    prefix = f"cli_{uuid.uuid4().hex[:8]}"
    url = with_database(pg_server, f"{prefix}_notifier")

    async def prepare() -> None:
        await ensure_database(pg_server, f"{prefix}_notifier")
        await migrate(url, MIGRATIONS)
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(
                "INSERT INTO tenant_settings (tenant_id, default_language, languages, allowed_start, allowed_end,"
                " contact_cap, contact_cap_days, sms_segment_limit) VALUES ('t1', 'tr', '{tr}', '08:00', '21:00',"
                " 7, 7, 2)")
            await conn.execute("INSERT INTO notice_templates (tenant_id, template, language, subject) VALUES"
                               " ('t1', 'reminder_due', 'tr', 'Bugün ödeme günü: {{ invoices }}')")
        finally:
            await conn.close()

    env = dict(os.environ, DATABASE_URL=pg_server, COLUMNS="250", TAHSILAT_HOME=str(tmp_path))
    try:
        asyncio.run(prepare())
        result = tahsilat("--template", "reminder_due", "--language", "cs", "--tenant", "t1", "--db-prefix", prefix,
                          env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "reminder_due in tr (fell back from cs)" in result.stdout
        assert "Bugün ödeme günü: 3 fatura" in result.stdout and "of at most 2 segments" in result.stdout
        missing = tahsilat("--template", "reminder_due", "--tenant", "t1", "--case-id", "nope", "--db-prefix", prefix,
                           env=env)
        assert missing.returncode == 2 and "case_id:" in missing.stdout
    finally:
        asyncio.run(drop_database(pg_server, f"{prefix}_notifier"))
