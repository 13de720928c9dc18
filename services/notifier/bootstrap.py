"""Composition root of the notifier service."""
from __future__ import annotations

import functools
from pathlib import Path

import httpx
from fastapi import FastAPI

from services.notifier.adapters.providers import WebhookSender, build_email_sender, build_sms_sender
from services.notifier.entrypoints.api import router
from services.notifier.service_layer import tracking
from services.notifier.service_layer.handlers import Notifier
from services.notifier.settings import NotifierSettings
from shared.clock import Clock
from shared.host import ServiceHost

MIGRATIONS = Path(__file__).parent / "migrations"


def build(settings: NotifierSettings, clock: Clock | None = None) -> FastAPI:
    host = ServiceHost(settings, migrations=MIGRATIONS, clock=clock)

    def wire(host: ServiceHost, app: FastAPI) -> None:
        http = httpx.AsyncClient()
        host.on_stop(http.aclose)
        email = build_email_sender(settings)
        host.on_stop(email.aclose)
        notifier = Notifier(
            host.pool, host.clock, host.topics, settings, email, build_sms_sender(settings, http),
            WebhookSender(http, allow_private_networks=settings.webhook_allow_private_networks),
        )
        app.state.notifier = notifier
        host.consume("requests", [host.topics.invoicing, host.topics.dunning], notifier.handlers())
        host.every("dispatch", notifier.dispatch_due, wake_on="notifier_due", next_due=notifier.next_send_due)
        host.every("early-reports", functools.partial(tracking.apply_early_reports, notifier))

    app = host.create_api("Tahsilat notifier", "Email, SMS and webhook delivery, templates, contact rules, opt-outs, delivery tracking.", wire)
    app.include_router(router)
    return app
