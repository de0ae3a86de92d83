"""Finding the modem's AT port (``relaybox modem scan``).

A 3G/LTE stick exposes several serial ports and only one or two speak AT; names like
``/dev/ttyUSB2`` shift after a replug (MODEM.md §2), so the scan reports the stable
``/dev/serial/by-id/...`` path to put in the config, and probes each port with ``ATI``.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass, field

from serial.tools import list_ports

from relaybox.channels.modem.at import ESC, ATError, ATPort, PortOpenError


@dataclass
class PortCandidate:
    """A serial port that may be a modem. ``path`` is the stable by-id path when one
    exists: put that in the config, not ``/dev/ttyUSBn``."""

    path: str
    device: str
    description: str = ""
    manufacturer: str | None = None
    vid: int | None = None
    pid: int | None = None
    serial_number: str | None = None
    responds: bool | None = None  # None: not probed
    info: list[str] = field(default_factory=list)
    error: str | None = None


def scan(
    *,
    probe: bool = True,
    extra: list[str] | None = None,
    baudrate: int = 115200,
    timeout: float = 1.0,
) -> list[PortCandidate]:
    """List USB serial ports (and ``extra`` paths) and ask each ``ATI``.

    A 3G/LTE stick exposes several ports and only one or two speak AT, hence the probe. A
    port another program holds is reported with the reason rather than skipped, because
    "ModemManager has it" is exactly what the operator needs to learn.
    """
    by_id: dict[str, str] = {}
    for link in sorted(glob.glob("/dev/serial/by-id/*")):
        by_id.setdefault(os.path.realpath(link), link)
    found: dict[str, PortCandidate] = {}
    for info in list_ports.comports():
        if info.vid is None and not re.search(r"tty(USB|ACM)", info.device):
            continue  # built-in UARTs and virtual consoles
        real = os.path.realpath(info.device)
        found[real] = PortCandidate(
            path=by_id.get(real, info.device),
            device=info.device,
            description=info.description or "",
            manufacturer=info.manufacturer,
            vid=info.vid,
            pid=info.pid,
            serial_number=info.serial_number,
        )
    for real, link in by_id.items():
        found.setdefault(real, PortCandidate(path=link, device=real))
    for path in extra or []:
        found.setdefault(
            os.path.realpath(path),
            PortCandidate(path=path, device=os.path.realpath(path)),
        )
    candidates = sorted(found.values(), key=lambda c: c.path)
    if probe:
        for candidate in candidates:
            _probe(candidate, baudrate, timeout)
    return candidates


def _probe(candidate: PortCandidate, baudrate: int, timeout: float) -> None:
    port = ATPort(
        candidate.path, baudrate, name=f"probe:{os.path.basename(candidate.path)}"
    )
    try:
        port.open()
    except PortOpenError as exc:
        candidate.responds = False
        candidate.error = str(exc)
        return
    try:
        port.write_raw(ESC + b"\r")
        port.drain(quiet=0.1, limit=0.3)
        port.command("AT", timeout)
        candidate.responds = True
        reply = port.command("ATI", timeout)
        candidate.info = [line for line in reply.lines if line.strip()]
    except ATError as exc:
        candidate.responds = candidate.responds or False
        candidate.error = str(exc)
    finally:
        port.close()
