"""What every API blueprint shares: auth, validation types, paging, idempotency."""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Callable
from typing import Annotated, Any

import peewee as pw
import phonenumbers
from flask import g, request
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from relaybox.accounts import account_for_key
from relaybox.db import write_tx
from relaybox.errors import ApiError, invalid
from relaybox.models import Account, IdempotencyRecord
from relaybox.timeutil import now_ms

log = logging.getLogger("relaybox.api")
SECURITY = [{"ApiKey": []}, {"Bearer": []}]
SECURITY_SCHEMES = {
    "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    "Bearer": {"type": "http", "scheme": "bearer"},
}


# -- validation types ----------------------------------------------------------------------
def normalize_e164(value: str) -> str:
    """A valid E.164 number (``phonenumbers.is_valid_number``), returned in E.164 form."""
    if not isinstance(value, str) or not value.startswith("+"):
        raise ValueError("not a valid E.164 number (it must start with + and the country code)")
    try:
        num = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException:
        raise ValueError("not a valid E.164 number") from None
    if not phonenumbers.is_valid_number(num):
        raise ValueError("not a valid E.164 number")
    return phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164)


E164 = Annotated[str, AfterValidator(normalize_e164)]


def _http_url(value: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or len(value) > 2048:
        raise ValueError("must be an http(s) URL")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number in 0-65535
    except ValueError:
        raise ValueError("must be an http(s) URL with a valid port") from None
    if not parts.hostname or any(c.isspace() or ord(c) < 32 for c in value):
        raise ValueError("must be an http(s) URL with a host name")
    return value


HttpUrl = Annotated[str, AfterValidator(_http_url)]


class StrictBody(BaseModel):
    """JSON bodies: unknown fields and wrong types are errors (no silent coercion)."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)


_SCHEMAS: dict[Any, dict[str, Any]] = {}


class PageQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    page: int = Field(1, ge=1, le=1_000_000)
    limit: int = Field(25, ge=1, le=100)

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        """Cached: flask-openapi3 asks for the query model's schema on every request (about
        1-2 ms of a list request); the schema of a class never changes."""
        import copy

        key = (cls, args, tuple(sorted(kwargs.items(), key=lambda kv: kv[0])))
        if key not in _SCHEMAS:
            _SCHEMAS[key] = super().model_json_schema(*args, **kwargs)
        return copy.deepcopy(_SCHEMAS[key])


def page_of(query: pw.Query, page: int, limit: int) -> tuple[list[Any], int, bool]:
    total = query.count()
    rows = list(query.paginate(page, limit))
    return rows, total, page * limit < total


# -- auth ------------------------------------------------------------------------------------
def presented_key() -> str | None:
    key = request.headers.get("X-API-Key")
    if key:
        return key.strip()
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return None


def authenticate() -> Account:
    """The caller's account; UNAUTHORIZED / FORBIDDEN as the contract says."""
    key = presented_key()
    if not key:
        raise ApiError("UNAUTHORIZED", "missing API key: send X-API-Key or Authorization: Bearer")
    account = account_for_key(key)
    if account is None:
        raise ApiError("UNAUTHORIZED", "invalid API key")
    if not account.api_enabled:
        raise ApiError("FORBIDDEN", "API access is not enabled for this account; ask your admin")
    g.account = account
    return account


def current_account() -> Account:
    acc = getattr(g, "account", None)
    return acc if acc is not None else authenticate()



# -- idempotency ------------------------------------------------------------------------------
ABANDONED_AFTER_MS = 60_000


class Idempotency:
    """``Idempotency-Key`` on sending POSTs (CONTRACT.md).

    The stored answer is written in the same transaction as the messages (see :meth:`store`),
    so a replay can never disagree with what was accepted.
    """

    def __init__(self, account: Account) -> None:
        self.account = account
        self.key = request.headers.get("Idempotency-Key")
        self.record: IdempotencyRecord | None = None
        self.replay: tuple[int, Any] | None = None
        if self.key is None:
            return
        if not self.key or len(self.key) > 255:
            raise invalid("Idempotency-Key", "must be 1 to 255 characters")
        fp = hashlib.sha256(request.method.encode() + request.path.encode() + b"\0"
                            + request.get_data()).hexdigest()
        now = now_ms()
        for _ in range(3):
            existing = IdempotencyRecord.get_or_none(
                (IdempotencyRecord.account == account) & (IdempotencyRecord.key == self.key))
            if existing is None:
                try:
                    with write_tx():
                        self.record = IdempotencyRecord.create(
                            account=account, key=self.key, fingerprint=fp, state="running", created_at=now)
                    return
                except pw.IntegrityError:
                    continue
                except (pw.OperationalError, pw.InterfaceError) as exc:
                    # Database locked past busy_timeout, disk full, server gone: nothing was
                    # accepted, so the client may retry with the same key (as queue_tx says).
                    raise ApiError("QUEUE_FAILED", "could not queue the message: the database is "
                                   "unavailable, retry with the same Idempotency-Key") from exc
            if not hmac.compare_digest(existing.fingerprint, fp):
                raise ApiError("IDEMPOTENCY_CONFLICT", "Idempotency-Key was used with a different request",
                               status=422, field="Idempotency-Key")
            if existing.state == "done":
                self.replay = (existing.status_code or 200, json.loads(existing.response or "null"))
                return
            if now - existing.created_at < ABANDONED_AFTER_MS:
                raise ApiError("IDEMPOTENCY_CONFLICT", "a request with this Idempotency-Key is still running",
                               status=409, field="Idempotency-Key")
            # Abandoned by a crash before anything was committed: take it over.
            IdempotencyRecord.delete().where(IdempotencyRecord.id == existing.id).execute()
        raise ApiError("IDEMPOTENCY_CONFLICT", "Idempotency-Key is busy", status=409, field="Idempotency-Key")

    def store(self, status: int, data: Any) -> None:
        """Record the answer (call inside the transaction that wrote the messages)."""
        if self.record is not None:
            (IdempotencyRecord.update(state="done", status_code=status, response=json.dumps(data))
             .where(IdempotencyRecord.id == self.record.id).execute())

    def abandon(self) -> None:
        """Free the key after a failed request. Best effort: when the database itself is what
        failed (locked, disk full), the original error must reach the client, not this one; a
        "running" row left behind is taken over after ABANDONED_AFTER_MS."""
        if self.record is None:
            return
        try:
            with write_tx():
                IdempotencyRecord.delete().where(
                    (IdempotencyRecord.id == self.record.id) & (IdempotencyRecord.state == "running")).execute()
        except (pw.OperationalError, pw.InterfaceError):
            log.warning("could not release Idempotency-Key after a failed request; it frees itself in %d s",
                        ABANDONED_AFTER_MS // 1000)


def idempotent(view: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator: replay a stored answer, or run the view with ``g.idem`` set."""
    from functools import wraps

    from relaybox.errors import envelope

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        idem = Idempotency(current_account())
        if idem.replay is not None:
            status, data = idem.replay
            return envelope(data, status, headers={"Idempotent-Replayed": "true"})
        g.idem = idem
        try:
            return view(*args, **kwargs)
        except BaseException:
            idem.abandon()
            raise

    return wrapper
