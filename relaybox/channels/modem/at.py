"""The AT transport: one serial port, one reader thread, one command at a time.

Why a reader thread instead of "write, then read until OK": a modem talks whenever it likes.
``+CMTI``, ``+CDSI``, ``^RSSI`` and friends arrive between a command and its ``OK`` (MODEM.md
§1.9). Here a single thread owns every byte that comes in and sorts each line into

* the echo of the command we just wrote (ignored, so echo left on does no harm),
* a final result code (``OK``, ``ERROR``, ``+CME ERROR: n``, ``+CMS ERROR: n``, ...),
* an unsolicited result code, by a prefix table (``+CMT``/``+CDS`` take a second line: the PDU),
  handed to a callback and never mixed into a command's reply,
* data for the command in flight.

The SMS-entry prompt ``> `` has no line terminator, so it is matched as bytes at the start of
the unterminated buffer. Every command has a wall-clock deadline that unrelated traffic does
not extend (gammu's ``^NWTIME`` stall, MODEM.md §1.9). Every exchange is logged on
``relaybox.modem`` with the PIN and message contents masked.

The URC callback runs on the reader thread: it must only record things and wake the driver,
never issue AT commands itself (it would deadlock waiting for its own reader).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import serial

log = logging.getLogger("relaybox.modem")

CTRL_Z = b"\x1a"
ESC = b"\x1b"

#: Final result codes that end a command with an error. ``+CME``/``+CMS`` carry a number once
#: ``AT+CMEE=1`` is on; the others are vendor spellings of a bare ERROR (gammu ``at.c``).
_ERROR_FINALS = ("ERROR", "COMMAND NOT SUPPORT", "TOO MANY PARAMETERS", "MODEM ERROR")

#: Unsolicited result codes: prefix -> number of lines that follow it (PDU mode).
URC_PREFIXES: dict[str, int] = {
    "+CMTI:": 0,
    "+CDSI:": 0,
    "+CMT:": 1,
    "+CDS:": 1,
    "+CBM:": 1,
    "+CUSD:": 0,
    "+CMGS:": 0,  # only when no AT+CMGS is waiting: a late answer after a timeout
    "RING": 0,
    "+CRING:": 0,
    "+CLIP:": 0,
    "NO CARRIER": 0,
    "+CREG:": 0,
    "+CGREG:": 0,
    "+CEREG:": 0,
    "+CIEV:": 0,
    "+CPIN:": 0,
    "+CFUN:": 0,
    "+CTZV:": 0,
    "+CTZE:": 0,
    "+PACSP": 0,
    "*PSUTTZ:": 0,
    "+QIND:": 0,
    "+ZDONR:": 0,
    "+ZPASR:": 0,
    "+ZUSIMR:": 0,
    "^RSSI:": 0,
    "^HCSQ:": 0,
    "^BOOT:": 0,
    "^MODE:": 0,
    "^NWTIME:": 0,
    "^SRVST:": 0,
    "^SIMST:": 0,
    "^DSFLOWRPT:": 0,
    "^CEND:": 0,
    "RDY": 0,
    "SMS Ready": 0,
    "Call Ready": 0,
}

#: Commands whose reply data lines carry message contents: never log those lines verbatim.
_SENSITIVE_REPLIES = ("AT+CMGR", "AT+CMGL")

_HEX_LINE = re.compile(r"^[0-9A-Fa-f]{16,}\x1a?$")
_CPIN_CMD = re.compile(r"^(AT\+(?:CPIN|CLCK|CPWD)=)(.*)$", re.IGNORECASE)
_CUSD_REPLY = re.compile(r'^(\+CUSD:\s*\d+\s*,)\s*"(.*)"(.*)$')
_CUSD_REQ = re.compile(r'^(AT\+CUSD=\d+\s*,)\s*"(.*)"(.*)$', re.IGNORECASE)


class ATError(Exception):
    """Base class of every transport error."""


class PortOpenError(ATError):
    """The port could not be opened; the message says what to do about it."""


class PortBusyError(PortOpenError):
    """Another program (usually ModemManager) holds the port."""


class PortGoneError(ATError):
    """The device disappeared (USB unplug, modem reboot) or the port was closed."""


class CommandTimeout(ATError):
    """No final result code before the wall-clock deadline."""


class PromptTimeout(CommandTimeout):
    """``AT+CMGS`` got no ``> `` prompt in time. Nothing was transmitted."""


class SubmitUnconfirmed(CommandTimeout):
    """The PDU and Ctrl-Z were written but no result came: the message may or may not be out."""


class CommandError(ATError):
    """The modem answered with an error final result code.

    ``kind`` is ``"CME"``, ``"CMS"`` or ``"ERROR"`` (bare or vendor error without a number);
    ``code`` is the number for CME/CMS. ``after_prompt`` is True when the error came after the
    PDU was written (for ``AT+CMGS``: the network refused it; still "not sent").
    """

    def __init__(
        self, command: str, final: str, lines: list[str], after_prompt: bool = False
    ):
        self.command = command
        self.final = final
        self.lines = lines
        self.after_prompt = after_prompt
        self.kind, self.code = parse_error(final)
        super().__init__(f"{mask_line(command)} -> {final}")


def parse_error(final: str) -> tuple[str, int | None]:
    """Split a final error code into (kind, number)."""
    m = re.match(r"^\+(CME|CMS) ERROR:\s*(\d+)", final)
    if m:
        return m.group(1), int(m.group(2))
    return "ERROR", None


def is_final(line: str) -> bool:
    if line == "OK":
        return True
    if line.startswith(("+CME ERROR", "+CMS ERROR")):
        return True
    return line.startswith(_ERROR_FINALS)


def mask_line(line: str, sensitive: bool = False) -> str:
    """Return ``line`` fit for a log: PIN, PDUs, USSD text and message text replaced.

    ``sensitive`` marks a data line of a reply that may hold message text (``AT+CMGR``).
    """
    m = _CPIN_CMD.match(line)
    if m:
        return m.group(1) + '"****"'
    if _HEX_LINE.match(line):
        return f"<pdu {len(line.rstrip(chr(26))) // 2} octets>"
    m = _CUSD_REPLY.match(line)
    if m:
        return f"{m.group(1)}<{len(m.group(2))} chars>{m.group(3)}"
    m = _CUSD_REQ.match(line)
    if m and not re.fullmatch(r"[*#0-9]+", m.group(2)):
        return f"{m.group(1)}<{len(m.group(2))} chars>{m.group(3)}"
    if sensitive and not line.startswith(("+", "^", "*")):
        return f"<{len(line)} chars>"
    return line


@dataclass
class Urc:
    """One unsolicited result code: its first line and, for ``+CMT``/``+CDS``, the PDU line."""

    line: str
    body: str | None = None
    received_at: float = field(default_factory=time.time)

    @property
    def name(self) -> str:
        """The prefix up to the colon (``+CMTI``), or the whole line for ``RING``."""
        return self.line.split(":", 1)[0].strip()

    @property
    def value(self) -> str:
        """The text after the colon, stripped."""
        return self.line.split(":", 1)[1].strip() if ":" in self.line else ""


@dataclass
class Reply:
    """A successful command's data lines and its final result code."""

    command: str
    lines: list[str]
    final: str = "OK"

    def first(self, prefix: str) -> str | None:
        """The value after ``prefix`` on the first line that starts with it."""
        for line in self.lines:
            if line.startswith(prefix):
                return line[len(prefix) :].strip()
        return None


@dataclass
class _Pending:
    command: str
    expect_prompt: bool = False
    echoes: set[str] = field(default_factory=set)
    lines: list[str] = field(default_factory=list)
    final: str | None = None
    prompt_seen: bool = False
    gone: BaseException | None = None
    event: threading.Event = field(default_factory=threading.Event)

    @property
    def prefix(self) -> str | None:
        """The reply prefix of this command (``AT+CREG?`` -> ``+CREG:``) so a ``+CREG:``
        line is data here rather than a URC."""
        m = re.match(r"^AT([+^*$%][A-Z0-9]+)", self.command.upper())
        return m.group(1) + ":" if m else None


def _find_process(name: str) -> int | None:
    """PID of a running process called ``name`` (reads /proc; None when not found)."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm", encoding="utf-8") as f:
                if f.read().strip() == name:
                    return int(entry)
        except OSError:
            continue
    return None


def explain_open_error(path: str, exc: BaseException) -> PortOpenError:
    """Turn pyserial's open failure into an error that tells the operator what to do."""
    err = getattr(exc, "errno", None)
    text = str(exc)
    if "exclusively lock" in text or err in (
        errno.EBUSY,
        errno.EAGAIN,
        errno.EWOULDBLOCK,
    ):
        pid = _find_process("ModemManager")
        who = (
            f"ModemManager is running (pid {pid})"
            if pid
            else "another program holds it"
        )
        return PortBusyError(
            f"modem port {path} is busy: {who}. Stop ModemManager with "
            f"`sudo systemctl disable --now ModemManager`, or keep it and tell it to leave this "
            f'modem alone with a udev rule setting ENV{{ID_MM_DEVICE_IGNORE}}="1"; '
            f"`sudo fuser -v {path}` shows who has the port open."
        )
    if err == errno.EACCES:
        return PortOpenError(
            f"no permission to open {path}: add the relaybox user to the `dialout` group "
            f"(`sudo usermod -aG dialout $USER`, then log in again)."
        )
    if err == errno.ENOENT:
        return PortOpenError(
            f"{path} does not exist: is the modem plugged in? Prefer a stable "
            f"/dev/serial/by-id/... path (`relaybox modem scan` lists them)."
        )
    return PortOpenError(f"cannot open {path}: {text}")


class ATPort:
    """One open serial port to a modem, with its reader thread.

    ``on_urc`` receives every unsolicited line (on the reader thread). ``on_gone`` is called
    once, also on the reader thread, when the device disappears. Commands are serialised by a
    lock, so calling :meth:`command` from two threads is safe but the second caller waits —
    the driver calls it from its own thread only.
    """

    def __init__(
        self,
        path: str,
        baudrate: int = 115200,
        *,
        name: str = "modem",
        on_urc: Callable[[Urc], None] | None = None,
        on_gone: Callable[[BaseException], None] | None = None,
        rtscts: bool = False,
        write_timeout: float = 5.0,
    ):
        self.path = path
        self.baudrate = baudrate
        self.name = name
        self.on_urc = on_urc or (lambda urc: None)
        self.on_gone = on_gone or (lambda exc: None)
        self.rtscts = rtscts
        self.write_timeout = write_timeout
        self._serial: serial.Serial | None = None
        self._reader: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()  # guards _buf, _pending, _urc_head
        self._command_lock = threading.Lock()  # one command on the wire at a time
        self._buf = bytearray()
        self._pending: _Pending | None = None
        self._urc_head: Urc | None = None
        self._gone: BaseException | None = None
        self._rx_count = 0  # bytes received so far; drain() watches it for silence

    # -- lifecycle -----------------------------------------------------------------------------

    def open(self) -> None:
        """Open the port exclusively and start the reader thread.

        Raises :class:`PortOpenError` (or :class:`PortBusyError`) with an actionable message.
        """
        try:
            self._serial = serial.Serial(
                self.path,
                self.baudrate,
                timeout=0.1,
                write_timeout=self.write_timeout,
                rtscts=self.rtscts,
                exclusive=True,
            )
        except (serial.SerialException, OSError) as exc:
            raise explain_open_error(self.path, exc) from exc
        self._stop.clear()
        self._gone = None
        self._buf.clear()
        self._reader = threading.Thread(
            target=self._read_loop, name=f"{self.name}-reader", daemon=True
        )
        self._reader.start()
        log.info("%s: opened %s at %d baud", self.name, self.path, self.baudrate)

    def close(self) -> None:
        """Stop the reader and close the port. Safe to call twice or on a dead port."""
        self._stop.set()
        ser = self._serial
        if ser is not None:
            try:
                ser.cancel_read()
            except (OSError, serial.SerialException):
                pass
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(timeout=2.0)
        self._reader = None
        if ser is not None:
            try:
                ser.close()
            except (OSError, serial.SerialException):
                pass
        self._serial = None
        self._fail_pending(PortGoneError("port closed"))

    @property
    def alive(self) -> bool:
        """True while the port is open and the device has not vanished."""
        return (
            self._serial is not None and self._gone is None and not self._stop.is_set()
        )

    # -- commands ------------------------------------------------------------------------------

    def command(self, command: str, timeout: float = 5.0) -> Reply:
        """Send ``command`` (without CR) and wait for its final result code.

        Raises :class:`CommandError` on an error result, :class:`CommandTimeout` when the
        wall-clock ``timeout`` passes, :class:`PortGoneError` when the device vanished.
        """
        with self._command_lock:
            pending = _Pending(command, echoes={command})
            started = time.monotonic()
            self._start(pending)
            try:
                self._write(command.encode("ascii", "replace") + b"\r")
                if not pending.event.wait(timeout):
                    self._log_exchange(pending, started, "TIMEOUT", logging.WARNING)
                    raise CommandTimeout(
                        f"{mask_line(command)}: no answer in {timeout:g}s"
                    )
                if pending.gone is not None:
                    raise PortGoneError(str(pending.gone)) from pending.gone
                assert pending.final is not None
                ok = pending.final == "OK"
                self._log_exchange(
                    pending,
                    started,
                    pending.final,
                    logging.DEBUG if ok else logging.INFO,
                )
                if not ok:
                    raise CommandError(command, pending.final, pending.lines)
                return Reply(command, pending.lines, pending.final)
            finally:
                self._finish(pending)

    def submit_pdu(
        self,
        tpdu_length: int,
        pdu_hex: str,
        prompt_timeout: float = 10.0,
        result_timeout: float = 60.0,
    ) -> Reply:
        """Run one ``AT+CMGS=<len>`` / ``> `` / ``PDU<Ctrl-Z>`` exchange.

        The three ways out mean different things for the message, hence different errors:
        no prompt -> :class:`PromptTimeout` (not sent, entry mode aborted with ESC);
        an error result -> :class:`CommandError` (not sent);
        no result after Ctrl-Z -> :class:`SubmitUnconfirmed` (outcome unknown, do not resend).
        """
        command = f"AT+CMGS={tpdu_length}"
        with self._command_lock:
            pending = _Pending(command, expect_prompt=True, echoes={command, pdu_hex})
            started = time.monotonic()
            self._start(pending)
            try:
                self._write(command.encode("ascii") + b"\r")
                deadline = time.monotonic() + prompt_timeout
                while not pending.prompt_seen and pending.final is None:
                    if pending.gone is not None:
                        raise PortGoneError(str(pending.gone)) from pending.gone
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    pending.event.wait(min(left, 0.05))
                if pending.gone is not None:
                    raise PortGoneError(str(pending.gone)) from pending.gone
                if pending.final is not None and not pending.prompt_seen:
                    self._log_exchange(pending, started, pending.final, logging.INFO)
                    raise CommandError(command, pending.final, pending.lines)
                if not pending.prompt_seen:
                    self._log_exchange(pending, started, "NO PROMPT", logging.WARNING)
                    self._write(ESC + b"\r")
                    raise PromptTimeout(
                        f"{command}: no '> ' prompt in {prompt_timeout:g}s"
                    )
                pending.event.clear()
                self._write(pdu_hex.encode("ascii") + CTRL_Z)
                if not pending.event.wait(result_timeout):
                    self._log_exchange(
                        pending, started, "TIMEOUT after Ctrl-Z", logging.WARNING
                    )
                    raise SubmitUnconfirmed(
                        f"{command}: no result {result_timeout:g}s after the PDU was written"
                    )
                if pending.gone is not None:
                    raise SubmitUnconfirmed(
                        f"{command}: port lost after the PDU was written"
                    )
                assert pending.final is not None
                ok = pending.final == "OK"
                self._log_exchange(
                    pending,
                    started,
                    pending.final,
                    logging.DEBUG if ok else logging.INFO,
                    pdu=pdu_hex,
                )
                if not ok:
                    raise CommandError(
                        command, pending.final, pending.lines, after_prompt=True
                    )
                return Reply(command, pending.lines, pending.final)
            finally:
                self._finish(pending)

    def write_raw(self, data: bytes) -> None:
        """Write bytes outside any command (used for the Ctrl-Z/ESC recovery of a half-typed
        command); replies to them arrive as stray lines and are dropped."""
        with self._command_lock:
            log.debug("%s: raw write %r", self.name, data)
            self._write(data)

    def drain(self, quiet: float = 0.3, limit: float = 2.0) -> None:
        """Wait until the modem has been silent for ``quiet`` seconds (at most ``limit``):
        late replies of a timed-out command then land here instead of in the next command."""
        end = time.monotonic() + limit
        last = self._rx_count
        quiet_since = time.monotonic()
        while time.monotonic() < end and self.alive:
            time.sleep(0.05)
            size = self._rx_count
            if size != last:
                last, quiet_since = size, time.monotonic()
            elif time.monotonic() - quiet_since >= quiet:
                return

    # -- internals -----------------------------------------------------------------------------

    def _start(self, pending: _Pending) -> None:
        if not self.alive:
            raise PortGoneError(
                f"{self.path} is not open"
                if self._gone is None
                else f"{self.path} is gone: {self._gone}"
            )
        with self._lock:
            self._pending = pending

    def _finish(self, pending: _Pending) -> None:
        with self._lock:
            if self._pending is pending:
                self._pending = None

    def _write(self, data: bytes) -> None:
        ser = self._serial
        if ser is None:
            raise PortGoneError(f"{self.path} is not open")
        try:
            ser.write(data)
        except serial.SerialTimeoutException as exc:
            raise CommandTimeout(
                f"write to {self.path} timed out (flow control?)"
            ) from exc
        except (serial.SerialException, OSError) as exc:
            self._mark_gone(exc)
            raise PortGoneError(f"write to {self.path} failed: {exc}") from exc

    def _log_exchange(
        self,
        pending: _Pending,
        started: float,
        final: str,
        level: int,
        pdu: str | None = None,
    ) -> None:
        sensitive = pending.command.upper().startswith(_SENSITIVE_REPLIES)
        parts = [mask_line(line, sensitive) for line in pending.lines]
        sent = mask_line(pending.command)
        if pdu is not None:
            sent += f" > {mask_line(pdu)}"
        reply = " | ".join([*parts, final])
        log.log(
            level,
            "%s: %s -> %s (%.0f ms)",
            self.name,
            sent,
            reply,
            (time.monotonic() - started) * 1000,
        )

    def _read_loop(self) -> None:
        ser = self._serial
        assert ser is not None
        while not self._stop.is_set():
            try:
                waiting = ser.in_waiting
                data = ser.read(waiting or 1)
            except (serial.SerialException, OSError, TypeError) as exc:
                # TypeError: pyserial closed under us (fd None) during close().
                if not self._stop.is_set():
                    self._mark_gone(exc)
                return
            if data:
                self._feed(data)

    def _mark_gone(self, exc: BaseException) -> None:
        with self._lock:
            if self._gone is not None:
                return
            self._gone = exc
        log.warning("%s: port %s lost: %s", self.name, self.path, exc)
        self._fail_pending(exc)
        try:
            self.on_gone(exc)
        except Exception:
            log.exception("%s: on_gone callback failed", self.name)

    def _fail_pending(self, exc: BaseException) -> None:
        with self._lock:
            pending = self._pending
        if pending is not None and pending.final is None:
            pending.gone = exc
            pending.event.set()

    def _feed(self, data: bytes) -> None:
        urcs: list[Urc] = []
        with self._lock:
            self._buf.extend(data)
            self._rx_count += len(data)
            while True:
                # Leading line terminators are noise between lines.
                while self._buf[:1] in (b"\r", b"\n"):
                    del self._buf[:1]
                pending = self._pending
                if (
                    pending is not None
                    and pending.expect_prompt
                    and not pending.prompt_seen
                    and self._buf.startswith(b"> ")
                ):
                    del self._buf[:2]
                    pending.prompt_seen = True
                    pending.event.set()
                    continue
                cut = _first_terminator(self._buf)
                if cut < 0:
                    break
                raw = bytes(self._buf[:cut])
                del self._buf[: cut + 1]
                line = raw.decode("utf-8", "replace").strip()
                if line:
                    urc = self._classify(line)
                    if urc is not None:
                        urcs.append(urc)
        for urc in urcs:
            log.debug(
                "%s: URC %s%s",
                self.name,
                mask_line(urc.line),
                f" / {mask_line(urc.body, True)}" if urc.body is not None else "",
            )
            try:
                self.on_urc(urc)
            except Exception:
                log.exception("%s: URC handler failed for %s", self.name, urc.name)

    def _classify(self, line: str) -> Urc | None:
        """Sort one line; return a complete URC to dispatch, if it is one. Holds ``_lock``."""
        if self._urc_head is not None:
            head, self._urc_head = self._urc_head, None
            head.body = line
            return head
        pending = self._pending
        if pending is not None and pending.final is None:
            if line in pending.echoes or line.rstrip("\x1a") in pending.echoes:
                return None
            prefix = pending.prefix
            if prefix is not None and line.startswith(prefix):
                pending.lines.append(line)
                return None
            if is_final(line):
                pending.final = line
                pending.event.set()
                return None
            if self._is_urc(line):
                return self._start_urc(line)
            if line.startswith("^") and not pending.command.upper().startswith("AT^"):
                return Urc(
                    line
                )  # unknown Huawei-style noise while a non-^ command runs
            pending.lines.append(line)
            return None
        # Idle: nothing is waiting for this line.
        if self._is_urc(line):
            return self._start_urc(line)
        if is_final(line):
            log.debug("%s: dropped stray %r", self.name, line)
            return None
        return Urc(line)  # e.g. a late "+CMGS: 12" after a timeout; the driver decides

    @staticmethod
    def _is_urc(line: str) -> bool:
        return line.startswith(tuple(URC_PREFIXES))

    def _start_urc(self, line: str) -> Urc | None:
        """A URC line: complete now, or (``+CMT``/``+CDS``) once its PDU line follows."""
        urc = Urc(line)
        prefix = next(p for p in URC_PREFIXES if line.startswith(p))
        if URC_PREFIXES[prefix]:
            self._urc_head = urc
            return None
        return urc


def _first_terminator(buf: bytearray) -> int:
    cr = buf.find(b"\r")
    lf = buf.find(b"\n")
    if cr < 0:
        return lf
    if lf < 0:
        return cr
    return min(cr, lf)
