"""Money is integer minor units plus an ISO 4217 code.

The exponent is the ISO 4217 minor unit, from the maintained `iso4217` data package. It is not
CLDR's display digits (babel's get_currency_precision), which differ: CLDR shows HUF, IDR, COP,
ALL and MGA with 0 decimals and IQD with 0, where ISO 4217 has 2, 2, 2, 2, 2 and 3. Babel is used
only to format, and then with the ISO number of decimals.
"""
from __future__ import annotations

from decimal import Decimal
from functools import cache, lru_cache
from typing import Annotated

from babel import Locale
from babel.numbers import NumberPattern, get_minus_sign_symbol
from iso4217 import Currency
from pydantic import AfterValidator

# code -> ISO 4217 minor unit, for every active code; None where ISO says "N.A." (precious
# metals, bond-market and accounting units, testing, "no currency").
_MINOR_UNITS: dict[str, int | None] = {c.code: c.exponent for c in Currency}

# Codes that are not money a customer can owe (funds codes, precious metals, testing). All of
# them are "N.A." in ISO 4217 today; listed so that a new table giving one a number cannot
# make it tender.
_NOT_TENDER = {"XAG", "XAU", "XPD", "XPT", "XTS", "XXX", "XBA", "XBB", "XBC", "XBD", "XDR", "XSU", "XUA"}


@lru_cache(maxsize=1)
def known_currencies() -> frozenset[str]:
    """The active ISO 4217 codes a customer's debt can be in."""
    return frozenset(code for code, units in _MINOR_UNITS.items() if units is not None and code not in _NOT_TENDER)


def currency_exponent(code: str) -> int:
    """The ISO 4217 minor unit: 2 for EUR and HUF, 0 for JPY, 3 for KWD and IQD, 4 for CLF."""
    try:
        units = _MINOR_UNITS[code]
    except KeyError:
        raise ValueError(f"unknown ISO 4217 currency code {code!r}") from None
    if units is None:
        raise ValueError(f"ISO 4217 currency code {code!r} has no minor unit (N.A.): it is not money")
    return units


def validate_currency(code: str) -> str:
    if code not in known_currencies():
        raise ValueError(f"unknown ISO 4217 currency code {code!r}")
    return code


CurrencyCode = Annotated[str, AfterValidator(validate_currency)]


def to_minor(amount: Decimal | str | int, currency: str) -> int:
    """An amount in major units ("40.00") as minor units of `currency`; more decimals than the
    currency has is an error, never a rounding."""
    minor = Decimal(str(amount)).scaleb(currency_exponent(currency))
    if minor != minor.to_integral_value():
        raise ValueError(f"{amount} has more decimals than {currency} has ({currency_exponent(currency)})")
    return int(minor)


def to_major(amount_minor: int, currency: str) -> Decimal:
    return Decimal(amount_minor).scaleb(-currency_exponent(currency))


@lru_cache(maxsize=None)
def _currency_pattern(locale: str, exponent: int) -> tuple[Locale, NumberPattern]:
    """The locale's standard currency pattern with exactly `exponent` decimals (CLDR's own
    pattern would round to its display digits, e.g. HUF 1,234.56 to 1,235)."""
    parsed = Locale.parse(locale)
    p = parsed.currency_formats["standard"]
    return parsed, NumberPattern(p.pattern, p.prefix, p.suffix, p.grouping, p.int_prec, (exponent, exponent),
                                 p.exp_prec, p.exp_plus, p.number_pattern)


@lru_cache(maxsize=65_536)  # a notice formats each amount twice (text, HTML); statements repeat them
def format_money(amount_minor: int, currency: str, locale: str = "en") -> str:
    """E.g. 123456 HUF -> "HUF 1,234.56", 1234 JPY -> "¥1,234", 1234567 KWD -> "KWD 1,234.567"."""
    parsed, pattern = _currency_pattern(locale, currency_exponent(currency))
    return pattern.apply(to_major(amount_minor, currency), parsed, currency=currency, currency_digits=False)


# Digits of the numbering systems a locale may default to (CLDR numberingSystems.xml). Babel
# formats with a numbering system's decimal and group symbols but always with ASCII digits.
_DIGITS: dict[str, str] = {
    "latn": "0123456789",
    "arab": "٠١٢٣٤٥٦٧٨٩",
    "arabext": "۰۱۲۳۴۵۶۷۸۹",
    "beng": "০১২৩৪৫৬৭৮৯",
    "deva": "०१२३४५६७८९",
    "mymr": "၀၁၂၃၄၅၆၇၈၉",
}


@cache
def numbering_system(locale: str) -> str:
    """The locale's default numbering system where its digits are known here, else "latn":
    "arabext" for fa, "latn" for en, tr and cs."""
    system = Locale.parse(locale).default_numbering_system
    return system if system in _DIGITS else "latn"


def native_digits(text: str, locale: str) -> str:
    """`text` with its ASCII digits written in the locale's own digits: "20 مارس 2026" ->
    "۲۰ مارس ۲۰۲۶" for fa; unchanged for locales that use Latin digits."""
    system = numbering_system(locale)
    return text if system == "latn" else text.translate(str.maketrans("0123456789", _DIGITS[system]))


@lru_cache(maxsize=65_536)
def format_money_native(amount_minor: int, currency: str, locale: str = "en") -> str:
    """format_money in the locale's own numbering system: its digits, decimal and group
    separators and minus sign, e.g. 123450 EUR in fa -> LRM "€" NBSP "۱٬۲۳۴٫۵۰". The same text as
    format_money where the locale writes Latin digits (en, tr, cs)."""
    system = numbering_system(locale)
    if system == "latn":
        return format_money(amount_minor, currency, locale)
    parsed, pattern = _currency_pattern(locale, currency_exponent(currency))
    text = pattern.apply(to_major(amount_minor, currency), parsed, currency=currency, currency_digits=False,
                         numbering_system=system)
    if amount_minor < 0:  # the pattern's "-" stands for the numbering system's minus sign
        text = text.replace("-", get_minus_sign_symbol(parsed, numbering_system=system), 1)
    return native_digits(text, locale)
