"""Shared helpers of the Android tests: a server tuned for phones, paired simulated phones,
a raw SSE reader, and direct reads of the server's database (events, pairing rows)."""
from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from typing import Any

import requests
from conftest import wait_for  # noqa: F401 - re-exported for the Android tests
from playhouse.db_url import connect

from relaybox.channels.android.simulator import SimulatedDevice

MOBILE = "/api/mobile/v1"
UA = {"User-Agent": "me.capcom.smsgateway/1.68.0"}


def phone_server(server_factory: Callable[..., Any], **settings: Any) -> Any:
    """A relaybox with a 1 s SSE keep-alive and phones offline 5 s after they were last seen."""
    settings.setdefault("sse_keepalive_seconds", 1)
    settings.setdefault("device_offline_after", 5)
    # These tests are about the protocol, not pacing (tests/test_routing.py): phones unpaced.
    settings.setdefault("pacing", '{"android": {"min_delay": 0, "max_delay": 0, "per_minute": 0, '
                                  '"per_hour": 0, "per_day": 0}}')
    return server_factory(**settings)


def mobile_url(srv: Any) -> str:
    return srv.url + MOBILE


def new_code(srv: Any) -> str:
    r = srv.api().post("/devices/pairing", json={})
    assert r.status_code == 201, r.text
    code = r.json()["data"]["code"]
    assert len(code) == 8 and code.isdigit()
    return code


class Phones:
    """Simulated phones paired with a server; all stopped at teardown."""

    def __init__(self) -> None:
        self.devices: list[SimulatedDevice] = []

    def add(self, srv: Any, *, start: bool = True, code: str | None = None, **kw: Any) -> SimulatedDevice:
        kw.setdefault("delay_ms", 20)
        kw.setdefault("backoff_scale", 0.02)
        kw.setdefault("seed", len(self.devices) + 1)
        kw.setdefault("name", f"Google/sim{len(self.devices) + 1}")
        if code is None and "private_token" not in kw and "state_file" not in kw:
            code = new_code(srv)
        dev = SimulatedDevice(kw.pop("url", mobile_url(srv)), code=code, **kw)
        self.devices.append(dev)
        if start:
            dev.start()
            assert dev.wait_for(lambda: dev.connected or dev.push_token is not None, 10), dev.errors
            if dev.push_token is None and dev.registrations:  # a first stream starts with the syncs
                dev.wait_for(lambda: any(e.name == "SettingsUpdated" for e in dev.events), 3)
        return dev

    def stop_all(self) -> None:
        for d in self.devices:
            try:
                d.stop(timeout=2)
            except Exception as exc:  # noqa: BLE001 - teardown goes on
                print(f"stopping {d.name} failed: {exc}")




def send(srv: Any, to: str = "+923001234567", body: str = "hello", **extra: Any) -> dict[str, Any]:
    r = srv.api().post("/sms/send", json={"to": to, "body": body, **extra})
    assert r.status_code == 202, r.text
    return r.json()["data"]


def message(srv: Any, mid: str) -> dict[str, Any]:
    r = srv.api().get(f"/sms/{mid}")
    assert r.status_code == 200, r.text
    return r.json()["data"]


def timeline(srv: Any, mid: str) -> list[dict[str, Any]]:
    r = srv.api().get(f"/messages/{mid}/log")
    assert r.status_code == 200, r.text
    return r.json()["data"]["timeline"]


def device_view(srv: Any, device_id: str) -> dict[str, Any]:
    r = srv.api().get(f"/devices/{device_id}")
    assert r.status_code == 200, r.text
    return r.json()["data"]


# -- the server's database --------------------------------------------------------------------------
def database(srv: Any) -> Any:
    url = srv.env.get("RELAYBOX_DATABASE") or f"sqlite:///{srv.data_dir}/relaybox.db"
    return connect(url)


def query(srv: Any, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run SQL against the server's database; ``?`` marks parameters."""
    db = database(srv)
    try:
        cur = db.execute_sql(sql.replace("?", db.param), params)
        return list(cur.fetchall()) if cur.description else []
    finally:
        db.close()


def events_of(srv: Any, type_: str) -> list[dict[str, Any]]:
    rows = query(srv, "SELECT payload FROM event WHERE type = ? ORDER BY created_at, id", type_)
    return [json.loads(r[0]) for r in rows]


# -- a raw SSE client ---------------------------------------------------------------------------------
class RawSSE:
    """``GET /events`` over a plain socket: the exact bytes, with their arrival times."""

    def __init__(self, srv: Any, token: str, path: str = MOBILE + "/events") -> None:
        self.sock = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        req = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\nAuthorization: Bearer {token}\r\n"
               "Accept: text/event-stream\r\n\r\n")
        self.sock.sendall(req.encode())
        self.buf = b""
        self.head = self._read_until(b"\r\n\r\n", 5).decode("latin-1")

    def _read_until(self, marker: bytes, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while marker not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {marker!r} within {timeout}s; got {self.buf[-300:]!r}")
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError(f"stream closed; got {self.buf[-300:]!r}")
            self.buf += chunk
        head, _, self.buf = self.buf.partition(marker)
        return head

    @property
    def status(self) -> int:
        return int(self.head.split(" ", 2)[1])

    def header(self, name: str) -> str | None:
        for line in self.head.split("\r\n")[1:]:
            k, _, v = line.partition(":")
            if k.strip().lower() == name.lower():
                return v.strip()
        return None

    def body_text(self, wait: float) -> str:
        """Everything received within ``wait`` seconds, chunk framing removed."""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            self.buf += chunk
        return dechunk(self.buf)

    def closed_within(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                return False
            except OSError:
                return True
            if not chunk:
                return True
            self.buf += chunk
        return False

    def close(self) -> None:
        self.sock.close()


def dechunk(data: bytes) -> str:
    """HTTP/1.1 chunked transfer coding → text (a trailing partial chunk is kept as is)."""
    out = b""
    rest = data
    while rest:
        size_line, sep, after = rest.partition(b"\r\n")
        if not sep:
            break
        try:
            size = int(size_line.split(b";")[0], 16)
        except ValueError:
            return (out + rest).decode()
        if size == 0:
            break
        out += after[:size]
        rest = after[size + 2:]
    return out.decode()


def register_raw(srv: Any, auth: str, body: dict[str, Any] | None = None) -> requests.Response:
    return requests.post(mobile_url(srv) + "/device", headers={"Authorization": auth, **UA},
                         json=body if body is not None else {"name": "samsung/a52sxqxx", "pushToken": None,
                                                              "simCards": []}, timeout=10)
