"""Routing end to end: a real ``relaybox serve`` with simulated phones (the app's protocol over
HTTP/SSE) and simulated modems (AT commands on real ptys) side by side, driven through the API.

Covers the router (even spread, ``from``/``device_id``, sticky sender), the priority lane, pacing
(caps and delays, counters across a restart, with the server's clock moved by
``RELAYBOX_TEST_CLOCK_FILE``), sending windows in the account's time zone, ``send_at``, cancel
in every state, failover (modem → phone, a phone's radio off) and parking. Every wait is bounded.
"""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from android_support import RawSSE, new_code, query, register_raw
from conftest import RelayboxServer, wait_for

from relaybox.channels.modem.simulator import ModemSimulator

pytestmark = pytest.mark.timeout(90)

TO = "+923001234567"
MODEM_NUMBERS = ["+46701234567", "+46701234568"]
RADIO_OFF = "Send result: RESULT_ERROR_RADIO_OFF (Failed because radio was explicitly turned off)"
FAST_MODEM: dict[str, Any] = {
    "health_interval": 0.5, "sweep_interval": 1.0, "send_deadline": 10.0, "send_retries": 0,
    "retry_backoff": 0.2, "reconnect_backoff": [0.2, 1.0], "reset_settle": 0.2,
}
FAST_TIMEOUTS = ("{ basic = 0.5, pin_query = 1.0, pin_entry = 1.0, pin_ready = 2.0, registration = 0.5, "
                 "registration_wait = 0.3, prompt = 1.0, submit = 2.0, read = 1.0, list = 2.0, ussd = 2.0 }")
OFF = {"min_delay": 0, "max_delay": 0, "per_minute": 0, "per_hour": 0, "per_day": 0}


# -- fixtures and helpers -------------------------------------------------------------------------------
class Clock:
    """The server's clock offset (RELAYBOX_TEST_CLOCK_FILE), in ms."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.set(0)

    def set(self, offset_ms: int) -> None:
        self.offset = offset_ms
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(str(offset_ms))
        os.replace(tmp, self.path)

    def advance(self, seconds: float) -> None:
        self.set(self.offset + int(seconds * 1000))

    def now_ms(self) -> int:
        return int(time.time() * 1000) + self.offset


def modem_table(name: str, sim: ModemSimulator, number: str, **extra: Any) -> str:
    lines = ["[[modem]]", f'name = "{name}"', f'port = "{sim.path}"', f'number = "{number}"']
    for key, value in {**FAST_MODEM, **extra}.items():
        lines.append(f"{key} = {json.dumps(value)}")
    lines.append(f"timeouts = {FAST_TIMEOUTS}")
    return "\n".join(lines) + "\n\n"


def pacing_table(kind: str, **spec: Any) -> str:
    return f"[pacing.{kind}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in spec.items()) + "\n"


def start(server_factory: Callable[..., RelayboxServer], modems: list[ModemSimulator] = (), *,
          pacing: dict[str, dict[str, Any]] | None = None, modem_extra: dict[str, Any] | None = None,
          clock: Clock | None = None, **settings: Any) -> RelayboxServer:
    """A server with these modems (m0, m1, ... numbered MODEM_NUMBERS), phones welcome."""
    text = "".join(modem_table(f"m{i}", sim, MODEM_NUMBERS[i], **(modem_extra or {}))
                   for i, sim in enumerate(modems))
    for kind, spec in (pacing if pacing is not None else {"android": OFF, "modem": OFF}).items():
        text += pacing_table(kind, **spec)
    settings.setdefault("sse_keepalive_seconds", 1)
    settings.setdefault("device_offline_after", 30)
    settings.setdefault("allowed_countries", '["*"]')
    if clock is not None:
        settings["test_clock_file"] = str(clock.path)
    srv = server_factory(config_text=text, **settings)
    for i in range(len(modems)):
        wait_for(lambda i=i: srv.api().get(f"/modems/m{i}").json()["data"]["online"], 15,
                 message=f"modem m{i} ready")
    return srv


def send(srv: RelayboxServer, to: str = TO, body: str = "hello", **extra: Any) -> dict[str, Any]:
    r = srv.api().post("/sms/send", json={"to": to, "body": body, **extra})
    assert r.status_code == 202, r.text
    return r.json()["data"]


def message(srv: RelayboxServer, mid: str) -> dict[str, Any]:
    r = srv.api().get(f"/sms/{mid}")
    assert r.status_code == 200, r.text
    return r.json()["data"]


def timeline(srv: RelayboxServer, mid: str) -> list[dict[str, Any]]:
    return srv.api().get(f"/messages/{mid}/log").json()["data"]["timeline"]


def wait_status(srv: RelayboxServer, mid: str, *statuses: str, timeout: float = 15) -> dict[str, Any]:
    box: dict[str, Any] = {}

    def check() -> bool:
        box["m"] = message(srv, mid)
        return box["m"]["status"] in statuses

    wait_for(check, timeout, 0.05, f"message {mid} {statuses} (last {box.get('m', {}).get('status')})")
    return box["m"]


def routing(srv: RelayboxServer) -> dict[str, dict[str, Any]]:
    r = srv.api().get("/routing")
    assert r.status_code == 200, r.text
    return {c["id"]: c for c in r.json()["data"]["channels"]}


def wait_usable(srv: RelayboxServer, count: int) -> None:
    wait_for(lambda: sum(c["usable"] for c in routing(srv).values()) >= count, 15,
             message=f"{count} usable channels")


def handoffs(srv: RelayboxServer, where: str = "1=1", *params: Any) -> list[tuple[str, str, int]]:
    """(message id, channel, at) of every hand-off, oldest first."""
    return query(srv, "SELECT message_id, channel_id, at FROM message_event WHERE status = 'dispatched' AND "
                 + where + " ORDER BY at, id", *params)


def list_send(srv: RelayboxServer, n: int, **extra: Any) -> dict[str, Any]:
    numbers = [f"+9230{i:08d}" for i in range(10_000_000, 10_000_000 + n)]
    r = srv.api().post("/sms/list", json={"numbers": numbers, "body": "Sale ends today", **extra})
    assert r.status_code == 202, r.text
    assert r.json()["data"]["accepted"] == n
    return r.json()["data"]


# -- the router ----------------------------------------------------------------------------------------
def test_even_spread_and_from_and_device_id_are_honoured(server_factory, sims, phones):
    modems = [sims(), sims()]
    srv = start(server_factory, modems)
    devs = [phones.add(srv, delay_ms=5) for _ in range(3)]
    wait_usable(srv, 5)
    batch = list_send(srv, 100)
    wait_for(lambda: srv.api().get(f"/sms/batch/{batch['batch_id']}").json()["data"]["status"] == "completed",
             40, 0.2, "list delivered")
    per = dict(query(srv, "SELECT channel_id, COUNT(*) FROM message WHERE batch_id = ? GROUP BY channel_id",
                     batch["batch_id"]))
    assert len(per) == 5 and max(per.values()) - min(per.values()) <= 1, per
    assert per["modem_m0"] == len(modems[0].sent) and per["modem_m1"] == len(modems[1].sent)
    assert sorted(per[d.device_id] for d in devs) == sorted(len(d.messages) for d in devs)
    # `from` a modem's number, `device_id` a phone, `from` a phone's SIM number (with that SIM).
    m = send(srv, **{"from": MODEM_NUMBERS[1]})
    assert m["device_id"] == "modem_m1" and wait_status(srv, m["id"], "delivered")["device_id"] == "modem_m1"
    m = send(srv, device_id=devs[1].device_id)
    assert wait_status(srv, m["id"], "delivered")["device_id"] == devs[1].device_id
    r = srv.api().patch(f"/devices/{devs[2].device_id}", json={"sim_numbers": {"2": "+923331112222"}})
    assert r.status_code == 200, r.text
    m = send(srv, **{"from": "+923331112222"})
    assert wait_status(srv, m["id"], "delivered")["device_id"] == devs[2].device_id
    assert devs[2].messages[m["id"]].sim_number == 2
    # Unknown numbers and devices, and a disabled phone, are INVALID_DEVICE.
    for bad in ({"from": "+923339998888"}, {"device_id": "dev_NOPE"}):
        r = srv.api().post("/sms/send", json={"to": TO, "body": "x", **bad})
        assert r.status_code == 409 and r.json()["error"]["code"] == "INVALID_DEVICE", r.text
    srv.api().patch(f"/devices/{devs[0].device_id}", json={"enabled": False})
    r = srv.api().post("/sms/send", json={"to": TO, "body": "x", "device_id": devs[0].device_id})
    assert r.status_code == 409 and r.json()["error"]["field"] == "device_id"


def test_sticky_sender_keeps_a_recipient_on_its_channel(server_factory, phones):
    srv = start(server_factory)
    devs = [phones.add(srv, delay_ms=5) for _ in range(2)]
    wait_usable(srv, 2)
    r = srv.api().put("/account/settings", json={"sticky_sender": True})
    assert r.status_code == 200 and r.json()["data"]["sticky_sender"] is True
    first = wait_status(srv, send(srv, to=TO)["id"], "delivered")["device_id"]
    later = [send(srv, to=TO, body=f"again {i}")["id"] for i in range(4)]
    assert {wait_status(srv, mid, "delivered")["device_id"] for mid in later} == {first}
    # Without it the same recipient is spread like everyone else.
    srv.api().put("/account/settings", json={"sticky_sender": False})
    spread = [send(srv, to=TO, body=f"spread {i}")["id"] for i in range(4)]
    assert len({wait_status(srv, mid, "delivered")["device_id"] for mid in spread}) == 2
    assert {d.device_id for d in devs} >= {first}
    # Routing settings are per account; channels and their pacing are the owner's.
    cmd = [sys.executable, "-m", "relaybox.cli", "account", "create", "Other", "--enable-api", "--json",
           "--data-dir", str(srv.data_dir), "--config", str(srv.config_path)]
    made = subprocess.run(cmd, env=srv.env, capture_output=True, text=True, timeout=60, check=True)
    other = srv.api(key=json.loads(made.stdout)["api_key"])
    assert other.get("/account/settings").json()["data"]["sticky_sender"] is False
    assert other.get("/routing").json()["data"]["channels"] == []
    r = other.put(f"/routing/channels/{first}/pacing", json={"per_hour": 1})
    assert r.status_code == 403 and r.json()["error"]["code"] == "FORBIDDEN"


# -- the priority lane ----------------------------------------------------------------------------------
def test_otp_overtakes_a_2000_message_bulk_send(server_factory, sims, phones):
    paced = {"min_delay": 0.2, "max_delay": 0.2, "per_minute": 0, "per_hour": 0, "per_day": 0}
    modem = sims()
    srv = start(server_factory, [modem], pacing={"android": paced, "modem": paced})
    devs = [phones.add(srv, delay_ms=5) for _ in range(2)]
    wait_usable(srv, 3)
    batch = list_send(srv, 2000, priority="bulk")
    wait_for(lambda: len(handoffs(srv)) >= 9, 20, 0.1, "the bulk send under way")
    otp = send(srv, body="Your code is 482913", priority="otp")
    m = wait_status(srv, otp["id"], "dispatched", "sent", "delivered", timeout=15)
    rows = timeline(srv, otp["id"])
    accepted, handed = rows[0]["unix_timestamp"], rows[2]["unix_timestamp"]
    assert rows[2]["status"] == "dispatched" and handed - accepted < 3000, rows  # 2,000 bulk ahead: ~400 s
    # On its channel at most one bulk message went out between the OTP's accept and its hand-off.
    between = handoffs(srv, "channel_id = ? AND at > ? AND at < ? AND message_id != ?",
                       m["device_id"], accepted, handed, otp["id"])
    assert len(between) <= 1, between
    assert wait_status(srv, otp["id"], "delivered")["attempts"] == 1
    phone = next((d for d in devs if d.device_id == m["device_id"]), None)
    if phone is not None:  # a phone was told to skip its own limits for it
        assert phone.messages[otp["id"]].priority == 100
    # FIFO within the bulk class: what went out is the head of the list.
    sent = query(srv, "SELECT batch_index FROM message WHERE batch_id = ? AND status != 'queued'", batch["batch_id"])
    indexes = sorted(i for (i,) in sent)
    assert len(indexes) < 200 and indexes[-1] < len(indexes) + 6, indexes


# -- pacing ---------------------------------------------------------------------------------------------
def test_pacing_delays_and_caps_hold_across_a_restart_with_the_clock_moved(server_factory, phones, tmp_path):
    clock = Clock(tmp_path / "clock")
    srv = start(server_factory, pacing={"android": OFF}, clock=clock)
    a, b = phones.add(srv, delay_ms=5), phones.add(srv, delay_ms=5)
    wait_usable(srv, 2)
    # B: a random delay of 0.4-0.6 s between two sends, no caps (set through the API).
    r = srv.api().put(f"/routing/channels/{b.device_id}/pacing", json={"min_delay": 0.4, "max_delay": 0.6})
    assert r.status_code == 200 and r.json()["data"]["pacing"]["min_delay"] == 0.4, r.text
    ids = [send(srv, device_id=b.device_id, body=f"b{i}")["id"] for i in range(4)]
    for mid in ids:
        wait_status(srv, mid, "delivered", timeout=10)
    at = [t for _, _, t in handoffs(srv, "channel_id = ?", b.device_id)]
    gaps = [y - x for x, y in itertools.pairwise(at)]
    assert len(gaps) == 3 and all(400 <= g <= 3000 for g in gaps), gaps  # never sooner than min_delay
    # A: at most 4 an hour.
    r = srv.api().put(f"/routing/channels/{a.device_id}/pacing", json={"per_hour": 4, "min_delay": 0, "max_delay": 0})
    assert r.status_code == 200, r.text
    ids = [send(srv, device_id=a.device_id, body=f"a{i}")["id"] for i in range(7)]
    wait_for(lambda: len(handoffs(srv, "channel_id = ?", a.device_id)) == 4, 10, message="4 hand-offs")
    time.sleep(1.5)
    assert len(handoffs(srv, "channel_id = ?", a.device_id)) == 4
    waiting = message(srv, ids[-1])
    first = handoffs(srv, "channel_id = ?", a.device_id)[0][2]
    assert waiting["status"] == "queued" and waiting["waiting"]["reason"] == "pacing", waiting
    until = datetime.fromisoformat(waiting["waiting"]["until"]).timestamp() * 1000
    assert abs(until - (first + 3_600_000)) < 5, (until, first)
    assert routing(srv)[a.device_id]["pacing"]["sent"]["last_hour"] == 4
    # The counters are the database's: a restart forgets nothing.
    srv.stop()
    srv.start()
    wait_usable(srv, 2)
    time.sleep(2)
    assert len(handoffs(srv, "channel_id = ?", a.device_id)) == 4
    clock.advance(3601)  # an hour later the window has room again
    for mid in ids[4:]:
        assert wait_status(srv, mid, "delivered", timeout=10)["device_id"] == a.device_id
    assert len(handoffs(srv, "channel_id = ?", a.device_id)) == 7


def test_default_pacing_is_safe_for_a_phone_and_a_modem(server_factory, sims, phones):
    modem = sims()
    srv = start(server_factory, [modem], pacing={})
    phones.add(srv, delay_ms=5)
    wait_usable(srv, 2)
    chans = routing(srv)
    phone = next(c for c in chans.values() if c["kind"] == "android")["pacing"]
    assert phone["per_hour"] <= 30 and phone["min_delay"] >= 1 and phone["per_day"] <= 200  # Android: 30/30 min
    assert chans["modem_m0"]["pacing"]["min_delay"] >= 1 and chans["modem_m0"]["pacing"]["per_day"] <= 200
    # Two messages to one modem: the second waits the modem's delay.
    ids = [send(srv, device_id="modem_m0", body=f"m{i}")["id"] for i in range(2)]
    for mid in ids:
        wait_status(srv, mid, "delivered", timeout=10)
    (_, _, t0), (_, _, t1) = handoffs(srv, "channel_id = 'modem_m0'")
    assert t1 - t0 >= 1000


# -- sending windows ------------------------------------------------------------------------------------
def test_sending_window_is_kept_in_the_account_time_zone(server_factory, phones, tmp_path):
    clock = Clock(tmp_path / "clock")
    # 17:00 UTC tomorrow: inside 08:00-21:00 in UTC, but 22:00 in Karachi (UTC+5, no DST).
    target = datetime.now(UTC).replace(hour=17, minute=0, second=0, microsecond=0) + timedelta(days=1)
    while target.weekday() >= 5:
        target += timedelta(days=1)  # Monday to Friday: the window opens again the next morning
    clock.set(int(target.timestamp() * 1000) - int(time.time() * 1000))
    srv = start(server_factory, clock=clock)
    phones.add(srv, delay_ms=5)
    wait_usable(srv, 1)
    api = srv.api()
    for bad, field in (({"timezone": "Mars/Olympus"}, "timezone"),
                       ({"sending_window": {"start": "25:00", "end": "21:00"}}, "sending_window.start"),
                       ({"sending_window": {"start": "08:00", "end": "21:00", "days": ["funday"]}},
                        "sending_window.days[0]")):
        r = api.put("/account/settings", json=bad)
        assert r.status_code == 400 and r.json()["error"]["field"] == field, r.text
    r = api.put("/account/settings", json={"timezone": "Asia/Karachi", "sending_window": {
        "start": "08:00", "end": "21:00", "days": ["mon", "tue", "wed", "thu", "fri", "sat"]}})
    assert r.status_code == 200, r.text
    s = r.json()["data"]
    assert s["sending_window_open"] is False and s["timezone"] == "Asia/Karachi"
    normal = send(srv, body="Your order has shipped")
    bulk = send(srv, body="Sale", priority="bulk")
    high = send(srv, body="Your table is ready", priority="high")
    assert wait_status(srv, high["id"], "delivered")["attempts"] == 1  # high ignores the window
    time.sleep(1.5)
    opens = (target + timedelta(hours=10)).strftime("%Y-%m-%dT%H:%M:%S.000Z")  # 08:00 Karachi
    for m in (normal, bulk):
        got = message(srv, m["id"])
        assert got["status"] == "queued" and got["waiting"]["reason"] == "sending_window", got
        assert got["waiting"]["until"] == opens and got["waiting"]["timezone"] == "Asia/Karachi"
    opens_ms = int((target + timedelta(hours=10)).timestamp() * 1000)
    clock.set(opens_ms - 30_000 - int(time.time() * 1000))  # 07:59:30 in Karachi: still closed
    time.sleep(1.0)
    assert message(srv, normal["id"])["status"] == "queued"
    clock.set(opens_ms + 1000 - int(time.time() * 1000))
    for m in (normal, bulk):
        wait_status(srv, m["id"], "delivered", timeout=10)
    assert "waiting" not in message(srv, normal["id"])


# -- send_at ---------------------------------------------------------------------------------------------
def test_send_at_fires_within_a_second_and_after_a_restart(server_factory, phones, tmp_path):
    clock = Clock(tmp_path / "clock")
    srv = start(server_factory, clock=clock)
    phones.add(srv, delay_ms=5)
    wait_usable(srv, 1)
    due = clock.now_ms() + 3000
    at = datetime.fromtimestamp(due / 1000, UTC).isoformat(timespec="milliseconds")
    m = send(srv, send_at=at)
    assert m["status"] == "scheduled"
    wait_status(srv, m["id"], "delivered", timeout=10)
    rows = {r["status"]: r["unix_timestamp"] for r in timeline(srv, m["id"])}
    # Queued by the scheduler within a second of send_at; the phone's pull adds its own time.
    assert 0 <= rows["queued"] - due < 1000 and rows["dispatched"] - due < 3000, (rows, due)
    # Scheduled an hour ahead, the server stopped, the hour passes: it fires on start-up.
    later = clock.now_ms() + 3_600_000
    m2 = send(srv, send_at=datetime.fromtimestamp(later / 1000, UTC).isoformat())
    srv.stop()
    clock.advance(3600 + 5)
    srv.start()
    got = wait_status(srv, m2["id"], "delivered", timeout=15)
    assert [r["status"] for r in timeline(srv, m2["id"])] == ["accepted", "scheduled", "queued", "dispatched",
                                                             "sent", "delivered"]
    assert got["attempts"] == 1


# -- cancel ----------------------------------------------------------------------------------------------
def test_cancel_at_each_state(server_factory, phones):
    srv = start(server_factory)
    dev = phones.add(srv, delay_ms=5)
    wait_usable(srv, 1)
    api = srv.api()
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    # scheduled
    m = send(srv, send_at=later)
    r = api.post(f"/sms/{m['id']}/cancel")
    assert r.status_code == 200 and r.json()["data"]["status"] == "cancelled"
    # queued: waits for a sending window that is closed now
    now = datetime.now(UTC)
    api.put("/account/settings", json={"timezone": "UTC", "sending_window": {
        "start": (now + timedelta(hours=2)).strftime("%H:00"), "end": (now + timedelta(hours=3)).strftime("%H:00")}})
    m = send(srv)
    time.sleep(0.5)
    assert message(srv, m["id"])["status"] == "queued"
    r = api.post(f"/sms/{m['id']}/cancel")
    assert r.status_code == 200 and r.json()["data"]["status"] == "cancelled"
    assert [t["status"] for t in timeline(srv, m["id"])] == ["accepted", "queued", "cancelled"]
    api.put("/account/settings", json={"sending_window": None})
    # on the phone, not sent yet: the phone is told (Cancelling) and confirms (Cancelled)
    dev.paused = True
    m = send(srv)
    wait_for(lambda: m["id"] in dev.messages, 5, message="the phone pulled it")
    r = api.post(f"/sms/{m['id']}/cancel")
    assert r.status_code == 202 and r.json()["data"]["cancel"] == "requested", r.text
    wait_status(srv, m["id"], "cancelled", timeout=10)
    assert dev.messages[m["id"]].state == "Cancelled"
    assert any(e.name == "MessageCancelled" for e in dev.events)
    assert [t["status"] for t in timeline(srv, m["id"])][-2:] == ["dispatched", "cancelled"]
    dev.paused = False
    # sent: too late
    m = send(srv)
    wait_status(srv, m["id"], "delivered")
    r = api.post(f"/sms/{m['id']}/cancel")
    assert r.status_code == 409 and r.json()["error"]["code"] == "CONFLICT"


# -- failover and parking ----------------------------------------------------------------------------------
def test_failover_from_a_failing_modem_to_a_phone_with_exactly_one_sent(server_factory, sims, phones):
    modem = sims()
    # The backoff is the test's window to re-enable the phone before the modem's retry: 2 s, so a
    # loaded machine does not see the retry land on the modem again.
    srv = start(server_factory, [modem], modem_extra={"send_retries": 1, "retry_backoff": 2.0},
                park_after_failures=0)
    dev = phones.add(srv, delay_ms=5)
    wait_usable(srv, 2)
    srv.api().patch(f"/devices/{dev.device_id}", json={"enabled": False})
    wait_for(lambda: not routing(srv)[dev.device_id]["usable"], 5, message="phone disabled")
    modem.fail_sends("+CMS ERROR: 512", count=5)  # the network refuses the modem: nothing goes out
    m = send(srv, body="fail over to the phone")
    wait_for(lambda: message(srv, m["id"])["status"] == "dispatched", 5, message="on the modem")
    assert message(srv, m["id"])["device_id"] == "modem_m0"
    srv.api().patch(f"/devices/{dev.device_id}", json={"enabled": True})
    got = wait_status(srv, m["id"], "delivered", timeout=30)
    assert got["device_id"] == dev.device_id and got["attempts"] == 2
    rows = timeline(srv, m["id"])
    assert [r["status"] for r in rows] == ["accepted", "queued", "dispatched", "queued", "dispatched", "sent",
                                          "delivered"]
    assert rows[3]["detail"] == {"failover_from": "modem_m0"}
    assert [r["status"] for r in rows].count("sent") == 1
    assert modem.sent == [] and dev.reported_states(m["id"], resends=False).count("Sent") <= 1
    # With nowhere else to go, a message is tried max_attempts (3) times, then fails for good.
    srv.api().patch(f"/devices/{dev.device_id}", json={"enabled": False})
    modem.fail_sends("+CMS ERROR: 512", count=20)
    m = send(srv, body="nowhere to go")
    got = wait_status(srv, m["id"], "failed", timeout=45)
    assert got["attempts"] == 3 and got["error_code"] == "MODEM_ERROR" and modem.sent == []
    assert [r["status"] for r in timeline(srv, m["id"])].count("dispatched") == 3


def test_a_phone_radio_off_fails_over_and_a_generic_failure_never(server_factory, phones):
    srv = start(server_factory)
    bad = phones.add(srv, delay_ms=5, fail_rate=1.0, fail_error=RADIO_OFF)
    good = phones.add(srv, delay_ms=5)
    srv.api().patch(f"/devices/{good.device_id}", json={"enabled": False})
    wait_usable(srv, 1)
    m = send(srv, body="one part")
    wait_for(lambda: "Failed" in bad.reported_states(m["id"]), 15, message="the phone failed it")
    wait_for(lambda: message(srv, m["id"])["status"] == "queued", 15, message="back in the queue")
    time.sleep(0.5)
    got = message(srv, m["id"])
    assert got["status"] == "queued" and got["attempts"] == 1, got  # never back to the same phone
    srv.api().patch(f"/devices/{good.device_id}", json={"enabled": True})
    got = wait_status(srv, m["id"], "delivered")
    assert got["device_id"] == good.device_id and got["attempts"] == 2
    assert timeline(srv, m["id"])[3]["detail"] == {"failover_from": bad.device_id}
    # A generic failure may have gone out: it fails for good, on its first attempt.
    srv.api().patch(f"/devices/{good.device_id}", json={"enabled": False})
    bad.fail_error = "Send result: RESULT_ERROR_GENERIC_FAILURE (Generic failure cause)"
    m = send(srv, body="maybe sent")
    got = wait_status(srv, m["id"], "failed")
    assert got["attempts"] == 1 and got["error_code"] == "DEVICE_SEND_FAILED"


def test_a_phone_that_never_takes_its_messages_loses_them_to_another(server_factory, phones):
    srv = start(server_factory, handoff_timeout=2)
    token = register_raw(srv, f"Code {new_code(srv)}").json()["token"]
    stuck = RawSSE(srv, token)  # connected (online), but it never pulls a message
    try:
        good = phones.add(srv, delay_ms=5)
        wait_usable(srv, 2)
        ids = [send(srv, body=f"m{i}")["id"] for i in range(4)]
        held = [mid for mid in ids if message(srv, mid)["device_id"] != good.device_id]
        assert held, "the round-robin gave the stuck phone nothing"
        for mid in ids:
            got = wait_status(srv, mid, "delivered", timeout=15)
            assert got["device_id"] == good.device_id and got["attempts"] == 1
        stuck_id = next(cid for cid, c in routing(srv).items() if cid != good.device_id)
        assert routing(srv)[stuck_id]["parked"] is True
        assert "took none" in routing(srv)[stuck_id]["parked_reason"]
    finally:
        stuck.close()


def test_a_failing_channel_is_parked_shown_and_recovers_by_itself(server_factory, sims):
    modem = sims()
    srv = start(server_factory, [modem], park_after_failures=3, park_backoff_seconds=1.5, max_attempts=10)
    # The network refuses four sends: three in a row park the modem; the fourth is either a
    # claim that was already under way or the first probe (parked again, for twice as long).
    modem.fail_sends("+CMS ERROR: 512", count=4)
    ids = [send(srv, body=f"m{i}")["id"] for i in range(3)]
    wait_for(lambda: routing(srv)["modem_m0"]["parked"], 10, message="modem parked")
    ready = srv.api().get("/ready")
    assert ready.status_code == 503
    check = next(c for c in ready.json()["data"]["checks"] if c["name"] == "channels_not_parked")
    assert check["ok"] is False and "m0" in check["reason"]
    row = next(c for c in srv.api().get("/queue").json()["data"]["channels"] if c["id"] == "modem_m0")
    assert row["parked"] is True and row["parked_until"]
    waiting = message(srv, ids[0])
    assert waiting["status"] == "queued"
    # After the back-off one message tries the modem again; it works, so the modem is back.
    for mid in ids:
        wait_status(srv, mid, "delivered", timeout=20)
    assert routing(srv)["modem_m0"]["parked"] is False
    assert srv.api().get("/ready").status_code == 200
    # Four failed hand-offs, then each message went out once.
    assert len(modem.sent) == 3 and sum(message(srv, mid)["attempts"] for mid in ids) == 7
