"""Rendering of notices in en, tr, cs, fa. No I/O beyond reading the packaged templates."""
from __future__ import annotations

import html as html_lib
import re

import pytest

from services.notifier.adapters.templates import LANGUAGES, messages, render_email, render_sms

UNSUB = "https://pay.example.test/unsubscribe?token=abc123&c=42"
ONE_TRY = [{"number": "INV-2026-0001", "open_amount_minor": 123456, "currency": "TRY", "due_date": "2026-03-20"}]
MIXED = [
    {"number": "INV-1", "open_amount_minor": 123456, "currency": "TRY", "due_date": "2026-03-20"},
    {"number": "INV-2", "open_amount_minor": 5000, "currency": "EUR", "due_date": "2026-03-21"},
    {"number": "INV-3", "open_amount_minor": 100, "currency": "TRY", "due_date": "2026-03-22"},
]
TEMPLATES = ("reminder_pre_due", "reminder_due", "reminder_overdue", "final_notice")


@pytest.mark.parametrize(
    ("language", "subject"),
    [
        ("en", "Overdue invoice reminder"),
        ("tr", "Vadesi geçmiş fatura hatırlatması"),
        ("cs", "Upomínka faktury po splatnosti"),
        ("fa", "یادآوری فاکتور معوق"),
    ],
)
def test_subject_in_customer_language(language, subject):
    email = render_email("reminder_overdue", language, "Ayşe", ONE_TRY, UNSUB)
    assert email.subject == subject
    assert f"<title>{subject}</title>" in email.html


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("template", TEMPLATES)
def test_every_template_renders_with_language_words(language, template):
    m = messages(language)
    email = render_email(template, language, "Ayşe", ONE_TRY, UNSUB)
    assert email.subject == m[template]["subject"]
    for part in (email.text, email.html):
        assert m[template]["body"] in part
        assert m["greeting"] in part
        assert "INV-2026-0001" in part
    assert m["unsubscribe"] in email.text


def test_known_words_per_language():
    assert "Fatura" in render_email("reminder_due", "tr", "A", ONE_TRY, UNSUB).text
    assert "Faktura" in render_email("reminder_due", "cs", "A", ONE_TRY, UNSUB).text
    assert "فاکتور" in render_email("reminder_due", "fa", "A", ONE_TRY, UNSUB).text
    assert "Invoice" in render_email("reminder_due", "en", "A", ONE_TRY, UNSUB).text


def test_unknown_language_falls_back_to_english():
    email = render_email("reminder_due", "de", "A", ONE_TRY, UNSUB)
    assert email.subject == "Payment due today"
    assert 'lang="en"' in email.html


def test_unknown_template_rejected():
    with pytest.raises(KeyError):
        render_email("no_such_template", "en", "A", ONE_TRY, UNSUB)


@pytest.mark.parametrize(
    ("language", "amount"),
    [("tr", "₺1.234,56"), ("en", "TRY1,234.56"), ("cs", "1\xa0234,56\xa0TRY"), ("fa", "TRY\xa01,234.56")],
)
def test_money_formatted_per_locale(language, amount):
    email = render_email("reminder_overdue", language, "A", ONE_TRY, UNSUB)
    assert amount in email.text
    assert amount in email.html


def test_dates_formatted_per_locale():
    assert "Mar 20, 2026" in render_email("reminder_due", "en", "A", ONE_TRY, UNSUB).text
    assert "20. 3. 2026" in render_email("reminder_due", "cs", "A", ONE_TRY, UNSUB).text


def test_fa_is_right_to_left_others_left_to_right():
    assert 'dir="rtl"' in render_email("reminder_due", "fa", "A", ONE_TRY, UNSUB).html
    assert 'lang="fa"' in render_email("reminder_due", "fa", "A", ONE_TRY, UNSUB).html
    for language in ("en", "tr", "cs"):
        html = render_email("reminder_due", language, "A", ONE_TRY, UNSUB).html
        assert 'dir="ltr"' in html and 'dir="rtl"' not in html


@pytest.mark.parametrize("language", LANGUAGES)
def test_unsubscribe_url_in_text_and_html(language):
    email = render_email("final_notice", language, "A", ONE_TRY, UNSUB)
    assert UNSUB in email.text
    hrefs = re.findall(r'href="([^"]*)"', email.html)
    assert [html_lib.unescape(h) for h in hrefs] == [UNSUB]


@pytest.mark.parametrize("language", LANGUAGES)
def test_html_escapes_customer_name(language):
    name = '<script>alert("x")</script> & Sons'
    email = render_email("reminder_overdue", language, name, ONE_TRY, UNSUB)
    assert "<script>" not in email.html
    assert "&lt;script&gt;" in email.html
    assert "&amp; Sons" in email.html
    assert name in email.text  # plain text is not HTML, nothing to escape


def test_html_escapes_invoice_number():
    items = [dict(ONE_TRY[0], number="<b>INV</b>")]
    html = render_email("reminder_due", "en", "A", items, UNSUB).html
    assert "<b>INV</b>" not in html and "&lt;b&gt;INV&lt;/b&gt;" in html


def test_totals_per_currency_never_mixed():
    email = render_email("reminder_overdue", "en", "A", MIXED, UNSUB)
    # TRY 1234.56 + 1.00 = 1235.56; EUR 50.00 alone; never one grand total
    assert "Total outstanding: €50.00, TRY1,235.56" in email.text
    assert "€50.00, TRY1,235.56" in email.html
    assert "1,285.56" not in email.text and "1,285.56" not in email.html


def test_totals_per_currency_in_turkish():
    email = render_email("reminder_overdue", "tr", "A", MIXED, UNSUB)
    assert "Toplam borç: €50,00, ₺1.235,56" in email.text


def test_single_currency_total():
    items = ONE_TRY + [dict(ONE_TRY[0], number="INV-2026-0002", open_amount_minor=544)]
    email = render_email("reminder_overdue", "tr", "A", items, UNSUB)
    assert "Toplam borç: ₺1.240,00" in email.text


def test_zero_decimal_currency():
    items = [{"number": "J-1", "open_amount_minor": 5000, "currency": "JPY", "due_date": "2026-03-20"}]
    assert "¥5,000" in render_email("reminder_due", "en", "A", items, UNSUB).text


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("template", TEMPLATES)
def test_sms_is_one_line_with_opt_out(language, template):
    sms = render_sms(template, language, "Ayşe", MIXED)
    m = messages(language)
    assert "\n" not in sms and "\r" not in sms
    assert "  " not in sms
    assert sms.startswith(m[template]["sms"])
    assert sms.endswith(m["sms_stop"])
    assert "STOP" in sms
    for number in ("INV-1", "INV-2", "INV-3"):
        assert number in sms


def test_sms_exact_english():
    sms = render_sms("final_notice", "en", "A", MIXED)
    assert sms == "FINAL NOTICE, unpaid: INV-1 TRY1,234.56, INV-2 €50.00, INV-3 TRY1.00. Reply STOP to opt out."


def test_sms_exact_turkish():
    sms = render_sms("reminder_due", "tr", "A", ONE_TRY)
    assert sms == "Vadesi bugün: INV-2026-0001 ₺1.234,56. Almamak için STOP yazın."
