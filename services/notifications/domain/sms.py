"""How many SMS segments a text costs: GSM-7 when every character has a GSM 03.38 code, else UCS-2.

GSM-7: 160 septets in one segment, 153 per segment when concatenated; characters of the extension
table (``€ [ ] { } \\ ~ ^ |`` and form feed) take two septets and never straddle two segments.
UCS-2: 70 UTF-16 code units in one segment, 67 per segment when concatenated; a character outside
the basic plane (an emoji) takes two units and is not split either.
"""

from __future__ import annotations

from dataclasses import dataclass

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENDED = frozenset("\f^{}\\[~]|€")

# Characters a template must not bring into an SMS by accident: spaces and quotes that look plain
# but would switch the whole message to UCS-2 (and halve what fits in a segment).
_LOOKALIKES = {"\u00a0": " ", "\u202f": " ", "\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"',
               "\u2013": "-", "\u2014": "-", "\u2026": "..."}


@dataclass(frozen=True)
class Segments:
    encoding: str  # "GSM-7" or "UCS-2"
    units: int  # septets (GSM-7) or UTF-16 code units (UCS-2)
    count: int


def normalise(text: str) -> str:
    return "".join(_LOOKALIKES.get(ch, ch) for ch in text)


def is_gsm7(text: str) -> bool:
    return all(ch in GSM7_BASIC or ch in GSM7_EXTENDED for ch in text)


def segments(text: str) -> Segments:
    if is_gsm7(text):
        sizes = [2 if ch in GSM7_EXTENDED else 1 for ch in text]
        single, multi, encoding = 160, 153, "GSM-7"
    else:
        sizes = [2 if ord(ch) > 0xFFFF else 1 for ch in text]
        single, multi, encoding = 70, 67, "UCS-2"
    units = sum(sizes)
    if units <= single:
        return Segments(encoding, units, 1 if units else 0)
    count, used = 1, 0
    for size in sizes:  # a two-unit character never straddles two segments
        if used + size > multi:
            count, used = count + 1, 0
        used += size
    return Segments(encoding, units, count)
