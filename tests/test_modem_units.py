"""The modem's pure parts without a pty: line classification, report matching, inbound claims.

Transcript style (as gammu tests its AT parser): bytes in, classified lines and URCs out.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from relaybox.channels.modem.at import ATPort, Urc, _Pending
from relaybox.channels.modem.inbound import InboundCollector
from relaybox.channels.modem.reports import UNSENT, ReportTracker
from relaybox.sms import pdu

TO = "+46708251358"


class Transcript:
    """An ATPort fed bytes directly, as its reader thread would."""

    def __init__(self) -> None:
        self.urcs: list[Urc] = []
        self.port = ATPort("/dev/null", on_urc=self.urcs.append)

    def expect(self, command: str, *, prompt: bool = False) -> _Pending:
        pending = _Pending(command, expect_prompt=prompt, echoes={command})
        self.port._pending = pending
        return pending

    def feed(self, *chunks: bytes) -> None:
        for chunk in chunks:
            self.port._feed(chunk)


def test_urc_between_reply_lines_is_dispatched_not_kept_as_data():
    t = Transcript()
    pending = t.expect("AT+CMGR=3")
    t.feed(b'\r\n+CMGR: 0,,24\r\n^RSSI:15\r\n0791AABB\r\n+CMTI: "SM",4\r\n\r\nOK\r\n')
    assert pending.lines == ["+CMGR: 0,,24", "0791AABB"] and pending.final == "OK"
    assert [u.line for u in t.urcs] == ["^RSSI:15", '+CMTI: "SM",4']


def test_reply_split_byte_by_byte_with_echo():
    t = Transcript()
    pending = t.expect("AT+CSQ")
    for byte in b"AT+CSQ\r\r\n+CSQ: 17,99\r\n\r\nOK\r\n":
        t.feed(bytes([byte]))
    assert pending.lines == ["+CSQ: 17,99"] and pending.final == "OK"


def test_prompt_without_line_end_is_seen_and_pdu_echo_ignored():
    t = Transcript()
    pending = t.expect("AT+CMGS=23", prompt=True)
    pending.echoes.add("0011AA")
    t.feed(b"AT+CMGS=23\r\r\n> ")
    assert pending.prompt_seen and pending.final is None
    t.feed(b"0011AA\x1a\r\n+CMGS: 42\r\n\r\nOK\r\n")
    assert pending.lines == ["+CMGS: 42"] and pending.final == "OK"


def test_two_line_urcs_carry_their_pdu():
    t = Transcript()
    t.feed(b"\r\n+CDS: 25\r\n07914875215652F006360B9148\r\n")
    t.feed(b"\r\n+CMT: ,23\r\n0791AA\r\n")
    assert [(u.name, u.body) for u in t.urcs] == [
        ("+CDS", "07914875215652F006360B9148"),
        ("+CMT", "0791AA"),
    ]


def test_registration_line_is_data_for_its_query_and_a_urc_otherwise():
    t = Transcript()
    pending = t.expect("AT+CREG?")
    t.feed(b"\r\n+CREG: 0,1\r\n\r\nOK\r\n")
    assert pending.lines == ["+CREG: 0,1"] and t.urcs == []
    t.port._pending = None
    t.feed(b"\r\n+CREG: 5\r\n")
    assert [u.line for u in t.urcs] == ["+CREG: 5"]


def test_late_cmgs_and_stray_ok_while_idle():
    t = Transcript()
    t.feed(b"\r\n+CMGS: 12\r\n\r\nOK\r\n")
    assert [(u.name, u.value) for u in t.urcs] == [("+CMGS", "12")]


def test_error_finals_end_the_command():
    for final in ("ERROR", "+CMS ERROR: 512", "+CME ERROR: 11", "COMMAND NOT SUPPORT"):
        t = Transcript()
        pending = t.expect("AT+CPMS=?")
        t.feed(f"\r\n{final}\r\n".encode())
        assert pending.final == final


def _report(mr: int, status: int, recipient: str = TO) -> pdu.StatusReport:
    now = datetime.now(UTC)
    return pdu.decode_pdu(
        pdu.encode_status_report(mr, recipient, scts=now, discharge=now, status=status)
    )


def test_report_tracker_one_delivered_when_all_parts_are():
    tracker = ReportTracker(window=3600)
    message = tracker.add("req_1", TO, 2)
    message.parts[0].mr, message.parts[1].mr = 10, 11
    assert tracker.match(_report(10, 0x00), "") is None
    event = tracker.match(_report(11, 0x00), "")
    assert event is not None and (event.msg_key, event.status) == ("req_1", "delivered")
    assert tracker.match(_report(11, 0x00), "") is None  # decided: no second event


def test_report_tracker_failed_first_then_silent():
    tracker = ReportTracker(window=3600)
    message = tracker.add("req_2", TO, 2)
    message.parts[0].mr, message.parts[1].mr = 1, 2
    event = tracker.match(_report(2, 0x41), "")
    assert (
        event is not None
        and event.status == "failed"
        and event.raw["tp_status"] == 0x41
    )
    assert tracker.match(_report(1, 0x00), "") is None


def test_report_tracker_needs_the_number_to_match():
    tracker = ReportTracker(window=3600)
    message = tracker.add("req_3", TO, 1)
    message.parts[0].mr = 5
    assert tracker.match(_report(5, 0x00, "+441234567890"), "") is None
    assert tracker.match(_report(5, 0x00, "0708251358"), "").status == "delivered"


def test_report_tracker_prefers_the_message_sent_closest_to_the_smsc_time():
    tracker = ReportTracker(window=86400)
    old = tracker.add("req_old", TO, 1)
    old.sent_at -= 3000
    new = tracker.add("req_new", TO, 1)
    old.parts[0].mr = new.parts[0].mr = 200  # MR wrapped around
    assert tracker.match(_report(200, 0x00), "").msg_key == "req_new"


def test_unconfirmed_part_can_be_proven_but_unsent_parts_never_match():
    tracker = ReportTracker(window=3600)
    message = tracker.add("req_u", TO, 3)
    message.parts[0].mr = 30
    tracker.unconfirmed(message, 1)  # part 2 timed out after Ctrl-Z, part 3 never sent
    assert message.parts[2].status == UNSENT
    assert tracker.late_reference(31) == "req_u" and message.parts[1].mr == 31
    tracker.match(_report(30, 0x00), "")
    assert (
        tracker.match(_report(31, 0x00), "") is None
    )  # part 3 never went: not delivered


def test_inbound_collector_offers_a_concatenation_once_with_all_slots():
    collector = InboundCollector("m0", multipart_timeout=600, commit_timeout=300)
    hexes = pdu.encode_deliver("+8801711000000", "ক" * 100, scts=datetime.now(UTC))
    assert len(hexes) == 2
    first = collector.add(pdu.decode_pdu(hexes[1]), ("SM", 4), hexes[1])
    assert first is None and collector.claimed(("SM", 4), hexes[1])
    offer = collector.add(pdu.decode_pdu(hexes[0]), ("SM", 5), hexes[0])
    assert offer is not None and offer.message.text == "ক" * 100
    assert sorted(offer.slots) == [("SM", 4), ("SM", 5)]
    collector.deleted(("SM", 4))
    assert not collector.claimed(("SM", 4)) and collector.claimed(("SM", 5))


def test_inbound_collector_delivers_an_incomplete_concatenation_after_the_timeout():
    collector = InboundCollector("m0", multipart_timeout=0.05, commit_timeout=300)
    hexes = pdu.encode_deliver("+8801711000000", "x" * 300, scts=datetime.now(UTC))
    collector.add(pdu.decode_pdu(hexes[0]), ("SM", 1), hexes[0])
    time.sleep(0.1)
    (offer,) = collector.expire()
    assert not offer.message.complete and offer.message.text == "x" * 153
    assert offer.slots == [("SM", 1)]
