"""Log output: one JSON object per line (``log_json = true``), and redaction of secrets.

Nothing in relaybox logs an API key, device token or OTP code on purpose; :func:`redact` is the
safety net for the shapes a secret can take in a message (``rbx_...`` keys, ``Bearer ...``
headers, ``X-API-Key: ...``), applied to every record by :class:`RedactFilter` on the root
handlers and by :class:`JsonFormatter`.
"""
from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

_SECRET_PATTERNS = [
    (re.compile(r"\brbx_[A-Za-z0-9_\-]{4,}"), "rbx_[redacted]"),
    (re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=\-]{8,}"), r"\1 [redacted]"),
    (re.compile(r"(?i)\b(x-api-key|api_key|token|secret|password|code)(\"?\s*[:=]\s*\"?)[^\s\",}]+"),
     r"\1\2[redacted]"),
]

# Attributes every LogRecord has; anything else was passed with ``extra=`` and is emitted.
_STANDARD = set(vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None))) | {"message", "asctime"}


def redact(text: str) -> str:
    """Mask anything shaped like a secret."""
    for pattern, repl in _SECRET_PATTERNS:
        text = pattern.sub(repl, text)
    return text


class RedactFilter(logging.Filter):
    """Rewrites the record's message with :func:`redact` (install on handlers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string is the caller's bug; keep the record
            return True
        clean = redact(msg)
        if clean != msg:
            record.msg, record.args = clean, None
        return True


class JsonFormatter(logging.Formatter):
    """``{"ts": "...Z", "level": "INFO", "logger": "...", "msg": "...", ...extra}`` per line."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, tz=UTC)
        out: dict[str, Any] = {
            "ts": ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(out, ensure_ascii=False, default=str)


def install_redaction() -> None:
    """Put a :class:`RedactFilter` on every root handler (idempotent)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactFilter) for f in handler.filters):
            handler.addFilter(RedactFilter())
