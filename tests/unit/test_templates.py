"""Rendering of consolidated notices in en, tr, cs, fa. No I/O beyond reading the packaged
templates (and the golden files under tests/unit/golden/notices: UPDATE_GOLDEN=1 rewrites them)."""
from __future__ import annotations

import html as html_lib
import os
import re
from pathlib import Path

import pytest

from services.notifier.adapters.templates import (
    FSI,
    LANGUAGES,
    PDI,
    Notice,
    RenderedEmail,
    RenderedSms,
    TemplateRejected,
    TemplateTexts,
    messages,
    render_email,
    render_sms,
    resolve_language,
    sample_notice,
    validate_override,
)
from services.notifier.domain.sms_length import sms_segments
from shared.contract.money import format_money, format_money_native, native_digits
from shared.contract.templates import NOTICE_TEMPLATES

GOLDEN = Path(__file__).resolve().parent / "golden" / "notices"
UNSUB = "https://pay.example.test/unsubscribe?token=abc123&c=42"
TEMPLATES = tuple(NOTICE_TEMPLATES)
PERSIAN_DIGITS = "۰۱۲۳۴۵۶۷۸۹"


def item(number="INV-2026-0001", minor=123456, currency="TRY", due="2026-03-20", **extra) -> dict:
    return {"invoice_id": f"id-{number}", "number": number, "open_amount_minor": minor, "currency": currency,
            "due_date": due, **extra}


def notice(items, template="reminder_overdue", name="Ayşe", **extra) -> Notice:
    return Notice(template=template, name=name, items=items, unsubscribe_url=UNSUB, **extra)


ONE_TRY = notice([item()])
MIXED = notice([
    item("INV-1", 123456, "TRY", "2026-03-20"),
    item("INV-2", 5000, "EUR", "2026-03-21"),
    item("INV-3", 100, "TRY", "2026-03-22"),
])


# --- languages -------------------------------------------------------------------------------

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
    email = render_email(ONE_TRY, language)
    assert isinstance(email, RenderedEmail)
    assert email.subject == subject
    assert (email.language, email.fallback_from) == (language, None)
    assert f"<title>{subject}</title>" in email.html


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("template", TEMPLATES)
def test_every_template_renders_with_language_words(language, template):
    m = messages(language)
    email = render_email(sample_notice(template), language)
    assert email.subject == m[template]["subject"]
    for part in (email.text, email.html):
        assert m[template]["body"] in part
        assert m["salutation"].split("{name}")[0].strip() in part
        for number in ("INV-2026-0141", "INV-2026-0178", "INV-2026-0203"):
            assert number in part
        for label in ("invoice", "due_date", "days_overdue", "open_amount", "fees", "interest", "line_total",
                      "total_due"):
            assert m[label] in part
    assert m["unsubscribe"] in email.text and m["unsubscribe"] in email.html


def test_known_words_per_language():
    assert "Fatura" in render_email(ONE_TRY, "tr").text
    assert "Faktura" in render_email(ONE_TRY, "cs").text
    assert "فاکتور" in render_email(ONE_TRY, "fa").text
    assert "Invoice" in render_email(ONE_TRY, "en").text


def test_unknown_language_falls_back_and_says_so():
    email = render_email(ONE_TRY, "de")
    assert (email.language, email.fallback_from) == ("en", "de")
    assert email.subject == "Overdue invoice reminder"
    assert '<html lang="en" dir="ltr">' in email.html
    sms = render_sms(ONE_TRY, "de")
    assert (sms.language, sms.fallback_from) == ("en", "de")


def test_a_language_the_tenant_does_not_offer_falls_back_to_its_default():
    email = render_email(ONE_TRY, "fa", offered=("en", "tr"), default_language="tr")
    assert (email.language, email.fallback_from) == ("tr", "fa")
    assert email.subject == "Vadesi geçmiş fatura hatırlatması"
    sms = render_sms(ONE_TRY, "cs", offered=("en", "tr"), default_language="tr")
    assert (sms.language, sms.fallback_from) == ("tr", "cs")
    assert sms.text.endswith(messages("tr")["sms_stop"])


def test_resolve_language():
    assert resolve_language("tr", LANGUAGES, "en") == ("tr", None)
    assert resolve_language("fa-IR", LANGUAGES, "en") == ("fa", None)
    assert resolve_language("CS_cz", LANGUAGES, "en") == ("cs", None)
    assert resolve_language("de", LANGUAGES, "en") == ("en", "de")
    assert resolve_language("fa", {"en", "tr"}, "tr") == ("tr", "fa")
    assert resolve_language(None, LANGUAGES, "cs") == ("cs", None)  # nothing asked: nothing fell back
    assert resolve_language("", LANGUAGES, "cs") == ("cs", None)
    assert resolve_language("de", {"en", "de"}, "en") == ("en", "de")  # no templates in de
    with pytest.raises(ValueError):
        resolve_language("en", {"en", "tr"}, "cs")


def test_unknown_template_rejected():
    with pytest.raises(KeyError):
        render_email(notice([item()], template="no_such_template"), "en")
    with pytest.raises(KeyError):
        render_sms(notice([item()], template="no_such_template"), "en")
    with pytest.raises(KeyError):
        sample_notice("no_such_template")


# --- locale formatting -------------------------------------------------------------------------

def test_czech_amounts_dates_and_spacing():
    email = render_email(notice([item(minor=123450, currency="CZK")]), "cs")
    assert "1\xa0234,50\xa0Kč" in email.text and "<bdi>1\xa0234,50\xa0Kč</bdi>" in email.html
    assert "20. 3. 2026" in email.text


def test_turkish_lira_before_the_amount():
    email = render_email(notice([item(minor=123450)]), "tr")
    assert "₺1.234,50" in email.text and "<bdi>₺1.234,50</bdi>" in email.html
    assert "20 Mar 2026" in email.text


def test_english():
    email = render_email(notice([item(minor=123450, currency="EUR")]), "en")
    assert "€1,234.50" in email.text and "Mar 20, 2026" in email.text


def test_persian_digits_and_separators():
    email = render_email(notice([item(minor=123450, currency="EUR", days_overdue=12)]), "fa")
    amount = "\u200e€\xa0۱٬۲۳۴٫۵۰"  # CLDR: LRM, the symbol, NBSP; Persian digits, ٬ groups, ٫ decimals
    assert f"{FSI}{amount}{PDI}" in email.text
    assert f"<bdi>{amount}</bdi>" in email.html
    assert f"{FSI}۲۰ مارس ۲۰۲۶{PDI}" in email.text  # the date in Persian digits
    assert "<bdi>۱۲</bdi>" in email.html and f"{FSI}۱۲{PDI}" in email.text  # days overdue


def test_persian_writes_no_latin_digits_outside_invoice_numbers_and_links():
    for template in TEMPLATES:
        email = render_email(sample_notice(template), "fa")
        sms = render_sms(sample_notice(template), "fa")
        for text in (email.text, email.html, sms.text):
            rest = re.sub(r"<[^>]*>|INV-\d{4}-\d{4}|https://\S+", "", text)  # markup, invoice numbers, links
            assert not re.findall(r"[0-9]", rest), (template, re.findall(r".{10}[0-9].{10}", rest))
            assert re.search(f"[{PERSIAN_DIGITS}]", rest)


@pytest.mark.parametrize(("locale", "text"), [
    ("en", "€1,234.50"), ("tr", "€1.234,50"), ("cs", "1\xa0234,50\xa0€"), ("fa", "\u200e€\xa0۱٬۲۳۴٫۵۰"),
])
def test_format_money_native(locale, text):
    assert format_money_native(123450, "EUR", locale) == text


def test_format_money_native_is_format_money_in_latin_digit_locales_and_keeps_iso_decimals():
    for locale in ("en", "tr", "cs"):
        for minor, code in ((123456, "TRY"), (-5, "EUR"), (1234567, "KWD"), (5000, "JPY"), (123456, "HUF")):
            assert format_money_native(minor, code, locale) == format_money(minor, code, locale)
    assert format_money(123450, "EUR", "fa") == "\u200e€\xa01,234.50"
    assert format_money_native(1234567, "KWD", "fa") == "\u200eKWD\xa0۱٬۲۳۴٫۵۶۷"
    assert format_money_native(5000, "JPY", "fa") == "\u200e¥\xa0۵٬۰۰۰"
    assert format_money_native(-123450, "EUR", "fa") == "\u200e−\u200e€\xa0۱٬۲۳۴٫۵۰"
    assert native_digits("2026/3/20", "fa") == "۲۰۲۶/۳/۲۰"
    assert native_digits("2026/3/20", "cs") == "2026/3/20"


def test_zero_and_three_decimal_currencies():
    email = render_email(notice([item("J-1", 5000, "JPY"), item("K-1", 1234567, "KWD")]), "en")
    assert "¥5,000" in email.text and "KWD1,234.567" in email.text


# --- right to left -----------------------------------------------------------------------------

def test_fa_is_right_to_left_others_left_to_right():
    assert '<html lang="fa" dir="rtl">' in render_email(ONE_TRY, "fa").html
    for language in ("en", "tr", "cs"):
        html = render_email(ONE_TRY, language).html
        assert f'<html lang="{language}" dir="ltr">' in html and 'dir="rtl"' not in html


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_number_amount_and_date_cell_is_isolated(language):
    html = render_email(sample_notice("settlement_offer"), language).html
    body = html.split("<tbody>")[1].split("</tfoot>")[0]
    cells = re.findall(r"<td>(.*?)</td>", body)
    assert len(cells) == 3 * 7 + 2 * 4
    for cell in cells:
        assert re.fullmatch(r"(<strong>)?<bdi>[^<]+</bdi>(</strong>)?", cell), cell
    assert html.count("<bdi>") == html.count("</bdi>")


def test_fa_plain_text_and_sms_isolate_with_fsi_pdi_and_ltr_languages_do_not():
    n = sample_notice("settlement_offer")
    fa = render_email(n, "fa").text
    for minor in (123450, 4000, 1285, 227137, 180000):
        assert f"{FSI}{format_money_native(minor, 'EUR', 'fa')}{PDI}" in fa
    assert f"{FSI}INV-2026-0141{PDI}" in fa
    assert fa.count(FSI) == fa.count(PDI) > 30
    sms = render_sms(n, "fa").text
    assert f"{FSI}۳{PDI} فاکتور" in sms and sms.count(FSI) == sms.count(PDI)
    for language in ("en", "tr", "cs"):
        assert FSI not in render_email(n, language).text and PDI not in render_sms(n, language).text


# --- the consolidated table --------------------------------------------------------------------

def test_consolidated_table_lines_and_totals_per_currency():
    email = render_email(sample_notice("reminder_overdue"), "en")
    rows = email.html.split("<tbody>")[1].split("</tbody>")[0].count("<tr>")
    assert rows == 3
    # line totals: open + fees + interest
    assert "Open amount: €1,234.50 · Fees: €40.00 · Interest: €12.85 · Total: €1,287.35" in email.text
    assert "Open amount: €980.00 · Fees: €0.00 · Interest: €4.02 · Total: €984.02" in email.text
    # per currency: 1,234.50 + 980.00; 40.00 + 0.00; 12.85 + 4.02; 1,287.35 + 984.02
    assert "Total due (EUR): €2,271.37\n    Open amount: €2,214.50 · Fees: €40.00 · Interest: €16.87" in email.text
    assert "Total due (TRY): TRY25,312.60\n    Open amount: TRY24,750.00 · Fees: TRY250.00 · Interest: TRY312.60" \
        in email.text
    assert ('<th scope="row" colspan="3">Total due (<bdi>EUR</bdi>)</th><td><bdi>€2,214.50</bdi></td>'
            "<td><bdi>€40.00</bdi></td><td><bdi>€16.87</bdi></td><td><strong><bdi>€2,271.37</bdi></strong></td>"
            in email.html)


def test_mixed_currencies_are_never_summed():
    email = render_email(MIXED, "en")
    # TRY 1234.56 + 1.00 = 1235.56; EUR 50.00 alone; never one grand total
    assert "Total due (EUR): €50.00" in email.text and "Total due (TRY): TRY1,235.56" in email.text
    for part in (email.text, email.html, render_sms(MIXED, "en").text):
        assert "1,285.56" not in part and "1,284.56" not in part
    assert render_sms(MIXED, "en").text == ("Overdue, please pay: 3 invoices, total €50.00 and TRY1,235.56. "
                                            "Reply STOP to opt out.")
    assert "toplam €50,00 ve ₺1.235,56." in render_sms(MIXED, "tr").text


def test_missing_charges_and_days_default():
    email = render_email(notice([item(minor=100, currency="EUR")]), "en")
    assert "Days overdue: –" in email.text
    assert "Fees: €0.00 · Interest: €0.00 · Total: €1.00" in email.text


def test_html_escapes_customer_name_and_invoice_number():
    name = '<script>alert("x")</script> & Sons'
    for language in LANGUAGES:
        email = render_email(notice([item(number="<b>INV</b>")], name=name), language)
        assert "<script>" not in email.html and "&lt;script&gt;" in email.html and "&amp; Sons" in email.html
        assert "<b>INV</b>" not in email.html and "&lt;b&gt;INV&lt;/b&gt;" in email.html
        assert name in email.text  # plain text is not HTML, nothing to escape


@pytest.mark.parametrize("language", LANGUAGES)
def test_unsubscribe_url_in_text_and_html(language):
    email = render_email(notice([item()], template="final_notice"), language)
    assert UNSUB in email.text
    hrefs = re.findall(r'href="([^"]*)"', email.html)
    assert [html_lib.unescape(h) for h in hrefs] == [UNSUB]


def test_balance_confirmation_links_and_balances():
    n = sample_notice("balance_confirmation")
    email = render_email(n, "en")
    assert "Balance (EUR): €2,271.37" in email.text and "Balance (TRY): TRY25,312.60" in email.text
    assert "Confirm this balance:\nhttps://pay.example.test/balance/sample/confirm" in email.text
    hrefs = re.findall(r'href="([^"]*)"', email.html)
    assert hrefs == [n.links["confirm"], n.links["contest"], n.unsubscribe_url]
    assert ">Contest this balance</a>" in email.html


def test_a_balance_confirmation_without_open_items():
    n = Notice(template="balance_confirmation", name="A", items=[], balances=[{"currency": "EUR", "balance_minor": 0}])
    email = render_email(n, "en")
    assert "<table" not in email.html and "Balance (EUR): €0.00" in email.text
    assert render_sms(n, "en").text == "Please confirm your balance: Reply STOP to opt out."


@pytest.mark.parametrize("language", LANGUAGES)
def test_settlement_offer_terms(language):
    n = sample_notice("settlement_offer")
    email, sms = render_email(n, language), render_sms(n, language)
    offer = n.offer
    for minor in (offer["pay_minor"], offer["discount_minor"]):
        shown = format_money_native(minor, "EUR", language)
        assert shown in email.text and f"<bdi>{shown}</bdi>" in email.html and shown in sms.text


# --- SMS ---------------------------------------------------------------------------------------

STOP_WORDS = {"en": "STOP", "tr": "IPTAL", "cs": "STOP", "fa": "لغو"}


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("template", TEMPLATES)
def test_sms_is_one_short_line_with_count_totals_and_opt_out(language, template):
    n = sample_notice(template)
    sms = render_sms(n, language)
    m = messages(language)
    assert isinstance(sms, RenderedSms)
    assert "\n" not in sms.text and "\r" not in sms.text and "  " not in sms.text
    assert sms.text.startswith(m[template]["sms"] + " ")
    assert sms.text.endswith(" " + m["sms_stop"])
    assert STOP_WORDS[language] in m["sms_stop"]
    assert "INV-2026" not in sms.text  # the count, not every item
    assert native_digits("3", language) in sms.text
    assert format_money_native(2475000 + sum(i["fees_minor"] + i["interest_minor"] for i in n.items
                                             if i["currency"] == "TRY"), "TRY", language) in sms.text
    length = sms_segments(sms.text)
    assert (sms.encoding, sms.segments) == (length.encoding, length.segments)
    assert sms.segments <= 3


def test_sms_encoding_reported():
    en = render_sms(sample_notice("reminder_overdue"), "en")
    assert en.text == "Overdue, please pay: 3 invoices, total €2,271.37 and TRY25,312.60. Reply STOP to opt out."
    assert (en.encoding, en.segments) == ("GSM-7", 1)
    for language in ("tr", "cs", "fa"):  # ı, ě, Persian letters: UCS-2
        assert render_sms(sample_notice("reminder_overdue"), language).encoding == "UCS-2"


def test_sms_exact_turkish_and_czech():
    assert render_sms(ONE_TRY, "tr").text == ("Vadesi geçmiş, lütfen ödeyin: 1 fatura, toplam ₺1.234,56. "
                                              "Almamak için IPTAL yazıp gönderin.")
    assert render_sms(ONE_TRY, "cs").text == ("Po splatnosti, prosíme uhraďte: 1 faktura, celkem 1\xa0234,56\xa0TRY. "
                                              "Odpovězte STOP pro odhlášení.")
    five = notice([item(f"I-{i}") for i in range(5)])
    assert "5 faktur," in render_sms(five, "cs").text
    assert "3 faktury," in render_sms(notice([item(f"I-{i}") for i in range(3)]), "cs").text


# --- tenant overrides --------------------------------------------------------------------------

def test_overrides_replace_subject_body_and_sms():
    texts = TemplateTexts(
        subject="{{ count }} overdue {{ 'invoice' if count == 1 else 'invoices' }}, up to {{ days_overdue_max }} days",
        body="Hello {{ name }},\nyou owe {{ total }}.\n\n{% for i in items %}{{ i.number }}={{ i.total }} {% endfor %}",
        sms="{{ name }}: {{ invoices }} since {{ earliest_due_date }}, {{ total }}.",
    )
    n = sample_notice("reminder_overdue")
    email = render_email(n, "en", overrides={"en": texts})
    assert email.subject == "3 overdue invoices, up to 38 days"
    assert "Hello Deniz Kaya,\nyou owe €2,271.37 and TRY25,312.60.\n\nINV-2026-0141=€1,287.35" in email.text
    assert ("<p>Hello <bdi>Deniz Kaya</bdi>,<br>\nyou owe <bdi>€2,271.37</bdi> and <bdi>TRY25,312.60</bdi>.</p>"
            in email.html)
    assert "Invoice INV-2026-0141" in email.text and "<table" in email.html  # the layout stays
    assert UNSUB not in email.text and n.unsubscribe_url in email.text
    sms = render_sms(n, "en", overrides={"en": texts})
    assert sms.text == ("Deniz Kaya: 3 invoices since Feb 10, 2026, €2,271.37 and TRY25,312.60. "
                        "Reply STOP to opt out.")  # the opt-out text is always appended
    # another language's override is not used; a None field keeps the shipped text
    assert render_email(n, "tr", overrides={"en": texts}).subject == messages("tr")["reminder_overdue"]["subject"]
    only_subject = render_email(n, "en", overrides={"en": TemplateTexts(subject="Hi")})
    assert only_subject.subject == "Hi" and messages("en")["reminder_overdue"]["body"] in only_subject.text


def test_override_html_is_escaped_text_never_markup():
    texts = TemplateTexts(body='<a href="https://evil.test">pay</a> {{ name }} & co')
    email = render_email(notice([item()], name="<i>A</i>"), "en", overrides={"en": texts})
    assert '<a href="https://evil.test">' not in email.html
    assert ("&lt;a href=&#34;https://evil.test&#34;&gt;pay&lt;/a&gt; <bdi>&lt;i&gt;A&lt;/i&gt;</bdi> &amp; co"
            in email.html)
    assert '<a href="https://evil.test">pay</a> <i>A</i> & co' in email.text


def test_persian_override_gets_persian_digits_and_isolates():
    texts = TemplateTexts(subject="{{ count }} فاکتور معوق", sms="{{ invoices }}، {{ total }}")
    n = sample_notice("reminder_overdue")
    assert render_email(n, "fa", overrides={"fa": texts}).subject == f"{FSI}۳{PDI} فاکتور معوق"
    sms = render_sms(n, "fa", overrides={"fa": texts}).text
    assert sms.startswith(f"{FSI}۳{PDI} فاکتور، {FSI}\u200e€\xa0۲٬۲۷۱٫۳۷{PDI} و ")
    assert sms.endswith("«لغو» را ارسال کنید.")


def test_a_stored_override_failing_on_real_data_falls_back_to_the_shipped_text():
    texts = TemplateTexts(subject="{{ count }} open", body="Third: {{ items[2].number }}", sms="{{ items[2].total }}")
    validate_override("reminder_overdue", {"en": texts}, sms_segment_limit=1)  # the sample has three items
    email = render_email(ONE_TRY, "en", overrides={"en": texts})  # this notice has one
    assert email.subject == "1 open"
    assert messages("en")["reminder_overdue"]["body"] in email.text and "Third" not in email.html
    assert render_sms(ONE_TRY, "en", overrides={"en": texts}).text == render_sms(ONE_TRY, "en").text


def test_override_subject_is_one_line():
    email = render_email(ONE_TRY, "en", overrides={"en": TemplateTexts(subject="A\r\nBcc: x@example.test\n B")})
    assert email.subject == "A Bcc: x@example.test B"


def test_valid_override_passes():
    validate_override("reminder_overdue", {
        "en": TemplateTexts(subject="{{ count }} overdue", body="Dear {{ name }}, {{ total }}", sms="Pay {{ total }}"),
        "fa": TemplateTexts(sms="{{ total }}"),
        "tr": TemplateTexts(),
    }, sms_segment_limit=2)


def _rejected(texts, template="reminder_overdue", limit=3) -> TemplateRejected:
    with pytest.raises(TemplateRejected) as caught:
        validate_override(template, texts, sms_segment_limit=limit)
    assert isinstance(caught.value, ValueError)
    return caught.value


def test_rejects_syntax_errors_naming_field_and_line():
    e = _rejected({"tr": TemplateTexts(body="Merhaba\n{% if count %}\n{{ name }")})
    assert e.field == "languages.tr.body"
    assert "syntax" in e.reason and "line 3" in e.reason
    assert _rejected({"en": TemplateTexts(subject="{{ name|safe }}")}).field == "languages.en.subject"


def test_rejects_unknown_template_and_language():
    assert _rejected({"en": TemplateTexts()}, template="nope").field == "template"
    e = _rejected({"de": TemplateTexts(subject="Hallo")})
    assert e.field == "languages.de" and "de" in e.reason


def test_rejects_a_text_that_does_not_render_with_the_sample():
    e = _rejected({"cs": TemplateTexts(sms="Dobrý den\n{{ customer_name }}")})
    assert e.field == "languages.cs.sms"
    assert "customer_name" in e.reason and "undefined" in e.reason and "line 2" in e.reason
    e = _rejected({"en": TemplateTexts(body="{{ name.__class__.__mro__ }}")})
    assert e.field == "languages.en.body" and "unsafe" in e.reason
    e = _rejected({"en": TemplateTexts(subject="{{ offer.pay }}")})  # no offer in a reminder
    assert e.field == "languages.en.subject"
    validate_override("settlement_offer", {"en": TemplateTexts(subject="Pay {{ offer.pay }}")}, sms_segment_limit=3)


def test_rejects_a_text_that_renders_too_long():
    e = _rejected({"en": TemplateTexts(body="{% for i in range(100000) %}{{ total }}{% endfor %}")})
    assert e.field == "languages.en.body" and "more than" in e.reason


def test_rejects_an_empty_subject_or_sms():
    assert _rejected({"en": TemplateTexts(subject="")}).field == "languages.en.subject"
    assert _rejected({"en": TemplateTexts(subject=" {% if false %}x{% endif %} ")}).field == "languages.en.subject"
    assert _rejected({"fa": TemplateTexts(sms="  ")}).field == "languages.fa.sms"


def test_rejects_an_sms_over_the_segment_limit_giving_count_encoding_and_limit():
    validate_override("reminder_overdue", {"en": TemplateTexts(sms="x" * 137)}, sms_segment_limit=1)  # + 23 = 160
    e = _rejected({"en": TemplateTexts(sms="x" * 138)}, limit=1)  # 161 septets with " Reply STOP to opt out."
    assert e.field == "languages.en.sms"
    assert "2 segments" in e.reason and "GSM-7" in e.reason and "161" in e.reason and "limit of 1" in e.reason
    e = _rejected({"tr": TemplateTexts(sms="{{ total }} {{ total }}")}, limit=1)
    assert e.field == "languages.tr.sms" and "UCS-2" in e.reason and "limit of 1" in e.reason


# --- samples and golden files ------------------------------------------------------------------

@pytest.mark.parametrize("template", TEMPLATES)
def test_sample_notice(template):
    n = sample_notice(template)
    assert n.template == template and len(n.items) == 3
    assert {i["currency"] for i in n.items} == {"EUR", "TRY"}
    assert any(i["fees_minor"] for i in n.items) and any(i["interest_minor"] for i in n.items)
    assert (n.offer is not None) == (template == "settlement_offer")
    assert bool(n.balances) == bool(n.links) == (template == "balance_confirmation")


def _golden(path: Path, rendered: str) -> None:
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(rendered, encoding="utf-8")
    assert path.exists(), f"{path.name} missing: run with UPDATE_GOLDEN=1"
    assert rendered == path.read_text(encoding="utf-8"), f"{path.name} differs (UPDATE_GOLDEN=1 rewrites it)"


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("template", TEMPLATES)
def test_golden_notices(template, language):
    n = sample_notice(template)
    email, sms = render_email(n, language), render_sms(n, language)
    _golden(GOLDEN / f"{template}.{language}.html", email.html)
    _golden(GOLDEN / f"{template}.{language}.txt", f"Subject: {email.subject}\n\n{email.text}")
    _golden(GOLDEN / f"{template}.{language}.sms.txt",
            f"{sms.text}\n-- {sms.encoding}, {sms.segments} segment(s)\n")


@pytest.mark.parametrize("language,label", [("en", "See what is open, pay, promise a date or dispute an invoice online"),
                                            ("fa", "مشاهده اقلام باز")])
def test_a_reminder_carries_the_customers_portal_link_in_their_language(language, label):
    portal = "https://pay.example.test/p/abc.def"
    email = render_email(notice([item()], links={"portal": portal}), language)
    assert portal in email.text and label in email.text
    hrefs = [html_lib.unescape(h) for h in re.findall(r'href="([^"]*)"', email.html)]
    assert hrefs == [portal, UNSUB]
