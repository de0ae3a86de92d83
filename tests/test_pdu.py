"""Tests for relaybox.sms.pdu: segment counting (the API's promise)."""

from relaybox.sms.pdu import GSM7, UCS2, analyze, split


def test_gsm7_boundaries() -> None:
    assert analyze("").segments == 1
    assert analyze("a" * 160) == analyze("a" * 160)
    assert (analyze("a" * 160).segments, analyze("a" * 161).segments) == (1, 2)
    assert analyze("a" * 161).encoding == GSM7


def test_escape_pair_not_split() -> None:
    text = "a" * 152 + "€" + "a" * 10
    assert [len(p) for p in split(text)] == [152, 11]


def test_ucs2_boundaries() -> None:
    assert analyze("あ" * 70).segments == 1
    assert analyze("あ" * 71).segments == 2
    assert analyze("hi 😀").units == 5
    assert analyze("hi 😀").encoding == UCS2
