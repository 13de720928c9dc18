"""The case timer (`cases.next_due_at`) against real PostgreSQL: the earliest due step of the open
items, past each item's pause; an invoice joining a case only brings the timer forward; and the
statements stay per key on a database without statistics, which is how a young database under a
burst of invoices looks to the planner."""
from __future__ import annotations

import json
import uuid
from datetime import date, datetime, timedelta, timezone

import pytest

from services.dunning.adapters import cases as repo
from services.dunning.adapters import policy_store
from services.dunning.bootstrap import MIGRATIONS
from services.dunning.service_layer.handlers import Dunning
from shared.clock import ManualClock
from shared.contract import InvoiceIssued, Topics, new_envelope
from shared.db import create_pool, migrate
from shared.processing import Event

pytestmark = pytest.mark.integration

NOW = datetime(2026, 3, 1, 12, tzinfo=timezone.utc)


def _issued(customer: str, n: int, due: date) -> Event:
    p = InvoiceIssued(customer_id=customer, invoice_id=str(uuid.uuid4()), billing_source="erp", external_id=f"x{n}",
                      number=f"INV-{n}", currency="EUR", amount_minor=10_000, issue_date=due - timedelta(days=30),
                      due_date=due)
    return Event(new_envelope(p, source="invoicing", tenant_id="t1", subject=p.invoice_id, time=NOW), p, None)


@pytest.fixture
async def engine(database):
    await migrate(database, MIGRATIONS)
    pool = await create_pool(database, max_size=2)
    async with pool.acquire() as conn:
        await policy_store.load_files(conn, [policy_store.SHIPPED], NOW)
    try:
        yield pool, Dunning(pool, ManualClock(NOW), Topics("t."))
    finally:
        await pool.close()


async def _issue(pool, dunning: Dunning, events: list[Event]) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await dunning.on_invoices_issued(conn, events)


async def _timer(pool, customer: str) -> datetime | None:
    return await pool.fetchval("SELECT next_due_at FROM cases WHERE tenant_id = 't1' AND customer_id = $1", customer)


async def _first_step(pool, invoice_id: str) -> datetime:
    return await pool.fetchval("SELECT min(due_at) FROM item_steps WHERE invoice_id = $1 AND status = 'scheduled'",
                               uuid.UUID(invoice_id))


async def test_a_joining_invoice_brings_the_timer_forward_and_never_back(engine):
    pool, dunning = engine
    later = _issued("C1", 1, date(2026, 5, 1))
    await _issue(pool, dunning, [later])
    assert await _timer(pool, "C1") == await _first_step(pool, later.payload.invoice_id)
    sooner = _issued("C1", 2, date(2026, 4, 1))
    await _issue(pool, dunning, [sooner])
    assert await _timer(pool, "C1") == await _first_step(pool, sooner.payload.invoice_id)
    await _issue(pool, dunning, [_issued("C1", 3, date(2026, 6, 1))])
    assert await _timer(pool, "C1") == await _first_step(pool, sooner.payload.invoice_id)
    # the incremental move agrees with a full refresh of the case
    async with pool.acquire() as conn, conn.transaction():
        case_id = await conn.fetchval("SELECT case_id FROM cases WHERE customer_id = 'C1'")
        await repo.refresh(conn, [("t1", case_id)], NOW)
    assert await _timer(pool, "C1") == await _first_step(pool, sooner.payload.invoice_id)


async def test_a_paused_item_without_steps_left_sets_no_timer_and_a_held_one_waits(engine):
    pool, dunning = engine
    a, b = _issued("C2", 1, date(2026, 4, 1)), _issued("C2", 2, date(2026, 5, 1))
    await _issue(pool, dunning, [a, b])
    async with pool.acquire() as conn, conn.transaction():
        # a: every step done, and a promise covering it until June; b: on hold
        await conn.execute("UPDATE item_steps SET status = 'executed' WHERE invoice_id = $1", uuid.UUID(a.payload.invoice_id))
        await conn.execute(
            "INSERT INTO promises (tenant_id, promise_id, customer_id, case_id, currency, invoice_ids, amount_minor,"
            " promised_date, grace_days, deadline, channel, taken_by, created_at) SELECT 't1', gen_random_uuid(), 'C2',"
            " case_id, 'EUR', $1, 10000, '2026-06-01', 1, '2026-06-02T12:00Z', 'phone', 'test', $2 FROM cases"
            " WHERE customer_id = 'C2'", [uuid.UUID(a.payload.invoice_id)], NOW)
        await conn.execute("UPDATE case_items SET hold_reason = 'query' WHERE invoice_id = $1", uuid.UUID(b.payload.invoice_id))
        await repo.refresh_customer(conn, "t1", "C2", NOW)
    # a's promise does not wake the case in June (a has nothing left to send); b waits for ever
    assert await pool.fetchval("SELECT next_due_at = 'infinity' FROM cases WHERE customer_id = 'C2'")
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("UPDATE case_items SET hold_reason = NULL WHERE invoice_id = $1", uuid.UUID(b.payload.invoice_id))
        await repo.refresh_customer(conn, "t1", "C2", NOW)
    assert await _timer(pool, "C2") == await _first_step(pool, b.payload.invoice_id)


async def test_timer_statements_read_per_key_on_a_database_without_statistics(engine):
    pool, dunning = engine
    for batch in range(6):
        await _issue(pool, dunning, [_issued(f"D{n % 200}", batch * 500 + n, date(2026, 4, 1) + timedelta(days=n % 40))
                                     for n in range(500)])
    async with pool.acquire() as conn, conn.transaction():
        cases = [r["case_id"] for r in await conn.fetch("SELECT case_id FROM cases ORDER BY customer_id LIMIT 50")]
        refresh = await _rows_read(conn, repo._REFRESH, ["t1"] * 50, cases, NOW, [0] * 50)
        new = [_issued("D7", 90_000 + n, date(2026, 4, 9)) for n in range(50)]
        await dunning.on_invoices_issued(conn, new)
        advance = await _rows_read(conn, repo._ADVANCE, ["t1"] * 50, [uuid.UUID(e.payload.invoice_id) for e in new])
    # 50 cases of 15 items and each item's earliest step: 1,500 rows; 50 new items and their
    # earliest steps: 100. A scan of the tenant's open items or steps reads 3,000 or 18,000.
    assert refresh["case_items"] <= 800 and refresh["item_steps"] <= 800, refresh
    assert advance["case_items"] <= 50 and advance["item_steps"] <= 50, advance


async def _rows_read(conn, sql: str, *args) -> dict[str, int]:
    """Rows each table's scans returned while the statement ran (EXPLAIN ANALYZE; rolled back)."""
    read: dict[str, int] = {"case_items": 0, "item_steps": 0}

    def walk(node: dict) -> None:
        if node.get("Relation Name") in read:
            read[node["Relation Name"]] += int(node["Actual Rows"] * node["Actual Loops"])
        for child in node.get("Plans", []):
            walk(child)
    savepoint = conn.transaction()
    await savepoint.start()
    try:
        plan = await conn.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, *args)
    finally:
        await savepoint.rollback()
    walk((json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"])
    return read
