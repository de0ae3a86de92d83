"""USB modems as channels: one :class:`ModemChannel` per modem, wired to the message table.

Where modems come from: the ``[[modem]]`` tables of ``config.toml`` (driven by the process that
reads that file, and only by it) and modems added with ``POST /api/v1/modems`` (a
:class:`~relaybox.channels.modem.models.Modem` row; a config modem of the same name wins).
Each becomes channel ``modem_<name>`` in ``runtime.channels``.

How a message goes out. The router assigns queued messages to the channel and calls
:meth:`ModemChannel.notify`, which wakes the channel's dispatcher thread. The dispatcher claims
**one** message at a time (``claim_for_channel(limit=1)``), and only while the driver is ready,
so a parked, hung or unplugged modem claims nothing: its queued messages stay ``queued`` and the
router hands them to another channel (it releases what waits on an offline channel). The claimed
message's text (:func:`relaybox.messages.sending_body`) goes to ``ModemDriver.send``; the next
claim waits until that send has ended. The driver's callbacks move the message on:

* ``on_sent`` -> ``sent``; the parts' TP-MRs are kept in the timeline row's ``detail.refs``
  so that after a restart :meth:`ModemDriver.track` can match their reports again.
* ``on_send_failed``: outcome unknown (timeout after Ctrl-Z) -> ``failed`` with
  ``MODEM_UNCONFIRMED``, never resent; nothing went out and the failure was not the message's
  fault -> :func:`~relaybox.messages.requeue_for_failover` (the router picks another channel,
  up to ``max_attempts`` hand-offs); a permanent refusal -> ``failed`` with the driver's code
  and the ``+CMS ERROR`` in ``detail.cms``.
* ``on_status``: delivered -> ``delivered``; failed -> ``undelivered``
  (``CARRIER_UNDELIVERED``); both keep the raw report in ``detail`` (``tp_status``,
  ``report``), which the spam diagnosis reads. A report may also prove a ``MODEM_UNCONFIRMED``
  message (``relaybox.messages.PROVABLE_FAILURES``).
* ``on_inbound`` -> :func:`relaybox.messages.store_inbound` (once per driver key), then
  ``commit()`` lets the driver delete the SIM copy.
* ``on_health`` -> what ``/modems``, ``/devices`` and the dashboard show; ``device.online`` /
  ``device.offline`` events when the modem comes and goes; routing is kicked on each change.

After a crash: a message ``dispatched`` on a modem with no ``sent`` may have gone out (the driver
may have typed Ctrl-Z), so it ends ``failed`` ``MODEM_UNCONFIRMED`` and is watched for a report
that proves it; ``sent`` messages are watched for their reports again.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future, wait
from typing import TYPE_CHECKING, Any

import peewee as pw

from relaybox import events, messages
from relaybox.channels.base import Channel
from relaybox.channels.modem.models import Modem, ModemInbound, unseal_pin
from relaybox.config import ModemConfig as ModemSettings
from relaybox.db import write_tx
from relaybox.models import Message, MessageEvent
from relaybox.timeutil import iso, now_ms

if TYPE_CHECKING:  # pragma: no cover
    from relaybox.channels.modem.driver import InboundSms, SendResult
    from relaybox.channels.modem.driver import ModemConfig as DriverConfig
    from relaybox.runtime import Runtime

# The driver (with pyserial, the AT layer and the PDU tracker) is imported when a modem is
# configured (driver_config) and not before: a box without modems does not keep it resident.

log = logging.getLogger("relaybox.modem.channel")

TIMEOUT_CODE = "MODEM_UNCONFIRMED"
UNDELIVERED_CODE = "CARRIER_UNDELIVERED"
REPORT_WINDOW_MS = 3 * 86_400_000  # the driver's report_window: reports later than this are not matched
INBOUND_KEEP_MS = 7 * 86_400_000
PRUNE_EVERY_MS = 600_000
STOP_GRACE_S = 3.0

#: TS 23.040 §9.2.3.15 TP-Status values a failed report carries, in words.
TP_STATUS_TEXT = {
    0x40: "remote procedure error", 0x41: "incompatible destination",
    0x42: "connection rejected by the recipient", 0x43: "not obtainable",
    0x44: "quality of service not available", 0x45: "no interworking available",
    0x46: "validity period expired", 0x47: "deleted by the sender",
    0x48: "deleted by the SMSC administration", 0x49: "message does not exist",
    0x60: "congestion", 0x61: "recipient busy", 0x62: "no response from the recipient",
    0x63: "service rejected", 0x64: "quality of service not available", 0x65: "error in the recipient",
}


def channel_id(name: str) -> str:
    return f"modem_{name}"


def _e164(number: str | None) -> str | None:
    """E.164 form when the value is a valid number, else the value as given (short codes,
    alphanumeric senders such as "Jazz")."""
    if not number:
        return None
    from relaybox.api.common import normalize_e164

    try:
        return normalize_e164(number.strip())
    except ValueError:
        return number.strip()[:messages.INBOUND_NUMBER_MAX]


def driver_config(settings: ModemSettings) -> DriverConfig:
    """Map a ``[[modem]]`` table (relaybox.config) onto the driver's own config class."""
    from relaybox.channels.modem.driver import ModemConfig as DriverConfig
    from relaybox.channels.modem.driver import ModemTimeouts

    timeouts = ModemTimeouts(**{k: v for k, v in settings.timeouts.model_dump().items() if v is not None})
    lo, hi = settings.reconnect_backoff
    return DriverConfig(
        name=settings.name, port=settings.port, baudrate=settings.baud, pin=settings.pin,
        smsc=settings.smsc, rtscts=settings.rtscts, request_status_report=settings.status_reports,
        timeouts=timeouts, health_interval=settings.health_interval,
        sweep_interval=settings.sweep_interval, send_deadline=settings.send_deadline,
        send_retries=settings.send_retries, retry_backoff=settings.retry_backoff,
        reconnect_backoff=(lo, max(lo, hi)), reset_settle=settings.reset_settle,
        report_window=REPORT_WINDOW_MS / 1000,
    )


class ModemChannel(Channel):
    """One modem: its driver, its dispatcher thread, and the callbacks into the lifecycle."""

    kind = "modem"

    def __init__(self, area: ModemArea, settings: ModemSettings, *, source: str,
                 account_id: str | None = None, created_at: int | None = None) -> None:
        self.area = area
        self.runtime = area.runtime
        self.id = channel_id(settings.name)
        self.source = source  # "config" | "api"
        self.account_id = account_id
        self.created_at = created_at
        self.removed = False
        self.settings = settings
        self.name = settings.label or settings.name
        self.number = _e164(settings.number)
        from relaybox.channels.modem.driver import ModemDriver

        self.driver = ModemDriver(
            driver_config(settings), on_sent=self._on_sent, on_send_failed=self._on_send_failed,
            on_status=self._on_status, on_inbound=self._on_inbound, on_health=self._on_health)
        self.last_ready_ms: int | None = None
        self._was_online = False
        self._presence: str | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._inflight: Future[SendResult] | None = None
        self._handoffs: deque[float] = deque()  # time.time() of recent claims (rate caps)
        self._handoffs_lock = threading.Lock()  # the router reads them from its own thread

    # -- Channel interface ---------------------------------------------------------------------
    def numbers(self) -> list[str]:
        return [self.number] if self.number else []

    def enabled(self) -> bool:
        return self.settings.enabled and not self.removed

    def online(self) -> bool:
        return not self.removed and self.driver.online

    def notify(self) -> None:
        self._wake.set()

    def cancel(self, message_id: str) -> bool:
        """Certain only while the send still waits in the driver's queue."""
        return self.driver.cancel(message_id)

    def status(self) -> dict[str, Any]:
        return view(self, counts=False)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self.recover()
        if self.settings.per_minute or self.settings.per_hour or self.settings.per_day:
            self._load_handoffs()
        self.driver.start()
        self._thread = threading.Thread(target=self._dispatch_loop, name=f"modem-{self.settings.name}-dispatch",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop claiming, let a send in progress finish (a few seconds at most), then stop the
        driver: sends still waiting in it fail ``MODEM_OFFLINE`` and are queued again."""
        self._stop.set()
        self._wake.set()
        inflight = self._inflight
        if inflight is not None:
            wait([inflight], timeout=STOP_GRACE_S)
        if self._thread is not None:
            self._thread.join(STOP_GRACE_S)
            self._thread = None
        self.driver.stop()

    def apply(self, settings: ModemSettings) -> None:
        """New label, number, enabled flag or caps; nothing the driver uses."""
        had_caps = bool(self.settings.per_minute or self.settings.per_hour or self.settings.per_day)
        self.settings = settings
        self.name = settings.label or settings.name
        self.number = _e164(settings.number)
        if not had_caps and (settings.per_minute or settings.per_hour or settings.per_day):
            self._load_handoffs()
        self._wake.set()

    # -- rate caps (per_minute / per_hour / per_day of the [[modem]] table) ----------------------
    def _load_handoffs(self) -> None:
        since = now_ms() - 86_400_000
        rows = (MessageEvent.select(MessageEvent.at)
                .where((MessageEvent.status == "dispatched") & (MessageEvent.at >= since)
                       & (MessageEvent.channel_id == self.id)).order_by(MessageEvent.at).tuples())
        with self._handoffs_lock:
            self._handoffs = deque(at / 1000 for (at,) in rows)

    def under_caps(self) -> bool:
        s = self.settings
        if not (s.per_minute or s.per_hour or s.per_day):
            return True
        now = time.time()
        with self._handoffs_lock:
            while self._handoffs and self._handoffs[0] < now - 86400:
                self._handoffs.popleft()
            times = list(self._handoffs)
        for cap, window in ((s.per_minute, 60), (s.per_hour, 3600), (s.per_day, 86400)):
            if cap and sum(1 for t in times if t >= now - window) >= cap:
                return False
        return True

    # -- the dispatcher --------------------------------------------------------------------------
    def _can_claim(self) -> bool:
        return (not self._stop.is_set() and self.enabled() and self.driver.online
                and self.under_caps())

    def _dispatch_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(1.0)  # notify() wakes it; the timeout re-checks caps and readiness
            self._wake.clear()
            try:
                while self._can_claim() and self._dispatch_one():
                    pass
            except Exception:  # e.g. database busy: the next wake-up tries again
                log.exception("%s: dispatch failed", self.id)
                self._stop.wait(1.0)

    def _dispatch_one(self) -> bool:
        """Claim one message, hand it to the driver and wait until the send has ended."""
        batch = messages.claim_for_channel(self.id, limit=1)
        if not batch:
            return False
        m = batch[0]
        self.runtime.router.claimed(self.id, 1)
        with self._handoffs_lock:
            self._handoffs.append(time.time())
        try:
            text = messages.sending_body(m)
        except messages.NotSendable as exc:
            messages.transition(m.id, exc.status, error_code=exc.error_code, error_message=str(exc),
                                expect_channel=self.id)
            return True
        validity = None
        if m.expires_at:
            validity = max(300.0, (m.expires_at - now_ms()) / 1000)
        future = self.driver.send(m.id, m.to_number, text, validity, deadline=self.settings.send_deadline)
        self._inflight = future
        try:
            while not self._stop.is_set() and not wait([future], timeout=0.5).done:
                pass
        finally:
            self._inflight = None
        return True

    # -- driver callbacks (on the modem thread) ---------------------------------------------------
    def _on_sent(self, msg_key: str, refs: list[int]) -> None:
        if not self.settings.status_reports:
            with write_tx():
                Message.update(report_expected=False).where(Message.id == msg_key).execute()
        messages.transition(msg_key, "sent", expect_channel=self.id,
                            detail={"modem": self.settings.name, "refs": refs, "parts": len(refs)})

    def _on_send_failed(self, msg_key: str, result: SendResult) -> None:
        detail: dict[str, Any] = {"modem": self.settings.name, "refs": result.refs, "parts": result.parts,
                                  "error_class": result.error_class, "detail": result.detail}
        if result.cms is not None:
            detail["cms"] = result.cms
        if result.outcome == "unknown":
            # Only a message whose unknown part was its last can still be proven whole.
            if result.parts and len(result.refs) + 1 == result.parts:
                detail["track"] = list(result.refs) + [-1]
            messages.transition(
                msg_key, "failed", error_code=TIMEOUT_CODE, expect_channel=self.id, detail=detail,
                error_message=f"modem {self.settings.name}: no answer after the message was handed to "
                              f"the network ({result.detail}); it may have been sent, so it is not sent "
                              "again. A delivery report would still prove it")
            return
        code = result.error_code or "MODEM_ERROR"
        text = f"modem {self.settings.name}: {result.detail or code}"
        if result.resendable:
            status = messages.requeue_for_failover(msg_key, self.id, code, text,
                                                   max_attempts=self.runtime.config.max_attempts)
            log.info("message %s: %s on %s -> %s", msg_key, code, self.id, status)
            if status == "queued":
                self.area.kick()
            return
        messages.transition(msg_key, "failed", error_code=code, error_message=text,
                            expect_channel=self.id, detail=detail)

    def _on_status(self, msg_key: str, status: str, raw: dict[str, Any]) -> None:
        tp = raw.get("tp_status")
        detail: dict[str, Any] = {"modem": self.settings.name, "tp_status": tp,
                                  "tp_status_hex": raw.get("tp_status_hex"),
                                  "report": {k: v for k, v in raw.items() if k != "all_parts"}}
        if (raw.get("parts") or 1) > 1:  # every part's report (the spam diagnosis reads them all)
            detail["all_parts"] = raw.get("all_parts")
        if status == "delivered":
            messages.transition(msg_key, "delivered", expect_channel=self.id, detail=detail)
        elif status == "failed":
            what = TP_STATUS_TEXT.get(tp, "permanent error") if isinstance(tp, int) else "permanent error"
            messages.transition(
                msg_key, "undelivered", error_code=UNDELIVERED_CODE, expect_channel=self.id, detail=detail,
                error_message=f"the network could not deliver it: {what} (TP-Status {raw.get('tp_status_hex')})")
        else:  # pending / unknown: informative, the message stays sent
            log.info("message %s: report %s (TP-Status %s)", msg_key, status, raw.get("tp_status_hex"))

    def _on_inbound(self, sms: InboundSms, commit: Any) -> None:
        account_id = self.account_id or self.area.owner_id()
        if account_id is None:
            raise RuntimeError("no owner account yet to store inbound SMS under")
        received = int(sms.received_at.timestamp() * 1000)
        ev = None
        with write_tx():
            known = ModemInbound.get_or_none((ModemInbound.channel_id == self.id) & (ModemInbound.key == sms.key))
            if known is None:
                detail = {"modem": self.settings.name, "parts": sms.parts, "complete": sms.complete,
                          "smsc": sms.smsc}
                m, ev = messages.store_inbound(
                    account_id=account_id, channel_id=self.id, sender=_e164(sms.sender) or "unknown",
                    recipient=self.number or "", body=sms.text, received_at=received, detail=detail)
                ModemInbound.insert(channel_id=self.id, key=sms.key, message_id=m.id,
                                    created_at=now_ms()).execute()
        if ev is not None:
            events.publish([ev])
        commit()

    def _on_health(self, status: dict[str, Any]) -> None:
        from relaybox.channels.modem.driver import (
            DISCONNECTED,
            PARKED,
            READY,
            RECOVERING,
        )

        state = status.get("state")
        online = state == READY
        if online:
            self.last_ready_ms = now_ms()
        if online != self._was_online:
            self._was_online = online
            self._wake.set()
            self.area.kick()  # queued messages come here, or leave for another channel
        want = "online" if online else "offline" if state in (PARKED, DISCONNECTED, RECOVERING) else None
        if want is None or want == self._presence or self._stop.is_set():
            return
        first = self._presence is None
        self._presence = want
        if first and want == "online":
            return  # a normal start is not news
        try:
            self._record_presence(want, status)
        except pw.PeeweeException:
            log.warning("%s: could not record device.%s", self.id, want)

    def _record_presence(self, state: str, status: dict[str, Any]) -> None:
        account_id = self.account_id or self.area.owner_id()
        at = now_ms()
        payload = {
            "event": f"device.{state}",
            "device_id": self.id,
            "device_name": self.name,
            "kind": "modem",
            "online": state == "online",
            "state": status.get("state"),
            "reason": status.get("reason"),
            "last_seen": iso(self.last_ready_ms),
            "timestamp": iso(at, millis=False),
            "unix_timestamp": at,
        }
        with write_tx():
            ev = events.record(account_id, f"device.{state}", payload)
        events.publish([ev])

    # -- after a restart ---------------------------------------------------------------------------
    def recover(self) -> None:
        """What this modem had when relaybox stopped (run before the driver starts)."""
        since = now_ms() - REPORT_WINDOW_MS
        unknown = list(Message.select(Message.id, Message.segments)
                       .where((Message.channel_id == self.id) & (Message.status == "dispatched")))
        for m in unknown:
            messages.transition(
                m.id, "failed", error_code=TIMEOUT_CODE, expect_channel=self.id,
                detail={"modem": self.settings.name, "recovered": True, "track": [-1] * max(1, m.segments)},
                error_message=f"relaybox stopped while modem {self.settings.name} had this message; it may "
                              "have been sent, so it is not sent again. A delivery report would still prove it")
        if unknown:
            log.warning("%s: %d message(s) interrupted by a restart ended %s", self.id, len(unknown), TIMEOUT_CODE)
        watched = 0
        sent = list(Message.select(Message.id, Message.to_number, Message.sent_at)
                    .where((Message.channel_id == self.id) & (Message.status == "sent")
                           & (Message.report_expected == True) & (Message.sent_at >= since)))
        refs = self._timeline_details([m.id for m in sent], "sent")
        for m in sent:
            parts = (refs.get(m.id) or {}).get("refs")
            if isinstance(parts, list) and parts:
                self.driver.track(m.id, m.to_number, [int(r) for r in parts], m.sent_at / 1000)
                watched += 1
        failed = list(Message.select(Message.id, Message.to_number, Message.dispatched_at, Message.updated_at)
                      .where((Message.channel_id == self.id) & (Message.status == "failed")
                             & (Message.error_code == TIMEOUT_CODE) & (Message.updated_at >= since)))
        details = self._timeline_details([m.id for m in failed], "failed")
        for m in failed:
            track = (details.get(m.id) or {}).get("track")
            if isinstance(track, list) and track:
                self.driver.track(m.id, m.to_number, [int(r) for r in track],
                                  (m.dispatched_at or m.updated_at) / 1000)
                watched += 1
        if watched:
            log.info("%s: watching for the delivery reports of %d message(s) sent before the restart",
                     self.id, watched)

    @staticmethod
    def _timeline_details(ids: list[str], status: str) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for i in range(0, len(ids), 500):
            rows = (MessageEvent.select(MessageEvent.message, MessageEvent.detail)
                    .where(MessageEvent.message.in_(ids[i:i + 500]) & (MessageEvent.status == status))
                    .order_by(MessageEvent.seq).tuples())
            for mid, detail in rows:
                if isinstance(detail, dict):
                    out[mid] = detail  # the latest row of that status wins
        return out


class ModemArea:
    """Every modem of this process: loading, adding, changing, removing; routing kicks."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.channels: dict[str, ModemChannel] = {}
        self.config_names = {m.name for m in runtime.config.modem}
        self._lock = threading.RLock()
        self._owner_id: str | None = None
        self._last_prune = 0

    def owner_id(self) -> str | None:
        if self._owner_id is None:
            from relaybox.accounts import owner_account

            owner = owner_account()
            self._owner_id = owner.id if owner is not None else None
        return self._owner_id

    def load(self) -> None:
        for settings in self.runtime.config.modem:
            self.add(ModemChannel(self, settings, source="config", account_id=self.owner_id()))
        for row in Modem.select().order_by(Modem.created_at):
            if row.name in self.config_names:
                log.warning("modem %s is in config.toml and was also added through the API: "
                            "the config wins", row.name)
                continue
            settings = settings_of(row)
            if settings is not None:
                self.add(ModemChannel(self, settings, source="api", account_id=row.account_id,
                                      created_at=row.created_at))
        if self.channels:
            log.info("%d modem(s): %s", len(self.channels), ", ".join(sorted(self.channels)))

    def add(self, ch: ModemChannel) -> ModemChannel:
        with self._lock:
            self.channels[ch.id] = ch
            self.runtime.timeout_codes[ch.id] = TIMEOUT_CODE
            self.runtime.add_channel(ch)
        self.kick()
        return ch

    def remove(self, cid: str) -> None:
        with self._lock:
            ch = self.channels.pop(cid, None)
            if ch is not None:
                ch.removed = True
            self.runtime.remove_channel(cid)  # stops it when the runtime runs
        self.kick()

    def replace(self, old: ModemChannel, settings: ModemSettings) -> ModemChannel:
        """New port/PIN/SMSC/tuning: a fresh driver (a PIN rejected before may be tried again
        only because it changed). Label, number, enabled and caps change in place."""
        new = ModemChannel(self, settings, source=old.source, account_id=old.account_id,
                           created_at=old.created_at)
        self.remove(old.id)
        return self.add(new)

    def kick(self) -> None:
        """Route what waits (a modem came or went); the housekeeper does it within a second anyway."""
        tasks = getattr(self.runtime, "tasks", None)
        if self.runtime.started and tasks is not None:
            try:
                tasks.route_pending()
            except Exception:  # the housekeeper routes within a second anyway
                log.exception("could not enqueue routing")

    def usable(self, channel: Channel) -> bool:
        """A channel filter for the router: a modem over its rate caps takes nothing new."""
        return not isinstance(channel, ModemChannel) or channel.under_caps()

    def sweep(self) -> None:
        now = now_ms()
        if now - self._last_prune > PRUNE_EVERY_MS:
            self._last_prune = now
            ModemInbound.delete().where(ModemInbound.created_at < now - INBOUND_KEEP_MS).execute()


def settings_of(row: Modem) -> ModemSettings | None:
    """The settings of an API-added modem (its PIN unsealed)."""
    from pydantic import ValidationError

    try:
        return ModemSettings(**{**(row.spec or {}), "name": row.name, "pin": unseal_pin(row.name, row.pin_sealed)})
    except ValidationError as exc:
        log.error("modem %s: stored settings are invalid, skipped: %s", row.name, exc)
        return None


# -- views -----------------------------------------------------------------------------------------
def _day_start_ms() -> int:
    now = now_ms()
    return now - now % 86_400_000


def view(ch: ModemChannel, counts: bool = True) -> dict[str, Any]:
    """A modem as ``/api/v1/modems`` and ``/api/v1/devices`` show it (never its PIN)."""
    s = ch.settings
    h = ch.driver.status()
    out: dict[str, Any] = {
        "id": ch.id,
        "kind": "modem",
        "name": ch.name,
        "modem_name": s.name,
        "label": s.label,
        "source": ch.source,
        "port": s.port,
        "baud": s.baud,
        "number": ch.number,
        "numbers": ch.numbers(),
        "enabled": ch.enabled(),
        "online": ch.online(),
        "state": h["state"],
        "reason": h["reason"],
        "signal": h["signal"],
        "registration": h["registration"],
        "registered": h["registered"],
        "operator": h["operator"],
        "sim": h["sim"],
        "manufacturer": h["manufacturer"],
        "model": h["model"],
        "imei": h["imei"],
        "imsi": h["imsi"],
        "smsc": h["smsc"],
        "storage": h["storage"],
        "report_mode": h["report_mode"],
        "resets": h["resets"],
        "last_error": h["last_error"],
        "pin_set": bool(s.pin),
        "status_reports": s.status_reports,
        "caps": {"per_minute": s.per_minute, "per_hour": s.per_hour, "per_day": s.per_day},
        "last_seen": iso(ch.last_ready_ms),
        "created_at": iso(ch.created_at),
        "updated_at": h["updated_at"],
    }
    if counts:
        out["queue_depth"] = Message.select().where(
            (Message.channel_id == ch.id) & (Message.status == "queued")).count()
        out["in_flight"] = Message.select().where(
            (Message.channel_id == ch.id) & (Message.status == "dispatched")).count()
        out["sent_today"] = Message.select().where(
            (Message.channel_id == ch.id) & (Message.direction == "outbound")
            & (Message.sent_at >= _day_start_ms())).count()
    return out


def modem_channels(runtime: Runtime) -> list[ModemChannel]:
    return sorted((ch for ch in list(runtime.channels.values()) if isinstance(ch, ModemChannel)),
                  key=lambda ch: ch.id)


def device_views(runtime: Runtime, account: Any = None) -> list[dict[str, Any]]:
    """The modems ``account`` may see (all for the owner or ``None``), as ``/devices`` lists them
    next to the phones."""
    return [view(ch) for ch in modem_channels(runtime)
            if account is None or account.is_owner or ch.account_id == account.id]


def init_app(app: Any) -> None:
    """Create the modem tables, load config and API modems as channels, register the API."""
    from relaybox.channels.modem import manage
    from relaybox.channels.modem.models import MODELS  # noqa: F401 - declares the tables
    from relaybox.db import create_tables

    runtime = app.extensions["relaybox"]
    create_tables()
    area = ModemArea(runtime)
    app.extensions["relaybox_modem"] = area
    runtime.channel_filters.append(area.usable)
    runtime.sweepers.append(area.sweep)
    area.load()
    app.register_api(manage.bp)
