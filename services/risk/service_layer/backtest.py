"""The risk backtest read from the risk store: every invoice of a tenant with the assessment its
customer had at the start of the issue date (UTC midnight), then the pure arithmetic of
services.risk.domain.backtest. Used by `tahsilat report risk-backtest`."""
from __future__ import annotations

from datetime import date

import asyncpg

from services.risk.domain.backtest import BacktestReport, InvoiceAtIssue, backtest_invoices

Db = asyncpg.Connection | asyncpg.Pool

# One set-based query. The LATERAL subquery is one backward scan of risk_assessments_by_customer
# (tenant_id, customer_id, assessed_at) per invoice, stopping at the first row: it never reads a
# customer's whole history, let alone the table's. event_id only breaks ties of equal times so the
# answer does not depend on the plan. A paid invoice's days late are stored at settlement; an
# older row without them falls back to its payment date.
_INVOICES_WITH_GRADE_AT_ISSUE = """
SELECT i.status, i.issue_date, i.due_date,
       (i.paid_at AT TIME ZONE 'UTC')::date AS paid_on,
       COALESCE(i.days_late, (i.paid_at AT TIME ZONE 'UTC')::date - i.due_date) AS days_late,
       a.score, a.grade
FROM risk_invoices i
LEFT JOIN LATERAL (
    SELECT r.score, r.grade FROM risk_assessments r
    WHERE r.tenant_id = i.tenant_id AND r.customer_id = i.customer_id
      AND r.assessed_at < (i.issue_date::timestamp AT TIME ZONE 'UTC')
    ORDER BY r.assessed_at DESC, r.event_id DESC
    LIMIT 1
) a ON true
WHERE i.tenant_id = $1
"""


async def risk_backtest(conn: Db, tenant_id: str, as_of: date) -> BacktestReport:
    """How well the grade at each invoice's issue date predicted "paid 30 or more days late",
    on the tenant's stored history as of the end of `as_of`."""
    rows = await conn.fetch(_INVOICES_WITH_GRADE_AT_ISSUE, tenant_id)
    return backtest_invoices((InvoiceAtIssue(**dict(r)) for r in rows), as_of)
