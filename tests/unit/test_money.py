"""Currency exponents are ISO 4217 minor units (the iso4217 package), not CLDR display digits (issue #7)."""
from __future__ import annotations

from decimal import Decimal

import iso4217
import pytest
from babel.numbers import get_currency_precision
from pydantic import TypeAdapter, ValidationError

from services.notifier.adapters.templates import Notice, render_email, render_sms
from shared.contract.money import (
    CurrencyCode,
    currency_exponent,
    format_money,
    known_currencies,
    to_major,
    validate_currency,
)

ACTIVE = {c.code: c.exponent for c in iso4217.Currency}  # None where ISO's minor unit is "N.A."


def test_the_iso_table_is_loaded():
    assert len(ACTIVE) > 150
    assert {"EUR", "USD", "HUF", "IQD", "JPY", "KWD", "TRY"} <= set(ACTIVE)


def test_every_active_iso_code_has_the_iso_exponent():
    wrong = {}
    for code, exponent in sorted(ACTIVE.items()):
        if exponent is None:
            continue
        try:
            got = currency_exponent(code)
        except ValueError as exc:
            got = f"raised {exc}"
        if got != exponent:
            wrong[code] = (got, exponent)
    assert not wrong, f"currency_exponent differs from ISO 4217 (code: (got, ISO)): {wrong}"


def test_known_currencies_are_exactly_the_active_codes_with_a_minor_unit():
    assert known_currencies() == {code for code, exponent in ACTIVE.items() if exponent is not None}
    for code in known_currencies():
        assert validate_currency(code) == code


@pytest.mark.parametrize(("code", "exponent"), [
    ("HUF", 2), ("IDR", 2), ("COP", 2), ("ALL", 2), ("MGA", 2),  # CLDR displays 0 decimals
    ("IQD", 3),  # CLDR displays 0
    ("JPY", 0), ("KWD", 3), ("EUR", 2), ("CLF", 4),
])
def test_exponents_the_issue_names(code, exponent):
    assert currency_exponent(code) == exponent
    assert validate_currency(code) == code


def test_the_codes_the_issue_names_really_differ_from_cldr():
    # guards the test above: if CLDR ever agrees, these cases stop proving anything
    assert {c: get_currency_precision(c) for c in ("HUF", "IDR", "COP", "ALL", "MGA", "IQD")} == dict.fromkeys(
        ("HUF", "IDR", "COP", "ALL", "MGA", "IQD"), 0)


@pytest.mark.parametrize("code", ["XYZ", "eur", "", "EURO", "DEM", "HRK"])
def test_unknown_code_is_rejected(code):
    with pytest.raises(ValueError, match="unknown ISO 4217 currency code"):
        validate_currency(code)
    with pytest.raises(ValueError, match="unknown ISO 4217 currency code"):
        currency_exponent(code)
    with pytest.raises(ValidationError, match="unknown ISO 4217 currency code"):
        TypeAdapter(CurrencyCode).validate_python(code)


@pytest.mark.parametrize("code", sorted(c for c, e in ACTIVE.items() if e is None))
def test_codes_without_a_minor_unit_are_not_money(code):
    assert code not in known_currencies()
    with pytest.raises(ValueError, match="unknown ISO 4217 currency code"):
        validate_currency(code)
    with pytest.raises(ValueError, match="no minor unit"):
        currency_exponent(code)


def test_the_non_tender_codes_are_excluded():
    assert not {"XAU", "XAG", "XPD", "XPT", "XTS", "XXX", "XDR", "XSU", "XUA", "XBA"} & known_currencies()


@pytest.mark.parametrize(("minor", "code", "major"), [
    (123456, "HUF", Decimal("1234.56")),
    (123456, "IQD", Decimal("123.456")),
    (123456, "IDR", Decimal("1234.56")),
    (1234, "JPY", Decimal("1234")),
    (12345678, "CLF", Decimal("1234.5678")),
])
def test_to_major_scales_by_the_iso_exponent(minor, code, major):
    assert to_major(minor, code) == major
    assert -to_major(minor, code).as_tuple().exponent == currency_exponent(code)


@pytest.mark.parametrize(("minor", "code", "locale", "text"), [
    (123456, "HUF", "en", "HUF1,234.56"),
    (123456, "HUF", "tr", "HUF1.234,56"),
    (123456, "HUF", "cs", "1\xa0234,56\xa0HUF"),
    (123456, "HUF", "hu", "1\xa0234,56\xa0Ft"),
    (123456, "IDR", "en", "IDR1,234.56"),
    (123456, "COP", "en", "COP1,234.56"),
    (123456, "IQD", "en", "IQD123.456"),
    (1234, "JPY", "en", "¥1,234"),
    (1234567, "KWD", "en", "KWD1,234.567"),
    (1234567, "KWD", "tr", "KWD1.234,567"),
    (123456, "EUR", "en", "€1,234.56"),
    (12345678, "CLF", "en", "CLF1,234.5678"),
    (100, "HUF", "en", "HUF1.00"),
    (0, "HUF", "en", "HUF0.00"),
    (-250, "HUF", "en", "-HUF2.50"),
])
def test_format_money_shows_the_iso_number_of_decimals(minor, code, locale, text):
    assert format_money(minor, code, locale) == text


def test_format_money_never_rounds_to_cldr_digits():
    wrong = {}
    for code in sorted(known_currencies()):
        exponent = currency_exponent(code)
        text = format_money(10 ** (exponent + 3) + 1, code, "en")  # 1,000.0…01: rounding would lose the 1
        expected = "1,001" if exponent == 0 else "1,000." + "0" * (exponent - 1) + "1"
        if not text.endswith(expected):  # "en" puts the symbol first
            wrong[code] = text
    assert not wrong, f"format_money does not show the ISO decimals: {wrong}"


def test_format_money_rejects_unknown_codes():
    with pytest.raises(ValueError, match="unknown ISO 4217 currency code"):
        format_money(100, "XYZ")


ONE_HUF = [{"number": "INV-HU-1", "open_amount_minor": 123456, "currency": "HUF", "due_date": "2026-03-20"}]


@pytest.mark.parametrize(("language", "amount"), [
    ("en", "HUF1,234.56"), ("tr", "HUF1.234,56"), ("cs", "1\xa0234,56\xa0HUF"), ("fa", "HUF\xa0۱٬۲۳۴٫۵۶"),
])
def test_the_notifier_renders_huf_with_two_decimals(language, amount):
    notice = Notice(template="reminder_overdue", name="A", items=ONE_HUF, unsubscribe_url="https://pay.example.test/u")
    email = render_email(notice, language)
    assert amount in email.text and amount in email.html
    assert " ".join(amount.split()) in " ".join(render_sms(notice, language).text.split())  # SMS: plain spaces
    assert "123,456" not in email.text and "123.456" not in email.text  # not 100x the amount


def test_the_notifier_renders_iqd_with_three_decimals_and_huf_balances():
    items = [{"number": "INV-IQ-1", "open_amount_minor": 1234567, "currency": "IQD", "due_date": "2026-03-20"}]
    email = render_email(Notice(template="reminder_overdue", name="A", items=items,
                                unsubscribe_url="https://pay.example.test/u",
                                balances=[{"currency": "HUF", "balance_minor": 50}]), "en")
    assert "IQD1,234.567" in email.text
    assert "HUF0.50" in email.text
