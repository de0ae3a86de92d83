"""Failover and parking: which failed sends may go out again elsewhere, and channels that keep failing.

**Failover.** A send is tried again on another channel (``messages.requeue_for_failover``, up to
``max_attempts`` hand-offs, each a ``dispatched`` row on the timeline) only when the failure
proves that nothing went out. Modems decide that from the ``+CMS ERROR`` (the modem channel's
``SendResult.resendable``). For phones, :func:`android_nothing_sent` reads the app's error text
(``Send result: RESULT_ERROR_RADIO_OFF (...)``, from Android's ``SmsManager`` result codes):

* ``RESULT_ERROR_LIMIT_EXCEEDED`` (Android's own SMS limit), ``RESULT_ERROR_FDN_CHECK_FAILURE``
  and a missing SIM (``Can't send message: SIM n not found``) are refused for the whole message
  before any part is handed to the radio: always safe to send again.
* ``RESULT_ERROR_RADIO_OFF``, ``RESULT_ERROR_NO_SERVICE`` and ``RESULT_RADIO_NOT_AVAILABLE`` are
  decided per part, before that part goes out. A one-part message never left; a longer one may
  have lost only a later part, so it is not sent again (the recipient would get the first
  parts twice).
* ``RESULT_ERROR_GENERIC_FAILURE`` is **never** retried: the radio layer returns it for failures
  after the PDU was handed to the network too (no RP-ACK in time, an RP-ERROR after the SMSC
  may have stored it), so the message may well have been sent. The same for every other or
  unknown code, a report that also carries a ``Sent`` time, and ``TTL expired``.

A phone never gets a failed-over message back: the app keeps message ids and would only report
the old failure again. A modem may (the router prefers another channel and falls back to it).

**Parking** (as smstools3 blocks a modem after ``blockafter`` errors): a channel whose sends fail
``park_after_failures`` times in a row (failovers, and failures that are the channel's, not the
message's: radio, service, timeouts, modem errors) is parked for ``park_backoff_seconds``,
doubled at each further parking up to ``park_backoff_max_seconds``. A parked channel is skipped
by the router and claims nothing (its messages go to other channels or wait for it, if pinned).
When the back-off has passed it gets one message; a success unparks it, a failure parks it
again for longer. A channel holding messages it may send without taking any for
``handoff_timeout`` seconds is parked at once. ``/ready`` and ``GET /queue`` show parked channels.
Parking lives in memory: a restart gives every channel a fresh start.
"""
from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from relaybox.models import Message, MessageEvent
from relaybox.timeutil import iso, now_ms

if TYPE_CHECKING:  # pragma: no cover
    from relaybox.channels.base import Channel
    from relaybox.events import Event
    from relaybox.runtime import Runtime

log = logging.getLogger("relaybox.failover")

# -- Android: which reported failures prove nothing went out --------------------------------------
WHOLE_MESSAGE = frozenset({"RESULT_ERROR_LIMIT_EXCEEDED", "RESULT_ERROR_FDN_CHECK_FAILURE"})
PER_PART = frozenset({"RESULT_ERROR_RADIO_OFF", "RESULT_ERROR_NO_SERVICE", "RESULT_RADIO_NOT_AVAILABLE"})
# Older app builds print the bare SmsManager code ("Error code: 2.").
ANDROID_CODES = {2: "RESULT_ERROR_RADIO_OFF", 4: "RESULT_ERROR_NO_SERVICE", 5: "RESULT_ERROR_LIMIT_EXCEEDED",
                 6: "RESULT_ERROR_FDN_CHECK_FAILURE", 9: "RESULT_RADIO_NOT_AVAILABLE", 1: "RESULT_ERROR_GENERIC_FAILURE"}
_NAME = re.compile(r"\b(RESULT_[A-Z_]+)\b")
_CODE = re.compile(r"^Send result: (?:Error code: )?(\d+)")
_NO_SIM = re.compile(r"^Can't send message: SIM \d+ not found")


def android_result(error: str | None) -> str | None:
    """The SmsManager result name in a phone's error text, if any."""
    if not error:
        return None
    m = _NAME.search(error)
    if m:
        return m.group(1)
    m = _CODE.match(error)
    return ANDROID_CODES.get(int(m.group(1))) if m else None


def android_nothing_sent(error: str | None, segments: int, states: dict[str, Any] | None = None) -> bool:
    """True when a phone's ``Failed`` report proves no part of the message went out."""
    if states and states.get("Sent"):
        return False
    if error and _NO_SIM.match(error):
        return True
    name = android_result(error)
    if name in WHOLE_MESSAGE:
        return True
    return name in PER_PART and segments <= 1


# -- which failures are the channel's -------------------------------------------------------------
CHANNEL_FAULTS = frozenset({"DEVICE_SEND_FAILED", "DEVICE_TIMEOUT", "MODEM_ERROR", "MODEM_OFFLINE",
                            "MODEM_CONFIG", "MODEM_UNCONFIRMED"})


def channel_fault(error_code: str | None, error_message: str | None) -> bool:
    if error_code not in CHANNEL_FAULTS:
        return False
    # A phone that found the message past its validity did nothing wrong.
    return not (error_code == "DEVICE_SEND_FAILED" and (error_message or "").startswith("TTL expired"))


@dataclass
class Health:
    streak: int = 0  # failures in a row
    parkings: int = 0  # parkings in a row (the back-off doubles with each)
    parked_until: int | None = None
    probing_since: int | None = None  # the one message after the back-off is out
    reason: str | None = None
    last_failure_at: int | None = None

    @property
    def parked(self) -> bool:
        return self.parked_until is not None


class Parking:
    """Consecutive failures per channel, parking with a growing back-off, and the probe after it."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.cfg = rt.config
        self._lock = threading.Lock()
        self.health: dict[str, Health] = {}

    # -- state --------------------------------------------------------------------------------------------
    def _get(self, cid: str) -> Health:
        h = self.health.get(cid)
        if h is None:
            h = self.health[cid] = Health()
        return h

    def backoff_ms(self, parkings: int) -> int:
        secs = self.cfg.park_backoff_seconds * (2 ** max(0, parkings - 1))
        return int(min(secs, self.cfg.park_backoff_max_seconds) * 1000)

    def park(self, cid: str, reason: str, now: int | None = None) -> None:
        now = now or now_ms()
        with self._lock:
            h = self._get(cid)
            h.parkings += 1
            h.parked_until = now + self.backoff_ms(h.parkings)
            h.probing_since = None
            h.reason = reason
            h.streak = 0
        log.warning("channel %s parked until %s (%s; parking %d in a row)", cid, iso(h.parked_until), reason,
                    h.parkings)
        self._kick()  # its queued messages go elsewhere (the router releases them)

    def _kick(self) -> None:
        tasks = getattr(self.rt, "tasks", None)
        if self.rt.started and tasks is not None:
            try:
                tasks.route_pending()
            except Exception:  # the housekeeper routes within a second anyway
                log.exception("could not enqueue routing")

    def failure(self, cid: str, why: str) -> None:
        now = now_ms()
        park = False
        with self._lock:
            h = self._get(cid)
            h.last_failure_at = now
            if h.parked and h.probing_since is not None:
                park = True  # the probe failed
            elif not h.parked:
                h.streak += 1
                park = bool(self.cfg.park_after_failures) and h.streak >= self.cfg.park_after_failures
        if park:
            self.park(cid, why, now)

    def success(self, cid: str) -> None:
        with self._lock:
            h = self.health.get(cid)
            if h is None or (not h.streak and not h.parked):
                return
            was_parked = h.parked
            self.health[cid] = Health()
        if was_parked:
            log.info("channel %s sent again: unparked", cid)
            self._kick()

    def parked(self, cid: str) -> Health | None:
        h = self.health.get(cid)
        return h if h is not None and h.parked else None

    def probe_due(self, h: Health, now: int) -> bool:
        return h.parked_until is not None and h.parked_until <= now

    # -- hooks --------------------------------------------------------------------------------------------
    def usable(self, channel: Channel) -> bool:
        """Channel filter: parked channels take nothing new, except the one probe message."""
        h = self.health.get(channel.id)
        if h is None or not h.parked:
            return True
        return self.probe_due(h, now_ms()) and h.probing_since is None

    def sweep(self) -> None:
        """Housekeeping: a probe that never reported counts as failed (parked longer); a
        channel whose back-off just ended gets its probe routed."""
        now = now_ms()
        for cid, h in list(self.health.items()):
            if not h.parked:
                continue
            if h.probing_since is not None and now - h.probing_since > self.backoff_ms(h.parkings):
                self.failure(cid, "the message sent to try the channel again got no answer")

    def claim_policy(self, channel_id: str, limit: int) -> tuple[int, Any]:
        h = self.health.get(channel_id)
        if h is None or not h.parked:
            return limit, None
        if self.probe_due(h, now_ms()) and h.probing_since is None:
            return min(limit, 1), None
        return 0, None

    def on_events(self, evs: list[Event]) -> None:
        """Message status events: successes reset a channel, faults count towards parking."""
        watching = any(h.streak or h.parked for h in list(self.health.values()))
        wanted: dict[str, tuple[str, Any]] = {}
        for ev in evs:
            if ev.type != "message.status" or not ev.message_id:
                continue
            p = ev.payload or {}
            status = p.get("status")
            if status in ("sent", "delivered") and watching:
                wanted[ev.message_id] = ("ok", p)
            elif status == "dispatched" and any(h.parked for h in list(self.health.values())):
                wanted[ev.message_id] = ("dispatched", p)
            elif status == "failed" and channel_fault(p.get("error_code"), p.get("error_message")):
                wanted[ev.message_id] = ("fault", p)
            elif status == "queued" and p.get("error_code"):
                wanted[ev.message_id] = ("failover", p)
        if not wanted:
            return
        ids = list(wanted)
        channel_of = dict(Message.select(Message.id, Message.channel_id).where(Message.id.in_(ids)).tuples())
        for mid, (what, p) in wanted.items():
            cid = channel_of.get(mid)
            if what == "failover":
                row = (MessageEvent.select(MessageEvent.detail).where(MessageEvent.message == mid)
                       .order_by(MessageEvent.seq.desc()).first())
                cid = ((row.detail or {}).get("failover_from") if row is not None else None)
            if not isinstance(cid, str):
                continue
            if what == "ok":
                self.success(cid)
            elif what == "dispatched":
                with self._lock:
                    h = self.health.get(cid)
                    if h is not None and h.parked and h.probing_since is None and self.probe_due(h, now_ms()):
                        h.probing_since = now_ms()
                        log.info("channel %s: trying again with message %s", cid, mid)
            else:
                self.failure(cid, f"{p.get('error_code')}: {(p.get('error_message') or '')[:200]}")

    def view(self, cid: str) -> dict[str, Any]:
        h = self.health.get(cid) or Health()
        return {"parked": h.parked, "parked_until": iso(h.parked_until) if h.parked else None,
                "parked_reason": h.reason if h.parked else None, "consecutive_failures": h.streak,
                "parkings_in_a_row": h.parkings}

    def ready(self, account: Any) -> tuple[str, bool, str]:
        live = [ch for ch in list(self.rt.channels.values()) if ch.enabled() and ch.online()]
        parked = [(ch, self.health[ch.id]) for ch in live if ch.id in self.health and self.health[ch.id].parked]
        if not parked:
            return "channels_not_parked", True, "no channel is parked"
        names = ", ".join(f"{ch.name} until {iso(h.parked_until)} ({h.reason})" for ch, h in parked)
        if len(parked) == len(live):
            return "channels_not_parked", False, "every online channel is parked after failing: " + names
        return "channels_not_parked", True, "parked after failing: " + names
