"""The console in the person's language (en, tr, cs, fa; fa right to left): the texts from
messages/<language>.json, and numbers, money and dates the way the language writes them
(Babel/CLDR, Persian with Persian digits)."""
from __future__ import annotations

import json
from datetime import date, datetime
from decimal import Decimal
from functools import cache
from pathlib import Path
from zoneinfo import ZoneInfo

from babel.dates import format_date, format_datetime
from babel.numbers import format_decimal

from services.console.domain.session import LANGUAGES, RTL
from shared.contract.money import format_money_native, native_digits, numbering_system

MESSAGES = Path(__file__).resolve().parent.parent / "messages"


@cache
def messages(language: str) -> dict[str, str]:
    return json.loads((MESSAGES / f"{language}.json").read_text(encoding="utf-8"))


class Texts:
    """`t("key", name=...)` in templates, plus the formatters."""

    def __init__(self, language: str, timezone: str = "UTC") -> None:
        self.language = language if language in LANGUAGES else "en"
        self.dir = "rtl" if self.language in RTL else "ltr"
        self._messages = messages(self.language)
        try:
            self._zone = ZoneInfo(timezone)
        except (KeyError, ValueError):
            self._zone = ZoneInfo("UTC")

    def __call__(self, key: str, **values: object) -> str:
        text = self._messages.get(key) or messages("en").get(key) or key
        if not values:
            return text
        return text.format(**{k: self.number(v) if isinstance(v, int) and not isinstance(v, bool) else v
                              for k, v in values.items()})

    def named(self, prefix: str, name: str | None) -> str:
        """The text of `prefix_name` (a status, a kind of contact), or the name itself in words."""
        if not name:
            return ""
        key = f"{prefix}_{name}"
        return self(key) if key in self._messages else name.replace("_", " ")

    def number(self, value: int | float | Decimal | str | None) -> str:
        if value is None or value == "":
            return ""
        return native_digits(format_decimal(Decimal(str(value)), locale=self.language,
                                            numbering_system=numbering_system(self.language)), self.language)

    def money(self, minor: int | None, currency: str | None) -> str:
        if minor is None or not currency:
            return ""
        return format_money_native(int(minor), currency.strip(), self.language)

    def day(self, value: date | str | None) -> str:
        if not value:
            return ""
        if isinstance(value, str):
            value = date.fromisoformat(value[:10])
        return native_digits(format_date(value, "medium", locale=self.language), self.language)

    def moment(self, value: datetime | str | None) -> str:
        if not value:
            return ""
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        return native_digits(format_datetime(value, "short", tzinfo=self._zone, locale=self.language), self.language)

    def digits(self, text: object) -> str:
        return native_digits(str(text), self.language)
