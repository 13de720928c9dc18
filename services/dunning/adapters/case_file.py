"""The legal case file: everything a lawyer needs about a case, gathered from the dunning
database at the hand-over (JSON), and rendered as a PDF in the customer's language; and the
portal's statement of what is open, from the same data."""
from __future__ import annotations

import json
import uuid
from datetime import date, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import asyncpg
from babel.dates import format_date, format_datetime
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from shared.contract.money import format_money, format_money_native, native_digits

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
CONVERSATIONS = ("call", "visit", "email_in", "letter_in", "note", "correction")
LANGUAGES = ("en", "tr", "cs", "fa")
RTL = {"fa"}


def _plain(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _rows(rows, *columns: str) -> list[dict]:
    return [{c: _plain(r[c]) for c in columns} for r in rows]


async def build(conn: asyncpg.Connection, tenant_id: str, case_id: uuid.UUID, now: datetime) -> dict:
    """The case file as of `now`: statement of account (invoices, payments, charges, totals),
    every notice with its date and channel, promises, payment plans, settlement offers, disputes, and all of it
    again as one timeline (the contact log)."""
    case = await conn.fetchrow(
        "SELECT c.*, coalesce(d.language, 'en') AS language, coalesce(d.timezone, 'UTC') AS timezone FROM cases c"
        " LEFT JOIN dunning_customers d USING (tenant_id, customer_id) WHERE c.tenant_id = $1 AND c.case_id = $2",
        tenant_id, case_id)
    items = await conn.fetch(
        "SELECT * FROM case_items WHERE tenant_id = $1 AND case_id = $2 ORDER BY due_date, number", tenant_id, case_id)
    ids = [i["invoice_id"] for i in items]
    payments = await conn.fetch(
        "SELECT * FROM item_payments WHERE tenant_id = $1 AND invoice_id = ANY($2::uuid[]) ORDER BY paid_at",
        tenant_id, ids)
    charges = await conn.fetch(
        "SELECT * FROM charges WHERE tenant_id = $1 AND invoice_id = ANY($2::uuid[]) ORDER BY assessed_at, charge_id",
        tenant_id, ids)
    notices = await conn.fetch(
        "SELECT * FROM notices WHERE tenant_id = $1 AND case_id = $2 ORDER BY sequence", tenant_id, case_id)
    promises = await conn.fetch(
        "SELECT * FROM promises WHERE tenant_id = $1 AND case_id = $2 ORDER BY created_at", tenant_id, case_id)
    plans = await conn.fetch(
        "SELECT * FROM payment_plans WHERE tenant_id = $1 AND case_id = $2 ORDER BY created_at", tenant_id, case_id)
    offers = await conn.fetch(
        "SELECT * FROM settlement_offers WHERE tenant_id = $1 AND case_id = $2 ORDER BY created_at", tenant_id, case_id)
    disputes = await conn.fetch(
        "SELECT * FROM disputes WHERE tenant_id = $1 AND customer_id = $2 AND (invoice_id IS NULL OR"
        " invoice_id = ANY($3::uuid[])) ORDER BY opened_at", tenant_id, case["customer_id"], ids)
    # what people said and wrote: the calls, visits, letters and notes of the contact log
    conversations = await conn.fetch(
        "SELECT at, kind, note, detail FROM contact_log WHERE tenant_id = $1 AND customer_id = $2"
        " AND kind = ANY($3::text[]) ORDER BY at, entry_id", tenant_id, case["customer_id"], list(CONVERSATIONS))
    today = now.date()
    open_items = [i for i in items if i["status"] == "open"]
    fees = sum(c["amount_minor"] for c in charges if c["kind"] != "interest")
    interest = sum(c["amount_minor"] for c in charges if c["kind"] == "interest")
    principal = sum(i["open_minor"] for i in open_items)
    log = ([{"at": _plain(n["created_at"]), "type": "notice", "what": f"{n['step']} ({n['channel']})",
             "amount_minor": n["total_minor"]} for n in notices]
           + [{"at": _plain(p["paid_at"]), "type": "payment" if p["amount_minor"] > 0 else "payment reversed",
               "what": p["payment_ref"], "amount_minor": p["amount_minor"]} for p in payments]
           + [{"at": _plain(p["created_at"]), "type": "promise", "what": f"{p['promised_date']} via {p['channel']}:"
               f" {p['status']}", "amount_minor": p["amount_minor"]} for p in promises]
           + [{"at": _plain(p["created_at"]), "type": "payment plan", "what": p["status"],
               "amount_minor": p["total_minor"]} for p in plans]
           + [{"at": _plain(o["created_at"]), "type": "settlement offer", "what": f"{o['discount_percent']} % off,"
               f" {o['pay_minor']} by {o['pay_by']}: {o['status']}", "amount_minor": o["owed_minor"]} for o in offers]
           + [{"at": _plain(d["opened_at"]), "type": "dispute", "what": f"{d['reason_code']}: {d['status']}"
               + (f" ({d['outcome']})" if d["outcome"] else ""), "amount_minor": d["disputed_minor"]} for d in disputes]
           + [{"at": _plain(c["assessed_at"]), "type": c["kind"], "what": c["charge_id"],
               "amount_minor": c["amount_minor"]} for c in charges]
           + [{"at": _plain(c["at"]), "type": c["kind"],
               "what": " – ".join(x for x in ((c["detail"] or {}).get("outcome"), c["note"]) if x),
               "amount_minor": None} for c in conversations])
    return {
        "case": {"case_id": str(case_id), "customer_id": case["customer_id"], "currency": case["currency"],
                 "opened_at": _plain(case["opened_at"]), "escalated_at": now.isoformat(),
                 "language": case["language"], "timezone": case["timezone"]},
        "statement": {
            "invoices": [{**_rows([i], "invoice_id", "number", "due_date", "amount_minor", "open_minor", "status")[0],
                          "days_overdue": max(0, (today - i["due_date"]).days)} for i in items],
            "payments": _rows(payments, "invoice_id", "payment_ref", "amount_minor", "paid_at"),
            "charges": _rows(charges, "charge_id", "kind", "invoice_id", "amount_minor", "period_start", "period_end"),
            "totals": {"open_minor": principal, "fees_minor": fees, "interest_minor": interest,
                       "total_minor": principal + fees + interest},
        },
        "notices": [{**_rows([n], "sequence", "step", "channel", "template", "notification_key", "total_minor")[0],
                     "sent_at": _plain(n["created_at"]), "items": n["items"]} for n in notices],
        "promises": _rows(promises, "promise_id", "amount_minor", "promised_date", "channel", "taken_by", "status",
                          "paid_minor", "created_at"),
        "payment_plans": _rows(plans, "plan_id", "total_minor", "status", "paid_minor", "missed_sequence", "created_at"),
        "settlement_offers": _rows(offers, "offer_id", "owed_minor", "discount_percent", "discount_minor", "pay_minor",
                                   "pay_by", "offered_by", "status", "paid_minor", "credit_minor", "created_at"),
        "disputes": _rows(disputes, "dispute_id", "invoice_id", "reason_code", "reason", "status", "outcome",
                          "credit_minor", "opened_at", "resolved_at"),
        "contact_log": sorted(log, key=lambda e: e["at"]),
    }


@lru_cache(maxsize=1)
def _env() -> Environment:
    return Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html.j2"]),
                       undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)


@lru_cache(maxsize=None)
def labels(language: str) -> dict[str, str]:
    return json.loads((TEMPLATES / "case_file" / f"{language}.json").read_text(encoding="utf-8"))


def render_html(document: dict) -> str:
    language = document["case"]["language"] if document["case"]["language"] in LANGUAGES else "en"
    currency = document["case"]["currency"]

    def money(minor: int | None) -> str:
        return "" if minor is None else format_money(minor, currency, language)

    def day(value: str | None) -> str:
        return "" if not value else format_date(date.fromisoformat(value[:10]), format="medium", locale=language)

    def moment(value: str | None) -> str:
        return "" if not value else format_datetime(datetime.fromisoformat(value), format="medium", locale=language)

    return _env().get_template("case_file.html.j2").render(
        doc=document, t=labels(language), language=language, direction="rtl" if language in RTL else "ltr",
        money=money, day=day, moment=moment)


def render_pdf(document: dict) -> bytes:
    from weasyprint import HTML  # pango is loaded only when a PDF is asked for

    return HTML(string=render_html(document)).write_pdf()


def render_statement_pdf(customer_id: str, documents: list[dict], now: datetime) -> bytes:
    """What a customer owes, per open case (currency): the portal's statement to download."""
    from weasyprint import HTML

    language = documents[0]["case"]["language"] if documents else "en"
    language = language if language in LANGUAGES else "en"

    def money(minor: int | None, currency: str) -> str:
        return "" if minor is None else format_money_native(minor, currency, language)

    def day(value: str | None) -> str:
        return "" if not value else native_digits(
            format_date(date.fromisoformat(value[:10]), format="medium", locale=language), language)

    html = _env().get_template("statement.html.j2").render(
        documents=documents, customer_id=customer_id, t=labels(language), language=language,
        direction="rtl" if language in RTL else "ltr", money=money, day=day,
        number=lambda n: native_digits(str(n), language), today=day(now.date().isoformat()))
    return HTML(string=html).write_pdf()

