"""Paired phones as channels, and the Android area that owns them (presence, pairing, unpairing).

One :class:`AndroidChannel` per paired phone sits in ``runtime.channels`` under its ``dev_<ULID>``
id. A phone is *online* while its SSE stream is open or it was seen (any authenticated request)
within ``device_offline_after`` seconds. Going offline and coming back are recorded as
``device.offline`` / ``device.online`` events; messages the router assigned to a phone that goes
offline before pulling them are released by the router's ``route_pending`` and routed again.
"""
from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import peewee as pw

from relaybox import events
from relaybox.channels.android.models import Device, DeviceMessage, InboundEvent
from relaybox.channels.android.pairing import prune_pairings
from relaybox.channels.android.protocol import SimCardIn
from relaybox.channels.android.sse import SSEHub
from relaybox.channels.base import Channel
from relaybox.db import write_tx
from relaybox.models import Message
from relaybox.timeutil import iso, now_ms

if TYPE_CHECKING:  # pragma: no cover
    from relaybox.runtime import Runtime

log = logging.getLogger("relaybox.android")

TIMEOUT_CODE = "DEVICE_TIMEOUT"
SEEN_PERSIST_MS = 15_000
NUDGE_EVERY_MS = 5_000
BUS_CHANNEL = "android"
PRUNE_EVERY_MS = 600_000
INBOUND_KEEP_MS = 7 * 86_400_000


class AndroidChannel(Channel):
    kind = "android"

    def __init__(self, area: AndroidArea, device: Device) -> None:
        self.area = area
        self.id = device.id
        self.device = device
        self.last_seen_ms = device.last_seen or 0
        self._persisted_seen = self.last_seen_ms
        self.removed = False
        self.refresh(device)

    def refresh(self, device: Device) -> None:
        self.device = device
        self.name = device.label or device.name
        self._numbers = [s["number"] for s in device.sim_cards or [] if s.get("number")]

    # -- Channel interface -----------------------------------------------------------------------
    def numbers(self) -> list[str]:
        return list(self._numbers)

    def enabled(self) -> bool:
        return bool(self.device.enabled) and not self.removed

    def sse_open(self) -> bool:
        """An event stream is open in this process."""
        return self.area.hub.is_open(self.id)

    def online(self) -> bool:
        if self.removed:
            return False
        if self.sse_open():
            return True
        return now_ms() - self.last_seen_ms < self.area.offline_after_ms

    def notify(self) -> None:
        """The router assigned messages: tell the phone at once (coalesced)."""
        self.area.signal(self.id, "MessageEnqueued")

    def cancel(self, message_id: str) -> bool:
        """Ask the phone to drop a message it pulled. Never certain: the phone may have sent it.

        The phone answers ``Cancelled`` (→ ``cancelled``) only if it had not sent it yet;
        until then ``GET /message`` serves it with ``state: Cancelling`` (§6).
        """
        m = Message.get_or_none(Message.id == message_id)
        if m is None or m.channel_id != self.id or m.status != "dispatched":
            return False
        now = now_ms()
        with write_tx():
            n = DeviceMessage.update(cancel_at=now).where(DeviceMessage.message_id == message_id).execute()
            if not n:
                DeviceMessage.insert(message_id=message_id, device_id=self.id, cancel_at=now).execute()
        self.area.signal(self.id, "MessageCancelled", {"messageId": message_id})
        log.info("message %s: cancel requested from device %s", message_id, self.id)
        return False

    def status(self) -> dict[str, Any]:
        return view(self, counts=False)

    def stop(self) -> None:
        self.area.hub.close_device(self.id, "server stopping")
        self.persist_seen(force=True)

    # -- presence ----------------------------------------------------------------------------------
    def seen(self) -> None:
        """Any authenticated request from the phone."""
        self.last_seen_ms = now_ms()
        if self.device.presence != "online":
            self.area.check_presence(self)

    def persist_seen(self, force: bool = False) -> None:
        if self.removed or self.last_seen_ms <= self._persisted_seen:
            return
        # Often enough that other processes (scale-out) see the phone as online too.
        every = min(SEEN_PERSIST_MS, self.area.offline_after_ms // 3)
        if not force and self.last_seen_ms - self._persisted_seen < every:
            return
        with write_tx():  # through the writers' lock: a bare write would meet SQLite's sleeping busy handler
            Device.update(last_seen=self.last_seen_ms).where(Device.id == self.id).execute()
        self._persisted_seen = self.last_seen_ms

    def sim_for(self, from_number: str | None) -> int | None:
        """The SIM (1-based) that owns ``from_number``, for ``simNumber`` in the message."""
        if not from_number:
            return None
        for s in self.device.sim_cards or []:
            if s.get("number") == from_number and s.get("simNumber"):
                return int(s["simNumber"])
        return None


class AndroidArea:
    """Everything about phones that outlives a request: channels, the hub, presence."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.config = runtime.config
        self.offline_after_ms = runtime.config.device_offline_after * 1000
        self.hub = SSEHub(runtime, on_change=self._stream_changed)
        self.channels: dict[str, AndroidChannel] = {}
        self._presence_lock = threading.Lock()
        self._last_prune = 0
        self._last_nudge = 0
        # Events for a phone go through the bus: with several processes (Redis) the one that
        # holds the phone's stream hears what another accepted; alone it is a direct call.
        from relaybox.bus import get_bus

        self.bus = get_bus(runtime)
        self.bus.subscribe(BUS_CHANNEL, self._on_bus)

    # -- events to phones ---------------------------------------------------------------------------
    def signal(self, device_id: str, event: str, data: dict[str, str] | None = None) -> None:
        """Send an SSE event to the phone, wherever its stream is open; ``close`` ends it."""
        self.bus.publish(BUS_CHANNEL, {"device_id": device_id, "event": event, "data": data})

    def _on_bus(self, msg: Any) -> None:
        if not isinstance(msg, dict) or not isinstance(msg.get("device_id"), str):
            return
        if msg.get("event") == "close":
            self.hub.close_device(msg["device_id"], str((msg.get("data") or {}).get("reason", "unpaired")))
        elif isinstance(msg.get("event"), str):
            self.hub.publish(msg["device_id"], msg["event"], msg.get("data"))

    # -- loading, pairing, unpairing ----------------------------------------------------------------
    def load(self) -> None:
        for device in Device.select():
            self.add(device)
        if self.channels:
            log.info("loaded %d paired phone(s)", len(self.channels))

    def add(self, device: Device) -> AndroidChannel:
        ch = self.channels.get(device.id)
        if ch is not None:
            ch.refresh(device)
            return ch
        ch = AndroidChannel(self, device)
        self.channels[device.id] = ch
        self.runtime.timeout_codes[device.id] = TIMEOUT_CODE
        self.runtime.add_channel(ch)
        return ch

    def channel(self, device: Device) -> AndroidChannel:
        """The channel of an authenticated device (added if another process paired it)."""
        ch = self.channels.get(device.id)
        if ch is None or ch.removed:
            return self.add(device)
        if ch.device.updated_at != device.updated_at:
            ch.refresh(device)
        return ch

    def remove(self, device_id: str, reason: str = "unpaired") -> None:
        """Unpair: the token stops working at once and any open stream ends."""
        with write_tx():
            Device.delete().where(Device.id == device_id).execute()
            DeviceMessage.delete().where(DeviceMessage.device_id == device_id).execute()
        self._forget(device_id, reason)
        self.signal(device_id, "close", {"reason": reason})
        log.info("device %s %s", device_id, reason)
        self._kick()

    def _forget(self, device_id: str, reason: str) -> None:
        ch = self.channels.pop(device_id, None)
        if ch is not None:
            ch.removed = True
        self.hub.close_device(device_id, reason)
        self.runtime.remove_channel(device_id)

    # -- presence ------------------------------------------------------------------------------------
    def _stream_changed(self, device_id: str) -> None:
        ch = self.channels.get(device_id)
        if ch is not None:
            ch.last_seen_ms = max(ch.last_seen_ms, now_ms())
            self.check_presence(ch)

    def check_presence(self, ch: AndroidChannel) -> None:
        """Record ``device.online`` / ``device.offline`` when the truth differs from the row."""
        if ch.removed:
            return
        online = ch.online()
        want = "online" if online else "offline"
        with self._presence_lock:
            if ch.device.presence == want:
                return
            now = now_ms()
            with write_tx():
                n = (Device.update(presence=want, last_seen=ch.last_seen_ms or None, updated_at=now)
                     .where((Device.id == ch.id) & ((Device.presence != want) | Device.presence.is_null()))
                     .execute())
                if not n:  # already recorded (a stale copy of the row was in memory) or unpaired
                    ch.device.presence = want
                    return
                ev = events.record(ch.device.account_id, f"device.{want}", presence_payload(ch, want, now))
            ch.device.presence = want
            ch.device.updated_at = now
            ch._persisted_seen = ch.last_seen_ms
        events.publish([ev])
        if online:
            log.info("device %s (%s) online%s", ch.id, ch.name, " (event stream open)" if ch.sse_open() else "")
            self._kick()
        else:
            log.info("device %s (%s) offline: last seen %s", ch.id, ch.name, iso(ch.last_seen_ms))
            self._kick()

    def _kick(self) -> None:
        """Re-route what waits (a phone came back, or left and its queued messages go elsewhere)."""
        tasks = getattr(self.runtime, "tasks", None)
        if self.runtime.started and tasks is not None:
            try:
                tasks.route_pending()
            except Exception:
                log.exception("could not enqueue routing")

    def sweep(self) -> None:
        """Every housekeeping pass: presence transitions, last-seen persistence, pruning."""
        self._sync_rows()
        now = now_ms()
        for ch in list(self.channels.values()):
            try:
                if self.hub.is_open(ch.id):
                    ch.last_seen_ms = now  # an open stream is a phone seen right now
                self.check_presence(ch)
                ch.persist_seen()
            except pw.OperationalError:
                log.warning("presence check for %s deferred: database busy", ch.id)
        if now - self._last_nudge > NUDGE_EVERY_MS:
            self._last_nudge = now
            self._nudge_waiting(now)
        if now - self._last_prune > PRUNE_EVERY_MS:
            self._last_prune = now
            InboundEvent.delete().where(InboundEvent.created_at < now - INBOUND_KEEP_MS).execute()
            prune_pairings(now)
            # What phones said matters only while a message is dispatched (served again on pulls).
            stale = [r.message_id for r in DeviceMessage.select(DeviceMessage.message_id)
                     .join(Message, pw.JOIN.LEFT_OUTER, on=(Message.id == DeviceMessage.message_id))
                     .where(Message.id.is_null() | (Message.status != "dispatched")).limit(5000)]
            if stale:
                DeviceMessage.delete().where(DeviceMessage.message_id.in_(stale)).execute()

    def _sync_rows(self) -> None:
        """Follow the table: phones paired, changed or unpaired by another process, and the
        last-seen times other processes saved (a stream held elsewhere keeps it fresh)."""
        rows = {d.id: d for d in Device.select()}
        for device_id in [cid for cid in self.channels if cid not in rows]:
            self._forget(device_id, "unpaired")
        for device_id, row in rows.items():
            ch = self.channels.get(device_id)
            if ch is None:
                self.add(row)
                continue
            seen = row.last_seen or 0  # saved by whichever process the phone talks to
            ch.last_seen_ms = max(ch.last_seen_ms, seen)
            ch._persisted_seen = max(ch._persisted_seen, seen)
            if row.updated_at != ch.device.updated_at:
                ch.refresh(row)

    def _nudge_waiting(self, now: int) -> None:
        """A lost event must not strand messages: phones with an open stream here and messages
        assigned to them for a while get ``MessageEnqueued`` again."""
        open_here = [cid for cid in self.channels if self.hub.is_open(cid)]
        if not open_here:
            return
        waiting = (Message.select(Message.channel_id).where(
            (Message.status == "queued") & Message.channel_id.in_(open_here)
            & (Message.queued_at < now - NUDGE_EVERY_MS)).distinct())
        for row in waiting:
            self.hub.publish(row.channel_id, "MessageEnqueued")

    def shutdown(self) -> None:
        self.hub.close_all("server stopping")
        for ch in list(self.channels.values()):
            try:
                ch.persist_seen(force=True)
            except Exception:
                log.exception("could not save last seen of %s", ch.id)


# -- views ------------------------------------------------------------------------------------------
def presence_payload(ch: AndroidChannel, state: str, at: int) -> dict[str, Any]:
    """The ``device.online`` / ``device.offline`` event (and webhook) body."""
    return {
        "event": f"device.{state}",
        "device_id": ch.id,
        "device_name": ch.name,
        "online": state == "online",
        "last_seen": iso(ch.last_seen_ms or None),
        "timestamp": iso(at, millis=False),
        "unix_timestamp": at,
    }


def merge_sims(old: list[dict[str, Any]], reported: list[SimCardIn] | None) -> list[dict[str, Any]]:
    """The app's (masked) SIM list, keeping the numbers the admin set per SIM slot."""
    if reported is None:
        return old
    numbers = {(s.get("simNumber") or (s.get("slotIndex", 0) + 1)): s.get("number") for s in old}
    out = []
    for sim in reported:
        sim_number = sim.simNumber or ((sim.slotIndex or 0) + 1)
        out.append({"slotIndex": sim.slotIndex, "simNumber": sim_number, "phoneNumber": sim.phoneNumber,
                    "carrierName": sim.carrierName, "iccid": sim.iccid, "number": numbers.get(sim_number)})
    # A SIM the admin numbered but the phone no longer reports keeps its number (dual SIM swap).
    seen = {s["simNumber"] for s in out}
    for s in old:
        sn = s.get("simNumber")
        if s.get("number") and sn not in seen:
            out.append({**s, "present": False})
    return sorted(out, key=lambda s: s["simNumber"])


def _day_start(tz_name: str) -> int:
    try:
        tz: Any = ZoneInfo(tz_name or "UTC")
    except Exception:  # noqa: BLE001 - unknown zone name: count the UTC day
        tz = UTC
    now = datetime.now(tz)
    return int(now.replace(hour=0, minute=0, second=0, microsecond=0).timestamp() * 1000)


def view(ch: AndroidChannel, counts: bool = True) -> dict[str, Any]:
    """A device as ``/api/v1/devices`` shows it."""
    d = ch.device
    out: dict[str, Any] = {
        "id": ch.id,
        "kind": "android",
        "name": ch.name,
        "model": d.name,
        "label": d.label,
        "app_version": d.app_version,
        "enabled": bool(d.enabled),
        "online": ch.online(),
        "sse_connected": ch.sse_open(),
        "last_seen": iso(ch.last_seen_ms or None),
        "battery": d.battery_level,
        "charging": d.charging,
        "connectivity": d.connectivity,
        "health": d.health_status,
        "last_ping_at": iso(d.last_ping_at),
        "sims": [{"sim_number": s.get("simNumber"), "slot_index": s.get("slotIndex"),
                  "number": s.get("number"), "reported_number": s.get("phoneNumber"),
                  "carrier": s.get("carrierName"), "iccid": s.get("iccid"),
                  "present": s.get("present", True)} for s in d.sim_cards or []],
        "numbers": ch.numbers(),
        "push_token": bool(d.push_token),
        "paired_by": d.paired_by,
        "created_at": iso(d.created_at),
    }
    if counts:
        base = Message.select().where(Message.channel_id == ch.id)
        out["queue_depth"] = base.where(Message.status == "queued").count()
        out["in_flight"] = Message.select().where(
            (Message.channel_id == ch.id) & (Message.status == "dispatched")).count()
        tz = getattr(d.account, "timezone", "UTC") if d.account_id else "UTC"
        out["sent_today"] = Message.select().where(
            (Message.channel_id == ch.id) & (Message.direction == "outbound")
            & (Message.sent_at >= _day_start(tz))).count()
    return out
