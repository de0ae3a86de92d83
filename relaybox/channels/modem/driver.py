"""One USB modem as a state machine on its own thread.

Why a thread per modem that owns everything: a modem is slow, stateful and sometimes dead. If
request threads or queue workers talked AT themselves, one hung dongle would hang them too.
Here callers only put work in a queue (:meth:`ModemDriver.send` returns a Future at once, with
a deadline after which an unstarted send fails as "offline, never sent"), and the modem thread
reports back through the callbacks given to the constructor:

``on_sent(msg_key, refs)``
    every part was accepted by the SMSC; ``refs`` are the TP-MRs (``+CMGS: <mr>``) in order.
``on_send_failed(msg_key, result)``
    the message did not go out (``result.outcome == "failed"``) or nobody knows
    (``"unknown"``, code ``MODEM_UNCONFIRMED``: a timeout after Ctrl-Z — never resend it).
``on_status(msg_key, status, raw)``
    a delivery report moved the message: ``"delivered"`` once, when *every* part is delivered;
    ``"failed"`` once, on the first part the network gave up on (the app's ``undelivered``);
    ``"pending"``/``"unknown"`` for informative reports. ``raw`` keeps TP-Status and times.
``on_inbound(message, commit)``
    an inbound SMS (concatenated parts already joined). The SIM copy is deleted only after the
    app calls ``commit()`` (from any thread) once the message is durably stored; an uncommitted
    message is offered again later with the same ``message.key``.
``on_health(status)``
    state changes and periodic polls: signal, registration, operator, SIM state, park reason.

Callbacks run on the modem thread: they should write to the database and return, not block.

The flows follow MODEM.md §1: init ladder §1.2, send §1.3/§1.4, reports §1.5, inbound §1.6,
USSD §1.7, error classes and resets §1.8.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from relaybox.channels.modem.at import (
    ESC,
    ATError,
    ATPort,
    CommandError,
    CommandTimeout,
    PortGoneError,
    PortOpenError,
    PromptTimeout,
    Reply,
    SubmitUnconfirmed,
    Urc,
)
from relaybox.channels.modem.inbound import InboundCollector, InboundSms, Offer, Slot
from relaybox.channels.modem.reports import ReportTracker, SentMessage
from relaybox.channels.modem.scan import PortCandidate, scan
from relaybox.sms import pdu

__all__ = [
    "InboundSms",
    "ModemConfig",
    "ModemDriver",
    "ModemTimeouts",
    "ModemUnavailable",
    "PortCandidate",
    "SendResult",
    "UssdResult",
    "classify_error",
    "scan",
]

log = logging.getLogger("relaybox.modem")

# Driver states.
STOPPED = "stopped"
CONNECTING = "connecting"  # opening the port
INITIALISING = "initialising"  # running the init ladder
READY = "ready"  # can send
RECOVERING = "recovering"  # climbing the reset ladder after timeouts
DISCONNECTED = "disconnected"  # port gone or unopenable; retrying with backoff
PARKED = "parked"  # needs an operator (PIN, PUK, SMSC...); see status()["reason"]

# Send outcomes.
SENT = "sent"
FAILED = "failed"
UNKNOWN = "unknown"

# Error classes (MODEM.md §1.8).
RETRYABLE = "retryable"
PERMANENT = "permanent"
CONFIGURATION = "configuration"

_RETRYABLE_CMS = frozenset(
    {38, 41, 42, 47, 302, 314, 331, 332, 500, 512, 513, 514, 515, 615, 616}
)
_PERMANENT_CMS = frozenset(
    {1, 8, 10, 21, 27, 28, 29, 30, 50, 69, 95, 96, 97, 98, 99, 111, 127, 304, 305}
    | set(range(193, 199))
)
_CONFIG_CMS = {
    301: "the modem's SMS service is reserved (+CMS ERROR: 301)",
    310: "no SIM card (+CMS ERROR: 310)",
    311: "the SIM needs its PIN (+CMS ERROR: 311)",
    312: "the SIM needs its PIN (+CMS ERROR: 312)",
    313: "SIM failure (+CMS ERROR: 313)",
    315: "wrong SIM (+CMS ERROR: 315)",
    316: "the SIM needs its PUK (+CMS ERROR: 316)",
    317: "the SIM needs PIN2 (+CMS ERROR: 317)",
    318: "the SIM needs PUK2 (+CMS ERROR: 318)",
    330: "the SMSC address is unknown (+CMS ERROR: 330): set `smsc` for this modem",
}
_CONFIG_CME = {
    10: "no SIM card (+CME ERROR: 10)",
    11: "the SIM needs its PIN (+CME ERROR: 11)",
    12: "the SIM needs its PUK (+CME ERROR: 12)",
    13: "SIM failure (+CME ERROR: 13)",
    15: "wrong SIM (+CME ERROR: 15)",
    17: "the SIM needs PIN2 (+CME ERROR: 17)",
    18: "the SIM needs PUK2 (+CME ERROR: 18)",
}
_REGISTERED = {
    1: "home",
    5: "roaming",
    6: "home (SMS only)",
    7: "roaming (SMS only)",
    9: "home (CSFB not preferred)",
    10: "roaming (CSFB not preferred)",
}
_NOT_REGISTERED = {0: "not searching", 2: "searching", 3: "denied", 4: "unknown"}


def classify_error(kind: str, code: int | None) -> str:
    """Error class of a failed send: retryable (nothing went out; try again later),
    permanent (this message can never go out), configuration (the modem needs an operator).

    Unknown codes count as retryable: the PDU was refused, so trying again is safe.
    """
    if kind == "CMS" and code is not None:
        if code in _CONFIG_CMS:
            return CONFIGURATION
        if code in _PERMANENT_CMS:
            return PERMANENT
        return RETRYABLE
    if kind == "CME" and code is not None and code in _CONFIG_CME:
        return CONFIGURATION
    return RETRYABLE


def _config_reason(kind: str, code: int | None) -> str:
    table = _CONFIG_CMS if kind == "CMS" else _CONFIG_CME
    return table.get(code or -1, f"+{kind} ERROR: {code}")


@dataclass
class ModemTimeouts:
    """Wall-clock limits, in seconds (MODEM.md §1.10 suggested defaults)."""

    basic: float = 5.0
    pin_query: float = 15.0
    pin_entry: float = 30.0
    pin_ready: float = 30.0  # poll AT+CPIN? this long for READY after entering the PIN
    registration: float = 10.0  # one AT+CREG?
    registration_wait: float = (
        30.0  # wait this long at init for the network, then go on
    )
    prompt: float = 10.0
    submit: float = 60.0  # after Ctrl-Z; then the outcome is unknown
    read: float = 10.0
    list: float = 60.0
    ussd: float = 30.0


@dataclass
class ModemConfig:
    """One ``[[modem]]`` table. ``port`` should be a stable ``/dev/serial/by-id/...`` path:
    it is opened again by name after every unplug or reset."""

    name: str
    port: str
    baudrate: int = 115200
    pin: str | None = None
    smsc: str | None = None  # override the SIM's SMSC (set with AT+CSCA, else embedded)
    rtscts: bool = False
    request_status_report: bool = True
    timeouts: ModemTimeouts = field(default_factory=ModemTimeouts)
    health_interval: float = 30.0
    sweep_interval: float = 30.0
    send_deadline: float = 120.0  # a queued send not started by then fails as offline
    send_retries: int = 2  # extra tries of a part after a retryable error
    retry_backoff: float = 10.0  # first wait between tries; doubles
    timeouts_before_reset: int = (
        2  # consecutive timeouts before climbing the reset ladder
    )
    reconnect_backoff: tuple[float, float] = (
        1.0,
        30.0,
    )  # first and longest wait to reopen
    reset_settle: float = 5.0  # wait after AT+CFUN=1,1 before reopening the port
    report_window: float = 3 * 86400.0  # keep sent parts this long for report matching
    multipart_timeout: float = 600.0  # then deliver an incomplete concatenation as is
    commit_timeout: float = (
        300.0  # offer an uncommitted inbound message again after this
    )


@dataclass
class SendResult:
    """How a send ended. ``refs`` holds the TP-MR of every part that went out (-1 for a part
    the modem confirmed without a ``+CMGS`` reference).

    ``error_code``: ``MODEM_UNCONFIRMED`` (unknown outcome), ``MODEM_REJECTED`` (permanent),
    ``MODEM_ERROR`` (retryable error, retries used up), ``MODEM_CONFIG`` (the modem is parked),
    ``MODEM_OFFLINE`` (never started before its deadline, or the driver stopped).
    """

    msg_key: str
    outcome: str  # sent / failed / unknown
    refs: list[int] = field(default_factory=list)
    parts: int = 0
    error_code: str | None = None
    error_class: str | None = None  # retryable / permanent / configuration
    cms: int | None = None
    detail: str = ""

    @property
    def resendable(self) -> bool:
        """True when nothing went out and the failure was not the message's fault, so the
        app may send it again (on this modem later, or another channel)."""
        return (
            self.outcome == FAILED
            and not self.refs
            and self.error_class in (RETRYABLE, CONFIGURATION)
        )


@dataclass(frozen=True)
class UssdResult:
    status: (
        int  # 0 done, 1 network wants a reply (we close it), 2 released, 4 unsupported
    )
    text: str
    dcs: int | None


class ModemUnavailable(Exception):
    """The modem cannot do this now (parked, stopped, or the request timed out)."""


@dataclass
class _SendJob:
    msg_key: str
    to: str
    text: str
    validity_seconds: float | None
    deadline: float
    future: Future[SendResult]
    pdus: list[pdu.SubmitPdu] | None = None
    refs: list[int] = field(default_factory=list)
    tracked: SentMessage | None = None


@dataclass
class _UssdJob:
    code: str
    deadline: float
    future: Future[UssdResult]


class _Parked(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _noop(*args: Any) -> None:
    return None


def _signal(rssi: int | None) -> dict[str, Any]:
    if rssi is None or rssi == 99 or not 0 <= rssi <= 31:
        return {"rssi": rssi, "dbm": None, "quality": "unknown"}
    dbm = -113 + 2 * rssi
    quality = (
        "marginal"
        if dbm <= -95
        else "workable"
        if dbm <= -85
        else "good"
        if dbm <= -75
        else "excellent"
    )
    return {"rssi": rssi, "dbm": dbm, "quality": quality}


def _ints(text: str) -> list[int]:
    return [int(x) for x in re.findall(r"-?\d+", text)]


def _quoted(text: str) -> list[str]:
    return re.findall(r'"([^"]*)"', text)


class ModemDriver:
    """A modem state machine. Create, :meth:`start`, then :meth:`send`; :meth:`stop` at exit.

    All AT traffic happens on the driver's thread. Public methods are thread-safe and never
    wait for the modem, except :meth:`ussd` and :meth:`wait_ready`, which wait on purpose.
    """

    def __init__(
        self,
        config: ModemConfig,
        *,
        on_sent: Callable[[str, list[int]], None] | None = None,
        on_send_failed: Callable[[str, SendResult], None] | None = None,
        on_status: Callable[[str, str, dict[str, Any]], None] | None = None,
        on_inbound: Callable[[InboundSms, Callable[[], None]], None] | None = None,
        on_health: Callable[[dict[str, Any]], None] | None = None,
    ):
        self.config = config
        self.name = config.name
        self.on_sent = on_sent or _noop
        self.on_send_failed = on_send_failed or _noop
        self.on_status = on_status or _noop
        self.on_inbound = on_inbound or _noop
        self.on_health = on_health or _noop
        self._cv = threading.Condition()
        self._jobs: deque[_SendJob | _UssdJob] = deque()  # callers' work, in order
        self._tasks: deque[tuple[Any, ...]] = deque()  # work the modem itself asked for
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._port: ATPort | None = None
        self._state = STOPPED
        self._reason: str | None = None
        self._ready_event = threading.Event()
        self._needs_init = True
        self._timeouts = 0
        self._errors = 0  # consecutive unexpected AT errors (backoff of re-inits)
        self._reset_level = 0
        self._resets = 0
        self._reconnect_wait = config.reconnect_backoff[0]
        self._rejected_pins: set[str] = set()
        self._restart_requested = False
        # Modem facts, for health.
        self._info: dict[str, Any] = {}
        self._rssi: int | None = None
        self._registration: dict[str, int] = {}
        self._last_error: str | None = None
        # Messaging state.
        self._embed_smsc: str | None = None
        self._storage = "SM"
        self._read_mem = "SM"
        self._sweep_mems: list[str] = ["SM"]
        self._report_mode = "none"
        self._concat_ref = random.randrange(256)
        self._reports = ReportTracker(config.report_window)
        self._inbound = InboundCollector(
            config.name, config.multipart_timeout, config.commit_timeout
        )
        self._ussd_reply: tuple[int, str, int | None] | None = None
        self._ussd_event = threading.Event()
        self._next_health = 0.0
        self._next_sweep = 0.0

    # -- public API ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the modem thread (returns at once; the modem comes up in the background)."""
        if self._thread is not None:
            return
        self._stopping = False
        self._thread = threading.Thread(
            target=self._run, name=f"modem-{self.name}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and close the port. Unstarted sends fail as ``MODEM_OFFLINE``;
        a send caught after its Ctrl-Z ends ``unknown``, as it should."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        port = self._port
        if port is not None:
            port.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self._thread = None
        self._fail_queued("MODEM_OFFLINE", RETRYABLE, "the modem driver stopped")
        self._set_state(STOPPED)

    def restart(self, config: ModemConfig | None = None) -> None:
        """Initialise again, with ``config`` if given: leaves the parked state once the
        operator fixed the SIM or the config. A PIN the SIM already rejected is still never
        entered again (a new ``pin`` value is tried once)."""
        with self._cv:
            if config is not None:
                self.config = config
            if self._state == PARKED:
                self._restart_requested = True
            else:
                self._needs_init = True
            self._cv.notify_all()

    @property
    def state(self) -> str:
        return self._state

    @property
    def online(self) -> bool:
        return self._state == READY

    def wait_ready(self, timeout: float) -> bool:
        """Block until the modem is ready (True) or ``timeout`` passes (False)."""
        return self._ready_event.wait(timeout)

    def send(
        self,
        msg_key: str,
        to: str,
        text: str,
        validity_seconds: float | None = None,
        *,
        deadline: float | None = None,
    ) -> Future[SendResult]:
        """Queue one message (all its parts) and return at once.

        ``deadline`` (seconds from now, default ``config.send_deadline``) bounds how long the
        message may wait for the modem; past it, an unstarted send fails ``MODEM_OFFLINE``.
        The Future and the callbacks report the same :class:`SendResult`; when the modem is
        parked or stopped the send fails at once, and ``on_send_failed`` then runs on the
        caller's thread.
        """
        future: Future[SendResult] = Future()
        limit = self.config.send_deadline if deadline is None else deadline
        job = _SendJob(
            msg_key, to, text, validity_seconds, time.monotonic() + limit, future
        )
        with self._cv:
            refused = self._state == PARKED or self._stopping or self._thread is None
            if not refused:
                self._jobs.append(job)
                self._cv.notify_all()
                return future
        parked = self._state == PARKED
        result = SendResult(
            msg_key,
            FAILED,
            error_code="MODEM_CONFIG" if parked else "MODEM_OFFLINE",
            error_class=CONFIGURATION if parked else RETRYABLE,
            detail=self._reason or "the modem driver is not running",
        )
        self._finish(job, result)
        return future

    def cancel(self, msg_key: str) -> bool:
        """Drop a queued send that has not started. True when it certainly never left."""
        with self._cv:
            for job in list(self._jobs):
                mine = isinstance(job, _SendJob) and job.msg_key == msg_key
                if mine and job.future.cancel():  # fails once the send has begun
                    self._jobs.remove(job)
                    return True
        return False

    def ussd(self, code: str, timeout: float | None = None) -> UssdResult:
        """Run a USSD code (``*100#``) and wait for the network's answer.

        Raises :class:`ModemUnavailable` when the modem cannot run it in time.
        """
        limit = self.config.timeouts.ussd + 10 if timeout is None else timeout
        future: Future[UssdResult] = Future()
        with self._cv:
            if self._state == PARKED or self._thread is None or self._stopping:
                raise ModemUnavailable(
                    self._reason or f"modem {self.name} is not running"
                )
            self._jobs.append(_UssdJob(code, time.monotonic() + limit, future))
            self._cv.notify_all()
        try:
            return future.result(timeout=limit)
        except TimeoutError as exc:
            future.cancel()
            raise ModemUnavailable(f"no USSD answer within {limit:g}s") from exc

    def track(self, msg_key: str, to: str, refs: list[int], sent_at: float) -> None:
        """Watch for reports of a message sent before this driver started (e.g. after an app
        restart): ``refs`` as given to ``on_sent``, ``sent_at`` a ``time.time()`` value."""
        self._reports.restore(msg_key, to, refs, sent_at)

    def status(self) -> dict[str, Any]:
        """Health snapshot for ``/devices`` and ``/ready``."""
        reg_stats = list(self._registration.values())
        registered = next((s for s in reg_stats if s in _REGISTERED), None)
        if registered is not None:
            registration = _REGISTERED[registered]
        elif reg_stats:
            registration = _NOT_REGISTERED.get(reg_stats[0], str(reg_stats[0]))
        else:
            registration = None
        with self._cv:
            queued = sum(1 for j in self._jobs if isinstance(j, _SendJob))
        return {
            "name": self.name,
            "port": self.config.port,
            "state": self._state,
            "online": self._state == READY,
            "reason": self._reason,
            "signal": _signal(self._rssi),
            "registration": registration,
            "registered": registered is not None,
            "operator": self._info.get("operator"),
            "sim": self._info.get("sim"),
            "manufacturer": self._info.get("manufacturer"),
            "model": self._info.get("model"),
            "imei": self._info.get("imei"),
            "imsi": self._info.get("imsi"),
            "smsc": self._info.get("smsc"),
            "storage": self._info.get("storage"),
            "report_mode": self._report_mode,
            "queued": queued,
            "resets": self._resets,
            "last_error": self._last_error,
            "updated_at": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        }

    # -- thread plumbing -----------------------------------------------------------------------

    def _callback(self, fn: Callable[..., Any], *args: Any) -> bool:
        """Run an app callback; its failure is logged, never allowed to kill the modem."""
        try:
            fn(*args)
            return True
        except Exception:
            log.exception(
                "%s: callback %s failed", self.name, getattr(fn, "__name__", fn)
            )
            return False

    def _set_state(self, state: str, reason: str | None = None) -> None:
        changed = state != self._state or reason != self._reason
        self._state = state
        self._reason = reason
        if state == READY:
            self._ready_event.set()
        else:
            self._ready_event.clear()
        if changed:
            level = logging.WARNING if state in (PARKED, DISCONNECTED) else logging.INFO
            log.log(
                level, "%s: %s%s", self.name, state, f": {reason}" if reason else ""
            )
            self._callback(self.on_health, self.status())

    def _sleep(self, seconds: float) -> bool:
        """Wait without holding anything up: expires queued sends meanwhile. False when the
        driver is stopping (the caller should unwind)."""
        end = time.monotonic() + seconds
        while True:
            self._expire_jobs()
            with self._cv:
                if self._stopping:
                    return False
                left = end - time.monotonic()
                if left <= 0:
                    return True
                self._cv.wait(min(left, 0.25))

    def _expire_jobs(self) -> None:
        now = time.monotonic()
        expired: list[_SendJob | _UssdJob] = []
        with self._cv:
            for job in list(self._jobs):  # queued jobs are never in progress
                if job.deadline <= now:
                    self._jobs.remove(job)
                    expired.append(job)
        for job in expired:
            if isinstance(job, _SendJob):
                self._finish(
                    job,
                    SendResult(
                        job.msg_key,
                        FAILED,
                        refs=list(job.refs),
                        parts=len(job.pdus or []),
                        error_code="MODEM_OFFLINE",
                        error_class=RETRYABLE,
                        detail=f"modem {self.name} was {self._state} until the send deadline",
                    ),
                )
            elif not job.future.done():
                job.future.set_exception(
                    ModemUnavailable(f"modem {self.name} is {self._state}")
                )

    def _fail_queued(self, code: str, cls: str, reason: str) -> None:
        with self._cv:
            jobs = list(self._jobs)
            self._jobs.clear()
        for job in jobs:
            if isinstance(job, _SendJob):
                self._finish(
                    job,
                    SendResult(
                        job.msg_key,
                        FAILED,
                        refs=list(job.refs),
                        parts=len(job.pdus or []),
                        error_code=code,
                        error_class=cls,
                        detail=reason,
                    ),
                )
            elif not job.future.done():
                job.future.set_exception(ModemUnavailable(reason))

    def _finish(self, job: _SendJob, result: SendResult) -> None:
        if job.future.done():
            return
        if not job.future.running() and not job.future.set_running_or_notify_cancel():
            return  # cancelled meanwhile
        job.future.set_result(result)
        if result.outcome == SENT:
            self._callback(self.on_sent, job.msg_key, list(result.refs))
        else:
            self._callback(self.on_send_failed, job.msg_key, result)

    def _run(self) -> None:
        while True:
            with self._cv:
                if self._stopping:
                    break
            try:
                port = self._port
                if port is not None and not port.alive:
                    self._lost_port(PortGoneError(f"{port.path} closed"))
                    continue
                if port is None:
                    self._connect()
                    continue
                if self._needs_init:
                    self._initialise()
                    continue
                self._serve()
            except _Parked as parked:
                self._park(parked.reason)
            except PortGoneError as exc:
                self._lost_port(exc)
            except CommandTimeout as exc:
                self._last_error = str(exc)
                self._on_timeout()
            except ATError as exc:
                # A command failed in a way the step did not expect: re-initialise, waiting
                # longer each time so a modem that always answers ERROR is not hammered.
                self._last_error = str(exc)
                self._errors += 1
                lo, hi = self.config.reconnect_backoff
                wait = min(hi, lo * 2 ** min(self._errors - 1, 10))
                log.warning("%s: %s; re-initialising in %gs", self.name, exc, wait)
                self._needs_init = True
                if not self._sleep(wait):
                    break
            except Exception:
                log.exception("%s: unexpected error in the modem thread", self.name)
                self._needs_init = True
                if not self._sleep(1.0):
                    break
        self._close_port()

    def _close_port(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            port.close()

    def _connect(self) -> None:
        """Open the configured path (again). After an unplug the by-id link disappears and
        comes back pointing at a new ttyUSBn: opening by name is what re-finds the modem."""
        self._close_port()
        if self._state not in (DISCONNECTED, RECOVERING):
            self._set_state(CONNECTING)
        port = ATPort(
            self.config.port,
            self.config.baudrate,
            name=self.name,
            on_urc=self._on_urc,
            on_gone=self._on_gone,
            rtscts=self.config.rtscts,
        )
        try:
            port.open()
        except PortOpenError as exc:
            self._last_error = str(exc)
            self._set_state(DISCONNECTED, str(exc))
            wait = self._reconnect_wait
            self._reconnect_wait = min(wait * 2, self.config.reconnect_backoff[1])
            self._sleep(wait)
            return
        self._reconnect_wait = self.config.reconnect_backoff[0]
        self._port = port
        self._needs_init = True
        self._timeouts = 0

    def _lost_port(self, exc: BaseException) -> None:
        if self._stopping:
            self._close_port()
            return
        self._last_error = f"port lost: {exc}"
        self._close_port()
        self._set_state(DISCONNECTED, f"port {self.config.port} lost: {exc}")
        self._sleep(self.config.reconnect_backoff[0])

    def _on_gone(self, exc: BaseException) -> None:
        with self._cv:
            self._cv.notify_all()

    def _on_timeout(self) -> None:
        """A command got no answer. A single one may be a glitch: resync and go on. More in
        a row climb the ladder: re-init -> AT+CFUN=1,1 -> reopen the port (MODEM.md §1.8)."""
        port = self._port
        if self._state == READY and self._timeouts < self.config.timeouts_before_reset:
            if port is not None and port.alive:
                port.drain()
            return
        step = self._reset_level % 3
        cycle = self._reset_level // 3
        self._reset_level += 1
        self._resets += 1
        self._set_state(RECOVERING, f"no answer from the modem ({self._last_error})")
        if step == 0:
            log.warning("%s: reset ladder: re-initialising", self.name)
            self._needs_init = True
        elif step == 1:
            log.warning("%s: reset ladder: AT+CFUN=1,1 and reopen", self.name)
            if port is not None and port.alive:
                try:
                    port.command("AT+CFUN=1,1", self.config.timeouts.basic)
                except ATError:
                    pass
            self._close_port()
            self._sleep(self.config.reset_settle)
        else:
            log.warning(
                "%s: reset ladder: closing and reopening %s",
                self.name,
                self.config.port,
            )
            self._close_port()
            lo, hi = self.config.reconnect_backoff
            self._sleep(min(hi, lo * (2**cycle)))

    def _park(self, reason: str) -> None:
        """Stop using the modem until an operator acts (:meth:`restart`). The port is closed
        so they can use it (minicom) and so a wrong PIN is never sent twice."""
        self._close_port()
        self._set_state(PARKED, reason)
        self._fail_queued("MODEM_CONFIG", CONFIGURATION, reason)
        with self._cv:
            while not self._stopping and not self._restart_requested:
                self._cv.wait(1.0)
            self._restart_requested = False
        self._needs_init = True
        if not self._stopping:
            self._set_state(CONNECTING)

    # -- AT helpers ----------------------------------------------------------------------------

    def _at(self, command: str, timeout: float | None = None) -> Reply:
        port = self._port
        if port is None or not port.alive:
            raise PortGoneError("port not open")
        try:
            reply = port.command(
                command, self.config.timeouts.basic if timeout is None else timeout
            )
        except CommandTimeout:
            self._timeouts += 1
            raise
        self._timeouts = 0
        return reply

    def _at_quiet(self, command: str, timeout: float | None = None) -> Reply | None:
        """Optional step: an error answer is fine (None), a timeout still counts."""
        try:
            return self._at(command, timeout)
        except CommandError:
            return None

    # -- initialisation ladder (MODEM.md §1.2) --------------------------------------------------

    def _initialise(self) -> None:
        t = self.config.timeouts
        if self._state != RECOVERING:
            self._set_state(INITIALISING)
        port = self._port
        assert port is not None
        # Step 0: a crash may have left the modem in SMS entry mode; ESC leaves it without
        # sending the half-typed PDU (Ctrl-Z would send it).
        port.write_raw(ESC + b"\r")
        port.drain(quiet=0.1, limit=0.5)
        for attempt in range(3):
            try:
                self._at("AT", t.basic)
                break
            except CommandTimeout:
                if attempt == 2:
                    raise
                port.write_raw(ESC + b"\r")
            except CommandError:
                break  # it answered; that is all this step wants
        self._at_quiet("ATE0")
        self._at_quiet("AT+CMEE=1")
        self._info["manufacturer"] = self._first_line(self._at_quiet("AT+CGMI"))
        self._info["model"] = self._first_line(self._at_quiet("AT+CGMM"))
        imei, previous = (
            self._first_line(self._at_quiet("AT+CGSN")),
            self._info.get("imei"),
        )
        if imei and previous and imei != previous:
            # Identical dongles can swap by-id names after a replug (MODEM.md §2).
            log.warning(
                "%s: a different modem now answers on %s (IMEI %s, was %s)",
                self.name,
                self.config.port,
                imei,
                previous,
            )
        self._info["imei"] = imei
        self._unlock_sim()
        cfun = self._at_quiet("AT+CFUN?")
        if cfun is not None and _ints(cfun.first("+CFUN:") or "1")[:1] != [1]:
            log.info(
                "%s: radio is off (%s); AT+CFUN=1", self.name, cfun.first("+CFUN:")
            )
            self._at_quiet("AT+CFUN=1", t.registration)
        self._info["imsi"] = self._first_line(self._at_quiet("AT+CIMI"))
        if "huawei" in (self._info.get("manufacturer") or "").lower():
            self._at_quiet("AT^CURC=0")  # stop periodic ^RSSI/^BOOT noise
        self._wait_registered()
        self._poll_signal()
        try:
            self._at("AT+CMGF=0")
        except CommandError as exc:
            raise _Parked(
                f"the modem refuses PDU mode (AT+CMGF=0 -> {exc.final})"
            ) from exc
        self._check_smsc()
        self._choose_storage()
        self._enable_indications()
        self._needs_init = False
        self._reset_level = 0
        self._errors = 0
        self._next_health = time.monotonic() + self.config.health_interval
        self._next_sweep = 0.0  # sweep storage at once: messages may have waited
        self._set_state(READY)

    @staticmethod
    def _first_line(reply: Reply | None) -> str | None:
        if reply is None or not reply.lines:
            return None
        line = reply.lines[0]
        return (
            line.split(":", 1)[1].strip()
            if line.startswith("+") and ":" in line
            else line
        )

    def _cpin_state(self) -> str:
        """``AT+CPIN?`` with the retries a SIM that is still booting needs (CME 14/515)."""
        t = self.config.timeouts
        for attempt in range(5):
            try:
                reply = self._at("AT+CPIN?", t.pin_query)
            except CommandError as exc:
                if exc.kind == "CME" and exc.code in (14, 515) and attempt < 4:
                    self._sleep(0.5 * (attempt + 1))
                    continue
                if exc.kind == "CME" and exc.code in _CONFIG_CME:
                    raise _Parked(_config_reason("CME", exc.code)) from exc
                raise
            value = reply.first("+CPIN:")
            if value is None:
                value = next(
                    (line for line in reply.lines if "READY" in line or "SIM" in line),
                    "READY",
                )
            return value.strip().strip('"').upper()
        return "UNKNOWN"

    def _unlock_sim(self) -> None:
        """Enter the configured PIN at most once; never a PUK (MODEM.md §2: retry loops have
        locked SIMs into PUK)."""
        state = self._cpin_state()
        self._info["sim"] = state
        if state == "READY":
            return
        if "PUK" in state:
            raise _Parked(
                f"the SIM is locked ({state}): unlock it in a phone with the PUK from "
                f"the operator; relaybox never enters a PUK"
            )
        if state != "SIM PIN":
            raise _Parked(f"the SIM asks for {state}, which relaybox cannot provide")
        pin = self.config.pin
        if not pin:
            raise _Parked("the SIM needs a PIN: set `pin` for this modem")
        if pin in self._rejected_pins:
            raise _Parked(
                "the SIM rejected the configured PIN before; not trying it again "
                "(a few wrong tries lock the SIM). Fix `pin` and restart the modem"
            )
        log.info("%s: entering the SIM PIN", self.name)
        try:
            self._at(f'AT+CPIN="{pin}"', self.config.timeouts.pin_entry)
        except CommandError as exc:
            self._rejected_pins.add(pin)
            if exc.kind == "CME" and exc.code == 12:
                raise _Parked(
                    "the SIM is now PUK-locked; unlock it in a phone"
                ) from exc
            raise _Parked(
                f"the SIM rejected the configured PIN ({exc.final}); not retrying. "
                f"Fix `pin` and restart the modem"
            ) from exc
        end = time.monotonic() + self.config.timeouts.pin_ready
        while True:
            state = self._cpin_state()
            self._info["sim"] = state
            if state == "READY":
                return
            if "PUK" in state:
                self._rejected_pins.add(pin)
                raise _Parked("the SIM is now PUK-locked; unlock it in a phone")
            if time.monotonic() > end:
                self._rejected_pins.add(pin)
                raise _Parked(
                    f"the SIM did not accept the PIN (still {state}); not retrying"
                )
            if not self._sleep(0.5):
                return

    def _poll_registration(self) -> int | None:
        t = self.config.timeouts
        for cmd in ("AT+CREG?", "AT+CGREG?", "AT+CEREG?"):
            reply = self._at_quiet(cmd, t.registration)
            if reply is None:
                continue
            value = reply.first(cmd[2:-1] + ":")
            numbers = _ints(value or "")
            if len(numbers) >= 2:
                self._registration[cmd[3:-1]] = numbers[1]
        stats = list(self._registration.values())
        return next((s for s in stats if s in _REGISTERED), None)

    def _wait_registered(self) -> None:
        end = time.monotonic() + self.config.timeouts.registration_wait
        while True:
            if self._poll_registration() is not None:
                self._poll_operator()
                return
            if time.monotonic() >= end:
                log.warning(
                    "%s: not registered with a network yet (%s); going on, sends "
                    "will be retried",
                    self.name,
                    self._registration,
                )
                return
            if not self._sleep(1.0):
                return

    def _poll_signal(self) -> None:
        reply = self._at_quiet("AT+CSQ")
        if reply is not None:
            numbers = _ints(reply.first("+CSQ:") or "")
            if numbers:
                self._rssi = numbers[0]

    def _poll_operator(self) -> None:
        reply = self._at_quiet("AT+COPS?")
        if reply is not None:
            names = _quoted(reply.first("+COPS:") or "")
            self._info["operator"] = names[0] if names else None

    def _check_smsc(self) -> None:
        """Read the SIM's SMSC; a configured one wins. A SIM without one is the usual cause of
        'cannot send' (smstools3 FAQ), so say so instead of failing every message."""
        self._embed_smsc = None
        reply = self._at_quiet("AT+CSCA?")
        current = (_quoted(reply.first("+CSCA:") or "") or [""])[0] if reply else ""
        wanted = self.config.smsc
        if wanted and re.sub(r"\D", "", wanted) != re.sub(r"\D", "", current):
            toa = 145 if wanted.startswith("+") else 129
            if self._at_quiet(f'AT+CSCA="{wanted}",{toa}') is None:
                log.warning(
                    "%s: AT+CSCA refused; putting the SMSC in every PDU", self.name
                )
                self._embed_smsc = wanted
            current = wanted
        if not current and reply is not None:
            raise _Parked(
                "the SIM has no SMSC number (AT+CSCA? is empty): set `smsc` for this "
                "modem to your operator's message centre number"
            )
        self._info["smsc"] = current or None

    def _choose_storage(self) -> None:
        """Prefer SIM storage for all three memories (some modems store in ME where only SM
        is readable, smstools3 FAQ Q13); keep SR for reports if the modem has it."""
        reply = self._at_quiet("AT+CPMS=?")
        groups = (
            re.findall(r"\(([^)]*)\)", reply.first("+CPMS:") or "") if reply else []
        )
        mems = [_quoted(g) for g in groups] or [["SM"], ["SM"], ["SM"]]
        read_mems = mems[0]
        storage = next(
            (m for m in ("SM", "ME", "MT") if m in read_mems),
            read_mems[0] if read_mems else "SM",
        )
        chosen = [
            storage if storage in group or not group else group[0]
            for group in (mems + [[storage]] * 3)[:3]
        ]
        args = ",".join(f'"{m}"' for m in chosen)
        set_reply = self._at_quiet(f"AT+CPMS={args}") or self._at_quiet(
            f'AT+CPMS="{storage}"'
        )
        self._storage = self._read_mem = storage
        self._sweep_mems = [storage] + (["SR"] if "SR" in read_mems else [])
        if set_reply is not None:
            counts = _ints(set_reply.first("+CPMS:") or "")
            if len(counts) >= 2:
                self._info["storage"] = {
                    "memory": storage,
                    "used": counts[0],
                    "total": counts[1],
                }

    def _enable_indications(self) -> None:
        """``+CNMI=2,1,0,2`` (store + ``+CMTI``, reports stored + ``+CDSI``), else ``ds=1``
        (reports routed as ``+CDS``), else no indications: the storage sweep still works."""
        for cnmi, mode in (  # some modems take only four parameters
            ("2,1,0,2,0", "stored"),
            ("2,1,0,2", "stored"),
            ("2,1,0,1,0", "routed"),
            ("2,1,0,1", "routed"),
            ("2,1,0,0,0", "none"),
        ):
            if self._at_quiet(f"AT+CNMI={cnmi}") is not None:
                self._report_mode = mode
                if mode != "stored":
                    log.info(
                        "%s: AT+CNMI=2,1,0,2 refused; reports are %s", self.name, mode
                    )
                return
        self._report_mode = "none"
        log.warning(
            "%s: the modem accepts no AT+CNMI; relying on the storage sweep", self.name
        )

    # -- serving -------------------------------------------------------------------------------

    def _serve(self) -> None:
        """One turn of the ready loop: modem-originated tasks first (reads, deletes, reports:
        cheap and they free storage), then one caller job, then the periodic duties."""
        self._expire_jobs()
        task: tuple[Any, ...] | None = None
        job: _SendJob | _UssdJob | None = None
        with self._cv:
            if self._tasks:
                task = self._tasks.popleft()
            elif self._jobs:
                job = self._jobs.popleft()
            else:
                now = time.monotonic()
                wake = min(self._next_health, self._next_sweep)
                if wake > now and self._port is not None and self._port.alive:
                    self._cv.wait(min(wake - now, 1.0))
                    return
        if task is not None:
            self._run_task(task)
        elif isinstance(job, _SendJob):
            self._send_job(job)
        elif isinstance(job, _UssdJob):
            self._ussd_job(job)
        now = time.monotonic()
        if now >= self._next_health:
            self._next_health = now + self.config.health_interval
            self._poll_health()
        if now >= self._next_sweep:
            self._next_sweep = now + self.config.sweep_interval
            self._sweep()

    def _poll_health(self) -> None:
        """Periodic health poll; it doubles as the idle watchdog (a hung modem times out
        here and climbs the reset ladder before a send finds it dead)."""
        self._poll_signal()
        self._poll_registration()
        self._poll_operator()
        state = self._cpin_state()
        self._info["sim"] = state
        if state != "READY":
            log.warning("%s: SIM state is now %s; re-initialising", self.name, state)
            self._needs_init = True
        reply = self._at_quiet("AT+CPMS?")
        if reply is not None:
            # +CPMS: "SR",0,30,"SM",2,30,"SM",2,30 -- report the memory inbound SMS land in.
            value = reply.first("+CPMS:") or ""
            names = _quoted(value)
            counts = _ints(value)
            if names:
                self._read_mem = names[0]
            pairs = list(
                zip(names, zip(counts[0::2], counts[1::2], strict=False), strict=False)
            )
            used_total = next(
                (c for n, c in reversed(pairs) if n == self._storage), None
            )
            if used_total is not None:
                used, total = used_total
                self._info["storage"] = {
                    "memory": self._storage,
                    "used": used,
                    "total": total,
                }
                if total and used >= total:
                    log.warning(
                        "%s: SIM storage is full (%d/%d)", self.name, used, total
                    )
        self._housekeeping()
        self._callback(self.on_health, self.status())

    def _housekeeping(self) -> None:
        self._reports.expire()  # past the report window nothing more will come
        for offer in self._inbound.expire():  # concatenations that never completed
            log.warning(
                "%s: delivering an incomplete message from %s (%d parts)",
                self.name,
                offer.message.sender,
                offer.message.parts,
            )
            self._offer(offer)

    # -- sending (MODEM.md §1.3/§1.4) ------------------------------------------------------------

    def _send_job(self, job: _SendJob) -> None:
        cfg = self.config
        if job.pdus is None:
            if not job.future.set_running_or_notify_cancel():
                return
            try:
                job.pdus = pdu.encode_submit(
                    job.to,
                    job.text,
                    smsc=self._embed_smsc,
                    request_status_report=cfg.request_status_report,
                    validity_seconds=job.validity_seconds,
                    concat_ref=self._next_concat_ref(),
                )
            except ValueError as exc:
                self._finish(
                    job,
                    SendResult(
                        job.msg_key,
                        FAILED,
                        error_code="MODEM_REJECTED",
                        error_class=PERMANENT,
                        detail=str(exc),
                    ),
                )
                return
            job.tracked = self._reports.add(job.msg_key, job.to, len(job.pdus))
        assert job.tracked is not None
        port = self._port
        assert port is not None
        total = len(job.pdus)
        while len(job.refs) < total:
            part = job.pdus[len(job.refs)]
            tries = 0
            while True:
                try:
                    reply = port.submit_pdu(
                        part.tpdu_length,
                        part.hex,
                        cfg.timeouts.prompt,
                        cfg.timeouts.submit,
                    )
                    self._timeouts = 0
                    break
                except SubmitUnconfirmed as exc:
                    self._timeouts += 1
                    self._reports.unconfirmed(job.tracked, len(job.refs))
                    log.warning(
                        "%s: %s: part %d/%d unconfirmed: %s",
                        self.name,
                        job.msg_key,
                        part.seq,
                        total,
                        exc,
                    )
                    self._finish(
                        job,
                        SendResult(
                            job.msg_key,
                            UNKNOWN,
                            refs=list(job.refs),
                            parts=total,
                            error_code="MODEM_UNCONFIRMED",
                            error_class=None,
                            detail=f"part {part.seq}/{total}: {exc}; it may have been sent. "
                            "Not resent; a delivery report would prove it arrived",
                        ),
                    )
                    raise CommandTimeout(str(exc)) from exc
                except (PromptTimeout, PortGoneError) as exc:
                    # Nothing of this part went out: put the job back at the front and let
                    # the main loop recover the modem; it resumes at this part.
                    if isinstance(exc, PromptTimeout):
                        self._timeouts += 1
                    job.deadline = time.monotonic() + cfg.send_deadline
                    with self._cv:
                        self._jobs.appendleft(job)
                    raise
                except CommandError as exc:
                    cls = classify_error(exc.kind, exc.code)
                    tries += 1
                    if cls == RETRYABLE and tries <= cfg.send_retries:
                        wait = cfg.retry_backoff * (2 ** (tries - 1))
                        log.info(
                            "%s: %s: part %d/%d refused (%s); retry %d in %gs",
                            self.name,
                            job.msg_key,
                            part.seq,
                            total,
                            exc.final,
                            tries,
                            wait,
                        )
                        if not self._sleep(wait):
                            self._finish(job, self._refused(job, exc, cls))
                            return
                        continue
                    self._finish(job, self._refused(job, exc, cls))
                    if cls == CONFIGURATION:
                        raise _Parked(_config_reason(exc.kind, exc.code)) from exc
                    return
            mr_text = reply.first("+CMGS:")
            numbers = _ints(mr_text or "")
            mr = numbers[0] if numbers else None
            if mr is None:
                log.warning(
                    "%s: %s: no +CMGS reference in %s",
                    self.name,
                    job.msg_key,
                    reply.lines,
                )
            job.tracked.parts[len(job.refs)].mr = mr
            job.refs.append(mr if mr is not None else -1)
        self._finish(
            job, SendResult(job.msg_key, SENT, refs=list(job.refs), parts=total)
        )

    def _refused(self, job: _SendJob, exc: CommandError, cls: str) -> SendResult:
        code = {PERMANENT: "MODEM_REJECTED", CONFIGURATION: "MODEM_CONFIG"}.get(
            cls, "MODEM_ERROR"
        )
        if job.tracked is not None and not job.refs:
            self._reports.abandon(job.tracked)  # nothing went out: no report will come
        return SendResult(
            job.msg_key,
            FAILED,
            refs=list(job.refs),
            parts=len(job.pdus or []),
            error_code=code,
            error_class=cls,
            cms=exc.code if exc.kind == "CMS" else None,
            detail=exc.final,
        )

    def _next_concat_ref(self) -> int:
        """Concatenation reference, independent of TP-MR (MODEM.md §1.4)."""
        self._concat_ref = (self._concat_ref + 1) % 256
        return self._concat_ref

    # -- delivery reports (MODEM.md §1.5) --------------------------------------------------------

    def _handle_report(self, report: pdu.StatusReport, hex_pdu: str) -> None:
        event = self._reports.match(report, hex_pdu)
        if event is not None:
            self._callback(self.on_status, event.msg_key, event.status, event.raw)

    # -- inbound (MODEM.md §1.6) -----------------------------------------------------------------

    def _on_urc(self, urc: Urc) -> None:
        """Reader thread: record and queue, never talk AT here."""
        name, value = urc.name, urc.value
        task: tuple[Any, ...] | None = None
        if name in ("+CMTI", "+CDSI"):
            mem = (_quoted(value) or [self._storage])[0]
            numbers = _ints(value.split(",")[-1])
            if numbers:
                task = ("read", mem, numbers[0])
        elif name in ("+CMT", "+CDS") and urc.body:
            task = ("routed", urc.body)
        elif name == "+CUSD":
            self._ussd_reply = _parse_cusd(value)
            self._ussd_event.set()
        elif name == "^RSSI":
            numbers = _ints(value)
            if numbers:
                self._rssi = numbers[0]
        elif name in ("+CREG", "+CGREG", "+CEREG"):
            numbers = _ints(value)
            if numbers:  # unsolicited form: stat first
                self._registration[name[1:]] = numbers[0]
        elif name == "+CMGS":
            numbers = _ints(value)
            if numbers:
                task = ("late_cmgs", numbers[0])
        elif name == "+CPIN" and "READY" not in value:
            task = ("reinit",)
        if task is not None:
            with self._cv:
                self._tasks.append(task)
                self._cv.notify_all()

    def _run_task(self, task: tuple[Any, ...]) -> None:
        kind = task[0]
        if kind == "read":
            self._read_slot(task[1], task[2])
        elif kind == "routed":
            self._process_pdu(task[1], None)
        elif kind == "delete":
            self._delete_slots(task[1])
        elif kind == "late_cmgs":
            self._late_reference(task[1])
        elif kind == "reinit":
            self._needs_init = True

    def _late_reference(self, mr: int) -> None:
        msg_key = self._reports.late_reference(mr)
        if msg_key is not None:
            log.info("%s: late +CMGS %d attached to %s", self.name, mr, msg_key)

    def _select_mem(self, mem: str) -> bool:
        if mem == self._read_mem:
            return True
        if self._at_quiet(f'AT+CPMS="{mem}"', self.config.timeouts.read) is None:
            return False
        self._read_mem = mem
        return True

    def _read_slot(self, mem: str, index: int) -> None:
        if self._inbound.claimed((mem, index)) or not self._select_mem(mem):
            return
        try:
            reply = self._at(f"AT+CMGR={index}", self.config.timeouts.read)
        except CommandError as exc:
            log.debug("%s: %s slot %d unreadable: %s", self.name, mem, index, exc.final)
            return
        hex_pdu = next((line for line in reply.lines if not line.startswith("+")), None)
        if hex_pdu:
            self._process_pdu(hex_pdu, (mem, index))

    def _sweep(self) -> None:
        """List every stored message (``AT+CMGL=4``): catches what a lost ``+CMTI`` missed,
        what arrived while relaybox was down, and reports stored without ``+CDSI``."""
        for mem in self._sweep_mems:
            if not self._select_mem(mem):
                continue
            try:
                reply = self._at("AT+CMGL=4", self.config.timeouts.list)
            except CommandError:
                continue
            listed: dict[int, str] = {}
            header: int | None = None
            for line in reply.lines:  # "+CMGL: <index>,<stat>,[<alpha>],<length>" + PDU
                if line.startswith("+CMGL:"):
                    numbers = _ints(line[6:])
                    header = numbers[0] if numbers else None
                elif header is not None:
                    listed[header] = line
                    header = None
            self._inbound.reconcile(mem, listed)
            for index, hex_pdu in listed.items():
                self._process_pdu(hex_pdu, (mem, index))

    def _process_pdu(self, hex_pdu: str, slot: Slot | None) -> None:
        """One PDU from storage (``slot``) or routed in a URC (``None``)."""
        if slot is not None and self._inbound.claimed(slot, hex_pdu):
            return
        try:
            decoded = pdu.decode_pdu(hex_pdu)
        except ValueError as exc:
            where = f"{slot[0]} slot {slot[1]}" if slot else "a routed URC"
            log.warning("%s: undecodable PDU in %s: %s", self.name, where, exc)
            if slot is not None:
                self._inbound.ignore(slot, hex_pdu)
            return
        if isinstance(decoded, pdu.StatusReport):
            self._handle_report(decoded, hex_pdu)
            if slot is not None:
                self._delete_slots([slot])
        elif isinstance(decoded, pdu.Deliver):
            offer = self._inbound.add(decoded, slot, hex_pdu)
            if offer is not None:
                self._offer(offer)
        elif slot is not None:
            self._inbound.ignore(slot, hex_pdu)  # a stored SUBMIT: not ours to touch

    def _offer(self, offer: Offer) -> None:
        """Hand a message to the app; its SIM copy is deleted when the app commits."""
        committed = threading.Event()
        slots = list(offer.slots)

        def commit() -> None:
            """Called by the app once the message is stored: now the SIM copy may go."""
            if committed.is_set():
                return
            committed.set()
            if slots:
                with self._cv:
                    self._tasks.append(("delete", slots))
                    self._cv.notify_all()

        message = offer.message
        log.info(
            "%s: inbound SMS from %s (%d part%s)",
            self.name,
            message.sender,
            message.parts,
            "" if message.parts == 1 else "s",
        )
        taken = self._callback(self.on_inbound, message, commit)
        if not taken and not committed.is_set():
            self._inbound.release(offer)  # the next sweep offers it again

    def _delete_slots(self, slots: list[Slot]) -> None:
        for mem, index in slots:
            if not self._select_mem(mem):
                continue
            try:
                self._at(f"AT+CMGD={index}", self.config.timeouts.read)
            except CommandError as exc:
                if exc.code not in (321, 516):  # already gone is fine
                    log.warning(
                        "%s: could not delete %s slot %d: %s",
                        self.name,
                        mem,
                        index,
                        exc.final,
                    )
                    continue
            self._inbound.deleted((mem, index))

    # -- USSD (MODEM.md §1.7) --------------------------------------------------------------------

    def _ussd_job(self, job: _UssdJob) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        self._ussd_event.clear()
        self._ussd_reply = None
        code = job.code.replace('"', "")
        try:
            reply = self._at(f'AT+CUSD=1,"{code}",15', self.config.timeouts.basic)
        except CommandError as exc:
            job.future.set_exception(ModemUnavailable(f"USSD refused: {exc.final}"))
            return
        early = reply.first("+CUSD:")  # some modems answer before their OK
        if early is not None:
            self._ussd_reply = _parse_cusd(early)
            self._ussd_event.set()
        limit = max(
            0.0, min(self.config.timeouts.ussd, job.deadline - time.monotonic())
        )
        if not self._ussd_event.wait(limit) or self._ussd_reply is None:
            self._at_quiet("AT+CUSD=2")
            job.future.set_exception(
                ModemUnavailable(f"no USSD answer within {limit:g}s")
            )
            return
        status, text, dcs = self._ussd_reply
        if status == 1:
            self._at_quiet("AT+CUSD=2")  # we do not do menus: close the session
        job.future.set_result(UssdResult(status, _decode_ussd(text, dcs), dcs))


def _parse_cusd(value: str) -> tuple[int, str, int | None]:
    """``+CUSD: <m>[,"<text>"[,<dcs>]]`` -> (m, text, dcs)."""
    numbers = _ints(value.split(",")[0])
    texts = _quoted(value)
    tail = _ints(value.rsplit('"', 1)[-1]) if texts else []
    return (
        numbers[0] if numbers else 2,
        texts[0] if texts else "",
        tail[0] if tail else None,
    )


def _decode_ussd(text: str, dcs: int | None) -> str:
    """USSD text arrives as-is, or as UCS-2 hex (dcs 72). Packed GSM-7 hex (some Huawei
    firmwares) is left as is: it cannot be told from a reply made of hex digits."""
    ucs2 = dcs is not None and (dcs & 0xE0) in (0x40, 0x00) and (dcs & 0x0C) == 0x08
    if ucs2 and re.fullmatch(r"(?:[0-9A-Fa-f]{4})+", text):
        return pdu.ucs2_decode(bytes.fromhex(text))
    return text
