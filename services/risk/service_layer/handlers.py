"""Risk use cases on the event stream: events fold into their customers' books one at a time and
in order, and after each event the customer is assessed (score, grade, factors) and its credit
checked, at the event's time. So the same events in the same order give the same store and the
same RiskAssessed / credit events (ids derived from their causes) however they are batched; the
order itself is made the same on every run, a rebuild from the topics included, by
service_layer/ordering.py, which stages the consumed events and hands them here in order."""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import asyncpg

from services.risk.adapters import assessments
from services.risk.adapters import credit as credit_store
from services.risk.adapters import facts
from services.risk.adapters.scorecards import scorecards_of
from services.risk.domain.book import invoice_ids_named
from services.risk.domain.credit import CreditLine, hold_changes
from services.risk.domain.scorecard import Assessment, assess
from shared.clock import Clock
from shared.contract import (
    CreditHoldPlaced, CreditHoldReleased, CreditLimitExceeded, Envelope, RiskAssessed, Topics, new_envelope,
)
from shared.outbox import add_events
from shared.processing import Event

SOURCE = "risk"
# Ids of the events risk derives from another event, so a replay makes the same ones.
_EVENT_IDS = uuid.UUID("5b0c6a47-43c1-4d8e-9a6e-3a1f0f2f9d11")

Key = tuple[str, str]  # (tenant, customer)


def derived_event_id(cause: Envelope, kind: str) -> uuid.UUID:
    return uuid.uuid5(_EVENT_IDS, f"{kind}:{cause.id}")


@dataclass
class _Moves:
    """What a batch's assessments and credit checks decided, written at its end."""
    latest: dict[Key, tuple[Assessment, Envelope]] = field(default_factory=dict)
    history: list[tuple[Key, Assessment, Envelope]] = field(default_factory=list)
    events: list[Envelope] = field(default_factory=list)


class Risk:
    def __init__(self, clock: Clock, topics: Topics) -> None:
        self.clock, self.topics = clock, topics

    async def fold(self, conn: asyncpg.Connection, events: list[Event]) -> None:
        keys = sorted({(e.envelope.tenant_id, e.payload.customer_id) for e in events})
        named = [(e.envelope.tenant_id, i) for e in events for i in invoice_ids_named(e.envelope.type, e.payload)]
        books = await facts.load_books(conn, keys, named, min(e.envelope.time for e in events))
        cards = await scorecards_of(conn, {k[0] for k in keys})
        current = await assessments.current(conn, keys)
        credit = await credit_store.load_state(conn, books)
        moves = _Moves()
        for e in events:
            key = (e.envelope.tenant_id, e.payload.customer_id)
            book = books[key]
            book.apply(e.envelope.type, e.payload, e.envelope.time)
            a = assess(book, book.as_of(e.envelope.time), cards[key[0]])
            before = current.get(key)
            if before is None or (before.score, before.grade, before.segment) != (a.score, a.grade, a.segment):
                moves.latest[key] = (a, e.envelope)
                moves.history.append((key, a, e.envelope))
                if before is None or (before.grade, before.segment) != (a.grade, a.segment):
                    moves.events.append(self._assessed(key, a, before, e.envelope))
                current[key] = a
            moves.events.extend(self._credit_checks(credit, key, e.envelope))
        await facts.save_books(conn, books.values())
        await credit_store.save_holds(conn, credit)
        await self._record(conn, moves)

    def _assessed(self, key: Key, a: Assessment, before: Assessment | None, cause: Envelope) -> Envelope:
        return new_envelope(
            RiskAssessed(customer_id=key[1], score=a.score, segment=a.segment, grade=a.grade,
                         previous_grade=before.grade if before else None, factors=list(a.factors),
                         assessed_at=cause.time),
            source=SOURCE, tenant_id=key[0], subject=key[1], time=cause.time, caused_by=cause,
            event_id=derived_event_id(cause, "RiskAssessed"))

    def _credit_checks(self, credit: credit_store.CreditState, key: Key, cause: Envelope) -> list[Envelope]:
        """Holds placed or released by the exposure after this event: the customer's own lines,
        and its group's when it belongs to one whose parent has a limit."""
        out: list[Envelope] = []
        for owner, scope, lines in credit.lines_after(key):
            for change in hold_changes(lines):
                line = next(x for x in lines if x.currency == change.currency)
                credit.record(owner, change, line, scope, cause.time)
                out.extend(self._credit_events(owner, scope, change.action, line, cause))
        return out

    def _credit_events(self, owner: Key, scope: str, action: str, line: CreditLine, cause: Envelope) -> list[Envelope]:
        def event(payload, kind: str) -> Envelope:
            return new_envelope(payload, source=SOURCE, tenant_id=owner[0], subject=owner[1], time=cause.time,
                                caused_by=cause, event_id=derived_event_id(cause, f"{kind}:{owner[1]}:{line.currency}"))
        if action == "place":
            return [
                event(CreditLimitExceeded(customer_id=owner[1], currency=line.currency, limit_minor=line.limit_minor,
                                          exposure_minor=line.exposure_minor, scope=scope, exceeded_at=cause.time),
                      "CreditLimitExceeded"),
                event(CreditHoldPlaced(customer_id=owner[1], currency=line.currency,
                                       reason="group_limit_exceeded" if scope == "group" else "limit_exceeded",
                                       limit_minor=line.limit_minor, exposure_minor=line.exposure_minor,
                                       placed_at=cause.time), "CreditHoldPlaced"),
            ]
        return [event(CreditHoldReleased(customer_id=owner[1], currency=line.currency, reason="within_limit",
                                         exposure_minor=line.exposure_minor, limit_minor=line.limit_minor,
                                         released_at=cause.time), "CreditHoldReleased")]

    async def _record(self, conn: asyncpg.Connection, moves: _Moves) -> None:
        await assessments.save_latest(conn, {k: (a, cause.time) for k, (a, cause) in moves.latest.items()})
        await assessments.add_history(conn, [(k, a, derived_event_id(c, "RiskAssessed"), c.time)
                                             for k, a, c in moves.history])
        if moves.events:
            await add_events(conn, self.topics.risk, moves.events)
