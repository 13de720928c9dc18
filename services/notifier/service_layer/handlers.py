"""Notifier use cases: keep the contact directory, accept notification requests (one per
idempotency key) and dispatch them within each tenant's contact rules."""
from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from prometheus_client import Counter

from services.notifier.adapters import store
from services.notifier.adapters.providers import DeliveryError, EmailSender, WebhookSender
from services.notifier.adapters.store import ContactRules
from services.notifier.adapters.templates import Notice, TemplateTexts, render_email, render_sms
from services.notifier.domain.links import LinkSubject, sign_unsubscribe
from services.notifier.domain.rules import ContactCap, ContactState, SendingWindow, blocked, when_may_send
from services.notifier.settings import NotifierSettings
from shared.clock import Clock
from shared.contract import (
    ContactOptedOut,
    CustomerUpserted,
    EventPayload,
    NotificationFailed,
    NotificationRequested,
    NotificationSent,
    Topics,
    new_envelope,
)
from shared.contract.templates import LANGUAGES
from shared.logging import get_logger
from shared.outbox import add_events
from shared.processing import Event, Handler, retry_transient

SOURCE = "notifier"


log = get_logger(__name__)
NOTIFICATIONS = Counter("tahsilat_notifications_total", "Notification outcomes", ["channel", "outcome"])
INTERRUPTED = Counter(
    "tahsilat_notifications_interrupted_total",
    "Sends interrupted between the provider and the record (a crash): sent again, so possibly twice")
DEFERRED = Counter("tahsilat_notifications_deferred_total", "Notifications moved later by a contact rule", ["rule"])

# Columns an outcome writes; every outcome gives all of them (unchanged ones as they were).
_OUTCOME_COLUMNS = ("status", "send_after", "attempts", "last_error", "language", "sent_at", "provider_message_id",
                    "fallback_from", "address", "sms_segments", "deferred_reason", "failed_at")
_COLUMN_TYPES = {"send_after": "timestamptz", "attempts": "int", "sent_at": "timestamptz",
                 "sms_segments": "int", "failed_at": "timestamptz"}


@dataclass
class Outcome:
    changes: dict[str, Any]  # columns of the notification row to update
    event: EventPayload | None = None
    history: list[tuple[str, str | None]] = field(default_factory=list)  # (status, detail)
    suppress: tuple[str, str, str] | None = None  # (channel, address, reason) to put on the suppression list
    opt_out: str | None = None  # a channel the provider says the person opted out of


def backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(3600, 30 * 2 ** attempts))


class Notifier:
    def __init__(self, pool: asyncpg.Pool, clock: Clock, topics: Topics, settings: NotifierSettings,
                 email: EmailSender, sms: Any, webhook: WebhookSender | None = None) -> None:
        self.pool, self.clock, self.topics, self.settings = pool, clock, topics, settings
        self.email, self.sms, self.webhook = email, sms, webhook
        # HTTP requests in flight at once per channel (the SMTP sender keeps its own connection
        # limit): httpx's pool does work per queued request, and the providers rate-limit anyway
        self._http_slots = {"sms": asyncio.Semaphore(settings.sms_max_in_flight),
                            "webhook": asyncio.Semaphore(settings.webhook_max_in_flight)}
        self.sms_auth_token = settings.sms_auth_token.get_secret_value() if settings.sms_auth_token else None
        self._link_key: bytes | None = (settings.link_signing_key.get_secret_value().encode()
                                        if settings.link_signing_key else None)
        weekdays = frozenset(int(d) for d in settings.excluded_weekdays.split(",") if d)
        self.default_rules = ContactRules(
            SendingWindow(settings.allowed_send_start, settings.allowed_send_end, weekdays),
            ContactCap(settings.contact_cap_messages, settings.contact_cap_days), settings.default_language,
            LANGUAGES, settings.sms_segment_limit)

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
            """WITH ins AS (
                 INSERT INTO notifications (tenant_id, notification_key, customer_id, case_id, step, channel, template,
                   items, send_after, requested_at, links, balances, offer)
                 SELECT t, k, c, cs, st, ch, tp, i::jsonb, r, r, l::jsonb, b::jsonb, o::jsonb
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                             $8::text[], $9::timestamptz[], $10::text[], $11::text[], $12::text[])
                   WITH ORDINALITY AS u(t, k, c, cs, st, ch, tp, i, r, l, b, o, n)
                 ORDER BY n ON CONFLICT DO NOTHING
                 RETURNING tenant_id, notification_key, requested_at, channel, template)
               INSERT INTO notification_history (tenant_id, notification_key, at, status, detail)
               SELECT tenant_id, notification_key, requested_at, 'requested', channel || ', ' || template FROM ins""",
            [e.envelope.tenant_id for e in events], [p.notification_key for p in ps], [p.customer_id for p in ps],
            [p.case_id for p in ps], [p.step for p in ps], [p.channel for p in ps], [p.template for p in ps],
            [json.dumps([i.model_dump(mode="json") for i in p.items]) for p in ps], [p.requested_at for p in ps],
            [json.dumps(p.links) for p in ps], [json.dumps([b.model_dump(mode="json") for b in p.balances]) for p in ps],
            [p.offer.model_dump_json() if p.offer else None for p in ps],
        )

    # -- links ------------------------------------------------------------------------------------

    async def link_key(self) -> bytes:
        if self._link_key is None:
            self._link_key = await store.signing_key(self.pool)
        return self._link_key

    async def unsubscribe_url(self, tenant_id: str, customer_id: str, channel: str = "email") -> str:
        token = sign_unsubscribe(await self.link_key(), LinkSubject(tenant_id, customer_id, channel))
        return f"{self.settings.public_base_url.rstrip('/')}/v1/unsubscribe/{token}"

    # -- dispatch ---------------------------------------------------------------------------------

    async def next_send_due(self) -> datetime | None:
        """When the next deferred notification may go (the dispatcher sleeps until then)."""
        return await self.pool.fetchval(
            "SELECT min(send_after) FROM notifications WHERE status = 'pending' AND send_after > $1", self.clock.now())

    async def dispatch_due(self) -> int:
        """Send what is due now, at most once per notification key, in `send_batches_in_flight`
        batches at once (each claimed, sent and recorded on its own; a batch waits for its slowest
        send, and the others keep the providers busy meanwhile). Returns how many were claimed."""
        await self._recover_interrupted()
        results = await asyncio.gather(*(self._dispatch_batch() for _ in range(self.settings.send_batches_in_flight)),
                                       return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]
        return sum(results)  # type: ignore[arg-type]

    async def _dispatch_batch(self) -> int:
        """One batch:
        1. claim due rows ('sending') in a short transaction of their own, so no other batch or
           replica takes them, and no transaction is open while the providers are called;
        2. decide each (contact rules, opt-outs, suppressions, the contact cap), then send the ones
           that may go, each on its own: one that fails, whatever the error, affects no other;
        3. record every outcome, its history and its event in one transaction (retried while the
           database is away).
        A crash between 2 and 3 leaves rows 'sending': after the lease they are sent again (with the
        same key, which providers can deduplicate on) and counted as interrupted."""
        now = self.clock.now()
        rows = await retry_transient(lambda: self.pool.fetch(
            """WITH due AS (
                   SELECT tenant_id, notification_key, customer_id FROM notifications
                   WHERE status = 'pending' AND send_after <= $1
                   ORDER BY send_after LIMIT $2 FOR UPDATE SKIP LOCKED)
               UPDATE notifications n SET status = 'sending', claimed_at = now()
               FROM due LEFT JOIN contacts c USING (tenant_id, customer_id)
               WHERE n.tenant_id = due.tenant_id AND n.notification_key = due.notification_key
               RETURNING n.*, c.name, c.language AS contact_language, c.timezone, c.email, c.phone,
                         c.email_opt_out, c.sms_opt_out, c.webhook_opt_out, c.webhook_url, c.webhook_secret,
                         c.declined_channels""",
            now, self.settings.send_batch_size), what="claiming due notifications")
        if not rows:
            return 0
        rules, overrides, suppressed, recent = await retry_transient(
            lambda: self._context(rows, now), what="reading contact rules")
        decisions: dict[int, Outcome | None] = {}
        for i in sorted(range(len(rows)), key=lambda i: (rows[i]["send_after"], rows[i]["notification_key"])):
            r = rows[i]
            decisions[i] = self._decide(r, now, rules[r["tenant_id"]], suppressed, recent)
            if decisions[i] is None and r["channel"] != "webhook":  # it goes now: it counts for the cap
                recent.setdefault((r["tenant_id"], r["customer_id"]), []).append(now)
        outcomes = await asyncio.gather(*(
            self._deliver_safely(r, now, rules[r["tenant_id"]], overrides.get((r["tenant_id"], r["template"])))
            if decisions[i] is None else _done(decisions[i])
            for i, r in enumerate(rows)))
        await retry_transient(lambda: self._record(rows, outcomes, now), what="recording notification outcomes")
        return len(rows)

    async def _context(self, rows: Sequence[asyncpg.Record], now: datetime):
        rules = await store.tenant_rules(self.pool, (r["tenant_id"] for r in rows), self.default_rules)
        overrides = await store.template_overrides(self.pool, ((r["tenant_id"], r["template"]) for r in rows))
        addresses = [(r["tenant_id"], r["channel"], a) for r in rows if (a := _address(r))]
        suppressed = await store.suppressed(self.pool, addresses)
        longest = max(rule.cap.days for rule in rules.values())
        recent = await store.recent_sends(self.pool, sorted({(r["tenant_id"], r["customer_id"]) for r in rows}),
                                          now - timedelta(days=longest), now,
                                          [r["notification_key"] for r in rows])
        return rules, overrides, suppressed, recent

    async def _recover_interrupted(self) -> None:
        back = await retry_transient(lambda: self.pool.fetch(
            "UPDATE notifications SET status = 'pending', interrupted = interrupted + 1"
            " WHERE status = 'sending' AND claimed_at < now() - $1 * interval '1 second'"
            " RETURNING tenant_id, notification_key, channel",
            self.settings.send_lease_seconds), what="recovering interrupted sends")
        if back:
            INTERRUPTED.inc(len(back))
            log.warning("sends interrupted before their outcome was recorded; sending again",
                        count=len(back), keys=[r["notification_key"] for r in back[:10]])
            now = self.clock.now()
            async with self.pool.acquire() as conn:
                await store.add_history(conn, [(r["tenant_id"], r["notification_key"], now, "interrupted",
                                                "the send's outcome was never recorded (a crash): sending again")
                                               for r in back])

    async def _record(self, rows: list[asyncpg.Record], outcomes: list[Outcome], now: datetime) -> None:
        full = [{c: o.changes.get(c, r[c]) for c in _OUTCOME_COLUMNS} for r, o in zip(rows, outcomes)]
        sets = ", ".join(f"{c} = u.{c}" for c in _OUTCOME_COLUMNS)
        types = ", ".join(f"${i + 3}::{_COLUMN_TYPES.get(c, 'text')}[]" for i, c in enumerate(_OUTCOME_COLUMNS))
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                f"""UPDATE notifications n SET {sets}, claimed_at = NULL
                    FROM unnest($1::text[], $2::text[], {types})
                      AS u(tenant_id, notification_key, {", ".join(_OUTCOME_COLUMNS)})
                    WHERE n.tenant_id = u.tenant_id AND n.notification_key = u.notification_key
                      AND n.status = 'sending'""",
                [r["tenant_id"] for r in rows], [r["notification_key"] for r in rows],
                *([f[c] for f in full] for c in _OUTCOME_COLUMNS),
            )
            await store.add_history(conn, [(r["tenant_id"], r["notification_key"], now, status, detail)
                                           for r, o in zip(rows, outcomes) for status, detail in o.history])
            await store.add_suppressions(conn, [
                (r["tenant_id"], *o.suppress, o.changes.get("last_error"), r["notification_key"])
                for r, o in zip(rows, outcomes) if o.suppress], now, "provider")
            opted: list[tuple[asyncpg.Record, Outcome]] = []
            for r, o in zip(rows, outcomes):
                if o.opt_out and await store.set_opt_out(conn, r["tenant_id"], r["customer_id"], o.opt_out, True):
                    opted.append((r, o))
            await add_events(conn, self.topics.notifier, [
                new_envelope(o.event, source=SOURCE, tenant_id=r["tenant_id"], subject=r["notification_key"], time=now)
                for r, o in zip(rows, outcomes) if o.event is not None] + [
                new_envelope(ContactOptedOut(customer_id=r["customer_id"], channel=o.opt_out, source="complaint"
                                             if o.opt_out == "email" else "sms_keyword", opted_out_at=now),
                             source=SOURCE, tenant_id=r["tenant_id"], subject=r["customer_id"], time=now)
                for r, o in opted])
        for r, o in zip(rows, outcomes):
            NOTIFICATIONS.labels(r["channel"], o.changes.get("status", "deferred")).inc()

    def _decide(self, r: asyncpg.Record, now: datetime, rules: ContactRules,
                suppressed: set[tuple[str, str, str]], recent: dict[tuple[str, str], list[datetime]]) -> Outcome | None:
        """What the contact rules say of one due notification: an outcome if it does not go now,
        None if it may be sent. No I/O."""
        key, channel, customer = r["notification_key"], r["channel"], r["customer_id"]
        if r["name"] is None:  # contact not known yet: CustomerUpserted may still be on its way
            return Outcome({"status": "pending", "send_after": now + timedelta(minutes=1),
                            "last_error": "contact unknown", "deferred_reason": "contact unknown"},
                           history=[("deferred", "contact not known yet; trying again in a minute")])
        address = _address(r)
        state = ContactState(
            email=r["email"], phone=r["phone"], webhook_url=r["webhook_url"], email_opt_out=r["email_opt_out"],
            sms_opt_out=r["sms_opt_out"], webhook_opt_out=r["webhook_opt_out"],
            declined_channels=frozenset(r["declined_channels"] or ()),
            suppressed=frozenset({channel}) if address and (r["tenant_id"], channel, address) in suppressed
            else frozenset())
        block = blocked(channel, state)
        if block:
            return Outcome({"status": "suppressed", "last_error": block.reason, "failed_at": now},
                           NotificationFailed(customer_id=customer, notification_key=key, channel=channel,
                                              reason=block.reason, failed_at=now, code=block.code),
                           history=[("opted_out" if block.code == "opted_out" else "suppressed", block.reason)])
        if channel == "webhook":  # a machine: no hours, no cap
            return None
        at, why = when_may_send(now, r["timezone"], rules.window, recent.get((r["tenant_id"], customer), []),
                                rules.cap)
        if at > now:
            DEFERRED.labels("cap" if why and why.startswith("contact cap") else "hours").inc()
            return Outcome({"status": "pending", "send_after": at, "deferred_reason": why},
                           history=[("deferred", f"{why}; until {at.isoformat()}")])
        return None

    async def _deliver_safely(self, r: asyncpg.Record, now: datetime, rules: ContactRules,
                              overrides: dict[str, TemplateTexts] | None) -> Outcome:
        try:
            return await self._deliver(r, now, rules, overrides)
        except Exception as exc:  # noqa: BLE001 - a bug or a provider's surprise is this message's failure only
            log.error("notification failed unexpectedly", key=r["notification_key"], channel=r["channel"],
                      error=repr(exc))
            return self._failure(r, now, f"unexpected error: {exc!r}")

    def _failure(self, r: asyncpg.Record, now: datetime, error: str, *, permanent: bool = False,
                 code: str | None = None) -> Outcome:
        """Transient: retry with backoff, and after max_send_attempts give up and say so. Permanent
        (the provider refused the address): fail now, suppress the address, say so."""
        key, channel = r["notification_key"], r["channel"]
        attempts = r["attempts"] + 1
        if permanent:
            opted_out = code in ("21610",)
            return Outcome(
                {"status": "failed", "attempts": attempts, "last_error": error[:1000], "failed_at": now,
                 "address": _address(r)},
                NotificationFailed(customer_id=r["customer_id"], notification_key=key, channel=channel, reason=error,
                                   failed_at=now, code="opted_out" if opted_out else "rejected", bounce_class="hard"),
                history=[("failed", f"refused by the provider: {error}"[:1000])],
                suppress=None if opted_out or not _address(r)
                else (channel, _address(r), "invalid_number" if channel == "sms" else "hard_bounce"),
                opt_out=channel if opted_out else None)
        if attempts >= self.settings.max_send_attempts:
            return Outcome({"status": "failed", "attempts": attempts, "last_error": error[:1000], "failed_at": now},
                           NotificationFailed(customer_id=r["customer_id"], notification_key=key, channel=channel,
                                              reason=error, failed_at=now, code="gave_up"),
                           history=[("failed", f"attempt {attempts} of {attempts} failed: {error}"[:1000])])
        log.warning("delivery failed, will retry", channel=channel, key=key, error=error)
        retry_at = now + backoff(attempts)
        return Outcome({"status": "pending", "attempts": attempts, "last_error": error[:1000], "send_after": retry_at},
                       history=[("retry", f"attempt {attempts} failed: {error}; again at {retry_at.isoformat()}"[:1000])])

    async def _deliver(self, r: asyncpg.Record, now: datetime, rules: ContactRules,
                       overrides: dict[str, TemplateTexts] | None) -> Outcome:
        """Render and send one notification that may go now. No database I/O."""
        key, channel, customer, tenant = r["notification_key"], r["channel"], r["customer_id"], r["tenant_id"]
        options = {"offered": rules.languages, "default_language": rules.default_language, "overrides": overrides}
        notice = Notice(template=r["template"], name=r["name"], items=r["items"], links=r["links"] or {},
                        balances=r["balances"] or [], offer=r["offer"],
                        unsubscribe_url=await self.unsubscribe_url(tenant, customer) if channel == "email" else "")
        segments = None
        try:
            if channel == "email":
                rendered = render_email(notice, r["contact_language"], **options)
                language, fallback_from = rendered.language, rendered.fallback_from
                provider_id = await self.email.send(to=r["email"], email=rendered, language=language, key=key,
                                                    unsubscribe_url=notice.unsubscribe_url, at=now)
            elif channel == "sms":
                sms = render_sms(notice, r["contact_language"], **options)
                language, fallback_from, segments = sms.language, sms.fallback_from, sms.segments
                async with self._http_slots["sms"]:
                    provider_id = await self.sms.send(to=r["phone"], text=sms.text, key=key,
                                                      status_callback=self.settings.sms_status_callback_url)
            else:
                rendered = render_email(notice, r["contact_language"], **options)
                language, fallback_from = rendered.language, rendered.fallback_from
                async with self._http_slots["webhook"]:
                    provider_id = await self.webhook.send(r["webhook_url"], r["webhook_secret"],
                                                          webhook_payload(r, rendered, now), key)
        except DeliveryError as exc:
            return self._failure(r, now, str(exc), permanent=getattr(exc, "permanent", False),
                                 code=getattr(exc, "code", None))
        detail = f"{channel} accepted by the provider as {provider_id}; language {language}"
        if fallback_from:
            detail += f" (the customer's {fallback_from} is not offered: the tenant's default)"
        return Outcome(
            {"status": "sent", "language": language, "sent_at": now, "provider_message_id": provider_id,
             "attempts": r["attempts"] + 1, "fallback_from": fallback_from, "address": _address(r),
             "sms_segments": segments, "deferred_reason": None},
            NotificationSent(customer_id=customer, notification_key=key, channel=channel, template=r["template"],
                             language=language, sent_at=now, provider_message_id=provider_id),
            history=[("sent", detail)],
        )


async def _done(outcome: Outcome) -> Outcome:
    return outcome


def _address(r: asyncpg.Record) -> str | None:
    channel = r["channel"]
    if channel == "email":
        return r["email"].strip().lower() if r["email"] else None
    if channel == "sms":
        return r["phone"]
    if channel == "webhook":
        return r["webhook_url"]
    return None


def webhook_payload(r: asyncpg.Record, rendered: Any, now: datetime) -> dict[str, Any]:
    """The notice as JSON for a customer's own system: the items with their amounts in minor
    units, and the rendered text in the customer's language."""
    return {
        "type": "notice", "notification_key": r["notification_key"], "customer_id": r["customer_id"],
        "case_id": r["case_id"], "step": r["step"], "template": r["template"], "language": rendered.language,
        "subject": rendered.subject, "text": rendered.text, "items": r["items"], "balances": r["balances"] or [],
        "offer": r["offer"], "links": r["links"] or {}, "sent_at": now.isoformat(),
    }
