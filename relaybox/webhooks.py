"""Webhooks: Standard Webhooks signing, delivery, the retry schedule and the attempt log.

How an event becomes a signed POST:

1. Something happens and its module writes an :class:`~relaybox.models.Event` row in the same
   transaction (``message.status`` from :mod:`relaybox.messages`, ``message.inbound`` and
   ``device.online``/``device.offline`` from the channels, ``otp.verified`` from OTP).
2. :meth:`WebhookService.fan_out` turns every Event row whose ``webhooked_at`` is still NULL into
   at most one :class:`WebhookDelivery` row — the URL is chosen then (per-message
   ``status_callback`` > global ``status_url``; per-number ``inbound_callback`` > global
   ``inbound_url``) and the exact JSON body is frozen, so every retry signs the same bytes — and
   stamps ``webhooked_at`` in the same transaction. A restart resumes exactly there.
3. :meth:`WebhookService.dispatch` leases due deliveries (``next_attempt_at`` passed) up to the
   free capacity of a small pool of daemon threads and hands them over; each attempt is one
   :class:`WebhookAttempt` row and moves the delivery to its next state.

Nothing is held only in memory: the event listener and the Huey task ``webhooks_run`` are nudges,
and the housekeeper's sweeper nudges again whenever unprocessed events or due retries exist,
so retries survive a restart (they are rows with ``next_attempt_at``, not timers).

Decisions:

- ``accepted`` is never sent (the message answer of ``POST /sms/send`` already says it).
  ``scheduled`` and ``cancelled`` *are* sent: CONTRACT.md promises one status webhook per
  transition, a receiver must learn that a message will only go out later, and ``cancelled``
  is a terminal state it cannot otherwise see.
- ``otp.verified``, ``device.online`` and ``device.offline`` go to the status URL; ``message.inbound``
  to the inbound URL. An event without an account (instance-wide) belongs to the owner account.
- ``webhook-id`` is the delivery id (``whd_<ULID>``): stable across retries and redeliveries.
- 2xx is success. ``410 Gone`` disables that URL for the account (later events for it are stored
  as ``disabled`` deliveries, nothing is sent) until the URL is set again with ``PUT /webhooks``
  or a redelivery / test to it succeeds. ``Retry-After`` on 429/503 is honoured: the next
  attempt is never earlier than the receiver asked (nor earlier than the schedule). Anything
  else — other statuses, redirects (never followed), network errors, timeouts (15 s) — is
  retried on ``webhook_retry_schedule`` with ±10 % jitter, then the delivery is ``failed``.
- Delivery is at-least-once: a crash between the receiver's answer and our log line means one
  more attempt with the same ``webhook-id`` after the lease (20 s) runs out.
- Signing secrets are not stored: ``whsec_`` + HMAC(instance secret, account + random salt), so the
  database holds only the salt. A rotation keeps the previous secret valid (both signatures are
  sent, as the Standard Webhooks spec allows) for ``keep_previous_seconds`` (default 24 h).
"""
from __future__ import annotations

import atexit
import base64
import email.utils
import hashlib
import json
import logging
import queue
import random
import re
import secrets
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import peewee as pw
from standardwebhooks import Webhook

from relaybox import __version__, events
from relaybox.db import BaseModel, JSONField, db, write_tx
from relaybox.ids import new_id
from relaybox.models import Account, Event, Message
from relaybox.security import digest
from relaybox.timeutil import iso, now_ms

if TYPE_CHECKING:  # pragma: no cover
    import requests

    from relaybox.runtime import Runtime

log = logging.getLogger("relaybox.webhooks")

TIMEOUT_S = 15.0
LEASE_MS = int(TIMEOUT_S * 1000) + 5000       # an attempt never holds a delivery longer than this
RESPONSE_KEEP = 1024                          # bytes of the receiver's answer kept in the log
RETRY_AFTER_CAP_S = 86400
FANOUT_EVERY_S = 0.25                         # at most ~4 fan-out runs a second from event nudges
DEFAULT_KEEP_PREVIOUS_S = 86400
RETENTION_MS = 30 * 86_400_000                # finished deliveries and their attempts are kept 30 days
BIN_KEEP = 100
BIN_MAX_BYTES = 64 * 1024

STATUS_EVENTS = frozenset({"message.status", "otp.verified", "device.online", "device.offline"})
INBOUND_EVENTS = frozenset({"message.inbound"})
TEST_EVENT = "webhook.test"
EVENT_TYPES = tuple(sorted(STATUS_EVENTS | INBOUND_EVENTS | {TEST_EVENT}))
NOT_SENT_STATUSES = frozenset({"accepted"})
STATES = ("pending", "succeeded", "failed", "disabled")


# -- tables ------------------------------------------------------------------------------------
class WebhookSettings(BaseModel):
    """Per account: the global URLs and the salt its signing secret is derived from."""

    account = pw.ForeignKeyField(Account, primary_key=True, on_delete="CASCADE")
    status_url = pw.CharField(max_length=2048, null=True)
    inbound_url = pw.CharField(max_length=2048, null=True)
    secret_salt = pw.CharField(max_length=64)
    secret_rotated_at = pw.BigIntegerField()
    previous_salt = pw.CharField(max_length=64, null=True)
    previous_until = pw.BigIntegerField(null=True)
    updated_at = pw.BigIntegerField()


class NumberWebhook(BaseModel):
    """Per sender number: ``inbound_callback`` overrides the account's ``inbound_url``."""

    account = pw.ForeignKeyField(Account, on_delete="CASCADE")
    phone = pw.CharField(max_length=20)
    inbound_callback = pw.CharField(max_length=2048, null=True)
    updated_at = pw.BigIntegerField()

    class Meta:
        indexes = ((("account", "phone"), True),)


class DisabledUrl(BaseModel):
    """A URL that answered ``410 Gone``: nothing more is sent to it until it is set again."""

    account = pw.ForeignKeyField(Account, on_delete="CASCADE")
    url_hash = pw.CharField(max_length=64)
    url = pw.CharField(max_length=2048)
    delivery_id = pw.CharField(max_length=40, null=True)
    disabled_at = pw.BigIntegerField()
    reason = pw.CharField(max_length=200)

    class Meta:
        indexes = ((("account", "url_hash"), True),)


class WebhookDelivery(BaseModel):
    """One event to one URL; retries are this row's ``next_attempt_at``, never in-memory timers."""

    id = pw.CharField(primary_key=True, max_length=40)
    account = pw.ForeignKeyField(Account, on_delete="CASCADE")
    event_id = pw.CharField(max_length=40, null=True, unique=True)
    event_type = pw.CharField(max_length=32)
    message_id = pw.CharField(max_length=40, null=True, index=True)
    url = pw.CharField(max_length=2048)
    url_source = pw.CharField(max_length=20)   # status_url | status_callback | inbound_url | inbound_callback | test
    body = pw.TextField()                      # the exact bytes every attempt signs
    state = pw.CharField(max_length=10)        # pending | succeeded | failed | disabled
    attempts = pw.IntegerField(default=0)
    schedule_start = pw.IntegerField(default=0)  # attempts made before the current schedule began
    manual = pw.BooleanField(default=False)    # redelivered or test: ignores a disabled URL
    next_attempt_at = pw.BigIntegerField(null=True)
    leased_until = pw.BigIntegerField(null=True)
    lease = pw.CharField(max_length=32, null=True)
    last_status = pw.IntegerField(null=True)
    last_error = pw.TextField(null=True)
    created_at = pw.BigIntegerField()
    updated_at = pw.BigIntegerField()
    completed_at = pw.BigIntegerField(null=True, index=True)

    class Meta:
        indexes = (
            (("state", "next_attempt_at"), False),
            (("account", "id"), False),
            (("account", "event_type", "id"), False),
        )


class WebhookAttempt(BaseModel):
    """The attempt log: one row per HTTP request made (or tried) for a delivery."""

    delivery = pw.ForeignKeyField(WebhookDelivery, backref="attempt_rows", on_delete="CASCADE")
    number = pw.IntegerField()
    at = pw.BigIntegerField()
    url = pw.CharField(max_length=2048)
    trigger = pw.CharField(max_length=10)      # schedule | redeliver | test
    http_status = pw.IntegerField(null=True)
    error = pw.TextField(null=True)
    latency_ms = pw.IntegerField()
    response_body = pw.TextField(null=True)
    outcome = pw.CharField(max_length=10)      # succeeded | retry | failed | disabled
    next_attempt_at = pw.BigIntegerField(null=True)

    class Meta:
        indexes = ((("delivery", "number"), False),)


class WebhookBinEntry(BaseModel):
    """The test bins (``/status/bin``, ``/messages/bin``): last 100 payloads per bin and owner."""

    bin = pw.CharField(max_length=10)          # status | messages
    account = pw.ForeignKeyField(Account, null=True, on_delete="CASCADE")  # NULL: instance-wide
    payload = JSONField(null=True)
    headers = JSONField(default=dict)
    size = pw.IntegerField()
    received_at = pw.BigIntegerField()

    class Meta:
        indexes = ((("bin", "account", "id"), False),)


# -- secrets -----------------------------------------------------------------------------------
def _secret_from_salt(account_id: str, salt: str) -> str:
    raw = bytes.fromhex(digest(f"{account_id}:{salt}", "webhook-secret"))
    return "whsec_" + base64.b64encode(raw).decode()


def settings_for(account_id: str) -> WebhookSettings:
    """The account's webhook settings, created (with a fresh secret salt) on first use."""
    row = WebhookSettings.get_or_none(WebhookSettings.account == account_id)
    if row is not None:
        return row
    now = now_ms()
    with write_tx():
        WebhookSettings.insert(account=account_id, secret_salt=secrets.token_hex(16), secret_rotated_at=now,
                               updated_at=now).on_conflict_ignore().execute()
    return WebhookSettings.get(WebhookSettings.account == account_id)


def current_secret(account_id: str) -> str:
    s = settings_for(account_id)
    return _secret_from_salt(account_id, s.secret_salt)


def signing_secrets(account_id: str, now: int | None = None) -> list[str]:
    """The secrets to sign with: the current one, plus the previous one during its grace period."""
    s = settings_for(account_id)
    out = [_secret_from_salt(account_id, s.secret_salt)]
    if s.previous_salt and (s.previous_until or 0) > (now or now_ms()):
        out.append(_secret_from_salt(account_id, s.previous_salt))
    return out


def rotate_secret(account_id: str, keep_previous_seconds: int = DEFAULT_KEEP_PREVIOUS_S) -> WebhookSettings:
    settings_for(account_id)
    now = now_ms()
    with write_tx():
        s = WebhookSettings.get(WebhookSettings.account == account_id)
        s.previous_salt = s.secret_salt if keep_previous_seconds > 0 else None
        s.previous_until = now + keep_previous_seconds * 1000 if keep_previous_seconds > 0 else None
        s.secret_salt = secrets.token_hex(16)
        s.secret_rotated_at = now
        s.updated_at = now
        s.save()
    return s


def sign(secrets_: Iterable[str], msg_id: str, timestamp: int, body: str) -> str:
    """``webhook-signature`` value: ``v1,<b64>`` per secret, space separated (Standard Webhooks)."""
    when = datetime.fromtimestamp(timestamp, tz=UTC)
    return " ".join(Webhook(s).sign(msg_id, when, body) for s in secrets_)


_DISABLED_NOTE = "URL disabled after 410 Gone; set it again to resume"
_INSERT_COLUMNS = ("id", "account_id", "event_id", "event_type", "message_id", "url", "url_source", "body",
                   "state", "next_attempt_at", "last_error", "created_at", "updated_at", "completed_at")
_insert_cache: dict[str, str] = {}


def _insert_sql() -> str:
    """``INSERT ... (ignore a duplicate event_id)`` for ``executemany``, built once per database."""
    from relaybox.db import is_sqlite

    key = type(db.obj).__name__
    sql = _insert_cache.get(key)
    if sql is None:
        cols = ", ".join(f'"{c}"' for c in _INSERT_COLUMNS)
        marks = ", ".join([db.obj.param] * len(_INSERT_COLUMNS))
        table = WebhookDelivery._meta.table_name
        defaults = ', "attempts", "schedule_start", "manual"'
        if is_sqlite():
            sql = f'INSERT OR IGNORE INTO "{table}" ({cols}{defaults}) VALUES ({marks}, 0, 0, 0)'
        else:
            sql = (f'INSERT INTO "{table}" ({cols}{defaults}) VALUES ({marks}, 0, 0, false) '
                   "ON CONFLICT DO NOTHING")
        _insert_cache[key] = sql
    return sql


# -- configuration helpers (also used by the accounts and admin areas) -----------------------
def _url_hash(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()


def set_urls(account_id: str, changes: dict[str, str | None]) -> WebhookSettings:
    """Set ``status_url`` / ``inbound_url`` (None clears). Setting a URL re-enables it after a 410."""
    settings_for(account_id)
    with write_tx():
        s = WebhookSettings.get(WebhookSettings.account == account_id)
        for key, value in changes.items():
            setattr(s, key, value)
            if value:
                enable_url(account_id, value)
        s.updated_at = now_ms()
        s.save()
    return s


def enable_url(account_id: str, url: str) -> bool:
    n = (DisabledUrl.delete()
         .where((DisabledUrl.account == account_id) & (DisabledUrl.url_hash == _url_hash(url))).execute())
    if n:
        log.info("webhook URL %s enabled again for %s", url, account_id)
    return bool(n)


def disabled_urls(account_id: str) -> list[dict[str, Any]]:
    return [{"url": d.url, "disabled_at": iso(d.disabled_at), "reason": d.reason, "delivery_id": d.delivery_id}
            for d in DisabledUrl.select().where(DisabledUrl.account == account_id).order_by(DisabledUrl.id)]


def inbound_callback_for(account_id: str, phone: str) -> str | None:
    row = NumberWebhook.get_or_none((NumberWebhook.account == account_id) & (NumberWebhook.phone == phone))
    return row.inbound_callback if row else None


def inbound_callbacks(account_id: str) -> dict[str, str | None]:
    """``{phone: inbound_callback}`` for ``GET /numbers``."""
    return {r.phone: r.inbound_callback for r in NumberWebhook.select().where(NumberWebhook.account == account_id)}


def set_inbound_callback(account_id: str, phone: str, url: str | None) -> None:
    now = now_ms()
    with write_tx():
        (NumberWebhook.insert(account=account_id, phone=phone, inbound_callback=url, updated_at=now)
         .on_conflict(conflict_target=[NumberWebhook.account, NumberWebhook.phone],
                      update={NumberWebhook.inbound_callback: url, NumberWebhook.updated_at: now})
         .execute())
        if url:
            enable_url(account_id, url)


# -- views -------------------------------------------------------------------------------------
def max_attempts(d: WebhookDelivery, schedule: list[float]) -> int:
    return d.attempts if d.event_type == TEST_EVENT else d.schedule_start + len(schedule)


def delivery_view(d: WebhookDelivery, schedule: list[float], *, with_payload: bool = True) -> dict[str, Any]:
    now = now_ms()
    out: dict[str, Any] = {
        "id": d.id,
        "webhook_id": d.id,
        "event": d.event_type,
        "event_id": d.event_id,
        "message_id": d.message_id,
        "url": d.url,
        "url_source": d.url_source,
        "state": d.state,
        "in_flight": bool(d.state == "pending" and d.leased_until and d.leased_until > now),
        "attempts": d.attempts,
        "max_attempts": max_attempts(d, schedule),
        "next_attempt_at": iso(d.next_attempt_at) if d.state == "pending" else None,
        "last_status": d.last_status,
        "last_error": d.last_error,
        "created_at": iso(d.created_at),
        "updated_at": iso(d.updated_at),
        "completed_at": iso(d.completed_at),
    }
    if with_payload:
        out["payload"] = json.loads(d.body)
    return out


def attempt_view(a: WebhookAttempt) -> dict[str, Any]:
    return {
        "attempt": a.number,
        "at": iso(a.at),
        "unix_timestamp": a.at,
        "url": a.url,
        "trigger": a.trigger,
        "http_status": a.http_status,
        "error": a.error,
        "latency_ms": a.latency_ms,
        "response_body": a.response_body,
        "outcome": a.outcome,
        "next_attempt_at": iso(a.next_attempt_at),
    }


def deliveries_for_message(message_id: str) -> list[WebhookDelivery]:
    """For the admin's message page: the webhooks of one message, oldest first."""
    return list(WebhookDelivery.select().where(WebhookDelivery.message_id == message_id)
                .order_by(WebhookDelivery.id))


# -- sending -----------------------------------------------------------------------------------
@dataclass
class AttemptResult:
    http_status: int | None
    error: str | None
    latency_ms: int
    response_body: str | None
    retry_after: float | None


_local = threading.local()


def _session() -> requests.Session:
    import requests  # imported on first delivery: most boxes never pay its ~5 MB

    s = getattr(_local, "session", None)
    if s is None:
        s = requests.Session()
        # No proxies or .netrc from the environment: receivers are often on the LAN or loopback.
        s.trust_env = False
        _local.session = s
    return s


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP-date), capped at 24 h."""
    if not value:
        return None
    value = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return min(float(value), RETRY_AFTER_CAP_S)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(max(0.0, when.timestamp() - time.time()), RETRY_AFTER_CAP_S)


def _network_error(exc: Exception) -> str:
    import requests

    if isinstance(exc, requests.Timeout):
        return f"timeout: no answer within {TIMEOUT_S:g} s"
    text = str(exc)
    m = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if isinstance(exc, requests.ConnectionError):
        return "connection error: " + (m.group(1).strip() if m else type(exc).__name__)
    return f"{type(exc).__name__}: {text}"[:300]


def post_signed(url: str, body: str, msg_id: str, secrets_: list[str]) -> AttemptResult:
    """One POST: signed now, 15 s timeout, redirects not followed, first 1 KB of the answer kept."""
    ts = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": f"relaybox-webhooks/{__version__}",
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(secrets_, msg_id, ts, body),
    }
    import requests

    t0 = time.monotonic()
    try:
        resp = _session().post(url, data=body.encode(), headers=headers, timeout=TIMEOUT_S,
                               allow_redirects=False, stream=True)
    except requests.RequestException as exc:
        return AttemptResult(None, _network_error(exc), int((time.monotonic() - t0) * 1000), None, None)
    try:
        try:
            chunk = resp.raw.read(RESPONSE_KEEP, decode_content=True) or b""
        except Exception:  # noqa: BLE001 - the status is what counts; the body is only for the log
            chunk = b""
        latency = int((time.monotonic() - t0) * 1000)
        error = None
        if 300 <= resp.status_code < 400:
            error = f"redirect not followed (Location: {resp.headers.get('Location', '')[:200]})"
        return AttemptResult(resp.status_code, error, latency,
                             chunk[:RESPONSE_KEEP].decode("utf-8", "replace"),
                             parse_retry_after(resp.headers.get("Retry-After"))
                             if resp.status_code in (429, 503) else None)
    finally:
        resp.close()


class DeliveryPool:
    """A fixed number of daemon threads that run attempts.

    Not ``ThreadPoolExecutor``: its threads are joined at interpreter exit, so a receiver that
    hangs would hold up a shutdown by the full timeout. Work is only handed over when a thread
    is free (see :meth:`free`), so the backlog stays in the database, not in memory.
    """

    def __init__(self, size: int, run: Callable[..., None], after: Callable[[], None] | None = None,
                 name: str = "webhook") -> None:
        self.size = size
        self._run = run
        self._after = after
        self._name = name
        self._q: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._busy = 0
        self._threads: list[threading.Thread] = []
        self._stopped = False

    def free(self) -> int:
        with self._lock:
            return 0 if self._stopped else self.size - self._busy

    def submit(self, *item: Any) -> None:
        with self._lock:
            self._busy += 1
            if len(self._threads) < min(self.size, self._busy):
                t = threading.Thread(target=self._loop, name=f"{self._name}-{len(self._threads) + 1}", daemon=True)
                self._threads.append(t)
                t.start()
        self._q.put(item)

    def _loop(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            try:
                self._run(*item)
            except Exception:
                log.exception("webhook attempt crashed")
            finally:
                with self._lock:
                    self._busy -= 1
                    stopped = self._stopped
            if self._after is not None and not stopped:
                try:
                    self._after()
                except Exception:
                    log.exception("webhook dispatch after an attempt failed")

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            n = len(self._threads)
        for _ in range(n):
            self._q.put(None)


# -- the service -------------------------------------------------------------------------------
class WebhookService:
    """Fan-out, leasing and attempts for one runtime (``app.extensions["relaybox.webhooks"]``)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.schedule: list[float] = list(runtime.config.webhook_retry_schedule)
        self.pool = DeliveryPool(runtime.config.webhook_workers, self._run, after=self.dispatch)
        self.manual_pool = DeliveryPool(2, self._run, name="webhook-test")
        self._inflight: dict[str, str] = {}          # delivery id -> URL, attempts running here
        self._inflight_urls: dict[str, int] = {}     # URL -> attempts running here
        self._count_lock = threading.Lock()
        self.per_url = max(1, self.pool.size // 2)
        self._new_rows = False
        self._scan_after = 0.0
        self._fan_lock = threading.Lock()
        self._dispatch_lock = threading.Lock()
        self._queued_at = 0.0
        self._last_run = 0.0
        self._last_prune = 0.0
        self._owner_id: str | None = None
        self.task: Callable[[], Any] | None = None

    # -- nudges ----------------------------------------------------------------------------
    def nudge(self, force: bool = False) -> None:
        """Ask the queue to run fan-out + dispatch.

        Coalesced: one task pending at a time, and (unless ``force``) no new run within
        ``FANOUT_EVERY_S`` of the last one — under load the events of that window are handled
        as one batch by the next nudge or by the sweeper, which costs far less per event than a
        run per request."""
        if not self.runtime.started or self.task is None:
            return
        now = time.monotonic()
        with self._count_lock:
            if self._queued_at and now - self._queued_at < 10.0:
                return  # a task is waiting; after 10 s it counts as lost (the queue has no acks)
            if not force and now - self._last_run < FANOUT_EVERY_S:
                return
            self._queued_at = now
        try:
            self.task()
        except Exception:
            self._queued_at = 0.0
            log.exception("could not enqueue webhooks_run")

    def on_events(self, evs: list[Event]) -> None:
        if any(e.type in STATUS_EVENTS or e.type in INBOUND_EVENTS for e in evs):
            self.nudge()

    def run_task(self) -> int:
        """The Huey task: turn new events into deliveries, then start what is due."""
        self._queued_at = 0.0
        self._last_run = time.monotonic()
        made = self.fan_out()
        self.dispatch()
        return made

    def sweep(self) -> None:
        """Every housekeeping tick: nudge when events wait or retries are due; prune now and then."""
        now = now_ms()
        pending_events = Event.select(Event.id).where(Event.webhooked_at.is_null()).limit(1).exists()
        due = self.pool.free() > 0 and self._due_query(now).limit(1).exists()
        if pending_events or due:
            self.nudge(force=True)
        if time.monotonic() - self._last_prune > 600:
            self._last_prune = time.monotonic()
            self.prune()

    def prune(self) -> int:
        """Forget finished deliveries after 30 days; end test sends a restart cut short."""
        now = now_ms()
        with write_tx():
            (WebhookDelivery.update(state="failed", last_error="interrupted by a restart", leased_until=None,
                                    lease=None, updated_at=now, completed_at=now)
             .where((WebhookDelivery.state == "pending") & WebhookDelivery.next_attempt_at.is_null()
                    & (WebhookDelivery.leased_until < now)).execute())
            return (WebhookDelivery.delete()
                    .where((WebhookDelivery.state != "pending")
                           & (WebhookDelivery.completed_at < now - RETENTION_MS)).execute())

    # -- fan-out ---------------------------------------------------------------------------
    def owner_id(self) -> str | None:
        if self._owner_id is None:
            from relaybox.accounts import owner_account

            owner = owner_account()
            self._owner_id = owner.id if owner else None
        return self._owner_id

    def fan_out(self, limit: int = 500) -> int:
        """Every unprocessed Event → at most one delivery; returns how many deliveries were made."""
        made = 0
        with self._fan_lock:
            for _ in range(1000):  # bounded; each pass takes up to ``limit`` events
                n, seen = self._fan_out_once(limit)
                made += n
                if seen < limit:
                    break
        return made

    def _fan_out_once(self, limit: int) -> tuple[int, int]:
        """One batch. Reads outside the write lock; the unique ``event_id`` makes a concurrent
        fan-out (another process) harmless. Rows go in with one cached ``executemany``: at API
        rates peewee's per-row statement building cost more than the writes themselves.

        A target is a per-message ``status_callback``, a per-number inbound callback or the
        account's URL (an account that never opened its webhook settings has no settings row
        but may still have callbacks). Payloads are read as text and decoded only for events
        that have somewhere to go: on a box without webhooks that decoding was most of the
        fan-out's cost."""
        evs = list(Event.select(Event.id, Event.account, Event.type, Event.message_id,
                                Event.payload.cast("TEXT"))
                   .where(Event.webhooked_at.is_null()).order_by(Event.created_at, Event.id).limit(limit)
                   .tuples())
        if not evs:
            return 0, 0
        now = now_ms()
        owner = self.owner_id() if any(e[1] is None for e in evs) else None
        accounts = list({e[1] or owner for e in evs} - {None})
        conf = {s.account_id: s for s in WebhookSettings.select().where(WebhookSettings.account << accounts)}
        msg_ids = [e[3] for e in evs if e[2] == "message.status" and e[3]]
        callbacks: dict[str, str] = {}
        for i in range(0, len(msg_ids), 300):
            callbacks.update(Message.select(Message.id, Message.status_callback)
                             .where((Message.id << msg_ids[i:i + 300]) & Message.status_callback.is_null(False))
                             .tuples())
        numbers: dict[tuple[str, str], str | None] = {}
        if any(e[2] in INBOUND_EVENTS for e in evs):
            numbers = {(r.account_id, r.phone): r.inbound_callback
                       for r in NumberWebhook.select().where(NumberWebhook.account << accounts)}
        if not conf and not callbacks and not any(numbers.values()):
            self._mark_events([e[0] for e in evs], now)  # nowhere to send any of them
            return 0, len(evs)
        disabled = {(d.account_id, d.url_hash) for d in
                    DisabledUrl.select(DisabledUrl.account, DisabledUrl.url_hash)
                    .where(DisabledUrl.account << accounts)}
        first = now + int(self.schedule[0] * 1000)
        rows: list[tuple[Any, ...]] = []
        for event_id, account_id, type_, message_id, raw in evs:
            account_id = account_id or owner
            target = None if account_id is None else \
                self._target(type_, raw, message_id, conf.get(account_id), callbacks, numbers, account_id)
            if target is None:
                continue
            url, source, payload = target
            if not isinstance(payload, dict):
                payload = {"data": payload}
            if "event" not in payload:
                payload = {"event": type_, **payload}
            off = (account_id, _url_hash(url)) in disabled
            rows.append((new_id("whd"), account_id, event_id, type_, message_id, url, source,
                         json.dumps(payload, ensure_ascii=False, separators=(",", ":")),
                         "disabled" if off else "pending", None if off else first,
                         _DISABLED_NOTE if off else None, now, now, now if off else None))
        with write_tx():
            if rows:
                db.cursor().executemany(_insert_sql(), rows)
                self._new_rows = True
            self._mark_events([e[0] for e in evs], now)
        return len(rows), len(evs)

    @staticmethod
    def _mark_events(ids: list[str], now: int) -> None:
        with write_tx():
            for i in range(0, len(ids), 500):
                Event.update(webhooked_at=now).where((Event.id << ids[i:i + 500])
                                                     & Event.webhooked_at.is_null()).execute()

    @staticmethod
    def _target(type_: str, raw: str, message_id: str | None, s: WebhookSettings | None,
                callbacks: dict[str, str], numbers: dict[tuple[str, str], str | None],
                account_id: str) -> tuple[str, str, Any] | None:
        """``(url, source, payload)`` for an event that has somewhere to go, else None. The
        payload (JSON text) is decoded only once a URL is possible for the event's type."""
        if type_ in STATUS_EVENTS:
            cb = callbacks.get(message_id or "")
            url, source = (cb, "status_callback") if cb else (s.status_url if s else None, "status_url")
            if not url:
                return None
            payload = json.loads(raw)
            if type_ == "message.status" and isinstance(payload, dict) \
                    and payload.get("status") in NOT_SENT_STATUSES:
                return None
            return url, source, payload
        if type_ in INBOUND_EVENTS:
            if not ((s is not None and s.inbound_url)
                    or any(cb for (acc, _), cb in numbers.items() if acc == account_id)):
                return None
            payload = json.loads(raw)
            to = payload.get("to") if isinstance(payload, dict) else None
            cb = numbers.get((account_id, to or ""))
            if cb:
                return cb, "inbound_callback", payload
            return (s.inbound_url, "inbound_url", payload) if s is not None and s.inbound_url else None
        return None

    # -- leasing and attempts --------------------------------------------------------------
    @staticmethod
    def _due_query(now: int) -> pw.ModelSelect:
        return (WebhookDelivery.select(WebhookDelivery.id)
                .where((WebhookDelivery.state == "pending") & (WebhookDelivery.next_attempt_at <= now)
                       & (WebhookDelivery.leased_until.is_null() | (WebhookDelivery.leased_until < now))))

    def dispatch(self) -> int:
        """Lease due deliveries up to the pool's free capacity and hand them over.

        At most half the pool works on one URL at a time, so a receiver that hangs slows only
        its own deliveries, never everyone else's."""
        with self._dispatch_lock:
            free = self.pool.free()
            if free <= 0:
                return 0
            now = now_ms()
            picked = self._pick(now, free)
            if not picked:
                return 0
            lease = uuid.uuid4().hex
            ids = [p[0] for p in picked]
            with write_tx():
                (WebhookDelivery.update(leased_until=now + LEASE_MS, lease=lease)
                 .where((WebhookDelivery.id << ids) & (WebhookDelivery.state == "pending")
                        & (WebhookDelivery.leased_until.is_null() | (WebhookDelivery.leased_until < now)))
                 .execute())
            claimed = {r[0] for r in WebhookDelivery.select(WebhookDelivery.id)
                       .where((WebhookDelivery.id << ids) & (WebhookDelivery.lease == lease)).tuples()}
            for did, url in picked:
                if did in claimed:
                    self._hold(did, url)
                    self.pool.submit(did, lease)
            return len(claimed)

    def _pick(self, now: int, free: int) -> list[tuple[str, str]]:
        """Due (id, url) pairs, oldest first, at most ``per_url`` in flight per URL."""
        taken: dict[str, int] = {}
        picked: list[tuple[str, str]] = []
        ids: set[str] = set()

        def take(rows: Iterable[tuple[str, str]]) -> int:
            seen = 0
            for did, url in rows:
                seen += 1
                if len(picked) >= free or did in ids:
                    continue
                if self._inflight_urls.get(url, 0) + taken.get(url, 0) >= self.per_url:
                    continue
                taken[url] = taken.get(url, 0) + 1
                picked.append((did, url))
                ids.add(did)
            return seen

        window = free * 4
        cols = (WebhookDelivery.id, WebhookDelivery.url)
        seen = take(self._due_query(now).select(*cols).order_by(WebhookDelivery.next_attempt_at)
                    .limit(window).tuples())
        busy = [u for u, n in self._inflight_urls.items() if n >= self.per_url]
        if len(picked) < free and seen >= window and busy:
            # The oldest due rows all belong to URLs that are at their limit (a receiver that
            # hangs). Look past them for other URLs — a scan of that backlog, so at most once a
            # second unless new deliveries arrived.
            mono = time.monotonic()
            if self._new_rows or mono >= self._scan_after:
                self._new_rows = False
                self._scan_after = mono + 1.0
                take(self._due_query(now).select(*cols).where(WebhookDelivery.url.not_in(busy))
                     .order_by(WebhookDelivery.next_attempt_at).limit(window).tuples())
        return picked

    def _hold(self, delivery_id: str, url: str) -> None:
        with self._count_lock:
            self._inflight[delivery_id] = url
            self._inflight_urls[url] = self._inflight_urls.get(url, 0) + 1

    def _release(self, delivery_id: str) -> None:
        with self._count_lock:
            url = self._inflight.pop(delivery_id, None)
            if url is not None:
                self._inflight_urls[url] -= 1
                if self._inflight_urls[url] <= 0:
                    del self._inflight_urls[url]

    def _run(self, delivery_id: str, lease: str, done: threading.Event | None = None) -> None:
        try:
            self.attempt(delivery_id, lease)
        finally:
            self._release(delivery_id)
            if done is not None:
                done.set()

    def attempt(self, delivery_id: str, lease: str) -> WebhookAttempt | None:
        """Make one attempt for a leased delivery and record it (one transaction)."""
        d = WebhookDelivery.get_or_none(WebhookDelivery.id == delivery_id)
        if d is None or d.lease != lease or d.state != "pending":
            return None
        trigger = "test" if d.event_type == TEST_EVENT else ("redeliver" if d.manual else "schedule")
        if not d.manual and DisabledUrl.select().where(
                (DisabledUrl.account == d.account_id) & (DisabledUrl.url_hash == _url_hash(d.url))).exists():
            now = now_ms()
            (WebhookDelivery.update(state="disabled", next_attempt_at=None, leased_until=None, lease=None,
                                    last_error=_DISABLED_NOTE,
                                    updated_at=now, completed_at=now)
             .where((WebhookDelivery.id == d.id) & (WebhookDelivery.lease == lease)).execute())
            return None
        started = now_ms()
        result = post_signed(d.url, d.body, d.id, signing_secrets(d.account_id, started))
        return self._record(d, lease, trigger, started, result)

    def _next_delay(self, d: WebhookDelivery, number: int, result: AttemptResult) -> float | None:
        if d.event_type == TEST_EVENT:
            return None
        n_in_schedule = number - d.schedule_start
        if n_in_schedule >= len(self.schedule):
            return None
        delay = self.schedule[n_in_schedule] * random.uniform(0.9, 1.1)
        if result.retry_after is not None:
            # Honour Retry-After: never earlier than the receiver asked (a little jitter on top).
            delay = max(delay, result.retry_after * random.uniform(1.0, 1.1))
        return delay

    def _record(self, d: WebhookDelivery, lease: str, trigger: str, started: int,
                result: AttemptResult) -> WebhookAttempt:
        now = now_ms()
        number = d.attempts + 1
        status = result.http_status
        next_at: int | None = None
        error = result.error
        if status is not None and 200 <= status < 300:
            outcome, state = "succeeded", "succeeded"
        elif status == 410:
            outcome, state = "disabled", "disabled"
            error = "410 Gone: URL disabled; set it again (PUT /webhooks) or redeliver to resume"
        else:
            delay = self._next_delay(d, number, result)
            if delay is None:
                outcome, state = "failed", "failed"
            else:
                outcome, state = "retry", "pending"
                next_at = now + int(delay * 1000)
            if error is None and status is not None:
                error = f"HTTP {status}"
        with write_tx():
            a = WebhookAttempt.create(delivery=d.id, number=number, at=started, url=d.url, trigger=trigger,
                                      http_status=status, error=error, latency_ms=result.latency_ms,
                                      response_body=result.response_body, outcome=outcome,
                                      next_attempt_at=next_at)
            (WebhookDelivery.update(
                attempts=WebhookDelivery.attempts + 1, state=state, next_attempt_at=next_at,
                leased_until=None, lease=None, last_status=status, last_error=error, updated_at=now,
                completed_at=None if state == "pending" else now,
                manual=d.manual and state == "pending")
             .where((WebhookDelivery.id == d.id) & (WebhookDelivery.lease == lease)).execute())
            if outcome == "disabled":
                (DisabledUrl.insert(account=d.account_id, url_hash=_url_hash(d.url), url=d.url, delivery_id=d.id,
                                    disabled_at=now, reason="410 Gone")
                 .on_conflict_ignore().execute())
            elif outcome == "succeeded" and d.manual:
                enable_url(d.account_id, d.url)
        level = logging.INFO if outcome in ("succeeded", "retry") else logging.WARNING
        log.log(level, "webhook %s %s attempt %d to %s: %s%s", d.id, d.event_type, number, d.url,
                status if status is not None else error, " (URL disabled)" if outcome == "disabled" else "")
        return a

    # -- explicit actions (API) ------------------------------------------------------------
    def redeliver(self, d: WebhookDelivery) -> WebhookDelivery:
        """Start a fresh schedule for a delivery now, to the URL configured *now*.

        Raises ``LookupError`` when no URL is configured for it any more and ``RuntimeError``
        while an attempt is in flight.
        """
        target = self.current_target(d)
        if target is None:
            raise LookupError("no webhook URL is configured for this event")
        now = now_ms()
        with write_tx():
            fresh = WebhookDelivery.get_by_id(d.id)
            if fresh.state == "pending" and fresh.leased_until and fresh.leased_until > now:
                raise RuntimeError("an attempt for this delivery is in flight")
            n = (WebhookDelivery.update(url=target[0], url_source=target[1], state="pending", manual=True,
                                        schedule_start=fresh.attempts, next_attempt_at=now, completed_at=None,
                                        leased_until=None, lease=None, updated_at=now)
                 .where(WebhookDelivery.id == d.id).execute())
        if n:
            self.nudge_now()
        return WebhookDelivery.get_by_id(d.id)

    def nudge_now(self) -> None:
        self.nudge(force=True)

    def current_target(self, d: WebhookDelivery) -> tuple[str, str] | None:
        if d.event_type == TEST_EVENT:
            return d.url, d.url_source
        s = settings_for(d.account_id)
        payload = json.loads(d.body)
        if d.event_type in INBOUND_EVENTS:
            cb = inbound_callback_for(d.account_id, payload.get("to") or "")
            if cb:
                return cb, "inbound_callback"
            return (s.inbound_url, "inbound_url") if s.inbound_url else None
        if d.event_type == "message.status" and d.message_id:
            m = Message.get_or_none(Message.id == d.message_id)
            if m is not None and m.status_callback:
                return m.status_callback, "status_callback"
        return (s.status_url, "status_url") if s.status_url else None

    def send_test(self, account_id: str, url: str, source: str, wait: float = TIMEOUT_S + 10) -> WebhookDelivery:
        """Send a signed ``webhook.test`` event once and wait for the attempt (no retries)."""
        now = now_ms()
        did = new_id("whd")
        payload = {"event": TEST_EVENT, "message": "relaybox test webhook: your endpoint is reachable",
                   "account_id": account_id, "timestamp": iso(now, millis=False), "unix_timestamp": now}
        lease = uuid.uuid4().hex
        with write_tx():
            WebhookDelivery.create(id=did, account=account_id, event_type=TEST_EVENT, url=url, url_source=source,
                                   body=json.dumps(payload, separators=(",", ":")), state="pending", manual=True,
                                   next_attempt_at=None, leased_until=now + LEASE_MS, lease=lease,
                                   created_at=now, updated_at=now)
        done = threading.Event()
        self.manual_pool.submit(did, lease, done)
        done.wait(wait)
        return WebhookDelivery.get_by_id(did)

    def stop(self) -> None:
        self.pool.stop()
        self.manual_pool.stop()
        self.release_leases()

    def release_leases(self) -> None:
        """On shutdown: deliveries whose attempt was cut short are due again right after a restart
        (instead of waiting for their lease to run out). Best effort; the lease expires anyway."""
        held = list(self._inflight)
        if not held:
            return
        try:
            (WebhookDelivery.update(leased_until=None, lease=None)
             .where((WebhookDelivery.id << held) & (WebhookDelivery.state == "pending")).execute())
        except Exception:  # noqa: BLE001
            log.warning("could not release %d webhook leases at shutdown", len(held))


# -- wiring ------------------------------------------------------------------------------------
_services: weakref.WeakSet[WebhookService] = weakref.WeakSet()


def _on_events(evs: list[Event]) -> None:
    for s in list(_services):
        s.on_events(evs)


def migrate() -> None:
    """Data dirs created before ``Event.webhooked_at`` existed get the column; old events count as done.

    On SQLite, ``create_tables`` has already run by now and, the column being absent, built its
    index on the string literal "webhooked_at" (SQLite's double-quote fallback): that index is
    dropped and built again on the real column. (PostgreSQL refuses such an index instead, so an
    old PostgreSQL database needs the column added by hand:
    ``ALTER TABLE event ADD COLUMN webhooked_at BIGINT; UPDATE event SET webhooked_at = created_at``.)
    """
    table = Event._meta.table_name
    if "webhooked_at" in {c.name for c in db.get_columns(table)}:
        return
    from playhouse.migrate import SchemaMigrator
    from playhouse.migrate import migrate as run_migration

    with db.atomic():
        db.execute_sql(f'DROP INDEX IF EXISTS "{table}_webhooked_at"')
        run_migration(SchemaMigrator.from_database(db.obj).add_column(
            table, "webhooked_at", pw.BigIntegerField(null=True)))
        Event.update(webhooked_at=Event.created_at).execute()
        db.execute_sql(f'CREATE INDEX IF NOT EXISTS "{table}_webhooked_at" ON "{table}" ("webhooked_at")')
    log.info("added event.webhooked_at; events from before it will not be sent")


def install(runtime: Runtime) -> WebhookService:
    """Create the service for a runtime: Huey task, sweeper, event listener."""
    migrate()
    service = WebhookService(runtime)
    service.task = runtime.tasks.add("webhooks_run", service.run_task)
    runtime.sweepers.append(service.sweep)
    _services.add(service)
    events.subscribe(_on_events)
    atexit.register(service.stop)
    return service
