"""What a page's form says, turned into the body of the API call that does it. Amounts are
typed in major units ("1250.50"); dates and times as the browser's date inputs send them, in the
collector's time zone. A problem names the form field and the reason; nothing is sent then."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from shared.contract.money import currency_exponent

OUTCOMES = ("reached", "no_answer", "wrong_number", "promise_taken", "dispute_raised", "plan_agreed", "call_back")
DISPUTE_REASONS = ("price", "quantity", "quality", "not_received", "duplicate", "already_paid", "other")
CONTACT_KINDS = ("call", "visit", "email_in", "letter_in", "note")


@dataclass(frozen=True)
class FormError(Exception):
    field: str
    reason: str


def _text(form: Mapping[str, str], name: str, *, required: bool = True, min_length: int = 1,
          max_length: int = 2000) -> str | None:
    value = (form.get(name) or "").strip()
    if not value:
        if required:
            raise FormError(name, "required")
        return None
    if len(value) < min_length:
        raise FormError(name, f"at least {min_length} characters")
    if len(value) > max_length:
        raise FormError(name, f"at most {max_length} characters")
    return value


def amount_minor(text: str | None, currency: str, field: str) -> int:
    """"1,250.50" or "1250,50" in `currency`'s major units -> minor units; more decimals than the
    currency has, or not a positive amount, is an error."""
    raw = (text or "").strip().replace(" ", "").replace("\u00a0", "")
    if not raw:
        raise FormError(field, "required")
    if "," in raw and "." not in raw:
        raw = raw.replace(",", ".")  # a decimal comma (tr, cs)
    raw = raw.replace(",", "")
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise FormError(field, f"{text!r} is not an amount") from None
    if not value.is_finite() or value <= 0:
        raise FormError(field, "must be more than zero")
    exponent = currency_exponent(currency)
    minor = value.scaleb(exponent)
    if minor != minor.to_integral_value():
        raise FormError(field, f"{currency} has {exponent} decimals")
    if minor > 10**15:
        raise FormError(field, "too large")
    return int(minor)


def day(text: str | None, field: str, *, required: bool = True) -> date | None:
    raw = (text or "").strip()
    if not raw:
        if required:
            raise FormError(field, "required")
        return None
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise FormError(field, f"{raw!r} is not a date (YYYY-MM-DD)") from None


def moment(text: str | None, timezone: str, field: str) -> datetime:
    """A datetime-local value ("2026-03-10T14:00") in the collector's time zone."""
    raw = (text or "").strip()
    if not raw:
        raise FormError(field, "required")
    try:
        naive = datetime.fromisoformat(raw)
    except ValueError:
        raise FormError(field, f"{raw!r} is not a date and time") from None
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        zone = ZoneInfo("UTC")
    return naive.replace(tzinfo=zone) if naive.tzinfo is None else naive


def _count(form: Mapping[str, str], name: str, low: int, high: int, default: int | None = None) -> int:
    raw = (form.get(name) or "").strip()
    if not raw and default is not None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise FormError(name, "a whole number") from None
    if not low <= value <= high:
        raise FormError(name, f"between {low} and {high}")
    return value


def promise(form: Mapping[str, str], currency: str) -> dict[str, Any]:
    return {"amount_minor": amount_minor(form.get("promise_amount"), currency, "promise_amount"),
            "promised_date": day(form.get("promise_date"), "promise_date").isoformat()}


def plan(form: Mapping[str, str]) -> dict[str, Any]:
    return {"count": _count(form, "plan_count", 1, 120),
            "first_due": day(form.get("plan_first_due"), "plan_first_due").isoformat(),
            "every_days": _count(form, "plan_every_days", 1, 366, default=30)}


def dispute(form: Mapping[str, str]) -> dict[str, Any]:
    code = form.get("dispute_reason_code") or ""
    if code not in DISPUTE_REASONS:
        raise FormError("dispute_reason_code", f"one of {', '.join(DISPUTE_REASONS)}")
    body: dict[str, Any] = {"reason_code": code,
                            "reason": _text(form, "dispute_reason", min_length=3)}
    invoice = (form.get("dispute_invoice_id") or "").strip()
    if invoice:
        body["invoice_id"] = invoice
    return body


def outcome(form: Mapping[str, str], currency: str, timezone: str) -> dict[str, Any]:
    """POST /v1/tasks/{id}/outcome: the outcome, a note, and what it needs said with it."""
    chosen = form.get("outcome") or ""
    if chosen not in OUTCOMES:
        raise FormError("outcome", f"one of {', '.join(OUTCOMES)}")
    body: dict[str, Any] = {"outcome": chosen, "note": _text(form, "note", required=False)}
    if chosen == "promise_taken":
        body["promise"] = promise(form, currency)
    elif chosen == "plan_agreed":
        body["plan"] = plan(form)
    elif chosen == "dispute_raised":
        d = dispute(form)
        body["dispute"] = {"reason_code": d["reason_code"], "reason": d["reason"],
                           **({"invoice_id": d["invoice_id"]} if "invoice_id" in d else {})}
    elif chosen == "call_back":
        body["call_back_at"] = moment(form.get("call_back_at"), timezone, "call_back_at").isoformat()
    return body


def contact(form: Mapping[str, str]) -> dict[str, Any]:
    kind = form.get("kind") or ""
    if kind not in CONTACT_KINDS:
        raise FormError("kind", f"one of {', '.join(CONTACT_KINDS)}")
    return {"kind": kind, "note": _text(form, "note")}


def reason(form: Mapping[str, str], field: str = "reason", *, min_length: int = 3, max_length: int = 500) -> str:
    return _text(form, field, min_length=min_length, max_length=max_length)  # type: ignore[return-value]
