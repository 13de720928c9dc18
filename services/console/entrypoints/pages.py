"""The console's pages. Each page reads through the services' APIs with the signed-in key, and
each form POSTs here and becomes the same API call a program would make: so a promise taken on
a page is the same PromiseRecorded event, checked by the same rules."""
from __future__ import annotations

import time
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from prometheus_client import Histogram

from services.console.adapters.apis import ApiError, PlatformApis
from services.console.adapters.charts import bars
from services.console.adapters.i18n import Texts
from services.console.domain import forms
from services.console.domain.forms import FormError
from services.console.domain.session import LANGUAGES, Sealer, Session
from shared.contract.money import currency_exponent
from shared.logging import get_logger

log = get_logger(__name__)
router = APIRouter()
COOKIE = "tahsilat_console"
PAGE_SECONDS = Histogram("tahsilat_console_page_seconds", "Console pages, from request to rendered HTML", ["page"],
                         buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2.5, 5))
FLASHES = {"outcome", "promise", "plan", "dispute", "resolved", "hold", "release", "note", "taken", "assigned"}


class SignInNeeded(Exception):
    """No session, or the services no longer take its key: back to the sign-in page."""


def _state(request: Request):
    return request.app.state


def current_session(request: Request) -> Session:
    session = _state(request).sealer.open(request.cookies.get(COOKIE))
    if session is None:
        raise SignInNeeded()
    return session


Signed = Annotated[Session, Depends(current_session)]


def _apis(request: Request) -> PlatformApis:
    return _state(request).apis


def _today(request: Request) -> date:
    return _state(request).clock.now().date()


def render(request: Request, template: str, session: Session | None, *, status: int = 200,
           language: str | None = None, **context: Any) -> HTMLResponse:
    started = time.perf_counter()
    lang = language or (session.language if session else "en")
    t = Texts(lang, getattr(session, "timezone", "UTC") if session else "UTC")
    form_token = _state(request).sealer.form_token(session) if session else ""
    response = _state(request).templates.TemplateResponse(request, template, {
        "t": t, "session": session, "form_token": form_token, "now": _state(request).clock.now(), "flash": None,
        "problems": [], "active": None, "back": "/worklist", **context},
        status_code=status)
    PAGE_SECONDS.labels(template.removesuffix(".html.j2")).observe(time.perf_counter() - started)
    return response


def _problems(error: ApiError | FormError) -> list[tuple[str, str]]:
    if isinstance(error, FormError):
        return [(error.field, "error_form" if error.field == "form_token" else error.reason)]
    return error.problems or [("", f"{error.service} answered {error.status}")]


def _error_status(error: ApiError | FormError) -> int:
    if isinstance(error, FormError):
        return 422
    return error.status if 400 <= error.status < 500 else 502


async def _guard(request: Request, session: Session) -> dict[str, str]:
    """The posted form, once its token proves it came from a page of this session."""
    form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    if not _state(request).sealer.form_token_ok(session, form.get("form_token")):
        raise FormError("form_token", "expired")
    return form


def _after_api_error(error: ApiError) -> None:
    if error.status == 401:
        raise SignInNeeded()


# -- signing in and out ---------------------------------------------------------------------------

@router.get("/", include_in_schema=False)
async def home(request: Request) -> Response:
    session = _state(request).sealer.open(request.cookies.get(COOKIE))
    return RedirectResponse("/worklist" if session else "/signin", status_code=303)


@router.get("/signin", response_class=HTMLResponse)
async def signin_page(request: Request, ended: bool = False,
                      lang: Annotated[str | None, Query(pattern="^(en|tr|cs|fa)$")] = None) -> HTMLResponse:
    return render(request, "signin.html.j2", None, language=lang or "en",
                  problems=[("", "session_ended")] if ended else [], chosen=lang or "")


@router.post("/signin", response_class=HTMLResponse)
async def signin(request: Request, key: Annotated[str, Form(max_length=200)] = "",
                 language: Annotated[str, Form(max_length=8)] = "") -> Response:
    chosen = language if language in LANGUAGES else ""
    shown = chosen or "en"

    def refuse(message: str, status: int) -> HTMLResponse:
        return render(request, "signin.html.j2", None, language=shown, status=status, problems=[("key", message)],
                      chosen=chosen)

    key = key.strip()
    if not key:
        return refuse("signin_bad_key", 401)
    try:
        who = await _apis(request).whoami(key)
    except ApiError as e:
        if e.status in (401, 403):
            return refuse("signin_bad_key", 401)
        return render(request, "signin.html.j2", None, language=shown, status=502, chosen=chosen,
                      problems=_problems(e))
    collector = who.get("collector")
    if who["role"] not in ("admin", "collector"):
        return refuse("signin_wrong_role", 403)
    if who["role"] == "collector" and collector is None:
        return refuse("signin_no_collector", 403)
    language = chosen or (collector or {}).get("language") or "en"
    session = Session(key=key, role=who["role"], name=(collector or {}).get("name") or who["key_id"],
                      language=language, collector_id=(collector or {}).get("collector_id"),
                      timezone=(collector or {}).get("timezone") or "UTC")
    sealer: Sealer = _state(request).sealer
    response = RedirectResponse("/worklist", status_code=303)
    response.set_cookie(COOKIE, sealer.seal(session), max_age=int(sealer.max_age), httponly=True,
                        secure=_state(request).settings.cookie_secure, samesite="strict", path="/")
    log.info("console_sign_in", role=who["role"], key_id=who["key_id"], tenant_id=who["tenant_id"])
    return response


@router.post("/signout")
async def signout(request: Request, session: Signed) -> Response:
    await _guard(request, session)
    response = RedirectResponse("/signin", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


# -- the worklist ---------------------------------------------------------------------------------

@router.get("/worklist", response_class=HTMLResponse)
async def worklist(request: Request, session: Signed, queue: bool = False,
                   collector: Annotated[str | None, Query(max_length=64)] = None,
                   done: Annotated[str | None, Query(max_length=20)] = None) -> HTMLResponse:
    apis = _apis(request)
    collectors: list[dict] = []
    try:
        if session.manager:
            collectors = await apis.collectors(session.key)
            if not collector and not session.collector_id:
                queue = True
        whose = collector if session.manager else None
        tasks = await apis.worklist(session.key, queue=queue, collector_id=whose)
    except ApiError as e:
        _after_api_error(e)
        return render(request, "worklist.html.j2", session, status=_error_status(e), problems=_problems(e), tasks=[],
                      queue=queue, collectors=collectors, collector=collector, flash=None)
    names = {c["collector_id"]: c["name"] for c in collectors}
    now = _state(request).clock.now()
    for task in tasks:
        task["due_now"] = datetime.fromisoformat(task["due_at"]) <= now
    back = "/worklist?" + urlencode({"queue": "1"} if queue else {"collector": collector} if collector else {})
    return render(request, "worklist.html.j2", session, tasks=tasks, queue=queue, collectors=collectors,
                  collector=collector, whose=names.get(collector or "", collector), problems=[], back=back.rstrip("?"),
                  flash=done if done in FLASHES else None)


@router.post("/tasks/{task_id}/take")
async def take(request: Request, task_id: str, session: Signed) -> Response:
    """A collector takes a task from the queue."""
    return await _assign(request, session, task_id, taking=True)


@router.post("/tasks/{task_id}/assign")
async def assign(request: Request, task_id: str, session: Signed) -> Response:
    """A manager gives a task to a collector, or back to the queue."""
    return await _assign(request, session, task_id, taking=False)


async def _assign(request: Request, session: Session, task_id: str, *, taking: bool) -> Response:
    back = "/worklist?queue=1"
    try:
        form = await _guard(request, session)
        back = form.get("back") if (form.get("back") or "").startswith("/worklist") else back
        if taking:
            if not session.collector_id:
                raise FormError("task", "only a collector takes tasks")
            to: str | None = session.collector_id
        else:
            to = (form.get("collector_id") or "").strip() or None
        await _apis(request).assign(session.key, task_id, to)
    except (ApiError, FormError) as e:
        if isinstance(e, ApiError):
            _after_api_error(e)
        return render(request, "worklist.html.j2", session, status=_error_status(e), problems=_problems(e), tasks=[],
                      queue=True, collectors=[], collector=None, flash=None)
    sep = "&" if "?" in back else "?"
    return RedirectResponse(f"{back}{sep}done={'taken' if taking else 'assigned'}", status_code=303)


# -- the customer page and its actions ------------------------------------------------------------

def _customer_url(customer_id: str, task: str | None = None, done: str | None = None) -> str:
    query = urlencode({k: v for k, v in (("task", task), ("done", done)) if v})
    return f"/customers/{quote(customer_id, safe='')}" + (f"?{query}" if query else "")


async def _customer_page(request: Request, session: Session, customer_id: str, task_id: str | None, *,
                         status: int = 200, problems: list[tuple[str, str]] | None = None,
                         form: dict[str, str] | None = None, flash: str | None = None) -> HTMLResponse:
    today = _today(request)
    data = await _apis(request).customer(session.key, customer_id, session.language, today - timedelta(days=90), today)
    for error in data["errors"]:
        _after_api_error(error)
    tasks = data["tasks"] or []
    task = next((x for x in tasks if x["task_id"] == task_id), None) or next(
        (x for x in tasks if x["assigned_to"] and x["assigned_to"] == session.collector_id), None)
    cases = [c for c in (data["cases"] or []) if c["status"] == "open"]
    items = [dict(i, currency=c["currency"], case_id=c["case_id"]) for c in cases for i in c["items"]
             if i["open_minor"] > 0 and i["status"] == "open"]
    unreachable = sorted({e.service for e in data["errors"] if e.status == 0 or e.status >= 500})
    names = {c["key_id"]: c["name"] for c in data["collectors"] or [] if c["key_id"]}  # who, in the contact log
    return render(request, "customer.html.j2", session, status=status, customer_id=customer_id, data=data, task=task,
                  cases=cases, items=items, unreachable=unreachable, names=names, problems=problems or [], form=form or {},
                  flash=flash if flash in FLASHES else None)


@router.get("/customers/{customer_id}", response_class=HTMLResponse)
async def customer(request: Request, customer_id: str, session: Signed,
                   task: Annotated[str | None, Query(max_length=64)] = None,
                   done: Annotated[str | None, Query(max_length=20)] = None) -> HTMLResponse:
    return await _customer_page(request, session, customer_id, task, flash=done)


def _case(form: dict[str, str]) -> tuple[str, str]:
    """The case chosen on the form ("<case id>:<currency>")."""
    case_id, _, currency = (form.get("case") or "").partition(":")
    if not case_id or len(currency) != 3 or not currency.isalpha():
        raise FormError("case", "choose a case")
    return case_id, currency.upper()


async def _act(request: Request, session: Session, customer_id: str, action: str) -> Response:
    form: dict[str, str] = {}
    apis, key = _apis(request), session.key
    try:
        form = await _guard(request, session)
        task = form.get("task_id") or None
        if action == "outcome":
            if not task:
                raise FormError("task_id", "no task to close")
            body = forms.outcome(form, form.get("currency") or "EUR", session.timezone)
            await apis.outcome(key, task, body)
        elif action == "promise":
            case_id, currency = _case(form)
            await apis.promise(key, case_id, {**forms.promise(form, currency), "channel": "phone",
                                              "note": (form.get("note") or "").strip() or None})
        elif action == "plan":
            case_id, _ = _case(form)
            await apis.plan(key, case_id, forms.plan(form))
        elif action == "dispute":
            d = forms.dispute(form)
            await apis.open_dispute(key, {"customer_id": customer_id, "reason_code": d["reason_code"],
                                          "description": d["reason"], "invoice_id": d.get("invoice_id")})
        elif action == "resolve":
            outcome = form.get("outcome") if form.get("outcome") in ("accepted", "rejected") else "rejected"
            await apis.resolve_dispute(key, form.get("dispute_id") or "-", {
                "outcome": outcome, "resolution": forms.reason(form, "resolution", max_length=1000)})
        elif action == "hold":
            await apis.hold_invoice(key, form.get("invoice_id") or "-", forms.reason(form))
        elif action == "release":
            await apis.release_invoice(key, form.get("invoice_id") or "-")
        elif action == "note":
            await apis.log_contact(key, customer_id, forms.contact(form))
        else:  # pragma: no cover - the routes name the actions
            raise FormError("action", "unknown")
    except (ApiError, FormError) as e:
        if isinstance(e, ApiError):
            _after_api_error(e)
        log.info("console_action_refused", action=action, problems=_problems(e))
        return await _customer_page(request, session, customer_id, form.get("task_id"), status=_error_status(e),
                                    problems=_problems(e), form=form)
    log.info("console_action", action=action, key_id=key.split("_")[1] if key.count("_") >= 2 else "?")
    flash = {"outcome": "outcome", "promise": "promise", "plan": "plan", "dispute": "dispute", "resolve": "resolved",
             "hold": "hold", "release": "release", "note": "note"}[action]
    if action == "outcome" and form.get("outcome") in ("promise_taken", "plan_agreed", "dispute_raised"):
        flash = {"promise_taken": "promise", "plan_agreed": "plan", "dispute_raised": "dispute"}[form["outcome"]]
    return RedirectResponse(_customer_url(customer_id, None, flash), status_code=303)


for _action in ("outcome", "promise", "plan", "dispute", "resolve", "hold", "release", "note"):
    def _route(action: str = _action):
        async def post(request: Request, customer_id: str, session: Signed) -> Response:
            return await _act(request, session, customer_id, action)
        post.__name__ = f"post_{action}"
        return post

    router.add_api_route(f"/customers/{{customer_id}}/{_action}", _route(), methods=["POST"],
                         include_in_schema=False)


# -- the manager's dashboard ----------------------------------------------------------------------

@router.get("/dashboard", response_class=HTMLResponse)
async def dashboard(request: Request, session: Signed,
                    period: Annotated[str | None, Query(max_length=40)] = None) -> HTMLResponse:
    today = _today(request)
    period = (period or "").strip() or today.strftime("%Y-%m")
    t = Texts(session.language, session.timezone)
    try:
        data = await _apis(request).dashboard(session.key, period, today)
    except ApiError as e:
        _after_api_error(e)
        return render(request, "dashboard.html.j2", session, status=_error_status(e), problems=_problems(e),
                      period=period, data=None, charts={})
    return render(request, "dashboard.html.j2", session, period=period, data=data, problems=[],
                  charts=_charts(t, data))


def _bucket(t: Texts, name: str) -> str:
    return t("bucket_current") if name == "current" else t("bucket_days", range=t.digits(name))


def _charts(t: Texts, data: dict) -> dict[str, Any]:
    """Per currency: the aging trend (stacked by bucket) and what each step collected, in major
    units on the chart and to the cent in its table."""
    out: dict[str, Any] = {"aging": [], "steps": []}
    trend = data["trend"]
    days = [date.fromisoformat(d) for d in trend["days"]]
    buckets = trend["buckets"]
    for currency, by_day in trend["by_currency"].items():
        scale = 10 ** currency_exponent(currency)
        minor = {d: [by_day[d.isoformat()].get(b, 0) for b in buckets] for d in days}
        svg = bars([t.day(d) for d in days],
                   {_bucket(t, b): [minor[d][n] / scale for d in days] for n, b in enumerate(buckets)},
                   lambda v, c=currency, k=scale: t.money(round(v * k), c), stacked=True)
        out["aging"].append({"currency": currency, "svg": svg, "columns": [_bucket(t, b) for b in buckets],
                             "rows": [(d, minor[d]) for d in days]})
    steps = data["collections"]["steps"]
    for currency in sorted({c for s in steps for c in s["listed_minor"]}):
        scale = 10 ** currency_exponent(currency)
        mine = [s for s in steps if currency in s["listed_minor"]]
        svg = bars([s["step"] for s in mine],
                   {t("listed"): [s["listed_minor"][currency] / scale for s in mine],
                    t("collected_7d"): [s["collected_7d_minor"].get(currency, 0) / scale for s in mine]},
                   lambda v, c=currency, k=scale: t.money(round(v * k), c))
        out["steps"].append({"currency": currency, "svg": svg, "steps": mine})
    return out
