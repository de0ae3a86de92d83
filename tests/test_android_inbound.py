"""Inbound SMS and pings posted by the phone to relaybox's own webhook URL: signature, replay
window, de-duplication, storage as inbound messages, the message.inbound event, device health."""
from __future__ import annotations

import hashlib
import hmac
import json
import time

import requests
from android_support import device_view, events_of, phone_server, wait_for


def _post(url: str, body: bytes, key: str, ts: int | None = None, sig: str | None = None) -> requests.Response:
    stamp = str(int(time.time()) if ts is None else ts)
    signature = sig if sig is not None else hmac.new(key.encode(), body + stamp.encode(), hashlib.sha256).hexdigest()
    return requests.post(url, data=body, headers={"Content-Type": "application/json", "X-Timestamp": stamp,
                                                  "X-Signature": signature}, timeout=5)


def test_inbound_sms_with_a_good_signature_is_stored_once(server_factory, phones):
    srv = phone_server(server_factory)
    dev = phones.add(srv)
    srv.api().patch(f"/devices/{dev.device_id}", json={"sim_numbers": {"1": "+923331112222"}})
    [first] = dev.post_inbound_sms("+923001234567", "STOP <unsubscribe> & thanks")
    assert first.ok and first.status == 200
    listed = srv.api().get("/messages", params={"direction": "inbound"}).json()["data"]
    assert listed["total"] == 1
    m = listed["messages"][0]
    assert m["direction"] == "inbound" and m["status"] == "received"
    assert m["from"] == "+923001234567" and m["to"] == "+923331112222"  # the admin-set SIM 1 number
    assert m["body"] == "STOP <unsubscribe> & thanks" and m["device_id"] == dev.device_id
    assert srv.api().get("/messages", params={"direction": "inbound", "status": "received"}).json()["data"]["total"] == 1
    log = srv.api().get(f"/messages/{m['id']}/log").json()["data"]["timeline"]
    assert [r["status"] for r in log] == ["received"]

    [ev] = events_of(srv, "message.inbound")
    assert set(ev) >= {"event", "message_id", "from", "to", "body", "timestamp", "unix_timestamp", "media_urls"}
    assert ev["event"] == "message.inbound" and ev["message_id"] == m["id"] and ev["media_urls"] == []
    assert ev["from"] == "+923001234567" and ev["to"] == "+923331112222"
    assert ev["body"] == "STOP <unsubscribe> & thanks" and ev["timestamp"].endswith("Z")

    # The app retries a post it thinks failed: the same event id is stored once.
    again = requests.post(first.url, data=first.body, timeout=5, headers={
        "Content-Type": "application/json", "X-Timestamp": first.timestamp, "X-Signature": first.signature})
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    assert srv.api().get("/messages", params={"direction": "inbound"}).json()["data"]["total"] == 1
    assert len(events_of(srv, "message.inbound")) == 1


def test_inbound_with_a_bad_or_stale_signature_is_refused(server_factory, phones):
    srv = phone_server(server_factory)
    dev = phones.add(srv)
    url = dev.webhooks[0]["url"]
    key = dev.signing_key
    body = json.dumps({"id": "evt-1", "webhookId": "relaybox-sms-received", "event": "sms:received",
                       "deviceId": dev.device_id, "payload": {"messageId": "m1", "sender": "+923001234567",
                                                              "message": "hi", "simNumber": 1,
                                                              "receivedAt": "2026-11-22T10:30:00.000+05:00"}}).encode()
    assert _post(url, body, "wrong-key").status_code == 401
    assert _post(url, body, key, sig="").status_code == 401
    assert _post(url, body + b" ", key, sig=_sig(body, key)).status_code == 401  # body changed after signing
    # 330 s, not 301: the stamp is truncated to whole seconds and the server reads its clock later,
    # so "now + 301" can land inside the 300 s window (CI saw exactly that).
    stale = _post(url, body, key, ts=int(time.time()) - 330)
    assert stale.status_code == 401 and "5 minutes" in stale.json()["message"]
    assert _post(url, body, key, ts=int(time.time()) + 330).status_code == 401
    assert srv.api().get("/messages", params={"direction": "inbound"}).json()["data"]["total"] == 0
    # Within the window and signed with the phone's key: taken.
    ok = _post(url, body, key, ts=int(time.time()) - 200)
    assert ok.status_code == 200 and ok.json()["status"] == "stored"
    # Another phone's key does not sign for this one; an unknown device is 404.
    other = phones.add(srv)
    assert _post(url, body.replace(b"evt-1", b"evt-2"), other.signing_key).status_code == 401
    assert _post(url.rsplit("/", 1)[0] + "/dev_01HNOPE", body, key).status_code == 404
    # A malformed (but signed) event is a 400, and is not remembered as seen.
    assert _post(url, b'{"event": "sms:received"}', key).status_code == 400


def _sig(body: bytes, key: str) -> str:
    return hmac.new(key.encode(), body + str(int(time.time())).encode(), hashlib.sha256).hexdigest()


def test_system_ping_updates_battery_charging_and_connectivity(server_factory, phones):
    srv = phone_server(server_factory)
    dev = phones.add(srv, battery_level=23, charging=None, transports=("wifi",), internet=True)
    [d] = dev.post_ping()
    assert d.ok
    view = device_view(srv, dev.device_id)
    assert view["battery"] == 23 and view["charging"] is False
    assert view["connectivity"] == {"internet": True, "transports": ["wifi"], "cellular": "none"}
    assert view["health"] == "warn" and view["last_ping_at"]
    dev.battery_level, dev.charging, dev.transports = 91, "ac", ("cellular",)
    dev.post_ping()
    view = wait_for(lambda: (v := device_view(srv, dev.device_id))["battery"] == 91 and v, 5, message="ping")
    assert view["charging"] is True and view["connectivity"]["transports"] == ["cellular"]
    assert view["connectivity"]["cellular"] == "4g"
    assert srv.api().get("/messages", params={"direction": "inbound"}).json()["data"]["total"] == 0
