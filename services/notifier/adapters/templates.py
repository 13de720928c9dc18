"""Renders notices with Jinja2 in the customer's language (en, tr, cs, fa; fa right-to-left)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from pathlib import Path

from babel.dates import format_date
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from shared.contract.money import format_money

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
LANGUAGES = ("en", "tr", "cs", "fa")
RTL = {"fa"}


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    text: str
    html: str


@lru_cache(maxsize=1)
def _env() -> Environment:
    return Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html", "html.j2"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


@lru_cache(maxsize=None)
def messages(language: str) -> dict:
    return json.loads((TEMPLATES / "messages" / f"{language}.json").read_text(encoding="utf-8"))


def _context(template: str, language: str, name: str, items: list[dict], unsubscribe_url: str,
             links: dict[str, str] | None = None, balances: list[dict] | None = None, offer: dict | None = None) -> dict:
    language = language if language in LANGUAGES else "en"
    m = messages(language)
    if template not in m:
        raise KeyError(f"no template {template!r} in language {language!r}")
    shown = [
        {
            "number": i["number"],
            "amount": format_money(i["open_amount_minor"], i["currency"], language),
            "due_date": format_date(date.fromisoformat(str(i["due_date"])), format="medium", locale=language),
        }
        for i in items
    ]
    totals: dict[str, int] = {}
    for i in items:  # never add different currencies together
        totals[i["currency"]] = totals.get(i["currency"], 0) + i["open_amount_minor"]
    total = ", ".join(format_money(v, c, language) for c, v in sorted(totals.items()))
    return {
        "m": m, "template": template, "language": language, "direction": "rtl" if language in RTL else "ltr",
        "name": name, "items": shown, "total": total, "unsubscribe_url": unsubscribe_url,
        "subject": m[template]["subject"],
        "links": {k: v for k, v in (links or {}).items() if k in m},
        "balances": [{"currency": b["currency"], "amount": format_money(b["balance_minor"], b["currency"], language)}
                     for b in balances or []],
        "offer": {"pay": format_money(offer["pay_minor"], offer["currency"], language),
                  "discount": format_money(offer["discount_minor"], offer["currency"], language),
                  "pay_by": format_date(date.fromisoformat(str(offer["pay_by"])), format="medium", locale=language)}
                 if offer else None,
    }


def render_email(template: str, language: str, name: str, items: list[dict], unsubscribe_url: str,
                 links: dict[str, str] | None = None, balances: list[dict] | None = None,
                 offer: dict | None = None) -> RenderedEmail:
    ctx = _context(template, language, name, items, unsubscribe_url, links, balances, offer)
    env = _env()
    return RenderedEmail(
        subject=ctx["subject"],
        text=env.get_template("email.txt.j2").render(ctx),
        html=env.get_template("email.html.j2").render(ctx),
    )


def render_sms(template: str, language: str, name: str, items: list[dict], offer: dict | None = None) -> str:
    ctx = _context(template, language, name, items, "", offer=offer)
    return " ".join(_env().get_template("sms.txt.j2").render(ctx).split())
