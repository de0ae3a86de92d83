"""The error catalogue of CONTRACT.md: one exception class, one envelope, used everywhere."""
from __future__ import annotations

from typing import Any

from flask import Response, json

from relaybox.timeutil import iso, now_ms

# code -> (HTTP status, meaning). The admin page and the developer page render this table.
CATALOGUE: dict[str, tuple[int, str]] = {
    "UNAUTHORIZED": (401, "API key or auth header missing or invalid"),
    "FORBIDDEN": (403, "API access not enabled for this account"),
    "NOT_FOUND": (404, "Resource not found (or not yours)"),
    "INVALID_REQUEST": (400, "A parameter is invalid; `field` names it"),
    "IDEMPOTENCY_CONFLICT": (409, "Idempotency-Key reused while running (409) or with another body (422)"),
    "INVALID_DEVICE": (409, "Requested device or number unavailable or invalid for routing"),
    "INSUFFICIENT_BALANCE": (402, "Account balance too low"),
    "SUBSCRIPTION_EXPIRED": (402, "Subscription expired and needs renewal"),
    "RATE_LIMITED": (429, "Sending limit or safety threshold exceeded"),
    "QUEUE_BLOCKED": (503, "Sending paused by queue state or policy"),
    "QUEUE_FAILED": (503, "Could not queue the message"),
    "INTERNAL_ERROR": (500, "Unexpected error; logged with the correlation id in the body"),
    "METHOD_NOT_ALLOWED": (405, "The path exists but not with this method"),
    "CONFLICT": (409, "The resource is not in a state that allows this"),
}


class ApiError(Exception):
    """Raised anywhere; rendered once, in the envelope, by the app's error handler."""

    def __init__(
        self,
        code: str,
        message: str | None = None,
        *,
        field: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        if code not in CATALOGUE:
            raise ValueError(f"unknown error code {code}")
        self.code = code
        self.status = status or CATALOGUE[code][0]
        self.message = message or CATALOGUE[code][1]
        self.field = field
        self.headers = headers or {}
        self.extra = extra or {}
        super().__init__(f"{code}: {self.message}")

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            err["field"] = self.field
        err.update(self.extra)
        return err


def invalid(field: str, message: str) -> ApiError:
    """INVALID_REQUEST naming the field, with the field in the message as clients expect."""
    return ApiError("INVALID_REQUEST", f"{field}: {message}", field=field)


def _stamp() -> dict[str, Any]:
    ms = now_ms()
    return {"timestamp": iso(ms, millis=False), "unix_timestamp": ms}


def envelope(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """The success envelope: ``{"ok": true, "data": ..., "timestamp", "unix_timestamp"}``."""
    body = {"ok": True, "data": data, **_stamp()}
    return Response(json.dumps(body), status=status, headers=headers, mimetype="application/json")


def error_response(err: ApiError) -> Response:
    body = {"ok": False, "error": err.body(), **_stamp()}
    return Response(json.dumps(body), status=err.status, headers=err.headers, mimetype="application/json")
