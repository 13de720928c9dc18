"""The collections report of one period: which steps work, promises kept, dispute reasons, and
each collector's figures (the manager's dashboard and `tahsilat report collections`)."""
from __future__ import annotations

from datetime import date, datetime, time, timezone

import asyncpg

from services.dunning.adapters import kpis as repo
from services.dunning.adapters import views
from services.dunning.domain.kpis import (
    PromiseFigures, collector_figures, payments_by_invoice, promise_figures, step_figures,
)


def _promises(p: PromiseFigures) -> dict:
    return {"taken": p.taken, "kept": p.kept, "broken": p.broken, "open": p.open, "cancelled": p.cancelled,
            "kept_rate_percent": str(p.kept_rate) if p.kept_rate is not None else None,
            "promised_minor": p.promised_minor, "kept_minor": p.kept_minor}


async def collections_report(pool: asyncpg.Pool, tenant_id: str, first: date, end: date) -> dict:
    """The period [first, end) in UTC days. Money per currency, in minor units."""
    start_at = datetime.combine(first, time(0), timezone.utc)
    end_at = datetime.combine(end, time(0), timezone.utc)
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        notices = await repo.notices(conn, tenant_id, start_at, end_at)
        promises = await repo.promises(conn, tenant_id, start_at, end_at)
        tasks = await repo.done_tasks(conn, tenant_id, start_at, end_at)
        paid = payments_by_invoice(await repo.payments(conn, tenant_id, start_at, end_at))
        keys = await repo.collectors_by_key(conn, tenant_id)
    disputes = await views.dispute_reasons(pool, tenant_id, first, date.fromordinal(end.toordinal() - 1))
    steps = step_figures(notices, paid)
    return {
        "tenant_id": tenant_id, "from": first.isoformat(), "to": date.fromordinal(end.toordinal() - 1).isoformat(),
        "steps": [{"step": s.step, "channel": s.channel, "notices": s.notices, "listed_minor": s.listed_minor,
                   "collected_7d_minor": s.collected_7d_minor,
                   "collected_7d_percent": {c: str(s.rate(c)) for c in s.listed_minor if s.rate(c) is not None}}
                  for s in steps],
        "promises": _promises(promise_figures(promises)),
        "disputes": disputes,
        "collectors": [{"collector": c.collector, "tasks_done": c.tasks_done, "contacts_reached": c.contacts_reached,
                        "promises": _promises(c.promises), "collected_7d_minor": c.collected_7d_minor}
                       for c in collector_figures(tasks, promises, paid, keys)],
    }


def report_rows(report: dict) -> list[tuple[str, str, str, str, object]]:
    """The report flat, for CSV: (section, name, currency, metric, value)."""
    rows: list[tuple[str, str, str, str, object]] = []

    def money(section: str, name: str, metric: str, per_currency: dict) -> None:
        rows.extend((section, name, c, metric, v) for c, v in sorted(per_currency.items()))

    def promises(section: str, name: str, p: dict) -> None:
        for metric in ("taken", "kept", "broken", "open", "cancelled", "kept_rate_percent"):
            rows.append((section, name, "", f"promises_{metric}" if section == "collector" else metric, p[metric]))
        money(section, name, "promised_minor", p["promised_minor"])
        money(section, name, "kept_minor", p["kept_minor"])

    for s in report["steps"]:
        name = f"{s['step']} ({s['channel']})"
        rows.append(("step", name, "", "notices", s["notices"]))
        money("step", name, "listed_minor", s["listed_minor"])
        money("step", name, "collected_7d_minor", s["collected_7d_minor"])
        money("step", name, "collected_7d_percent", s["collected_7d_percent"])
    promises("promises", "all", report["promises"])
    for d in report["disputes"]:
        for metric in ("disputes", "open", "accepted", "rejected"):
            rows.append(("disputes", d["reason_code"], "", metric, d[metric]))
        money("disputes", d["reason_code"], "credited_minor", d["credited_minor"])
    for c in report["collectors"]:
        rows.append(("collector", c["collector"], "", "tasks_done", c["tasks_done"]))
        rows.append(("collector", c["collector"], "", "contacts_reached", c["contacts_reached"]))
        promises("collector", c["collector"], c["promises"])
        money("collector", c["collector"], "collected_7d_minor", c["collected_7d_minor"])
    return rows
