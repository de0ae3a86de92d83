"""One-time codes: generation, storage, texts per locale, and the send/verify rules.

Where a code lives (the design decision)
----------------------------------------
A code has to reach the phone or modem that transmits it, and survive a restart while its
message waits in the queue; yet it must never be in a database column in clear text, a log
line or an API answer. So an OTP keeps three things:

* ``Otp.code_hash``: HMAC-SHA256 of the code keyed with the instance secret (and the otp id,
  so equal codes never hash alike). Verify compares it in constant time.
* ``Otp.sealed``: the SMS text with the code, AES-256-GCM encrypted with a key derived from
  the instance secret (associated data: the otp id). Channels get the text to transmit from
  ``relaybox.messages.sending_body`` which asks :func:`body_source`. The sealed text is wiped
  as soon as nothing can need it any more: the message was sent or ended, or the OTP was
  verified, superseded, exhausted or expired.
* ``Message.body``: the same text with the code masked (``******``). That is what
  ``GET /sms/{id}``, the message list, timelines, webhooks and the admin page show; the
  message's ``segments`` and ``encoding`` are those of the real text (masking keeps both).

A copy of the database alone (a backup, a stolen disk without the data dir's ``secret``)
holds no code, not even of OTPs still waiting to go out, while the appliance itself can still
send them after a restart. A message that must no longer go out (its OTP was superseded,
verified or expired meanwhile) makes ``sending_body`` raise ``NotSendable``.

Rules (issue 7, NIST SP 800-63B): one live OTP per (account, number, purpose), a new send
supersedes it; at most ``otp_max_attempts`` verify attempts per OTP; send limits per
(number, purpose) and per account counted from the ``otp`` rows themselves (so they survive
restarts); wrong codes per (number, purpose) add up across resends in ``OtpGuard`` and every
``otp_max_attempts`` of them lock the pair out for a delay that doubles each time.
"""
from __future__ import annotations

import math
import os
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

import peewee as pw

from relaybox import events, messages
from relaybox.config import Config
from relaybox.db import BaseModel, db, group_write, is_sqlite, write_tx
from relaybox.errors import ApiError
from relaybox.messages import NotSendable
from relaybox.models import PRIORITIES, Account, Message
from relaybox.security import digest, matches
from relaybox.timeutil import iso, now_ms

LOCALES = ("en", "ur", "ne", "bn")
LIVE = "sent"
# Message states after which the text is never transmitted again.
MESSAGE_DONE = frozenset({"sent", "delivered", "failed", "undelivered", "expired", "cancelled"})
MAX_LOCKOUT_S = 86_400
GUARD_FORGET_MS = 86_400_000      # wrong codes older than a day no longer count
KEEP_ROWS_MS = 7 * 86_400_000     # OTP rows (the send counters) are kept a week

# The default texts: (with app_name, without). Written in each language's own script in the
# register of the product's translations; digits stay ASCII so autofill can read the code.
# Each fits one UCS-2 segment (70 units) with a 6-digit code and a 12-character app name
# (tests/test_otp.py checks it with relaybox.sms.pdu.analyze).
DEFAULT_TEMPLATES: dict[str, tuple[str, str]] = {
    "en": ("{code} is your {app_name} code. Valid for {minutes} min. Do not share it.",
           "{code} is your verification code. Valid for {minutes} min. Do not share it."),
    "ur": ("{app_name} تصدیقی کوڈ: {code}۔ {minutes} منٹ تک درست۔ کسی کو نہ بتائیں۔",
           "آپ کا تصدیقی کوڈ {code} ہے۔ {minutes} منٹ تک درست۔ کسی کو نہ بتائیں۔"),
    "ne": ("{app_name} प्रमाणीकरण कोड {code}। {minutes} मिनेट मान्य। कसैलाई नदिनुहोस्।",
           "तपाईंको प्रमाणीकरण कोड {code} हो। {minutes} मिनेट मान्य। कसैलाई नदिनुहोस्।"),
    "bn": ("{app_name} যাচাই কোড: {code}। {minutes} মিনিট বৈধ। কাউকে জানাবেন না।",
           "আপনার যাচাই কোড {code}। {minutes} মিনিট বৈধ। কাউকে জানাবেন না।"),
}
PLACEHOLDERS = ("code", "app_name", "minutes")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_DOMAIN = re.compile(r"^(?=.{1,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,61}[a-z0-9]$")


# -- tables ---------------------------------------------------------------------------------------
class Otp(BaseModel):
    """One code sent. The rows also count sends for the rate limits."""

    id = pw.CharField(primary_key=True, max_length=40)
    account = pw.ForeignKeyField(Account, on_delete="CASCADE")
    to_number = pw.CharField(max_length=20)
    purpose = pw.CharField(max_length=32)
    locale = pw.CharField(max_length=8)
    length = pw.SmallIntegerField()
    code_hash = pw.CharField(max_length=64)
    sealed = pw.BlobField(null=True)  # AES-GCM(text with the code); wiped once not needed
    message_id = pw.CharField(max_length=40, index=True)
    status = pw.CharField(max_length=12)  # sent | verified | failed | superseded | expired
    attempts = pw.IntegerField(default=0)
    max_attempts = pw.IntegerField()
    created_at = pw.BigIntegerField()
    expires_at = pw.BigIntegerField()
    verified_at = pw.BigIntegerField(null=True)
    closed_at = pw.BigIntegerField(null=True)

    class Meta:
        table_name = "otp"
        indexes = (
            (("account", "to_number", "purpose", "created_at"), False),
            (("account", "created_at"), False),
            (("status", "expires_at"), False),
        )


class OtpGuard(BaseModel):
    """Consecutive wrong codes for one (account, number, purpose), across resends."""

    account = pw.ForeignKeyField(Account, on_delete="CASCADE")
    to_number = pw.CharField(max_length=20)
    purpose = pw.CharField(max_length=32)
    failures = pw.IntegerField(default=0)
    locked_until = pw.BigIntegerField(null=True)
    updated_at = pw.BigIntegerField()

    class Meta:
        table_name = "otp_guard"
        indexes = ((("account", "to_number", "purpose"), True),)


# -- codes and sealing ----------------------------------------------------------------------------
def new_code(length: int) -> str:
    """``length`` random decimal digits from ``secrets`` (leading zeros kept)."""
    return f"{secrets.randbelow(10 ** length):0{length}d}"


def hash_code(otp_id: str, code: str) -> str:
    return digest(code, f"otp:{otp_id}")


def code_matches(otp: Otp, code: str) -> bool:
    return matches(code, otp.code_hash, f"otp:{otp.id}")


def _sealing_key() -> bytes:
    # HMAC-SHA256(instance secret, label) is a 256-bit key only this instance can derive.
    return bytes.fromhex(digest("sms-text", "otp-sealing-key"))


def seal(otp_id: str, text: str) -> bytes:
    nonce = os.urandom(12)
    from cryptography.hazmat.primitives.ciphers.aead import (
        AESGCM,  # on use: keeps start-up light
    )

    return nonce + AESGCM(_sealing_key()).encrypt(nonce, text.encode(), otp_id.encode())


def unseal(otp_id: str, blob: bytes) -> str:
    """The sealed text; raises InvalidTag if it was sealed under another secret or altered."""
    blob = bytes(blob)
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(_sealing_key()).decrypt(blob[:12], blob[12:], otp_id.encode()).decode()


# -- texts ----------------------------------------------------------------------------------------
def check_template(template: str) -> str:
    """A caller's template: must contain ``{code}``; only {code}, {app_name}, {minutes}."""
    names = _PLACEHOLDER.findall(template)
    unknown = sorted({n for n in names if n not in PLACEHOLDERS})
    if unknown:
        raise ValueError(f"unknown placeholder {{{unknown[0]}}}: use {{code}}, {{app_name}} or {{minutes}}")
    if "code" not in names:
        raise ValueError("must contain {code}")
    return template


def minutes_for(seconds: int) -> int:
    """Whole minutes shown in the text (rounded down: the code lasts at least that long)."""
    return max(1, seconds // 60)


def render_text(*, locale: str, code: str, minutes: int, app_name: str | None = None,
                template: str | None = None, android_app_hash: str | None = None,
                domain: str | None = None) -> str:
    """The SMS text. Lines: the template; the Android SMS Retriever app hash; last, the
    origin-bound line ``@domain #code`` read by WebOTP and iOS autofill (it must be last)."""
    if template is None:
        with_name, without = DEFAULT_TEMPLATES[locale]
        template = with_name if app_name else without
    values = {"code": code, "app_name": app_name or "", "minutes": str(minutes)}
    text = _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template)
    lines = [text]
    if android_app_hash:
        lines.append(android_app_hash)
    if domain:
        lines.append(f"@{domain} #{code}")
    return "\n".join(lines)


def mask(code: str) -> str:
    return "*" * len(code)


def render_pair(code: str, **parts: Any) -> tuple[str, str]:
    """(the text to transmit, the same text with the code masked for the message row)."""
    return render_text(code=code, **parts), render_text(code=mask(code), **parts)


def valid_domain(value: str) -> str:
    value = value.strip().lower().rstrip(".")
    if not _DOMAIN.match(value):
        raise ValueError("must be a host name such as example.com (no scheme, port or path)")
    return value


# -- limits ---------------------------------------------------------------------------------------
@dataclass
class LimitState:
    """What the limits say about one more send; ``retry_after_s`` > 0 means refused."""

    retry_after_s: int = 0
    reason: str = ""
    policy: str = ""
    headers: dict[str, str] = field(default_factory=dict)


def _policies(cfg: Config) -> str:
    return (f'"otp-resend";q=1;w={max(cfg.otp_resend_interval, 1)}, '
            f'"otp-number";q={cfg.otp_max_sends};w={cfg.otp_send_window}, '
            f'"otp-account";q={cfg.otp_account_max_sends};w={cfg.otp_account_window}')


def _seconds(ms: int) -> int:
    return max(1, math.ceil(ms / 1000))


def send_limits(cfg: Config, account_id: str, to: str, purpose: str, now: int) -> LimitState:
    """Check the send limits and the lock-out (call inside the send transaction)."""
    if not is_sqlite():
        # SQLite's write transaction already serialises sends; on PostgreSQL two sends to one
        # pair must not both count the same window (the lock ends with the transaction).
        db.execute_sql("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"otp:{account_id}:{to}:{purpose}",))
    refusals: list[tuple[int, str, str]] = []  # (retry ms, policy, reason)
    guard = _guard(account_id, to, purpose)
    if guard is not None and guard.locked_until and guard.locked_until > now:
        refusals.append((guard.locked_until - now, "otp-lockout",
                         "too many wrong codes for this number and purpose; locked out"))
    window_start = now - cfg.otp_send_window * 1000
    recent = [r.created_at for r in Otp.select(Otp.created_at).where(
        (Otp.account == account_id) & (Otp.to_number == to) & (Otp.purpose == purpose)
        & (Otp.created_at > window_start)).order_by(Otp.created_at)]
    if recent and now - recent[-1] < cfg.otp_resend_interval * 1000:
        refusals.append((recent[-1] + cfg.otp_resend_interval * 1000 - now, "otp-resend",
                         f"at most one code every {cfg.otp_resend_interval} s to a number for a purpose"))
    if len(recent) >= cfg.otp_max_sends:
        refusals.append((recent[-cfg.otp_max_sends] + cfg.otp_send_window * 1000 - now, "otp-number",
                         (f"at most {cfg.otp_max_sends} codes per {cfg.otp_send_window} s "
                         "to a number for a purpose")))
    in_window = Otp.select(Otp.created_at).where(
        (Otp.account == account_id) & (Otp.created_at > now - cfg.otp_account_window * 1000))
    acc_count = in_window.count()
    if acc_count >= cfg.otp_account_max_sends:
        # The send that must leave the window before one more is allowed.
        oldest = (in_window.order_by(Otp.created_at.desc()).offset(cfg.otp_account_max_sends - 1)
                  .limit(1).scalar())
        refusals.append((oldest + cfg.otp_account_window * 1000 - now, "otp-account",
                         (f"at most {cfg.otp_account_max_sends} codes per {cfg.otp_account_window} s "
                         "for this account")))
    state = LimitState(headers={"RateLimit-Policy": _policies(cfg)})
    if refusals:
        wait_ms, policy, reason = max(refusals)
        state.retry_after_s, state.policy, state.reason = _seconds(wait_ms), policy, reason
        state.headers["Retry-After"] = str(state.retry_after_s)
        state.headers["RateLimit"] = f'"{policy}";r=0;t={state.retry_after_s}'
        return state
    # Allowed: what remains after this send, for the tightest per-number window.
    left = cfg.otp_max_sends - len(recent) - 1
    reset = _seconds((recent[0] if recent else now) + cfg.otp_send_window * 1000 - now)
    acc_left = cfg.otp_account_max_sends - acc_count - 1
    state.headers["RateLimit"] = f'"otp-number";r={left};t={reset}, "otp-account";r={acc_left}'
    return state


def rate_limited(state: LimitState) -> ApiError:
    return ApiError("RATE_LIMITED", f"{state.reason}; retry in {state.retry_after_s} s",
                    headers=state.headers,
                    extra={"retry_after_seconds": state.retry_after_s, "policy": state.policy})


# -- send -----------------------------------------------------------------------------------------
def supersede(account_id: str, to: str, purpose: str, now: int) -> list[str]:
    """Close the pair's live OTPs (inside the send transaction). Their messages that have not
    left yet are cancelled; returns those message ids."""
    live = list(Otp.select(Otp.id, Otp.message_id, Otp.expires_at).where(
        (Otp.account == account_id) & (Otp.to_number == to) & (Otp.purpose == purpose) & (Otp.status == LIVE)))
    if not live:
        return []
    Otp.update(status=pw.Case(None, [(Otp.expires_at <= now, "expired")], "superseded"),
               sealed=None, closed_at=now).where(Otp.id << [o.id for o in live]).execute()
    cancelled = []
    for o in live:
        m = Message.get_or_none(Message.id == o.message_id)
        # Only while it is still waiting: once a channel holds it, the channel's sending_body
        # call answers NotSendable (the OTP is closed) or it has already gone out.
        if m is not None and m.status in ("queued", "scheduled") and messages.transition(
                m.id, "cancelled", error_code="OTP_SUPERSEDED", error_message="a newer code was sent"):
            cancelled.append(m.id)
    return cancelled


def create(*, otp_id: str, account_id: str, to: str, purpose: str, locale: str, code: str, text: str,
           message_id: str, max_attempts: int, now: int, expires_at: int) -> Otp:
    """Write the OTP row (inside the send transaction, with its message)."""
    return Otp.create(id=otp_id, account=account_id, to_number=to, purpose=purpose, locale=locale,
                      length=len(code), code_hash=hash_code(otp_id, code), sealed=seal(otp_id, text),
                      message_id=message_id, status=LIVE, attempts=0, max_attempts=max_attempts,
                      created_at=now, expires_at=expires_at)


# -- what the channel transmits -------------------------------------------------------------------
def body_source(m: Message) -> str | None:
    """For ``relaybox.messages.sending_body``: the real text of an OTP message, else None."""
    if m.priority != PRIORITIES["otp"]:
        return None
    o = Otp.select(Otp.id, Otp.status, Otp.sealed, Otp.expires_at).where(Otp.message_id == m.id).first()
    if o is None:
        return None  # an ordinary message sent in the otp lane
    if o.status == "expired" or (o.status == LIVE and now_ms() >= o.expires_at):
        raise NotSendable("the code expired before it was sent", status="expired", error_code="TTL_EXPIRED")
    if o.status != LIVE:
        raise NotSendable(f"the code is {o.status}; not sent", status="cancelled", error_code="OTP_WITHDRAWN")
    if o.sealed is None:
        raise NotSendable("the code's text is gone", status="failed", error_code="OTP_UNAVAILABLE")
    from cryptography.exceptions import InvalidTag

    try:
        return unseal(o.id, o.sealed)
    except InvalidTag:
        raise NotSendable("the code's text cannot be read (instance secret changed?)", status="failed",
                          error_code="OTP_UNAVAILABLE") from None


def body_for_sending(m: Message) -> str:
    """The text to transmit for ``m``: the real text for an OTP message, ``m.body`` otherwise."""
    text = body_source(m)
    return m.body if text is None else text


# -- verify ---------------------------------------------------------------------------------------
def effective_status(o: Otp, now: int) -> str:
    return "expired" if o.status == LIVE and now >= o.expires_at else o.status


def _guard(account_id: str, to: str, purpose: str) -> OtpGuard | None:
    return OtpGuard.get_or_none((OtpGuard.account == account_id) & (OtpGuard.to_number == to)
                                & (OtpGuard.purpose == purpose))


def lockout_ms(cfg: Config, failures: int) -> int:
    """Delay after ``failures`` consecutive wrong codes: none until a multiple of
    otp_max_attempts, then otp_lockout_seconds doubled for each earlier lock-out, up to a day."""
    if failures <= 0 or failures % cfg.otp_max_attempts:
        return 0
    n = failures // cfg.otp_max_attempts
    return min(cfg.otp_lockout_seconds * 2 ** min(n - 1, 20), MAX_LOCKOUT_S) * 1000


@dataclass
class VerifyOutcome:
    result: str                      # success | failed | expired
    otp: Otp
    reason: str | None = None        # wrong_code | max_attempts_reached | already_used | superseded
    retry_after_s: int | None = None
    events: list[Any] = field(default_factory=list)

    def answer(self) -> dict[str, Any]:
        o = self.otp
        data: dict[str, Any] = {"otp_id": o.id, "result": self.result}
        if self.reason:
            data["reason"] = self.reason
        usable = (self.result == "success" or self.reason == "wrong_code") and not self.retry_after_s
        data["attempts_remaining"] = max(0, o.max_attempts - o.attempts) if usable else 0
        if self.retry_after_s:
            data["retry_after_seconds"] = self.retry_after_s
        if self.result == "success":
            data["verified_at"] = iso(o.verified_at)
        data.update(to=o.to_number, purpose=o.purpose)
        return data


def _closed_outcome(o: Otp, now: int) -> VerifyOutcome | None:
    """The answer that needs no code check (and no write), or None."""
    status = effective_status(o, now)
    if status == "verified":
        return VerifyOutcome("failed", o, "already_used")
    if status == "superseded":
        return VerifyOutcome("failed", o, "superseded")
    if status == "expired":
        return VerifyOutcome("expired", o)
    if status == "failed" or o.attempts >= o.max_attempts:
        return VerifyOutcome("failed", o, "max_attempts_reached")
    return None


# The verify path runs on every code a user types (target: p99 <= 10 ms at 32 clients), so its
# statements are plain SQL written once instead of built by the query builder on each call
# (that cost more than the database work). Standard SQL: SQLite >= 3.35 and PostgreSQL.
_OTP_COLUMNS = ("id", "account_id", "to_number", "purpose", "locale", "length", "code_hash", "message_id",
                "status", "attempts", "max_attempts", "created_at", "expires_at", "verified_at", "closed_at")
# The OTP and its pair's lock-out in one read (the verify path asks for both).
_WITH_LOCK = (f"SELECT {', '.join('o.' + c for c in _OTP_COLUMNS)}, g.locked_until FROM otp o "
              "LEFT JOIN otp_guard g ON g.account_id = o.account_id AND g.to_number = o.to_number "
              "AND g.purpose = o.purpose ")
_SQL = {
    "by_id": _WITH_LOCK + "WHERE o.id = ? AND o.account_id = ?",
    "latest": _WITH_LOCK + "WHERE o.account_id = ? AND o.to_number = ? AND o.purpose = ? "
              "ORDER BY o.created_at DESC, o.id DESC LIMIT 1",
    "lock": "SELECT locked_until FROM otp_guard WHERE account_id = ? AND to_number = ? AND purpose = ?",
    "right": "UPDATE otp SET status = 'verified', verified_at = ?, closed_at = ?, sealed = NULL, "
             "attempts = attempts + 1 "
             "WHERE id = ? AND status = 'sent' AND attempts < max_attempts AND expires_at > ?",
    "wrong": "UPDATE otp SET attempts = attempts + 1, "
             "status = CASE WHEN attempts + 1 >= max_attempts THEN 'failed' ELSE status END, "
             "closed_at = CASE WHEN attempts + 1 >= max_attempts THEN ? ELSE closed_at END "
             "WHERE id = ? AND status = 'sent' AND attempts < max_attempts AND expires_at > ?",
    # One more wrong code for the pair; an upsert, so two first failures cannot collide, and a
    # day without failures starts the count again.
    "fail": "INSERT INTO otp_guard (account_id, to_number, purpose, failures, updated_at) VALUES (?, ?, ?, 1, ?) "
            "ON CONFLICT (account_id, to_number, purpose) DO UPDATE SET "
            "failures = CASE WHEN otp_guard.updated_at < ? THEN 1 ELSE otp_guard.failures + 1 END, "
            "locked_until = CASE WHEN otp_guard.updated_at < ? THEN NULL ELSE otp_guard.locked_until END, "
            "updated_at = ? RETURNING failures",
    "set_lock": "UPDATE otp_guard SET locked_until = ? WHERE account_id = ? AND to_number = ? AND purpose = ?",
    "forgive": "DELETE FROM otp_guard WHERE account_id = ? AND to_number = ? AND purpose = ?",
}
_sql_for_param: dict[str, dict[str, str]] = {}


def _run(name: str, *params: Any) -> Any:
    """Execute one of ``_SQL`` with the driver's placeholder style; returns the cursor."""
    style = db.param
    table = _sql_for_param.get(style)
    if table is None:
        table = _sql_for_param[style] = {k: v.replace("?", style) for k, v in _SQL.items()}
    return db.execute_sql(table[name], params)


def _otp_of(row: tuple[Any, ...] | None) -> Otp | None:
    if row is None:
        return None
    o = Otp(**dict(zip(_OTP_COLUMNS, row[:-1], strict=True)))
    o._locked_until = row[-1]  # the pair's lock-out as read with the row (see verify)
    return o


def find(account_id: str, otp_id: str) -> Otp | None:
    """The account's OTP by id (without its sealed text)."""
    return _otp_of(_run("by_id", otp_id, account_id).fetchone())


def latest(account_id: str, to: str, purpose: str) -> Otp | None:
    """The most recent OTP sent to ``to`` for ``purpose`` (the live one, if any)."""
    return _otp_of(_run("latest", account_id, to, purpose).fetchone())


def verify(cfg: Config, o: Otp, code: str, now: int) -> VerifyOutcome:
    """Check ``code`` against ``o``. Attempts are counted with conditional updates, so
    concurrent requests can never use more than ``max_attempts``."""
    closed = _closed_outcome(o, now)
    if closed is not None:
        return closed
    pair = (o.account_id, o.to_number, o.purpose)
    if hasattr(o, "_locked_until"):  # read with the row by find() / latest()
        locked_until = o._locked_until
    else:
        lock_row = _run("lock", *pair).fetchone()
        locked_until = lock_row[0] if lock_row else None
    if locked_until and locked_until > now:
        return VerifyOutcome("failed", o, "max_attempts_reached", retry_after_s=_seconds(locked_until - now))
    right = code_matches(o, code)

    def write() -> VerifyOutcome | None:
        if right:
            if _run("right", now, now, o.id, now).rowcount == 1:
                _run("forgive", *pair)
                evs = events.record_many([{"account": o.account_id, "type": "otp.verified", "message_id": None,
                                           "payload": {
                    "event": "otp.verified", "otp_id": o.id, "to": o.to_number, "purpose": o.purpose,
                    "verified_at": iso(now, millis=False), "timestamp": iso(now, millis=False),
                    "unix_timestamp": now}}])
                o.status, o.verified_at, o.attempts = "verified", now, o.attempts + 1
                return VerifyOutcome("success", o, events=evs)
        elif _run("wrong", now, o.id, now).rowcount == 1:
            forgotten = now - GUARD_FORGET_MS
            failures = _run("fail", *pair, now, forgotten, forgotten, now).fetchone()[0]
            lock = lockout_ms(cfg, failures)
            if lock:
                _run("set_lock", now + lock, *pair)
            o.attempts += 1
            if o.attempts >= o.max_attempts:
                o.status = "failed"
            return VerifyOutcome("failed", o, "wrong_code", retry_after_s=_seconds(lock) if lock else None)
        return None

    # Concurrent verifies share one commit (group commit); each in its own savepoint.
    done = group_write(write)
    if done is not None:
        return done
    # Lost a race with another request on the same OTP: answer from the row as it is now.
    fresh = find(o.account_id, o.id) or o
    return _closed_outcome(fresh, now) or VerifyOutcome("failed", fresh, "wrong_code")


# -- views ----------------------------------------------------------------------------------------
def view(o: Otp, now: int, message: Message | None = None) -> dict[str, Any]:
    """``GET /otp/{id}``: state, attempts and times; never the code."""
    status = effective_status(o, now)
    return {
        "otp_id": o.id, "status": status, "to": o.to_number, "purpose": o.purpose, "locale": o.locale,
        "length": o.length, "attempts": o.attempts, "max_attempts": o.max_attempts,
        "attempts_remaining": max(0, o.max_attempts - o.attempts) if status == LIVE else 0,
        "expires_in_seconds": max(0, (o.expires_at - now) // 1000),
        "created_at": iso(o.created_at), "expires_at": iso(o.expires_at), "verified_at": iso(o.verified_at),
        "closed_at": iso(o.closed_at), "message_id": o.message_id,
        "message_status": message.status if message is not None else None,
    }


# -- housekeeping ---------------------------------------------------------------------------------
def wipe_for_messages(message_ids: list[str]) -> int:
    """Drop the sealed text of OTPs whose messages will never be transmitted again."""
    if not message_ids:
        return 0
    ids = [o.id for o in Otp.select(Otp.id).where((Otp.message_id << message_ids) & Otp.sealed.is_null(False))]
    if not ids:
        return 0
    with write_tx():
        return Otp.update(sealed=None).where(Otp.id << ids).execute()


def on_events(evs: list[Any]) -> None:
    """Event listener: wipe at once when an OTP message is sent or ends (the sweep is the backstop)."""
    otp_lane = PRIORITIES["otp"]
    done = [e.message_id for e in evs
            if e.type == "message.status" and e.message_id and e.payload.get("status") in MESSAGE_DONE
            # transition() tags its events with the message's priority: skip other lanes cheaply.
            and getattr(e, "message_priority", otp_lane) == otp_lane]
    wipe_for_messages(done)


def expire_due(now: int) -> int:
    """Persist the expiry of codes whose time has passed (and drop their sealed text)."""
    expired = [o.id for o in Otp.select(Otp.id).where((Otp.status == LIVE) & (Otp.expires_at <= now)).limit(1000)]
    if not expired:
        return 0
    with write_tx():
        return (Otp.update(status="expired", closed_at=Otp.expires_at, sealed=None)
                .where((Otp.id << expired) & (Otp.status == LIVE)).execute())


def wipe_stale() -> int:
    """Backstop of :func:`on_events` (a listener call is lost if the process dies right after a
    commit): drop sealed texts of closed OTPs and of messages that are done or gone."""
    stale = [o.id for o in Otp.select(Otp.id)
             .join(Message, pw.JOIN.LEFT_OUTER, on=(Message.id == Otp.message_id))
             .where(Otp.sealed.is_null(False)
                    & ((Otp.status != LIVE) | Message.id.is_null() | (Message.status << list(MESSAGE_DONE))))
             .limit(1000)]
    if not stale:
        return 0
    with write_tx():
        return Otp.update(sealed=None).where(Otp.id << stale).execute()


def prune(now: int) -> None:
    """Forget old sends (they only count for the limits) and stale lock-out counters."""
    with write_tx():
        Otp.delete().where(Otp.created_at < now - KEEP_ROWS_MS).execute()
        OtpGuard.delete().where((OtpGuard.updated_at < now - GUARD_FORGET_MS)
                                & ((OtpGuard.locked_until.is_null()) | (OtpGuard.locked_until < now))).execute()
