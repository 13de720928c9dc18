"""Composition root of the invoicing service."""
from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.invoicing.entrypoints.api import router
from services.invoicing.entrypoints.ingest_consumer import Verifier, ingest_handler
from services.invoicing.service_layer.confirmations import BalanceConfirmations
from services.invoicing.service_layer.handlers import Invoicing
from services.invoicing.service_layer.ingest import InvoiceIngestor
from services.invoicing.settings import InvoicingSettings
from shared.clock import Clock
from shared.host import ServiceHost
from shared.processing import each

MIGRATIONS = Path(__file__).parent / "migrations"


def build(settings: InvoicingSettings, clock: Clock | None = None) -> FastAPI:
    host = ServiceHost(settings, migrations=MIGRATIONS, clock=clock)

    def wire(host: ServiceHost, app: FastAPI) -> None:
        invoicing = Invoicing(host.pool, host.clock, host.topics, settings.overdue_grace_days)
        app.state.invoicing = invoicing
        app.state.confirmations = BalanceConfirmations(host.pool, host.clock, host.topics, settings.public_base_url,
                                                      settings.confirmation_link_days)
        app.state.ingestor = InvoiceIngestor(host.pool, host.clock, host.topics, settings.overdue_grace_days)
        host.consume("dunning", [host.topics.dunning], {"LateFeeAssessed": each(invoicing.on_late_fee_assessed),
                                                       "InterestAccrued": each(invoicing.on_interest_accrued),
                                                       "CreditNoteRequested": each(invoicing.on_credit_note_requested),
                                                       "SettlementAccepted": each(invoicing.on_settlement_accepted)})
        host.consume_raw("ingest", [host.topics.ingest],
                         ingest_handler(host.pool, app.state.ingestor, invoicing, f"{host.name}.ingest",
                                        Verifier(host.pool, settings.ingest_signature_tolerance_seconds)))
        host.every("overdue", lambda: invoicing.fire_overdue_timers(settings.timer_batch_size))

    app = host.create_api("Tahsilat invoicing", "Invoices, payments, cash application, aging.", wire)
    app.include_router(router)
    return app
