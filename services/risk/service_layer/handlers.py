"""Risk use cases: fold invoicing events into the customer's payment behaviour (in the
consumer's inbox transaction) and publish RiskAssessed when the assessment changes."""
from __future__ import annotations

from dataclasses import asdict, fields

import asyncpg

from services.risk.domain.scoring import PaymentBehaviour, assess
from shared.clock import Clock
from shared.contract import Envelope, RiskAssessed, Topics, new_envelope
from shared.outbox import add_event

SOURCE = "risk"
_COLUMNS = [f.name for f in fields(PaymentBehaviour)]


class Risk:
    def __init__(self, clock: Clock, topics: Topics) -> None:
        self.clock, self.topics = clock, topics

    def handlers(self) -> dict:
        return {
            "InvoiceIssued": lambda conn, env, p: self._update(conn, env, lambda b: b.issued()),
            "InvoicePaid": lambda conn, env, p: self._update(conn, env, lambda b: b.paid(p.days_late)),
            "InvoiceOverdue": lambda conn, env, p: self._update(conn, env, lambda b: b.overdue()),
        }

    async def _update(self, conn: asyncpg.Connection, env: Envelope, change) -> None:
        customer_id = env.data["customer_id"]
        row = await conn.fetchrow(
            f"SELECT {', '.join(_COLUMNS)} FROM payment_behaviour WHERE tenant_id = $1 AND customer_id = $2 FOR UPDATE",
            env.tenant_id, customer_id,
        )
        before = PaymentBehaviour(**dict(row)) if row else PaymentBehaviour()
        after = change(before)
        values = asdict(after)
        await conn.execute(
            f"INSERT INTO payment_behaviour (tenant_id, customer_id, {', '.join(_COLUMNS)}) VALUES ($1, $2, "
            + ", ".join(f"${i + 3}" for i in range(len(_COLUMNS)))
            + ") ON CONFLICT (tenant_id, customer_id) DO UPDATE SET "
            + ", ".join(f"{c} = EXCLUDED.{c}" for c in _COLUMNS) + ", updated_at = now()",
            env.tenant_id, customer_id, *values.values(),
        )
        assessment = assess(after)
        previous = await conn.fetchrow(
            "SELECT score, segment FROM customer_risk WHERE tenant_id = $1 AND customer_id = $2", env.tenant_id, customer_id
        )
        if previous and (previous["score"], previous["segment"]) == (assessment.score, assessment.segment):
            return
        now = self.clock.now()
        await conn.execute(
            """INSERT INTO customer_risk (tenant_id, customer_id, score, segment, factors, assessed_at)
               VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (tenant_id, customer_id) DO UPDATE SET
               score = EXCLUDED.score, segment = EXCLUDED.segment, factors = EXCLUDED.factors,
               assessed_at = EXCLUDED.assessed_at""",
            env.tenant_id, customer_id, assessment.score, assessment.segment,
            [f.model_dump(mode="json") for f in assessment.factors], now,
        )
        event = RiskAssessed(customer_id=customer_id, score=assessment.score, segment=assessment.segment,
                             factors=assessment.factors, assessed_at=now)
        await add_event(conn, self.topics.risk,
                        new_envelope(event, source=SOURCE, tenant_id=env.tenant_id, subject=customer_id, time=now, caused_by=env))
