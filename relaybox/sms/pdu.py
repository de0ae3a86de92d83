"""SMS text analysis and PDU codec (3GPP TS 23.038 / 23.040) for relaybox.

Why our own codec: no available library gets the basics right with an
acceptable license and maintenance (research notes, MODEM.md section 3).
python-gsmmodem-new (LGPL, frozen since 2019) crashes on emoji and reports a
wrong ``AT+CMGS`` length when an SMSC is embedded; smspdudecoder cannot read
status reports and breaks with bitstring 5; python-messaging is GPL and emits
corrupt PDUs for emoji; the rest are codecs without PDUs or dead projects.
The API's segment count and the modem's actual split must also come from the
same code, or the API would lie about ``segments``.
"""

from __future__ import annotations

from dataclasses import dataclass

GSM7 = "GSM-7"
UCS2 = "UCS-2"

# GSM 03.38 default alphabet, index = septet value.  0x1B is the escape to the
# extension table and never stands for a character by itself.
GSM7_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ"
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNO"
    "PQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmno"
    "pqrstuvwxyzäöñüà"
)
ESCAPE = 0x1B
# Extension table: character -> septet following the escape.
GSM7_EXTENSION = {
    "\f": 0x0A,
    "^": 0x14,
    "{": 0x28,
    "}": 0x29,
    "\\": 0x2F,
    "[": 0x3C,
    "~": 0x3D,
    "]": 0x3E,
    "|": 0x40,
    "€": 0x65,
}
_BASIC_ENCODE = {ch: i for i, ch in enumerate(GSM7_BASIC) if i != ESCAPE}
_EXTENSION_DECODE = {v: k for k, v in GSM7_EXTENSION.items()}

# Capacities (units per message): single part / each part of a multipart
# message carrying an 8-bit concatenation IE (6 octets of UDH).
GSM7_SINGLE = 160
GSM7_MULTI = 153
UCS2_SINGLE = 70
UCS2_MULTI = 67


@dataclass(frozen=True)
class TextInfo:
    """What a text costs: the API reports this, the modem driver sends it."""

    encoding: str  # GSM7 or UCS2
    segments: int
    units: int  # septets (escape pairs count 2) or UTF-16 code units


def is_gsm7(text: str) -> bool:
    """True when every character is in the default alphabet or extension table."""
    return all(ch in _BASIC_ENCODE or ch in GSM7_EXTENSION for ch in text)


def _unit_cost(ch: str, encoding: str) -> int:
    """Septets (GSM-7) or UTF-16 code units (UCS-2) one character needs."""
    if encoding == GSM7:
        return 2 if ch in GSM7_EXTENSION else 1
    return 2 if ord(ch) > 0xFFFF else 1


def _chunks(text: str, encoding: str, limit: int) -> list[str]:
    """Greedy split by code point, so escape and surrogate pairs stay whole."""
    parts: list[str] = []
    start = 0
    used = 0
    for i, ch in enumerate(text):
        cost = _unit_cost(ch, encoding)
        if used + cost > limit:
            parts.append(text[start:i])
            start, used = i, 0
        used += cost
    parts.append(text[start:])
    return parts


def _plan(text: str) -> tuple[str, int, list[str]]:
    """Pick the encoding and split the text the way the modem will send it."""
    encoding = GSM7 if is_gsm7(text) else UCS2
    units = sum(_unit_cost(ch, encoding) for ch in text)
    single, multi = (
        (GSM7_SINGLE, GSM7_MULTI) if encoding == GSM7 else (UCS2_SINGLE, UCS2_MULTI)
    )
    if units <= single:
        return encoding, units, [text]
    return encoding, units, _chunks(text, encoding, multi)


def analyze(text: str) -> TextInfo:
    """Encoding, segment count and unit count of ``text`` (empty text = 1 segment)."""
    encoding, units, parts = _plan(text)
    return TextInfo(encoding=encoding, segments=len(parts), units=units)


def split(text: str) -> list[str]:
    """The parts the modem sends, one string per segment; ``[text]`` if it fits."""
    return _plan(text)[2]
