"""Hostile and malformed input over HTTP and in files (issue #8, Input): a 4xx naming the field,
never a 5xx, nothing written; text a person reads cannot be disguised; bodies over the limit
are refused before they are read."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from services.invoicing.bootstrap import build
from services.invoicing.entrypoints.file_import import ImportFileError, import_invoices
from services.invoicing.settings import InvoicingSettings
from shared.clock import ManualClock
from shared.contract import Topics
from shared.contract.text import spreadsheet_cell, unsafe_character
from tests.support import FAST_KAFKA, api_key, client, running

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
LIMIT = 64 * 1024


def invoice(external_id: str = "INV-1", name: str = "Anadolu Tekstil", **over) -> dict:
    return {
        "external_id": external_id,
        "customer": {"id": "C1", "name": name, "language": "tr", "timezone": "Europe/Istanbul",
                     "email": "muhasebe@anadolu.example"},
        "currency": "TRY", "amount_minor": 100_000, "issue_date": "2026-02-01", "due_date": "2026-03-03",
        "billing_source": "erp",
    } | over


@pytest.fixture
async def service(database, kafka_bootstrap, topic_prefix):
    settings = InvoicingSettings(database_url=database, kafka_bootstrap_servers=kafka_bootstrap,
                                 topic_prefix=topic_prefix, kafka_partitions=2, poll_interval_seconds=0.1,
                                 max_request_bytes=LIMIT, **FAST_KAFKA)
    app = build(settings, ManualClock(T0))
    async with running(app) as url:
        token = await api_key(app, "t1", "admin")
        await app.state.pool.execute("INSERT INTO billing_sources (tenant_id, name, default_currency)"
                                     " VALUES ('t1', 'erp', 'EUR')")
        async with client(url, token) as http:
            yield app, http


async def nothing_written(app) -> bool:
    return await app.state.pool.fetchval("SELECT count(*) FROM invoices") == 0 and \
        await app.state.pool.fetchval("SELECT count(*) FROM customers") == 0


@pytest.mark.parametrize(("name", "problem"), [
    ("Invoice\u202efdp.exe", "bidirectional control character U+202E at position 7"),
    ("Ali\u2066Veli", "bidirectional control character U+2066 at position 3"),
    ("Anadolu\x00Tekstil", "control character U+0000 at position 7"),
    ("Anadolu\x1bTekstil", "control character U+001B at position 7"),
])
async def test_names_that_would_disguise_or_break_text_are_refused_naming_the_field(service, name, problem):
    app, http = service
    r = await http.post("/v1/invoices", json=invoice(name=name))
    assert r.status_code == 422, r.text
    assert r.json()["problems"] == [{"field": "customer.name", "reason": f"must not contain a {problem}"}]
    r = await http.post("/v1/invoices/bulk", json={"billing_source": "erp", "items": [invoice(name=name)]})
    assert r.status_code == 200 and r.json()["results"][0]["status"] == "rejected", r.text
    assert r.json()["results"][0]["field"] == "customer.name"
    assert await nothing_written(app)
    # What people write stays allowed: Persian with its own marks, Turkish, line breaks.
    assert unsafe_character("شرکت آلفا\u200c\nİstanbul\tŞube") is None


@pytest.mark.parametrize("query", [
    "/v1/reports/dso?as_of=0001-01-15&months=2",
    "/v1/reports/dso?as_of=9999-12-31",
    "/v1/reports/aging?as_of=0001-01-01",
    "/v1/customers/C1/statement?from=0001-01-01&to=2026-01-01",
])
async def test_report_dates_out_of_range_are_a_4xx_naming_the_parameter(service, query):
    _app, http = service
    r = await http.get(query)
    assert r.status_code == 422, r.text
    assert {p["field"] for p in r.json()["problems"]} & {"as_of", "from", "to"}
    assert "between 1900-01-01 and 2999-12-31" in r.text


async def test_a_contest_with_invalid_json_or_hidden_characters_is_a_4xx(service):
    app, http = service
    assert (await http.post("/v1/invoices", json=invoice())).status_code == 201
    r = await http.post("/v1/customers/C1/balance-confirmations", json={})
    assert r.status_code == 201
    url = httpx.URL(r.json()["url"]).path + "/contest"
    r = await http.post(url, content=b'{"reason": ', headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "body", r.text
    r = await http.post(url, json={"reason": "paid\u202e"})
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "reason", r.text
    assert await app.state.pool.fetchval("SELECT status FROM balance_confirmations") == "requested"


async def test_a_body_over_the_limit_is_refused_before_it_is_read(service):
    app, http = service
    big = {"items": [invoice(f"INV-{i}") for i in range(400)]}  # ~100 KB against a 64 KB limit
    r = await http.post("/v1/invoices/bulk", json=big)
    assert r.status_code == 413, r.text

    async def streamed():  # no Content-Length: the limit applies while the body is read
        yield b'{"items": ['
        for _ in range(200):
            yield b'{"x": "' + b"a" * 1000 + b'"},'
        yield b"{}]}"

    r = await http.post("/v1/invoices/bulk", content=streamed(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413, r.text
    assert await nothing_written(app)
    ok = await http.post("/v1/invoices/bulk", json={"billing_source": "erp", "items": [invoice(f"INV-{i}") for i in range(20)]})
    assert ok.status_code == 200 and ok.json()["summary"]["created"] == 20


async def test_the_rejects_csv_cannot_run_formulas_in_a_spreadsheet(service, tmp_path):
    app, _http = service
    source = tmp_path / "invoices.csv"
    with open(source, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["external_id", "customer_id", "customer_name", "currency", "amount", "issue_date", "due_date"])
        w.writerow(["=HYPERLINK(\"http://evil\")", "C1", "A", "TRY", "10.00", "2026-02-01", "2026-03-03"])
        w.writerow(["INV-2", "C1", "A", "TRY", "-5", "2026-02-01", "2026-03-03"])
    rejects = tmp_path / "rejects.csv"
    summary = await import_invoices(app.state.pool, ManualClock(T0), Topics(""), tenant_id="t1", source="erp",
                                    path=source, rejects_path=rejects)
    assert summary.rejected == 2
    cells = [cell for row in csv.reader(open(rejects, encoding="utf-8")) for cell in row]
    assert not [c for c in cells if c[:1] in ("=", "+", "-", "@")], cells
    assert spreadsheet_cell("=1+1") == "'=1+1" and spreadsheet_cell(-5) == -5 and spreadsheet_cell("INV-1") == "INV-1"


async def test_every_response_carries_the_security_headers(service):
    app, http = service
    assert (await http.post("/v1/invoices", json=invoice())).status_code == 201
    r = await http.post("/v1/customers/C1/balance-confirmations", json={})
    assert r.status_code == 201
    responses = [
        await http.get(httpx.URL(r.json()["url"]).path),  # the customer's page
        await http.get("/v1/reports/aging"),
        await http.get("/v1/invoices/00000000-0000-0000-0000-000000000000"),  # 404
        await http.get("/v1/reports/dso?as_of=0001-01-01"),  # 422
        await http.post("/v1/invoices/bulk", content=b"x" * (LIMIT + 1)),  # 413 before the app
        await http.get("/metrics"),
    ]
    for r in responses:
        assert r.headers["x-content-type-options"] == "nosniff", (r.request.url, r.status_code)
        assert r.headers["x-frame-options"] == "DENY" and r.headers["referrer-policy"] == "no-referrer"
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert [r.status_code for r in responses] == [200, 200, 404, 422, 413, 200]


async def test_no_key_and_no_way_in_writes_as_a_source_the_platform_keeps_for_itself(service, tmp_path):
    """Dunning's fee invoices are booked as source "dunning": a key that could write as it could
    cancel or adjust them."""
    app, http = service
    r = await http.post("/v1/invoices", json=invoice(billing_source="dunning"))
    assert r.status_code == 403 and r.json()["problems"][0]["field"] == "billing_source", r.text
    r = await http.post("/v1/invoices/bulk", json={"billing_source": "Dunning", "items": [invoice()]})
    assert r.status_code == 403, r.text
    r = await http.post("/v1/billing-sources", json={"name": "dunning", "default_currency": "EUR"})
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "name", r.text
    source = tmp_path / "invoices.jsonl"
    source.write_text(json.dumps(invoice()) + "\n")
    with pytest.raises(ImportFileError, match="reserved"):
        await import_invoices(app.state.pool, ManualClock(T0), Topics(""), tenant_id="t1", source="dunning",
                              path=source, rejects_path=tmp_path / "rejects.csv")
    assert await nothing_written(app)

    for args in (["--role", "billing-source"], ["--role", "billing-source", "--source", "dunning"]):
        result = subprocess.run([sys.executable, "-m", "tahsilat.cli", "keys", "create", "--tenant", "t1", *args],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and "source:" in result.stdout, result.stdout


async def test_confirmation_links_are_kept_hashed_answer_once_and_expire(service):
    app, http = service
    assert (await http.post("/v1/invoices", json=invoice())).status_code == 201
    first = httpx.URL((await http.post("/v1/customers/C1/balance-confirmations", json={})).json()["url"]).path
    second = httpx.URL((await http.post("/v1/customers/C1/balance-confirmations", json={})).json()["url"]).path
    token = first.rsplit("/", 1)[1]
    stored = [dict(r) for r in await app.state.pool.fetch("SELECT * FROM balance_confirmations")]
    assert not [v for row in stored for v in row.values() if isinstance(v, str) and token in v]  # only a hash

    assert (await http.post(f"{first}/confirm")).status_code == 200
    again = await http.post(f"{first}/contest", json={"reason": "changed my mind"})
    assert again.status_code == 409  # one answer per link

    app.state.host.clock.advance(timedelta(days=30))  # CONFIRMATION_LINK_DAYS
    page = await http.get(second)
    assert page.status_code == 200 and "expired" in page.text and "<form" not in page.text
    late = await http.post(f"{second}/contest", json={"reason": "too late"})
    assert late.status_code == 410 and late.json()["problems"][0]["field"] == "token", late.text
    assert await app.state.pool.fetchval(
        "SELECT count(*) FROM balance_confirmations WHERE status = 'requested'") == 1


async def test_a_key_over_its_rate_gets_429_with_retry_after_and_other_keys_carry_on(database, kafka_bootstrap,
                                                                                      topic_prefix):
    settings = InvoicingSettings(database_url=database, kafka_bootstrap_servers=kafka_bootstrap,
                                 topic_prefix=topic_prefix, kafka_partitions=2, poll_interval_seconds=0.1,
                                 rate_limit_per_minute=60, rate_limit_burst=3, **FAST_KAFKA)
    app = build(settings, ManualClock(T0))
    async with running(app) as url:
        noisy, calm = await api_key(app, "t1", "admin"), await api_key(app, "t1", "analytics")
        async with client(url, noisy) as http, client(url, calm) as other:
            codes = [(await http.get("/v1/reports/aging")).status_code for _ in range(4)]
            assert codes == [200, 200, 200, 429]
            refused = await http.get("/v1/reports/aging")
            assert refused.status_code == 429 and 1 <= int(refused.headers["retry-after"]) <= 2, refused.headers
            assert "x-content-type-options" in refused.headers
            assert (await other.get("/v1/reports/aging")).status_code == 200
            assert (await http.get("/health/live")).status_code == 200  # health is not rate limited


async def test_with_an_ops_token_metrics_and_docs_need_it_and_health_stays_open(database, kafka_bootstrap,
                                                                                 topic_prefix):
    token = "s3cret-ops-token-0123"
    settings = InvoicingSettings(database_url=database, kafka_bootstrap_servers=kafka_bootstrap,
                                 topic_prefix=topic_prefix, kafka_partitions=2, poll_interval_seconds=0.1,
                                 ops_token=token, **FAST_KAFKA)
    app = build(settings, ManualClock(T0))
    async with running(app) as url, client(url) as http:
        for path in ("/metrics", "/docs", "/openapi.json", "/redoc"):
            r = await http.get(path)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", path
            assert (await http.get(path, headers={"Authorization": "Bearer wrong"})).status_code == 401
            assert (await http.get(path, headers={"Authorization": f"Bearer {token}"})).status_code == 200, path
        assert (await http.get("/health/live")).status_code == 200
        assert token not in (await http.get("/health/live")).text


async def test_a_statement_past_the_timeout_answers_503_with_retry_after_and_then_works(
        database, kafka_bootstrap, topic_prefix):
    """Statements have a time limit: a request stuck behind a lock ends with 503 (try again),
    not a connection held for ever; once the lock is gone the same request works."""
    import asyncpg

    settings = InvoicingSettings(database_url=database, kafka_bootstrap_servers=kafka_bootstrap,
                                 topic_prefix=topic_prefix, kafka_partitions=2, poll_interval_seconds=0.1,
                                 db_statement_timeout_ms=2_000, **FAST_KAFKA)  # ample for any statement here
    app = build(settings, ManualClock(T0))
    async with running(app) as url:
        async with client(url, await api_key(app, "t1", "collector")) as http:
            locker = await asyncpg.connect(database)
            try:
                tx = locker.transaction()
                await tx.start()
                await locker.execute("LOCK TABLE invoices IN ACCESS EXCLUSIVE MODE")
                r = await http.get("/v1/reports/aging")
                assert r.status_code == 503 and r.headers["retry-after"] == "5"
                assert r.json()["problems"][0]["field"] == "database"
                await tx.rollback()
            finally:
                await locker.close()
            assert (await http.get("/v1/reports/aging")).status_code == 200
            assert await app.state.pool.fetchval("SHOW statement_timeout") == "2s"
