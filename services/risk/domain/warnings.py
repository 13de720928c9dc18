"""Early warnings, the pure part: which facts a signal looks at, when it fires, what it says.

Time is event time (the envelope's `time`, UTC), never the broker's timestamp. Windows are the
ones faust's window classes compute - the same epoch-aligned grid, each window [start, start +
size) - so the faust tables of the stream and the database decision put an event in the same
window (`WindowSpec` re-does faust's arithmetic without importing faust; a unit test holds the two
together).

A decision looks at a customer's facts as they were known before the event (`known`) plus the
event itself (`fact`): the service records every fact in its database and hands the rules what
was recorded before, so the same events give the same warnings whatever the batching, and a
lost faust table changes none. "Before" is consumption order (one customer's events of one topic
arrive in order); an event that arrives late with an older event time is judged against what was
recorded by then. Only the pair that spans two topics (a broken promise from dunning, an invoice
from invoicing) is looked at from both sides, so its warning does not depend on which came first.
"""
from __future__ import annotations

import math
import statistics
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Literal

from shared.contract.money import format_money, to_minor

Signal = Literal["delay_jump", "exposure_outpacing_payments", "repeated_reversals", "orders_after_broken_promise",
                 "contacts_bouncing"]
Kind = Literal["invoiced", "payment", "paid_late", "reversal", "broken_promise", "bounce"]
Evidence = dict[str, int | float | str | list[str]]

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
DAY = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class Window:
    """[start, end): for the exact rules (reversals, orders after a broken promise) the end is
    the last moment the rule still counts, inclusive."""
    start: datetime
    end: datetime

    def __contains__(self, moment: datetime) -> bool:
        return self.start <= moment < self.end


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """A hopping window (tumbling when step == size) on faust's grid: a window starts at every
    multiple of `step` after the epoch shifted by -size (mod step), i.e. at midnight UTC for
    whole-day sizes and steps that divide each other. faust.windows.HoppingWindow(size, step)
    gives the same windows: `containing` is its `ranges`, `current` and `earliest` its own."""
    size: timedelta
    step: timedelta

    @classmethod
    def tumbling(cls, size: timedelta) -> WindowSpec:
        return cls(size, size)

    def containing(self, moment: datetime) -> list[Window]:
        """Every window that holds `moment`, oldest first (faust: `ranges`)."""
        ts = moment.timestamp()
        size, step = self.size.total_seconds(), self.step.total_seconds()
        start = math.floor(ts / step) * step - size + step
        out = []
        while start <= ts:
            out.append(self._window(start))
            start += step
        return out

    def earliest(self, moment: datetime) -> Window:
        """The oldest window that holds `moment`: the one with the most of the time before it."""
        return self.containing(moment)[0]

    def current(self, moment: datetime) -> Window:
        """The newest window that holds `moment` (for a tumbling window: the only one)."""
        return self.containing(moment)[-1]

    def _window(self, start_s: float) -> Window:
        start = EPOCH + timedelta(seconds=int(start_s))
        return Window(start, start + self.size)


# --- The signals and their thresholds -------------------------------------------------------

# delay_jump: an invoice paid much later than this customer usually pays. The norm is the mean
# days late of its other invoices paid in the 365 days before (a year, so seasonal payers are
# compared with their own seasons); fewer than 3 of them make no norm (a mean of two is noise).
# "Much later" is more than max(15 days, 2 standard deviations) above the norm: 15 days is
# about one missed fortnightly payment run, smaller jumps are ordinary; a customer whose delays
# scatter widely only counts beyond twice its own spread (population deviation of its invoices).
# One warning per customer and tumbling 30-day window.
NORM_PERIOD = timedelta(days=365)
NORM_MIN_INVOICES = 3
DELAY_MIN_JUMP_DAYS = 15
DELAY_SPREAD_FACTOR = 2
DELAY_WINDOW = WindowSpec.tumbling(timedelta(days=30))

# exposure_outpacing_payments: in a 30-day window (hopping, step 7 days: re-evaluated weekly)
# the customer was invoiced more than twice what it paid, and at least 1,000.00 (major units of
# the currency) more: the ratio says the debt grows, the floor keeps small accounts quiet.
# Per currency - amounts in different currencies do not add. An invoice decides the window that
# holds it with the most days before it (`earliest`, i.e. covering the 23-30 days up to it);
# the same window warns once, the next week's window may warn again while it goes on.
EXPOSURE_WINDOW = WindowSpec(timedelta(days=30), timedelta(days=7))
EXPOSURE_RATIO = 2
EXPOSURE_MIN_GAP = Decimal("1000.00")

# repeated_reversals: two payments reversed within 30 days, an exact rule rather than a
# hopping window (a 30-day window stepping by a day misses pairs 29 days and some hours apart
# that straddle windows, and warns in up to 30 windows for one pair). A reversal with another
# reversal at most 30 days before it warns; the warning's window starts at the earliest of those
# reversals and lasts 30 days, and further reversals in that same stretch add no warning.
REVERSAL_WITHIN = timedelta(days=30)
# The stream's live count (not decided on), stepping weekly: a fact is written to the changelog
# once per window it falls in, 5 times rather than 30 with a daily step.
REVERSAL_VIEW = WindowSpec(timedelta(days=30), timedelta(days=7))

# orders_after_broken_promise: an invoice issued after a promise to pay was broken and at most
# 30 days after it (the customer orders more while it does not pay what it promised). Exact,
# and evaluated from both sides - the invoice and the broken promise arrive on different topics
# in either order. One warning per broken promise: its window is the 30 days after it.
PROMISE_FOLLOW_UP = timedelta(days=30)
PROMISE_VIEW = WindowSpec(timedelta(days=30), timedelta(days=7))  # the live count, as REVERSAL_VIEW

# contacts_bouncing: two or more notices that bounced or drew a complaint in one tumbling
# 14-day window: the contact data is going bad (one bounce is a typo or a full mailbox).
# Other failures (opted out, suppressed after an earlier bounce, no address) are not bounces.
BOUNCE_WINDOW = WindowSpec.tumbling(timedelta(days=14))
BOUNCES_TO_WARN = 2
BOUNCE_CODES = frozenset({"bounced", "complaint"})


@dataclass(frozen=True, slots=True)
class Fact:
    """One event as the warnings see it."""
    kind: Kind
    event_id: str
    ref: str                        # the invoice, payment, promise or notification it is about
    at: datetime                    # event time
    currency: str | None = None
    amount_minor: int = 0
    days_late: int = 0
    detail: str = ""                # a bounce's code


@dataclass(frozen=True, slots=True)
class Finding:
    signal: Signal
    window: Window
    evidence: Evidence
    explanation: str
    scope: str = ""  # what tells two warnings of one signal and window apart: the currency, the promise

    @property
    def key(self) -> tuple[str, str, datetime]:
        return self.signal, self.scope, self.window.start


def fact_of(event_type: str, event_id: str, at: datetime, payload: Any) -> Fact | None:
    """The fact an event adds, or None if the warnings do not look at it."""
    match event_type:
        case "InvoiceIssued":
            return Fact("invoiced", event_id, payload.invoice_id, at, payload.currency, payload.amount_minor)
        case "PaymentReceived":
            return Fact("payment", event_id, payload.payment_id, at, payload.currency, payload.amount_minor)
        case "InvoicePaid":
            return Fact("paid_late", event_id, payload.invoice_id, at, payload.currency, payload.amount_minor,
                        days_late=payload.days_late)
        case "PaymentReversed":
            return Fact("reversal", event_id, payload.payment_id, at, payload.currency, payload.amount_minor)
        case "PromiseToPayBroken":
            return Fact("broken_promise", event_id, payload.promise_id, at, None, payload.amount_minor)
        case "NotificationFailed" if payload.code in BOUNCE_CODES:
            return Fact("bounce", event_id, payload.notification_key, at, detail=payload.code)
    return None


OBSERVED_EVENTS = ("InvoiceIssued", "PaymentReceived", "InvoicePaid", "PaymentReversed", "PromiseToPayBroken",
                   "NotificationFailed")


@dataclass(frozen=True, slots=True)
class Lookup:
    """Facts of `kind` with lo <= at <= hi: what a decision on a fact needs to know (a superset;
    the rules pick exactly)."""
    kind: Kind
    lo: datetime
    hi: datetime


def lookups(fact: Fact) -> list[Lookup]:
    match fact.kind:
        case "invoiced":
            w = EXPOSURE_WINDOW.earliest(fact.at)
            return [Lookup("invoiced", min(w.start, fact.at - PROMISE_FOLLOW_UP), max(w.end, fact.at + PROMISE_FOLLOW_UP)),
                    Lookup("payment", w.start, w.end),
                    Lookup("broken_promise", fact.at - PROMISE_FOLLOW_UP, fact.at)]
        case "paid_late":
            return [Lookup("paid_late", fact.at - NORM_PERIOD, fact.at)]
        case "reversal":
            return [Lookup("reversal", fact.at - REVERSAL_WITHIN, fact.at)]
        case "broken_promise":
            return [Lookup("invoiced", fact.at, fact.at + PROMISE_FOLLOW_UP)]
        case "bounce":
            w = BOUNCE_WINDOW.current(fact.at)
            return [Lookup("bounce", w.start, w.end)]
    return []


def decide(fact: Fact, known: Sequence[Fact]) -> list[Finding]:
    """The warnings `fact` completes, given the customer's facts recorded before it."""
    found: list[Finding | None]
    match fact.kind:
        case "invoiced":
            found = [exposure_outpacing_payments(fact, known), *orders_after_broken_promise(fact, known)]
        case "paid_late":
            found = [delay_jump(fact, known)]
        case "reversal":
            found = [repeated_reversals(fact, known)]
        case "broken_promise":
            found = [*orders_after_broken_promise(fact, known)]
        case "bounce":
            found = [contacts_bouncing(fact, known)]
        case _:
            found = []
    return [f for f in found if f is not None]


# --- The rules --------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Norm:
    invoices: list[Fact] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return statistics.fmean(f.days_late for f in self.invoices)

    @property
    def spread(self) -> float:
        return statistics.pstdev([f.days_late for f in self.invoices])

    @property
    def threshold(self) -> float:
        return self.mean + max(DELAY_MIN_JUMP_DAYS, DELAY_SPREAD_FACTOR * self.spread)


def payment_norm(paid: Fact, known: Sequence[Fact]) -> Norm:
    """The customer's other invoices paid in the NORM_PERIOD before `paid` (the latest payment of
    each: an invoice paid, reversed and paid again counts once)."""
    start = paid.at - NORM_PERIOD
    latest: dict[str, Fact] = {}
    for f in sorted((f for f in known if f.kind == "paid_late"), key=lambda f: f.at):
        if start <= f.at < paid.at and f.ref != paid.ref:
            latest[f.ref] = f
    return Norm(sorted(latest.values(), key=lambda f: (f.at, f.ref)))


def delay_jump(paid: Fact, known: Sequence[Fact]) -> Finding | None:
    norm = payment_norm(paid, known)
    if len(norm.invoices) < NORM_MIN_INVOICES or not paid.days_late > norm.threshold:
        return None
    n = len(norm.invoices)
    return Finding(
        "delay_jump", DELAY_WINDOW.current(paid.at),
        {"invoice_id": paid.ref, "event_id": paid.event_id, "days_late": paid.days_late,
         "norm_days_late": round(norm.mean, 1), "norm_spread_days": round(norm.spread, 1),
         "threshold_days": round(norm.threshold, 1), "prior_invoices": n,
         "prior_invoice_ids": [f.ref for f in norm.invoices], "prior_event_ids": [f.event_id for f in norm.invoices]},
        f"Invoice {paid.ref} was paid {paid.days_late} days late on {_day(paid.at)}, against a norm of"
        f" {norm.mean:.1f} days (spread {norm.spread:.1f}) over the {n} invoices paid in the previous 365 days"
        f" (threshold {norm.threshold:.1f} days).")


def exposure_gap(currency: str) -> int:
    """EXPOSURE_MIN_GAP in minor units of `currency` (1,000.00 EUR: 100000; 1,000 JPY: 1000)."""
    return to_minor(EXPOSURE_MIN_GAP, currency)


def exposure_outpacing(invoiced_minor: int, paid_minor: int, currency: str) -> bool:
    return invoiced_minor > EXPOSURE_RATIO * paid_minor and invoiced_minor - paid_minor >= exposure_gap(currency)


def exposure_outpacing_payments(invoice: Fact, known: Sequence[Fact]) -> Finding | None:
    window = EXPOSURE_WINDOW.earliest(invoice.at)
    same = [f for f in (*known, invoice) if f.currency == invoice.currency and f.at in window]
    invoices = [f for f in same if f.kind == "invoiced"]
    payments = [f for f in same if f.kind == "payment"]
    invoiced, paid = sum(f.amount_minor for f in invoices), sum(f.amount_minor for f in payments)
    currency = invoice.currency or ""
    if not exposure_outpacing(invoiced, paid, currency):
        return None
    money = lambda minor: format_money(minor, currency, "en")  # noqa: E731
    return Finding(
        "exposure_outpacing_payments", window,
        {"currency": currency, "invoiced_minor": invoiced, "paid_minor": paid, "invoices": len(invoices),
         "payments": len(payments), "min_gap_minor": exposure_gap(currency), "invoice_id": invoice.ref,
         "event_id": invoice.event_id},
        f"{money(invoiced)} was invoiced in {len(invoices)} invoice{_s(len(invoices))} between {_day(window.start)}"
        f" and {_day(window.end - DAY)} against {money(paid)} paid, more than {EXPOSURE_RATIO} times the payments"
        f" and at least {money(exposure_gap(currency))} more.",
        scope=currency)


def repeated_reversals(reversal: Fact, known: Sequence[Fact]) -> Finding | None:
    earlier = sorted((f for f in known if f.kind == "reversal" and f.ref != reversal.ref
                      and reversal.at - REVERSAL_WITHIN <= f.at <= reversal.at), key=lambda f: (f.at, f.ref))
    if not earlier:
        return None
    reversals = [*earlier, reversal]
    start = earlier[0].at
    return Finding(
        "repeated_reversals", Window(start, start + REVERSAL_WITHIN),
        {"reversals": len(reversals), "payment_ids": [f.ref for f in reversals],
         "reversed_on": [_day(f.at) for f in reversals], "event_ids": [f.event_id for f in reversals],
         "amounts": [format_money(f.amount_minor, f.currency, "en") for f in reversals if f.currency]},
        f"{len(reversals)} payments reversed within 30 days: "
        + _and([f"{f.ref} on {_day(f.at)}" for f in reversals]))


def orders_after_broken_promise(fact: Fact, known: Sequence[Fact]) -> list[Finding]:
    """For an invoice: one finding per promise broken in the 30 days before it; for a broken
    promise: one if invoices were issued in the 30 days after it."""
    if fact.kind == "invoiced":
        promises = sorted((f for f in known if f.kind == "broken_promise"
                           and f.at < fact.at <= f.at + PROMISE_FOLLOW_UP), key=lambda f: (f.at, f.ref))
        found = [_orders_after(p, [*known, fact]) for p in promises]
    elif fact.kind == "broken_promise":
        found = [_orders_after(fact, known)]
    else:
        found = []
    return [f for f in found if f is not None]


def _orders_after(promise: Fact, known: Sequence[Fact]) -> Finding | None:
    invoices = sorted((f for f in known if f.kind == "invoiced" and promise.at < f.at <= promise.at + PROMISE_FOLLOW_UP),
                      key=lambda f: (f.at, f.ref))
    if not invoices:
        return None
    days = [(f.at - promise.at) / DAY for f in invoices]
    if len(invoices) == 1:
        what = f"Invoice {invoices[0].ref} was issued {_days(days[0])} after"
    else:
        what = f"{len(invoices)} invoices ({', '.join(f.ref for f in invoices)}) were issued within 30 days after"
    return Finding(
        "orders_after_broken_promise", Window(promise.at, promise.at + PROMISE_FOLLOW_UP),
        {"promise_id": promise.ref, "promise_event_id": promise.event_id, "broken_at": promise.at.isoformat(),
         "invoice_ids": [f.ref for f in invoices], "invoice_event_ids": [f.event_id for f in invoices],
         "days_after": round(days[0], 1)},
        f"{what} promise to pay {promise.ref} was broken on {_day(promise.at)}.",
        scope=promise.ref)


def contacts_bouncing(bounce: Fact, known: Sequence[Fact]) -> Finding | None:
    window = BOUNCE_WINDOW.current(bounce.at)
    bounces = sorted((f for f in (*known, bounce) if f.kind == "bounce" and f.at in window), key=lambda f: (f.at, f.ref))
    if len(bounces) < BOUNCES_TO_WARN:
        return None
    return Finding(
        "contacts_bouncing", window,
        {"failures": len(bounces), "notification_keys": [f.ref for f in bounces], "codes": [f.detail for f in bounces],
         "failed_on": [_day(f.at) for f in bounces], "event_ids": [f.event_id for f in bounces]},
        f"{len(bounces)} notices bounced or drew a complaint in the 14 days from {_day(window.start)}: "
        + _and([f"{f.ref} ({f.detail} on {_day(f.at)})" for f in bounces]) + ".")


# --- Identity ---------------------------------------------------------------------------------

_WARNING_IDS = uuid.UUID("0f3c9d52-6a1e-4f0b-8c55-2b7e4a9d1c36")


def warning_id(tenant_id: str, customer_id: str, finding: Finding) -> str:
    """The same warning (customer, signal, scope, window) always has the same id, whichever
    event completed it."""
    return str(uuid.uuid5(_WARNING_IDS, f"{tenant_id}:{customer_id}:{finding.signal}:{finding.scope}:"
                                        f"{finding.window.start.isoformat()}"))


def _day(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).date().isoformat()


def _days(days: float) -> str:
    whole = round(days, 1)
    text = f"{whole:g}"
    return f"{text} day" if whole == 1 else f"{text} days"


def _s(n: int) -> str:
    return "" if n == 1 else "s"


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
