"""Renders consolidated collection notices with Jinja2 in the customer's language: en, tr, cs and
fa (Persian, right to left). No I/O beyond reading the packaged templates and messages.

A notice lists every open item (invoice number, due date, days overdue, open amount, fees,
interest, line total) and then the totals per currency: amounts in different currencies are
never added together. Amounts have the currency's ISO 4217 number of decimals; amounts, numbers
and dates are written the way the language writes them (Babel/CLDR), Persian with Persian
digits and the Arabic decimal and group separators ("€ ۱٬۲۳۴٫۵۰"). Numbers, invoice numbers,
amounts, dates and the customer's name are bidi-isolated: <bdi> in HTML, and FSI (U+2068) …
PDI (U+2069) in the plain text, subject and SMS of a right-to-left language.

The e-mail is a subject, a plain text and an HTML part; the SMS is one line: the template's
prefix, the number of invoices and the total per currency, the offer for a settlement offer,
and then always the opt-out text with the keyword to send (STOP, IPTAL, STOP, لغو).

Tenant overrides
----------------
A tenant may replace, per template and language, any of three texts (TemplateTexts):

* ``subject``: the e-mail subject (one line; must not be empty);
* ``body``: the paragraphs between the salutation and the table of items (a blank line starts a
  new paragraph). The salutation, the table and totals, the offer, balances, links, closing
  and the unsubscribe link stay the shipped ones;
* ``sms``: the SMS before the opt-out text, which is always appended.

They are Jinja2 source, rendered in an immutable sandbox with StrictUndefined (an unknown
variable is an error). In the HTML rendering of ``body`` the variables and the literal text are
escaped (a tenant writes text, never markup) and the ``safe`` filter is not available. The
variables, already formatted in the language and bidi-isolated:

* ``name``: the customer's name; ``language``: en, tr, cs or fa; ``template``: its name;
* ``count``: the number of invoices (a number: ``{% if count > 1 %}`` works; it prints in the
  language's digits); ``invoices``: "3 invoices" in the language, plural rules applied;
* ``total``: the total due per currency as a list in the language ("€2,271.37 and
  ₺25,312.60"), never a sum across currencies;
* ``totals``: per currency (by code): ``currency``, ``open``, ``fees``, ``interest``, ``total``;
* ``items``: per invoice: ``number``, ``currency``, ``due_date``, ``days_overdue`` (a number, or
  none before the due date), ``open``, ``fees``, ``interest``, ``total`` (the line total);
* ``days_overdue_max``: the most days any item is overdue (0 if none is);
* ``earliest_due_date``: the earliest due date of the items;
* ``offer``: none, or for a settlement offer ``pay``, ``discount`` and ``pay_by``;
* ``balances``: ``currency`` and ``amount`` per stated balance;
* ``links``: name -> URL (``confirm``, ``contest`` for a balance confirmation);
* ``unsubscribe_url``: the notice's unsubscribe link ("" if it has none).

validate_override checks a tenant's texts before they are stored: syntax, the template and
languages, that each renders with sample_notice in its language, a non-empty subject and SMS,
and that the SMS (with the opt-out text) fits the tenant's segment limit.
"""
from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import date
from functools import cache, lru_cache
from pathlib import Path
from typing import Any, Self

from babel import Locale
from babel.dates import format_date
from babel.lists import format_list
from babel.numbers import format_decimal
from jinja2 import (
    Environment,
    FileSystemLoader,
    StrictUndefined,
    Template,
    TemplateSyntaxError,
    nodes,
    select_autoescape,
)
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import Markup, escape

from services.notifier.domain.sms_length import sms_segments
from shared.contract.money import format_money_native, native_digits, numbering_system
from shared.contract.templates import LANGUAGES, NOTICE_TEMPLATES
from shared.logging import get_logger

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
RTL = frozenset(lang for lang in LANGUAGES if Locale.parse(lang).character_order == "right-to-left")
FSI, PDI = "\u2068", "\u2069"
log = get_logger(__name__)

__all__ = [
    "LANGUAGES", "RTL", "Notice", "RenderedEmail", "RenderedSms", "TemplateRejected", "TemplateTexts", "messages",
    "render_email", "render_sms", "resolve_language", "sample_notice", "validate_override",
]


@dataclass(frozen=True)
class Notice:
    template: str
    name: str
    items: list[dict]  # NoticeItem JSON: fees_minor / interest_minor / days_overdue may be missing (0, 0, None)
    unsubscribe_url: str = ""
    links: dict[str, str] = field(default_factory=dict)
    balances: list[dict] = field(default_factory=list)  # {"currency", "balance_minor"}
    offer: dict | None = None  # {"currency", "pay_minor", "discount_minor", "pay_by"}


@dataclass(frozen=True)
class TemplateTexts:
    """A tenant's override of one template in one language; None keeps the shipped text."""

    subject: str | None = None
    body: str | None = None
    sms: str | None = None


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    text: str
    html: str
    language: str
    fallback_from: str | None  # the language asked for, when it was not offered and `language` was used


@dataclass(frozen=True)
class RenderedSms:
    text: str
    language: str
    fallback_from: str | None
    encoding: str  # "GSM-7" | "UCS-2"
    segments: int


class TemplateRejected(ValueError):
    """A tenant's override that cannot be stored: `field` names it ("languages.tr.sms")."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


# --------------------------------------------------------------------------------------------
# Shipped texts and environments

@lru_cache(maxsize=1)
def _env() -> Environment:
    return Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html", "html.j2"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


@cache
def messages(language: str) -> dict:
    return json.loads((TEMPLATES / "messages" / f"{language}.json").read_text(encoding="utf-8"))


@lru_cache(maxsize=2)
def _sandbox(html: bool) -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=html, trim_blocks=True,
                                        lstrip_blocks=True)
    env.filters.pop("safe", None)  # a tenant's text is always escaped in HTML
    return env


@lru_cache(maxsize=512)
def _compile(source: str, html: bool) -> Template:
    """A tenant's text compiled in the sandbox. For HTML its literal text is escaped too (not
    only the variables): a tenant writes text, never markup."""
    env = _sandbox(html)
    if not html:
        return env.from_string(source)
    tree = env.parse(source)
    for node in tree.find_all(nodes.TemplateData):
        node.data = str(escape(node.data))
    return env.template_class.from_code(env, env.compile(tree), env.make_globals(None))


def _check_template(template: str) -> None:
    if template not in NOTICE_TEMPLATES:
        raise KeyError(f"no template {template!r}")


# --------------------------------------------------------------------------------------------
# Languages

def _primary(tag: str) -> str:
    return tag.strip().replace("_", "-").split("-")[0].lower()


def resolve_language(requested: str | None, offered: Collection[str], default: str) -> tuple[str, str | None]:
    """The language to write in and, if the requested one is not offered, the requested one
    (else None). A regional tag counts as its language ("fa-IR" is fa). Languages in `offered`
    that no template exists for are ignored; `default` must be offered."""
    available = {lang for lang in offered if lang in LANGUAGES}
    if default not in available:
        raise ValueError(f"the default language {default!r} is not among the offered {sorted(available)}")
    if not requested or not requested.strip():
        return default, None
    wanted = _primary(requested)
    if wanted in available:
        return wanted, None
    return default, requested


def _direction(language: str) -> str:
    return "rtl" if language in RTL else "ltr"


# --------------------------------------------------------------------------------------------
# Formatting

def _as_date(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])


@lru_cache(maxsize=65_536)  # a notice's dates and counts repeat, and each is written for text and HTML
def _date(value: Any, language: str) -> str:
    return native_digits(format_date(_as_date(value), format="medium", locale=language), language)


@lru_cache(maxsize=65_536)
def _integer(n: int, language: str) -> str:
    return native_digits(format_decimal(n, locale=language, numbering_system=numbering_system(language)), language)


@dataclass(frozen=True)
class _Mode:
    html: bool
    rtl: bool

    def iso(self, value: Any) -> Any:
        """`value` bidi-isolated for this output."""
        if self.html:
            return Markup("<bdi>{}</bdi>").format(value)
        return f"{FSI}{value}{PDI}" if self.rtl else str(value)

    def fill(self, pattern: str, **values: Any) -> Any:
        """A message with {placeholders} replaced by (already isolated) values; escaped for HTML."""
        out = escape(pattern) if self.html else pattern
        for key, value in values.items():
            out = out.replace("{" + key + "}", escape(value) if self.html else str(value))
        return out


class _Number(int):
    """An int for a template's arithmetic and comparisons that prints in the language's digits,
    bidi-isolated as its output needs."""

    shown: Any

    def __new__(cls, value: int, shown: Any) -> Self:
        number = super().__new__(cls, value)
        number.shown = shown
        return number

    def __str__(self) -> str:
        return str(self.shown)

    def __html__(self) -> str:
        return str(escape(self.shown))


def _list(values: list[Any], language: str, mode: _Mode) -> Any:
    """Values joined as the language lists them ("A, B and C"), without escaping them twice."""
    if not values:
        return Markup("") if mode.html else ""
    slots = [f"\ue000{i}\ue001" for i in range(len(values))]
    joined = format_list(slots, style="standard", locale=language)
    out = escape(joined) if mode.html else joined
    for slot, value in zip(slots, values, strict=True):
        out = out.replace(slot, value)
    return out


def _plural(forms: dict[str, str], n: int, language: str) -> str:
    return forms.get(_locale(language).plural_form(n), forms["other"])


@cache
def _locale(language: str) -> Locale:
    return Locale.parse(language)


def _variables(notice: Notice, language: str, mode: _Mode) -> dict[str, Any]:
    """What a template may print, formatted in `language` and isolated for `mode`."""
    m = messages(language)
    iso = mode.iso

    def money(minor: int, currency: str) -> Any:
        return iso(format_money_native(minor, currency, language))

    def number(n: int) -> _Number:
        return _Number(n, iso(_integer(n, language)))

    items, sums, days, due_dates = [], {}, [], []
    for raw in notice.items:
        currency = raw["currency"]
        open_, fees, interest = (int(raw["open_amount_minor"]), int(raw.get("fees_minor") or 0),
                                 int(raw.get("interest_minor") or 0))
        line = open_ + fees + interest
        total = sums.setdefault(currency, [0, 0, 0, 0])  # never add different currencies together
        for i, v in enumerate((open_, fees, interest, line)):
            total[i] += v
        overdue = raw.get("days_overdue")
        if overdue is not None:
            days.append(int(overdue))
        due_dates.append(_as_date(raw["due_date"]))
        items.append({
            "number": iso(raw["number"]), "currency": iso(currency), "due_date": iso(_date(raw["due_date"], language)),
            "days_overdue": None if overdue is None else number(int(overdue)),
            "open": money(open_, currency), "fees": money(fees, currency), "interest": money(interest, currency),
            "total": money(line, currency),
        })
    totals = [{"currency": iso(c), "open": money(s[0], c), "fees": money(s[1], c), "interest": money(s[2], c),
               "total": money(s[3], c)} for c, s in sorted(sums.items())]
    count = number(len(items))
    offer = notice.offer
    return {
        "name": iso(notice.name), "language": language, "template": notice.template,
        "count": count, "invoices": mode.fill(_plural(m["invoices"], len(items), language), count=count),
        "total": _list([t["total"] for t in totals], language, mode), "totals": totals, "items": items,
        "days_overdue_max": number(max(days, default=0)),
        "earliest_due_date": iso(_date(min(due_dates), language)) if due_dates else "",
        "offer": {"pay": money(offer["pay_minor"], offer["currency"]),
                  "discount": money(offer["discount_minor"], offer["currency"]),
                  "pay_by": iso(_date(offer["pay_by"], language))} if offer else None,
        "balances": [{"currency": iso(b["currency"]), "amount": money(b["balance_minor"], b["currency"])}
                     for b in notice.balances],
        "links": dict(notice.links),
        "unsubscribe_url": notice.unsubscribe_url,
    }


def _layout_context(notice: Notice, language: str, mode: _Mode) -> dict[str, Any]:
    """The tenant-visible variables plus what the shipped layouts need."""
    m = messages(language)
    ctx = _variables(notice, language, mode)
    offer = ctx["offer"]
    if offer:
        offer = dict(offer, terms=mode.fill(m["offer_terms"], **offer))
    return {
        **ctx, "m": m, "direction": _direction(language), "offer": offer,
        "salutation": mode.fill(m["salutation"], name=ctx["name"]),
        "link_list": [(m[k], url) for k, url in notice.links.items() if k in m],
        "sms_summary": (mode.fill(m["sms_summary"], invoices=ctx["invoices"], total=ctx["total"])
                        if notice.items else ""),
    }


# --------------------------------------------------------------------------------------------
# Rendering

_SPACE = re.compile(r"[^\S\xa0]+")  # any whitespace but the no-break space a locale puts in amounts


def _one_line(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


MAX_TENANT_TEXT = 64 * 1024  # characters a tenant's text may render to


def _override(source: str, notice: Notice, language: str, html: bool) -> str:
    mode = _Mode(html=html, rtl=language in RTL)
    out, size = [], 0
    for chunk in _compile(source, html).generate(_variables(notice, language, mode)):
        size += len(chunk)
        if size > MAX_TENANT_TEXT:
            raise ValueError(f"renders to more than {MAX_TENANT_TEXT} characters")
        out.append(chunk)
    return "".join(out)


def _paragraphs(text: str) -> list[str]:
    return [p.strip() for p in re.split(r"\n[^\S\n]*\n", text.strip()) if p.strip()]


def _tenant_text(source: str | None, notice: Notice, language: str, html: bool, field_name: str) -> str | None:
    """A tenant's text rendered, or None for the shipped one: also when a stored override that
    passed validate_override fails on this notice's data (a notice still goes out)."""
    if source is None:
        return None
    try:
        return _override(source, notice, language, html)
    except Exception as exc:  # noqa: BLE001 - a tenant's template must not stop the notice
        log.warning("tenant template failed, shipped text used", template=notice.template, language=language,
                    field=field_name, error=str(exc)[:300])
        return None


def _email(notice: Notice, language: str, texts: TemplateTexts | None) -> tuple[str, str, str]:
    texts = texts or TemplateTexts()
    m = messages(language)[notice.template]
    rtl = language in RTL
    subject = _tenant_text(texts.subject, notice, language, False, "subject")
    subject = _one_line(subject or "") or _one_line(m["subject"])
    body_text = _tenant_text(texts.body, notice, language, False, "body")
    body_html = _tenant_text(texts.body, notice, language, True, "body") if body_text is not None else None
    if body_text is not None and body_html is not None:
        body_text = "\n\n".join(_paragraphs(body_text))
        body = [Markup(p).replace("\n", Markup("<br>\n"))  # already escaped by the sandbox
                for p in _paragraphs(body_html)]
    else:
        body_text, body = m["body"], [escape(m["body"])]
    env = _env()
    text = env.get_template("email.txt.j2").render(
        _layout_context(notice, language, _Mode(html=False, rtl=rtl)), subject=subject, body=body_text)
    html = env.get_template("email.html.j2").render(
        _layout_context(notice, language, _Mode(html=True, rtl=rtl)), subject=subject, body=body)
    return subject, re.sub(r"\n{3,}", "\n\n", text), html


def _sms(notice: Notice, language: str, texts: TemplateTexts | None, *, strict: bool = False) -> str:
    ctx = _layout_context(notice, language, _Mode(html=False, rtl=language in RTL))
    source = texts.sms if texts is not None else None
    if strict and source is not None:
        head = _override(source, notice, language, False)
    else:
        head = _tenant_text(source, notice, language, False, "sms")
    if head is None or not _one_line(head):
        head = _env().get_template("sms.txt.j2").render(ctx)
    return _one_line(f"{_one_line(head)} {ctx['m']['sms_stop']}")


def render_email(notice: Notice, language: str | None, *, offered: Collection[str] = LANGUAGES,
                 default_language: str = "en", overrides: Mapping[str, TemplateTexts] | None = None) -> RenderedEmail:
    """The notice as an e-mail in `language`, or in `default_language` if the tenant does not
    offer it; `overrides` are the tenant's texts for `notice.template` by language."""
    _check_template(notice.template)
    used, fallback = resolve_language(language, offered, default_language)
    subject, text, html = _email(notice, used, (overrides or {}).get(used))
    return RenderedEmail(subject=subject, text=text, html=html, language=used, fallback_from=fallback)


def render_sms(notice: Notice, language: str | None, *, offered: Collection[str] = LANGUAGES,
               default_language: str = "en", overrides: Mapping[str, TemplateTexts] | None = None) -> RenderedSms:
    """The notice as one SMS line, with its encoding and number of segments."""
    _check_template(notice.template)
    used, fallback = resolve_language(language, offered, default_language)
    text = _sms(notice, used, (overrides or {}).get(used))
    length = sms_segments(text)
    return RenderedSms(text=text, language=used, fallback_from=fallback, encoding=length.encoding,
                       segments=length.segments)


# --------------------------------------------------------------------------------------------
# Samples and validation of tenant overrides

_SAMPLE_LINKS = {"confirm": "https://pay.example.test/balance/sample/confirm",
                 "contest": "https://pay.example.test/balance/sample/contest"}


def _sample_items(template: str) -> list[dict]:
    """An older overdue EUR invoice with fees and interest, a TRY and another EUR invoice: due
    soon, due today, or overdue with charges, as the template is about."""
    first = {"invoice_id": "sample-1", "number": "INV-2026-0141", "currency": "EUR", "open_amount_minor": 123450,
             "due_date": "2026-02-10", "days_overdue": 38, "fees_minor": 4000, "interest_minor": 1285}
    if template == "reminder_pre_due":
        rest = [("2026-03-27", None, 0, 0), ("2026-03-31", None, 0, 0)]
    elif template == "reminder_due":
        rest = [("2026-03-20", 0, 0, 0), ("2026-03-20", 0, 0, 0)]
    else:
        rest = [("2026-02-28", 20, 25000, 31260), ("2026-03-05", 15, 0, 402)]
    (d2, o2, f2, i2), (d3, o3, f3, i3) = rest
    return [
        first,
        {"invoice_id": "sample-2", "number": "INV-2026-0178", "currency": "TRY", "open_amount_minor": 2475000,
         "due_date": d2, "days_overdue": o2, "fees_minor": f2, "interest_minor": i2},
        {"invoice_id": "sample-3", "number": "INV-2026-0203", "currency": "EUR", "open_amount_minor": 98000,
         "due_date": d3, "days_overdue": o3, "fees_minor": f3, "interest_minor": i3},
    ]


def sample_notice(template: str) -> Notice:
    """A realistic consolidated notice of `template` for previews and validation: three
    invoices in two currencies (EUR, TRY) with fees and interest; the offer of a settlement
    offer; the balances and links of a balance confirmation."""
    _check_template(template)
    items = _sample_items(template)
    sums: dict[str, int] = {}
    for i in items:
        line = i["open_amount_minor"] + i["fees_minor"] + i["interest_minor"]
        sums[i["currency"]] = sums.get(i["currency"], 0) + line
    offer = None
    if template == "settlement_offer":
        offer = {"currency": "EUR", "pay_minor": 180000, "discount_minor": sums["EUR"] - 180000, "pay_by": "2026-04-03"}
    confirmation = template == "balance_confirmation"
    return Notice(
        template=template, name="Deniz Kaya", items=items,
        unsubscribe_url="https://pay.example.test/unsubscribe?token=sample",
        links=dict(_SAMPLE_LINKS) if confirmation else {},
        balances=[{"currency": c, "balance_minor": v} for c, v in sorted(sums.items())] if confirmation else [],
        offer=offer,
    )


def _error_line(exc: BaseException) -> int | None:
    """The template line a render error happened on (Jinja rewrites tracebacks to the source)."""
    line, tb = None, exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def validate_override(template: str, texts: Mapping[str, TemplateTexts], *, sms_segment_limit: int) -> None:
    """Raises TemplateRejected for the first text of a tenant's override of `template` (by
    language) that cannot be used: bad syntax, an unknown template or language, a text that
    does not render with sample_notice in its language, an empty subject or SMS, or an SMS
    (opt-out text included) longer than `sms_segment_limit` segments."""
    if template not in NOTICE_TEMPLATES:
        known = ", ".join(sorted(NOTICE_TEMPLATES))
        raise TemplateRejected("template", f"unknown template {template!r}; known: {known}")
    sample = sample_notice(template)
    for language, given in texts.items():
        if language not in LANGUAGES:
            raise TemplateRejected(f"languages.{language}",
                                   f"unknown language {language!r}; known: {', '.join(LANGUAGES)}")
        for name in ("subject", "body", "sms"):
            source = getattr(given, name)
            if source is None:
                continue
            where = f"languages.{language}.{name}"
            for html in (False, True) if name == "body" else (False,):
                try:
                    _compile(source, html)
                except TemplateSyntaxError as exc:
                    reason = f"template syntax error on line {exc.lineno}: {exc.message}"
                    raise TemplateRejected(where, reason) from None
                try:
                    rendered = _override(source, sample, language, html)
                except Exception as exc:  # noqa: BLE001 - whatever a tenant's template raises is its fault
                    line = _error_line(exc)
                    at = f" on line {line}" if line else ""
                    raise TemplateRejected(where, f"does not render with the sample notice{at}: {exc}") from None
            if name in ("subject", "sms") and not _one_line(rendered):
                raise TemplateRejected(where, f"the {name} is empty")
        if given.sms is not None:
            sms = _sms(sample, language, given, strict=True)
            length = sms_segments(sms)
            if length.segments > sms_segment_limit:
                raise TemplateRejected(
                    f"languages.{language}.sms",
                    f"the SMS with the sample notice and the opt-out text is {length.segments} segments "
                    f"({length.characters} {length.encoding} characters), more than the limit of {sms_segment_limit}")
