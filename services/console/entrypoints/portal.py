"""The customer portal's pages: the signed link in each notice opens what the customer owes, in
their language; they can download a statement, read how to pay, promise a date, dispute an
invoice or set up a plan within what their policy allows. Each form is a POST that becomes
dunning's portal call, which runs the same use case (and makes the same event) as a
collector's action. Opening the page changes nothing."""
from __future__ import annotations

from datetime import date
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from services.console.adapters.apis import ApiError
from services.console.domain import forms
from services.console.domain.forms import FormError
from services.console.entrypoints.pages import _apis, render

router = APIRouter()
Token = Annotated[str, Path(min_length=10, max_length=2000)]
FLASHES = {"promise", "dispute", "plan"}


def _here(token: str, done: str | None = None) -> str:
    return f"/p/{quote(token, safe='')}" + (f"?done={done}" if done else "")


async def _page(request: Request, token: str, *, status: int = 200, problems: list | None = None,
                form: dict | None = None, flash: str | None = None) -> HTMLResponse:
    try:
        view = await _apis(request).portal("GET", token)
    except ApiError as e:
        reason = "portal_link_expired" if e.status == 410 else "portal_link_invalid" if e.status in (404, 422) else None
        return render(request, "portal_gone.html.j2", None, status=e.status if reason else 502,
                      problems=[("", reason)] if reason else [("", r) for _, r in e.problems])
    return render(request, "portal.html.j2", None, language=view["language"], status=status, view=view, token=token,
                  base=_here(token), problems=problems or [], form=form or {},
                  portal_flash=("portal_flash_" + flash) if flash in FLASHES else None,
                  today=date.fromisoformat(view["today"]))


@router.get("/p/{token}", response_class=HTMLResponse)
async def portal_page(request: Request, token: Token,
                      done: Annotated[str | None, Query(max_length=20)] = None) -> HTMLResponse:
    return await _page(request, token, flash=done)


@router.get("/p/{token}/statement.pdf")
async def portal_statement(request: Request, token: Token) -> Response:
    try:
        pdf = await _apis(request).portal_pdf(token)
    except ApiError as e:
        return await _page(request, token, status=e.status if 400 <= e.status < 500 else 502,
                           problems=[(f, r) for f, r in e.problems])
    return Response(pdf, media_type="application/pdf",
                    headers={"Content-Disposition": 'attachment; filename="statement.pdf"'})


async def _act(request: Request, token: str, action: str) -> Response:
    form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    apis = _apis(request)
    try:
        body: dict[str, Any]
        if action == "promise":
            body = {"case_id": form.get("case_id") or "-",
                    "promised_date": forms.day(form.get("promised_date"), "promised_date").isoformat()}
            await apis.portal("POST", token, "/promises", body)
        elif action == "dispute":
            d = forms.dispute(form)
            await apis.portal("POST", token, "/disputes", {"invoice_id": d.get("invoice_id"),
                                                            "reason_code": d["reason_code"], "description": d["reason"]})
        else:
            plan = forms.plan(form)
            await apis.portal("POST", token, "/payment-plans", {"case_id": form.get("case_id") or "-", **plan})
    except (ApiError, FormError) as e:
        problems = [(e.field, e.reason)] if isinstance(e, FormError) else e.problems
        status = 422 if isinstance(e, FormError) else (e.status if 400 <= e.status < 500 else 502)
        return await _page(request, token, status=status, problems=problems, form=form)
    return RedirectResponse(_here(token, action), status_code=303)


for _action in ("promise", "dispute", "plan"):
    def _route(action: str = _action):
        async def post(request: Request, token: Token) -> Response:
            return await _act(request, token, action)
        post.__name__ = f"portal_{action}"
        return post

    router.add_api_route(f"/p/{{token}}/{_action}", _route(), methods=["POST"], include_in_schema=False)
