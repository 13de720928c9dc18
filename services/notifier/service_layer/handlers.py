"""Notifier use cases: keep the contact directory, accept notification requests (one per
idempotency key) and dispatch them within the customer's contact hours."""
from __future__ import annotations

import asyncio
import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from prometheus_client import Counter

from services.notifier.adapters.providers import DeliveryError, EmailSender, SmsSender
from services.notifier.adapters.templates import render_email, render_sms
from services.notifier.domain.rules import blocked_reason, next_allowed_send
from services.notifier.settings import NotifierSettings
from shared.clock import Clock
from shared.contract import (
    CustomerUpserted, EventPayload, NotificationFailed, NotificationRequested, NotificationSent, Topics, new_envelope,
)
from shared.logging import get_logger
from shared.outbox import add_events
from shared.processing import Event, Handler, retry_transient

SOURCE = "notifier"


log = get_logger(__name__)
NOTIFICATIONS = Counter("tahsilat_notifications_total", "Notification outcomes", ["channel", "outcome"])
INTERRUPTED = Counter(
    "tahsilat_notifications_interrupted_total",
    "Sends interrupted between the provider and the record (a crash): sent again, so possibly twice")

# Columns an outcome writes; every outcome gives all of them (unchanged ones as they were).
_OUTCOME_COLUMNS = ("status", "send_after", "attempts", "last_error", "language", "sent_at", "provider_message_id")


@dataclass
class Outcome:
    changes: dict[str, Any]  # columns of the notification row to update
    event: EventPayload | None = None


class Notifier:
    def __init__(self, pool: asyncpg.Pool, clock: Clock, topics: Topics, settings: NotifierSettings,
                 email: EmailSender, sms: SmsSender) -> None:
        self.pool, self.clock, self.topics, self.settings = pool, clock, topics, settings
        self.email, self.sms = email, sms

    def handlers(self) -> dict[str, Handler]:
        return {"CustomerUpserted": self.on_customers_upserted, "NotificationRequested": self.on_notifications_requested}

    async def on_customers_upserted(self, conn: asyncpg.Connection, events: list[Event]) -> None:
        latest = {(e.envelope.tenant_id, e.payload.customer_id): e.payload for e in events}
        keys = sorted(latest)
        ps: list[CustomerUpserted] = [latest[k] for k in keys]
        await conn.execute(
            """INSERT INTO contacts (tenant_id, customer_id, name, language, timezone, email, phone, unsubscribe_token)
               SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                                    $8::text[])
               ON CONFLICT (tenant_id, customer_id) DO UPDATE SET name = EXCLUDED.name, language = EXCLUDED.language,
                 timezone = EXCLUDED.timezone, email = EXCLUDED.email, phone = EXCLUDED.phone, updated_at = now()""",
            [k[0] for k in keys], [k[1] for k in keys], [p.name for p in ps], [p.language for p in ps],
            [p.timezone for p in ps], [p.email for p in ps], [p.phone for p in ps],
            [secrets.token_urlsafe(18) for _ in ps],
        )

    async def on_notifications_requested(self, conn: asyncpg.Connection, events: list[Event]) -> None:
        """One notification per idempotency key: a key seen before changes nothing."""
        ps: list[NotificationRequested] = [e.payload for e in events]
        await conn.execute(
            """INSERT INTO notifications (tenant_id, notification_key, customer_id, case_id, step, channel, template,
                 items, send_after, requested_at, links, balances, offer)
               SELECT t, k, c, cs, st, ch, tp, i::jsonb, r, r, l::jsonb, b::jsonb, o::jsonb
               FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                           $8::text[], $9::timestamptz[], $10::text[], $11::text[], $12::text[])
                 WITH ORDINALITY AS u(t, k, c, cs, st, ch, tp, i, r, l, b, o, n)
               ORDER BY n ON CONFLICT DO NOTHING""",
            [e.envelope.tenant_id for e in events], [p.notification_key for p in ps], [p.customer_id for p in ps],
            [p.case_id for p in ps], [p.step for p in ps], [p.channel for p in ps], [p.template for p in ps],
            [json.dumps([i.model_dump(mode="json") for i in p.items]) for p in ps], [p.requested_at for p in ps],
            [json.dumps(p.links) for p in ps], [json.dumps([b.model_dump(mode="json") for b in p.balances]) for p in ps],
            [p.offer.model_dump_json() if p.offer else None for p in ps],
        )

    def unsubscribe_url(self, token: str) -> str:
        return f"{self.settings.public_base_url.rstrip('/')}/v1/unsubscribe/{token}"

    async def email_opted_out(self, token: str) -> bool | None:
        """Whether the contact behind an unsubscribe link has opted out of email; None: no such link."""
        return await self.pool.fetchval("SELECT email_opt_out FROM contacts WHERE unsubscribe_token = $1", token)

    async def unsubscribe(self, token: str) -> bool:
        """Opt the contact out of email; False: no such link. Doing it twice changes nothing."""
        return bool(await self.pool.fetchval(
            "UPDATE contacts SET email_opt_out = true, updated_at = now() WHERE unsubscribe_token = $1 RETURNING 1",
            token))

    async def next_send_due(self) -> datetime | None:
        """When the next deferred notification may go (the dispatcher sleeps until then)."""
        return await self.pool.fetchval(
            "SELECT min(send_after) FROM notifications WHERE status = 'pending' AND send_after > $1", self.clock.now())

    async def dispatch_due(self) -> int:
        """Send what is due now, at most once per notification key:
        1. claim the due rows ('sending') in a short transaction of their own, so no other replica
           takes them, and no transaction is open while the providers are called;
        2. send each on its own: one that fails, whatever the error, affects no other;
        3. record every outcome and its event in one transaction (retried while the database is away).
        A crash between 2 and 3 leaves rows 'sending': after the lease they are sent again (with the
        same key, which providers can deduplicate on) and counted as interrupted."""
        now = self.clock.now()
        await self._recover_interrupted()
        rows = await retry_transient(lambda: self.pool.fetch(
            """WITH due AS (
                   SELECT tenant_id, notification_key, customer_id FROM notifications
                   WHERE status = 'pending' AND send_after <= $1
                   ORDER BY send_after LIMIT $2 FOR UPDATE SKIP LOCKED)
               UPDATE notifications n SET status = 'sending', claimed_at = now()
               FROM due LEFT JOIN contacts c USING (tenant_id, customer_id)
               WHERE n.tenant_id = due.tenant_id AND n.notification_key = due.notification_key
               RETURNING n.*, c.name, c.language AS contact_language, c.timezone, c.email, c.phone,
                         c.email_opt_out, c.sms_opt_out, c.unsubscribe_token""",
            now, self.settings.send_batch_size), what="claiming due notifications")
        if not rows:
            return 0
        outcomes = await asyncio.gather(*(self._deliver_safely(r, now) for r in rows))
        await retry_transient(lambda: self._record(rows, outcomes, now), what="recording notification outcomes")
        return len(rows)

    async def _recover_interrupted(self) -> None:
        back = await retry_transient(lambda: self.pool.fetch(
            "UPDATE notifications SET status = 'pending', interrupted = interrupted + 1"
            " WHERE status = 'sending' AND claimed_at < now() - $1 * interval '1 second'"
            " RETURNING notification_key, channel",
            self.settings.send_lease_seconds), what="recovering interrupted sends")
        if back:
            INTERRUPTED.inc(len(back))
            log.warning("sends interrupted before their outcome was recorded; sending again",
                        count=len(back), keys=[r["notification_key"] for r in back[:10]])

    async def _record(self, rows: list[asyncpg.Record], outcomes: list[Outcome], now: datetime) -> None:
        full = [{c: o.changes.get(c, r[c]) for c in _OUTCOME_COLUMNS} for r, o in zip(rows, outcomes)]
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                """UPDATE notifications n SET status = u.status, send_after = u.send_after, attempts = u.attempts,
                     last_error = u.last_error, language = u.language, sent_at = u.sent_at,
                     provider_message_id = u.provider_message_id, claimed_at = NULL
                   FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::int[], $6::text[], $7::text[],
                               $8::timestamptz[], $9::text[])
                     AS u(tenant_id, notification_key, status, send_after, attempts, last_error, language, sent_at,
                          provider_message_id)
                   WHERE n.tenant_id = u.tenant_id AND n.notification_key = u.notification_key
                     AND n.status = 'sending'""",
                [r["tenant_id"] for r in rows], [r["notification_key"] for r in rows],
                *([f[c] for f in full] for c in _OUTCOME_COLUMNS),
            )
            await add_events(conn, self.topics.notifier, [
                new_envelope(o.event, source=SOURCE, tenant_id=r["tenant_id"], subject=r["notification_key"], time=now)
                for r, o in zip(rows, outcomes) if o.event is not None])
        for r, o in zip(rows, outcomes):
            NOTIFICATIONS.labels(r["channel"], o.changes.get("status", "deferred")).inc()

    async def _deliver_safely(self, r: asyncpg.Record, now: datetime) -> Outcome:
        try:
            return await self._deliver(r, now)
        except Exception as exc:  # noqa: BLE001 - a bug or a provider's surprise is this message's failure only
            log.error("notification failed unexpectedly", key=r["notification_key"], channel=r["channel"],
                      error=repr(exc))
            return self._failure(r, now, f"unexpected error: {exc!r}")

    def _failure(self, r: asyncpg.Record, now: datetime, error: str) -> Outcome:
        """Retry with backoff; after max_send_attempts give up and say so (NotificationFailed)."""
        key, channel = r["notification_key"], r["channel"]
        attempts = r["attempts"] + 1
        if attempts >= self.settings.max_send_attempts:
            return Outcome({"status": "failed", "attempts": attempts, "last_error": error[:1000]},
                           NotificationFailed(customer_id=r["customer_id"], notification_key=key, channel=channel,
                                              reason=error, failed_at=now))
        log.warning("delivery failed, will retry", channel=channel, key=key, error=error)
        return Outcome({"status": "pending", "attempts": attempts, "last_error": error[:1000],
                        "send_after": now + timedelta(seconds=min(3600, 30 * 2**attempts))})

    async def _deliver(self, r: asyncpg.Record, now: datetime) -> Outcome:
        """Decide what to do with one due notification and, if it may go, send it. No database I/O."""
        key, channel, customer = r["notification_key"], r["channel"], r["customer_id"]
        if r["name"] is None:  # contact not known yet: CustomerUpserted may still be on its way
            return Outcome({"status": "pending", "send_after": now + timedelta(minutes=1),
                            "last_error": "contact unknown"})
        reason = blocked_reason(channel, r["email"], r["phone"], r["email_opt_out"], r["sms_opt_out"])
        if reason:
            return Outcome({"status": "suppressed", "last_error": reason},
                           NotificationFailed(customer_id=customer, notification_key=key, channel=channel,
                                              reason=reason, failed_at=now))
        allowed = next_allowed_send(now, r["timezone"], self.settings.quiet_start_hour, self.settings.quiet_end_hour)
        if allowed > now:
            return Outcome({"status": "pending", "send_after": allowed})
        language = r["contact_language"]
        try:
            if channel == "email":
                url = self.unsubscribe_url(r["unsubscribe_token"])
                rendered = render_email(r["template"], language, r["name"], r["items"], url, r["links"], r["balances"],
                                        r["offer"])
                provider_id = await self.email.send(to=r["email"], email=rendered, language=language, key=key,
                                                    unsubscribe_url=url, at=now)
            else:
                text = render_sms(r["template"], language, r["name"], r["items"], r["offer"])
                provider_id = await self.sms.send(to=r["phone"], text=text, key=key)
        except DeliveryError as exc:
            return self._failure(r, now, str(exc))
        return Outcome(
            {"status": "sent", "language": language, "sent_at": now, "provider_message_id": provider_id,
             "attempts": r["attempts"] + 1},
            NotificationSent(customer_id=customer, notification_key=key, channel=channel, template=r["template"],
                             language=language, sent_at=now, provider_message_id=provider_id),
        )
