"""From consumed records to database changes, a poll batch at a time.

`EventProcessor` takes a batch of records carrying envelopes: in ONE transaction it claims the
inbox rows of the whole batch, then hands the new events to set-based handlers, one call per
event type and wave (waves keep each key's order, see `waves`). `RawBatchProcessor` does the
same failure handling for handlers that take raw records (billing-source ingest).

Failure handling, the same for both:
- a transient error (the database restarting, failing over, a deadlock) retries the same batch
  with backoff, for as long as it takes: it is never the record's fault;
- any other error splits the batch in halves, applied one after the other (so each key keeps
  its order), down to the one record that fails; that record is retried a few times and then
  goes to the dead-letter topic with the cause, and the rest of the batch carries on.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
from pydantic import ValidationError

from shared.contract import Envelope, EventPayload, UnknownEventType
from shared.db import is_statement_timeout, is_transient
from shared.inbox import claim_events
from shared.logging import get_logger
from shared.metrics import CONSUMER_RETRIES, EVENT_HANDLER_SECONDS, EVENTS_CONSUMED

log = get_logger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Event:
    envelope: Envelope
    payload: EventPayload
    record: Any  # what was consumed (aiokafka ConsumerRecord or faust Message), for dead-lettering


Handler = Callable[[asyncpg.Connection, list[Event]], Awaitable[None]]
"""Applies events of ONE type in the order they were consumed, inside the batch's transaction.
Several of them may concern the same entity (one invoice paid twice): apply them in order."""

EventHandler = Callable[[asyncpg.Connection, Envelope, Any], Awaitable[None]]


def each(handler: EventHandler) -> Handler:
    """A Handler that applies the events one at a time: for rare event types not worth a
    set-based statement (it still runs in the batch's one transaction)."""

    async def handle(conn: asyncpg.Connection, events: list[Event]) -> None:
        for e in events:
            await handler(conn, e.envelope, e.payload)

    handle.__name__ = getattr(handler, "__name__", "each")
    return handle


def waves(items: Sequence[T], key: Callable[[T], Hashable], kind: Callable[[T], Hashable]) -> list[list[T]]:
    """Split `items` into waves that may each be applied set-based, one statement per kind, without
    breaking any key's order: a key's consecutive items of one kind form a run, and its n-th run
    goes to wave n. Runs of different keys are independent, so they share a wave; a key's later
    run waits for the next wave. Items keep their relative order inside a wave."""
    runs: dict[Hashable, tuple[Hashable, int]] = {}  # key -> (kind of its current run, wave of that run)
    out: list[list[T]] = []
    for item in items:
        k, t = key(item), kind(item)
        current = runs.get(k)
        wave = 0 if current is None else current[1] if current[0] == t else current[1] + 1
        runs[k] = (t, wave)
        if wave == len(out):
            out.append([])
        out[wave].append(item)
    return out


def by_kind(items: Iterable[T], kind: Callable[[T], Hashable]) -> dict[Hashable, list[T]]:
    groups: dict[Hashable, list[T]] = {}
    for item in items:
        groups.setdefault(kind(item), []).append(item)
    return groups


def backoff(attempt: int, first: float = 0.2, cap: float = 30.0) -> float:
    """Seconds to wait before retry number `attempt` (1, 2, ...): doubling, capped."""
    return min(cap, first * 2 ** min(attempt - 1, 16))


DeadLetter = Callable[[Any, str], Awaitable[None]]


class _Failures:
    """Applies a list of items with `apply`, handling failures as the module docstring says."""

    def __init__(self, *, service: str, name: str, dead_letter: DeadLetter, record_of: Callable[[Any], Any],
                 max_attempts: int, sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> None:
        self.service, self.name, self.dead_letter = service, name, dead_letter
        self.record_of, self.max_attempts, self.sleep = record_of, max_attempts, sleep

    async def run(self, items: list, apply: Callable[[list], Awaitable[None]],
                  on_dead: Callable[[Any], Awaitable[None]] | None = None) -> None:
        if not items:
            return
        attempt = transient = 0
        while True:
            try:
                await apply(items)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - sorted below: the world, or the record
                if is_statement_timeout(exc) and len(items) > 1:  # too much at once: halve it
                    mid = len(items) // 2
                    CONSUMER_RETRIES.labels(self.service, self.name, "timeout-split").inc()
                    log.warning("statement timeout, applying the batch in halves", consumer=self.name,
                                records=len(items))
                    await self.run(items[:mid], apply, on_dead)
                    await self.run(items[mid:], apply, on_dead)
                    return
                if is_transient(exc):
                    transient += 1
                    delay = backoff(transient)
                    CONSUMER_RETRIES.labels(self.service, self.name, "transient").inc()
                    log.warning("database unavailable, retrying the batch", consumer=self.name, records=len(items),
                                error=repr(exc), retry_in=delay)
                    await self.sleep(delay)
                    continue
                if len(items) > 1:  # find the record at fault; the others go through
                    mid = len(items) // 2
                    CONSUMER_RETRIES.labels(self.service, self.name, "split").inc()
                    await self.run(items[:mid], apply, on_dead)
                    await self.run(items[mid:], apply, on_dead)
                    return
                attempt += 1
                if attempt < self.max_attempts:
                    CONSUMER_RETRIES.labels(self.service, self.name, "record").inc()
                    await self.sleep(backoff(attempt, first=0.05))
                    continue
                log.error("record failed, dead-lettering", consumer=self.name, error=repr(exc))
                await self.dead_letter(self.record_of(items[0]), f"handler failed after {attempt} attempts: {exc!r}")
                if on_dead is not None:
                    await on_dead(items[0])
                return


class EventProcessor:
    """Applies batches of envelope records for one consumer (`name`, the inbox's consumer id)."""

    def __init__(self, *, service: str, name: str, handlers: Mapping[str, Handler], pool: asyncpg.Pool,
                 dead_letter: DeadLetter, max_attempts: int = 3) -> None:
        self.service, self.name, self.handlers, self.pool = service, name, dict(handlers), pool
        self.dead_letter = dead_letter
        self._failures = _Failures(service=service, name=name, dead_letter=dead_letter,
                                   record_of=lambda e: e.record, max_attempts=max_attempts)

    async def process_batch(self, records: Sequence[Any]) -> None:
        await self.process_prepared(records, self.prepare(records))

    def prepare(self, records: Sequence[Any]) -> list[Event | str | None]:
        """Each record decoded (no I/O): the consumer does it for the next batch while this one's
        transaction runs."""
        return [self._parse(record) for record in records]

    async def process_prepared(self, records: Sequence[Any], prepared: list[Event | str | None]) -> None:
        events: list[Event] = []
        for record, parsed in zip(records, prepared):
            if isinstance(parsed, Event):
                events.append(parsed)
            elif parsed is not None:
                await self.dead_letter(record, parsed)
        await self._failures.run(events, self._apply, self._remember_dead)

    def _parse(self, record: Any) -> Event | str | None:
        """The event, None if this consumer has no handler for its type, or why it is unreadable."""
        try:
            envelope = Envelope.model_validate_json(record.value or b"")
        except ValidationError as exc:
            return f"unreadable envelope: {first_error(exc)}"
        if envelope.type not in self.handlers:
            EVENTS_CONSUMED.labels(self.service, self.name, envelope.type, "ignored").inc()
            return None
        try:
            return Event(envelope, envelope.payload(), record)
        except ValidationError as exc:
            return f"invalid {envelope.type} v{envelope.version} payload: {first_error(exc)}"
        except UnknownEventType as exc:
            return f"invalid {envelope.type} v{envelope.version} payload: {exc}"

    async def _apply(self, events: list[Event]) -> None:
        started = time.perf_counter()
        async with self.pool.acquire() as conn, conn.transaction():
            new = await claim_events(conn, self.name, [e.envelope for e in events])
            fresh: list[Event] = []
            for e in events:
                if e.envelope.id in new:
                    new.discard(e.envelope.id)  # the same event twice in one batch: once
                    fresh.append(e)
            for wave in waves(fresh, key=lambda e: e.envelope.key, kind=lambda e: e.envelope.type):
                for event_type, group in by_kind(wave, lambda e: e.envelope.type).items():
                    await self.handlers[event_type](conn, group)
        EVENT_HANDLER_SECONDS.labels(self.service, self.name).observe(time.perf_counter() - started)
        for event_type, group in by_kind(fresh, lambda e: e.envelope.type).items():
            EVENTS_CONSUMED.labels(self.service, self.name, event_type, "handled").inc(len(group))
        if len(fresh) < len(events):
            EVENTS_CONSUMED.labels(self.service, self.name, "?", "duplicate").inc(len(events) - len(fresh))

    async def _remember_dead(self, event: Event) -> None:
        """A dead-lettered event is marked as seen, so a redelivery does not dead-letter it again."""
        async def mark() -> None:
            async with self.pool.acquire() as conn:
                await claim_events(conn, self.name, [event.envelope])

        await retry_transient(mark, what="marking a dead-lettered event")


async def retry_transient(fn: Callable[[], Awaitable[T]], *, what: str) -> T:
    """`fn()`, retried with backoff for as long as the database is away."""
    attempt = 0
    while True:
        try:
            return await fn()
        except Exception as exc:
            if not is_transient(exc):
                raise
            attempt += 1
            log.warning("database unavailable, retrying", what=what, error=repr(exc), retry_in=backoff(attempt))
            await asyncio.sleep(backoff(attempt))


Reject = Callable[[Any, str], Awaitable[None]]
RawHandler = Callable[[list[Any], Reject], Awaitable[None]]
"""Takes raw records (in consumption order) and a function that dead-letters one of them with a
reason; manages its own transactions and must be idempotent for a batch applied again."""


class RawBatchProcessor:
    """For consumers of raw records (billing-source ingest): the same retries, splitting and
    dead-lettering around a handler that takes the records themselves."""

    def __init__(self, *, service: str, name: str, handler: RawHandler, dead_letter: DeadLetter,
                 max_attempts: int = 3) -> None:
        self.service, self.name, self.handler, self.dead_letter = service, name, handler, dead_letter
        self._failures = _Failures(service=service, name=name, dead_letter=dead_letter, record_of=lambda r: r,
                                   max_attempts=max_attempts)

    async def process_batch(self, records: Sequence[Any]) -> None:
        await self._failures.run(list(records), lambda batch: self.handler(batch, self.dead_letter))


def first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"]) or "(record)"
    return f"{field}: {err['msg']}"


__all__ = [
    "Event", "EventHandler", "EventProcessor", "Handler", "RawBatchProcessor", "RawHandler", "Reject",
    "backoff", "by_kind", "each", "first_error", "retry_transient", "waves",
]
