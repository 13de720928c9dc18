"""The console's composition root: one HTTP client to the services, the session sealer, the
templates, and the pages; health, readiness (the services answer) and metrics like every service."""
from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import jinja2
from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from services.console.adapters.apis import PlatformApis
from services.console.domain.forms import FormError
from services.console.entrypoints import pages, portal
from services.console.settings import ConsoleSettings
from shared.clock import clock_from
from shared.http import OpsGuard, SecurityHeaders, install_health

HERE = Path(__file__).resolve().parent
STYLESHEET = (HERE / "static" / "console.css").read_bytes()


def build(settings: ConsoleSettings) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with httpx.AsyncClient(timeout=settings.api_timeout_seconds,
                                     limits=httpx.Limits(max_connections=100, max_keepalive_connections=20)) as client:
            app.state.apis = PlatformApis(client, settings.dunning_url, settings.invoicing_url, settings.risk_url)
            yield

    app = FastAPI(title="Tahsilat console", description="Pages for collectors and managers over the services' APIs",
                  version="1.0.0", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None,
                  max_body_size=256 * 1024)
    app.state.settings = settings
    app.state.clock = clock_from(settings.clock_file)
    app.state.sealer = pages.Sealer(settings.session_secret.get_secret_value(), settings.session_hours * 3600)
    app.state.templates = Jinja2Templates(env=jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True, trim_blocks=True, lstrip_blocks=True,
        undefined=jinja2.StrictUndefined))
    stack = app.build_middleware_stack
    ops_token = settings.ops_token.get_secret_value() if settings.ops_token else None
    app.build_middleware_stack = lambda: SecurityHeaders(OpsGuard(stack(), ops_token) if ops_token else stack())

    async def ready() -> dict[str, bool]:
        return await app.state.apis.ready()

    install_health(app, ready)

    @app.exception_handler(pages.SignInNeeded)
    async def _sign_in(_request: Request, _exc: pages.SignInNeeded) -> Response:
        response = RedirectResponse("/signin?ended=1", status_code=303)
        response.delete_cookie(pages.COOKIE, path="/")
        return response

    @app.exception_handler(FormError)
    async def _expired(request: Request, exc: FormError) -> Response:
        return pages.render(request, "error.html.j2", None, status=422, problems=[(exc.field, "error_form")])

    @app.get("/console.css", include_in_schema=False)
    async def stylesheet() -> Response:
        return Response(STYLESHEET, media_type="text/css", headers={"Cache-Control": "public, max-age=3600"})

    app.include_router(pages.router)
    app.include_router(portal.router)
    return app
