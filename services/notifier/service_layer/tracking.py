"""Notifier use cases after a send and around it: provider delivery reports, inbound SMS
keywords, opt-outs and opt-ins, suppressions, preferences. One transaction each, with its events."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg
from prometheus_client import Counter

from services.notifier.adapters import store
from services.notifier.domain.delivery import DeliveryReport
from services.notifier.domain.links import verify_unsubscribe
from services.notifier.domain.rules import sms_keyword
from services.notifier.service_layer.handlers import SOURCE, Notifier, backoff
from shared.contract import (
    ContactOptedIn,
    ContactOptedOut,
    EventPayload,
    NotificationDelivered,
    NotificationFailed,
    new_envelope,
)
from shared.logging import get_logger
from shared.outbox import add_events

log = get_logger(__name__)
REPORTS = Counter("tahsilat_delivery_reports_total", "Provider delivery reports", ["channel", "outcome", "applied"])
INBOUND = Counter("tahsilat_inbound_sms_total", "Inbound SMS", ["keyword"])


@dataclass(frozen=True)
class ReportResult:
    applied: int
    unknown: int
    ignored: int  # already in that state, or a report that changes nothing


async def _emit(conn: asyncpg.Connection, n: Notifier, tenant_id: str, subject: str, payloads: list[EventPayload],
                now: datetime) -> None:
    await add_events(conn, n.topics.notifier, [
        new_envelope(p, source=SOURCE, tenant_id=tenant_id, subject=subject, time=now) for p in payloads])


async def apply_reports(n: Notifier, reports: list[DeliveryReport]) -> ReportResult:
    """Delivery reports of providers, each applied once: a delivery receipt marks a sent message
    delivered (NotificationDelivered); a hard bounce or complaint fails it, suppresses the address
    (a complaint also opts the person out of email) and tells dunning (NotificationFailed); a soft
    bounce sends it again with backoff until the last attempt. A report for no message we know,
    or one repeated, changes nothing."""
    now = n.clock.now()
    applied = unknown = ignored = 0
    async with n.pool.acquire() as conn, conn.transaction():
        for report in reports:
            row = await _reported_row(conn, report)
            if row is None or row["status"] == "sending":  # not recorded yet: keep it for when it is
                unknown += 1
                REPORTS.labels(report.channel, report.outcome, "kept").inc()
                await conn.execute(
                    "INSERT INTO early_reports (channel, provider_message_id, notification_key, outcome, bounce_class,"
                    " detail, at, received_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    report.channel, report.provider_message_id, report.notification_key, report.outcome,
                    report.bounce_class, report.detail, report.at, now)
                continue
            done = await _apply(conn, n, row, report, now)
            applied += done
            ignored += not done
            REPORTS.labels(report.channel, report.outcome, "applied" if done else "ignored").inc()
    if unknown:
        log.info("delivery reports for messages not recorded yet: kept", count=unknown)
    return ReportResult(applied, unknown, ignored)


async def _reported_row(conn: asyncpg.Connection, report: DeliveryReport) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT n.*, c.email AS contact_email FROM notifications n LEFT JOIN contacts c"
        " USING (tenant_id, customer_id)"
        " WHERE ($1::text IS NOT NULL AND n.provider_message_id = $1 AND n.channel = $3)"
        "    OR ($2::text IS NOT NULL AND n.notification_key = $2 AND n.channel = $3)"
        " ORDER BY n.requested_at DESC LIMIT 1 FOR UPDATE OF n",
        report.provider_message_id, report.notification_key, report.channel)


EARLY_REPORT_DAYS = 1


async def apply_early_reports(n: Notifier) -> int:
    """Apply the kept reports whose message is recorded now; drop those no message claimed
    within a day (reports of messages that are not ours). Returns how many were applied."""
    now = n.clock.now()
    applied = dropped = 0
    async with n.pool.acquire() as conn, conn.transaction():
        for kept in await conn.fetch("SELECT * FROM early_reports ORDER BY id LIMIT 500 FOR UPDATE SKIP LOCKED"):
            report = DeliveryReport(kept["channel"], kept["outcome"], provider_message_id=kept["provider_message_id"],
                                    notification_key=kept["notification_key"], bounce_class=kept["bounce_class"],
                                    detail=kept["detail"], at=kept["at"])
            row = await _reported_row(conn, report)
            if row is not None and row["status"] != "sending":
                applied += await _apply(conn, n, row, report, now)
            elif kept["received_at"] > now - timedelta(days=EARLY_REPORT_DAYS):
                continue
            else:
                dropped += 1
            await conn.execute("DELETE FROM early_reports WHERE id = $1", kept["id"])
    if dropped:
        REPORTS.labels("any", "any", "unknown").inc(dropped)
        log.warning("delivery reports for no known message, dropped after a day", count=dropped)
    return applied


async def _apply(conn: asyncpg.Connection, n: Notifier, row: asyncpg.Record, report: DeliveryReport,
                 now: datetime) -> bool:
    tenant, key, channel, customer = row["tenant_id"], row["notification_key"], row["channel"], row["customer_id"]
    at = report.at or now

    async def history(status: str, detail: str) -> None:
        await store.add_history(conn, [(tenant, key, at, status, detail[:1000])])

    if report.outcome == "deferred":
        await history("provider_deferred", report.detail)
        return True
    if report.outcome == "delivered":
        if row["status"] != "sent":
            return False
        await conn.execute("UPDATE notifications SET status = 'delivered', delivered_at = $3"
                           " WHERE tenant_id = $1 AND notification_key = $2", tenant, key, at)
        await history("delivered", report.detail)
        await _emit(conn, n, tenant, key, [NotificationDelivered(
            customer_id=customer, notification_key=key, channel=channel, delivered_at=at,
            provider_message_id=row["provider_message_id"])], now)
        return True
    if row["status"] not in ("sent", "delivered"):
        return False
    if report.bounce_class == "soft" and row["attempts"] < n.settings.max_send_attempts:
        retry_at = now + backoff(row["attempts"])
        await conn.execute("UPDATE notifications SET status = 'pending', send_after = $3, last_error = $4"
                           " WHERE tenant_id = $1 AND notification_key = $2", tenant, key, retry_at, report.detail)
        await history("retry", f"soft bounce: {report.detail}; again at {retry_at.isoformat()}")
        return True
    await conn.execute("UPDATE notifications SET status = 'failed', failed_at = $3, last_error = $4"
                       " WHERE tenant_id = $1 AND notification_key = $2", tenant, key, at, report.detail)
    await history("failed", f"{report.bounce_class} bounce: {report.detail}" if report.bounce_class != "complaint"
                  else "the recipient marked it as spam")
    events: list[EventPayload] = [NotificationFailed(
        customer_id=customer, notification_key=key, channel=channel, reason=report.detail, failed_at=at,
        code={"hard": "bounced", "complaint": "complaint"}.get(report.bounce_class or "", "gave_up"),
        bounce_class=report.bounce_class)]
    address = row["address"] or (row["contact_email"] or "").strip().lower() or None
    if report.permanent and address:
        await store.add_suppressions(conn, [(tenant, channel, address, "complaint" if report.bounce_class == "complaint"
                                             else ("invalid_number" if channel == "sms" else "hard_bounce"),
                                             report.detail, key)], now, "provider")
    if report.bounce_class == "complaint" and await store.set_opt_out(conn, tenant, customer, "email", True):
        events.append(ContactOptedOut(customer_id=customer, channel="email", source="complaint", opted_out_at=at))
    await _emit(conn, n, tenant, key, events, now)
    return True


async def inbound_sms(n: Notifier, phone: str, body: str) -> str | None:
    """An SMS a person sent us: STOP (in any of the four languages) opts the number out of SMS
    from every tenant that has it, START opts it back in; ContactOptedOut / ContactOptedIn tell
    dunning and risk. Returns the keyword acted on, or None."""
    keyword = sms_keyword(body)
    INBOUND.labels(keyword or "none").inc()
    if keyword is None:
        return None
    now = n.clock.now()
    async with n.pool.acquire() as conn, conn.transaction():
        changed = await store.set_sms_opt_out_by_phone(conn, phone, keyword == "stop")
        for r in changed:
            payload: EventPayload = (
                ContactOptedOut(customer_id=r["customer_id"], channel="sms", source="sms_keyword", opted_out_at=now)
                if keyword == "stop" else
                ContactOptedIn(customer_id=r["customer_id"], channel="sms", source="sms_keyword", opted_in_at=now))
            await _emit(conn, n, r["tenant_id"], r["customer_id"], [payload], now)
    log.info("inbound SMS keyword", keyword=keyword, contacts=len(changed))
    return keyword


async def _unsubscribe_subject(n: Notifier, token: str) -> tuple[str, str, str] | None:
    subject = verify_unsubscribe(await n.link_key(), token)
    if subject is not None:
        return subject.tenant_id, subject.customer_id, subject.channel
    # links in messages sent before links were signed carry the contact's random token
    row = await n.pool.fetchrow("SELECT tenant_id, customer_id FROM contacts WHERE unsubscribe_token = $1", token)
    return (row["tenant_id"], row["customer_id"], "email") if row else None


async def unsubscribed(n: Notifier, token: str) -> bool | None:
    """Whether the contact behind an unsubscribe link has opted out already; None: no such link."""
    subject = await _unsubscribe_subject(n, token)
    if subject is None:
        return None
    contact = await store.contact(n.pool, subject[0], subject[1])
    return None if contact is None else bool(contact[f"{subject[2]}_opt_out"])


async def unsubscribe(n: Notifier, token: str) -> bool:
    """Opt the contact out (ContactOptedOut); False: no such link. Doing it twice changes nothing."""
    subject = await _unsubscribe_subject(n, token)
    if subject is None:
        return False
    return await set_opt_out(n, subject[0], subject[1], subject[2], True, source="unsubscribe_link") is not None


async def set_opt_out(n: Notifier, tenant_id: str, customer_id: str, channel: str, opted_out: bool, *,
                      source: str, consent: str | None = None) -> bool | None:
    """Opt a contact out of (or back into) a channel, with its event (an opt-in carries how the
    person consented); None: no such contact."""
    now = n.clock.now()
    async with n.pool.acquire() as conn, conn.transaction():
        changed = await store.set_opt_out(conn, tenant_id, customer_id, channel, opted_out)
        if changed:
            payload: EventPayload = (
                ContactOptedOut(customer_id=customer_id, channel=channel, source=source, opted_out_at=now)
                if opted_out else ContactOptedIn(customer_id=customer_id, channel=channel, source=source,
                                                 opted_in_at=now, consent=consent))
            await _emit(conn, n, tenant_id, customer_id, [payload], now)
    return changed
