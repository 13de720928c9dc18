"""Notifier use cases: keep the contact directory, accept notification requests (one per
idempotency key) and dispatch them within the customer's contact hours."""
from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from services.notifier.adapters.providers import DeliveryError, EmailSender, SmsSender
from services.notifier.adapters.templates import render_email, render_sms
from services.notifier.domain.rules import blocked_reason, next_allowed_send
from services.notifier.settings import NotifierSettings
from shared.clock import Clock
from shared.contract import (
    CustomerUpserted, Envelope, EventPayload, NotificationFailed, NotificationRequested, NotificationSent, Topics, new_envelope,
)
from shared.logging import get_logger
from shared.outbox import add_events

SOURCE = "notifier"


@dataclass
class Outcome:
    changes: dict[str, Any]  # columns of the notification row to update
    event: EventPayload | None = None
log = get_logger(__name__)


class Notifier:
    def __init__(self, pool: asyncpg.Pool, clock: Clock, topics: Topics, settings: NotifierSettings,
                 email: EmailSender, sms: SmsSender) -> None:
        self.pool, self.clock, self.topics, self.settings = pool, clock, topics, settings
        self.email, self.sms = email, sms

    def handlers(self) -> dict:
        return {"CustomerUpserted": self.on_customer_upserted, "NotificationRequested": self.on_notification_requested}

    async def on_customer_upserted(self, conn: asyncpg.Connection, env: Envelope, p: CustomerUpserted) -> None:
        await conn.execute(
            """INSERT INTO contacts (tenant_id, customer_id, name, language, timezone, email, phone, unsubscribe_token)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
               ON CONFLICT (tenant_id, customer_id) DO UPDATE SET name = EXCLUDED.name, language = EXCLUDED.language,
                 timezone = EXCLUDED.timezone, email = EXCLUDED.email, phone = EXCLUDED.phone, updated_at = now()""",
            env.tenant_id, p.customer_id, p.name, p.language, p.timezone, p.email, p.phone, secrets.token_urlsafe(18),
        )

    async def on_notification_requested(self, conn: asyncpg.Connection, env: Envelope, p: NotificationRequested) -> None:
        await conn.execute(
            """INSERT INTO notifications (tenant_id, notification_key, customer_id, case_id, step, channel, template,
                 items, send_after, requested_at, links, balances)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $10, $11) ON CONFLICT DO NOTHING""",
            env.tenant_id, p.notification_key, p.customer_id, p.case_id, p.step, p.channel, p.template,
            [i.model_dump(mode="json") for i in p.items], p.requested_at, p.links,
            [b.model_dump(mode="json") for b in p.balances],
        )

    def unsubscribe_url(self, token: str) -> str:
        return f"{self.settings.public_base_url.rstrip('/')}/v1/unsubscribe/{token}"

    async def dispatch_due(self) -> int:
        """Send what is due now. Rows stay locked (FOR UPDATE SKIP LOCKED) while they are sent,
        so two replicas never send the same notification; a crash mid-send retries it and the
        provider gets the same key. Sends run concurrently; the database writes follow in order
        on the one connection, in the same transaction."""
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                """SELECT n.*, c.name, c.language AS contact_language, c.timezone, c.email, c.phone,
                          c.email_opt_out, c.sms_opt_out, c.unsubscribe_token
                   FROM notifications n LEFT JOIN contacts c USING (tenant_id, customer_id)
                   WHERE n.status = 'pending' AND n.send_after <= $1
                   ORDER BY n.send_after LIMIT $2 FOR UPDATE OF n SKIP LOCKED""",
                now, self.settings.send_batch_size,
            )
            if not rows:
                return 0
            outcomes = await asyncio.gather(*(self._deliver(r, now) for r in rows))
            events = []
            for r, outcome in zip(rows, outcomes):
                await conn.execute(
                    f"UPDATE notifications SET {', '.join(f'{k} = ${i + 3}' for i, k in enumerate(outcome.changes))}"
                    " WHERE tenant_id = $1 AND notification_key = $2",
                    r["tenant_id"], r["notification_key"], *outcome.changes.values(),
                )
                if outcome.event is not None:
                    events.append(new_envelope(outcome.event, source=SOURCE, tenant_id=r["tenant_id"],
                                               subject=r["notification_key"], time=now))
            await add_events(conn, self.topics.notifier, events)
            return len(rows)

    async def _deliver(self, r: asyncpg.Record, now: datetime) -> Outcome:
        """Decide what to do with one due notification and, if it may go, send it. No database I/O."""
        key, channel, customer = r["notification_key"], r["channel"], r["customer_id"]
        if r["name"] is None:  # contact not known yet: CustomerUpserted may still be on its way
            return Outcome({"send_after": now + timedelta(minutes=1), "last_error": "contact unknown"})
        reason = blocked_reason(channel, r["email"], r["phone"], r["email_opt_out"], r["sms_opt_out"])
        if reason:
            return Outcome({"status": "suppressed", "last_error": reason},
                           NotificationFailed(customer_id=customer, notification_key=key, channel=channel,
                                              reason=reason, failed_at=now))
        allowed = next_allowed_send(now, r["timezone"], self.settings.quiet_start_hour, self.settings.quiet_end_hour)
        if allowed > now:
            return Outcome({"send_after": allowed})
        language = r["contact_language"]
        try:
            if channel == "email":
                url = self.unsubscribe_url(r["unsubscribe_token"])
                rendered = render_email(r["template"], language, r["name"], r["items"], url, r["links"], r["balances"])
                provider_id = await self.email.send(to=r["email"], email=rendered, language=language, key=key,
                                                    unsubscribe_url=url)
            else:
                text = render_sms(r["template"], language, r["name"], r["items"])
                provider_id = await self.sms.send(to=r["phone"], text=text, key=key)
        except DeliveryError as exc:
            attempts = r["attempts"] + 1
            if attempts >= self.settings.max_send_attempts:
                return Outcome({"status": "failed", "attempts": attempts, "last_error": str(exc)[:1000]},
                               NotificationFailed(customer_id=customer, notification_key=key, channel=channel,
                                                  reason=str(exc), failed_at=now))
            log.warning("delivery failed, will retry", channel=channel, key=key, error=str(exc))
            return Outcome({"attempts": attempts, "last_error": str(exc)[:1000],
                            "send_after": now + timedelta(seconds=min(3600, 30 * 2**attempts))})
        return Outcome(
            {"status": "sent", "language": language, "sent_at": now, "provider_message_id": provider_id,
             "attempts": r["attempts"] + 1},
            NotificationSent(customer_id=customer, notification_key=key, channel=channel, template=r["template"],
                             language=language, sent_at=now, provider_message_id=provider_id),
        )
