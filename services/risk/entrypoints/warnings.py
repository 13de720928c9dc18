"""Early warnings in the risk stream processor: a faust agent on the invoicing, dunning and
notifier topics, with its own inbox consumer name, and faust windowed tables.

Per batch, in ONE database transaction (the shared EventProcessor: inbox, set-based handlers,
dead-lettering), each new fact is recorded in risk_signal_observations and every decision is
taken from those rows (services/risk/domain/warnings.py); a warning is inserted into
risk_early_warnings, unique per customer, signal, scope and window, and only when that insert
happened does EarlyWarningRaised go to the outbox. The faust tables are the live windowed view
of the same facts - per customer and window, updated for the events the inbox let through, with
event time (the envelope's `time`) as the window clock. They are a cache: their value when a
warning is decided goes to the row's `stream_view` for diagnostics and nothing is decided on
them, so a lost or lossy changelog (see the broker's recovery) changes no warning.
"""
from __future__ import annotations

import json
import operator
import weakref
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import faust
from faust.streams import _current_event  # the event faust's tables attribute a change to (its partition)

from services.risk.adapters import warnings as store
from services.risk.adapters.warnings import Observation, WarningRow, prune_observations
from services.risk.domain.warnings import (
    BOUNCE_WINDOW, DELAY_WINDOW, EXPOSURE_WINDOW, NORM_PERIOD, OBSERVED_EVENTS, PROMISE_VIEW, REVERSAL_VIEW, Finding,
    WindowSpec, decide, fact_of, lookups, warning_id,
)
from services.risk.service_layer.handlers import derived_event_id
from services.risk.settings import RiskSettings
from shared.contract import EarlyWarningRaised, Envelope, Topics, new_envelope
from shared.db import create_pool
from shared.kafka import DeadLetters, ensure_topics, start_producer
from shared.logging import get_logger
from shared.outbox import add_events
from shared.processing import DeadLetter, Event, EventProcessor, Handler

log = get_logger(__name__)

# The early-warning facts kept: the furthest back a decision looks (a customer's norm), and a margin.
OBSERVATIONS_KEPT = NORM_PERIOD + timedelta(days=60)

CONSUMER = "risk.warnings"  # the inbox's consumer name
SOURCE = "risk"


def envelope_time(event: Any) -> float:
    """The window clock of the faust tables: the envelope's `time` (event time), not the
    record's broker timestamp."""
    return datetime.fromisoformat(json.loads(event.value)["time"]).timestamp()


class StreamView:
    """The faust windowed tables, per customer (exposure: per customer and currency)."""

    def __init__(self, app: faust.App) -> None:
        def table(name: str, spec: WindowSpec, help: str) -> Any:
            t = app.Table(name, default=int, help=help)  # keys and values as JSON (faust's default)
            # expires: windows are dropped (and the changelog kept) for twice their size
            wrapped = (t.tumbling(spec.size, expires=spec.size * 2) if spec.size == spec.step
                       else t.hopping(spec.size, spec.step, expires=spec.size * 2))
            return wrapped.relative_to(envelope_time)

        self.days_late = table("ew-days-late", DELAY_WINDOW, "most days late of an invoice paid in the window")
        self.invoiced = table("ew-invoiced", EXPOSURE_WINDOW, "amount invoiced in the window, per currency")
        self.paid = table("ew-paid", EXPOSURE_WINDOW, "amount paid in the window, per currency")
        self.reversals = table("ew-reversals", REVERSAL_VIEW, "payments reversed in the window")
        self.broken_promises = table("ew-broken-promises", PROMISE_VIEW, "promises to pay broken in the window")
        self.bounces = table("ew-bounces", BOUNCE_WINDOW, "notices bounced or complained about in the window")
        self._events: dict[int, Any] = {}   # the batch's faust events by their message
        self._applied: set[str] = set()     # facts applied in this batch (a retried transaction applies once)
        self._failing = False

    def begin(self, events: Sequence[Any]) -> None:
        self._events = {id(e.message): e for e in events}
        self._applied = set()

    def end(self) -> None:
        self._events, self._applied = {}, set()

    def apply(self, record: Any, obs: Observation) -> dict[str, Any] | None:
        """Add the fact to its tables, as a change caused by its own record (faust writes the
        changelog to that record's partition), and return what the tables show for the windows
        its decision looks at. Never fails the batch: the tables are a cache."""
        event = self._events.get(id(record))
        fact = obs.fact
        if event is None:
            return None
        token = _current_event.set(weakref.ref(event))
        try:
            if fact.event_id not in self._applied:
                self._update(event, obs)
                self._applied.add(fact.event_id)
            view = self._read(obs)
            self._failing = False
            return view
        except Exception as exc:  # noqa: BLE001 - a cache must not stop the decisions
            if not self._failing:
                log.warning("early-warning tables not updated", error=repr(exc), kind=fact.kind)
            self._failing = True
            return None
        finally:
            _current_event.reset(token)

    def _update(self, event: Any, obs: Observation) -> None:
        fact, key = obs.fact, _key(obs)
        match fact.kind:
            case "paid_late":
                self.days_late[key].apply(max, max(fact.days_late, 0), event)
            case "invoiced":
                self.invoiced[f"{key}:{fact.currency}"].apply(operator.add, fact.amount_minor, event)
            case "payment":
                self.paid[f"{key}:{fact.currency}"].apply(operator.add, fact.amount_minor, event)
            case "reversal":
                self.reversals[key].apply(operator.add, 1, event)
            case "broken_promise":
                self.broken_promises[key].apply(operator.add, 1, event)
            case "bounce":
                self.bounces[key].apply(operator.add, 1, event)

    def _read(self, obs: Observation) -> dict[str, Any]:
        fact, key = obs.fact, _key(obs)
        ts = fact.at.timestamp()

        def value(table: Any, k: str, which: str) -> Any:
            rng = getattr(table.table.window, which)(ts)  # the window faust keeps this under
            return table[k][rng]

        match fact.kind:
            case "paid_late":
                return {"max_days_late": value(self.days_late, key, "current")}
            case "invoiced":
                cur = f"{key}:{fact.currency}"
                return {"invoiced_minor": value(self.invoiced, cur, "earliest"),
                        "paid_minor": value(self.paid, cur, "earliest"),
                        "broken_promises": value(self.broken_promises, key, "earliest")}
            case "reversal":
                return {"reversals": value(self.reversals, key, "earliest")}
            case "broken_promise":
                return {"broken_promises": value(self.broken_promises, key, "earliest")}
            case "bounce":
                return {"bounces": value(self.bounces, key, "current")}
        return {}

    def tables(self) -> list[Any]:
        return [self.days_late, self.invoiced, self.paid, self.reversals, self.broken_promises, self.bounces]


def _key(obs: Observation) -> str:
    return f"{obs.tenant_id}:{obs.customer_id}"


class EarlyWarnings:
    """The use case: record the facts, decide from the database, raise each warning once."""

    def __init__(self, topics: Topics, view: StreamView | None = None) -> None:
        self.topics, self.view = topics, view

    def handlers(self) -> dict[str, Handler]:
        return {kind: self.handle for kind in OBSERVED_EVENTS}

    async def handle(self, conn: asyncpg.Connection, events: list[Event]) -> None:
        observed: list[tuple[Event, Observation]] = []
        for e in events:
            fact = fact_of(e.envelope.type, str(e.envelope.id), e.envelope.time, e.payload)
            if fact is not None:
                observed.append((e, Observation(e.envelope.tenant_id, e.payload.customer_id, fact)))
        if not observed:
            return
        seqs = await store.record_observations(conn, [o for _, o in observed])
        fresh = [(e, o, seqs[(o.fact.event_id, o.fact.kind)]) for e, o in observed
                 if (o.fact.event_id, o.fact.kind) in seqs]
        views = {o.fact.event_id: self.view.apply(e.record, o) for e, o, _ in fresh} if self.view else {}

        wanted: dict[tuple[str, str], list] = {}
        for _, o, _ in fresh:
            wanted.setdefault((o.tenant_id, o.customer_id), []).extend(lookups(o.fact))
        known = await store.load_facts(conn, wanted)

        raised: dict[tuple, tuple[Observation, Finding, Envelope]] = {}
        for e, o, seq in fresh:
            before = [f for s, f in known.get((o.tenant_id, o.customer_id), []) if s < seq]
            for finding in decide(o.fact, before):
                raised.setdefault((o.tenant_id, o.customer_id, *finding.key), (o, finding, e.envelope))
        if not raised:
            return
        groups = await store.parents(conn, sorted({(o.tenant_id, o.customer_id) for o, _, _ in raised.values()}))
        rows: list[tuple[WarningRow, Envelope]] = []
        for o, finding, cause in raised.values():
            wid = warning_id(o.tenant_id, o.customer_id, finding)
            rows.append((WarningRow(
                o.tenant_id, o.customer_id, finding, wid, derived_event_id(cause, f"EarlyWarningRaised:{wid}"),
                cause.id, groups.get((o.tenant_id, o.customer_id)), cause.time, views.get(o.fact.event_id)), cause))
        inserted = await store.insert_warnings(conn, [r for r, _ in rows])
        new = [(r, cause) for r, cause in rows if r.warning_id in inserted]
        await add_events(conn, self.topics.risk, [raised_envelope(r, cause) for r, cause in new])
        for r, _ in new:
            log.info("early warning raised", tenant_id=r.tenant_id, customer_id=r.customer_id,
                     signal=r.finding.signal, warning_id=r.warning_id)


def raised_envelope(r: WarningRow, cause: Envelope) -> Envelope:
    f = r.finding
    return new_envelope(
        EarlyWarningRaised(customer_id=r.customer_id, warning_id=r.warning_id, signal=f.signal,
                           window_start=f.window.start, window_end=f.window.end, evidence=f.evidence,
                           explanation=f.explanation, raised_at=r.raised_at, group_id=r.group_id),
        source=SOURCE, tenant_id=r.tenant_id, subject=r.customer_id, time=cause.time, caused_by=cause,
        event_id=r.event_id)


async def ensure_table_topics(app: faust.App, settings: RiskSettings) -> list[str]:
    """Create the changelog topics of the app's tables (the app may not declare topics itself:
    `topic_allow_declare=False`), with the partitions of the source topics and faust's own
    cleanup policy and retention. Returns their names."""
    topics = [t.changelog_topic for t in app.tables.values()]
    if not topics:
        return []
    configs: dict[str, dict[str, str]] = {}
    for t in topics:
        policy = ",".join(p for p, on in (("compact", t.compacting), ("delete", t.deleting)) if on)
        configs[t.get_topic_name()] = {"cleanup.policy": policy or "compact"}
        if t.retention:
            configs[t.get_topic_name()]["retention.ms"] = str(int(t.retention * 1000))
    await ensure_topics(settings.kafka_bootstrap_servers, list(configs), settings.kafka_partitions,
                        security=settings.kafka, configs=configs)
    return list(configs)


# What EventProcessor says of a record it cannot read: an envelope that does not parse, or a payload
# of a type it handles that does not validate.
_UNREADABLE = ("unreadable envelope", "invalid ")


def own_failures(dead_letter: DeadLetter) -> DeadLetter:
    """Dead-letter only what failed in this agent's handlers. A record that cannot be read fails
    the same way in the behaviour consumer (the service process), which consumes the same records
    and handles every event type this one does (a unit test holds them together): it
    dead-letters that record, once."""
    async def send(record: Any, reason: str) -> None:
        if reason.startswith(_UNREADABLE):
            log.info("unreadable record left to the behaviour consumer's dead letter", reason=reason)
            return
        await dead_letter(record, reason)

    return send


def register(app: faust.App, source: Any, settings: RiskSettings) -> StreamView:
    """Add the early-warning tables and agent to the risk stream app."""
    topics = Topics(settings.topic_prefix)
    view = StreamView(app)
    warnings = EarlyWarnings(topics, view)

    @app.agent(source, name="raise-early-warnings")
    async def raise_early_warnings(stream):
        pool = await create_pool(settings.database_url, max_size=settings.db_pool_max,
                                 statement_timeout_ms=settings.db_statement_timeout_ms)
        producer = await start_producer(settings.kafka_bootstrap_servers, settings.kafka)  # for dead letters
        processor = EventProcessor(
            service=settings.service_name, name=CONSUMER, handlers=warnings.handlers(), pool=pool,
            dead_letter=own_failures(DeadLetters(producer, topics.dead_letter, service=settings.service_name,
                                                 consumer=CONSUMER)),
        )
        # A batch's table changes put a changelog record per window into faust's producer buffer;
        # past 100 faust stops the stream until they are flushed one at a time. A batch's worth
        # is fine: the producer batches them (producer_linger).
        app.producer.buffer.max_messages = 20 * settings.consumer_max_batch
        log.info("early-warning agent started")
        try:
            async for events in stream.take_events(settings.consumer_max_batch, within=0.02):
                view.begin(events)
                try:
                    await processor.process_batch([e.message for e in events])
                except BaseException:
                    # faust acknowledges a taken batch even when its processing is interrupted (a
                    # stop): mark the messages done without acknowledging them, so their offsets are
                    # never committed and they come again.
                    for e in events:
                        e.message.acked = True
                    raise
                finally:
                    view.end()
        finally:
            await producer.stop()
            await pool.close()

    @app.timer(interval=600.0)
    async def forget_old_facts() -> None:
        """Facts older than any decision looks back at go, a bounded delete at a time."""
        conn = await asyncpg.connect(settings.database_url)
        try:
            while await prune_observations(conn, OBSERVATIONS_KEPT, limit=10_000) == 10_000:
                pass
        finally:
            await conn.close()

    return view


__all__ = ["CONSUMER", "EarlyWarnings", "StreamView", "ensure_table_topics", "envelope_time", "own_failures",
           "raised_envelope", "register"]
