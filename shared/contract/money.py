"""Money is integer minor units plus an ISO 4217 code; the exponent comes from CLDR (babel)."""
from __future__ import annotations

from decimal import Decimal
from functools import lru_cache
from typing import Annotated

from babel.numbers import format_currency, get_currency_precision, list_currencies
from pydantic import AfterValidator

# Codes that are not money a customer can owe (funds codes, precious metals, testing).
_NOT_TENDER = {"XAG", "XAU", "XPD", "XPT", "XTS", "XXX", "XBA", "XBB", "XBC", "XBD", "XDR", "XSU", "XUA"}


@lru_cache(maxsize=1)
def known_currencies() -> frozenset[str]:
    return frozenset(c for c in list_currencies() if c not in _NOT_TENDER)


def currency_exponent(code: str) -> int:
    return get_currency_precision(code)


def validate_currency(code: str) -> str:
    if code not in known_currencies():
        raise ValueError(f"unknown ISO 4217 currency code {code!r}")
    return code


CurrencyCode = Annotated[str, AfterValidator(validate_currency)]


def to_major(amount_minor: int, currency: str) -> Decimal:
    return Decimal(amount_minor).scaleb(-currency_exponent(currency))


def format_money(amount_minor: int, currency: str, locale: str = "en") -> str:
    return format_currency(to_major(amount_minor, currency), currency, locale=locale)
