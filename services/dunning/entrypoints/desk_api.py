"""The collector's desk over HTTP: collectors and desk settings (managers), portfolios, tasks and
worklists, call outcomes that do what they say, each customer's contact log, and the collections
report."""
from __future__ import annotations

import csv
import io
import uuid
from datetime import date, datetime, time
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, field_validator

from services.dunning.adapters import tasks as task_repo
from services.dunning.domain.arrangements import Instalment
from services.dunning.domain.desk import ASSIGNMENT_MODES, OUTCOMES
from shared.periods import PeriodError, parse_period
from services.dunning.service_layer import reports
from services.dunning.service_layer.desk import Desk
from shared.auth import Principal, require_role
from shared.contract.events import DisputeReason, Language
from shared.contract.money import CurrencyCode, to_major
from shared.contract.text import SafeText, spreadsheet_cell
from shared.http import DomainError

router = APIRouter(prefix="/v1")
Reader = Annotated[Principal, Depends(require_role("collector", "analytics"))]
Collector = Annotated[Principal, Depends(require_role("collector"))]
Manager = Annotated[Principal, Depends(require_role())]
CollectorId = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")]
CustomerId = Annotated[str, Path(min_length=1, max_length=200)]
Grade = Literal["A", "B", "C", "D"]


def _desk(request: Request) -> Desk:
    return request.app.state.desk


def _is_manager(principal: Principal) -> bool:
    return principal.role == "admin"


# -- collectors -----------------------------------------------------------------------------------

class CollectorIn(BaseModel):
    name: SafeText = Field(min_length=1, max_length=200)
    key_id: str | None = Field(default=None, pattern=r"^[a-f0-9]{6,64}$",
                               description="the id of the API key (thk_<id>_...) the collector signs in with")
    language: Language = "en"
    timezone: str = Field(default="UTC", max_length=64)
    work_start: time = time(9, 0)
    work_end: time = time(17, 0)
    work_days: list[int] = Field(default=[1, 2, 3, 4, 5], min_length=1, max_length=7,
                                 description="ISO weekdays: 1 Monday .. 7 Sunday")
    capacity: int = Field(default=40, ge=0, le=10_000, description="open tasks at most")
    active: bool = True


class CollectorOut(BaseModel):
    collector_id: str
    name: str
    key_id: str | None
    language: str
    timezone: str
    work_start: time
    work_end: time
    work_days: list[int]
    capacity: int
    active: bool
    open_tasks: int
    updated_at: datetime

    @classmethod
    def of(cls, r) -> "CollectorOut":
        return cls(**{k: r[k] for k in cls.model_fields})


@router.put("/collectors/{collector_id}", response_model=CollectorOut, tags=["desk"])
async def put_collector(collector_id: CollectorId, body: CollectorIn, principal: Manager,
                        request: Request) -> CollectorOut:
    """Add or change a collector: the key they sign in with, language, working hours (tasks fall
    due within them), capacity. Waiting tasks go to whoever has room."""
    return CollectorOut.of(await _desk(request).put_collector(principal.tenant_id, collector_id, body.model_dump()))


@router.get("/collectors", response_model=list[CollectorOut], tags=["desk"])
async def list_collectors(principal: Reader, request: Request) -> list[CollectorOut]:
    return [CollectorOut.of(r) for r in await _desk(request).collectors(principal.tenant_id)]


@router.get("/collectors/me", response_model=CollectorOut, tags=["desk"])
async def me(principal: Reader, request: Request) -> CollectorOut:
    """The collector the calling key signs in."""
    row = await _desk(request).collector_of(principal.tenant_id, principal.key_id)
    if row is None:
        raise DomainError("X-API-Key", "this key signs in no collector: a manager adds it with PUT /v1/collectors/{id}",
                          404)
    return CollectorOut.of(row)


class WhoAmI(BaseModel):
    key_id: str
    tenant_id: str
    role: str = Field(description="admin (a manager), collector, analytics or billing-source")
    collector: CollectorOut | None = Field(description="the collector the key signs in, if any")


@router.get("/whoami", response_model=WhoAmI, tags=["desk"])
async def whoami(principal: Annotated[Principal, Depends(require_role("collector", "analytics", "billing-source"))],
                 request: Request) -> WhoAmI:
    """Who the calling key is: its tenant and role, and the collector it signs in (the console's
    sign-in asks this)."""
    row = await _desk(request).collector_of(principal.tenant_id, principal.key_id)
    return WhoAmI(key_id=principal.key_id, tenant_id=principal.tenant_id, role=principal.role,
                  collector=CollectorOut.of(row) if row is not None else None)


class OwnerIn(BaseModel):
    collector_id: str | None = Field(description="the collector whose portfolio the customer joins; null: none")


class OwnerOut(BaseModel):
    customer_id: str
    owner: str | None


@router.put("/customers/{customer_id}/owner", response_model=OwnerOut, tags=["desk"])
async def set_owner(customer_id: CustomerId, body: OwnerIn, principal: Manager, request: Request) -> OwnerOut:
    """Put a customer in a collector's portfolio (assignment by portfolio gives them its tasks)."""
    row = await _desk(request).set_owner(principal.tenant_id, customer_id, body.collector_id)
    return OwnerOut(customer_id=row["customer_id"], owner=row["owner"])


# -- desk settings --------------------------------------------------------------------------------

class DeskSettings(BaseModel):
    assignment: Literal[ASSIGNMENT_MODES] = Field(  # type: ignore[valid-type]
        default="portfolio", description="portfolio (the customer's owner, else round robin), round_robin, or manual")
    grade_weights: dict[Grade, Decimal] = Field(
        default={"A": Decimal("0.5"), "B": Decimal(1), "C": Decimal("1.5"), "D": Decimal(2)},
        description="priority = owed (major units) x days overdue x the weight of the customer's risk grade")
    high_amount: dict[CurrencyCode, Annotated[str, Field(pattern=r"^\d{1,15}(\.\d{1,4})?$")]] = Field(
        default={}, max_length=50,
        description="per currency, in major units (e.g. {\"EUR\": \"10000.00\"}): a notice for at least this much makes"
                    " a call task")
    high_grades: list[Grade] = Field(default=["D"], description="a notice to a customer of these grades makes a call task")
    unanswered_notices: int = Field(default=3, ge=0, le=50,
                                    description="this many notices with no answer make a call task (0: off)")

    @field_validator("grade_weights")
    @classmethod
    def _weights(cls, v: dict[str, Decimal]) -> dict[str, Decimal]:
        for grade, weight in v.items():
            if not Decimal(0) <= weight <= Decimal(100):
                raise ValueError(f"the weight of {grade} must be between 0 and 100")
        return v


class DeskSettingsOut(DeskSettings):
    high_amount_minor: dict[str, int] = Field(description="high_amount in minor units, as stored")
    updated_at: datetime | None


def _settings_out(row: dict) -> DeskSettingsOut:
    return DeskSettingsOut(
        assignment=row["assignment"], grade_weights={k: Decimal(str(v)) for k, v in row["grade_weights"].items()},
        high_amount={c: str(to_major(int(m), c)) for c, m in row["high_amount"].items()},
        high_amount_minor={c: int(m) for c, m in row["high_amount"].items()}, high_grades=row["high_grades"],
        unanswered_notices=row["unanswered_notices"], updated_at=row["updated_at"])


@router.get("/desk/settings", response_model=DeskSettingsOut, tags=["desk"])
async def get_settings(principal: Reader, request: Request) -> DeskSettingsOut:
    return _settings_out(await _desk(request).settings(principal.tenant_id))


@router.put("/desk/settings", response_model=DeskSettingsOut, tags=["desk"])
async def put_settings(body: DeskSettings, principal: Manager, request: Request) -> DeskSettingsOut:
    """How tasks are assigned and weighted, and the rules that make call tasks."""
    return _settings_out(await _desk(request).put_settings(principal.tenant_id, **body.model_dump()))


# -- tasks ----------------------------------------------------------------------------------------

class TaskOut(BaseModel):
    task_id: str
    kind: str = Field(description="call or letter (a policy step or a rule), contact_failed (a notice not delivered)")
    rule: str = Field(description="what made it: step, contact_failed, high_amount, high_risk, unanswered,"
                                  " broken_promise, broken_plan, call_back")
    case_id: str
    customer_id: str
    currency: str
    step: str
    reason: str | None
    invoice_ids: list[str]
    overdue_minor: int
    days_overdue: int
    priority: int = Field(description="owed (major units) x days overdue x the risk grade's weight")
    due_at: datetime = Field(description="when it falls due, in its collector's working hours")
    status: str
    assigned_to: str | None
    assigned_at: datetime | None
    outcome: str | None
    note: str | None
    created_at: datetime
    done_at: datetime | None
    done_by: str | None
    risk_grade: str | None = None
    case_open_minor: int | None = Field(default=None, description="worklist: what the case still owes now")

    @classmethod
    def of(cls, r) -> "TaskOut":
        keys = set(r.keys())
        return cls(**{**{k: r[k] for k in cls.model_fields if k in keys and k not in ("task_id", "case_id",
                                                                                      "invoice_ids")},
                      "task_id": str(r["task_id"]), "case_id": str(r["case_id"]),
                      "invoice_ids": [str(i) for i in r["invoice_ids"]]})


@router.get("/tasks", response_model=list[TaskOut], tags=["tasks"])
async def list_tasks(principal: Reader, request: Request,
                     status: Annotated[str | None, Query(pattern="^(open|done)$")] = "open",
                     kind: Annotated[str | None, Query(pattern="^(call|letter|contact_failed)$")] = None,
                     customer_id: Annotated[str | None, Query(max_length=200)] = None,
                     assigned_to: Annotated[str | None, Query(max_length=64)] = None,
                     limit: Annotated[int, Query(ge=1, le=1000)] = 500) -> list[TaskOut]:
    """Work for collectors: call and letter steps of the policies, the desk's rules, notices the
    notifier could not deliver; the most urgent first."""
    rows = await task_repo.listing(request.app.state.pool, principal.tenant_id, status, kind, customer_id, limit,
                                   assigned_to)
    return [TaskOut.of(r) for r in rows]


@router.get("/worklist", response_model=list[TaskOut], tags=["tasks"])
async def worklist(principal: Reader, request: Request,
                   collector_id: Annotated[str | None, Query(max_length=64, description="a manager: whose; default"
                                                                                       " the caller's")] = None,
                   queue: Annotated[bool, Query(description="the team's queue: tasks nobody holds")] = False,
                   limit: Annotated[int, Query(ge=1, le=1000)] = 500) -> list[TaskOut]:
    """Open tasks of one collector (default: the one the calling key signs in), or the team's
    queue: what is due now first, then the most urgent."""
    desk = _desk(request)
    if queue:
        whose = None
    elif collector_id is not None:
        mine = await desk.collector_of(principal.tenant_id, principal.key_id)
        if not _is_manager(principal) and principal.role != "analytics" and (
                mine is None or mine["collector_id"] != collector_id):
            raise DomainError("collector_id", "another collector's worklist is for managers", 403)
        whose = collector_id
    else:
        mine = await desk.collector_of(principal.tenant_id, principal.key_id)
        if mine is None:
            raise DomainError("X-API-Key", "this key signs in no collector: give collector_id, or ask a manager to"
                                           " add you", 404)
        whose = mine["collector_id"]
    return [TaskOut.of(r) for r in await desk.worklist(principal.tenant_id, whose, limit)]


class AssignIn(BaseModel):
    collector_id: str | None = Field(max_length=64, description="null: back to the team's queue")


@router.post("/tasks/{task_id}/assign", response_model=TaskOut, tags=["tasks"])
async def assign_task(task_id: uuid.UUID, body: AssignIn, principal: Collector, request: Request) -> TaskOut:
    """A manager gives a task to a collector (or back to the queue); a collector takes one from
    the queue for themselves. It falls due in the collector's working hours."""
    return TaskOut.of(await _desk(request).assign(principal.tenant_id, task_id, body.collector_id,
                                                  by=principal.key_id, manager=_is_manager(principal)))


class TaskPromise(BaseModel):
    amount_minor: int = Field(gt=0, le=10**15)
    promised_date: date
    invoice_ids: list[uuid.UUID] | None = Field(default=None, max_length=1000)
    grace_days: int = Field(default=3, ge=0, le=30)


class TaskDispute(BaseModel):
    invoice_id: uuid.UUID | None = Field(default=None, description="none: the whole account")
    reason_code: DisputeReason
    reason: SafeText = Field(min_length=3, max_length=2000)


class TaskInstalment(BaseModel):
    due_date: date
    amount_minor: int = Field(gt=0, le=10**15)


class TaskPlan(BaseModel):
    instalments: list[TaskInstalment] | None = Field(default=None, min_length=1, max_length=120)
    count: int | None = Field(default=None, ge=1, le=120)
    first_due: date | None = None
    every_days: int = Field(default=30, ge=1, le=366)
    invoice_ids: list[uuid.UUID] | None = Field(default=None, max_length=1000)
    grace_days: int = Field(default=3, ge=0, le=30)


class OutcomeIn(BaseModel):
    outcome: Literal[OUTCOMES]  # type: ignore[valid-type]
    note: SafeText | None = Field(default=None, max_length=2000)
    promise: TaskPromise | None = Field(default=None, description="promise_taken: what was promised")
    dispute: TaskDispute | None = Field(default=None, description="dispute_raised: what is disputed")
    plan: TaskPlan | None = Field(default=None, description="plan_agreed: the instalments")
    call_back_at: datetime | None = Field(default=None, description="call_back: when (with its time zone)")

    @field_validator("call_back_at")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("give the time zone, e.g. 2026-03-10T14:00:00+01:00")
        return v


class OutcomeOut(TaskOut):
    made: dict[str, str] = Field(description="what the outcome made, by id: entry_id (the contact log), promise_id,"
                                             " dispute_id, plan_id, task_id (the call-back)")


def _plan(plan: TaskPlan | None) -> dict[str, Any] | None:
    if plan is None:
        return None
    out = plan.model_dump()
    out["instalments"] = ([Instalment(n + 1, i.due_date, i.amount_minor) for n, i in enumerate(plan.instalments)]
                          if plan.instalments else None)
    return out


async def _outcome(task_id: uuid.UUID, body: OutcomeIn, principal: Principal, request: Request) -> OutcomeOut:
    row, made = await _desk(request).log_outcome(
        principal.tenant_id, task_id, body.outcome, body.note, by=principal.key_id, manager=_is_manager(principal),
        promise=body.promise.model_dump() if body.promise else None,
        dispute=body.dispute.model_dump() if body.dispute else None, plan=_plan(body.plan),
        call_back_at=body.call_back_at)
    return OutcomeOut(**TaskOut.of(row).model_dump(), made=made)


@router.post("/tasks/{task_id}/outcome", response_model=OutcomeOut, tags=["tasks"])
async def log_outcome(task_id: uuid.UUID, body: OutcomeIn, principal: Collector, request: Request) -> OutcomeOut:
    """Close a task with what came of it, which does what it says in the same transaction:
    promise_taken records the promise (dunning pauses), dispute_raised opens the dispute,
    plan_agreed sets up the plan, call_back makes the next task at that time. Every outcome goes
    into the contact log."""
    return await _outcome(task_id, body, principal, request)


@router.post("/tasks/{task_id}/done", response_model=OutcomeOut, tags=["tasks"], deprecated=True)
async def task_done(task_id: uuid.UUID, body: OutcomeIn, principal: Collector, request: Request) -> OutcomeOut:
    """The same as /outcome (its first name)."""
    return await _outcome(task_id, body, principal, request)


# -- the contact log ------------------------------------------------------------------------------

class EntryOut(BaseModel):
    entry_id: str
    customer_id: str
    at: datetime
    kind: str = Field(description="notice, notice_sent, notice_delivered, notice_failed, call, visit, email_in,"
                                  " letter_in, note, correction, promise, promise_kept, promise_broken, plan_agreed,"
                                  " payment, payment_reversed, statement, dispute_opened, dispute_resolved, ...")
    actor: str = Field(description="who: an API key id, a billing source, dunning, notifier, the customer")
    channel: str | None
    amount_minor: int | None
    currency: str | None
    ref: str | None = Field(description="what it is about: a notification key, promise, plan, dispute, task ...")
    note: str | None
    corrects: str | None
    detail: dict[str, Any]
    recorded_at: datetime

    @classmethod
    def of(cls, r) -> "EntryOut":
        return cls(**{**{k: r[k] for k in cls.model_fields}, "entry_id": str(r["entry_id"]),
                      "corrects": str(r["corrects"]) if r["corrects"] else None,
                      "currency": r["currency"].strip() if r["currency"] else None})


@router.get("/customers/{customer_id}/contact-log", response_model=list[EntryOut], tags=["contact log"])
async def contact_log(customer_id: CustomerId, principal: Reader, request: Request,
                      before: Annotated[datetime | None, Query(description="page: entries before this time")] = None,
                      kind: Annotated[list[str] | None, Query(max_length=30)] = None,
                      limit: Annotated[int, Query(ge=1, le=1000)] = 200) -> list[EntryOut]:
    """Every interaction with the customer, newest first: notices and what became of them,
    calls, promises, plans, disputes, payments, statements. Nothing is edited; a correction is
    an entry naming the one it corrects."""
    rows = await _desk(request).timeline(principal.tenant_id, customer_id, limit=limit, before=before, kinds=kind)
    return [EntryOut.of(r) for r in rows]


class ContactIn(BaseModel):
    kind: Literal["call", "visit", "email_in", "letter_in", "note"]
    outcome: Literal[OUTCOMES] | None = Field(default=None,  # type: ignore[valid-type]
                                              description="of a call logged without a task")
    note: SafeText = Field(min_length=1, max_length=2000)


@router.post("/customers/{customer_id}/contact-log", response_model=EntryOut, status_code=201, tags=["contact log"])
async def log_contact(customer_id: CustomerId, body: ContactIn, principal: Collector, request: Request) -> EntryOut:
    """Log an interaction that came without a task: an inbound call, a visit, a letter, a note."""
    if body.outcome is not None and body.kind != "call":
        raise DomainError("outcome", "only a call has an outcome")
    return EntryOut.of(await _desk(request).log_contact(principal.tenant_id, customer_id, kind=body.kind,
                                                        outcome=body.outcome, note=body.note, by=principal.key_id))


class CorrectionIn(BaseModel):
    note: SafeText = Field(min_length=1, max_length=2000, description="what was wrong and what is right")


@router.post("/contact-log/{entry_id}/corrections", response_model=EntryOut, status_code=201, tags=["contact log"])
async def correct_entry(entry_id: uuid.UUID, body: CorrectionIn, principal: Collector, request: Request) -> EntryOut:
    """Correct an entry: a new entry naming it (the original stays as it was)."""
    return EntryOut.of(await _desk(request).correct(principal.tenant_id, entry_id, body.note, principal.key_id))



# -- the collections report -----------------------------------------------------------------------

@router.get("/reports/collections", tags=["reports"], responses={200: {"content": {"text/csv": {}}}})
async def collections_report(principal: Reader, request: Request,
                             period: Annotated[str, Query(max_length=40, description=(
                                 "2026-03 (a month), 2026-Q1, 2026, or 2026-03-01..2026-03-15 (UTC days)"))],
                             format: Annotated[Literal["json", "csv"], Query()] = "json") -> Response:
    """Which dunning steps work (notices, what they listed, what was paid on it within 7 days),
    promises taken and kept, disputes by reason, and per collector: tasks done, contacts
    reached, promises taken and kept, and what came in within 7 days of their calls. Money per
    currency in minor units. As JSON, or as CSV (section, name, currency, metric, value) with
    text cells a spreadsheet will not run as formulas."""
    try:
        first, end = parse_period(period)
    except PeriodError as e:
        raise DomainError("period", str(e)) from None
    report = await reports.collections_report(request.app.state.pool, principal.tenant_id, first, end)
    if format == "json":
        return JSONResponse(report)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["section", "name", "currency", "metric", "value"])
    for row in reports.report_rows(report):
        writer.writerow([spreadsheet_cell(c) for c in row])
    return Response(out.getvalue(), media_type="text/csv; charset=utf-8", headers={
        "Content-Disposition": f'attachment; filename="collections-{first.isoformat()}.csv"'})
