"""SMS text analysis and PDU codec (3GPP TS 23.038 / 23.040) for relaybox.

One module decides both what the REST API reports (``analyze``: encoding and
segment count) and what the USB modem driver sends (``encode_submit``), so the
API's ``segments`` can never disagree with the modem's split.  It also decodes
what the modem hands back: SMS-DELIVER (inbound), SMS-STATUS-REPORT (delivery
reports) and SMS-SUBMIT (stored outbound, and tests).

Why we wrote our own instead of using a library (MODEM.md section 3): none of
the candidates gets the basics right with an acceptable license and
maintenance.  python-gsmmodem-new (LGPL, code frozen since 2019) crashes on
emoji, reports a wrong ``AT+CMGS`` length when an SMSC is embedded and reuses
TP-MR as the concatenation reference; smspdudecoder cannot read status
reports, has no encoder and breaks with bitstring 5; python-messaging is GPL
and emits corrupt PDUs for emoji; the rest are bare codecs, Python 2 only or
dead.  The format is small and fully specified, and MODEM.md section 5 has
cross-checked vectors.  Those two libraries remain test-only oracles.

Scope: GSM 7-bit default alphabet + extension table (no national language
shift tables), UCS-2 sent as UTF-16BE (surrogate pairs for non-BMP text, never
split across parts), 8-bit concatenation IE out, 8- and 16-bit IEs in.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone

__all__ = [
    "EIGHT_BIT",
    "GSM7",
    "UCS2",
    "Assembled",
    "Concat",
    "Deliver",
    "PduError",
    "Reassembler",
    "StatusReport",
    "Submit",
    "SubmitPdu",
    "TextInfo",
    "analyze",
    "classify_status",
    "decode_pdu",
    "encode_deliver",
    "encode_status_report",
    "encode_submit",
    "gsm7_decode",
    "gsm7_encode",
    "is_gsm7",
    "join_parts",
    "pack_septets",
    "split",
    "ucs2_decode",
    "ucs2_encode",
    "unpack_septets",
]

GSM7 = "GSM-7"
UCS2 = "UCS-2"
EIGHT_BIT = "8-bit"

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

# First-octet bits (TS 23.040 9.2.3).
_MTI_DELIVER, _MTI_SUBMIT, _MTI_STATUS_REPORT = 0x00, 0x01, 0x02
_FO_MMS_OR_RD = 0x04  # DELIVER: TP-MMS (inverted); SUBMIT: TP-RD
_FO_VPF_RELATIVE = 0x10
_FO_SRR = 0x20  # SUBMIT: TP-SRR; DELIVER: TP-SRI; STATUS-REPORT: TP-SRQ
_FO_UDHI = 0x40
_FO_RP = 0x80

# Type of address: international ISDN, unknown ISDN, alphanumeric.
TOA_INTERNATIONAL = 0x91
TOA_UNKNOWN = 0x81
TOA_ALPHANUMERIC = 0xD0

_SEMI_OCTET_DIGITS = "0123456789*#abc"

# Delivery report classification (TS 23.040 9.2.3.15, MODEM.md 1.5).
DELIVERED = "delivered"
PENDING = "pending"
FAILED = "failed"
UNKNOWN = "unknown"


class PduError(ValueError):
    """A PDU that cannot be decoded; a ValueError so callers may catch either."""


# --------------------------------------------------------------------------
# Text analysis and splitting (what the API reports = what the modem sends)


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


# --------------------------------------------------------------------------
# Character codecs and septet packing


def pack_septets(septets: Sequence[int], fill_bits: int = 0) -> bytes:
    """Pack 7-bit values LSB first; ``fill_bits`` zero bits first (data after a UDH)."""
    value = 0
    for i, septet in enumerate(septets):
        if not 0 <= septet < 0x80:
            raise ValueError(f"septet out of range: {septet}")
        value |= septet << (fill_bits + 7 * i)
    nbits = fill_bits + 7 * len(septets)
    return value.to_bytes((nbits + 7) // 8, "little")


def unpack_septets(
    data: bytes, count: int | None = None, fill_bits: int = 0
) -> list[int]:
    """Inverse of ``pack_septets``; ``count`` defaults to as many as fit."""
    available = (len(data) * 8 - fill_bits) // 7
    if count is None:
        count = available
    if count > available:
        raise PduError(f"user data holds {available} septets, header says {count}")
    value = int.from_bytes(data, "little")
    return [(value >> (fill_bits + 7 * i)) & 0x7F for i in range(count)]


def gsm7_encode(text: str) -> list[int]:
    """Septet values for ``text``; extension characters become ESC + code."""
    out: list[int] = []
    for ch in text:
        code = _BASIC_ENCODE.get(ch)
        if code is not None:
            out.append(code)
            continue
        ext = GSM7_EXTENSION.get(ch)
        if ext is None:
            raise ValueError(
                f"{ch!r} (U+{ord(ch):04X}) is not in the GSM 7-bit alphabet"
            )
        out += (ESCAPE, ext)
    return out


def gsm7_decode(septets: Iterable[int]) -> str:
    """Text for septet values; unknown extension codes show the default character.

    That fallback is what TS 23.038 6.2.1.1 asks receivers to do; a trailing
    lone escape (a sender that split a pair) is dropped.
    """
    out: list[str] = []
    escaped = False
    for septet in septets:
        if escaped:
            escaped = False
            ch = _EXTENSION_DECODE.get(septet)
            if ch is None:
                ch = " " if septet == ESCAPE else GSM7_BASIC[septet]
            out.append(ch)
        elif septet == ESCAPE:
            escaped = True
        else:
            out.append(GSM7_BASIC[septet])
    return "".join(out)


def ucs2_encode(text: str) -> bytes:
    """UTF-16BE, so emoji travel as surrogate pairs like every handset sends them."""
    return text.encode("utf-16-be")


def ucs2_decode(data: bytes) -> str:
    """UTF-16BE to text; broken surrogates or an odd byte become U+FFFD."""
    return data.decode("utf-16-be", errors="replace")


# --------------------------------------------------------------------------
# Addresses, timestamps, validity


def _semi_octets(digits: str) -> bytes:
    """Swapped-nibble BCD with an F filler, as used for numbers and SMSCs."""
    nibbles = [_SEMI_OCTET_DIGITS.index(c) for c in digits.lower()]
    if len(nibbles) % 2:
        nibbles.append(0xF)
    return bytes(nibbles[i] | nibbles[i + 1] << 4 for i in range(0, len(nibbles), 2))


def _decode_semi_octets(data: bytes, count: int | None = None) -> str:
    """Digits of swapped-nibble BCD; stops at the F filler or after ``count``."""
    out: list[str] = []
    for byte in data:
        for nibble in (byte & 0x0F, byte >> 4):
            if nibble == 0xF:
                return "".join(out)
            out.append(_SEMI_OCTET_DIGITS[nibble])
    return "".join(out[:count] if count is not None else out)


def _parse_number(number: str) -> tuple[int, str]:
    """(TOA, digits): a leading ``+`` means international (0x91), else 0x81."""
    number = number.strip()
    international = number.startswith("+")
    digits = number[1:] if international else number
    if not digits or len(digits) > 20 or any(c not in "0123456789*#" for c in digits):
        raise ValueError(f"not a phone number: {number!r}")
    return (TOA_INTERNATIONAL if international else TOA_UNKNOWN), digits


def _encode_address(number: str, *, allow_alpha: bool = False) -> bytes:
    """TP-DA / TP-OA: length in digits, TOA, BCD (or packed GSM-7 if alphanumeric)."""
    try:
        toa, digits = _parse_number(number)
    except ValueError:
        if not allow_alpha or not number or len(number) > 11:
            raise
        septets = gsm7_encode(number)
        return bytes(
            [math.ceil(len(septets) * 7 / 4), TOA_ALPHANUMERIC]
        ) + pack_septets(septets)
    return bytes([len(digits), toa]) + _semi_octets(digits)


def _encode_smsc(smsc: str | None) -> bytes:
    """SMSC field; ``00`` tells the modem to use its stored SMSC (AT+CSCA)."""
    if not smsc:
        return b"\x00"
    toa, digits = _parse_number(smsc)
    body = bytes([toa]) + _semi_octets(digits)
    return bytes([len(body)]) + body


def _format_number(toa: int, digits: str) -> str:
    """Add ``+`` for international numbers, the form the rest of relaybox uses."""
    if (toa >> 4) & 0x07 == 1 and digits:
        return "+" + digits
    return digits


def _encode_timestamp(when: datetime) -> bytes:
    """TP-SCTS / absolute TP-VP; naive datetimes are taken as UTC."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    offset = when.utcoffset() or timedelta(0)
    quarters = round(abs(offset.total_seconds()) / 900)
    fields = [
        when.year % 100,
        when.month,
        when.day,
        when.hour,
        when.minute,
        when.second,
    ]
    out = bytes((v % 10) << 4 | v // 10 for v in fields)
    tz = (quarters % 10) << 4 | (quarters // 10)
    if offset < timedelta(0):
        tz |= 0x08
    return out + bytes([tz])


def _decode_timestamp(data: bytes) -> datetime | None:
    """TP-SCTS to an aware datetime; None when a modem sends garbage digits."""
    nibbles = [(b & 0x0F, b >> 4) for b in data[:6]]
    if len(data) < 7 or any(lo > 9 or hi > 9 for lo, hi in nibbles):
        return None
    yy, month, day, hour, minute, second = (lo * 10 + hi for lo, hi in nibbles)
    tz = data[6]
    if tz >> 4 > 9:
        return None
    quarters = (tz & 0x07) * 10 + (tz >> 4)
    offset = timedelta(minutes=15 * quarters) * (-1 if tz & 0x08 else 1)
    year = 1900 + yy if yy >= 70 else 2000 + yy
    try:
        return datetime(year, month, day, hour, minute, second, tzinfo=timezone(offset))
    except ValueError:
        return None


def _encode_validity(seconds: float) -> int:
    """Relative TP-VP (TS 23.040 9.2.3.12.1): smallest value not shorter than asked."""
    if seconds < 0:
        raise ValueError("validity_seconds must not be negative")
    minutes = math.ceil(seconds / 60)
    if minutes <= 12 * 60:
        return max(math.ceil(minutes / 5) - 1, 0)
    if minutes <= 24 * 60:
        return 143 + math.ceil((minutes - 12 * 60) / 30)
    days = math.ceil(minutes / (24 * 60))
    if days <= 30:
        return 166 + days
    return min(192 + math.ceil(days / 7), 255)


def _decode_validity(vp: int) -> int:
    """Relative TP-VP to seconds."""
    if vp <= 143:
        return (vp + 1) * 5 * 60
    if vp <= 167:
        return 12 * 3600 + (vp - 143) * 30 * 60
    if vp <= 196:
        return (vp - 166) * 86400
    return (vp - 192) * 7 * 86400


# --------------------------------------------------------------------------
# User data


@dataclass(frozen=True)
class Concat:
    """Concatenation IE: reference, number of parts, this part's number (1-based)."""

    ref: int
    total: int
    seq: int
    ref_bits: int = 8


def _encode_user_data(text: str, encoding: str, udh: bytes) -> tuple[int, bytes]:
    """(TP-UDL, TP-UD) for one part; ``udh`` includes its UDHL octet."""
    if encoding == GSM7:
        septets = gsm7_encode(text)
        header_bits = len(udh) * 8
        fill = (7 - header_bits % 7) % 7
        udl = (header_bits + fill) // 7 + len(septets)
        if udl > GSM7_SINGLE:
            raise ValueError("part too long for one SMS")
        return udl, udh + pack_septets(septets, fill)
    data = udh + ucs2_encode(text)
    if len(data) > 140:
        raise ValueError("part too long for one SMS")
    return len(data), data


def _parse_udh(header: bytes) -> tuple[tuple[int, bytes], ...]:
    """Information elements (IEI, data); a truncated trailing IE is ignored."""
    ies: list[tuple[int, bytes]] = []
    i = 0
    while i + 2 <= len(header):
        iei, length = header[i], header[i + 1]
        data = header[i + 2 : i + 2 + length]
        if len(data) < length:
            break
        ies.append((iei, bytes(data)))
        i += 2 + length
    return tuple(ies)


def _concat_from_ies(ies: Iterable[tuple[int, bytes]]) -> Concat | None:
    """First valid 8- or 16-bit concatenation IE; invalid ones are ignored (23.040)."""
    for iei, data in ies:
        if iei == 0x00 and len(data) == 3:
            concat = Concat(data[0], data[1], data[2], 8)
        elif iei == 0x08 and len(data) == 4:
            concat = Concat(data[0] << 8 | data[1], data[2], data[3], 16)
        else:
            continue
        if concat.total >= 1 and 1 <= concat.seq <= concat.total:
            return concat
    return None


def _dcs_info(dcs: int) -> tuple[str, int | None, bool]:
    """(alphabet, message class, compressed) per TS 23.038 section 4."""
    group = dcs >> 4
    if dcs & 0x80 == 0:  # general data coding, incl. automatic deletion group
        alphabet = (dcs >> 2) & 0x03
        encoding = {1: EIGHT_BIT, 2: UCS2}.get(alphabet, GSM7)
        return encoding, (dcs & 0x03) if dcs & 0x10 else None, bool(dcs & 0x20)
    if group == 0xE:
        return UCS2, None, False
    if group == 0xF:
        return (EIGHT_BIT if dcs & 0x04 else GSM7), dcs & 0x03, False
    return GSM7, None, False  # message waiting groups and reserved: default alphabet


def _decode_user_data(
    udhi: bool, encoding: str, udl: int, ud: bytes
) -> tuple[tuple[tuple[int, bytes], ...], bytes, str]:
    """(IEs, units, text); units are septets (one per byte), UTF-16BE or raw octets.

    Lenient with truncated user data, because modems do truncate.
    """
    ies: tuple[tuple[int, bytes], ...] = ()
    header_octets = 0
    if udhi and ud:
        header_octets = min(ud[0] + 1, len(ud))
        ies = _parse_udh(ud[1:header_octets])
    if encoding == GSM7:
        header_bits = header_octets * 8
        skip = (header_bits + 6) // 7
        fill = skip * 7 - header_bits
        body = ud[header_octets:]
        count = max(0, min(udl - skip, (len(body) * 8 - fill) // 7))
        septets = unpack_septets(body, count, fill)
        return ies, bytes(septets), gsm7_decode(septets)
    data = ud[header_octets:udl]
    if encoding == UCS2:
        return ies, data, ucs2_decode(data)
    return ies, data, data.decode("latin-1")  # 8-bit: one char per octet, lossless


# --------------------------------------------------------------------------
# SMS-SUBMIT encoding (what the modem driver sends)


@dataclass(frozen=True)
class SubmitPdu:
    """One part to send: ``AT+CMGS=<tpdu_length>``, then ``hex`` and Ctrl-Z."""

    hex: str
    tpdu_length: int  # octets excluding the SMSC field, for AT+CMGS
    reference: int  # TP-MR written into the PDU (modems may overwrite it)
    text: str = ""
    seq: int = 1
    total: int = 1

    def with_reference(self, reference: int) -> SubmitPdu:
        """Same part with another TP-MR, for drivers that number parts themselves."""
        if not 0 <= reference <= 255:
            raise ValueError("TP-MR must be 0..255")
        pos = (int(self.hex[0:2], 16) + 2) * 2  # SMSC field, first octet, then MR
        new_hex = f"{self.hex[:pos]}{reference:02X}{self.hex[pos + 2 :]}"
        return replace(self, hex=new_hex, reference=reference)


def _concat_udh(ref: int, total: int, seq: int) -> bytes:
    """8-bit concatenation IE with its UDHL, as smstools3 sends it."""
    return bytes([0x05, 0x00, 0x03, ref, total, seq])


def _check_octet(name: str, value: int) -> None:
    if not 0 <= value <= 255:
        raise ValueError(f"{name} must be 0..255")


def encode_submit(
    to: str,
    text: str,
    *,
    smsc: str | None = None,
    request_status_report: bool = True,
    validity_seconds: float | None = None,
    reference: int = 0,
    concat_ref: int | None = None,
) -> list[SubmitPdu]:
    """SMS-SUBMIT PDUs, one per part, split exactly as ``split(text)``.

    ``smsc=None`` writes an empty SMSC field so the modem uses AT+CSCA's.
    ``concat_ref`` is independent of TP-MR; None picks a random one for
    multipart texts.  Use ``SubmitPdu.with_reference`` to give parts their
    own TP-MR.
    """
    _check_octet("reference", reference)
    encoding, _units, parts = _plan(text)
    if len(parts) > 255:
        raise ValueError("text needs more than 255 parts")
    multipart = len(parts) > 1
    if multipart and concat_ref is None:
        concat_ref = random.randrange(256)
    if concat_ref is not None:
        _check_octet("concat_ref", concat_ref)
    smsc_field = _encode_smsc(smsc)
    destination = _encode_address(to)
    first = _MTI_SUBMIT
    if request_status_report:
        first |= _FO_SRR
    vp = b""
    if validity_seconds is not None:
        first |= _FO_VPF_RELATIVE
        vp = bytes([_encode_validity(validity_seconds)])
    if multipart:
        first |= _FO_UDHI
    dcs = 0x00 if encoding == GSM7 else 0x08
    out: list[SubmitPdu] = []
    for seq, part in enumerate(parts, 1):
        udh = _concat_udh(concat_ref or 0, len(parts), seq) if multipart else b""
        udl, ud = _encode_user_data(part, encoding, udh)
        tpdu = bytes([first, reference]) + destination + bytes([0x00, dcs]) + vp
        tpdu += bytes([udl]) + ud
        out.append(
            SubmitPdu(
                hex=(smsc_field + tpdu).hex().upper(),
                tpdu_length=len(tpdu),
                reference=reference,
                text=part,
                seq=seq,
                total=len(parts),
            )
        )
    return out


# --------------------------------------------------------------------------
# DELIVER / STATUS-REPORT encoding (for modem simulators and tests)


def encode_deliver(
    sender: str,
    text: str,
    *,
    scts: datetime,
    smsc: str | None = None,
    concat_ref: int = 0,
    status_report_indication: bool = False,
) -> list[str]:
    """SMS-DELIVER PDUs (hex, with SMSC field) as a network would deliver ``text``.

    Lets a simulated modem produce inbound traffic with the same split rules;
    ``sender`` may be alphanumeric (up to 11 characters).
    """
    _check_octet("concat_ref", concat_ref)
    encoding, _units, parts = _plan(text)
    multipart = len(parts) > 1
    first = _MTI_DELIVER | _FO_MMS_OR_RD  # TP-MMS=1: no more messages waiting
    if status_report_indication:
        first |= _FO_SRR
    if multipart:
        first |= _FO_UDHI
    head = (
        _encode_smsc(smsc) + bytes([first]) + _encode_address(sender, allow_alpha=True)
    )
    head += bytes([0x00, 0x00 if encoding == GSM7 else 0x08]) + _encode_timestamp(scts)
    out: list[str] = []
    for seq, part in enumerate(parts, 1):
        udh = _concat_udh(concat_ref, len(parts), seq) if multipart else b""
        udl, ud = _encode_user_data(part, encoding, udh)
        out.append((head + bytes([udl]) + ud).hex().upper())
    return out


def encode_status_report(
    reference: int,
    recipient: str,
    *,
    scts: datetime,
    discharge: datetime,
    status: int,
    smsc: str | None = None,
) -> str:
    """SMS-STATUS-REPORT PDU (hex, with SMSC field), for simulated ``+CDS`` reports."""
    _check_octet("reference", reference)
    _check_octet("status", status)
    first = _MTI_STATUS_REPORT | _FO_MMS_OR_RD  # no more messages waiting
    pdu = _encode_smsc(smsc) + bytes([first, reference])
    pdu += (
        _encode_address(recipient)
        + _encode_timestamp(scts)
        + _encode_timestamp(discharge)
    )
    return (pdu + bytes([status])).hex().upper()


# --------------------------------------------------------------------------
# Decoding


def classify_status(status: int) -> str:
    """TP-Status class: delivered 0x00-0x1F, pending 0x20-0x3F, failed 0x40-0x7F.

    0x20-0x3F means the SMSC is still trying; 0x40-0x7F covers permanent
    errors and temporary ones the SMSC gave up on; 0x80+ is reserved.
    """
    if status < 0x20:
        return DELIVERED
    if status < 0x40:
        return PENDING
    if status < 0x80:
        return FAILED
    return UNKNOWN


@dataclass(frozen=True)
class Deliver:
    """An inbound SMS-DELIVER."""

    smsc: str | None
    sender: str
    sender_toa: int
    scts: datetime | None
    text: str
    encoding: str
    dcs: int
    pid: int
    concat: Concat | None
    udh: tuple[tuple[int, bytes], ...]
    user_data: bytes  # units for reassembly: septets / UTF-16BE / octets
    message_class: int | None = None
    more_messages: bool = False  # TP-MMS: the SMSC has more messages waiting
    status_report_indication: bool = False
    reply_path: bool = False

    @property
    def kind(self) -> str:
        return "deliver"


@dataclass(frozen=True)
class StatusReport:
    """An SMS-STATUS-REPORT: the network's answer for the part with TP-MR ``reference``."""

    smsc: str | None
    reference: int
    recipient: str
    recipient_toa: int
    scts: datetime | None  # when the SMSC accepted the message
    discharge: datetime | None  # when it was delivered / the status was reached
    status: int

    @property
    def kind(self) -> str:
        return "status-report"

    @property
    def classification(self) -> str:
        """``delivered``, ``pending``, ``failed`` or ``unknown`` (see classify_status)."""
        return classify_status(self.status)


@dataclass(frozen=True)
class Submit:
    """An SMS-SUBMIT (stored outbound messages, and our own output in tests)."""

    smsc: str | None
    reference: int
    recipient: str
    recipient_toa: int
    text: str
    encoding: str
    dcs: int
    pid: int
    concat: Concat | None
    udh: tuple[tuple[int, bytes], ...]
    user_data: bytes
    status_report_request: bool
    validity: int | datetime | None  # seconds if relative, datetime if absolute
    reject_duplicates: bool = False

    @property
    def kind(self) -> str:
        return "submit"


class _Reader:
    """Cursor over PDU octets that raises PduError instead of IndexError."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def octet(self) -> int:
        return self.take(1)[0]

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise PduError(f"PDU too short: needed {n} octets at offset {self.pos}")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def rest(self) -> bytes:
        chunk = self.data[self.pos :]
        self.pos = len(self.data)
        return chunk

    def smsc(self) -> str | None:
        length = self.octet()
        if length == 0:
            return None
        body = self.take(length)
        digits = _decode_semi_octets(body[1:])
        return _format_number(body[0], digits) or None

    def address(self) -> tuple[str, int]:
        digits_len = self.octet()
        toa = self.octet()
        body = self.take((digits_len + 1) // 2)
        if (toa >> 4) & 0x07 == 5:  # alphanumeric, GSM-7 packed
            return gsm7_decode(unpack_septets(body, digits_len * 4 // 7)), toa
        return _format_number(toa, _decode_semi_octets(body, digits_len)), toa


def decode_pdu(
    hex_pdu: str, *, has_smsc: bool = True
) -> Deliver | StatusReport | Submit:
    """Decode a PDU as printed by ``+CMGR``/``+CMGL``/``+CMT``/``+CDS`` (SMSC first).

    ``has_smsc=False`` for bare TPDUs.  MTI 01 is read as SMS-SUBMIT since
    that is what a modem's storage holds (we never receive SUBMIT-REPORTs).
    """
    try:
        data = bytes.fromhex(hex_pdu.strip())
    except ValueError as exc:
        raise PduError(f"not hex: {exc}") from None
    r = _Reader(data)
    smsc = r.smsc() if has_smsc else None
    first = r.octet()
    mti = first & 0x03
    if mti == _MTI_DELIVER:
        sender, sender_toa = r.address()
        pid, dcs = r.octet(), r.octet()
        scts = _decode_timestamp(r.take(7))
        udl = r.octet()
        encoding, message_class, _compressed = _dcs_info(dcs)
        ies, units, text = _decode_user_data(
            bool(first & _FO_UDHI), encoding, udl, r.rest()
        )
        return Deliver(
            smsc=smsc,
            sender=sender,
            sender_toa=sender_toa,
            scts=scts,
            text=text,
            encoding=encoding,
            dcs=dcs,
            pid=pid,
            concat=_concat_from_ies(ies),
            udh=ies,
            user_data=units,
            message_class=message_class,
            more_messages=not first & _FO_MMS_OR_RD,
            status_report_indication=bool(first & _FO_SRR),
            reply_path=bool(first & _FO_RP),
        )
    if mti == _MTI_STATUS_REPORT:
        reference = r.octet()
        recipient, recipient_toa = r.address()
        scts = _decode_timestamp(r.take(7))
        discharge = _decode_timestamp(r.take(7))
        status = r.octet()
        return StatusReport(
            smsc=smsc,
            reference=reference,
            recipient=recipient,
            recipient_toa=recipient_toa,
            scts=scts,
            discharge=discharge,
            status=status,
        )
    if mti == _MTI_SUBMIT:
        reference = r.octet()
        recipient, recipient_toa = r.address()
        pid, dcs = r.octet(), r.octet()
        vpf = (first >> 3) & 0x03
        validity: int | datetime | None = None
        if vpf == 2:
            validity = _decode_validity(r.octet())
        elif vpf == 3:
            validity = _decode_timestamp(r.take(7))
        elif vpf == 1:
            r.take(7)  # enhanced format: not interpreted
        udl = r.octet()
        encoding, _class, _compressed = _dcs_info(dcs)
        ies, units, text = _decode_user_data(
            bool(first & _FO_UDHI), encoding, udl, r.rest()
        )
        return Submit(
            smsc=smsc,
            reference=reference,
            recipient=recipient,
            recipient_toa=recipient_toa,
            text=text,
            encoding=encoding,
            dcs=dcs,
            pid=pid,
            concat=_concat_from_ies(ies),
            udh=ies,
            user_data=units,
            status_report_request=bool(first & _FO_SRR),
            validity=validity,
            reject_duplicates=bool(first & _FO_MMS_OR_RD),
        )
    raise PduError(f"reserved message type in first octet 0x{first:02X}")


# --------------------------------------------------------------------------
# Reassembly of concatenated inbound messages


def join_parts(parts: Sequence[Deliver | Submit]) -> str:
    """Text of parts in the given order, joined at unit level.

    Joining units rather than strings keeps an escape or surrogate pair that a
    sender split across parts intact; runs of parts with different encodings
    (some phones choose per part) are decoded separately.
    """
    out: list[str] = []
    run: list[Deliver | Submit] = []

    def flush() -> None:
        if not run:
            return
        units = b"".join(p.user_data for p in run)
        encoding = run[0].encoding
        if encoding == GSM7:
            out.append(gsm7_decode(units))
        elif encoding == UCS2:
            out.append(ucs2_decode(units))
        else:
            out.append(units.decode("latin-1"))
        run.clear()

    for part in parts:
        if run and run[0].encoding != part.encoding:
            flush()
        run.append(part)
    flush()
    return "".join(out)


@dataclass(frozen=True)
class Assembled:
    """A complete inbound message, from one part or all parts of a concatenated one."""

    sender: str
    text: str
    parts: tuple[Deliver, ...]  # in sequence order

    @property
    def scts(self) -> datetime | None:
        return self.parts[0].scts


ReassemblyKey = tuple[str, int, int]


class Reassembler:
    """In-memory collector of concatenated parts keyed by (sender, ref, total).

    Kept simple on purpose: the caller persists the PDUs (and replays them into
    a fresh Reassembler after a restart) and decides when to give up on an
    incomplete set via ``expire``.  A repeated part replaces the earlier copy.
    """

    def __init__(self) -> None:
        self._parts: dict[ReassemblyKey, dict[int, Deliver]] = {}
        self._first_seen: dict[ReassemblyKey, float] = {}

    def add(self, part: Deliver, now: float | None = None) -> Assembled | None:
        """Add one part; returns the whole message once every part is in."""
        if part.concat is None or part.concat.total == 1:
            return Assembled(part.sender, part.text, (part,))
        key = (part.sender, part.concat.ref, part.concat.total)
        bucket = self._parts.setdefault(key, {})
        self._first_seen.setdefault(key, time.monotonic() if now is None else now)
        bucket[part.concat.seq] = part
        if len(bucket) < part.concat.total:
            return None
        del self._parts[key], self._first_seen[key]
        ordered = tuple(bucket[i] for i in sorted(bucket))
        return Assembled(part.sender, join_parts(ordered), ordered)

    def pending(self) -> dict[ReassemblyKey, list[int]]:
        """Incomplete sets and the part numbers received so far."""
        return {key: sorted(parts) for key, parts in self._parts.items()}

    def expire(
        self, max_age: float, now: float | None = None
    ) -> list[tuple[ReassemblyKey, tuple[Deliver, ...]]]:
        """Drop sets older than ``max_age`` seconds and return their parts.

        The caller may still deliver them (e.g. ``join_parts`` with a gap
        marker) rather than lose the text.
        """
        now = time.monotonic() if now is None else now
        dropped = []
        for key, first_seen in list(self._first_seen.items()):
            if now - first_seen >= max_age:
                bucket = self._parts.pop(key)
                del self._first_seen[key]
                dropped.append((key, tuple(bucket[i] for i in sorted(bucket))))
        return dropped
