"""FastAPI pieces every service shares: health, readiness, metrics, uniform 4xx errors."""
from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import asyncpg
from fastapi import Depends, FastAPI, HTTPException, Path, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.auth import Principal, require_role
from shared.contract.text import SafeText
from shared.db import is_transient
from shared.logging import get_logger
from shared.outbox import discard_held, held_events, retry_held

# Longer than any client's or load balancer's idle timeout (httpx 5 s, cloud load balancers 60 s),
# so the client closes an idle keep-alive connection first. With uvicorn's 5 s, a client reusing a
# connection just as the server closed it got a ReadError (a 502 behind a load balancer).
KEEP_ALIVE_SECONDS = 75

log = get_logger(__name__)


class DomainError(Exception):
    """A request that is well-formed but not allowed; becomes a 4xx naming the field."""

    def __init__(self, field: str, reason: str, status_code: int = 422) -> None:
        super().__init__(f"{field}: {reason}")
        self.field, self.reason, self.status_code = field, reason, status_code


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def raw_json_body(model: type[BaseModel]) -> tuple[Any, dict[str, Any]]:
    """(dependency, openapi_extra) for a large request body that pydantic-core parses straight
    from the bytes: a third of the time FastAPI's json.loads plus validation takes on a
    10,000-item bulk request. Errors are the usual 422 naming the field; the body is documented
    as if it were declared. Use: `body: Annotated[M, dep]` and `openapi_extra=extra` on the route."""

    async def parse(request: Request) -> BaseModel:
        try:
            return model.model_validate_json(await request.body())
        except ValidationError as exc:
            raise RequestValidationError(
                [{**err, "loc": ("body", *err["loc"])} for err in exc.errors(include_url=False)]) from None

    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    if schema.get("$defs"):
        raise ValueError(f"{model.__name__}: raw_json_body takes flat models only")
    extra = {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}
    return Depends(parse), extra


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            reason, field = err["msg"].removeprefix("Value error, "), _field(tuple(err["loc"]))
            if err.get("type") == "json_invalid":
                reason, field = f"invalid JSON: {err.get('ctx', {}).get('error', reason)}", "body"
            problems.append({"field": field, "reason": reason})
        return JSONResponse(status_code=422, content={"error": "invalid_request", "problems": problems})

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 413:  # a streamed body that grew past the limit while being read
            return JSONResponse(status_code=413, content={"error": "too_large", "problems": [
                {"field": "body", "reason": "larger than this service takes (MAX_REQUEST_BYTES)"}]})
        return await http_exception_handler(request, exc)

    @app.exception_handler(asyncpg.PostgresError)
    @app.exception_handler(asyncpg.InterfaceError)
    @app.exception_handler(OSError)
    async def _database(request: Request, exc: Exception) -> JSONResponse:
        # The database away, busy or too slow (statement timeout): the client may try again;
        # anything else is a bug and stays a 500.
        if not is_transient(exc):
            raise exc
        log.warning("database unavailable for a request", path=request.url.path, error=type(exc).__name__)
        return JSONResponse(status_code=503, headers={"Retry-After": "5"}, content={
            "error": "unavailable", "problems": [{"field": "database", "reason": "busy or unavailable; try again"}]})

    @app.exception_handler(DomainError)
    async def _domain(_request: Request, exc: DomainError) -> JSONResponse:
        return JSONResponse(
            status_code=exc.status_code,
            content={"error": "rejected", "problems": [{"field": exc.field, "reason": exc.reason}]},
        )


# Every response: no MIME sniffing, no framing (clickjacking of the customer pages), no
# referrer (customer links carry their token in the path), nothing loaded from elsewhere.
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy",
     b"default-src 'none'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; form-action 'self';"
     b" frame-ancestors 'none'; base-uri 'none'"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
_DOCS = ("/docs", "/redoc")  # Swagger UI and ReDoc load their scripts from a CDN


class SecurityHeaders:
    """Pure ASGI (no BaseHTTPMiddleware: it would buffer streamed responses)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        docs = scope["path"].startswith(_DOCS)

        async def with_headers(message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in SECURITY_HEADERS
                         if k not in present and not (docs and k == b"content-security-policy")]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, with_headers)


OPS_PATHS = ("/metrics", "/docs", "/redoc", "/openapi.json")


class OpsGuard:
    """With OPS_TOKEN set, metrics and the API docs answer only `Authorization: Bearer <token>`
    (Prometheus sends it with `authorization: {credentials: ...}`); health stays open for probes."""

    def __init__(self, app, token: str) -> None:
        self.app, self.expected = app, f"Bearer {token}".encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(OPS_PATHS):
            given = dict(scope.get("headers", [])).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                response = JSONResponse(status_code=401, headers={"WWW-Authenticate": "Bearer"}, content={
                    "error": "unauthorized", "problems": [
                        {"field": "authorization", "reason": "metrics and docs need the ops token (OPS_TOKEN)"}]})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


ReadinessCheck = Callable[[], Awaitable[dict[str, bool]]]
LivenessCheck = Callable[[], Awaitable[dict[str, str]]]


def install_health(app: FastAPI, readiness: ReadinessCheck, liveness: LivenessCheck | None = None) -> None:
    @app.get("/health/live", tags=["ops"], summary="The process is up and none of its background tasks is down")
    async def live() -> JSONResponse:
        down = await liveness() if liveness else {}
        if down:
            return JSONResponse(status_code=503, content={"status": "down", "tasks_down": down})
        return JSONResponse(content={"status": "ok"})

    @app.get("/health/ready", tags=["ops"], summary="Dependencies reachable, consumers assigned")
    async def ready() -> JSONResponse:
        checks = await readiness()
        ok = all(checks.values())
        return JSONResponse(status_code=200 if ok else 503, content={"ready": ok, "checks": checks})

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(), media_type=CONTENT_TYPE_LATEST)


Admin = Annotated[Principal, Depends(require_role("admin"))]


class DiscardHeld(BaseModel):
    reason: SafeText = Field(min_length=3, max_length=500, description="why the event is given up (kept with it)")


RowId = Annotated[int, Path(ge=1, le=2**63 - 1, description="the held event's id (GET /v1/outbox/held)")]


def install_outbox_admin(app: FastAPI) -> None:
    """Events the outbox relay could not publish (each holds back the later events of its key):
    list them, send one again, or discard one (kept aside with who and why). Admin keys only,
    and only their own tenant's events."""
    @app.get("/v1/outbox/held", tags=["ops"], summary="Events that could not be published, first of each key first")
    async def list_held(request: Request, who: Admin) -> list[dict[str, Any]]:
        return [vars(h) for h in await held_events(request.app.state.pool, who.tenant_id)]

    @app.post("/v1/outbox/held/{row_id}/retry", tags=["ops"], summary="Publish a held event again at the next batch")
    async def retry(row_id: RowId, request: Request, who: Admin) -> dict[str, Any]:
        if not await retry_held(request.app.state.pool, row_id, who.tenant_id):
            raise HTTPException(404, f"no held event {row_id}")
        return {"id": row_id, "status": "retrying"}

    @app.post("/v1/outbox/held/{row_id}/discard", tags=["ops"], summary="Give up a held event; its key moves on")
    async def discard(row_id: RowId, body: DiscardHeld, request: Request, who: Admin) -> dict[str, Any]:
        if not await discard_held(request.app.state.pool, row_id, by=f"api key {who.key_id}", reason=body.reason,
                                  tenant_id=who.tenant_id):
            raise HTTPException(404, f"no held event {row_id}")
        return {"id": row_id, "status": "discarded"}
