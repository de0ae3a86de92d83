"""Sending windows: the hours of the week an account's ``normal``/``bulk`` messages may go out.

An account sets one window in its own time zone (``PUT /api/v1/account/settings``:
``timezone`` is the ``Account.timezone`` column, ``sending_window`` lives in ``Account.settings``)
such as 08:00-21:00 Monday to Saturday. Outside it those messages stay ``queued`` and
``GET /sms/{id}`` says why and until when (``waiting``); ``otp`` and ``high`` ignore the window.
A window whose end is before its start runs over midnight (22:00-06:00); the days are the days
it opens. Local times come from the IANA zone (``zoneinfo``), so daylight saving is honoured.
"""
from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from relaybox.models import Account

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
SETTING = "sending_window"


class SendingWindow(BaseModel):
    """``{"start": "08:00", "end": "21:00", "days": ["mon", ..., "sat"]}`` (local time)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    start: str = Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$", description="HH:MM, local time")
    end: str = Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$|^24:00$",
                     description="HH:MM, local time; before start = over midnight")
    days: list[Day] = Field(default_factory=lambda: list(DAYS), min_length=1, max_length=7,
                            description="The days the window opens (default every day)")

    @field_validator("days")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        return sorted(set(v), key=DAYS.index)

    @model_validator(mode="after")
    def _not_empty(self) -> SendingWindow:
        if self.start == self.end:
            raise ValueError("start and end must differ (leave sending_window null for always)")
        return self

    def minutes(self) -> tuple[int, int]:
        def m(hhmm: str) -> int:
            h, mm = hhmm.split(":")
            return int(h) * 60 + int(mm)

        return m(self.start), m(self.end)


def valid_timezone(name: str) -> str:
    """An IANA zone name (``Asia/Karachi``), else ValueError."""
    if not name or len(name) > 64:
        raise ValueError("an IANA time zone name such as Asia/Karachi")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (an IANA name such as Asia/Karachi)") from None
    if name not in available_timezones() and name != "UTC":
        raise ValueError(f"unknown time zone {name!r} (an IANA name such as Asia/Karachi)")
    return name


def zone(name: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def window_of(account: Any) -> SendingWindow | None:
    raw = (account.settings or {}).get(SETTING)
    if not raw:
        return None
    try:
        return SendingWindow.model_validate(raw)
    except ValueError:
        return None


def state(window: SendingWindow | None, tz_name: str | None, now_ms: int) -> tuple[bool, int | None]:
    """(open now, when that changes: the next opening if closed, the closing if open; ms)."""
    if window is None:
        return True, None
    tz = zone(tz_name)
    local = datetime.fromtimestamp(now_ms / 1000, tz)
    start, end = window.minutes()
    days = {DAYS.index(d) for d in window.days}
    # Every opening from yesterday to 8 days ahead, as (open, close) in epoch ms.
    spans: list[tuple[int, int]] = []
    for offset in range(-1, 9):
        day = (local + timedelta(days=offset)).date()
        if day.weekday() not in days:
            continue
        base = datetime(day.year, day.month, day.day, tzinfo=tz)
        opens = base + timedelta(minutes=start)
        closes = base + timedelta(minutes=end if end > start else end + 1440)
        spans.append((_ms(opens), _ms(closes)))
    for o, c in spans:
        if o <= now_ms < c:
            # Consecutive spans that touch (a 00:00-24:00 day after another) count as one.
            close = c
            for o2, c2 in spans:
                if o2 == close:
                    close = c2
            return True, close
    upcoming = [o for o, _ in spans if o > now_ms]
    return False, (min(upcoming) if upcoming else None)


def _ms(dt: datetime) -> int:
    """Wall time in a zone → epoch ms (a time skipped by DST moves forward by the gap)."""
    return int(dt.timestamp() * 1000)


class Windows:
    """Which accounts are outside their window now (cached briefly; claims ask often)."""

    def __init__(self, ttl: float = 0.5) -> None:
        self.ttl = ttl
        self._lock = threading.Lock()
        self._closed: frozenset[str] = frozenset()
        self._until: dict[str, int | None] = {}
        self._expires = 0.0
        self._clock = 0

    def closed(self, now_ms: int) -> frozenset[str]:
        with self._lock:
            if time.monotonic() < self._expires and abs(now_ms - self._clock) < 1000 and not any(
                    until is not None and until <= now_ms for until in self._until.values()):
                return self._closed
        closed: set[str] = set()
        until: dict[str, int | None] = {}
        for acc in Account.select(Account.id, Account.timezone, Account.settings):
            win = window_of(acc)
            if win is None:
                continue
            is_open, change = state(win, acc.timezone, now_ms)
            until[acc.id] = change
            if not is_open:
                closed.add(acc.id)
        with self._lock:
            self._closed = frozenset(closed)
            self._until = until
            self._expires = time.monotonic() + self.ttl
            self._clock = now_ms
        return self._closed

    def invalidate(self) -> None:
        with self._lock:
            self._expires = 0.0
