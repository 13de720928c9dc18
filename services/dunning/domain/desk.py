"""The collector's desk without I/O: how urgent a task is, when it falls due in its collector's
working hours, who gets it, and which details each call outcome needs."""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from zoneinfo import ZoneInfo

from shared.contract.money import to_major

ASSIGNMENT_MODES = ("portfolio", "round_robin", "manual")
DEFAULT_GRADE_WEIGHTS: dict[str, Decimal] = {"A": Decimal("0.5"), "B": Decimal("1"), "C": Decimal("1.5"),
                                             "D": Decimal("2")}
# What a finished call can come to, and what each one needs said with it.
OUTCOMES = ("reached", "no_answer", "wrong_number", "promise_taken", "dispute_raised", "plan_agreed", "call_back",
            "letter_sent", "not_needed")
NEEDS = {"promise_taken": "promise", "dispute_raised": "dispute", "plan_agreed": "plan", "call_back": "call_back_at"}
# Outcomes in which someone spoke with the customer (the "contacts reached" of the KPIs).
REACHED = frozenset({"reached", "promise_taken", "dispute_raised", "plan_agreed", "call_back"})


class DeskError(ValueError):
    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field = field_name


def priority(overdue_minor: int, currency: str, days_overdue: int, grade: str | None,
             weights: Mapping[str, Decimal]) -> int:
    """What is owed (major units) x days overdue (at least 1) x the weight of the customer's risk
    grade (1 without a grade): the biggest, oldest, riskiest debts first."""
    weight = weights.get(grade, Decimal(1)) if grade else Decimal(1)
    score = to_major(max(0, overdue_minor), currency) * max(1, days_overdue) * weight
    return int(score.to_integral_value(ROUND_HALF_UP))


@dataclass(frozen=True)
class Hours:
    """A collector's working week: local times on ISO weekdays (1 Monday .. 7 Sunday)."""

    timezone: str = "UTC"
    start: time = time(9, 0)
    end: time = time(17, 0)
    days: tuple[int, ...] = (1, 2, 3, 4, 5)

    def check(self) -> None:
        try:
            ZoneInfo(self.timezone)
        except Exception:  # noqa: BLE001 - any lookup failure is the same answer
            raise DeskError("timezone", f"unknown time zone {self.timezone!r}") from None
        if self.end <= self.start:
            raise DeskError("work_end", "the working day must end after it starts")
        if not self.days or any(d not in range(1, 8) for d in self.days):
            raise DeskError("work_days", "give ISO weekdays, 1 (Monday) to 7 (Sunday)")


def next_working_moment(at: datetime, hours: Hours) -> datetime:
    """`at` if it falls in the collector's working hours, else the start of their next working
    day, in UTC."""
    zone = ZoneInfo(hours.timezone)
    local = at.astimezone(zone)
    for ahead in range(8):
        day = local.date() + timedelta(days=ahead)
        if day.isoweekday() not in hours.days:
            continue
        opens = datetime.combine(day, hours.start, zone)
        closes = datetime.combine(day, hours.end, zone)
        if ahead == 0 and opens <= local < closes:
            return at
        if local < opens:
            return opens.astimezone(at.tzinfo)
    raise DeskError("work_days", "no working day in the week")  # check() rules this out


@dataclass
class Seat:
    """A collector as assignment sees them: active, with room for `capacity - open_tasks` more."""

    collector_id: str
    capacity: int
    open_tasks: int = 0
    active: bool = True

    @property
    def has_room(self) -> bool:
        return self.active and self.open_tasks < self.capacity


@dataclass(frozen=True)
class ToPlace:
    task_id: str
    customer_id: str
    owner: str | None = None


@dataclass
class Placement:
    assigned: dict[str, str] = field(default_factory=dict)  # task -> collector
    waiting: list[str] = field(default_factory=list)  # no one with room (or manual mode): the team's queue
    cursor: int = 0


def assign(tasks: Sequence[ToPlace], seats: Sequence[Seat], mode: str, cursor: int = 0) -> Placement:
    """Who gets each task, in the order given (the most urgent first).

    portfolio: the customer's owner, if active and with room; otherwise as round robin.
    round_robin: the next active collector with room after the last one given a task (by id).
    manual: nobody; a manager assigns from the queue.
    A customer's tasks in one batch go to one collector. Capacity counts open tasks."""
    placement = Placement(cursor=cursor)
    if mode == "manual":
        placement.waiting = [t.task_id for t in tasks]
        return placement
    ordered = sorted(seats, key=lambda s: s.collector_id)
    by_id = {s.collector_id: s for s in ordered}
    of_customer: dict[str, str] = {}
    for task in tasks:
        chosen = None
        earlier = of_customer.get(task.customer_id)
        if earlier is not None and by_id[earlier].has_room:
            chosen = by_id[earlier]
        elif mode == "portfolio" and task.owner in by_id and by_id[task.owner].has_room:
            chosen = by_id[task.owner]
        else:
            for step in range(len(ordered)):
                seat = ordered[(placement.cursor + step) % len(ordered)]
                if seat.has_room:
                    chosen = seat
                    placement.cursor = (placement.cursor + step + 1) % len(ordered)
                    break
        if chosen is None:
            placement.waiting.append(task.task_id)
            continue
        chosen.open_tasks += 1
        placement.assigned[task.task_id] = chosen.collector_id
        of_customer[task.customer_id] = chosen.collector_id
    return placement


def check_outcome(outcome: str, given: Iterable[str]) -> None:
    """The details an outcome needs are there, and no others."""
    if outcome not in OUTCOMES:
        raise DeskError("outcome", f"must be one of {', '.join(OUTCOMES)}")
    given = set(given)
    needed = NEEDS.get(outcome)
    if needed and needed not in given:
        raise DeskError(needed, f"a {outcome.replace('_', ' ')} outcome needs {needed}")
    extra = sorted(given - ({needed} if needed else set()))
    if extra:
        raise DeskError(extra[0], f"{extra[0]} does not go with the outcome {outcome}")


def grade_weights(raw: Mapping[str, object] | None) -> dict[str, Decimal]:
    """A tenant's weights per grade (stored as JSON numbers or strings)."""
    if not raw:
        return dict(DEFAULT_GRADE_WEIGHTS)
    return {str(k): Decimal(str(v)) for k, v in raw.items()}
