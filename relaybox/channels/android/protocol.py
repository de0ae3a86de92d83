"""The app's wire format (ANDROID-PROTOCOL.md §1, §4): dates, request shapes, the message DTO.

The app's Gson ignores unknown fields and omits nulls, so the request models ignore extra fields
and default every optional one; a body of the wrong shape is a 400 with ``{"message": ...}``.
"""
from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from relaybox.timeutil import now_ms

STATES = ("Pending", "Cancelling", "Cancelled", "Processed", "Sent", "Delivered", "Failed")
# relaybox priority (otp 0, high 1, normal 2, bulk 3) → the app's (-128..127; ≥ 100 skips the
# phone's own send limits and delays, which otp and high should: they skip relaybox's pacing).
APP_PRIORITY = {0: 100, 1: 100, 2: 0, 3: -50}
USER_AGENT_RE = re.compile(r"me\.capcom\.smsgateway/([0-9A-Za-z.+_-]{1,32})")


def format_date(ms: int | None) -> str | None:
    """``2026-11-22T10:15:30.123+00:00``: the app's own pattern ``yyyy-MM-dd'T'HH:mm:ss.SSSXXX``."""
    if ms is None:
        return None
    dt = datetime.fromtimestamp(ms // 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}+00:00"


_DATE_RE = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}(?::\d{2})?)(?:[.,](\d{1,9}))?\s*(Z|z|[+-][0-9:+-]*)?$")


def parse_date(value: Any) -> int | None:
    """A date the app wrote → ms, or None when absent or unreadable.

    Lenient (§1): ``Z`` or ``±hh:mm``/``±hhmm``/``±hh`` offsets, 0-9 fraction digits, and the
    malformed negative offsets that Android < 7 builds (``-0-5:00``-like): their digits are read
    as hours and minutes. No offset means UTC.
    """
    if not isinstance(value, str) or len(value) > 64:
        return None
    m = _DATE_RE.match(value.strip())
    if not m:
        return None
    day, clock, frac, off = m.groups()
    if clock.count(":") == 1:
        clock += ":00"
    try:
        dt = datetime.fromisoformat(f"{day}T{clock}").replace(tzinfo=UTC)
    except ValueError:
        return None
    ms = int(dt.timestamp() * 1000) + (int((frac or "0")[:3].ljust(3, "0")))
    if off and off not in ("Z", "z"):
        sign = -1 if off[0] == "-" else 1
        digits = re.sub(r"\D", "", off)
        if len(digits) not in (1, 2, 3, 4):
            return None
        digits = digits.rjust(4 if len(digits) > 2 else 2, "0")
        hours, minutes = int(digits[:2]), int(digits[2:4] or 0)
        if hours > 18 or minutes > 59:
            return None
        ms -= sign * (hours * 3600 + minutes * 60) * 1000
    return ms


def app_version(user_agent: str | None) -> str | None:
    """``me.capcom.smsgateway/1.68.0`` → ``1.68.0`` (the only version signal, §9)."""
    m = USER_AGENT_RE.search(user_agent or "")
    return m.group(1) if m else None


# -- request bodies ---------------------------------------------------------------------------------
class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class SimCardIn(_Lenient):
    slotIndex: int | None = Field(None, ge=0, le=16)
    simNumber: int | None = Field(None, ge=1, le=16)
    phoneNumber: str | None = Field(None, max_length=64)
    carrierName: str | None = Field(None, max_length=128)
    iccid: str | None = Field(None, max_length=64)


class RegisterIn(_Lenient):
    name: str | None = Field(None, max_length=512)
    pushToken: str | None = Field(None, max_length=4096)
    simCards: list[SimCardIn] | None = Field(None, max_length=16)


class PatchDeviceIn(_Lenient):
    id: str = Field(max_length=64)
    pushToken: str | None = Field(None, max_length=4096)
    simCards: list[SimCardIn] | None = Field(None, max_length=16)


class RecipientIn(_Lenient):
    phoneNumber: str = Field(max_length=64)
    state: str | None = Field(None, max_length=32)
    error: str | None = Field(None, max_length=4096)


class StateUpdateIn(_Lenient):
    id: str = Field(max_length=64)
    state: str | None = Field(None, max_length=32)
    recipients: list[RecipientIn] = Field(default_factory=list, max_length=100)
    states: dict[str, str | None] = Field(default_factory=dict)


class WebhookEventIn(_Lenient):
    id: str = Field(min_length=1, max_length=64)
    event: str = Field(max_length=64)
    webhookId: str | None = Field(None, max_length=64)
    deviceId: str | None = Field(None, max_length=64)
    payload: dict[str, Any] = Field(default_factory=dict)


def first_error(exc: Any) -> str:
    """A short message from a pydantic ValidationError: ``field: problem``."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err.get("loc", ())) or "body"
    return f"{loc}: {err['msg']}"


# -- response shapes ---------------------------------------------------------------------------------
def message_dto(m: Any, text: str, *, sim_number: int | None, state: str = "Pending") -> dict[str, Any]:
    """One ``GET /message`` element (§4.4), field order as the Go server writes it."""
    out: dict[str, Any] = {"id": m.id, "textMessage": {"text": text}, "message": text,
                           "phoneNumbers": [m.to_number]}
    if sim_number is not None:
        out["simNumber"] = sim_number
    out["withDeliveryReport"] = True
    prio = APP_PRIORITY.get(m.priority, 0)
    if prio:
        out["priority"] = prio
    if m.expires_at:
        out["ttl"] = max(0, (m.expires_at - now_ms()) // 1000)
        out["validUntil"] = format_date(m.expires_at)
    out["state"] = state
    out["createdAt"] = format_date(m.created_at)
    return out
