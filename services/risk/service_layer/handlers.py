"""Risk use cases: fold invoicing events into the customer's payment behaviour (in the
consumer's inbox transaction) and publish RiskAssessed when the assessment changes."""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import fields
from typing import Any

import asyncpg

from services.risk.domain.scoring import PaymentBehaviour, assess
from shared.clock import Clock
from shared.contract import Envelope, RiskAssessed, Topics, new_envelope
from shared.outbox import add_events
from shared.processing import Event, Handler

SOURCE = "risk"
_COLUMNS = [f.name for f in fields(PaymentBehaviour)]


class Risk:
    def __init__(self, clock: Clock, topics: Topics) -> None:
        self.clock, self.topics = clock, topics

    def handlers(self) -> dict[str, Handler]:
        return {
            "InvoiceIssued": self._fold(lambda p: lambda b: b.issued()),
            "InvoicePaid": self._fold(lambda p: lambda b: b.paid(p.days_late)),
            "InvoiceOverdue": self._fold(lambda p: lambda b: b.overdue()),
        }

    def _fold(self, change_of: Callable[[Any], Callable[[PaymentBehaviour], PaymentBehaviour]]) -> Handler:
        """A set-based handler: fold each event into its customer's behaviour (in order), then
        write every customer touched once and publish RiskAssessed where the assessment moved."""

        async def handle(conn: asyncpg.Connection, events: list[Event]) -> None:
            keys = sorted({(e.envelope.tenant_id, e.payload.customer_id) for e in events})
            rows = await conn.fetch(
                f"SELECT b.tenant_id, b.customer_id, {', '.join('b.' + c for c in _COLUMNS)}"
                " FROM unnest($1::text[], $2::text[]) AS k(tenant_id, customer_id)"
                " JOIN payment_behaviour b USING (tenant_id, customer_id) FOR UPDATE OF b",
                [k[0] for k in keys], [k[1] for k in keys],
            )
            behaviour = {(r["tenant_id"], r["customer_id"]): PaymentBehaviour(**{c: r[c] for c in _COLUMNS})
                         for r in rows}
            cause: dict[tuple[str, str], Envelope] = {}
            for e in events:
                key = (e.envelope.tenant_id, e.payload.customer_id)
                behaviour[key] = change_of(e.payload)(behaviour.get(key, PaymentBehaviour()))
                cause[key] = e.envelope
            await conn.execute(
                f"INSERT INTO payment_behaviour (tenant_id, customer_id, {', '.join(_COLUMNS)})"
                f" SELECT * FROM unnest($1::text[], $2::text[], {', '.join(f'${i + 3}::int[]' for i in range(len(_COLUMNS)))})"
                " ON CONFLICT (tenant_id, customer_id) DO UPDATE SET "
                + ", ".join(f"{c} = EXCLUDED.{c}" for c in _COLUMNS) + ", updated_at = now()",
                [k[0] for k in keys], [k[1] for k in keys],
                *([getattr(behaviour[k], c) for k in keys] for c in _COLUMNS),
            )
            await self._assess(conn, keys, behaviour, cause)

        return handle

    async def _assess(self, conn: asyncpg.Connection, keys: list[tuple[str, str]],
                      behaviour: dict[tuple[str, str], PaymentBehaviour], cause: dict[tuple[str, str], Envelope]) -> None:
        previous = {(r["tenant_id"], r["customer_id"]): (r["score"], r["segment"]) for r in await conn.fetch(
            "SELECT r.tenant_id, r.customer_id, r.score, r.segment FROM unnest($1::text[], $2::text[])"
            " AS k(tenant_id, customer_id) JOIN customer_risk r USING (tenant_id, customer_id)",
            [k[0] for k in keys], [k[1] for k in keys])}
        moved = [(k, a) for k in keys
                 if previous.get(k) != ((a := assess(behaviour[k])).score, a.segment)]
        if not moved:
            return
        now = self.clock.now()
        await conn.execute(
            """INSERT INTO customer_risk (tenant_id, customer_id, score, segment, factors, assessed_at)
               SELECT t, c, s, g, f::jsonb, $6 FROM unnest($1::text[], $2::text[], $3::int[], $4::text[], $5::text[])
                 AS u(t, c, s, g, f)
               ON CONFLICT (tenant_id, customer_id) DO UPDATE SET
               score = EXCLUDED.score, segment = EXCLUDED.segment, factors = EXCLUDED.factors,
               assessed_at = EXCLUDED.assessed_at""",
            [k[0] for k, _ in moved], [k[1] for k, _ in moved], [a.score for _, a in moved],
            [a.segment for _, a in moved],
            [json.dumps([f.model_dump(mode="json") for f in a.factors]) for _, a in moved], now,
        )
        await add_events(conn, self.topics.risk, [
            new_envelope(RiskAssessed(customer_id=k[1], score=a.score, segment=a.segment, factors=a.factors,
                                      assessed_at=now),
                         source=SOURCE, tenant_id=k[0], subject=k[1], time=now, caused_by=cause[k])
            for k, a in moved])
