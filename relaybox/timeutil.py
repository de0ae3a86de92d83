"""Time as integer milliseconds since the epoch (UTC), with one clock the tests can move.

In-process tests move it with :func:`advance`. Tests that drive a real ``relaybox serve``
process start it with ``RELAYBOX_TEST_CLOCK_FILE=<path>``: the server then adds the integer
number of milliseconds written in that file to every :func:`now_ms` (write it atomically, e.g.
temp file + ``os.replace``; a missing or unreadable file counts as 0). The variable is read once
at import; when it is unset (production) nothing is read.
"""
from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from functools import lru_cache

_offset_ms = 0
_CLOCK_FILE = os.environ.get("RELAYBOX_TEST_CLOCK_FILE") or None


def _file_offset_ms(path: str) -> int:
    try:
        with open(path) as fh:
            return int(fh.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def now_ms() -> int:
    """Wall clock in ms, plus the test offsets (see :func:`advance` and the module docstring)."""
    ms = int(time.time() * 1000) + _offset_ms
    if _CLOCK_FILE:
        ms += _file_offset_ms(_CLOCK_FILE)
    return ms


def advance(seconds: float) -> None:
    """Move the clock forward (tests only: expiry and pacing without sleeping)."""
    global _offset_ms
    _offset_ms += int(seconds * 1000)


def reset_clock() -> None:
    global _offset_ms
    _offset_ms = 0


@lru_cache(maxsize=512)
def _second(s: int) -> str:
    """``YYYY-MM-DDTHH:MM:SS`` of a Unix second (a message view formats several in one second)."""
    return datetime.fromtimestamp(s, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")


def iso(ms: int | None, millis: bool = True) -> str | None:
    """RFC 3339 UTC with ``Z``; millisecond precision for timelines."""
    if ms is None:
        return None
    s, frac = divmod(ms, 1000)
    if millis:
        return f"{_second(s)}.{frac:03d}Z"
    return _second(s) + "Z"


def parse_rfc3339(value: str) -> int:
    """RFC 3339 / ISO 8601 with an offset → ms. Raises ValueError without an offset."""
    dt = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    if dt.tzinfo is None:
        raise ValueError("needs a time zone offset (e.g. Z or +05:00)")
    return int(dt.timestamp() * 1000)
