"""The services' APIs as the console calls them: every call carries the signed-in person's key,
so each service decides, as for any program, what that key may read and do."""
from __future__ import annotations

import asyncio
import time
from urllib.parse import quote
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import httpx
from prometheus_client import Counter, Histogram

UPSTREAM_SECONDS = Histogram("tahsilat_console_upstream_seconds", "Console calls to the services' APIs",
                             ["service"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
UPSTREAM_ERRORS = Counter("tahsilat_console_upstream_errors_total",
                          "Console calls answered with an error or not at all", ["service", "status"])


@dataclass
class ApiError(Exception):
    """A service said no (4xx) or could not be reached (status 0 / 5xx); `problems` as the
    service named them: (field, reason)."""

    status: int
    service: str
    problems: list[tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.service} {self.status}: " + "; ".join(f"{f}: {r}" for f, r in self.problems)


def _problems(response: httpx.Response) -> list[tuple[str, str]]:
    try:
        body = response.json()
    except ValueError:
        return [("", response.text[:200] or response.reason_phrase)]
    if isinstance(body, dict) and isinstance(body.get("problems"), list):
        return [(str(p.get("field", "")), str(p.get("reason", ""))) for p in body["problems"] if isinstance(p, dict)]
    if isinstance(body, dict) and "detail" in body:
        return [("", str(body["detail"]))]
    return [("", str(body)[:200])]


def _customer_path(customer_id: str) -> str:
    return "/v1/customers/" + quote(customer_id, safe="")  # an id may hold "/" or "?"


class PlatformApis:
    def __init__(self, client: httpx.AsyncClient, dunning: str, invoicing: str, risk: str) -> None:
        self.client = client
        self.base = {"dunning": dunning.rstrip("/"), "invoicing": invoicing.rstrip("/"), "risk": risk.rstrip("/")}

    async def call(self, service: str, method: str, path: str, key: str, *, params: dict | None = None,
                   json: Any = None, missing_ok: bool = False) -> Any:
        """The JSON answer; None for a 404 when `missing_ok`; ApiError otherwise."""
        started = time.perf_counter()
        try:
            response = await self.client.request(method, self.base[service] + path, params=params, json=json,
                                                 headers={"X-API-Key": key} if key else {})
        except httpx.HTTPError as exc:
            UPSTREAM_ERRORS.labels(service, "0").inc()
            raise ApiError(0, service, [("", f"{service} cannot be reached ({type(exc).__name__})")]) from None
        finally:
            UPSTREAM_SECONDS.labels(service).observe(time.perf_counter() - started)
        if response.status_code == 404 and missing_ok:
            return None
        if response.status_code >= 400:
            UPSTREAM_ERRORS.labels(service, str(response.status_code)).inc()
            raise ApiError(response.status_code, service, _problems(response))
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    async def ready(self) -> dict[str, bool]:
        async def one(service: str) -> bool:
            try:
                return (await self.client.get(self.base[service] + "/health/live", timeout=2)).status_code == 200
            except httpx.HTTPError:
                return False

        names = list(self.base)
        return dict(zip(names, await asyncio.gather(*(one(s) for s in names))))

    # -- reads ------------------------------------------------------------------------------
    async def whoami(self, key: str) -> dict:
        return await self.call("dunning", "GET", "/v1/whoami", key)

    async def worklist(self, key: str, *, queue: bool = False, collector_id: str | None = None,
                       limit: int = 500) -> list[dict]:
        params: dict[str, Any] = {"limit": limit}
        if queue:
            params["queue"] = "true"
        elif collector_id:
            params["collector_id"] = collector_id
        return await self.call("dunning", "GET", "/v1/worklist", key, params=params)

    async def collectors(self, key: str) -> list[dict]:
        return await self.call("dunning", "GET", "/v1/collectors", key)

    async def customer(self, key: str, customer_id: str, language: str, statement_from: date, today: date) -> dict:
        """Everything the customer page shows, fetched at once from the three services."""
        cid = {"customer_id": customer_id}
        path = _customer_path(customer_id)
        calls = {
            "cases": self.call("dunning", "GET", "/v1/cases", key, params={**cid, "limit": 50}),
            "tasks": self.call("dunning", "GET", "/v1/tasks", key, params={**cid, "status": "open"}),
            "log": self.call("dunning", "GET", f"{path}/contact-log", key, params={"limit": 100}),
            "promises": self.call("dunning", "GET", "/v1/promises", key, params=cid),
            "plans": self.call("dunning", "GET", "/v1/payment-plans", key, params=cid),
            "disputes": self.call("dunning", "GET", "/v1/disputes", key, params=cid),
            "statement": self.call("invoicing", "GET", f"{path}/statement", key, missing_ok=True,
                                   params={"from": statement_from.isoformat(), "to": today.isoformat()}),
            "risk": self.call("risk", "GET", f"{path}/risk", key, params={"language": language}, missing_ok=True),
            "credit": self.call("risk", "GET", f"{path}/credit", key, missing_ok=True),
            "collectors": self.call("dunning", "GET", "/v1/collectors", key),
        }
        results = await asyncio.gather(*calls.values(), return_exceptions=True)
        out: dict[str, Any] = {"errors": []}
        for name, result in zip(calls, results):
            if isinstance(result, ApiError):
                out[name] = None
                out["errors"].append(result)  # one service down: the rest of the page still shows
            elif isinstance(result, BaseException):
                raise result
            else:
                out[name] = result
        return out

    async def dashboard(self, key: str, period: str, as_of: date) -> dict:
        calls = {
            "collections": self.call("dunning", "GET", "/v1/reports/collections", key, params={"period": period}),
            "cei": self.call("invoicing", "GET", "/v1/reports/cei", key, params={"period": period}),
            "dso": self.call("invoicing", "GET", "/v1/reports/dso", key, params={"as_of": as_of.isoformat(), "months": 3}),
            "trend": self.call("invoicing", "GET", "/v1/reports/aging-trend", key, params={"as_of": as_of.isoformat()}),
        }
        results = await asyncio.gather(*calls.values(), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return dict(zip(calls, results))

    # -- the customer portal: the signed link is the credential, no key ---------------------------
    async def portal(self, method: str, token: str, path: str = "", json: Any = None) -> Any:
        return await self.call("dunning", method, f"/v1/portal/{quote(token, safe='')}{path}", "", json=json)

    async def portal_pdf(self, token: str) -> bytes:
        response = await self.client.get(f"{self.base['dunning']}/v1/portal/{quote(token, safe='')}/statement.pdf")
        if response.status_code >= 400:
            raise ApiError(response.status_code, "dunning", _problems(response))
        return response.content

    # -- writes: the same calls a program would make -----------------------------------------
    async def outcome(self, key: str, task_id: str, body: dict) -> dict:
        return await self.call("dunning", "POST", f"/v1/tasks/{task_id}/outcome", key, json=body)

    async def assign(self, key: str, task_id: str, collector_id: str | None) -> dict:
        """To a collector (a collector takes one from the queue; a manager gives it to anyone), or
        back to the queue (None)."""
        return await self.call("dunning", "POST", f"/v1/tasks/{quote(task_id, safe='')}/assign", key,
                               json={"collector_id": collector_id})

    async def promise(self, key: str, case_id: str, body: dict) -> dict:
        return await self.call("dunning", "POST", f"/v1/cases/{case_id}/promises", key, json=body)

    async def plan(self, key: str, case_id: str, body: dict) -> dict:
        return await self.call("dunning", "POST", f"/v1/cases/{case_id}/payment-plans", key, json=body)

    async def open_dispute(self, key: str, body: dict) -> dict:
        return await self.call("dunning", "POST", "/v1/disputes", key, json=body)

    async def resolve_dispute(self, key: str, dispute_id: str, body: dict) -> dict:
        return await self.call("dunning", "POST", f"/v1/disputes/{dispute_id}/resolve", key, json=body)

    async def hold_invoice(self, key: str, invoice_id: str, reason: str) -> dict:
        return await self.call("dunning", "PUT", f"/v1/invoices/{invoice_id}/hold", key, json={"reason": reason})

    async def release_invoice(self, key: str, invoice_id: str) -> dict:
        return await self.call("dunning", "DELETE", f"/v1/invoices/{invoice_id}/hold", key)

    async def log_contact(self, key: str, customer_id: str, body: dict) -> dict:
        path = _customer_path(customer_id)
        return await self.call("dunning", "POST", f"{path}/contact-log", key, json=body)
