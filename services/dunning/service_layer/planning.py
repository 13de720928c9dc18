"""Looking ahead and looking back without sending: the dry run ("what goes out on day D") and
the backtest of a policy over the stored history."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone

from services.dunning.adapters import cases as repo
from services.dunning.domain.policy import PolicySpec, plan_item
from services.dunning.service_layer.handlers import Dunning
from shared.http import DomainError

MAX_ROUNDS = 5_000  # distinct moments a dry run may step through before it gives up


async def dry_run(dunning: Dunning, tenant_id: str, day: date) -> list[dict]:
    """What the tenant's cases would send on `day` (UTC), to whom and for how much, if nothing
    is paid meanwhile: the real claim logic runs from now to the end of that day, moment by
    moment, in a transaction that is rolled back. Nothing is sent, stored or charged."""
    now = dunning.clock.now()
    start = datetime.combine(day, time.min, timezone.utc)
    end = start + timedelta(days=1)
    if end <= now:
        raise DomainError("date", f"{day} has passed: a dry run looks ahead (the notices sent are on the case)")
    async with dunning.pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        try:
            for _ in range(MAX_ROUNDS):
                moment = await conn.fetchval(
                    "SELECT min(next_due_at) FROM cases WHERE tenant_id = $1 AND status = 'open' AND next_due_at < $2",
                    tenant_id, end)
                if moment is None:
                    break
                claimed = await repo.due_cases(conn, max(moment, now), 1_000_000, tenant_id)
                if not claimed:  # the rest is being fired by a worker right now
                    break
                await dunning._fire(conn, claimed, max(moment, now))
            else:
                raise DomainError("date", f"{day} is too far ahead to simulate (over {MAX_ROUNDS} moments)")
            rows = await conn.fetch(
                "SELECT customer_id, case_id, currency, step, channel, template, items, total_minor, created_at"
                " FROM notices WHERE tenant_id = $1 AND created_at >= $2 AND created_at < $3"
                " ORDER BY created_at, customer_id, sequence", tenant_id, max(start, now), end)
        finally:
            await transaction.rollback()
    return [{**{k: r[k] for k in ("customer_id", "currency", "step", "channel", "template", "total_minor")},
             "case_id": str(r["case_id"]), "at": r["created_at"], "items": r["items"]} for r in rows]


@dataclass
class StepResult:
    step: str
    channel: str
    offset_days: int
    notices: int = 0
    invoices: int = 0
    open_at_step: dict[str, int] = field(default_factory=dict)
    paid_within_7_days: dict[str, int] = field(default_factory=dict)


async def backtest(dunning: Dunning, tenant_id: str, spec: PolicySpec, first_due: date, last_due: date) -> list[StepResult]:
    """Run a policy over the invoices due in [first_due, last_due] as they really went: at each
    of its steps, an invoice still open (issued, not paid off, not cancelled by then) would have
    been listed; its customer's invoices at the same step on the same day make one notice. The
    effect of a step: what was paid on those invoices within 7 days after it."""
    async with dunning.pool.acquire() as conn:
        items = await conn.fetch(
            "SELECT i.invoice_id, i.customer_id, i.currency, i.due_date, i.amount_minor, i.joined_at, i.closed_at,"
            " i.closed_reason, coalesce(c.timezone, 'UTC') AS timezone FROM case_items i"
            " LEFT JOIN dunning_customers c USING (tenant_id, customer_id)"
            " WHERE i.tenant_id = $1 AND i.due_date BETWEEN $2 AND $3", tenant_id, first_due, last_due)
        payments = await conn.fetch(
            "SELECT p.invoice_id, p.amount_minor, p.paid_at FROM item_payments p JOIN case_items i USING (tenant_id, invoice_id)"
            " WHERE p.tenant_id = $1 AND i.due_date BETWEEN $2 AND $3", tenant_id, first_due, last_due)
    paid = defaultdict(list)
    for p in payments:
        paid[p["invoice_id"]].append((p["paid_at"], p["amount_minor"]))
    results = {s.name: StepResult(s.name, s.channel, s.offset_days) for s in spec.steps}
    notices: dict[str, set] = defaultdict(set)
    for i in items:
        for s in plan_item(spec, i["due_date"], i["timezone"]):
            at = s.due_at
            if at < i["joined_at"] or (i["closed_reason"] == "cancelled" and i["closed_at"] and i["closed_at"] <= at):
                continue
            open_then = i["amount_minor"] - sum(a for t, a in paid[i["invoice_id"]] if t <= at)
            if open_then <= 0:
                continue
            r = results[s.name]
            r.invoices += 1
            notices[s.name].add((i["customer_id"], i["currency"], at.date()))
            r.open_at_step[i["currency"]] = r.open_at_step.get(i["currency"], 0) + open_then
            within = sum(a for t, a in paid[i["invoice_id"]] if at < t <= at + timedelta(days=7))
            if within:
                r.paid_within_7_days[i["currency"]] = r.paid_within_7_days.get(i["currency"], 0) + within
    for name, keys in notices.items():
        results[name].notices = len(keys)
    return list(results.values())
