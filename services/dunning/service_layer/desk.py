"""The collector's desk: tasks weighted, assigned and timed as they are made; the collectors,
portfolios and desk settings a manager keeps; a call's outcome doing what it says (a promise,
a dispute, a plan, a call-back) in one transaction; and the contact log, fed by every event
that is an interaction with a customer."""
from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import asyncpg

from services.dunning.adapters import contact_log as log_repo
from services.dunning.adapters import desk as desk_repo
from services.dunning.adapters import tasks as task_repo
from services.dunning.domain.contact_log import LOGGED_TYPES, entry_of
from services.dunning.domain.desk import (
    REACHED, DeskError, Hours, ToPlace, assign, check_outcome, grade_weights, next_working_moment, priority,
)
from shared.clock import Clock
from shared.contract import CollectorTaskAssigned, CollectorTaskCreated, ContactLogged, Envelope, Topics, new_envelope
from shared.contract.money import to_minor, validate_currency
from shared.http import DomainError
from shared.outbox import add_events
from shared.processing import Event, Handler

if TYPE_CHECKING:
    from services.dunning.service_layer.arrangements import Arrangements

SOURCE = "dunning"
DUNNING = "dunning"  # who assigned a task that no person assigned
CALL_BACK_WITHIN = timedelta(days=90)


def _domain(e: DeskError, status: int = 422) -> DomainError:
    return DomainError(e.field, str(e), status)


def _notification_key(t: asyncpg.Record) -> str:
    """The notice a task is about ("" for a broken promise or plan, a call-back)."""
    if t["notice_id"] is None or t["rule"] == "call_back":
        return ""
    return t["source_key"].removeprefix("failed:").removeprefix(f"rule:{t['rule']}:")


def task_created(t: asyncpg.Record) -> Envelope:
    return new_envelope(CollectorTaskCreated(
        customer_id=t["customer_id"], task_id=str(t["task_id"]), case_id=str(t["case_id"]), kind=t["kind"],
        step=t["step"], reason=t["reason"], notification_key=_notification_key(t), currency=t["currency"],
        overdue_minor=t["overdue_minor"], days_overdue=t["days_overdue"], priority=t["priority"],
        invoice_ids=[str(i) for i in t["invoice_ids"]], due_at=t["due_at"], rule=t["rule"],
        assigned_to=t["assigned_to"]),
        source=SOURCE, tenant_id=t["tenant_id"], subject=str(t["case_id"]), time=t["created_at"])


def task_assigned(t: asyncpg.Record, by: str, now: datetime) -> Envelope:
    return new_envelope(CollectorTaskAssigned(
        customer_id=t["customer_id"], task_id=str(t["task_id"]), assigned_to=t["assigned_to"], assigned_by=by,
        due_at=t["due_at"], assigned_at=now), source=SOURCE, tenant_id=t["tenant_id"], subject=str(t["case_id"]),
        time=now)


async def place_new(conn: asyncpg.Connection, rows: list[asyncpg.Record], now: datetime) -> list[Envelope]:
    """Weigh the new tasks by the customer's risk grade, give them to collectors by the tenant's
    assignment mode and time them in their collector's hours; their CollectorTaskCreated."""
    by_tenant: dict[str, list[asyncpg.Record]] = defaultdict(list)
    for r in rows:
        by_tenant[r["tenant_id"]].append(r)
    events = []
    for tenant_id in sorted(by_tenant):
        mine = by_tenant[tenant_id]
        placed = await _place(conn, tenant_id, mine, now, fresh=True)
        events += [task_created(r) for r in placed]
    return events


async def _place(conn: asyncpg.Connection, tenant_id: str, rows: list[asyncpg.Record], now: datetime, *,
                 fresh: bool) -> list[asyncpg.Record]:
    settings = await desk_repo.settings(conn, tenant_id)
    customers = await desk_repo.customers(conn, tenant_id, sorted({r["customer_id"] for r in rows}))
    weights = grade_weights(settings["grade_weights"])
    urgency = {r["task_id"]: priority(r["overdue_minor"], r["currency"], r["days_overdue"],
                                      (customers.get(r["customer_id"]) or {}).get("risk_grade"), weights)
               if fresh else r["priority"] for r in rows}
    rows = sorted(rows, key=lambda r: (-urgency[r["task_id"]], r["created_at"], str(r["task_id"])))
    collectors = await desk_repo.collectors(conn, tenant_id)
    assigned: dict[uuid.UUID, str] = {}
    hours: dict[str, Hours] = {}
    if collectors and settings["assignment"] != "manual":
        # the cursor and everyone's load, one placement per tenant at a time
        settings = await desk_repo.settings(conn, tenant_id, lock=True)
        collectors = await desk_repo.collectors(conn, tenant_id)
        hours = {c["collector_id"]: desk_repo.hours(c) for c in collectors}
        placement = assign([ToPlace(str(r["task_id"]), r["customer_id"],
                                    (customers.get(r["customer_id"]) or {}).get("owner")) for r in rows],
                           [desk_repo.seat(c) for c in collectors], settings["assignment"],
                           settings["round_robin_next"] % len(collectors))
        assigned = {uuid.UUID(t): c for t, c in placement.assigned.items()}
        if placement.cursor != settings["round_robin_next"]:
            await desk_repo.move_cursor(conn, tenant_id, placement.cursor)
    if not fresh and not assigned:
        return []
    placed = [(r["task_id"], urgency[r["task_id"]], assigned.get(r["task_id"]),
               next_working_moment(r["due_at"], hours[assigned[r["task_id"]]]) if r["task_id"] in assigned
               else r["due_at"]) for r in rows if fresh or r["task_id"] in assigned]
    return await task_repo.place(conn, tenant_id, placed, DUNNING, now)


async def fill(conn: asyncpg.Connection, tenant_id: str, now: datetime) -> list[Envelope]:
    """Give waiting tasks to collectors who have room now (after a task is closed, a collector
    added or given more room, the assignment mode changed)."""
    settings = await desk_repo.settings(conn, tenant_id)
    if settings["assignment"] == "manual":
        return []
    collectors = await desk_repo.collectors(conn, tenant_id)
    room = sum(max(0, c["capacity"] - c["open_tasks"]) for c in collectors if c["active"])
    if room == 0:
        return []
    waiting = await task_repo.waiting(conn, tenant_id, room)
    placed = await _place(conn, tenant_id, waiting, now, fresh=False)
    return [task_assigned(r, DUNNING, now) for r in placed]


class Desk:
    def __init__(self, pool: asyncpg.Pool, clock: Clock, topics: Topics, arrangements: Arrangements) -> None:
        self.pool, self.clock, self.topics, self.arrangements = pool, clock, topics, arrangements

    # -- the contact log consumer --------------------------------------------------------------

    def handlers(self) -> dict[str, Handler]:
        return dict.fromkeys(LOGGED_TYPES, self.on_interactions)

    async def on_interactions(self, conn: asyncpg.Connection, events: list[Event]) -> None:
        entries = [e for e in (entry_of(ev.envelope, ev.payload) for ev in events) if e is not None]
        await log_repo.append(conn, entries, self.clock.now())

    async def _log(self, conn: asyncpg.Connection, envelope: Envelope) -> None:
        """What a person logs shows in the timeline at once (the consumer then adds nothing)."""
        entry = entry_of(envelope, ContactLogged.model_validate(envelope.data))
        await log_repo.append(conn, [entry], self.clock.now())
        await add_events(conn, self.topics.dunning, [envelope])

    # -- collectors, portfolios, settings ---------------------------------------------------------

    async def put_collector(self, tenant_id: str, collector_id: str, fields: dict[str, Any]) -> asyncpg.Record:
        try:
            Hours(fields["timezone"], fields["work_start"], fields["work_end"], tuple(fields["work_days"])).check()
        except DeskError as e:
            raise _domain(e) from None
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            if fields.get("key_id"):
                other = await conn.fetchrow("SELECT tenant_id, collector_id FROM collectors WHERE key_id = $1",
                                            fields["key_id"])
                if other is not None and (other["tenant_id"], other["collector_id"]) != (tenant_id, collector_id):
                    raise DomainError("key_id", "that key already signs in another collector", 409)
            await desk_repo.put_collector(conn, tenant_id, collector_id, fields, now)
            await add_events(conn, self.topics.dunning, await fill(conn, tenant_id, now))
            return await desk_repo.collector(conn, tenant_id, collector_id)

    async def collectors(self, tenant_id: str) -> list[asyncpg.Record]:
        return await desk_repo.collectors(self.pool, tenant_id)

    async def collector_of(self, tenant_id: str, key_id: str) -> asyncpg.Record | None:
        return await desk_repo.collector_of_key(self.pool, tenant_id, key_id)

    async def set_owner(self, tenant_id: str, customer_id: str, collector_id: str | None) -> asyncpg.Record:
        async with self.pool.acquire() as conn, conn.transaction():
            if collector_id is not None and await desk_repo.collector(conn, tenant_id, collector_id) is None:
                raise DomainError("collector_id", f"no collector {collector_id!r} in this tenant", 422)
            return await desk_repo.set_owner(conn, tenant_id, customer_id, collector_id)

    async def settings(self, tenant_id: str) -> dict:
        return await desk_repo.settings(self.pool, tenant_id)

    async def put_settings(self, tenant_id: str, *, assignment: str, grade_weights: dict[str, Decimal],
                           high_amount: dict[str, str], high_grades: list[str], unanswered_notices: int) -> dict:
        amounts = {}
        for currency, amount in high_amount.items():
            try:
                amounts[validate_currency(currency)] = to_minor(amount, currency)
            except ValueError as e:
                raise DomainError(f"high_amount.{currency}", str(e)) from None
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            row = await desk_repo.put_settings(conn, tenant_id, {
                "assignment": assignment, "grade_weights": {k: str(v) for k, v in grade_weights.items()},
                "high_amount": amounts, "high_grades": high_grades, "unanswered_notices": unanswered_notices}, now)
            await add_events(conn, self.topics.dunning, await fill(conn, tenant_id, now))
            return row

    # -- tasks ------------------------------------------------------------------------------------

    async def worklist(self, tenant_id: str, collector_id: str | None, limit: int) -> list[asyncpg.Record]:
        return await task_repo.worklist(self.pool, tenant_id, collector_id, limit, self.clock.now())

    async def assign(self, tenant_id: str, task_id: uuid.UUID, collector_id: str | None, *, by: str,
                     manager: bool) -> asyncpg.Record:
        """Give a task to a collector (None: back to the team's queue). A collector may take a
        task from the queue for themselves; a manager may give any task to anyone, beyond their
        capacity too."""
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            task = await self._open_task(conn, tenant_id, task_id)
            if not manager:
                me = await desk_repo.collector_of_key(conn, tenant_id, by)
                if me is None or collector_id != me["collector_id"] or task["assigned_to"] not in (None, collector_id):
                    raise DomainError("collector_id", "a collector may only take a task from the queue for themselves",
                                      403)
            due_at = task["due_at"]
            if collector_id is not None:
                target = await desk_repo.collector(conn, tenant_id, collector_id)
                if target is None or not target["active"]:
                    raise DomainError("collector_id", f"no active collector {collector_id!r} in this tenant", 422)
                if not manager and target["open_tasks"] >= target["capacity"]:
                    raise DomainError("collector_id", f"{collector_id} holds {target['open_tasks']} open tasks, their"
                                                      f" capacity", 409)
                due_at = next_working_moment(task["due_at"], desk_repo.hours(target))
            [row] = await task_repo.place(conn, tenant_id, [(task_id, task["priority"], collector_id, due_at)], by, now)
            await add_events(conn, self.topics.dunning, [task_assigned(row, by, now)])
            return row

    async def _open_task(self, conn: asyncpg.Connection, tenant_id: str, task_id: uuid.UUID) -> asyncpg.Record:
        task = await task_repo.get(conn, tenant_id, task_id, lock=True)
        if task is None:
            raise DomainError("task_id", f"no task {task_id} in this tenant", 404)
        if task["status"] != "open":
            raise DomainError("task_id", "the task is already done", 409)
        return task

    async def log_outcome(self, tenant_id: str, task_id: uuid.UUID, outcome: str, note: str | None, *, by: str,
                          manager: bool, promise: dict | None = None, dispute: dict | None = None,
                          plan: dict | None = None, call_back_at: datetime | None = None) -> tuple[asyncpg.Record, dict]:
        """Close a task with what came of it, and do what that outcome says, all at once: a promise
        taken records the promise, a dispute opens it, a plan agreed sets it up, a call-back makes
        the next task (same collector, at that time). The call goes into the contact log
        (ContactLogged). What was made, by id."""
        given = {k for k, v in (("promise", promise), ("dispute", dispute), ("plan", plan),
                                ("call_back_at", call_back_at)) if v is not None}
        try:
            check_outcome(outcome, given)
        except DeskError as e:
            raise _domain(e) from None
        now = self.clock.now()
        made: dict[str, str] = {}
        async with self.pool.acquire() as conn, conn.transaction():
            task = await self._open_task(conn, tenant_id, task_id)
            if not manager and task["assigned_to"] is not None:
                me = await desk_repo.collector_of_key(conn, tenant_id, by)
                if me is None or me["collector_id"] != task["assigned_to"]:
                    raise DomainError("task_id", f"the task is {task['assigned_to']}'s", 403)
            events: list[Envelope] = []
            if promise is not None:
                row = await self.arrangements.record_promise(
                    tenant_id, task["case_id"], amount_minor=promise["amount_minor"],
                    promised_date=promise["promised_date"], channel="letter" if task["kind"] == "letter" else "phone",
                    taken_by=by, invoice_ids=promise.get("invoice_ids"), grace_days=promise.get("grace_days", 3),
                    note=note, conn=conn)
                made["promise_id"] = str(row["promise_id"])
            if dispute is not None:
                row = await self.arrangements.open_dispute(
                    tenant_id, customer_id=task["customer_id"], invoice_id=dispute.get("invoice_id"),
                    currency=task["currency"], reason_code=dispute["reason_code"], description=dispute["reason"],
                    opened_by=by, conn=conn)
                made["dispute_id"] = str(row["dispute_id"])
            if plan is not None:
                row = await self.arrangements.agree_plan(
                    tenant_id, task["case_id"], instalments=plan.get("instalments"), count=plan.get("count"),
                    first_due=plan.get("first_due"), every_days=plan.get("every_days", 30),
                    invoice_ids=plan.get("invoice_ids"), grace_days=plan.get("grace_days", 3), agreed_by=by, conn=conn)
                made["plan_id"] = str(row["plan_id"])
            if call_back_at is not None:
                if not now < call_back_at <= now + CALL_BACK_WITHIN:
                    raise DomainError("call_back_at", "must be in the future, within 90 days")
                follow = await task_repo.call_back(conn, task, call_back_at, now)
                if follow is not None:
                    [follow] = await task_repo.place(conn, tenant_id, [(follow["task_id"], follow["priority"],
                                                                        task["assigned_to"], call_back_at)], by, now)
                    events.append(task_created(follow))
                    made["task_id"] = str(follow["task_id"])
            closed = await task_repo.close(conn, tenant_id, task_id, outcome, note, by, now)
            entry_id = uuid.uuid4()
            await self._log(conn, new_envelope(ContactLogged(
                customer_id=task["customer_id"], entry_id=str(entry_id), kind="note" if task["kind"] == "letter" else "call",
                outcome=outcome, note=note, task_id=str(task_id), logged_by=by, logged_at=now),
                source=SOURCE, tenant_id=tenant_id, subject=task["customer_id"], time=now, event_id=entry_id))
            made["entry_id"] = str(entry_id)
            events += await fill(conn, tenant_id, now)
            await add_events(conn, self.topics.dunning, events)
            return closed, made

    # -- the contact log --------------------------------------------------------------------------

    async def log_contact(self, tenant_id: str, customer_id: str, *, kind: str, outcome: str | None,
                          note: str | None, by: str, corrects: uuid.UUID | None = None) -> asyncpg.Record:
        """A person's entry in the customer's timeline; a correction names the entry it corrects."""
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            known = await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM dunning_customers WHERE tenant_id = $1 AND customer_id = $2)"
                " OR EXISTS (SELECT 1 FROM contact_log WHERE tenant_id = $1 AND customer_id = $2)", tenant_id,
                customer_id)
            if not known:
                raise DomainError("customer_id", f"no customer {customer_id} in dunning in this tenant", 404)
            entry_id = uuid.uuid4()
            await self._log(conn, new_envelope(ContactLogged(
                customer_id=customer_id, entry_id=str(entry_id), kind=kind, outcome=outcome, note=note,
                corrects=str(corrects) if corrects else None, logged_by=by, logged_at=now),
                source=SOURCE, tenant_id=tenant_id, subject=customer_id, time=now, event_id=entry_id))
            return await log_repo.get(conn, tenant_id, entry_id)

    async def correct(self, tenant_id: str, entry_id: uuid.UUID, note: str, by: str) -> asyncpg.Record:
        entry = await log_repo.get(self.pool, tenant_id, entry_id)
        if entry is None:
            raise DomainError("entry_id", f"no contact-log entry {entry_id} in this tenant", 404)
        return await self.log_contact(tenant_id, entry["customer_id"], kind="correction", outcome=None, note=note,
                                      by=by, corrects=entry_id)

    async def timeline(self, tenant_id: str, customer_id: str, *, limit: int, before: datetime | None,
                       kinds: list[str] | None) -> list[asyncpg.Record]:
        return await log_repo.timeline(self.pool, tenant_id, customer_id, limit=limit, before=before, kinds=kinds)


__all__ = ["Desk", "REACHED", "fill", "place_new", "task_assigned", "task_created"]
