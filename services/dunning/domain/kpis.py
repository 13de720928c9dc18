"""Collection KPIs without I/O: which dunning steps work (collected within 7 days of each),
promises kept, and each collector's figures, for one period. Money stays per currency."""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from services.dunning.domain.desk import REACHED

WINDOW = timedelta(days=7)


@dataclass(frozen=True)
class SentNotice:
    step: str
    channel: str
    currency: str
    sent_at: datetime
    items: tuple[tuple[str, int], ...]  # (invoice, what it owed when listed)


@dataclass(frozen=True)
class Payment:
    invoice_id: str
    amount_minor: int  # a reversal is negative
    paid_at: datetime


def _paid_within(payments: Iterable[Payment], after: datetime, cap: int) -> int:
    """What was paid in the 7 days after `after`, at most `cap` (what was owed)."""
    paid = sum(p.amount_minor for p in payments if after < p.paid_at <= after + WINDOW)
    return max(0, min(cap, paid))


@dataclass
class StepFigures:
    step: str
    channel: str
    notices: int = 0
    listed_minor: dict[str, int] = field(default_factory=dict)
    collected_7d_minor: dict[str, int] = field(default_factory=dict)

    def rate(self, currency: str) -> Decimal | None:
        listed = self.listed_minor.get(currency, 0)
        if not listed:
            return None
        return (Decimal(self.collected_7d_minor.get(currency, 0)) / listed * 100).quantize(Decimal("0.1"), ROUND_HALF_UP)


def step_figures(notices: Iterable[SentNotice], payments: Mapping[str, Sequence[Payment]]) -> list[StepFigures]:
    """Per step and channel: notices sent, what they listed, and what was paid on the listed
    invoices within 7 days after each (per invoice at most what it listed)."""
    out: dict[tuple[str, str], StepFigures] = {}
    for n in notices:
        row = out.setdefault((n.step, n.channel), StepFigures(n.step, n.channel))
        row.notices += 1
        for invoice_id, owed in n.items:
            row.listed_minor[n.currency] = row.listed_minor.get(n.currency, 0) + owed
            got = _paid_within(payments.get(invoice_id, ()), n.sent_at, owed)
            if got:
                row.collected_7d_minor[n.currency] = row.collected_7d_minor.get(n.currency, 0) + got
    return [out[k] for k in sorted(out)]


@dataclass(frozen=True)
class PromiseRow:
    taken_by: str
    currency: str
    amount_minor: int
    status: str  # open, kept, broken, cancelled
    paid_minor: int


@dataclass
class PromiseFigures:
    taken: int = 0
    kept: int = 0
    broken: int = 0
    open: int = 0
    cancelled: int = 0
    promised_minor: dict[str, int] = field(default_factory=dict)
    kept_minor: dict[str, int] = field(default_factory=dict)

    @property
    def kept_rate(self) -> Decimal | None:
        """Kept of those decided (kept or broken), in percent."""
        decided = self.kept + self.broken
        return None if not decided else (Decimal(self.kept) / decided * 100).quantize(Decimal("0.1"), ROUND_HALF_UP)

    def add(self, p: PromiseRow) -> None:
        self.taken += 1
        setattr(self, p.status, getattr(self, p.status) + 1)
        self.promised_minor[p.currency] = self.promised_minor.get(p.currency, 0) + p.amount_minor
        if p.status == "kept":
            self.kept_minor[p.currency] = self.kept_minor.get(p.currency, 0) + p.paid_minor


def promise_figures(promises: Iterable[PromiseRow]) -> PromiseFigures:
    out = PromiseFigures()
    for p in promises:
        out.add(p)
    return out


@dataclass(frozen=True)
class DoneTask:
    done_by: str  # the key that closed it
    outcome: str
    currency: str
    done_at: datetime
    invoice_ids: tuple[str, ...]  # what the task was about
    owed_minor: int  # what they owed then


@dataclass
class CollectorFigures:
    collector: str
    tasks_done: int = 0
    contacts_reached: int = 0
    promises: PromiseFigures = field(default_factory=PromiseFigures)
    collected_7d_minor: dict[str, int] = field(default_factory=dict)


def collector_figures(tasks: Iterable[DoneTask], promises: Iterable[PromiseRow],
                      payments: Mapping[str, Sequence[Payment]], collector_of: Mapping[str, str]) -> list[CollectorFigures]:
    """Per collector (a key no collector signs in with counts as itself): tasks done, contacts
    reached, promises taken and kept, and what was paid on a task's invoices within 7 days after
    they closed it (at most what the task was about)."""
    out: dict[str, CollectorFigures] = {}

    def of(key: str) -> CollectorFigures:
        who = collector_of.get(key, key)
        return out.setdefault(who, CollectorFigures(who))

    for t in tasks:
        row = of(t.done_by)
        row.tasks_done += 1
        row.contacts_reached += t.outcome in REACHED
        got = _paid_within((p for i in t.invoice_ids for p in payments.get(i, ())), t.done_at, t.owed_minor)
        if got:
            row.collected_7d_minor[t.currency] = row.collected_7d_minor.get(t.currency, 0) + got
    for p in promises:
        of(p.taken_by).promises.add(p)
    return [out[k] for k in sorted(out)]


def payments_by_invoice(rows: Iterable[Payment]) -> dict[str, list[Payment]]:
    out: dict[str, list[Payment]] = defaultdict(list)
    for p in rows:
        out[p.invoice_id].append(p)
    return out
