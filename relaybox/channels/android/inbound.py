"""What phones POST to relaybox's own webhook URL: ``sms:received`` and ``system:ping`` (§7).

Each post is signed by the app: ``X-Signature`` = hex HMAC-SHA256(signing key, raw body +
``X-Timestamp``), with the per-phone key relaybox serves in ``/settings``. A timestamp more than
5 minutes off is refused (replay window); event ids are remembered so the app's retries store an
SMS once. An inbound SMS becomes a ``Message`` row (``direction = "inbound"``, status
``received``) and a ``message.inbound`` event in the API reference's webhook shape.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import time
from typing import TYPE_CHECKING, Any

import peewee as pw

from relaybox import events
from relaybox.api.common import normalize_e164
from relaybox.channels.android.models import Device, InboundEvent
from relaybox.channels.android.pairing import signing_key
from relaybox.channels.android.protocol import WebhookEventIn, parse_date
from relaybox.db import write_tx
from relaybox.messages import store_inbound
from relaybox.timeutil import now_ms

if TYPE_CHECKING:  # pragma: no cover
    from relaybox.channels.android.channel import AndroidChannel

log = logging.getLogger("relaybox.android.inbound")

WINDOW_S = 300
NUMBER_MAX = 20


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def verify(device: Device, body: bytes, timestamp: str | None, signature: str | None,
           now_s: float | None = None) -> None:
    """Raise :class:`Refused` (401) unless the post is signed by this phone within 5 minutes."""
    if not timestamp or not signature:
        raise Refused(401, "X-Timestamp and X-Signature are required")
    try:
        ts = int(timestamp.strip())
    except ValueError:
        raise Refused(401, "X-Timestamp must be unix seconds") from None
    now_s = time.time() if now_s is None else now_s
    if abs(now_s - ts) > WINDOW_S:
        raise Refused(401, "X-Timestamp is more than 5 minutes off")
    key = signing_key(device.id, device.key_version).encode()
    expected = hmac.new(key, body + timestamp.strip().encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature.strip().lower()):
        raise Refused(401, "bad X-Signature")


def _number(value: Any) -> str | None:
    """An E.164 number when it is one, else the sender as given (short codes, names)."""
    if not isinstance(value, str) or not value.strip():
        return None
    value = value.strip()
    try:
        return normalize_e164(value)
    except ValueError:
        return value[:NUMBER_MAX]


def handle(ch: AndroidChannel, event: WebhookEventIn) -> str:
    """Store one verified event once; returns ``stored``, ``duplicate`` or ``ignored``."""
    if event.event not in ("sms:received", "system:ping"):
        return "ignored"
    try:
        with write_tx():
            if InboundEvent.select().where((InboundEvent.device_id == ch.id)
                                           & (InboundEvent.event_id == event.id)).exists():
                return "duplicate"
            InboundEvent.insert(device_id=ch.id, event_id=event.id, created_at=now_ms()).execute()
            evs = _store_sms(ch, event) if event.event == "sms:received" else _store_ping(ch, event)
    except pw.IntegrityError:  # the same event id posted twice at once
        return "duplicate"
    events.publish(evs)
    return "stored"


def _store_sms(ch: AndroidChannel, event: WebhookEventIn) -> list[Any]:
    p = event.payload
    text = p.get("message")
    if not isinstance(text, str):
        raise Refused(400, "payload.message: a string is required")
    sender = _number(p.get("sender")) or _number(p.get("phoneNumber")) or "unknown"
    sim_number = p.get("simNumber") if isinstance(p.get("simNumber"), int) else None
    own = next((s.get("number") for s in ch.device.sim_cards or []
                if sim_number is not None and s.get("simNumber") == sim_number and s.get("number")), None)
    recipient = own or _number(p.get("recipient")) or (ch.numbers()[0] if len(ch.numbers()) == 1 else "")
    detail = {"sim_number": sim_number, "device_message_id": p.get("messageId"), "event_id": event.id}
    _m, ev = store_inbound(account_id=ch.device.account_id, channel_id=ch.id, sender=sender,
                           recipient=recipient, body=text, received_at=parse_date(p.get("receivedAt")),
                           detail={k: v for k, v in detail.items() if v is not None})
    return [ev]


def _check(checks: dict[str, Any], name: str) -> Any:
    c = checks.get(name)
    return c.get("observedValue") if isinstance(c, dict) else None


_TRANSPORTS = {1: "unknown", 2: "cellular", 4: "wifi", 8: "ethernet"}
_CELLULAR = ("none", "unknown", "2g", "3g", "4g", "5g")


def _store_ping(ch: AndroidChannel, event: WebhookEventIn) -> list[Any]:
    """``system:ping``: battery, charging and connectivity from the app's health checks."""
    health = event.payload.get("health")
    if not isinstance(health, dict):
        raise Refused(400, "payload.health: an object is required")
    checks = health.get("checks") if isinstance(health.get("checks"), dict) else {}
    level, plug = _check(checks, "battery:level"), _check(checks, "battery:charging")
    internet = _check(checks, "connection:status")
    flags, cell = _check(checks, "connection:transport"), _check(checks, "connection:cellular")
    connectivity: dict[str, Any] = {}
    if isinstance(internet, (int, float)):
        connectivity["internet"] = bool(internet)
    if isinstance(flags, (int, float)):
        connectivity["transports"] = [name for bit, name in _TRANSPORTS.items() if int(flags) & bit]
    if isinstance(cell, (int, float)) and 0 <= int(cell) < len(_CELLULAR):
        connectivity["cellular"] = _CELLULAR[int(cell)]
    now = now_ms()
    changes: dict[Any, Any] = {Device.last_ping_at: now, Device.last_seen: now, Device.updated_at: now}
    if isinstance(level, (int, float)):
        changes[Device.battery_level] = max(0, min(100, int(level)))
    if isinstance(plug, (int, float)):
        changes[Device.charging] = int(plug) != 0
    if connectivity:
        changes[Device.connectivity] = connectivity
    if isinstance(health.get("status"), str):
        changes[Device.health_status] = health["status"][:8]
    if isinstance(health.get("version"), str) and not ch.device.app_version:
        changes[Device.app_version] = health["version"][:40]
    Device.update(changes).where(Device.id == ch.id).execute()
    for field, value in changes.items():
        setattr(ch.device, field.name, value)
    return []
