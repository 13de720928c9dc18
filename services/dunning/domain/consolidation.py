"""What a case says when its timers fire: one notice per channel, listing every item due.

The rule (README, "Consolidation"): each invoice of a case keeps its own schedule (its policy's
steps from its own due date). When steps of a case fall due, the case sends ONE notice per
channel at the level of the most advanced item, and the notice lists every open, un-paused item
that is in dunning (that has reached a step, now or before) with its own days overdue, amount,
fees and interest. An item's earlier steps that fell due at the same time are stale and skipped
(after an outage nobody gets a burst); due steps of the other items are carried by the notice.
An invoice that joins later is listed from the next step of its own schedule.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date


@dataclass(frozen=True)
class Item:
    invoice_id: str
    number: str
    due_date: date
    open_minor: int
    round: int
    in_dunning: bool  # a step of this round was already executed for it
    fees_minor: int = 0  # charged to date (fees and compensation)
    interest_minor: int = 0  # interest booked to date


@dataclass(frozen=True)
class DueStep:
    invoice_id: str
    round: int
    name: str
    position: int
    offset_days: int
    channel: str
    template: str | None
    fee: dict[str, int] = field(default_factory=dict)
    min_overdue: dict[str, int] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, int, str]:
        return self.invoice_id, self.round, self.name


@dataclass(frozen=True)
class Notice:
    step: DueStep  # the step of the most advanced item: its name, channel and template
    lead_invoice: str  # the most advanced item
    items: tuple[Item, ...]

    def total_minor(self) -> int:
        return sum(i.open_minor + i.fees_minor + i.interest_minor for i in self.items)


@dataclass
class Decision:
    executed: dict[tuple[str, int, str], str] = field(default_factory=dict)  # step key -> channel of its notice
    skipped: dict[tuple[str, int, str], str] = field(default_factory=dict)  # step key -> why
    notices: list[Notice] = field(default_factory=list)


def days_overdue(item: Item, today: date) -> int:
    return max(0, (today - item.due_date).days)


def consolidate(currency: str, items: list[Item], due: list[DueStep], today: date) -> Decision:
    """Decide one firing of a case. `items`: its open items that are not paused; `due`: their
    steps that are due now (steps of paused items are not passed: they wait)."""
    decision = Decision()
    by_item: dict[str, list[DueStep]] = {}
    for s in due:
        by_item.setdefault(s.invoice_id, []).append(s)
    if not by_item:
        return decision
    # Per item only its latest level counts; what it passed meanwhile is stale.
    level: dict[str, list[DueStep]] = {}
    for invoice_id, steps in by_item.items():
        top = max(s.offset_days for s in steps)
        level[invoice_id] = [s for s in steps if s.offset_days == top]
        for s in steps:
            if s.offset_days < top:
                decision.skipped[s.key] = "stale"
    # The most advanced item leads: highest offset, then the furthest step, then oldest due date.
    live = {i.invoice_id: i for i in items}
    leader = max((s for steps in level.values() for s in steps if s.invoice_id in live),
                 key=lambda s: (s.offset_days, s.position, -live[s.invoice_id].due_date.toordinal(), s.invoice_id),
                 default=None)
    if leader is None:
        return decision
    lead_steps: dict[str, DueStep] = {}  # channel -> the leader's step on it at its level
    for s in sorted(level[leader.invoice_id], key=lambda s: s.position):
        lead_steps[s.channel] = s
    listed = tuple(sorted((i for i in items if i.in_dunning or i.invoice_id in level),
                          key=lambda i: (i.due_date, i.number)))
    overdue = sum(i.open_minor for i in listed if i.due_date < today)
    owed = sum(i.open_minor for i in listed)
    carried = [s for steps in level.values() for s in steps]
    for channel, step in lead_steps.items():
        minimum = step.min_overdue.get(currency)
        asked = overdue if step.offset_days > 0 else owed
        if minimum is not None and asked < minimum:
            for s in carried:
                if s.channel == channel or s.key == step.key:
                    decision.skipped.setdefault(s.key, "below_minimum")
            continue
        decision.notices.append(Notice(step, leader.invoice_id, listed))
    sent = {n.step.channel for n in decision.notices}
    for s in carried:
        if s.key in decision.skipped:
            continue
        if s.channel in sent:
            decision.executed[s.key] = s.channel
        elif sent:  # a channel the leader does not use at this level: carried by the first notice
            decision.executed[s.key] = decision.notices[0].step.channel
        else:
            decision.skipped[s.key] = "below_minimum"
    return decision
