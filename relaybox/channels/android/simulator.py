"""A simulated phone running "SMS Gateway for Android" (capcom6) in private-server mode.

Why this exists: relaybox pairs real phones by speaking the app's *device* protocol
(``/work/shared/ANDROID-PROTOCOL.md``, cited below as "§n"). Tests, benchmarks and users
without a phone need something on the other end of that protocol that behaves like the stock
app, including its quirks, so that a server which works with the simulator also works with a
phone. Every behaviour here was copied from the app's source (v1.68.0); comments cite the
protocol note's section and, where the note is silent, the app file that was read.

Fidelity notes (things the server side must cope with because the real app does them):

* JSON is written the way the app's Gson does it: compact, **null fields omitted** (so
  ``pushToken`` and ``recipients[].error`` are *absent*, not ``null``), HTML-unsafe characters
  escaped as ``\\u003c`` etc. Webhook signatures cover these exact bytes.
* Dates are ``yyyy-MM-dd'T'HH:mm:ss.SSSXXX`` in the phone's time zone (``Z`` for UTC) (§1).
* REST calls carry ``User-Agent: me.capcom.smsgateway/1.68.0`` (§1); the SSE stream is opened
  by a bare OkHttp client, so it carries ``okhttp/4.10.0`` instead.
* Redirects are never followed and any non-2xx status is an error (§1 ``expectSuccess``).
* A response body the app decodes must be ``application/json`` (§1). Unknown enum values decode
  to ``null`` (Gson), so an unknown message ``state`` is treated as Pending (§4.4).

Deliberate deviations (documented so nobody mistakes them for app behaviour):

* ``PATCH /message`` bodies are snapshotted when the local state changes, not when the
  ``SendStateWorker`` runs, so every transition is visible to tests even with ``delay_ms=0``.
* Settings pulled from ``/settings`` apply immediately; the app asks the user to restart
  (§4.7). The webhook signing key is live in the app too.
* Back-off delays can be scaled down (``backoff_scale``) so tests do not wait minutes.
"""

from __future__ import annotations

import argparse
import base64
import codecs
import contextlib
import hashlib
import heapq
import hmac
import itertools
import json
import logging
import os
import random
import socket
import struct
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timezone
from typing import Any, Self

import requests

__all__ = [
    "APP_VERSION",
    "USER_AGENT",
    "HttpStatusError",
    "LocalMessage",
    "ProtocolError",
    "SSEMessage",
    "SSEParser",
    "SeenEvent",
    "SimCard",
    "SimulatedDevice",
    "StateReport",
    "WebhookDelivery",
    "format_date",
    "gson_dumps",
    "main",
    "parse_date",
    "redact",
    "sign_webhook",
]

log = logging.getLogger(__name__)

# --- constants copied from the app -------------------------------------------------------------

APP_VERSION = "1.68.0"
#: ``BuildConfig.VERSION_CODE``: CI sets it to days since 2022-06-15 at build time
#: (``.github/workflows/build-apk.yml``); v1.68.0 was built on 2026-07-06.
APP_RELEASE_ID = 1482
#: §1: Ktor ``UserAgent`` plugin in ``GatewayApi.kt`` and the webhook client.
USER_AGENT = f"me.capcom.smsgateway/{APP_VERSION}"
#: ``SSEManager.kt`` builds a plain ``OkHttpClient`` (okhttp 4.10.0) with no UA interceptor.
OKHTTP_USER_AGENT = "okhttp/4.10.0"

PENDING, CANCELLING, CANCELLED = "Pending", "Cancelling", "Cancelled"
PROCESSED, SENT, DELIVERED, FAILED = "Processed", "Sent", "Delivered", "Failed"
#: ``domain/ProcessingState.kt`` (§4.5).
STATES = (PENDING, CANCELLING, CANCELLED, PROCESSED, SENT, DELIVERED, FAILED)
#: ``modules/events/ExternalEventType.kt`` (§5).
EVENT_TYPES = (
    "MessageEnqueued",
    "WebhooksUpdated",
    "MessagesExportRequested",
    "SettingsUpdated",
    "MessageCancelled",
)
#: ``modules/webhooks/domain/WebHookEvent.kt`` (§4.6).
WEBHOOK_EVENTS = (
    "sms:received",
    "sms:sent",
    "sms:delivered",
    "sms:failed",
    "system:ping",
    "sms:data-received",
    "mms:received",
    "mms:downloaded",
    "app:started",
    "sms:cancelled",
)
#: ``MessagesService.processStateIntent`` text for a failed ``ACTION_SENT`` broadcast.
SEND_FAILURE_ERROR = "Send result: RESULT_ERROR_GENERIC_FAILURE (Generic failure cause)"
#: ``data/entities/Message.kt`` ``PRIORITY_EXPEDITED`` (§4.4).
PRIORITY_EXPEDITED = 100
PRIORITY_MIN = -128
#: ``SendStateWorker.RETRY_COUNT``: retried while ``runAttemptCount < 10``, so 11 attempts.
STATE_REPORT_ATTEMPTS = 11
#: WorkManager ``MIN_BACKOFF_MILLIS`` (10 s), exponential, for the app's one-time workers.
WORKER_BACKOFF_S = 10.0
#: ``SSEManager.scheduleReconnect``: 5 s for attempts 1-5, 30 s for 6-10, then 60 s (§4.9).
SSE_READ_TIMEOUT_S = 3600.0
#: ``PullMessagesWorker``: periodic at the WorkManager minimum of 15 min (§5).
POLL_INTERVAL_S = 900.0
#: ``WebhooksSettings.retryCount`` default (§7).
WEBHOOK_RETRY_COUNT = 15

_NANOID_ALPHABET = "_-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
# GSM 03.38 basic set and extension table, for the parts count the app puts in sms:sent.
_GSM_BASIC = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM_EXT = set("^{}\\[~]|€\f")


class ProtocolError(RuntimeError):
    """The server answered something the real app would reject (wrong type, missing field)."""


class HttpStatusError(ProtocolError):
    """Non-2xx status. The app's Ktor client has ``expectSuccess = true`` (§1)."""

    def __init__(self, method: str, url: str, status: int, body: str = "") -> None:
        super().__init__(f"{method} {url} -> HTTP {status} {body[:200]!r}")
        self.status = status
        self.body = body


# --- small helpers that copy the app's encoders ------------------------------------------------


def format_date(dt: datetime, tz: timezone = UTC) -> str:
    """Format like Gson with ``yyyy-MM-dd'T'HH:mm:ss.SSSXXX`` (§1): ``XXX`` prints ``Z`` for UTC."""
    s = dt.astimezone(tz).isoformat(timespec="milliseconds")
    return s[:-6] + "Z" if s.endswith("+00:00") else s


def parse_date(value: Any) -> datetime | None:
    """Parse a server date the way Gson's ISO-8601 fallback does: lenient about the offset form
    and the number of fraction digits (§1 "parse leniently"). Raises ``ProtocolError`` like Gson's
    ``JsonSyntaxException``, which fails the whole response."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ProtocolError(f"date is not a string: {value!r}")
    s = value.strip()
    if s.endswith(("Z", "z")):
        s = s[:-1] + "+00:00"
    # Python < 3.11 insists on 3 or 6 fraction digits; normalise to 6.
    if "." in s:
        head, _, rest = s.partition(".")
        digits = "".join(itertools.takewhile(str.isdigit, rest))
        s = head + "." + (digits + "000000")[:6] + rest[len(digits) :]
    try:
        dt = datetime.fromisoformat(s)
    except ValueError as exc:
        raise ProtocolError(f"unparseable date {value!r}") from exc
    if (
        dt.tzinfo is None
    ):  # Gson would assume the device zone; the simulator assumes UTC.
        dt = dt.replace(tzinfo=UTC)
    return dt


def redact(value: str | None) -> str | None:
    """``GatewayService.redact``: everything but the last 4 characters becomes ``*`` (§4.1)."""
    if value is None:
        return None
    if len(value) > 4:
        return "*" * (len(value) - 4) + value[-4:]
    return "****"


def _drop_nulls(obj: Any) -> Any:
    """Gson without ``serializeNulls()`` omits null object fields and null map values."""
    if isinstance(obj, dict):
        return {k: _drop_nulls(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [_drop_nulls(v) for v in obj]
    return obj


_HTML_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "=": "\\u003d",
    "'": "\\u0027",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}


def gson_dumps(obj: Any, *, serialize_nulls: bool = False) -> str:
    """Serialise exactly like the app's Gson: compact, nulls dropped, HTML-safe escapes, raw
    UTF-8 otherwise. The characters escaped can only occur inside JSON strings, so a plain
    replace is safe. Servers must verify webhook signatures on these raw bytes (§7)."""
    if not serialize_nulls:
        obj = _drop_nulls(obj)
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    for ch, esc in _HTML_ESCAPES.items():
        if ch in text:
            text = text.replace(ch, esc)
    return text


def sign_webhook(body: bytes, timestamp: str, key: str) -> str:
    """§7 / ``PayloadSingingPlugin.kt``: lowercase hex HMAC-SHA256 of body + unix-seconds string."""
    return hmac.new(key.encode(), body + timestamp.encode(), hashlib.sha256).hexdigest()


def _nanoid(rng: random.Random, size: int = 21) -> str:
    """jnanoid default alphabet; used for webhook event ids and the default signing key."""
    return "".join(rng.choice(_NANOID_ALPHABET) for _ in range(size))


def _kt_str(value: Any) -> str | None:
    """Kotlin ``value?.toString()`` on a Gson-decoded ``Map<String, *>`` value: numbers are
    Doubles there, so ``60`` reads as ``"60.0"``."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(float(value))
    if isinstance(value, str):
        return value
    return json.dumps(value)


def _kt_int(value: Any) -> int | None:
    """``value?.toString()?.toFloat()?.toInt()`` as in the app's settings importers (§4.7)."""
    s = _kt_str(value)
    if s is None:
        return None
    try:
        return int(float(s))
    except ValueError as exc:
        raise ProtocolError(f"NumberFormatException: {s!r}") from exc


def _sms_parts(text: str) -> int:
    """Parts count as ``SmsManager.divideMessage`` would give (GSM-7 160/153, UCS-2 70/67)."""
    if all(c in _GSM_BASIC or c in _GSM_EXT for c in text):
        units = sum(2 if c in _GSM_EXT else 1 for c in text)
        single, multi = 160, 153
    else:
        units = len(text.encode("utf-16-le")) // 2
        single, multi = 70, 67
    if units <= single:
        return 1
    return -(-units // multi)


def _is_json(resp: requests.Response) -> bool:
    ctype = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
    return ctype == "application/json" or ctype.endswith("+json")


def _utcnow() -> datetime:
    return datetime.now(UTC)


# --- SSE ---------------------------------------------------------------------------------------


@dataclass
class SSEMessage:
    """One dispatched server-sent event, as okhttp-sse hands it to ``SSEManager.onEvent``."""

    event: str | None
    data: str
    id: str | None = None


class SSEParser:
    """Incremental parser for the §4.9 wire format, matching okhttp-sse's
    ``ServerSentEventReader``: lines end in CRLF, LF or CR; ``:`` lines are comments
    (keep-alives); one optional space after the colon is stripped; ``data`` lines are joined
    with ``\\n``; an event is dispatched on a blank line only if it had at least one ``data``
    line; ``retry`` is ignored (the app uses its own back-off)."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._partial = ""
        self._pending_cr = False
        self._type: str | None = None
        self._data: list[str] = []
        self._id: str | None = None
        self.last_id: str | None = None
        self.comments = 0
        self.last_comment: str | None = None

    def feed(self, chunk: bytes) -> list[SSEMessage]:
        text = self._decoder.decode(chunk)
        out: list[SSEMessage] = []
        if self._pending_cr and text.startswith("\n"):
            text = text[1:]
        self._pending_cr = False
        start = 0
        i = 0
        n = len(text)
        while i < n:
            c = text[i]
            if c == "\n" or c == "\r":
                line = self._partial + text[start:i]
                self._partial = ""
                if c == "\r":
                    if i + 1 < n:
                        if text[i + 1] == "\n":
                            i += 1
                    else:
                        self._pending_cr = True  # the LF may arrive in the next chunk
                self._line(line, out)
                start = i + 1
            i += 1
        self._partial += text[start:]
        return out

    def _line(self, line: str, out: list[SSEMessage]) -> None:
        if line == "":
            if self._data:
                out.append(SSEMessage(self._type, "\n".join(self._data), self._id))
                self.last_id = self._id
            self._type = None
            self._data = []
            return
        if line.startswith(":"):
            self.comments += 1
            self.last_comment = line[1:]
            return
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._type = value or None
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value
        # "retry" and unknown fields are ignored.


# --- records the tests read --------------------------------------------------------------------


@dataclass
class SimCard:
    """One SIM as ``SubscriptionsHelper.getActiveSimCards`` reports it (§4.1)."""

    slot_index: int
    sim_number: int
    phone_number: str | None
    carrier_name: str | None
    iccid: str | None

    def to_dto(self) -> dict[str, Any]:
        """The masked form the app sends (``GatewayService.toDTO``)."""
        return {
            "slotIndex": self.slot_index,
            "simNumber": self.sim_number,
            "phoneNumber": redact(self.phone_number),
            "carrierName": redact(self.carrier_name),
            "iccid": redact(self.iccid),
        }


@dataclass
class Recipient:
    phone_number: str
    state: str = PENDING
    error: str | None = None


@dataclass
class LocalMessage:
    """A row of the app's Room ``message`` table plus its recipients and state history."""

    id: str
    phone_numbers: list[str]
    text: str | None
    data: str | None
    port: int | None
    with_delivery_report: bool
    sim_number: int | None
    is_encrypted: bool
    valid_until: datetime | None
    schedule_at: datetime | None
    priority: int
    created_at: datetime
    seq: int
    recipients: dict[str, Recipient] = field(default_factory=dict)
    state: str = PENDING
    states: dict[str, datetime] = field(default_factory=dict)
    processed_at: float | None = None
    parts_count: int | None = None
    eligible_at: float = 0.0
    pulls: int = 1
    pulled_at: float = 0.0


@dataclass
class SeenEvent:
    """One SSE event as received; ``received_at`` is wall-clock for cross-process latency."""

    event: str | None
    name: str | None
    data: str
    received_at: float
    received_mono: float


@dataclass
class StateReport:
    """One ``PATCH /message`` element (§4.5) and what became of it."""

    message_id: str
    state: str
    body: dict[str, Any]
    trigger: str
    queued_at: float
    sent_at: float | None = None
    status: int | None = None
    attempts: int = 0
    error: str | None = None


@dataclass
class WebhookDelivery:
    """One webhook POST attempt (§7)."""

    url: str
    event: str
    webhook_id: str
    body: bytes
    timestamp: str
    signature: str
    status: int | None = None
    error: str | None = None
    attempt: int = 1
    sent_at: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class _RetryQueue:
    """A single thread draining a heap of due jobs; a failed job is re-queued with back-off.

    Copies WorkManager's shape (independent jobs, exponential back-off, bounded attempts) while
    keeping the thread count fixed. ``send(item, attempt)`` returns True when done."""

    def __init__(
        self,
        name: str,
        send: Callable[[Any, int], bool],
        delay: Callable[[int], float],
        attempts: Callable[[], int],
    ) -> None:
        self.name = name
        self._send = send
        self._delay = delay
        self._attempts = attempts
        self._heap: list[tuple[float, int, int, Any]] = []
        self._seq = itertools.count()
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop: threading.Event | None = None

    def put(self, item: Any, delay: float = 0.0, attempt: int = 1) -> None:
        with self._cv:
            heapq.heappush(
                self._heap, (time.monotonic() + delay, next(self._seq), attempt, item)
            )
            self._cv.notify()

    def clear(self) -> None:
        with self._cv:
            self._heap.clear()

    def __len__(self) -> int:
        return len(self._heap)

    def start(self, stop: threading.Event) -> None:
        self._stop = stop
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def wake(self) -> None:
        with self._cv:
            self._cv.notify_all()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(max(0.0, timeout))

    def _run(self) -> None:
        stop = self._stop
        assert stop is not None
        while not stop.is_set():
            with self._cv:
                now = time.monotonic()
                if not self._heap or self._heap[0][0] > now:
                    wait = self._heap[0][0] - now if self._heap else 0.5
                    self._cv.wait(timeout=min(max(wait, 0.0), 0.5))
                    continue
                _, _, attempt, item = heapq.heappop(self._heap)
            try:
                done = self._send(item, attempt)
            except Exception:
                log.exception("%s job failed", self.name)
                done = False
            if not done and not stop.is_set() and attempt < self._attempts():
                self.put(item, self._delay(attempt), attempt + 1)


# --- the device --------------------------------------------------------------------------------


class SimulatedDevice:
    """The app's side of the device protocol, runnable in-process.

    Construct, call :meth:`start` (registers synchronously, then runs SSE, pulls, sending and
    reporting in daemon threads), and :meth:`stop` or :meth:`kill`. Counters for tests:
    :attr:`messages` (local DB, with ``pulls`` per id), :attr:`pull_counts`, :attr:`reports`
    (successful ``PATCH /message`` elements in send order), :attr:`events` (SSE events with
    receive timestamps), :attr:`webhook_deliveries`, :attr:`connected`.
    """

    def __init__(
        self,
        url: str,
        code: str | int | None = None,
        private_token: str | None = None,
        *,
        credentials: tuple[str, str] | None = None,
        name: str = "Google/sdk_gphone64_x86_64",
        fail_rate: float = 0.0,
        fail_error: str = SEND_FAILURE_ERROR,
        delay_ms: int = 300,
        send_delay_ms: int = 0,
        verify: bool | str = True,
        state_file: str | os.PathLike[str] | None = None,
        seed: int | None = None,
        sim_numbers: Iterable[str | None] = ("+15550100001", "+15550100002"),
        carriers: Iterable[str | None] = ("Simulated Mobile", "Simulated Telecom"),
        push_token: str | None = None,
        poll_interval: float = POLL_INTERVAL_S,
        ping_interval: float | None = None,
        backoff_scale: float = 1.0,
        sse_read_timeout: float = SSE_READ_TIMEOUT_S,
        http_timeout: float = 10.0,
        tz: timezone = UTC,
        strict: bool = True,
        serialize_nulls: bool = False,
        battery_level: int = 87,
        charging: str | None = "usb",
        transports: Iterable[str] = ("wifi", "cellular"),
        cellular: str = "Mobile4G",
        internet: bool = True,
        on_log: Callable[[str], None] | None = None,
    ) -> None:
        """Arguments mirror what a user sets in the app plus simulation knobs.

        ``url``: the "API URL" exactly as typed; the app appends ``/device`` etc. verbatim (§1),
        so a trailing slash is kept (and breaks, as on a phone). ``code``: digits only, as the
        app's input field enforces (§8). ``private_token``: Settings → Private Token (§2).
        ``credentials``: (login, password) for "Sign in" (Basic). ``push_token``: an FCM token;
        when set the app never opens SSE (§5), so neither does the simulator.
        ``delay_ms``: radio delay Processed→Sent and Sent→Delivered. ``send_delay_ms``: how long a
        pulled message stays locally Pending (queue time; a cancel can still win).
        ``fail_rate``: probability that a recipient's ``ACTION_SENT`` reports failure, with the
        error text ``fail_error`` (e.g. ``"Send result: RESULT_ERROR_RADIO_OFF (...)"``).
        ``backoff_scale`` multiplies every app back-off (SSE reconnect, worker retries).
        ``strict``: raise on server replies the app would choke on (content type, missing
        fields); turn off to exercise odd servers. ``serialize_nulls``: write ``null`` fields
        instead of omitting them (the app omits them).
        """
        if code is not None:
            code = str(code)
            if not code.isdigit():
                raise ValueError("the app's code field accepts digits only (§8)")
        if not 0.0 <= fail_rate <= 1.0:
            raise ValueError("fail_rate must be within 0..1")
        self.url = url
        self.code = code
        self.private_token = private_token
        self.credentials = credentials
        self.name = name[:128]
        self.fail_rate = fail_rate
        self.fail_error = fail_error
        self.delay_ms = delay_ms
        self.send_delay_ms = send_delay_ms
        self.verify = verify
        self.state_file = os.fspath(state_file) if state_file is not None else None
        self.push_token = push_token
        self.poll_interval = poll_interval
        self.ping_interval = ping_interval
        self.backoff_scale = backoff_scale
        self.sse_read_timeout = sse_read_timeout
        self.http_timeout = http_timeout
        self.tz = tz
        self.strict = strict
        self.serialize_nulls = serialize_nulls
        self.battery_level = battery_level
        self.charging = charging
        self.transports = tuple(transports)
        self.cellular = cellular
        self.internet = internet
        self.paused = False
        """While True the local queue does not send (messages stay locally Pending)."""
        self._on_log = on_log
        self._rng = random.Random(seed)
        self._id_rng = random.Random(None if seed is None else seed + 1)

        numbers = list(sim_numbers)
        carrier_list = list(carriers)
        self.sims: list[SimCard] = [
            SimCard(
                slot_index=i,
                sim_number=i + 1,
                phone_number=num,
                carrier_name=carrier_list[i] if i < len(carrier_list) else None,
                iccid="8901"
                + "".join(str(self._id_rng.randrange(10)) for _ in range(15)),
            )
            for i, num in enumerate(numbers)
        ]

        # Persistent app storage (GatewaySettings / WebhooksSettings / settings importers).
        self.registration: dict[str, Any] | None = None
        self._signing_key: str | None = None
        self.settings: dict[str, dict[str, Any]] = {}
        self.webhooks: list[dict[str, Any]] = []
        self._load_state()

        # Local Room database and counters.
        self._lock = threading.RLock()
        self.messages: dict[str, LocalMessage] = {}
        self.pull_counts: dict[str, int] = {}
        self.reports: list[StateReport] = []
        self.report_failures: list[StateReport] = []
        self.events: list[SeenEvent] = []
        self.webhook_deliveries: list[WebhookDelivery] = []
        self.errors: list[str] = []
        self.pulls = 0
        self.registrations = 0
        self.device_patches = 0
        self.sse_connects = 0
        self.sse_failures = 0
        self.keepalives = 0
        self.settings_syncs = 0
        self.webhooks_syncs = 0
        self._seq = itertools.count(1)
        self._connected = False
        self._radio: list[tuple[float, int, Callable[[], None]]] = []
        self._radio_seq = itertools.count()
        self._next_send_at = 0.0
        self._prev_priority = PRIORITY_MIN

        # Thread plumbing.
        self._stop = threading.Event()
        self._stop.set()
        self._killed = False
        self._running = False
        self._threads: list[threading.Thread] = []
        self._sched_wake = threading.Event()
        self._worker_cv = threading.Condition()
        self._due: dict[str, float] = {}
        self._task_attempts: dict[str, int] = {}
        self._reg_lock = threading.Lock()
        self._sse_resp: requests.Response | None = None
        self._sse_lock = threading.Lock()
        self._http: requests.Session | None = None
        self._hook_http: requests.Session | None = None
        self._sse_http: requests.Session | None = None
        self._reporter = _RetryQueue(
            "sim-reporter",
            self._send_report,
            lambda n: WORKER_BACKOFF_S * 2 ** (n - 1) * self.backoff_scale,
            lambda: STATE_REPORT_ATTEMPTS,
        )
        self._hooks_q = _RetryQueue(
            "sim-webhooks",
            self._send_queued_webhook,
            lambda n: WORKER_BACKOFF_S * 2 ** (n - 1) * self.backoff_scale,
            lambda: 1 + self.webhook_retry_count,
        )

    # --- public properties ---------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while an SSE stream is open (between okhttp ``onOpen`` and close/failure)."""
        return self._connected

    @property
    def running(self) -> bool:
        return self._running

    @property
    def device_id(self) -> str | None:
        return self.registration.get("id") if self.registration else None

    @property
    def token(self) -> str | None:
        return self.registration.get("token") if self.registration else None

    @property
    def login(self) -> str | None:
        return self.registration.get("login") if self.registration else None

    @property
    def password(self) -> str | None:
        return self.registration.get("password") if self.registration else None

    @property
    def signing_key(self) -> str:
        """``WebhooksSettings.signingKey``: server-set, else a random 8-char nanoid kept forever."""
        if self._signing_key is None:
            self._signing_key = _nanoid(self._id_rng, 8)
            self._save_state()
        return self._signing_key

    @property
    def webhook_retry_count(self) -> int:
        value = self.settings.get("webhooks", {}).get("retry_count")
        return int(value) if value is not None else WEBHOOK_RETRY_COUNT

    @property
    def processing_order(self) -> str:
        """``messages.processing_order`` (``LIFO`` default); sent lower-case as ``?order=``."""
        return self.settings.get("messages", {}).get("processing_order") or "LIFO"

    @property
    def effective_ping_interval(self) -> float | None:
        if self.ping_interval is not None:
            return self.ping_interval if self.ping_interval > 0 else None
        value = self.settings.get("ping", {}).get("interval_seconds")
        return float(value) if value else None

    # --- logging and state file ----------------------------------------------------------------

    def _log(self, text: str) -> None:
        log.debug("%s: %s", self.name, text)
        if self._on_log is not None:
            try:
                self._on_log(text)
            except Exception:
                log.exception("on_log failed")

    def _error(self, text: str) -> None:
        self.errors.append(text)
        self._log("error: " + text)

    def _load_state(self) -> None:
        if not self.state_file or not os.path.exists(self.state_file):
            return
        with open(self.state_file, encoding="utf-8") as fh:
            data = json.load(fh)
        self.registration = data.get("registration")
        self._signing_key = data.get("signingKey")
        self.settings = data.get("settings") or {}
        self.webhooks = data.get("webhooks") or []
        if self.private_token is None:
            self.private_token = self.settings.get("gateway", {}).get("private_token")

    def _save_state(self) -> None:
        """Atomic write, so a kill mid-write never leaves a phone with a torn registration."""
        if not self.state_file:
            return
        data = {
            "url": self.url,
            "registration": self.registration,
            "signingKey": self._signing_key,
            "settings": self.settings,
            "webhooks": self.webhooks,
        }
        tmp = f"{self.state_file}.tmp{os.getpid()}.{threading.get_ident()}"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1)
        os.replace(tmp, self.state_file)

    # --- HTTP ----------------------------------------------------------------------------------

    def _session(self, user_agent: str) -> requests.Session:
        s = requests.Session()
        s.headers["User-Agent"] = user_agent
        s.verify = self.verify
        s.trust_env = False  # a phone does not read the test machine's proxy variables
        return s

    def _ensure_sessions(self) -> None:
        if self._http is None:
            self._http = self._session(USER_AGENT)
        if self._hook_http is None:
            self._hook_http = self._session(USER_AGENT)
        if self._sse_http is None:
            self._sse_http = self._session(OKHTTP_USER_AGENT)

    def _close_sessions(self) -> None:
        for attr in ("_http", "_hook_http", "_sse_http"):
            s = getattr(self, attr)
            setattr(self, attr, None)
            if s is not None:
                with contextlib.suppress(Exception):
                    s.close()

    def _api(
        self,
        method: str,
        path: str,
        *,
        auth: str | None,
        body: Any = None,
        params: dict[str, str] | None = None,
        expect_json: bool = False,
    ) -> tuple[requests.Response, Any]:
        """One device-API call as ``GatewayApi.kt`` makes it (§1, §3)."""
        self._ensure_sessions()
        assert self._http is not None
        url = self.url + path
        headers: dict[str, str] = {"Accept-Charset": "UTF-8"}
        if expect_json:
            headers["Accept"] = "application/json"
        if auth is not None:
            headers["Authorization"] = auth
        data: bytes | None = None
        if body is not None:
            data = gson_dumps(body, serialize_nulls=self.serialize_nulls).encode()
            headers["Content-Type"] = "application/json"
        resp = self._http.request(
            method,
            url,
            data=data,
            headers=headers,
            params=params,
            timeout=(5.0, self.http_timeout),
            allow_redirects=False,  # §1: never redirect; a 3xx is an error to the app
        )
        if not 200 <= resp.status_code < 300:
            raise HttpStatusError(method, url, resp.status_code, resp.text)
        if not expect_json:
            return resp, None
        if not _is_json(resp):
            # §1: Ktor picks the Gson decoder by Content-Type; anything else fails.
            msg = f"{method} {url}: Content-Type {resp.headers.get('Content-Type')!r} is not JSON"
            if self.strict:
                raise ProtocolError(msg)
            self._error(msg)
        try:
            return resp, resp.json()
        except ValueError as exc:
            raise ProtocolError(
                f"{method} {url}: body is not JSON: {resp.text[:200]!r}"
            ) from exc

    # --- registration (§2, §3 #1-#2, §4.1-§4.2) ------------------------------------------------

    def _sim_dtos(self) -> list[dict[str, Any]]:
        return [s.to_dto() for s in self.sims]

    def register(self) -> str:
        """``GatewayService.registerDevice``: PATCH when a token is held; only a 401 falls back
        to ``POST /device`` in *anonymous* mode (private token, else no auth) (§2).

        Without a stored token it signs up with the code, else Basic credentials, else the
        private token. Returns ``"patched"`` or ``"registered"``; raises on failure."""
        with self._reg_lock:
            mode = (
                "code"
                if self.code
                else "credentials"
                if self.credentials
                else "anonymous"
            )
            if self.registration and self.registration.get("token"):
                try:
                    self._api(
                        "PATCH",
                        "/device",
                        auth=f"Bearer {self.registration['token']}",
                        body={
                            "id": self.registration.get("id"),
                            "pushToken": self.push_token,
                            "simCards": self._sim_dtos(),
                        },
                    )
                except HttpStatusError as exc:
                    if exc.status != 401:
                        raise
                    self._log(
                        "PATCH /device -> 401: token unknown, re-registering (anonymous)"
                    )
                    mode = "anonymous"
                else:
                    self.device_patches += 1
                    self._log(f"device updated id={self.device_id}")
                    return "patched"
            auth: str | None
            if mode == "code":
                auth = f"Code {self.code}"
            elif mode == "credentials":
                assert self.credentials is not None
                raw = f"{self.credentials[0]}:{self.credentials[1]}".encode()
                auth = "Basic " + base64.b64encode(raw).decode()
            else:
                auth = f"Bearer {self.private_token}" if self.private_token else None
            _, data = self._api(
                "POST",
                "/device",
                auth=auth,
                body={
                    "name": self.name,
                    "pushToken": self.push_token,
                    "simCards": self._sim_dtos(),
                },
                expect_json=True,
            )
            if not isinstance(data, dict):
                raise ProtocolError(f"POST /device: expected an object, got {data!r}")
            for key in ("id", "token"):
                if not isinstance(data.get(key), str) or not data.get(key):
                    raise ProtocolError(
                        f"POST /device: {key!r} missing or not a string: {data!r}"
                    )
            if not isinstance(data.get("login"), str):
                # Kotlin non-null String: the app would NPE emitting DeviceRegisteredEvent.
                msg = f"POST /device: 'login' missing or not a string: {data!r}"
                if self.strict:
                    raise ProtocolError(msg)
                self._error(msg)
            self.registration = {
                "id": data["id"],
                "token": data["token"],
                "login": data.get("login"),
                "password": data.get("password"),
            }
            self.registrations += 1
            self._save_state()
            self._log(
                f"registered ({mode}) id={data['id']} login={data.get('login')}"
                + (" password=<set>" if data.get("password") else "")
            )
            return "registered"

    # --- settings and webhooks (§4.6, §4.7) ---------------------------------------------------

    def sync_settings(self) -> dict[str, Any]:
        """``SettingsUpdateWorker``: ``GET /settings`` and import the known sections."""
        _, data = self._api("GET", "/settings", auth=self._bearer(), expect_json=True)
        if not isinstance(data, dict):
            raise ProtocolError(f"GET /settings: expected an object, got {data!r}")
        self.apply_settings(data)
        self.settings_syncs += 1
        return data

    def apply_settings(self, data: dict[str, Any]) -> bool:
        """``SettingsService.update``: sections in order; a bad value aborts the rest (§4.7)."""
        changed = False
        try:
            for section, values in data.items():
                if section not in (
                    "encryption",
                    "gateway",
                    "messages",
                    "ping",
                    "logs",
                    "webhooks",
                ):
                    continue
                if not isinstance(values, dict):
                    raise ProtocolError(
                        f"settings section {section!r} is not a map: {values!r}"
                    )
                for key, value in values.items():
                    changed |= self._import_setting(section, key, value)
        finally:
            self._save_state()
        if changed:
            self._log(f"settings changed via API: {gson_dumps(data)}")
        return changed

    def _import_setting(self, section: str, key: str, value: Any) -> bool:
        """One key of the app's ``Importer``s; unknown keys are ignored, bad values raise."""
        store = self.settings.setdefault(section, {})
        new: Any
        if section == "gateway":
            if key == "cloud_url":
                new = _kt_str(value) or "https://api.sms-gate.app/mobile/v1"
                if not new.startswith("https://"):
                    raise ProtocolError(
                        "Failed to import gateway: url must start with https://"
                    )
            elif key == "private_token":
                new = _kt_str(value)
            elif key == "notification_channel":
                new = _kt_str(value) or "AUTO"
                if new not in (
                    "AUTO",
                    "SSE_ONLY",
                ):  # Kotlin Enum.valueOf is case-sensitive
                    raise ProtocolError(
                        f"Failed to import gateway: No enum constant {new}"
                    )
            else:
                return False
        elif section == "ping":
            if key != "interval_seconds":
                return False
            n = _kt_int(value)
            new = n if n is not None and n > 0 else None
        elif section == "webhooks":
            if key == "internet_required":
                new = (_kt_str(value) or "true").lower() == "true"
            elif key == "retry_count":
                new = _kt_int(value)
                new = WEBHOOK_RETRY_COUNT if new is None else new
                if new < 1:
                    raise ProtocolError(
                        "Failed to import webhooks: Retry count must be >= 1"
                    )
            elif key == "signing_key":
                new = _kt_str(value)
                old = self._signing_key
                self._signing_key = (
                    new  # read on every webhook request; None regenerates
                )
                return old != new
            else:
                return False
        elif section == "messages":
            enums = {
                "limit_period": (
                    "Disabled",
                    "PerMinute",
                    "Per30Minutes",
                    "PerHour",
                    "PerDay",
                ),
                "sim_selection_mode": ("OSDefault", "RoundRobin", "Random"),
                "processing_order": ("LIFO", "FIFO"),
            }
            if key in enums:
                new = _kt_str(value)
                if new is not None and new not in enums[key]:
                    raise ProtocolError(
                        f"Failed to import messages: No enum constant {new}"
                    )
            elif key in (
                "send_interval_min",
                "send_interval_max",
                "limit_value",
                "log_lifetime_days",
            ):
                new = _kt_int(value)
                if key == "limit_value" and new is not None and new < 0:
                    raise ProtocolError(
                        "Failed to import messages: Limit value must be >= 0"
                    )
                if key == "log_lifetime_days" and new is not None and new < 1:
                    raise ProtocolError(
                        "Failed to import messages: Log lifetime days must be >= 1"
                    )
            else:
                return False
        elif section == "logs":
            if key != "lifetime_days":
                return False
            new = _kt_int(value)
        else:  # encryption
            if key != "passphrase":
                return False
            new = _kt_str(value)
        old = store.get(key)
        store[key] = new
        return old != new

    def sync_webhooks(self) -> list[dict[str, Any]]:
        """``WebhooksUpdateWorker``: ``GET /webhooks`` replaces the whole cloud list (§4.6)."""
        _, data = self._api("GET", "/webhooks", auth=self._bearer(), expect_json=True)
        if not isinstance(data, list):
            raise ProtocolError(f"GET /webhooks: expected an array, got {data!r}")
        hooks = []
        for item in data:
            if not isinstance(item, dict):
                raise ProtocolError(
                    f"GET /webhooks: element is not an object: {item!r}"
                )
            if not isinstance(
                item.get("id"), str
            ):  # requireNotNull(it.id) in WebHooksService.sync
                raise ProtocolError(f"GET /webhooks: 'id' is required: {item!r}")
            if not isinstance(item.get("url"), str):
                raise ProtocolError(f"GET /webhooks: 'url' is required: {item!r}")
            if (
                item.get("event") not in WEBHOOK_EVENTS
            ):  # Gson: unknown enum -> null -> DB error
                raise ProtocolError(
                    f"GET /webhooks: unknown event {item.get('event')!r}"
                )
            hooks.append({"id": item["id"], "url": item["url"], "event": item["event"]})
        old_ids = {h["id"] for h in self.webhooks}
        for h in hooks:
            if h["id"] not in old_ids and h["event"] == "sms:received":
                self._log(f"new sms:received webhook registered: {h['url']}")
        self.webhooks = hooks
        self.webhooks_syncs += 1
        self._save_state()
        return hooks

    def _bearer(self) -> str:
        if not self.token:
            raise ProtocolError("device is not registered")
        return f"Bearer {self.token}"

    # --- pulling messages (§3 #4, §4.4, §6) -----------------------------------------------------

    def pull(self) -> list[dict[str, Any]]:
        """``GatewayService.getNewMessages``: ``GET /message?order=…`` and process each element.

        An element that fails to process is logged and skipped, like the app does."""
        order = self.processing_order.lower()
        _, data = self._api(
            "GET",
            "/message",
            auth=self._bearer(),
            params={"order": order},
            expect_json=True,
        )
        if not isinstance(data, list):
            raise ProtocolError(f"GET /message: expected an array, got {data!r}")
        # Gson decodes the whole array first: a bad date fails the whole pull (§4.4 dates).
        for item in data:
            if not isinstance(item, dict):
                raise ProtocolError(f"GET /message: element is not an object: {item!r}")
            for key in ("validUntil", "scheduleAt", "createdAt"):
                parse_date(item.get(key))
        self.pulls += 1
        for item in data:
            try:
                self._process_message(item)
            except (ProtocolError, KeyError, TypeError, ValueError) as exc:
                self._error(f"failed to process message {item.get('id')!r}: {exc}")
        self._sched_wake.set()
        return data

    def _process_message(self, item: dict[str, Any]) -> None:
        """``GatewayService.processMessage`` (§4.4, §6)."""
        mid = item.get("id")
        if not isinstance(mid, str) or not mid:
            raise ProtocolError("message without an id")
        phones = item.get("phoneNumbers")
        if not isinstance(phones, list) or not all(isinstance(p, str) for p in phones):
            raise ProtocolError("phoneNumbers must be an array of strings")
        state = item.get("state")
        if state not in STATES:
            state = None  # Gson maps an unknown enum name to null, i.e. Pending
        with self._lock:
            self.pull_counts[mid] = self.pull_counts.get(mid, 0) + 1
            known = self.messages.get(mid)
            if known is not None:
                known.pulls += 1
            if state == CANCELLING:
                if known is None:
                    # Never had it: report Cancelled for every recipient itself (§6 step 4).
                    now = _utcnow()
                    body = {
                        "id": mid,
                        "state": CANCELLED,
                        "recipients": [
                            {"phoneNumber": p, "state": CANCELLED, "error": None}
                            for p in phones
                        ],
                        "states": {CANCELLED: format_date(now, self.tz)},
                    }
                    self._queue_report(mid, CANCELLED, body, "cancel-unknown")
                    self._log(f"cancel {mid}: unknown locally, reporting Cancelled")
                else:
                    self._cancel_local(known)
                return
            if state is not None and state != PENDING:
                return
            if known is not None:
                # Room unique key: a message already held only has its state re-sent.
                self._queue_report(mid, known.state, self._patch_item(known), "resend")
                self._log(
                    f"pulled {mid} again (x{known.pulls}): re-sending state {known.state}"
                )
                return
            text_obj = item.get("textMessage")
            data_obj = item.get("dataMessage")
            text: str | None = None
            data: str | None = None
            port: int | None = None
            if isinstance(data_obj, dict):
                data, port = data_obj.get("data"), data_obj.get("port")
            elif isinstance(text_obj, dict):
                text = text_obj.get("text")
            elif isinstance(item.get("message"), str):
                text = item["message"]
            if text is None and data is None:
                raise ProtocolError("Invalid message content")
            wdr = item.get("withDeliveryReport")
            created = parse_date(item.get("createdAt")) or _utcnow()
            now_mono = time.monotonic()
            msg = LocalMessage(
                id=mid,
                phone_numbers=list(phones),
                text=text,
                data=data,
                port=port,
                with_delivery_report=True
                if wdr is None
                else bool(wdr),  # absent means true
                sim_number=item.get("simNumber"),
                is_encrypted=bool(item.get("isEncrypted") or False),
                valid_until=parse_date(item.get("validUntil")),
                schedule_at=parse_date(item.get("scheduleAt")),
                priority=int(item.get("priority") or 0),
                created_at=created,
                seq=next(self._seq),
                eligible_at=now_mono + self.send_delay_ms / 1000.0,
                pulled_at=time.time(),
            )
            for p in phones:
                msg.recipients.setdefault(p, Recipient(p))
            msg.states[PENDING] = _utcnow()
            self.messages[mid] = msg
            preview = (text if text is not None else f"<data port {port}>")[:40]
            self._log(f"pulled {mid} -> {', '.join(phones)}: {preview!r}")

    # --- local state machine (MessagesService / MessagesDao) ------------------------------------

    @staticmethod
    def _derive_state(msg: LocalMessage) -> str:
        """``MessageWithRecipients.state``: the message state derived from its recipients."""
        states = [r.state for r in msg.recipients.values()]
        for s in (PENDING, CANCELLING, CANCELLED, PROCESSED):
            if s in states:
                return s
        if states and all(s == FAILED for s in states):
            return FAILED
        if states and all(s == DELIVERED for s in states):
            return DELIVERED
        return SENT

    def _patch_item(self, msg: LocalMessage) -> dict[str, Any]:
        """A §4.5 element, built like ``SendStateWorker`` builds it."""
        return {
            "id": msg.id,
            "state": msg.state,
            "recipients": [
                {"phoneNumber": r.phone_number, "state": r.state, "error": r.error}
                for r in msg.recipients.values()
            ],
            "states": {k: format_date(v, self.tz) for k, v in msg.states.items()},
        }

    def _update_state(
        self, msg: LocalMessage, phone: str | None, state: str, error: str | None = None
    ) -> None:
        """``MessagesService.updateState``: update recipient(s) (never un-fail one), re-derive
        the message state, record the first time of each message state, then fire
        ``MessageStateChangedEvent`` (→ PATCH + webhooks)."""
        targets = (
            [msg.recipients[phone]]
            if phone is not None
            else list(msg.recipients.values())
        )
        for r in targets:
            if r.state != FAILED:
                r.state = state
                r.error = error
        derived = self._derive_state(msg)
        if derived != msg.state:
            if derived == PROCESSED:
                msg.state = PROCESSED
                msg.processed_at = time.time()
            elif msg.state != FAILED:
                msg.state = derived
            msg.states.setdefault(derived, _utcnow())  # OnConflictStrategy.IGNORE
        phones = [phone] if phone is not None else list(msg.recipients)
        self._state_changed(msg, phones, state, error)

    def _state_changed(
        self, msg: LocalMessage, phones: list[str], state: str, error: str | None
    ) -> None:
        if self._killed:
            return
        self._queue_report(
            msg.id, msg.state, self._patch_item(msg), f"{state}:{','.join(phones)}"
        )
        self._log(
            f"state {msg.id} {','.join(phones)} -> {state}"
            + (f" ({error})" if error else "")
            + (f" [message {msg.state}]" if msg.state != state else "")
        )
        hook_event = {
            SENT: "sms:sent",
            DELIVERED: "sms:delivered",
            FAILED: "sms:failed",
            CANCELLED: "sms:cancelled",
        }.get(state)
        if hook_event is None or not any(
            h["event"] == hook_event for h in self.webhooks
        ):
            return
        sender = None
        if msg.sim_number is not None:
            sim = next((s for s in self.sims if s.sim_number == msg.sim_number), None)
            sender = sim.phone_number if sim else None
        for p in phones:
            at = format_date(_utcnow(), self.tz)
            extra: dict[str, Any]
            if state == SENT:
                extra = {
                    "partsCount": msg.parts_count
                    if msg.parts_count is not None
                    else -1,
                    "sentAt": at,
                }
            elif state == DELIVERED:
                extra = {"deliveredAt": at}
            elif state == FAILED:
                extra = {"failedAt": at, "reason": error or "Unknown"}
            else:
                extra = {"cancelledAt": at}
            payload = extra | {
                "messageId": msg.id,
                "sender": sender,
                "recipient": p,
                "simNumber": msg.sim_number,
                "phoneNumber": p,
            }
            self._emit_webhooks(hook_event, payload, synchronous=False)

    def _cancel_local(self, msg: LocalMessage) -> bool:
        """``MessagesService.cancelMessage``: only a locally Pending message is cancelled."""
        if msg.state == CANCELLED:
            return False
        if msg.state != PENDING:
            self._log(f"cancel {msg.id}: already {msg.state}, nothing to do")
            return False
        msg.state = CANCELLED
        msg.states.setdefault(CANCELLED, _utcnow())
        for r in msg.recipients.values():
            if r.state != FAILED:
                r.state, r.error = CANCELLED, None
        self._state_changed(msg, list(msg.recipients), CANCELLED, None)
        return True

    def cancel(self, message_id: str) -> bool:
        """Handle a ``MessageCancelled`` event for ``message_id`` (§5); True if cancelled."""
        with self._lock:
            msg = self.messages.get(message_id)
            if msg is None:
                self._log(f"cancel {message_id}: not found locally, nothing to cancel")
                return False
            return self._cancel_local(msg)

    # --- sending (SendMessagesWorker + SmsManager broadcasts) ----------------------------------

    def _send_interval(self) -> float:
        """``messages.send_interval_min..max`` seconds between messages (§4.7)."""
        ms = self.settings.get("messages", {})
        hi = ms.get("send_interval_max")
        lo = ms.get("send_interval_min") or 0
        if hi is None or lo > hi:
            return 0.0
        return float(self._rng.randint(lo, hi))

    def _next_pending(self, now: float) -> tuple[LocalMessage | None, float]:
        """Pick like ``MessagesDao.getPendingLifo/Fifo``; also return how long until one is due."""
        wall = _utcnow()
        best: LocalMessage | None = None
        wait = 0.5
        lifo = self.processing_order == "LIFO"
        for m in self.messages.values():
            if m.state != PENDING:
                continue
            if m.schedule_at is not None and m.schedule_at > wall:
                wait = min(wait, (m.schedule_at - wall).total_seconds())
                continue
            if m.eligible_at > now:
                wait = min(wait, m.eligible_at - now)
                continue
            if best is None:
                best = m
                continue
            key_m = (m.priority, m.created_at, m.seq)
            key_b = (best.priority, best.created_at, best.seq)
            if key_m[0] != key_b[0]:
                if key_m[0] > key_b[0]:
                    best = m
            elif (key_m[1:] > key_b[1:]) == lifo:
                best = m
        return best, wait

    def _send_message(self, msg: LocalMessage) -> bool:
        """``MessagesService.sendMessage`` + ``sendSMS``; returns True when it hit the radio."""
        if msg.valid_until is not None and msg.valid_until < _utcnow():
            self._update_state(msg, None, FAILED, "TTL expired")
            return False
        if msg.state in (CANCELLING, CANCELLED):
            return False
        if msg.sim_number is not None and not any(
            s.slot_index == msg.sim_number - 1 for s in self.sims
        ):
            self._update_state(
                msg, None, FAILED, f"Can't send message: SIM {msg.sim_number} not found"
            )
            return False
        msg.parts_count = _sms_parts(msg.text) if msg.text is not None else 1
        delay = self.delay_ms / 1000.0
        for phone in list(msg.recipients):
            self._update_state(msg, phone, PROCESSED)
            fails = self._rng.random() < self.fail_rate
            self._radio_at(delay, self._radio_sent(msg, phone, fails))
        return True

    def _radio_sent(
        self, msg: LocalMessage, phone: str, fails: bool
    ) -> Callable[[], None]:
        def fire() -> None:
            if fails:
                self._update_state(msg, phone, FAILED, self.fail_error)
                return
            self._update_state(msg, phone, SENT)
            if msg.with_delivery_report:
                self._radio_at(
                    self.delay_ms / 1000.0,
                    lambda: self._update_state(msg, phone, DELIVERED),
                )

        return fire

    def _radio_at(self, delay: float, fn: Callable[[], None]) -> None:
        heapq.heappush(
            self._radio, (time.monotonic() + delay, next(self._radio_seq), fn)
        )
        self._sched_wake.set()

    def _scheduler_loop(self) -> None:
        """One thread for the local send queue and the radio's sent/delivered broadcasts."""
        stop = self._stop
        while not stop.is_set():
            self._sched_wake.clear()
            now = time.monotonic()
            wait = 0.5
            try:
                with self._lock:
                    while (
                        self._radio and self._radio[0][0] <= now and not stop.is_set()
                    ):
                        _, _, fn = heapq.heappop(self._radio)
                        fn()
                    if self._radio:
                        wait = min(wait, self._radio[0][0] - now)
                    if not self.paused and not stop.is_set():
                        wait = min(wait, self._send_step(now))
            except Exception as exc:  # one bad message must not stop the radio
                log.exception("scheduler step failed")
                self._error(f"scheduler: {exc}")
            self._sched_wake.wait(timeout=max(0.0, min(wait, 0.5)))

    def _send_step(self, now: float) -> float:
        """One iteration of ``sendPendingMessages``; returns seconds until worth calling again."""
        if now < self._next_send_at:
            return self._next_send_at - now
        msg, wait = self._next_pending(now)
        if msg is None:
            self._prev_priority = PRIORITY_MIN
            return wait
        if not self._send_message(msg):
            return 0.0  # not sent: no delay before the next one
        prio = msg.priority
        if prio >= PRIORITY_EXPEDITED and self._prev_priority < prio:
            self._prev_priority = prio  # expedited: no interval
            return 0.0
        self._prev_priority = prio
        self._next_send_at = now + self._send_interval()
        return max(0.0, self._next_send_at - now)

    # --- PATCH /message (§3 #5, §4.5) ------------------------------------------------------------

    def _queue_report(
        self, mid: str, state: str, body: dict[str, Any], trigger: str
    ) -> None:
        if self._killed:
            return
        self._reporter.put(StateReport(mid, state, body, trigger, time.time()))

    def _send_report(self, report: StateReport, attempt: int) -> bool:
        """``SendStateWorker``: one element per ``PATCH /message``; retried with back-off."""
        if self._killed or self._stop.is_set():
            return True
        report.attempts = attempt
        try:
            resp, _ = self._api(
                "PATCH", "/message", auth=self._bearer(), body=[report.body]
            )
        except (requests.RequestException, ProtocolError) as exc:
            report.error = str(exc)
            report.status = exc.status if isinstance(exc, HttpStatusError) else None
            if attempt >= STATE_REPORT_ATTEMPTS:
                self.report_failures.append(report)
            self._error(
                f"PATCH /message {report.message_id} {report.state} failed (try {attempt}): {exc}"
            )
            return False
        report.status = resp.status_code
        report.sent_at = time.time()
        report.error = None
        with self._lock:
            self.reports.append(report)
        if resp.status_code != 204:
            self._log(
                f"PATCH /message answered {resp.status_code}, not 204 (accepted anyway)"
            )
        return True

    def reported_states(self, message_id: str, *, resends: bool = True) -> list[str]:
        """Message-level states successfully PATCHed for ``message_id``, in send order.

        ``resends=False`` leaves out the state re-sent because a held message was pulled
        again (§4.4); those depend on pull timing, the state changes do not."""
        with self._lock:
            return [
                r.state
                for r in self.reports
                if r.message_id == message_id and (resends or r.trigger != "resend")
            ]

    def reported_recipient_states(
        self, message_id: str, phone: str, *, resends: bool = True
    ) -> list[str]:
        """Recipient-level states successfully PATCHed for one number, in send order, with
        repeats collapsed (``resends`` as in :meth:`reported_states`)."""
        out: list[str] = []
        with self._lock:
            for r in self.reports:
                if r.message_id != message_id or (
                    not resends and r.trigger == "resend"
                ):
                    continue
                for rec in r.body["recipients"]:
                    if rec["phoneNumber"] == phone and (
                        not out or out[-1] != rec["state"]
                    ):
                        out.append(rec["state"])
        return out

    # --- webhooks (§7) --------------------------------------------------------------------------

    def _envelope(
        self, hook: dict[str, Any], event: str, payload: dict[str, Any]
    ) -> dict[str, Any]:
        """``WebHookEventDTO`` field order: id, webhookId, event, deviceId, payload."""
        return {
            "id": _nanoid(self._id_rng),
            "webhookId": hook["id"],
            "event": event,
            "deviceId": self.device_id,
            "payload": payload,
        }

    def _post_webhook(
        self, url: str, event: str, webhook_id: str, body: bytes, attempt: int
    ) -> WebhookDelivery:
        """POST one signed webhook body (``SendWebhookWorker`` / ``PayloadSingingPlugin``)."""
        self._ensure_sessions()
        ts = str(int(time.time()))
        sig = sign_webhook(body, ts, self.signing_key)
        d = WebhookDelivery(
            url, event, webhook_id, body, ts, sig, attempt=attempt, sent_at=time.time()
        )
        session = self._hook_http
        if session is None or self._killed:
            d.error = "device stopped"
            return d
        try:
            resp = session.post(
                url,
                data=body,
                headers={
                    "Content-Type": "application/json",
                    "X-Timestamp": ts,
                    "X-Signature": sig,
                },
                timeout=(5.0, 5.0),  # HttpTimeout: connect 5 s, socket 5 s
                allow_redirects=False,
            )
            d.status = resp.status_code
        except requests.RequestException as exc:
            d.error = str(exc)
        with self._lock:
            self.webhook_deliveries.append(d)
        self._log(f"webhook {event} -> {url}: {d.status or d.error}")
        return d

    def _send_queued_webhook(
        self, item: tuple[str, str, str, bytes], attempt: int
    ) -> bool:
        if self._killed or self._stop.is_set():
            return True
        return self._post_webhook(*item, attempt=attempt).ok

    def _emit_webhooks(
        self, event: str, payload: dict[str, Any], *, synchronous: bool
    ) -> list[WebhookDelivery]:
        """``WebHooksService.emit``: one POST per registered hook of that event; skipped when
        the device has no id yet. Failures go to the retry queue (``retry_count``)."""
        out: list[WebhookDelivery] = []
        if self.device_id is None:
            return out
        for hook in [h for h in self.webhooks if h["event"] == event]:
            body = gson_dumps(
                self._envelope(hook, event, payload),
                serialize_nulls=self.serialize_nulls,
            ).encode()
            item = (hook["url"], event, hook["id"], body)
            if synchronous:
                d = self._post_webhook(*item, attempt=1)
                out.append(d)
                if not d.ok and self._running and self.webhook_retry_count > 0:
                    self._hooks_q.put(
                        item, WORKER_BACKOFF_S * self.backoff_scale, attempt=2
                    )
            else:
                self._hooks_q.put(item)
        return out

    def post_inbound_sms(
        self,
        sender: str,
        text: str,
        *,
        sim_number: int | None = 1,
        received_at: datetime | None = None,
    ) -> list[WebhookDelivery]:
        """Simulate an incoming SMS: POST an ``sms:received`` webhook to every such hook from
        ``GET /webhooks`` now, signed (§7). Returns the first attempts; failures are retried in
        the background while the device runs."""
        received = received_at or _utcnow()
        sim = next((s for s in self.sims if s.sim_number == sim_number), None)
        message_id = format(
            zlib.crc32(f"{sender}\0{text}\0{received.isoformat()}".encode()), "x"
        )
        # SmsReceived: own fields first, then MessageEventPayload's (Gson order).
        payload = {
            "message": text,
            "receivedAt": format_date(received, self.tz),
            "messageId": message_id,
            "sender": sender,
            "recipient": sim.phone_number if sim else None,
            "simNumber": sim_number,
            "phoneNumber": sender,
        }
        deliveries = self._emit_webhooks("sms:received", payload, synchronous=True)
        if not deliveries:
            self._log("inbound SMS dropped: no sms:received webhook registered")
        return deliveries

    def health(self) -> dict[str, Any]:
        """``HealthResponse``: version, releaseId, status, checks (§7 ``system:ping``)."""
        hour_ago = time.time() - 3600
        with self._lock:
            processed = sum(
                1
                for m in self.messages.values()
                if m.processed_at
                and m.processed_at >= hour_ago
                and m.state not in (PENDING, CANCELLING, CANCELLED, FAILED)
            )
            failed = (
                sum(  # countFailedFrom: processedAt is only set once a message was sent
                    1
                    for m in self.messages.values()
                    if m.state == FAILED
                    and m.processed_at
                    and m.processed_at >= hour_ago
                )
            )
        transport_flags = {"unknown": 1, "cellular": 2, "wifi": 4, "ethernet": 8}
        cell_types = ("None", "Unknown", "Mobile2G", "Mobile3G", "Mobile4G", "Mobile5G")
        tflags = sum(transport_flags.get(t.lower(), 0) for t in self.transports)
        cellular = (
            self.cellular
            if "cellular" in (t.lower() for t in self.transports)
            else "None"
        )
        level = self.battery_level
        plug = {"ac": 2, "usb": 4}.get((self.charging or "").lower(), 0)

        def check(status: str, value: int, unit: str, desc: str) -> dict[str, Any]:
            return {
                "status": status,
                "observedValue": value,
                "observedUnit": unit,
                "description": desc,
            }

        checks = {
            "messages:failed": check(
                "fail" if failed and not processed else "warn" if failed else "pass",
                failed,
                "messages",
                "Failed messages for last hour",
            ),
            "connection:status": check(
                "pass" if self.internet else "fail",
                1 if self.internet else 0,
                "boolean",
                "Internet connection status",
            ),
            "connection:transport": check(
                "pass" if tflags else "fail", tflags, "flags", "Network transport type"
            ),
            "connection:cellular": check(
                "pass",
                cell_types.index(cellular) if cellular in cell_types else 1,
                "index",
                "Cellular network type",
            ),
            "battery:level": check(
                "fail" if level < 10 else "warn" if level < 25 else "pass",
                int(level),
                "percent",
                "Battery level in percent",
            ),
            "battery:charging": check(
                "pass", plug + (1 if plug else 0), "flags", "Is the phone charging?"
            ),
        }
        statuses = {c["status"] for c in checks.values()}
        overall = (
            "fail" if "fail" in statuses else "warn" if "warn" in statuses else "pass"
        )
        return {
            "version": APP_VERSION,
            "releaseId": APP_RELEASE_ID,
            "status": overall,
            "checks": checks,
        }

    def post_ping(self) -> list[WebhookDelivery]:
        """POST a ``system:ping`` webhook (``{"health": …}``) to every such hook now (§7)."""
        return self._emit_webhooks(
            "system:ping", {"health": self.health()}, synchronous=True
        )

    # --- worker thread: pulls, settings, webhooks, poll, ping ---------------------------------

    def _request(self, task: str, delay: float = 0.0) -> None:
        with self._worker_cv:
            due = time.monotonic() + delay
            self._due[task] = min(self._due.get(task, due), due)
            self._worker_cv.notify()

    def request_pull(self) -> None:
        """``PullMessagesWorker.start``: pull now (coalesced with one already queued)."""
        self._request("pull")

    def _worker_loop(self) -> None:
        stop = self._stop
        runners: dict[str, Callable[[], Any]] = {
            "pull": self.pull,
            "settings": self.sync_settings,
            "webhooks": self.sync_webhooks,
            "ping": self._ping_tick,
        }
        while not stop.is_set():
            with self._worker_cv:
                now = time.monotonic()
                ready = [t for t, due in self._due.items() if due <= now]
                if not ready:
                    nxt = min(self._due.values(), default=now + 0.5)
                    self._worker_cv.wait(timeout=min(max(nxt - now, 0.0), 0.5))
                    continue
                for t in ready:
                    del self._due[t]
            for task in sorted(
                ready, key=("settings", "webhooks", "pull", "ping").index
            ):
                if stop.is_set():
                    return
                try:
                    runners[task]()
                except Exception as exc:  # noqa: BLE001 - the app's workers retry on any error
                    n = self._task_attempts.get(task, 0) + 1
                    self._task_attempts[task] = n
                    self._error(f"{task} failed (try {n}): {exc}")
                    if task != "ping":  # Result.retry(): exponential from 10 s
                        self._request(
                            task,
                            min(WORKER_BACKOFF_S * 2 ** (n - 1), 18000)
                            * self.backoff_scale,
                        )
                else:
                    self._task_attempts[task] = 0
                if task == "pull":
                    # Periodic work re-enqueued with REPLACE: the 15-min clock restarts. A pull
                    # requested meanwhile (or a retry) is earlier and wins (min in _request).
                    self._request("pull", self.poll_interval)
            interval = self.effective_ping_interval
            if interval and "ping" not in self._due:
                self._request("ping", interval)

    def _ping_tick(self) -> None:
        """``PingForegroundService``: each tick emits a ping webhook and triggers a pull (§5)."""
        if not self.effective_ping_interval:
            return
        self.post_ping()
        self.request_pull()

    # --- SSE loop (§4.9) ------------------------------------------------------------------------

    def _sse_delay(self, attempts: int) -> float:
        """``SSEManager.scheduleReconnect`` back-off."""
        base = 60.0 if attempts > 10 else 30.0 if attempts > 5 else 5.0
        return base * self.backoff_scale

    def _sse_loop(self) -> None:
        stop = self._stop
        attempts = 0
        while not stop.is_set():
            resp: requests.Response | None = None
            try:
                self._ensure_sessions()
                session = self._sse_http
                if session is None:
                    return
                resp = session.get(
                    self.url + "/events",
                    headers={
                        "Authorization": self._bearer(),
                        "Accept": "text/event-stream",
                    },
                    stream=True,
                    timeout=(5.0, self.sse_read_timeout),
                    allow_redirects=False,
                )
                ctype = (
                    resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
                )
                if not 200 <= resp.status_code < 300:
                    raise HttpStatusError("GET", self.url + "/events", resp.status_code)
                if (
                    ctype != "text/event-stream"
                ):  # okhttp-sse fails any other type (§4.9)
                    raise ProtocolError(
                        f"Invalid content-type: {resp.headers.get('Content-Type')}"
                    )
                with self._sse_lock:
                    if stop.is_set():
                        return
                    self._sse_resp = resp
                self._connected = True
                self.sse_connects += 1
                attempts = 0  # reset on a successful open (§4.9)
                self._log("SSE connected")
                self.request_pull()  # SSEForegroundService.onConnected pulls at once
                self._read_stream(resp)
                if not stop.is_set():
                    self._log("SSE closed by server")
            except Exception as exc:  # noqa: BLE001 - any failure is okhttp onFailure: reconnect
                if stop.is_set():
                    break
                self.sse_failures += 1
                self._log(f"SSE error: {exc}")
            finally:
                self._connected = False
                with self._sse_lock:
                    self._sse_resp = None
                if resp is not None:
                    with contextlib.suppress(Exception):
                        resp.close()
            if stop.is_set():
                break
            attempts += 1
            delay = self._sse_delay(attempts)
            self._log(f"SSE reconnect in {delay:.2f}s (attempt {attempts})")
            stop.wait(delay)

    def _read_stream(self, resp: requests.Response) -> None:
        """Read with ``read1`` so each chunk is handled the moment it arrives (no buffering)."""
        parser = SSEParser()
        raw = resp.raw
        read1 = getattr(raw, "read1", None)
        while not self._stop.is_set():
            # urllib3 1.x has no read1; http.client's read1 handles the chunked framing too.
            chunk = read1(65536) if read1 is not None else raw._fp.read1(65536)
            if not chunk:
                return
            before = parser.comments
            for ev in parser.feed(chunk):
                self._on_sse_event(ev)
            if parser.comments != before:
                self.keepalives += parser.comments - before

    def _on_sse_event(self, ev: SSEMessage) -> None:
        """``SSEForegroundService.processEvent`` + ``EventsRouter`` (§4.9, §5)."""
        if self._killed:
            return
        name = ev.event or "MessageEnqueued"  # a missing name means MessageEnqueued
        known = name in EVENT_TYPES
        self.events.append(
            SeenEvent(
                ev.event,
                name if known else None,
                ev.data,
                time.time(),
                time.monotonic(),
            )
        )
        if not known:
            self._log(f"event {name!r} unknown, dropped")
            return
        self._log(f"event {name} {ev.data}")
        if name == "MessageEnqueued":
            self.request_pull()
        elif name == "WebhooksUpdated":
            self._request("webhooks")
        elif name == "SettingsUpdated":
            self._request("settings")
        elif name == "MessageCancelled":
            try:
                payload = json.loads(ev.data)
                mid = payload["messageId"]
            except (ValueError, TypeError, KeyError):
                self._error(f"MessageCancelled with bad data {ev.data!r}")
                return
            self.cancel(str(mid))
        # MessagesExportRequested re-emits inbox webhooks; the simulator has no inbox.

    def _abort_sse(self, hard: bool) -> None:
        """Unblock the SSE reader now: shut the socket down (``hard``: RST via SO_LINGER 0)."""
        with self._sse_lock:
            resp = self._sse_resp
        if resp is None:
            return
        sock = None
        with contextlib.suppress(Exception):
            sock = resp.raw._fp.fp.raw._sock
        if sock is None:
            with contextlib.suppress(Exception):
                sock = resp.raw.connection.sock
        if sock is not None:
            if hard:
                with contextlib.suppress(OSError):
                    sock.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
            with contextlib.suppress(OSError, ValueError):
                sock.shutdown(socket.SHUT_RDWR)

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> Self:
        """``GatewayService.start``: register (synchronously, raising on failure), sync settings
        and webhooks, then run SSE (only without a push token), pulls, sending and reporting in
        daemon threads; an initial pull is queued as the app does (§5)."""
        if self._running:
            return self
        self._stop = threading.Event()
        self._killed = False
        self._ensure_sessions()
        self.register()
        for task, fn in (
            ("settings", self.sync_settings),
            ("webhooks", self.sync_webhooks),
        ):
            try:
                fn()
            except (requests.RequestException, ProtocolError) as exc:
                self._error(f"{task} sync failed at start: {exc}")
                self._request(task, WORKER_BACKOFF_S * self.backoff_scale)
        self._running = True
        self._threads = [
            threading.Thread(target=self._worker_loop, name="sim-worker", daemon=True),
            threading.Thread(
                target=self._scheduler_loop, name="sim-scheduler", daemon=True
            ),
        ]
        if self.push_token is None:
            self._threads.append(
                threading.Thread(target=self._sse_loop, name="sim-sse", daemon=True)
            )
        else:
            self._log(
                "push token set: the app would wait for FCM and never open SSE (§5)"
            )
        for t in self._threads:
            t.start()
        self._reporter.start(self._stop)
        self._hooks_q.start(self._stop)
        self.request_pull()
        interval = self.effective_ping_interval
        if interval:
            self._request("ping", interval)
        return self

    def _halt(self, timeout: float, hard: bool) -> None:
        self._stop.set()
        self._abort_sse(hard)
        self._sched_wake.set()
        with self._worker_cv:
            self._worker_cv.notify_all()
        self._reporter.wake()
        self._hooks_q.wake()
        if hard:
            self._close_sessions()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self._reporter.join(deadline - time.monotonic())
        self._hooks_q.join(deadline - time.monotonic())
        self._threads = []
        self._connected = False
        with self._worker_cv:
            self._due.clear()
        self._running = False

    def stop(self, timeout: float = 2.0) -> None:
        """Stop gracefully within ``timeout`` (SSE socket shut down, loops woken, state saved).
        Queued reports and webhooks are dropped. ``start()`` may be called again."""
        if not self._running:
            return
        self._halt(timeout, hard=False)
        self._reporter.clear()
        self._hooks_q.clear()
        self._close_sessions()
        self._save_state()
        self._log("stopped")

    def kill(self) -> None:
        """The phone dies: connections are reset, nothing more is reported, messages pulled but
        not yet reported stay unreported. Local messages and the radio's pending broadcasts are
        kept, so a later ``start()`` behaves like the app restarting with its Room DB."""
        if not self._running:
            return
        self._killed = True
        self._halt(0.5, hard=True)
        self._reporter.clear()
        self._hooks_q.clear()
        self._log("killed")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- helpers for tests ----------------------------------------------------------------------

    def wait_for(
        self,
        predicate: Callable[[], bool],
        timeout: float = 5.0,
        interval: float = 0.01,
    ) -> bool:
        """Poll ``predicate`` until true or ``timeout`` elapses; bounded by design."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(interval)

    def wait_state(self, message_id: str, state: str, timeout: float = 5.0) -> bool:
        """Wait until ``state`` was PATCHed for ``message_id``."""
        return self.wait_for(lambda: state in self.reported_states(message_id), timeout)

    def stats(self) -> dict[str, Any]:
        """A summary for logs and benchmarks."""
        with self._lock:
            by_state: dict[str, int] = {}
            for m in self.messages.values():
                by_state[m.state] = by_state.get(m.state, 0) + 1
            return {
                "connected": self._connected,
                "registrations": self.registrations,
                "devicePatches": self.device_patches,
                "sseConnects": self.sse_connects,
                "sseFailures": self.sse_failures,
                "events": len(self.events),
                "keepalives": self.keepalives,
                "pulls": self.pulls,
                "messages": len(self.messages),
                "messagesByState": by_state,
                "reports": len(self.reports),
                "reportsPending": len(self._reporter),
                "reportFailures": len(self.report_failures),
                "webhooks": len(self.webhook_deliveries),
                "errors": len(self.errors),
            }


# --- CLI ---------------------------------------------------------------------------------------


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="relaybox device simulate",
        description="Run a simulated 'SMS Gateway for Android' phone against a relaybox server.",
    )
    p.add_argument(
        "--url", required=True, help="API URL, e.g. https://host/api/mobile/v1"
    )
    p.add_argument("--code", help="numeric one-time pairing code (Code auth)")
    p.add_argument(
        "--private-token", help="private token (used for sign-up and re-registration)"
    )
    p.add_argument(
        "--login", help="account login for 'Sign in' (Basic auth), with --password"
    )
    p.add_argument("--password", help="account password for 'Sign in'")
    p.add_argument(
        "--fail-rate",
        type=float,
        default=0.0,
        help="probability a recipient fails (0..1)",
    )
    p.add_argument(
        "--delay-ms", type=int, default=300, help="radio delay Processed→Sent→Delivered"
    )
    p.add_argument(
        "--send-delay-ms", type=int, default=0, help="local queue time before sending"
    )
    p.add_argument(
        "--name",
        default="Google/sdk_gphone64_x86_64",
        help="device name (MANUFACTURER/PRODUCT)",
    )
    p.add_argument("--ca", help="CA bundle to trust for HTTPS")
    p.add_argument(
        "--insecure", action="store_true", help="do not verify TLS certificates"
    )
    p.add_argument(
        "--state-file", help="JSON file keeping id/token/login across restarts"
    )
    p.add_argument("--seed", type=int, help="seed for deterministic failures")
    p.add_argument(
        "--poll-interval", type=float, default=POLL_INTERVAL_S, help="periodic pull (s)"
    )
    p.add_argument(
        "--sim",
        action="append",
        dest="sims",
        metavar="NUMBER",
        help="SIM phone number (repeat for SIM 2); default two fake numbers",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """``relaybox device simulate …``: run until Ctrl-C, printing one line per action."""
    args = _build_parser().parse_args(argv)
    if (args.login is None) != (args.password is None):
        print("error: --login and --password go together", file=sys.stderr)
        return 2

    def out(text: str) -> None:
        now = datetime.now()
        print(f"{now:%H:%M:%S}.{now.microsecond // 1000:03d} {text}", flush=True)

    verify: bool | str = False if args.insecure else (args.ca or True)
    try:
        device = SimulatedDevice(
            args.url,
            code=args.code,
            private_token=args.private_token,
            credentials=(args.login, args.password) if args.login else None,
            name=args.name,
            fail_rate=args.fail_rate,
            delay_ms=args.delay_ms,
            send_delay_ms=args.send_delay_ms,
            verify=verify,
            state_file=args.state_file,
            seed=args.seed,
            sim_numbers=args.sims or ("+15550100001", "+15550100002"),
            poll_interval=args.poll_interval,
            on_log=out,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out(f"simulated phone {args.name} -> {args.url} (UA {USER_AGENT})")
    attempt = 0
    try:
        while True:
            try:
                device.start()
                break
            except (requests.RequestException, ProtocolError) as exc:
                attempt += 1
                delay = min(WORKER_BACKOFF_S * 2 ** (attempt - 1), 300.0)
                out(f"registration failed: {exc}; retrying in {delay:.0f}s")
                time.sleep(delay)
        out(
            f"running as device {device.device_id}; signing key {device.signing_key}; Ctrl-C to stop"
        )
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        out("stopping")
    finally:
        device.stop()
    out(f"stats: {json.dumps(device.stats())}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
