"""The notifier's SQL beyond claiming and recording sends: tenant contact rules, template
overrides, suppressions, contacts' preferences and opt-outs, notification history."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from services.notifier.adapters.templates import TemplateTexts
from services.notifier.domain.rules import ContactCap, SendingWindow

Conn = asyncpg.Connection | asyncpg.Pool


@dataclass(frozen=True)
class ContactRules:
    """A tenant's contact rules (its own row, or the service's defaults)."""

    window: SendingWindow
    cap: ContactCap
    default_language: str
    languages: tuple[str, ...]
    sms_segment_limit: int
    custom: bool = False  # the tenant set them (else the service defaults)

    def as_dict(self) -> dict[str, Any]:
        return {
            "default_language": self.default_language, "languages": list(self.languages),
            "allowed_send_start": self.window.start.strftime("%H:%M"),
            "allowed_send_end": self.window.end.strftime("%H:%M"),
            "excluded_weekdays": sorted(self.window.excluded_weekdays),
            "holidays": sorted(d.isoformat() for d in self.window.holidays),
            "contact_cap_messages": self.cap.messages, "contact_cap_days": self.cap.days,
            "sms_segment_limit": self.sms_segment_limit, "custom": self.custom,
        }


def _rules(row: asyncpg.Record) -> ContactRules:
    return ContactRules(
        SendingWindow(row["allowed_start"], row["allowed_end"], frozenset(row["excluded_weekdays"]),
                      frozenset(row["holidays"])),
        ContactCap(row["contact_cap"], row["contact_cap_days"]), row["default_language"], tuple(row["languages"]),
        row["sms_segment_limit"], custom=True)


async def tenant_rules(db: Conn, tenant_ids: Iterable[str], defaults: ContactRules) -> dict[str, ContactRules]:
    tenants = sorted(set(tenant_ids))
    rows = await db.fetch("SELECT * FROM tenant_settings WHERE tenant_id = ANY($1::text[])", tenants)
    found = {r["tenant_id"]: _rules(r) for r in rows}
    return {t: found.get(t, defaults) for t in tenants}


async def put_tenant_rules(db: Conn, tenant_id: str, rules: ContactRules, by: str) -> None:
    await db.execute(
        """INSERT INTO tenant_settings (tenant_id, default_language, languages, allowed_start, allowed_end,
             excluded_weekdays, holidays, contact_cap, contact_cap_days, sms_segment_limit, updated_by)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
           ON CONFLICT (tenant_id) DO UPDATE SET default_language = EXCLUDED.default_language,
             languages = EXCLUDED.languages, allowed_start = EXCLUDED.allowed_start,
             allowed_end = EXCLUDED.allowed_end, excluded_weekdays = EXCLUDED.excluded_weekdays,
             holidays = EXCLUDED.holidays, contact_cap = EXCLUDED.contact_cap,
             contact_cap_days = EXCLUDED.contact_cap_days, sms_segment_limit = EXCLUDED.sms_segment_limit,
             updated_at = now(), updated_by = EXCLUDED.updated_by""",
        tenant_id, rules.default_language, list(rules.languages), rules.window.start, rules.window.end,
        sorted(rules.window.excluded_weekdays), sorted(rules.window.holidays), rules.cap.messages, rules.cap.days,
        rules.sms_segment_limit, by)


# -- template overrides ------------------------------------------------------------------------

def _texts(r: asyncpg.Record) -> TemplateTexts:
    return TemplateTexts(subject=r["subject"], body=r["body"], sms=r["sms"])


async def template_overrides(db: Conn, pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], dict[str, TemplateTexts]]:
    """(tenant, template) -> language -> the tenant's texts, for the pairs that have any."""
    pairs = sorted(set(pairs))
    rows = await db.fetch(
        "SELECT t.* FROM unnest($1::text[], $2::text[]) AS k(tenant_id, template)"
        " JOIN notice_templates t USING (tenant_id, template)",
        [p[0] for p in pairs], [p[1] for p in pairs])
    out: dict[tuple[str, str], dict[str, TemplateTexts]] = {}
    for r in rows:
        out.setdefault((r["tenant_id"], r["template"]), {})[r["language"]] = _texts(r)
    return out


async def list_template_overrides(db: Conn, tenant_id: str) -> list[asyncpg.Record]:
    return await db.fetch("SELECT * FROM notice_templates WHERE tenant_id = $1 ORDER BY template, language", tenant_id)


async def replace_template_override(conn: asyncpg.Connection, tenant_id: str, template: str,
                                    texts: dict[str, TemplateTexts], by: str) -> None:
    """The tenant's wording of `template` becomes exactly `texts` (languages not in it: shipped)."""
    async with conn.transaction():
        await conn.execute("DELETE FROM notice_templates WHERE tenant_id = $1 AND template = $2", tenant_id, template)
        await conn.executemany(
            "INSERT INTO notice_templates (tenant_id, template, language, subject, body, sms, updated_by)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7)",
            [(tenant_id, template, lang, t.subject, t.body, t.sms, by) for lang, t in sorted(texts.items())])


async def delete_template_override(db: Conn, tenant_id: str, template: str) -> bool:
    return await db.fetchval("WITH d AS (DELETE FROM notice_templates WHERE tenant_id = $1 AND template = $2"
                             " RETURNING 1) SELECT count(*) > 0 FROM d", tenant_id, template)


# -- what a dispatch needs besides the claimed rows -----------------------------------------------

async def suppressed(db: Conn, keys: Sequence[tuple[str, str, str]]) -> set[tuple[str, str, str]]:
    """Which of (tenant, channel, address) are on the suppression list."""
    rows = await db.fetch(
        "SELECT k.tenant_id, k.channel, k.address FROM unnest($1::text[], $2::text[], $3::text[])"
        " AS k(tenant_id, channel, address)"
        " WHERE EXISTS (SELECT 1 FROM suppressions s WHERE s.tenant_id = k.tenant_id AND s.channel = k.channel"
        "   AND s.address = k.address)",
        [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys])
    return {(r[0], r[1], r[2]) for r in rows}


async def recent_sends(db: Conn, customers: Sequence[tuple[str, str]], since: datetime, now: datetime,
                       claimed_now: Sequence[str]) -> dict[tuple[str, str], list[datetime]]:
    """Each customer's messages to a person (not webhooks) sent since `since`, oldest first,
    and those another dispatcher is sending right now (as sent when it claimed them), so that
    two replicas do not both fill the last place under the cap (counted as sent `now`).
    `claimed_now`: this batch's own keys."""
    rows = await db.fetch(
        "SELECT k.tenant_id, k.customer_id, (SELECT array_agg(coalesce(n.sent_at, $5)"
        "   ORDER BY coalesce(n.sent_at, $5)) FROM notifications n"
        "   WHERE n.tenant_id = k.tenant_id AND n.customer_id = k.customer_id AND n.channel <> 'webhook'"
        "     AND (n.sent_at >= $3 OR (n.status = 'sending' AND n.notification_key <> ALL($4::text[])))) AS sends"
        " FROM unnest($1::text[], $2::text[]) AS k(tenant_id, customer_id)",
        [c[0] for c in customers], [c[1] for c in customers], since, list(claimed_now), now)
    return {(r[0], r[1]): list(r[2] or []) for r in rows}


async def add_history(conn: asyncpg.Connection, rows: Sequence[tuple[str, str, datetime, str, str | None]]) -> None:
    """Append (tenant, key, at, status, detail) rows to the notifications' histories."""
    if rows:
        await conn.execute(
            "INSERT INTO notification_history (tenant_id, notification_key, at, status, detail)"
            " SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[])",
            *(list(col) for col in zip(*rows)))


# -- suppressions ---------------------------------------------------------------------------------

async def add_suppressions(conn: asyncpg.Connection, rows: Sequence[tuple[str, str, str, str, str | None, str | None]],
                           at: datetime, by: str | None = None) -> None:
    """(tenant, channel, address, reason, detail, notification_key); an address already listed keeps its first reason."""
    if rows:
        await conn.execute(
            "INSERT INTO suppressions (tenant_id, channel, address, reason, detail, notification_key, created_at,"
            " created_by) SELECT t, c, a, r, d, k, $7, $8 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],"
            " $5::text[], $6::text[]) AS u(t, c, a, r, d, k) ON CONFLICT DO NOTHING",
            *(list(col) for col in zip(*rows)), at, by)


async def list_suppressions(db: Conn, tenant_id: str, channel: str | None, limit: int) -> list[asyncpg.Record]:
    return await db.fetch(
        "SELECT * FROM suppressions WHERE tenant_id = $1 AND ($2::text IS NULL OR channel = $2)"
        " ORDER BY created_at DESC, address LIMIT $3", tenant_id, channel, limit)


async def delete_suppression(db: Conn, tenant_id: str, channel: str, address: str) -> bool:
    return await db.fetchval(
        "WITH d AS (DELETE FROM suppressions WHERE tenant_id = $1 AND channel = $2 AND address = $3 RETURNING 1)"
        " SELECT count(*) > 0 FROM d", tenant_id, channel, address)


# -- contacts ---------------------------------------------------------------------------------------

async def contact(db: Conn, tenant_id: str, customer_id: str) -> asyncpg.Record | None:
    return await db.fetchrow("SELECT * FROM contacts WHERE tenant_id = $1 AND customer_id = $2", tenant_id, customer_id)


async def set_preferences(db: Conn, tenant_id: str, customer_id: str, declined: list[str],
                          webhook_url: str | None, webhook_secret: str | None) -> asyncpg.Record | None:
    """Set a contact's declined channels and webhook endpoint; the secret changes only when given."""
    return await db.fetchrow(
        "UPDATE contacts SET declined_channels = $3, webhook_url = $4,"
        " webhook_secret = CASE WHEN $4::text IS NULL THEN NULL ELSE coalesce($5, webhook_secret) END,"
        " updated_at = now() WHERE tenant_id = $1 AND customer_id = $2 RETURNING *",
        tenant_id, customer_id, declined, webhook_url, webhook_secret)


_OPT_COLUMN = {"email": "email_opt_out", "sms": "sms_opt_out", "webhook": "webhook_opt_out"}


async def set_opt_out(conn: asyncpg.Connection, tenant_id: str, customer_id: str, channel: str,
                      opted_out: bool) -> bool | None:
    """Whether it changed; None: no such contact."""
    column = _OPT_COLUMN[channel]
    row = await conn.fetchrow(
        f"WITH old AS (SELECT {column} AS was FROM contacts WHERE tenant_id = $1 AND customer_id = $2 FOR UPDATE)"
        f" UPDATE contacts c SET {column} = $3, updated_at = now() FROM old"
        f" WHERE c.tenant_id = $1 AND c.customer_id = $2 RETURNING old.was",
        tenant_id, customer_id, opted_out)
    return None if row is None else row["was"] != opted_out


async def set_sms_opt_out_by_phone(conn: asyncpg.Connection, phone: str, opted_out: bool) -> list[asyncpg.Record]:
    """Every contact (any tenant) with this phone whose SMS opt-out changes: the number's owner
    asked, whichever company's message they answered."""
    return await conn.fetch(
        "UPDATE contacts SET sms_opt_out = $2, updated_at = now() WHERE phone = $1 AND sms_opt_out <> $2"
        " RETURNING tenant_id, customer_id", phone, opted_out)


async def signing_key(db: Conn) -> bytes:
    return bytes.fromhex(await db.fetchval("SELECT key FROM link_keys WHERE id = 1"))


# -- notifications, read side ---------------------------------------------------------------

async def list_notifications(db: Conn, tenant_id: str, *, customer_id: str | None, case_id: str | None,
                             status: str | None, channel: str | None, since: datetime | None,
                             until: datetime | None, after: tuple[datetime, str] | None,
                             limit: int) -> list[asyncpg.Record]:
    return await db.fetch(
        "SELECT * FROM notifications WHERE tenant_id = $1 AND ($2::text IS NULL OR customer_id = $2)"
        " AND ($3::text IS NULL OR case_id = $3) AND ($4::text IS NULL OR status = $4)"
        " AND ($5::text IS NULL OR channel = $5) AND ($6::timestamptz IS NULL OR requested_at >= $6)"
        " AND ($7::timestamptz IS NULL OR requested_at < $7)"
        " AND ($8::timestamptz IS NULL OR (requested_at, notification_key) > ($8, $9::text))"
        " ORDER BY requested_at, notification_key LIMIT $10",
        tenant_id, customer_id, case_id, status, channel, since, until,
        after[0] if after else None, after[1] if after else None, limit)


async def notification(db: Conn, tenant_id: str, key: str) -> asyncpg.Record | None:
    return await db.fetchrow("SELECT * FROM notifications WHERE tenant_id = $1 AND notification_key = $2",
                             tenant_id, key)


async def history(db: Conn, tenant_id: str, key: str) -> list[asyncpg.Record]:
    return await db.fetch("SELECT at, status, detail FROM notification_history WHERE tenant_id = $1"
                          " AND notification_key = $2 ORDER BY id", tenant_id, key)


async def latest_notice_of_case(db: Conn, tenant_id: str, case_id: str) -> asyncpg.Record | None:
    return await db.fetchrow(
        "SELECT n.*, c.name FROM notifications n LEFT JOIN contacts c USING (tenant_id, customer_id)"
        " WHERE n.tenant_id = $1 AND n.case_id = $2 ORDER BY n.requested_at DESC, n.notification_key DESC LIMIT 1",
        tenant_id, case_id)

