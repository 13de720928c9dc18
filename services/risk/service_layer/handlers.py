"""Risk use cases: fold invoicing, dunning and notifier events into the risk store (in the
consumer's inbox transaction), then let each assessment that rests on it look at the customers
the batch touched: the score (RiskAssessed when it moves), and whatever else is registered
(`after_facts`, e.g. credit limits)."""
from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import fields
from typing import Any

import asyncpg

from services.risk.adapters import facts
from services.risk.domain.scoring import Assessment, PaymentBehaviour, assess
from shared.clock import Clock
from shared.contract import Envelope, RiskAssessed, Topics, new_envelope
from shared.outbox import add_events
from shared.processing import Event, Handler

SOURCE = "risk"
_COLUMNS = [f.name for f in fields(PaymentBehaviour)]
# RiskAssessed ids are derived from the event that caused them, so a replay makes the same ones.
_EVENT_IDS = uuid.UUID("5b0c6a47-43c1-4d8e-9a6e-3a1f0f2f9d11")

Key = tuple[str, str]  # (tenant, customer)
# A check that runs after a batch's facts are written, in the same transaction: the customers
# touched and, for each, the last event of the batch that touched it (its cause).
AfterFacts = Callable[[asyncpg.Connection, list[Key], dict[Key, Envelope]], Awaitable[None]]


def derived_event_id(cause: Envelope, kind: str) -> uuid.UUID:
    return uuid.uuid5(_EVENT_IDS, f"{kind}:{cause.id}")


class Risk:
    def __init__(self, clock: Clock, topics: Topics, after_facts: list[AfterFacts] | None = None) -> None:
        self.clock, self.topics = clock, topics
        self.after_facts = list(after_facts or [])

    def handlers(self) -> dict[str, Handler]:
        behaviour = {
            "InvoiceIssued": lambda p: lambda b: b.issued(),
            "InvoicePaid": lambda p: lambda b: b.paid(p.days_late),
            "InvoiceOverdue": lambda p: lambda b: b.overdue(),
            "PromiseToPayBroken": lambda p: lambda b: b.promise_broken(),
        }
        writes = {
            "InvoiceIssued": facts.invoices_issued,
            "InvoiceAdjusted": facts.invoices_adjusted,
            "InvoiceCancelled": facts.invoices_cancelled,
            "PaymentReceived": facts.allocations_applied,
            "CreditNoteIssued": facts.allocations_applied,
            "CreditApplied": facts.allocations_applied,
            "PaymentReversed": facts.payments_reversed,
            "InvoicePaid": facts.invoices_paid,
            "InvoiceOverdue": facts.invoices_overdue,
            "PromiseToPayKept": _counting("promises_kept"),
            "PromiseToPayBroken": _counting("promises_broken"),
            "PaymentPlanBroken": _counting("plans_broken"),
            "DisputeOpened": _counting("disputes_opened"),
            "DisputeResolved": _counting("disputes_rejected", lambda p: p.outcome == "rejected"),
            "NotificationFailed": _counting("contacts_bounced", lambda p: p.code in ("bounced", "complaint")),
            "ContactOptedOut": _counting("contacts_opted_out"),
        }
        return {kind: self._handler(write, behaviour.get(kind)) for kind, write in writes.items()}

    def _handler(self, write: Callable[[asyncpg.Connection, list[Event]], Awaitable[None]],
                 change_of: Callable[[Any], Callable[[PaymentBehaviour], PaymentBehaviour]] | None) -> Handler:
        async def handle(conn: asyncpg.Connection, events: list[Event]) -> None:
            await write(conn, events)
            keys = sorted({(e.envelope.tenant_id, e.payload.customer_id) for e in events})
            cause = {(e.envelope.tenant_id, e.payload.customer_id): e.envelope for e in events}
            if change_of is not None:
                await self._fold(conn, events, keys, change_of)
            for check in self.after_facts:
                await check(conn, keys, cause)

        return handle

    async def _fold(self, conn: asyncpg.Connection, events: list[Event], keys: list[Key],
                    change_of: Callable[[Any], Callable[[PaymentBehaviour], PaymentBehaviour]]) -> None:
        """Fold each event into its customer's behaviour, in order, and assess after each one: a
        RiskAssessed for every event that moved the assessment, caused by it. The same events give
        the same assessments however a consumer happens to batch them (a replay batches otherwise)."""
        rows = await conn.fetch(
            f"SELECT b.tenant_id, b.customer_id, {', '.join('b.' + c for c in _COLUMNS)}, r.score, r.segment"
            " FROM unnest($1::text[], $2::text[]) AS k(tenant_id, customer_id)"
            " JOIN payment_behaviour b USING (tenant_id, customer_id)"
            " LEFT JOIN customer_risk r USING (tenant_id, customer_id) FOR UPDATE OF b",
            [k[0] for k in keys], [k[1] for k in keys],
        )
        behaviour = {(r["tenant_id"], r["customer_id"]): PaymentBehaviour(**{c: r[c] for c in _COLUMNS})
                     for r in rows}
        current = {(r["tenant_id"], r["customer_id"]): (r["score"], r["segment"]) for r in rows
                   if r["score"] is not None}
        moved: list[tuple[Key, Assessment, Envelope]] = []
        for e in events:
            key = (e.envelope.tenant_id, e.payload.customer_id)
            behaviour[key] = change_of(e.payload)(behaviour.get(key, PaymentBehaviour()))
            a = assess(behaviour[key])
            if current.get(key) != (a.score, a.segment):
                current[key] = (a.score, a.segment)
                moved.append((key, a, e.envelope))
        await conn.execute(
            f"INSERT INTO payment_behaviour (tenant_id, customer_id, {', '.join(_COLUMNS)})"
            f" SELECT * FROM unnest($1::text[], $2::text[], {', '.join(f'${i + 3}::int[]' for i in range(len(_COLUMNS)))})"
            " ON CONFLICT (tenant_id, customer_id) DO UPDATE SET "
            + ", ".join(f"{c} = EXCLUDED.{c}" for c in _COLUMNS) + ", updated_at = now()",
            [k[0] for k in keys], [k[1] for k in keys],
            *([getattr(behaviour[k], c) for k in keys] for c in _COLUMNS),
        )
        if moved:
            await self._record_assessments(conn, moved)

    async def _record_assessments(self, conn: asyncpg.Connection, moved: list[tuple[Key, Assessment, Envelope]]) -> None:
        """The latest assessment per customer, and one RiskAssessed per move, at the time of the
        event that caused it and with an id derived from that event's."""
        latest = {k: (a, cause) for k, a, cause in moved}
        keys = list(latest)
        await conn.execute(
            """INSERT INTO customer_risk (tenant_id, customer_id, score, segment, factors, assessed_at)
               SELECT t, c, s, g, f::jsonb, at FROM unnest($1::text[], $2::text[], $3::int[], $4::text[], $5::text[],
                 $6::timestamptz[]) AS u(t, c, s, g, f, at)
               ON CONFLICT (tenant_id, customer_id) DO UPDATE SET
               score = EXCLUDED.score, segment = EXCLUDED.segment, factors = EXCLUDED.factors,
               assessed_at = EXCLUDED.assessed_at""",
            [k[0] for k in keys], [k[1] for k in keys], [latest[k][0].score for k in keys],
            [latest[k][0].segment for k in keys],
            [json.dumps([f.model_dump(mode="json") for f in latest[k][0].factors]) for k in keys],
            [latest[k][1].time for k in keys],
        )
        await add_events(conn, self.topics.risk, [
            new_envelope(RiskAssessed(customer_id=k[1], score=a.score, segment=a.segment, factors=a.factors,
                                      assessed_at=cause.time),
                         source=SOURCE, tenant_id=k[0], subject=k[1], time=cause.time, caused_by=cause,
                         event_id=derived_event_id(cause, "RiskAssessed"))
            for k, a, cause in moved])


def _counting(counter: str, when: Callable[[Any], bool] | None = None):
    async def write(conn: asyncpg.Connection, events: list[Event]) -> None:
        chosen = [e for e in events if when is None or when(e.payload)]
        if chosen:
            await facts.count(conn, chosen, counter)
    return write
