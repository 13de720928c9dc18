"""Risk factors in plain words, in the customer's or the collector's language (en, tr, cs, fa).
A factor carries its numbers (`params`); the sentence is made from them here, so an assessment
stored once can be read in any of the languages. Unknown languages read English."""
from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache

from babel.numbers import format_decimal

from shared.contract.money import native_digits, numbering_system

LANGUAGES = ("en", "tr", "cs", "fa")

TEXTS: dict[str, dict[str, str]] = {
    "no_history": {
        "en": "No payment history yet ({invoices} invoices issued)",
        "tr": "Henüz ödeme geçmişi yok ({invoices} fatura kesildi)",
        "cs": "Zatím žádná platební historie (vystaveno faktur: {invoices})",
        "fa": "هنوز سابقه پرداختی وجود ندارد ({invoices} فاکتور صادر شده)",
    },
    "late_share": {
        "en": "{late} of {settled} invoices settled in the last year were paid late",
        "tr": "Son bir yılda kapanan {settled} faturanın {late} tanesi geç ödendi",
        "cs": "{late} z {settled} faktur uhrazených za poslední rok bylo zaplaceno pozdě",
        "fa": "{late} از {settled} فاکتور تسویه‌شده در سال گذشته با تأخیر پرداخت شد",
    },
    "recent_very_late": {
        "en": "{very_late} of the last {recent} invoices paid more than {days} days late",
        "tr": "Son {recent} faturanın {very_late} tanesi {days} günden fazla gecikmeyle ödendi",
        "cs": "{very_late} z posledních {recent} faktur bylo zaplaceno o více než {days} dní pozdě",
        "fa": "{very_late} از {recent} فاکتور اخیر بیش از {days} روز دیرتر پرداخت شد",
    },
    "days_beyond_terms": {
        "en": "Pays {days} days beyond terms on average (weighted by amount and recency)",
        "tr": "Ortalama vadeden {days} gün sonra ödüyor (tutar ve yakınlığa göre ağırlıklı)",
        "cs": "Platí v průměru {days} dní po splatnosti (váženo částkou a stářím)",
        "fa": "به‌طور میانگین {days} روز پس از سررسید پرداخت می‌کند (وزن‌دهی بر اساس مبلغ و تازگی)",
    },
    "max_days_overdue": {
        "en": "The oldest of {overdue} overdue invoices is {days} days past due",
        "tr": "Vadesi geçmiş {overdue} faturanın en eskisi {days} gün gecikmede",
        "cs": "Nejstarší z {overdue} faktur po splatnosti je {days} dní po splatnosti",
        "fa": "قدیمی‌ترین فاکتور از {overdue} فاکتور معوق {days} روز از سررسید گذشته است",
    },
    "overdue_share": {
        "en": "{percent}% of what is open in {currency} is overdue",
        "tr": "{currency} cinsinden açık bakiyenin %{percent} kadarı vadesi geçmiş",
        "cs": "{percent} % otevřené částky v {currency} je po splatnosti",
        "fa": "{percent}٪ از مانده باز به {currency} معوق است",
    },
    "broken_promises": {
        "en": "{promises} promises to pay and {plans} payment plans broken",
        "tr": "{promises} ödeme sözü ve {plans} ödeme planı tutulmadı",
        "cs": "Nedodržené přísliby platby: {promises}, splátkové kalendáře: {plans}",
        "fa": "{promises} قول پرداخت و {plans} برنامه پرداخت عمل نشد",
    },
    "rejected_disputes": {
        "en": "{rejected} of {opened} disputes were rejected as unfounded",
        "tr": "{opened} itirazın {rejected} tanesi yersiz bulunarak reddedildi",
        "cs": "{rejected} z {opened} reklamací bylo zamítnuto jako neopodstatněné",
        "fa": "{rejected} از {opened} اعتراض بی‌اساس تشخیص داده و رد شد",
    },
    "reversed_payments": {
        "en": "{reversed} payments were reversed (bounced or charged back)",
        "tr": "{reversed} ödeme iade edildi (karşılıksız veya ters ibraz)",
        "cs": "{reversed} plateb bylo stornováno (nekrytých nebo vrácených)",
        "fa": "{reversed} پرداخت برگشت خورد",
    },
    "contact_problems": {
        "en": "{bounced} messages bounced and {opted_out} channels opted out",
        "tr": "{bounced} mesaj iletilemedi ve {opted_out} kanaldan abonelik iptal edildi",
        "cs": "Nedoručené zprávy: {bounced}, odhlášené kanály: {opted_out}",
        "fa": "{bounced} پیام برگشت خورد و {opted_out} کانال لغو اشتراک شد",
    },
    "trend": {
        "en": "Paying later: {quarter} days late on average in the last 90 days, {year} over the year",
        "tr": "Giderek geç ödüyor: son 90 günde ortalama {quarter} gün, bir yılda {year} gün gecikme",
        "cs": "Platí stále později: za posledních 90 dní v průměru {quarter} dní pozdě, za rok {year}",
        "fa": "پرداخت‌ها دیرتر شده است: میانگین {quarter} روز تأخیر در ۹۰ روز اخیر و {year} روز در طول سال",
    },
}


@lru_cache(maxsize=8192)  # the same few numbers come again and again, and babel takes ~50 µs each
def _number(value: int | float | str, language: str) -> str:
    if isinstance(value, str):
        return value
    text = format_decimal(value, locale=language, numbering_system=numbering_system(language))
    return native_digits(text, language)


def explain(name: str, params: Mapping[str, int | float | str], language: str = "en") -> str:
    return _explained(name, tuple(params.items()), language)


@lru_cache(maxsize=16384)  # a factor's few numbers repeat: most explanations were said before
def _explained(name: str, params: tuple[tuple[str, int | float | str], ...], language: str) -> str:
    texts = TEXTS.get(name)
    if texts is None:
        return name.replace("_", " ")
    language = language if language in LANGUAGES else "en"
    return texts[language].format(**{k: _number(v, language) for k, v in params})
