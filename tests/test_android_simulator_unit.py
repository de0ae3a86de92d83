"""Unit tests for the simulated Android phone against a tiny fake relaybox.

Why a fake server: the simulator must be proven faithful to the app's side of the protocol
(ANDROID-PROTOCOL.md §4) independently of relaybox's real device API, so that a failure in
the integration tests points at the server, not at the simulator. The fake implements only
the §11 minimal endpoint set, with the Go server's semantics, served by waitress like
relaybox itself (which also checks that SSE events are flushed at once through waitress).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, Response, abort, jsonify, request
from waitress.server import create_server

from relaybox.channels.android.simulator import (
    SEND_FAILURE_ERROR,
    USER_AGENT,
    SimulatedDevice,
    SSEParser,
    format_date,
    gson_dumps,
    parse_date,
    redact,
)

PREFIX = "/api/mobile/v1"
DATE_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}(Z|[+-]\d\d:\d\d)$")


class FakeServer:
    """The §11 minimal device API with Go-server semantics, plus a webhook sink."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.codes = {"123456"}
        self.private_token = "s3cret-private"
        self.devices: dict[str, dict[str, Any]] = {}  # token -> device
        self.requests: list[dict[str, Any]] = []
        self.messages: dict[str, dict[str, Any]] = {}  # id -> {"msg":…, "state":…}
        self.patches: list[dict[str, Any]] = []
        self.settings: dict[str, Any] = {}
        self.webhooks: list[dict[str, Any]] = []
        self.inbound: list[tuple[dict[str, str], bytes]] = []
        self.streams: list[queue.Queue[bytes | None]] = []
        self.pushed_at: list[float] = []
        self.sticky = False  # keep messages Pending whatever the device PATCHes
        self.keepalive = 0.3
        self.closing = threading.Event()
        self._n = 0
        self.app = self._build()
        self.server = create_server(self.app, host="127.0.0.1", port=0, threads=16)
        self.base = f"http://127.0.0.1:{self.server.effective_port}"
        self.url = self.base + PREFIX
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        try:
            self.server.run()
        except (OSError, ValueError):
            # waitress has no stop(); closing its sockets makes select() fail. Expected then.
            if not self.closing.is_set():
                raise

    # --- helpers used by tests -----------------------------------------------------------------

    def start(self) -> FakeServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        """End the SSE generators, let waitress finish its tasks, then close: closing first
        makes in-flight tasks write to a closed trigger fd."""
        self.closing.set()
        self.kick()
        wait(lambda: self.open_streams == 0, 1.0)
        self.server.task_dispatcher.shutdown(timeout=2)
        self.server.close()  # the loop thread notices within its 1 s select timeout; no join

    def push(self, event: str | None, data: str = "null") -> None:
        """Write one event to every open stream in the §4.9 format."""
        frame = (f"event: {event}\n" if event else "") + f"data: {data}\n\n"
        with self.lock:
            self.pushed_at.append(time.time())
            for q in self.streams:
                q.put(frame.encode())

    def kick(self) -> None:
        with self.lock:
            for q in self.streams:
                q.put(None)

    def enqueue(self, phones: list[str], text: str = "hello", **extra: Any) -> str:
        with self.lock:
            self._n += 1
            mid = f"msg_{self._n:04d}"
            msg = {
                "id": mid,
                "textMessage": {"text": text},
                "message": text,
                "phoneNumbers": phones,
                "withDeliveryReport": True,
                "createdAt": "2026-11-22T10:15:00.000+00:00",
            } | extra
            self.messages[mid] = {"msg": msg, "state": extra.get("state", "Pending")}
        return mid

    def patched(self, mid: str) -> list[dict[str, Any]]:
        with self.lock:
            return [p for p in self.patches if p["id"] == mid]

    def reqs(self, method: str, path: str) -> list[dict[str, Any]]:
        with self.lock:
            return [
                r
                for r in self.requests
                if r["method"] == method and r["path"] == PREFIX + path
            ]

    @property
    def open_streams(self) -> int:
        with self.lock:
            return len(self.streams)

    # --- the Flask app ---------------------------------------------------------------------------

    def _device(self) -> dict[str, Any]:
        auth = request.headers.get("Authorization", "")
        dev = (
            self.devices.get(auth.removeprefix("Bearer "))
            if auth.startswith("Bearer ")
            else None
        )
        if dev is None:
            abort(401)
        return dev

    def _build(self) -> Flask:
        app = Flask("fake-relaybox")

        @app.before_request
        def record() -> None:
            with self.lock:
                self.requests.append(
                    {
                        "method": request.method,
                        "path": request.path,
                        "args": request.args.to_dict(),
                        "headers": dict(request.headers),
                        "body": request.get_data(),
                    }
                )

        @app.errorhandler(401)
        def unauthorized(_: Exception) -> tuple[Response, int]:
            return jsonify({"message": "Unauthorized"}), 401

        @app.post(PREFIX + "/device")
        def register() -> tuple[Response, int]:
            auth = request.headers.get("Authorization", "")
            if auth.startswith("Code ") and auth[5:] in self.codes:
                self.codes.discard(auth[5:])  # single use
            elif auth != f"Bearer {self.private_token}":
                abort(401)
            body = request.get_json()
            with self.lock:
                self._n += 1
                dev = {
                    "id": f"dev{self._n:018d}",
                    "token": f"tok{self._n:018d}",
                    "name": body["name"],
                    "pushToken": body.get("pushToken"),
                    "simCards": body.get("simCards"),
                }
                self.devices[dev["token"]] = dev
            return jsonify(
                {"id": dev["id"], "token": dev["token"], "login": "RELAYBOX"}
            ), 201

        @app.patch(PREFIX + "/device")
        def patch_device() -> tuple[str, int]:
            dev = self._device()
            body = request.get_json()
            if body["id"] != dev["id"]:
                abort(403)
            dev["pushToken"] = body.get("pushToken")
            return "", 204

        @app.get(PREFIX + "/message")
        def get_messages() -> Response:
            self._device()
            with self.lock:
                out = [
                    m["msg"] | {"state": m["state"]}
                    for m in self.messages.values()
                    if m["state"] in ("Pending", "Cancelling")
                ]
            if request.args.get("order", "lifo") == "lifo":
                out.reverse()
            return jsonify(out[:100])

        @app.patch(PREFIX + "/message")
        def patch_messages() -> tuple[str, int]:
            self._device()
            items = request.get_json()
            with self.lock:
                for item in items:
                    self.patches.append(item)
                    m = self.messages.get(item["id"])
                    if m is not None and not self.sticky:
                        # Go semantics: an incoming Pending becomes Processed (§4.5).
                        m["state"] = (
                            "Processed" if item["state"] == "Pending" else item["state"]
                        )
            return "", 204

        @app.get(PREFIX + "/settings")
        def settings() -> Response:
            self._device()
            return jsonify(self.settings)

        @app.get(PREFIX + "/webhooks")
        def webhooks() -> Response:
            self._device()
            return jsonify(self.webhooks)

        @app.get(PREFIX + "/events")
        def events() -> Response:
            self._device()
            q: queue.Queue[bytes | None] = queue.Queue()
            with self.lock:
                self.streams.append(q)

            def gen() -> Iterator[bytes]:
                try:
                    # waitress sends the headers with the first body bytes: write at once so
                    # the phone's onOpen (and its pull-on-connect) is not delayed.
                    yield b":keepalive\n\n"
                    while not self.closing.is_set():
                        try:
                            item = q.get(timeout=self.keepalive)
                        except queue.Empty:
                            yield b":keepalive\n\n"
                            continue
                        if item is None:
                            return
                        yield item
                finally:
                    with self.lock:
                        if q in self.streams:
                            self.streams.remove(q)

            return Response(
                gen(),
                mimetype="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )

        @app.post("/hooks/inbound")
        def inbound() -> tuple[str, int]:
            with self.lock:
                self.inbound.append((dict(request.headers), request.get_data()))
            return "", 200

        return app


def changes(server: FakeServer, mid: str) -> list[str]:
    """Server-side state sequence without re-sends: a message pulled again while the phone
    still holds it has its current state (often ``Pending``) re-sent (§4.4), which depends on
    pull timing. Single-recipient messages only."""
    out: list[str] = []
    for p in server.patched(mid):
        if p["state"] != "Pending" and (not out or out[-1] != p["state"]):
            out.append(p["state"])
    return out


def wait(pred: Callable[[], Any], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return bool(pred())


@pytest.fixture
def server() -> Iterator[FakeServer]:
    srv = FakeServer().start()
    yield srv
    srv.stop()


@pytest.fixture
def make_device(server: FakeServer) -> Iterator[Callable[..., SimulatedDevice]]:
    made: list[SimulatedDevice] = []

    def factory(**kw: Any) -> SimulatedDevice:
        kw.setdefault("code", "123456" if "private_token" not in kw else None)
        opts: dict[str, Any] = {
            "delay_ms": 30,
            "backoff_scale": 0.02,
            "poll_interval": 30.0,
            "seed": 7,
            "http_timeout": 3.0,
        } | kw
        dev = SimulatedDevice(server.url, **opts)
        made.append(dev)
        return dev

    yield factory
    for dev in made:
        dev.stop(timeout=1.0)


def started(dev: SimulatedDevice, server: FakeServer) -> SimulatedDevice:
    dev.start()
    assert wait(lambda: dev.connected and server.open_streams > 0), (
        "SSE did not connect"
    )
    return dev


# --- pure helpers ----------------------------------------------------------------------------------


def test_sse_parser_wire_format() -> None:
    p = SSEParser()
    out = p.feed(b":keepalive\n\nevent: MessageEnqueued\r")
    assert out == [] and p.comments == 1
    out = p.feed(b'\ndata: null\r\n\r\nevent: MessageCancelled\ndata: {"messageId":')
    assert [(e.event, e.data) for e in out] == [("MessageEnqueued", "null")]
    out = p.feed(b'"m1"}\n\n' + b"data: a\ndata:b\n\n" + b"event: SettingsUpdated\n\n")
    # No data line -> no dispatch (okhttp-sse); missing name -> None; one space stripped.
    assert [(e.event, e.data) for e in out] == [
        ("MessageCancelled", '{"messageId":"m1"}'),
        (None, "a\nb"),
    ]
    # Multi-byte UTF-8 split across chunks.
    raw = "data: café\n\n".encode()
    assert p.feed(raw[:9]) == [] and p.feed(raw[9:])[0].data == "café"


def test_gson_like_encoding_and_dates() -> None:
    assert gson_dumps(
        {"a": None, "b": "x<y>&'=", "c": [None, 1], "d": {"e": None}}
    ) == ('{"b":"x\\u003cy\\u003e\\u0026\\u0027\\u003d","c":[null,1],"d":{}}')
    assert gson_dumps({"a": None}, serialize_nulls=True) == '{"a":null}'
    dt = datetime(2026, 11, 22, 10, 15, 2, 114000, tzinfo=UTC)
    assert format_date(dt) == "2026-11-22T10:15:02.114Z"
    assert (
        format_date(dt, timezone(timedelta(hours=5))) == "2026-11-22T15:15:02.114+05:00"
    )
    for s in (
        "2026-11-22T10:15:02.114Z",
        "2026-11-22T10:15:02.114+00:00",
        "2026-11-22T10:15:02Z",
        "2026-11-22T15:15:02.114123456+05:00",
    ):
        assert parse_date(s).replace(microsecond=0) == dt.replace(microsecond=0)
    assert redact("+15550100001") == "********0001" and redact("abc") == "****"


# --- protocol tests ----------------------------------------------------------------------------------


def test_register_with_code_and_initial_sync(
    server: FakeServer, make_device, tmp_path
) -> None:
    state = tmp_path / "phone.json"
    server.settings = {
        "gateway": {"notification_channel": "SSE_ONLY"},
        "webhooks": {"signing_key": "k3y"},
    }
    dev = started(make_device(state_file=state, name="samsung/a52sxqxx"), server)

    (reg,) = server.reqs("POST", "/device")
    assert reg["headers"]["Authorization"] == "Code 123456"
    assert reg["headers"]["User-Agent"] == USER_AGENT == "me.capcom.smsgateway/1.68.0"
    assert reg["headers"]["Content-Type"] == "application/json"
    body = json.loads(reg["body"])
    assert list(body) == ["name", "simCards"]  # pushToken null is omitted, as Gson does
    assert body["name"] == "samsung/a52sxqxx"
    assert body["simCards"][0] == {
        "slotIndex": 0,
        "simNumber": 1,
        "phoneNumber": "********0001",
        "carrierName": "************bile",
        "iccid": "*" * 15 + body["simCards"][0]["iccid"][-4:],
    }
    assert [s["simNumber"] for s in body["simCards"]] == [1, 2]

    assert dev.device_id and dev.token and dev.login == "RELAYBOX"
    assert json.loads(state.read_text())["registration"]["token"] == dev.token
    assert (
        dev.signing_key == "k3y"
        and dev.settings["gateway"]["notification_channel"] == "SSE_ONLY"
    )
    assert server.reqs("GET", "/settings") and server.reqs("GET", "/webhooks")

    (sse,) = server.reqs("GET", "/events")
    assert sse["headers"]["Authorization"] == f"Bearer {dev.token}"
    assert sse["headers"]["Accept"] == "text/event-stream"
    assert sse["headers"]["User-Agent"].startswith("okhttp/")
    assert wait(lambda: server.reqs("GET", "/message"))  # pull at start / on SSE open
    assert server.reqs("GET", "/message")[0]["args"] == {"order": "lifo"}
    assert wait(lambda: dev.keepalives >= 1)


def test_event_pull_and_state_reports_in_order(server: FakeServer, make_device) -> None:
    dev = started(make_device(), server)
    m1 = server.enqueue(["+923001234567"], "Your code is 482913")
    m2 = server.enqueue(["+923001112222"], "no report", withDeliveryReport=False)
    server.push("MessageEnqueued")

    assert wait(lambda: changes(server, m1) == ["Processed", "Sent", "Delivered"]), (
        server.patched(m1),
        dev.errors,
    )
    assert wait(lambda: changes(server, m2) == ["Processed", "Sent"]), (
        server.patched(m2),
        dev.errors,
    )
    time.sleep(0.15)
    assert changes(server, m2) == ["Processed", "Sent"]  # no Delivered
    assert dev.reported_states(m1, resends=False) == ["Processed", "Sent", "Delivered"]

    last = server.patched(m1)[-1]
    assert list(last) == ["id", "state", "recipients", "states"]
    assert last["recipients"] == [
        {"phoneNumber": "+923001234567", "state": "Delivered"}
    ]  # error omitted
    assert list(last["states"]) == ["Pending", "Processed", "Sent", "Delivered"]
    assert all(DATE_RE.match(v) for v in last["states"].values())
    # One element per PATCH, Bearer auth, JSON.
    for r in server.reqs("PATCH", "/message"):
        assert len(json.loads(r["body"])) == 1
        assert r["headers"]["Authorization"] == f"Bearer {dev.token}"
    # The event was seen promptly (no buffering between waitress and the reader).
    ev = next(e for e in dev.events if e.name == "MessageEnqueued")
    assert ev.data == "null" and ev.received_at - server.pushed_at[0] < 0.5
    assert dev.pull_counts[m1] >= 1 and m1 in dev.messages


def test_multi_recipient_per_recipient_reports(server: FakeServer, make_device) -> None:
    dev = started(make_device(), server)
    mid = server.enqueue(["+1", "+2"])
    server.push("MessageEnqueued")
    assert wait(lambda: dev.reported_states(mid)[-1:] == ["Delivered"])
    # One PATCH per recipient change; the first one still shows +2 Pending.
    assert dev.reported_recipient_states(mid, "+1", resends=False) == [
        "Processed",
        "Sent",
        "Delivered",
    ]
    assert dev.reported_recipient_states(mid, "+2", resends=False) == [
        "Pending",
        "Processed",
        "Sent",
        "Delivered",
    ]
    # The message state is derived from the recipients (any Pending -> Pending, …).
    assert dev.reported_states(mid, resends=False) == [
        "Pending",
        "Processed",
        "Processed",
        "Sent",
        "Sent",
        "Delivered",
    ]


def test_failures_ttl_and_missing_sim(server: FakeServer, make_device) -> None:
    dev = started(make_device(fail_rate=1.0), server)
    m_fail = server.enqueue(["+1"])
    past = format_date(datetime.now(UTC) - timedelta(minutes=1))
    m_ttl = server.enqueue(["+2"], validUntil=past)
    m_sim = server.enqueue(["+3"], simNumber=3)
    server.push("MessageEnqueued")
    assert wait(
        lambda: all(
            dev.reported_states(m)[-1:] == ["Failed"] for m in (m_fail, m_ttl, m_sim)
        )
    )
    assert dev.reported_states(m_fail, resends=False) == ["Processed", "Failed"]
    assert server.patched(m_fail)[-1]["recipients"][0]["error"] == SEND_FAILURE_ERROR
    assert dev.reported_states(m_ttl, resends=False) == ["Failed"]
    assert server.patched(m_ttl)[-1]["recipients"][0]["error"] == "TTL expired"
    assert (
        server.patched(m_sim)[-1]["recipients"][0]["error"]
        == "Can't send message: SIM 3 not found"
    )


def test_dedupe_by_id_resends_state(server: FakeServer, make_device) -> None:
    server.sticky = True  # the server keeps returning the message (§4.4)
    dev = started(make_device(), server)
    dev.paused = True
    mid = server.enqueue(["+1"])
    for _ in range(
        10
    ):  # bounded: each event triggers (or coalesces into) one more pull
        seen = dev.pull_counts.get(mid, 0)
        if seen >= 3:
            break
        server.push("MessageEnqueued")
        wait(lambda s=seen: dev.pull_counts.get(mid, 0) > s, 1.0)
    assert dev.pull_counts.get(mid, 0) >= 3
    assert len(dev.messages) == 1 and dev.messages[mid].pulls == dev.pull_counts[mid]
    # A held message only has its state re-sent; the SMS is never queued twice.
    assert wait(lambda: len(dev.reported_states(mid)) >= 2)
    assert set(dev.reported_states(mid)) == {"Pending"}
    assert {r.trigger for r in dev.reports if r.message_id == mid} == {"resend"}
    dev.paused = False
    assert wait(lambda: "Delivered" in dev.reported_states(mid))
    sends = [
        r
        for r in dev.reports
        if r.message_id == mid and r.trigger.startswith("Processed:")
    ]
    assert len(sends) == 1


def test_cancel_pending_and_unknown(server: FakeServer, make_device) -> None:
    dev = started(make_device(), server)
    dev.paused = True  # keep it locally Pending so the cancel wins
    m1 = server.enqueue(["+1", "+2"])
    server.push("MessageEnqueued")
    assert wait(lambda: m1 in dev.messages)
    server.messages[m1]["state"] = "Cancelling"
    server.push("MessageCancelled", json.dumps({"messageId": m1}))
    # Re-pulls while it sat in the local queue only re-sent "Pending" (§4.4 de-duplication).
    assert wait(lambda: dev.reported_states(m1)[-1:] == ["Cancelled"])
    assert set(dev.reported_states(m1)) <= {"Pending", "Cancelled"}
    assert dev.reported_states(m1, resends=False) == ["Cancelled"]
    item = server.patched(m1)[-1]
    assert [r["state"] for r in item["recipients"]] == ["Cancelled", "Cancelled"]
    assert "Cancelled" in item["states"]
    dev.paused = False
    time.sleep(0.2)
    assert "Processed" not in dev.reported_states(m1)  # never sent

    # Cancelling for a message the phone never had: it reports Cancelled itself (§6.4).
    m2 = server.enqueue(["+3", "+4"], state="Cancelling")
    server.push(None)  # missing event name means MessageEnqueued
    assert wait(lambda: server.patched(m2))
    item = server.patched(m2)[0]
    assert item["state"] == "Cancelled" and list(item["states"]) == ["Cancelled"]
    assert [r["phoneNumber"] for r in item["recipients"]] == ["+3", "+4"]
    assert m2 not in dev.messages


def test_inbound_webhook_signed_and_ping(server: FakeServer, make_device) -> None:
    server.settings = {
        "webhooks": {"signing_key": "per-device-secret"},
        "messages": {"processing_order": "FIFO"},
    }
    server.webhooks = [
        {
            "id": "rbx-inbound",
            "deviceId": None,
            "url": server.base + "/hooks/inbound",
            "event": "sms:received",
        },
        {
            "id": "rbx-ping",
            "deviceId": None,
            "url": server.base + "/hooks/inbound",
            "event": "system:ping",
        },
    ]
    dev = started(make_device(), server)
    assert wait(lambda: server.reqs("GET", "/message"))
    assert server.reqs("GET", "/message")[0]["args"] == {"order": "fifo"}

    (d,) = dev.post_inbound_sms("+923001234567", "STOP <now> & café")
    assert d.ok
    headers, raw = server.inbound[-1]
    expected = hmac.new(
        b"per-device-secret", raw + headers["X-Timestamp"].encode(), hashlib.sha256
    ).hexdigest()
    assert headers["X-Signature"] == expected
    assert abs(int(headers["X-Timestamp"]) - time.time()) < 5
    assert (
        headers["User-Agent"] == USER_AGENT
        and headers["Content-Type"] == "application/json"
    )
    assert (
        b"\\u003cnow\\u003e" in raw and "café".encode() in raw
    )  # Gson escaping, raw UTF-8
    env = json.loads(raw)
    assert list(env) == ["id", "webhookId", "event", "deviceId", "payload"]
    assert env["event"] == "sms:received" and env["webhookId"] == "rbx-inbound"
    assert env["deviceId"] == dev.device_id and len(env["id"]) == 21
    p = env["payload"]
    assert (
        p["sender"] == p["phoneNumber"] == "+923001234567"
        and p["message"] == "STOP <now> & café"
    )
    assert (
        p["recipient"] == "+15550100001"
        and p["simNumber"] == 1
        and DATE_RE.match(p["receivedAt"])
    )

    dev.battery_level = 20
    (d,) = dev.post_ping()
    assert d.ok
    headers, raw = server.inbound[-1]
    assert (
        headers["X-Signature"]
        == hmac.new(
            b"per-device-secret", raw + headers["X-Timestamp"].encode(), hashlib.sha256
        ).hexdigest()
    )
    env = json.loads(raw)
    health = env["payload"]["health"]
    assert env["event"] == "system:ping" and health["version"] == "1.68.0"
    assert (
        health["status"] == "warn"
        and health["checks"]["battery:level"]["observedValue"] == 20
    )
    assert set(health["checks"]) == {
        "messages:failed",
        "connection:status",
        "connection:transport",
        "connection:cellular",
        "battery:level",
        "battery:charging",
    }

    # SettingsUpdated re-reads /settings; the signing key applies to the next webhook.
    server.settings = {"webhooks": {"signing_key": "rotated"}}
    server.push("SettingsUpdated")
    assert wait(lambda: dev.signing_key == "rotated")


def test_strict_settings_like_the_app(server: FakeServer, make_device) -> None:
    server.settings = {
        "messages": {"processing_order": "fifo"}
    }  # enum names are upper-case
    dev = started(make_device(), server)
    assert any("No enum constant fifo" in e for e in dev.errors)
    assert dev.processing_order == "LIFO"


def test_restart_patches_and_401_reregisters(
    server: FakeServer, make_device, tmp_path
) -> None:
    state = tmp_path / "phone.json"
    first = make_device(state_file=state).start()
    old_id, old_token = first.device_id, first.token
    first.stop()

    again = make_device(
        state_file=state, code=None
    ).start()  # restart with a known token
    assert (
        again.device_patches == 1
        and again.registrations == 0
        and again.device_id == old_id
    )
    patch = server.reqs("PATCH", "/device")[-1]
    assert patch["headers"]["Authorization"] == f"Bearer {old_token}"
    assert json.loads(patch["body"])["id"] == old_id
    again.stop()

    server.devices.clear()  # the server forgot the phone: PATCH -> 401 -> anonymous sign-up
    third = make_device(state_file=state, private_token=server.private_token)
    started(third, server)
    assert (
        server.reqs("PATCH", "/device")[-1]["headers"]["Authorization"]
        == f"Bearer {old_token}"
    )
    post = server.reqs("POST", "/device")[-1]
    assert post["headers"]["Authorization"] == f"Bearer {server.private_token}"
    assert third.registrations == 1 and third.device_id != old_id
    assert json.loads(state.read_text())["registration"]["token"] == third.token


def test_sse_reconnects_with_backoff_and_pulls(server: FakeServer, make_device) -> None:
    dev = started(make_device(), server)
    pulls = dev.pulls
    server.kick()
    assert wait(lambda: dev.sse_connects == 2 and dev.connected)
    assert wait(lambda: dev.pulls > pulls)  # the app pulls on every (re)open


def test_stop_and_kill_are_prompt(server: FakeServer, make_device) -> None:
    dev = started(make_device(), server)
    t0 = time.monotonic()
    dev.stop()
    assert time.monotonic() - t0 < 2.0 and not dev.running and not dev.connected
    assert wait(lambda: server.open_streams == 0)

    dev = started(make_device(private_token=server.private_token, delay_ms=400), server)
    mid = server.enqueue(["+1"])
    server.push("MessageEnqueued")
    assert wait(lambda: server.patched(mid))
    t0 = time.monotonic()
    dev.kill()
    assert time.monotonic() - t0 < 1.0
    time.sleep(
        0.6
    )  # the radio's Sent broadcast is due, but a dead phone reports nothing
    assert changes(server, mid) == ["Processed"]

    dev.start()  # the app restarts with its local DB: the overdue broadcasts now report
    assert wait(lambda: changes(server, mid) == ["Processed", "Sent", "Delivered"])


def test_cli_main_runs_until_ctrl_c(server: FakeServer, tmp_path) -> None:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    cmd = [
        sys.executable,
        "-c",
        "import sys; from relaybox.channels.android.simulator import main; sys.exit(main(sys.argv[1:]))",
        "--url",
        server.url,
        "--code",
        "123456",
        "--delay-ms",
        "20",
        "--state-file",
        str(tmp_path / "s.json"),
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "SSE connected" in line:
                break
        mid = server.enqueue(["+1"])
        server.push("MessageEnqueued")
        assert wait(lambda: changes(server, mid)[-1:] == ["Delivered"], 5)
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=5)
    lines.append(out)
    text = "".join(lines)
    assert proc.returncode == 0, text
    assert (
        "registered (code)" in text
        and "event MessageEnqueued" in text
        and "-> Delivered" in text
    )
