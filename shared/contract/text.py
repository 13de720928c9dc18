"""Free text from the outside (names, numbers, reasons): what it may not contain.

C0 control characters other than tab, line feed and carriage return (a NUL breaks PostgreSQL
text, the rest are invisible), DEL, and the bidirectional embeddings, overrides and isolates
U+202A-U+202E and U+2066-U+2069: with them "Invoice\u202efdp.exe" shows as "Invoiceexe.pdf"
in a customer's email. One check for every way in (HTTP, files, Kafka)."""
from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

_UNSAFE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u202a-\u202e\u2066-\u2069]")


def unsafe_character(value: str) -> str | None:
    """A description of the first character `value` may not contain, or None."""
    found = _UNSAFE.search(value)
    if found is None:
        return None
    ch = found.group()
    kind = "bidirectional control character" if ord(ch) >= 0x2000 else "control character"
    return f"{kind} U+{ord(ch):04X} at position {found.start()}"


def check_text(value: str) -> str:
    if (problem := unsafe_character(value)) is not None:
        raise ValueError(f"must not contain a {problem}")
    return value


SafeText = Annotated[str, AfterValidator(check_text)]


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_cell(value: object) -> object:
    """A CSV cell a spreadsheet will not run: text starting like a formula gets a leading
    apostrophe (OWASP's advice for CSV injection). Numbers stay numbers."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value
