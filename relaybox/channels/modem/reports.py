"""Matching delivery reports to sent messages (MODEM.md §1.5).

A status report carries only the part's TP-MR (0–255, chosen by the modem), the recipient and
the SMSC's timestamps. MR alone collides — gammu users see reports land on the wrong message
or on none — so a report is matched on MR **and** number **and** a time window, and the
message is decided only when it is decided: delivered once every part is delivered, failed on
the first part the network gave up on. Pure bookkeeping, no I/O, so it is testable alone.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from relaybox.sms import pdu

log = logging.getLogger("relaybox.modem")

#: A part that never left (an earlier part's outcome was unknown, so the rest was not sent).
UNSENT = "unsent"


def numbers_match(a: str, b: str) -> bool:
    """Same subscriber? Reports may carry the number in national form, so compare the last
    9 digits when both sides are long enough."""
    da, db = re.sub(r"\D", "", a), re.sub(r"\D", "", b)
    if not da or not db:
        return a == b
    if da == db:
        return True
    n = min(len(da), len(db), 9)
    return n >= 7 and da[-n:] == db[-n:]


@dataclass
class SentPart:
    seq: int
    mr: int | None = None  # None until +CMGS answers; stays None if it never does
    status: str | None = None  # delivered / pending / failed / unknown / unsent
    raw: dict[str, Any] | None = None


@dataclass
class SentMessage:
    msg_key: str
    to: str
    sent_at: float  # time.time()
    parts: list[SentPart]
    unconfirmed: bool = False  # a part timed out after Ctrl-Z
    final: bool = False  # delivered or failed was reported; no more events
    created: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class StatusEvent:
    """What to tell the app: ``status`` is delivered / failed / pending / unknown."""

    msg_key: str
    status: str
    raw: dict[str, Any]


class ReportTracker:
    """Sent messages still waiting for reports. Thread-safe (the app may :meth:`restore`)."""

    def __init__(self, window: float):
        self.window = window  # seconds a message waits for its reports
        self._lock = threading.Lock()
        self._messages: list[SentMessage] = []

    def add(self, msg_key: str, to: str, parts: int) -> SentMessage:
        message = SentMessage(
            msg_key, to, time.time(), [SentPart(i + 1) for i in range(parts)]
        )
        with self._lock:
            self._messages.append(message)
        return message

    def restore(self, msg_key: str, to: str, refs: list[int], sent_at: float) -> None:
        """Watch a message sent before a restart (``refs`` as reported by ``on_sent``).

        A ref of -1 is a part without a known MR (no ``+CMGS`` came, or relaybox stopped while
        the modem had it): the message counts as unconfirmed, so a report to the same number
        that matches no known MR may still prove that part."""
        parts = [SentPart(i + 1, mr if mr >= 0 else None) for i, mr in enumerate(refs)]
        unconfirmed = any(mr < 0 for mr in refs)
        with self._lock:
            self._messages.append(SentMessage(msg_key, to, sent_at, parts, unconfirmed))

    @staticmethod
    def unconfirmed(message: SentMessage, index: int) -> None:
        """Part ``index`` timed out after Ctrl-Z; the parts after it were never sent."""
        message.unconfirmed = True
        for part in message.parts[index + 1 :]:
            part.status = UNSENT

    @staticmethod
    def abandon(message: SentMessage) -> None:
        """Nothing of the message went out: no report will come."""
        message.final = True

    def late_reference(self, mr: int) -> str | None:
        """A ``+CMGS: <mr>`` that came after the driver gave up: give it to the newest
        unconfirmed part so that part's report can still prove delivery."""
        with self._lock:
            for message in reversed(self._messages):
                if not message.unconfirmed:
                    continue
                for part in message.parts:
                    if part.mr is None and part.status is None:
                        part.mr = mr
                        return message.msg_key
        return None

    def expire(self) -> None:
        horizon = time.time() - self.window
        with self._lock:
            self._messages = [
                m for m in self._messages if not m.final and m.sent_at >= horizon
            ]

    def match(self, report: pdu.StatusReport, hex_pdu: str) -> StatusEvent | None:
        """Apply one report; return the event the app should see, if any."""
        now = time.time()
        scts = report.scts.timestamp() if report.scts else now
        with self._lock:
            live = [
                m
                for m in self._messages
                if not m.final
                and now - m.sent_at <= self.window
                and numbers_match(m.to, report.recipient)
            ]
        candidates = [
            (m, p)
            for m in live
            for p in m.parts
            if p.mr == report.reference and p.status not in (pdu.DELIVERED, pdu.FAILED)
        ]
        if not candidates:
            # A part whose +CMGS never came may still be proven delivered by its report.
            candidates = [
                (m, p)
                for m in live
                if m.unconfirmed
                for p in m.parts
                if p.mr is None and p.status is None
            ]
        if not candidates:
            log.info("status report mr=%d matches no sent message", report.reference)
            return None
        # Several candidates (MR reuse to the same number): the one sent closest to the time
        # the SMSC says it accepted the message.
        message, part = min(candidates, key=lambda mp: abs(mp[0].sent_at - scts))
        status = report.classification
        part.status = status
        part.raw = {
            "tp_status": report.status,
            "tp_status_hex": f"0x{report.status:02X}",
            "classification": status,
            "reference": report.reference,
            "part": part.seq,
            "parts": len(message.parts),
            "recipient": report.recipient,
            "scts": report.scts.isoformat() if report.scts else None,
            "discharge": report.discharge.isoformat() if report.discharge else None,
            "pdu": hex_pdu,
        }
        raw = dict(part.raw, all_parts=[p.raw for p in message.parts])
        if status == pdu.FAILED:
            message.final = True
            return StatusEvent(message.msg_key, pdu.FAILED, raw)
        if status == pdu.DELIVERED:
            if all(p.status == pdu.DELIVERED for p in message.parts):
                message.final = True
                return StatusEvent(message.msg_key, pdu.DELIVERED, raw)
            return None
        return StatusEvent(message.msg_key, status, raw)
