"""How long an SMS is on the wire: its encoding and the number of segments it is sent (and
billed) as. Pure: no I/O.

A text made only of characters in the GSM 03.38 (3GPP TS 23.038) default alphabet and its
extension table is sent as GSM-7: 160 septets in a single message, 153 per segment once it has
to be split (the user data header of a concatenated message takes the other 7). The extension
characters (form feed ^ { } \\ [ ~ ] | €) are an escape plus a septet: they count 2, and a
segment never ends between the two.

Any other character (Turkish ş ğ ı İ ç, Czech ř ě š č ž ů, Persian, the bidi isolates FSI and
PDI, emoji) makes the whole text UCS-2: 70 UTF-16 code units in a single message, 67 per
segment. A character outside the Basic Multilingual Plane (most emoji) is a surrogate pair and
counts 2; a segment never ends between the two halves.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Encoding = Literal["GSM-7", "UCS-2"]

# The GSM 03.38 default alphabet, in code order (0x00-0x7F). 0x1B is the escape to the extension
# table, not a character a text contains, so it is left out.
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞ" "ÆæßÉ"
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# The extension table: each is sent as ESC + a septet.
GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")

GSM7_SINGLE, GSM7_PART = 160, 153
UCS2_SINGLE, UCS2_PART = 70, 67


@dataclass(frozen=True)
class SmsLength:
    encoding: Encoding
    characters: int  # the units the limits count: septets for GSM-7, UTF-16 code units for UCS-2
    segments: int  # 0 for an empty text


def is_gsm7(text: str) -> bool:
    return all(c in GSM7_BASIC or c in GSM7_EXTENSION for c in text)


def _segments(widths: list[int], single: int, part: int) -> int:
    """Segments for characters of the given widths: one if they all fit in `single`, else
    packed into parts of `part` units without splitting a character."""
    total = sum(widths)
    if total == 0:
        return 0
    if total <= single:
        return 1
    segments, used = 1, 0
    for w in widths:
        if used + w > part:
            segments, used = segments + 1, 0
        used += w
    return segments


def sms_segments(text: str) -> SmsLength:
    if is_gsm7(text):
        widths = [2 if c in GSM7_EXTENSION else 1 for c in text]
        return SmsLength("GSM-7", sum(widths), _segments(widths, GSM7_SINGLE, GSM7_PART))
    widths = [2 if ord(c) > 0xFFFF else 1 for c in text]
    return SmsLength("UCS-2", sum(widths), _segments(widths, UCS2_SINGLE, UCS2_PART))
