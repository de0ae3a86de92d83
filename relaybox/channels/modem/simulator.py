"""A scriptable GSM modem on a real pseudo-terminal, speaking AT commands in PDU mode.

Why a pty and a state machine rather than a mocked ``serial`` module: the driver under test then
runs its real pyserial code (exclusive lock, reads that raise on unplug, bytes split across
reads) against a modem whose state (SIM, storage, message references, pending reports) evolves
the way a real one does (MODEM.md §4.3). The same class serves the tests and users who want to
try relaybox without hardware (``relaybox modem simulate`` prints the pty path; see
:func:`main`).

Everything the simulator does happens on its own thread; the public methods post work to that
thread, so a test may call them at any time. Records a test can read: :attr:`sent` (every PDU
received through ``AT+CMGS``), :attr:`commands` (every command line), :attr:`deleted`
(``(memory, index)`` of every ``AT+CMGD``), :attr:`pin_attempts`.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import logging
import os
import queue
import random
import re
import select
import signal
import sys
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Self

from relaybox.channels.modem.at import mask_line
from relaybox.sms import pdu

log = logging.getLogger("relaybox.modem.sim")

#: TP-Status the simulator puts in a report for each outcome (TS 23.040 §9.2.3.15).
REPORT_STATUS = {"delivered": 0x00, "pending": 0x21, "failed": 0x46}


@dataclass
class SentPdu:
    """One PDU the simulator accepted through ``AT+CMGS``."""

    hex: str
    length: int  # the number the driver wrote after AT+CMGS=
    reference: int  # the TP-MR this modem assigned (+CMGS: <mr>)
    submit: pdu.Submit
    at: float = field(default_factory=time.monotonic)

    @property
    def to(self) -> str:
        return self.submit.recipient

    @property
    def text(self) -> str:
        return self.submit.text


@dataclass
class ReportPlan:
    """What the network answers for a recipient: an outcome, after ``delay`` seconds."""

    outcome: str = "delivered"  # delivered / failed / pending / none
    delay: float = 0.05
    status: int | None = None  # explicit TP-Status overrides the outcome's default


@dataclass
class UssdPlan:
    text: str
    status: int = 0
    dcs: int = 15
    delay: float = 0.05
    before_ok: bool = False


class ModemSimulator:
    """A simulated modem; ``path`` is what a driver opens.

    Constructor arguments set the power-on state: ``pin`` (SIM asks for it when set),
    ``puk_locked``, ``smsc`` (``""`` = SIM without SMSC), ``csq``, ``creg`` (registration
    stat), ``radio_delay`` (seconds between Ctrl-Z and ``+CMGS``), ``first_reference``,
    ``cnmi_ds2`` (False: ``AT+CNMI=...,2`` fails so the driver must fall back), ``boot_cfun``
    (4 = radio off until ``AT+CFUN=1``), ``link`` (a symlink path kept pointing at the current
    pty, like ``/dev/serial/by-id/...``; needed for :meth:`replug`).

    Faults, as attributes that may be flipped at any time: ``noise`` (lines such as
    ``^RSSI:15`` interleaved into every reply), ``split_writes`` (replies written in small
    chunks with gaps), ``echo_stuck`` (``ATE0`` answered OK but echo stays on); and methods
    :meth:`hang`/:meth:`wake`, :meth:`fail_sends`, :meth:`swallow_results`, :meth:`unplug`,
    :meth:`replug`.
    """

    def __init__(
        self,
        *,
        link: str | None = None,
        pin: str | None = None,
        puk_locked: bool = False,
        pin_tries: int = 3,
        smsc: str = "+447802000332",
        csq: tuple[int, int] = (20, 99),
        creg: int = 1,
        operator: str = "Relaybox Sim",
        imei: str = "356938035643809",
        imsi: str = "234150999999999",
        radio_delay: float = 0.0,
        first_reference: int = 0,
        cnmi_ds2: bool = True,
        boot_cfun: int = 1,
        storage_size: int = 30,
        name: str = "sim",
    ):
        self.link = link
        self.pin = pin
        self.pin_tries = pin_tries
        self.smsc = smsc
        self.csq = csq
        self.creg = creg
        self.operator = operator
        self.imei = imei
        self.imsi = imsi
        self.radio_delay = radio_delay
        self.cnmi_ds2 = cnmi_ds2
        self.boot_cfun = boot_cfun
        self.storage_size = storage_size
        self.name = name
        # Faults.
        self.noise: list[str] = []
        self.split_writes = False
        self.echo_stuck = False
        self.hung = False
        # Scripts.
        self.reports: dict[str, ReportPlan] = {}
        self.default_report = ReportPlan()
        self.ussd_plans: dict[str, UssdPlan] = {}
        self._send_failures: list[str] = []
        self._swallow = 0
        self._late_result: float | None = None
        # Records.
        self.sent: list[SentPdu] = []
        self.commands: list[str] = []
        self.deleted: list[tuple[str, int]] = []
        self.pin_attempts: list[str] = []
        self.unplugs = 0
        # SIM and modem state.
        self.sim_state = "SIM PUK" if puk_locked else ("SIM PIN" if pin else "READY")
        self.storage: dict[str, dict[int, tuple[int, str]]] = {
            "SM": {},
            "ME": {},
            "SR": {},
        }
        self._next_mr = first_reference % 256
        self._power_on()
        # I/O.
        self._master: int | None = None
        self._slave: int | None = None
        self._tty_path = ""
        self._inbuf = bytearray()
        self._entry: tuple[int] | None = (
            None  # (length,) while collecting a PDU after "> "
        )
        self._into_next_reply: list[str] = []
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._actions: queue.Queue[tuple[Callable[[], Any], queue.Queue[Any]]] = (
            queue.Queue()
        )
        self._wake_r, self._wake_w = os.pipe()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _power_on(self) -> None:
        """State a modem has after power-up or ``AT+CFUN=1,1``: the SIM keeps its PIN state
        only if it was PUK-locked; everything else is at factory settings."""
        self.echo = True
        self.cmee = 0
        self.cmgf = 1
        self.cscs = "IRA"
        self.cfun = self.boot_cfun
        self.cnmi = (0, 0, 0, 0, 0)
        self.mem = ["SM", "SM", "SM"]
        self.creg_n = 0
        if self.sim_state == "READY" and self.pin:
            self.sim_state = "SIM PIN"

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def path(self) -> str:
        """The device path to give a driver: the symlink when ``link`` is set."""
        return self.link or self._tty_path

    def start(self) -> ModemSimulator:
        self._open_pty()
        self._thread = threading.Thread(
            target=self._run, name=f"{self.name}-sim", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        self._close_pty()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _open_pty(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)  # no line discipline echo or CR/LF mangling
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        self._tty_path = os.ttyname(slave)
        if self.link:
            tmp = f"{self.link}.tmp{os.getpid()}"
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            os.symlink(self._tty_path, tmp)
            os.replace(tmp, self.link)
        log.debug(
            "%s: pty %s%s",
            self.name,
            self._tty_path,
            f" (link {self.link})" if self.link else "",
        )

    def _close_pty(self) -> None:
        for fd in (self._master, self._slave):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._master = self._slave = None
        if self.link:
            try:
                os.unlink(self.link)
            except FileNotFoundError:
                pass

    # -- scripting API (thread-safe: runs on the simulator thread) ------------------------------

    def _call(self, fn: Callable[[], Any], timeout: float = 5.0) -> Any:
        if self._thread is None or not self._thread.is_alive():
            return fn()
        if threading.current_thread() is self._thread:
            return fn()
        box: queue.Queue[Any] = queue.Queue()
        self._actions.put((fn, box))
        os.write(self._wake_w, b"x")
        ok, value = box.get(timeout=timeout)
        if not ok:
            raise value
        return value

    def set_report(
        self,
        number: str,
        outcome: str = "delivered",
        delay: float = 0.05,
        status: int | None = None,
    ) -> None:
        """Script the status report for ``number``: delivered / failed / pending / none."""
        if outcome not in (*REPORT_STATUS, "none"):
            raise ValueError(f"unknown report outcome {outcome!r}")
        self.reports[number] = ReportPlan(outcome, delay, status)

    def set_ussd(
        self,
        code: str,
        text: str,
        *,
        status: int = 0,
        dcs: int = 15,
        delay: float = 0.05,
        before_ok: bool = False,
    ) -> None:
        """Script the network's answer to ``AT+CUSD=1,"<code>"``."""
        self.ussd_plans[code] = UssdPlan(text, status, dcs, delay, before_ok)

    def fail_sends(self, final: str, count: int = 1) -> None:
        """Answer the next ``count`` PDUs with ``final`` (e.g. ``"+CMS ERROR: 512"``)."""
        self._call(lambda: self._send_failures.extend([final] * count))

    def swallow_results(self, count: int = 1, late_after: float | None = None) -> None:
        """Accept the next ``count`` PDUs but never answer (or answer ``late_after`` seconds
        later): the driver sees a timeout after Ctrl-Z although the message went out."""

        def apply() -> None:
            self._swallow += count
            self._late_result = late_after

        self._call(apply)

    def hang(self) -> None:
        """Stop answering anything (no echo, no replies) until :meth:`wake`."""
        self.hung = True

    def wake(self) -> None:
        self.hung = False

    def inject_sms(
        self,
        sender: str,
        text: str,
        *,
        notify: bool = True,
        reverse: bool = False,
        scts: datetime | None = None,
        during_next_reply: bool = False,
    ) -> list[int]:
        """Deliver ``text`` from ``sender`` as the network would: one DELIVER PDU per part,
        stored in SIM storage and announced with ``+CMTI`` (unless ``notify`` is False, or
        with ``+CMT`` when the driver asked for routing). Returns the storage indexes.
        ``during_next_reply`` holds the ``+CMTI`` back and slips it into the middle of the
        next command's reply (the interleaving case of MODEM.md §5)."""
        pdus = pdu.encode_deliver(
            sender,
            text,
            scts=scts or datetime.now(UTC),
            smsc=self.smsc or None,
            concat_ref=random.randrange(256),
        )
        if reverse:
            pdus.reverse()
        return self._call(
            lambda: [self._deliver(p, notify, during_next_reply) for p in pdus]
        )

    def inject_pdu(self, hex_pdu: str, *, notify: bool = True) -> int:
        """Store one raw DELIVER PDU (with SMSC field) and announce it."""
        return self._call(lambda: self._deliver(hex_pdu, notify, False))

    def emit(self, line: str) -> None:
        """Write an unsolicited line now (``RING``, ``+CREG: 0``, vendor noise...)."""
        self._call(lambda: self._write_lines([line]))

    def unplug(self) -> None:
        """Pull the USB cable: the pty disappears (the driver's reads and writes fail) and the
        ``link`` symlink is removed, as udev removes ``/dev/serial/by-id`` links."""

        def apply() -> None:
            self.unplugs += 1
            self._close_pty()
            self._entry = None
            self._inbuf.clear()

        self._call(apply)

    def replug(self) -> str:
        """Plug back in: a new pty (a new ``/dev/pts/N``) behind the same ``link`` path, with
        the modem freshly powered on. Returns the new tty path."""

        def apply() -> str:
            if self._master is not None:
                self._close_pty()
            self._power_on()
            self._open_pty()
            return self._tty_path

        return self._call(apply)

    def stored(self, mem: str = "SM") -> dict[int, str]:
        """Index -> PDU of what is in storage ``mem`` now."""
        return self._call(lambda: {i: p for i, (_s, p) in self.storage[mem].items()})

    # -- simulator thread ----------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            timeout = 0.05
            if self._timers:
                timeout = max(0.0, min(timeout, self._timers[0][0] - now))
            fds = [self._wake_r] + ([self._master] if self._master is not None else [])
            try:
                ready, _, _ = select.select(fds, [], [], timeout)
            except (OSError, ValueError):
                ready = []
            if self._wake_r in ready:
                os.read(self._wake_r, 4096)
            while True:
                try:
                    fn, box = self._actions.get_nowait()
                except queue.Empty:
                    break
                try:
                    box.put((True, fn()))
                except Exception as exc:  # noqa: BLE001 - re-raised in the caller's thread
                    box.put((False, exc))
            if self._master is not None and self._master in ready:
                try:
                    data = os.read(self._master, 4096)
                except BlockingIOError:
                    data = b""
                except OSError:
                    data = b""  # EIO: nobody has the slave open right now
                if data:
                    self._receive(data)
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:
                _when, _seq, fn = heapq.heappop(self._timers)
                try:
                    fn()
                except Exception:
                    log.exception("%s: scheduled action failed", self.name)

    def _later(self, delay: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (time.monotonic() + delay, next(self._seq), fn))

    def _write(self, data: bytes) -> None:
        if self._master is None:
            return
        chunks = [data]
        if self.split_writes:
            chunks, i = [], 0
            while i < len(data):
                n = random.randint(1, 5)
                chunks.append(data[i : i + n])
                i += n
        for n, chunk in enumerate(chunks):
            if n and self.split_writes:
                time.sleep(0.001)
            deadline = time.monotonic() + 1.0
            while chunk and self._master is not None:
                try:
                    written = os.write(self._master, chunk)
                    chunk = chunk[written:]
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        return  # nobody reads: a real modem drops output too
                    select.select([], [self._master], [], 0.05)
                except OSError:
                    return

    def _write_lines(self, lines: list[str]) -> None:
        self._write(b"".join(b"\r\n" + line.encode() + b"\r\n" for line in lines))

    def _reply(self, lines: list[str], final: str = "OK") -> None:
        """Write a reply; interleave noise and held-back URCs as a real modem might."""
        out: list[str] = []
        extra = list(self.noise) + self._into_next_reply
        self._into_next_reply = []
        for line in lines:
            out.append(line)
            if extra and len(out) == 1:
                out.extend(extra)
                extra = []
        if extra:
            out.extend(extra)
        out.append(final)
        self._write_lines(out)

    def _error(self, kind: str, code: int) -> str:
        return f"+{kind} ERROR: {code}" if self.cmee else "ERROR"

    def _receive(self, data: bytes) -> None:
        if self.hung:
            return
        if self.echo:
            self._write(data)
        self._inbuf.extend(data)
        while self._inbuf:
            if self._entry is not None:
                end = min(
                    (
                        i
                        for i in (self._inbuf.find(b"\x1a"), self._inbuf.find(b"\x1b"))
                        if i >= 0
                    ),
                    default=-1,
                )
                if end < 0:
                    return
                body = bytes(self._inbuf[:end]).decode("ascii", "replace").strip()
                terminator = self._inbuf[end]
                del self._inbuf[: end + 1]
                (length,) = self._entry
                self._entry = None
                if terminator == 0x1B:
                    self._write_lines(["OK"])  # entry cancelled; nothing sent
                else:
                    self._submit(length, body)
                continue
            cut = self._inbuf.find(b"\r")
            if cut < 0:
                return
            line = bytes(self._inbuf[:cut]).decode("ascii", "replace")
            del self._inbuf[: cut + 1]
            line = line.strip().strip("\x1a\x1b\n").strip()
            if line:
                self.commands.append(line)
                log.debug("%s: <- %s", self.name, mask_line(line))
                self._command(line)

    # -- commands ------------------------------------------------------------------------------

    def _command(self, line: str) -> None:
        up = line.upper()
        if not up.startswith("AT"):
            self._reply([], "ERROR")
            return
        body = line[2:]
        ubody = up[2:]
        sim_ready = self.sim_state == "READY"
        sim_error = self._error("CME", 11 if self.sim_state == "SIM PIN" else 12)

        if ubody in ("", "Z", "&F"):
            if ubody:
                self.echo = True
                self.cmee = 0
            self._reply([])
        elif ubody in ("E0", "E1"):
            if not (self.echo_stuck and ubody == "E0"):
                self.echo = ubody == "E1"
            self._reply([])
        elif ubody == "I":
            self._reply(
                [
                    "Manufacturer: relaybox",
                    "Model: simulated PDU modem",
                    "Revision: 1.0",
                    f"IMEI: {self.imei}",
                    "+GCAP: +CGSM",
                ]
            )
        elif ubody.startswith("+CMEE="):
            self.cmee = int(body[6:] or 0)
            self._reply([])
        elif ubody == "+CGSN":
            self._reply([self.imei])
        elif ubody == "+CIMI":
            self._reply(
                [self.imsi] if sim_ready else [], "OK" if sim_ready else sim_error
            )
        elif ubody == "+CGMI":
            self._reply(["relaybox"])
        elif ubody == "+CGMM":
            self._reply(["simulated PDU modem"])
        elif ubody == "+CGMR":
            self._reply(["1.0"])
        elif ubody == "+CFUN?":
            self._reply([f"+CFUN: {self.cfun}"])
        elif ubody.startswith("+CFUN="):
            self._cfun(body[6:])
        elif ubody == "+CPIN?":
            self._reply([f"+CPIN: {self.sim_state}"])
        elif ubody.startswith("+CPIN="):
            self._cpin(body[6:])
        elif ubody in ("+CREG?", "+CGREG?", "+CEREG?"):
            stat = self.creg if sim_ready and self.cfun == 1 else 0
            self._reply([f"{ubody[:-1]}: {self.creg_n},{stat}"])
        elif re.fullmatch(r"\+C(E|G)?REG=\d", ubody):
            self.creg_n = int(ubody[-1])
            self._reply([])
        elif ubody == "+CSQ":
            rssi, ber = self.csq if self.cfun == 1 else (99, 99)
            self._reply([f"+CSQ: {rssi},{ber}"])
        elif ubody == "+COPS?":
            ok = sim_ready and self.cfun == 1 and self.creg in (1, 5)
            self._reply([f'+COPS: 0,0,"{self.operator}",7' if ok else "+COPS: 0"])
        elif not sim_ready and ubody.startswith(
            ("+CMG", "+CPMS", "+CNMI", "+CSCA", "+CUSD")
        ):
            self._reply([], sim_error)
        elif ubody.startswith("+CMGF="):
            self.cmgf = int(body[6:] or 0)
            self._reply([])
        elif ubody == "+CMGF?":
            self._reply([f"+CMGF: {self.cmgf}"])
        elif ubody == "+CSCA?":
            self._reply(
                [f'+CSCA: "{self.smsc}",{145 if self.smsc.startswith("+") else 129}']
            )
        elif ubody.startswith("+CSCA="):
            self.smsc = body[6:].split(",")[0].strip().strip('"')
            self._reply([])
        elif ubody.startswith("+CPMS"):
            self._cpms(body[5:])
        elif ubody == "+CNMI=?":
            ds = "(0-2)" if self.cnmi_ds2 else "(0,1)"
            self._reply([f"+CNMI: (0-2),(0-3),(0,2),{ds},(0,1)"])
        elif ubody.startswith("+CNMI="):
            self._cnmi(body[6:])
        elif ubody.startswith("+CMGS="):
            self._cmgs(body[6:])
        elif ubody.startswith("+CMGR="):
            self._cmgr(int(body[6:]))
        elif ubody.startswith("+CMGL"):
            self._cmgl()
        elif ubody.startswith("+CMGD="):
            self._cmgd(body[6:])
        elif ubody.startswith("+CUSD="):
            self._cusd(body[6:])
        elif ubody == "+CSCS?":
            self._reply([f'+CSCS: "{self.cscs}"'])
        elif ubody == "+CSCS=?":
            self._reply(['+CSCS: ("IRA","GSM","UCS2")'])
        elif ubody.startswith("+CSCS="):
            self.cscs = body[6:].strip().strip('"').upper()
            self._reply([])
        elif ubody.startswith(("+CSMS", "+CSMP", "^CURC", "+CMMS", "+CNMA")):
            self._reply([])
        else:
            self._reply([], "ERROR")

    def _cfun(self, arg: str) -> None:
        parts = [p.strip() for p in arg.split(",")]
        if parts[0] not in ("0", "1", "4"):
            self._reply([], self._error("CME", 4))
            return
        if len(parts) > 1 and parts[1] == "1":
            self._reply([])
            self._power_on()  # reboot: factory settings again
            self.cfun = 1 if parts[0] == "1" else int(parts[0])
            return
        self.cfun = int(parts[0])
        self._reply([])

    def _cpin(self, arg: str) -> None:
        code = arg.split(",")[0].strip().strip('"')
        self.pin_attempts.append(code)
        if self.sim_state == "READY":
            self._reply([], self._error("CME", 3))
        elif self.sim_state == "SIM PUK":
            self._reply([], self._error("CME", 12))
        elif code == self.pin:
            self.sim_state = "READY"
            self._reply([])
        else:
            self.pin_tries -= 1
            if self.pin_tries <= 0:
                self.sim_state = "SIM PUK"
            self._reply([], self._error("CME", 16))

    def _counts(self) -> list[str]:
        return [f"{len(self.storage[m])},{self.storage_size}" for m in self.mem]

    def _cpms(self, arg: str) -> None:
        if arg == "=?":
            self._reply(['+CPMS: ("SM","ME","SR"),("SM","ME"),("SM","ME")'])
            return
        if arg == "?":
            self._reply(
                [
                    "+CPMS: "
                    + ",".join(
                        f'"{m}",{c}'
                        for m, c in zip(self.mem, self._counts(), strict=True)
                    )
                ]
            )
            return
        names = [
            n.strip().strip('"').upper()
            for n in arg.lstrip("=").split(",")
            if n.strip()
        ]
        if not names or any(n not in self.storage for n in names):
            self._reply([], self._error("CMS", 302))
            return
        for i, n in enumerate(names[:3]):
            self.mem[i] = n
        self._reply(["+CPMS: " + ",".join(self._counts())])

    def _cnmi(self, arg: str) -> None:
        try:
            values = [int(v) if v.strip() else 0 for v in arg.split(",")]
        except ValueError:
            self._reply([], "ERROR")
            return
        values = (values + [0] * 5)[:5]
        if values[3] == 2 and not self.cnmi_ds2:
            self._reply([], self._error("CMS", 303))
            return
        self.cnmi = tuple(values)  # type: ignore[assignment]
        self._reply([])

    def _cmgs(self, arg: str) -> None:
        if self.cmgf != 0:
            self._reply([], self._error("CMS", 302))  # text mode is not simulated
            return
        try:
            length = int(arg)
        except ValueError:
            self._reply([], self._error("CMS", 304))
            return
        self._entry = (length,)
        self._write(b"\r\n> ")

    def _submit(self, length: int, body: str) -> None:
        """A PDU arrived after Ctrl-Z: check it like a modem would, then 'transmit' it."""
        try:
            raw = bytes.fromhex(body)
            tpdu_len = len(raw) - raw[0] - 1
            submit = pdu.decode_pdu(body)
        except (ValueError, IndexError):
            self._reply([], self._error("CMS", 304))
            return
        if not isinstance(submit, pdu.Submit) or tpdu_len != length:
            log.warning(
                "%s: AT+CMGS=%d but the TPDU has %d octets", self.name, length, tpdu_len
            )
            self._reply([], self._error("CMS", 304))
            return
        if self._send_failures:
            self._reply([], self._send_failures.pop(0))
            return
        if raw[0] == 0 and not self.smsc:
            self._reply([], self._error("CMS", 330))
            return
        if self.cfun != 1 or self.creg not in (1, 5):
            self._reply([], self._error("CMS", 331))
            return
        mr = self._next_mr
        self._next_mr = (mr + 1) % 256
        self.sent.append(SentPdu(body, length, mr, submit))
        log.info("%s: sent part to %s (mr %d)", self.name, submit.recipient, mr)
        if submit.status_report_request:
            self._plan_report(mr, submit.recipient)
        if self._swallow:
            self._swallow -= 1
            if self._late_result is not None:
                self._later(
                    self._late_result + self.radio_delay,
                    lambda: self._write_lines([f"+CMGS: {mr}", "OK"]),
                )
            return
        self._later(self.radio_delay, lambda: self._reply([f"+CMGS: {mr}"]))

    def _plan_report(self, mr: int, recipient: str) -> None:
        plan = self.reports.get(recipient, self.default_report)
        if plan.outcome == "none":
            return
        status = plan.status if plan.status is not None else REPORT_STATUS[plan.outcome]
        accepted = datetime.now(UTC)

        def emit() -> None:
            hex_pdu = pdu.encode_status_report(
                mr,
                recipient,
                scts=accepted,
                discharge=datetime.now(UTC),
                status=status,
                smsc=self.smsc or None,
            )
            ds = self.cnmi[3]
            if ds == 1:
                self._write_lines([f"+CDS: {self._pdu_length(hex_pdu)}", hex_pdu])
            elif ds == 2:
                index = self._store("SR", hex_pdu, stat=0)
                if index is not None:
                    self._write_lines([f'+CDSI: "SR",{index}'])

        self._later(self.radio_delay + plan.delay, emit)

    def _store(self, mem: str, hex_pdu: str, stat: int) -> int | None:
        slots = self.storage[mem]
        if len(slots) >= self.storage_size:
            return None
        index = next(i for i in itertools.count(0) if i not in slots)
        slots[index] = (stat, hex_pdu)
        return index

    def _deliver(self, hex_pdu: str, notify: bool, during_next_reply: bool) -> int:
        mode = self.cnmi[1]
        if notify and mode == 2:
            self._write_lines([f"+CMT: ,{self._pdu_length(hex_pdu)}", hex_pdu])
            return -1
        index = self._store("SM", hex_pdu, stat=0)
        if index is None:
            return -1
        if notify and mode == 1:
            urc = f'+CMTI: "SM",{index}'
            if during_next_reply:
                self._into_next_reply.append(urc)
            else:
                self._write_lines([urc])
        return index

    def _pdu_length(self, hex_pdu: str) -> int:
        raw = bytes.fromhex(hex_pdu)
        return len(raw) - raw[0] - 1

    def _cmgr(self, index: int) -> None:
        slots = self.storage[self.mem[0]]
        if index not in slots:
            self._reply([], self._error("CMS", 321))
            return
        stat, hex_pdu = slots[index]
        slots[index] = (1 if stat == 0 else stat, hex_pdu)
        self._reply([f"+CMGR: {stat},,{self._pdu_length(hex_pdu)}", hex_pdu])

    def _cmgl(self) -> None:
        lines: list[str] = []
        slots = self.storage[self.mem[0]]
        for index in sorted(slots):
            stat, hex_pdu = slots[index]
            lines += [f"+CMGL: {index},{stat},,{self._pdu_length(hex_pdu)}", hex_pdu]
            slots[index] = (1 if stat == 0 else stat, hex_pdu)
        self._reply(lines)

    def _cmgd(self, arg: str) -> None:
        index = int(arg.split(",")[0])
        mem = self.mem[0]
        if self.storage[mem].pop(index, None) is None:
            self._reply([], self._error("CMS", 321))
            return
        self.deleted.append((mem, index))
        self._reply([])

    def _cusd(self, arg: str) -> None:
        parts = arg.split(",")
        code = parts[1].strip().strip('"') if len(parts) > 1 else ""
        if parts[0].strip() != "1" or not code:
            self._reply([])  # presentation on/off, or cancel (AT+CUSD=2)
            return
        ucs2 = self.cscs == "UCS2" and re.fullmatch(r"(?:[0-9A-Fa-f]{4})+", code)
        if ucs2:  # gammu switches the TE charset to UCS2 and hex-encodes the code
            code = bytes.fromhex(code).decode("utf-16-be")
        plan = self.ussd_plans.get(code)
        if plan is None:
            self._reply([])
            self._later(0.05, lambda: self._write_lines(["+CUSD: 4"]))
            return
        text = plan.text.encode("utf-16-be").hex().upper() if ucs2 else plan.text
        urc = f'+CUSD: {plan.status},"{text}",{72 if ucs2 else plan.dcs}'
        if plan.before_ok:
            self._reply([urc])
        else:
            self._reply([])
            self._later(plan.delay, lambda: self._write_lines([urc]))


def run(link: str | None = None, **options: Any) -> ModemSimulator:
    """Start a simulator and print the device path a driver (or ``relaybox`` config) should
    use. Returns the running simulator; call ``stop()`` when done."""
    sim = ModemSimulator(link=link, **options).start()
    print(sim.path, flush=True)
    return sim


_HELP = """commands (one per line):
  sms <sender> <text...>     deliver an SMS to the modem (split if long)
  report <number> <delivered|failed|pending|none> [delay]
  ussd <code> <reply text...>
  fail <final result>        next send answers e.g. '+CMS ERROR: 512'
  hang | wake | unplug | replug | sent | quit"""


def main(argv: list[str] | None = None) -> int:
    """``relaybox modem simulate``: run a simulated modem until Ctrl-C or ``quit``.

    Prints the pty path first (one line) so scripts can read it, then accepts the commands
    of ``_HELP`` on stdin.
    """
    parser = argparse.ArgumentParser(
        prog="relaybox modem simulate",
        description="Run a simulated GSM modem on a pty.",
    )
    add_arguments(parser)
    return serve(parser.parse_args(argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The simulator's options (also used by the ``relaybox modem simulate`` subcommand)."""
    parser.add_argument(
        "--link", help="also create this symlink to the pty (for replug)"
    )
    parser.add_argument("--pin", help="SIM asks for this PIN")
    parser.add_argument(
        "--smsc", default="+447802000332", help="SMSC on the SIM ('' = none)"
    )
    parser.add_argument(
        "--radio-delay",
        type=float,
        default=0.5,
        help="seconds between Ctrl-Z and +CMGS (default 0.5)",
    )
    parser.add_argument(
        "--report",
        default="delivered",
        choices=[*REPORT_STATUS, "none"],
        help="default status report",
    )
    parser.add_argument("--report-delay", type=float, default=2.0)
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log every command"
    )


def serve(args: argparse.Namespace) -> int:
    """Run the simulator described by parsed :func:`add_arguments` options until Ctrl-C."""
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    sim = run(args.link, pin=args.pin, smsc=args.smsc, radio_delay=args.radio_delay)
    sim.default_report = ReportPlan(args.report, args.report_delay)
    print(_HELP, file=sys.stderr)
    try:
        for raw in sys.stdin:
            words = raw.split()
            if not words:
                continue
            cmd, rest = words[0], words[1:]
            try:
                if cmd == "quit":
                    break
                elif cmd == "sms" and len(rest) >= 2:
                    print(sim.inject_sms(rest[0], " ".join(rest[1:])), file=sys.stderr)
                elif cmd == "report" and len(rest) >= 2:
                    sim.set_report(
                        rest[0], rest[1], float(rest[2]) if len(rest) > 2 else 2.0
                    )
                elif cmd == "ussd" and len(rest) >= 2:
                    sim.set_ussd(rest[0], " ".join(rest[1:]))
                elif cmd == "fail" and rest:
                    sim.fail_sends(" ".join(rest))
                elif cmd in ("hang", "wake", "unplug"):
                    getattr(sim, cmd)()
                elif cmd == "replug":
                    print(sim.replug(), file=sys.stderr)
                elif cmd == "sent":
                    for s in sim.sent:
                        print(f"mr={s.reference} to={s.to} {s.text!r}", file=sys.stderr)
                else:
                    print(_HELP, file=sys.stderr)
            except (ValueError, TypeError) as exc:
                print(f"error: {exc}", file=sys.stderr)
        else:
            # stdin ended (e.g. started in the background): keep the modem up until a signal.
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
            threading.Event().wait()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        sim.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
