"""The console's pure parts: sealed sessions and form tokens, forms turned into API bodies, the
texts in four languages, and the dashboard's months."""
from __future__ import annotations

import json
import re
from datetime import date
from pathlib import Path

import pytest

from services.console.adapters.i18n import MESSAGES, Texts
from services.console.domain import forms
from services.console.domain.forms import FormError
from services.console.domain.session import LANGUAGES, Sealer, Session
from shared.periods import month_ends

SECRET = "x" * 40


def session(**kw) -> Session:
    return Session(**{"key": "thk_abc123_secret", "role": "collector", "name": "Ali", "language": "tr",
                      "collector_id": "ali", **kw})


def test_a_sealed_session_opens_only_unchanged_with_the_same_secret_and_before_it_expires():
    sealer = Sealer(SECRET, max_age_seconds=3600)
    cookie = sealer.seal(session(), now=1_000_000)
    assert "thk_abc123_secret" not in cookie  # encrypted, not only signed
    opened = sealer.open(cookie, now=1_000_000 + 3599)
    assert (opened.key, opened.language, opened.collector_id) == ("thk_abc123_secret", "tr", "ali") and opened.sid
    assert sealer.open(cookie, now=1_000_000 + 3601) is None  # expired
    assert Sealer("y" * 40, 3600).open(cookie, now=1_000_000) is None  # another secret
    tampered = cookie[:-4] + ("AAAA" if not cookie.endswith("AAAA") else "BBBB")
    assert sealer.open(tampered, now=1_000_000) is None
    assert sealer.open(None) is None and sealer.open("") is None and sealer.open("not a cookie") is None


def test_the_form_token_belongs_to_one_sign_in():
    sealer = Sealer(SECRET, 3600)
    one = sealer.open(sealer.seal(session()))
    two = sealer.open(sealer.seal(session()))
    assert sealer.form_token_ok(one, sealer.form_token(one))
    assert not sealer.form_token_ok(one, sealer.form_token(two))  # each sign-in has its own
    assert not sealer.form_token_ok(one, "") and not sealer.form_token_ok(one, None)


@pytest.mark.parametrize("text,currency,minor", [
    ("500", "EUR", 50_000), ("500.5", "EUR", 50_050), ("1,250.50", "EUR", 125_050), ("1250,50", "TRY", 125_050),
    ("1 250,50", "CZK", 125_050), ("1234", "JPY", 1234), ("1.234", "KWD", 1234), ("12.34", "HUF", 1234),
])
def test_amounts_are_typed_in_major_units_with_the_currencys_decimals(text, currency, minor):
    assert forms.amount_minor(text, currency, "promise_amount") == minor


@pytest.mark.parametrize("text,currency,reason", [
    ("100.005", "EUR", "EUR has 2 decimals"), ("1.5", "JPY", "JPY has 0 decimals"), ("0", "EUR", "more than zero"),
    ("-5", "EUR", "more than zero"), ("abc", "EUR", "is not an amount"), ("", "EUR", "required"),
    ("NaN", "EUR", "more than zero"), ("1e20", "EUR", "too large"),
])
def test_a_wrong_amount_names_the_field_and_the_reason(text, currency, reason):
    with pytest.raises(FormError) as e:
        forms.amount_minor(text, currency, "promise_amount")
    assert e.value.field == "promise_amount" and reason in e.value.reason


def test_each_outcome_carries_what_it_needs_and_only_that():
    assert forms.outcome({"outcome": "reached", "note": " spoke to Ayşe "}, "EUR", "UTC") == {
        "outcome": "reached", "note": "spoke to Ayşe"}
    assert forms.outcome({"outcome": "promise_taken", "promise_amount": "250", "promise_date": "2026-03-20",
                          "plan_count": "3"}, "EUR", "UTC") == {
        "outcome": "promise_taken", "note": None, "promise": {"amount_minor": 25_000, "promised_date": "2026-03-20"}}
    assert forms.outcome({"outcome": "plan_agreed", "plan_count": "3", "plan_first_due": "2026-04-01"},
                         "EUR", "UTC")["plan"] == {"count": 3, "first_due": "2026-04-01", "every_days": 30}
    assert forms.outcome({"outcome": "dispute_raised", "dispute_reason_code": "price", "dispute_reason": "too dear"},
                         "EUR", "UTC")["dispute"] == {"reason_code": "price", "reason": "too dear"}
    # a call back typed in the collector's zone: Prague is UTC+1 in March
    assert forms.outcome({"outcome": "call_back", "call_back_at": "2026-03-10T14:00"}, "EUR",
                         "Europe/Prague")["call_back_at"] == "2026-03-10T14:00:00+01:00"


@pytest.mark.parametrize("form,field", [
    ({"outcome": "shouted"}, "outcome"),
    ({"outcome": "promise_taken", "promise_amount": "10"}, "promise_date"),
    ({"outcome": "promise_taken", "promise_amount": "10", "promise_date": "20/03/2026"}, "promise_date"),
    ({"outcome": "plan_agreed", "plan_count": "0", "plan_first_due": "2026-04-01"}, "plan_count"),
    ({"outcome": "plan_agreed", "plan_count": "two"}, "plan_count"),
    ({"outcome": "dispute_raised", "dispute_reason_code": "vibes", "dispute_reason": "bad"}, "dispute_reason_code"),
    ({"outcome": "dispute_raised", "dispute_reason_code": "price", "dispute_reason": "no"}, "dispute_reason"),
    ({"outcome": "call_back"}, "call_back_at"),
    ({"outcome": "reached", "note": "x" * 2001}, "note"),
])
def test_a_form_that_cannot_be_sent_names_its_field(form, field):
    with pytest.raises(FormError) as e:
        forms.outcome(form, "EUR", "UTC")
    assert e.value.field == field


def test_every_language_has_every_text_with_the_same_placeholders():
    english = json.loads((MESSAGES / "en.json").read_text())
    placeholders = re.compile(r"\{(\w+)\}")
    for language in LANGUAGES:
        texts = json.loads((MESSAGES / f"{language}.json").read_text(encoding="utf-8"))
        assert texts.keys() == english.keys(), language
        for key, text in texts.items():
            assert set(placeholders.findall(text)) == set(placeholders.findall(english[key])), (language, key)
            assert text.strip(), (language, key)


def test_every_text_the_templates_ask_for_exists():
    templates = Path(MESSAGES).parent / "templates"
    english = json.loads((MESSAGES / "en.json").read_text())
    asked = set()
    for file in templates.glob("*.j2"):
        asked |= set(re.findall(r"""\bt\(\s*["']([a-z_0-9]+)["']\s*[,)]""", file.read_text()))
    assert asked and asked <= english.keys(), asked - english.keys()


def test_persian_is_right_to_left_with_persian_digits_and_the_others_left_to_right():
    fa = Texts("fa", "Asia/Tehran")
    assert fa.dir == "rtl" and fa.language == "fa"
    assert fa.number(1234) == "۱٬۲۳۴" and "۱٬۲۳۴٫۵۰" in fa.money(123_450, "EUR")
    assert fa.day(date(2026, 3, 20)) == "۲۰ مارس ۲۰۲۶"
    assert fa("worklist_count", count=12).count("۱۲") == 1
    tr = Texts("tr")
    assert tr.dir == "ltr" and tr.money(123_450, "TRY") == "₺1.234,50" and Texts("cs").number(1234) == "1\xa0234"
    assert Texts("xx").language == "en"  # unknown: English


def test_the_dashboard_trend_ends_at_each_month_end_and_today():
    assert month_ends(date(2026, 3, 15), 4) == [date(2025, 12, 31), date(2026, 1, 31), date(2026, 2, 28),
                                                date(2026, 3, 15)]


def test_the_names_shown_through_a_prefix_all_have_texts():
    from services.console.entrypoints.pages import FLASHES

    english = json.loads((MESSAGES / "en.json").read_text())
    rules = ("step", "contact_failed", "high_amount", "high_risk", "unanswered", "broken_promise", "broken_plan",
             "call_back")  # TaskOut.rule
    needed = ({f"outcome_{o}" for o in forms.OUTCOMES} | {f"reason_{r}" for r in forms.DISPUTE_REASONS}
              | {f"kind_{k}" for k in forms.CONTACT_KINDS} | {f"flash_{f}" for f in FLASHES}
              | {f"rule_{r}" for r in rules})
    assert needed <= english.keys(), needed - english.keys()


def _luminance(hex_colour: str) -> float:
    r, g, b = (int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5))
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in (r, g, b)]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(foreground: str, background: str) -> float:
    lighter, darker = sorted((_luminance(foreground), _luminance(background)), reverse=True)
    return (lighter + 0.05) / (darker + 0.05)


def test_the_stylesheets_text_colours_meet_wcag_aa_contrast():
    """Every text colour the console's stylesheet puts on a background, at least 4.5:1."""
    css = (Path(MESSAGES).parent / "static" / "console.css").read_text()
    var = dict(re.findall(r"--([a-z]+):\s*(#[0-9a-fA-F]{6})", css))
    pairs = {
        "body text": (var["ink"], var["bg"]), "text on cards and tables": (var["ink"], "#ffffff"),
        "muted text": (var["muted"], var["bg"]), "muted text on cards": (var["muted"], "#ffffff"),
        "links": (var["accent"], "#ffffff"), "links on the page": (var["accent"], var["bg"]),
        "header": ("#ffffff", "#102a43"), "primary button": ("#ffffff", var["accent"]),
        "problems": ("#7f1d1d", "#fdecea"), "confirmation": ("#14532d", "#e3f9e5"),
        "grade A": ("#ffffff", var["good"]), "grade B": ("#ffffff", "#3f6212"), "grade C": ("#ffffff", "#92400e"),
        "grade D and holds": ("#ffffff", var["bad"]), "table headers": (var["ink"], "#e4e7eb"),
    }
    for colour in ("#7f1d1d", "#fdecea", "#14532d", "#e3f9e5", "#102a43", "#3f6212", "#92400e", "#e4e7eb"):
        assert colour in css, colour  # the pairs above are the stylesheet's own
    low = {name: round(contrast(*pair), 2) for name, pair in pairs.items() if contrast(*pair) < 4.5}
    assert low == {}, low
