"""Every JSON shape of ANDROID-PROTOCOL.md §4, accepted or produced as written there, over real
HTTP with the app's exact example bodies; content types, status codes, no redirects; dates."""
from __future__ import annotations

import re

import pytest
import requests
from android_support import (
    UA,
    RawSSE,
    mobile_url,
    new_code,
    phone_server,
    register_raw,
    send,
    timeline,
)

from relaybox.channels.android.protocol import format_date, parse_date

APP_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}\+00:00$")
SIMS = [{"slotIndex": 0, "simNumber": 1, "phoneNumber": "********4567", "carrierName": "******bile",
         "iccid": "****************1234"}]


@pytest.fixture
def srv(server_factory):
    return phone_server(server_factory, android_private_token="doc-private-token")


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **UA}


def _json(r: requests.Response) -> object:
    assert r.headers["Content-Type"] == "application/json", r.headers
    return r.json()


def test_4_1_register_and_4_2_patch_and_4_3_get_device(srv):
    # §4.1 request exactly as the app writes it; 201 {id, token, login}.
    r = register_raw(srv, f"Code {new_code(srv)}", {"name": "samsung/a52sxqxx", "pushToken": None,
                                                     "simCards": SIMS})
    assert r.status_code == 201
    reg = _json(r)
    assert set(reg) == {"id", "token", "login"} and all(isinstance(v, str) and v for v in reg.values())
    # The app omits null fields (Gson): an absent pushToken and extra unknown fields are fine.
    r2 = register_raw(srv, "Bearer doc-private-token", {"name": "x/y", "simCards": SIMS, "futureField": 1})
    assert r2.status_code == 201
    # §4.2
    url = mobile_url(srv) + "/device"
    r = requests.patch(url, headers=_auth(reg["token"]), json={"id": reg["id"], "pushToken": "fcm-token-or-null",
                                                              "simCards": SIMS}, timeout=5)
    assert r.status_code == 204 and not r.content
    # §4.3 (token optional)
    anon = _json(requests.get(url, timeout=5))
    assert anon == {"externalIp": "127.0.0.1"}
    mine = _json(requests.get(url, headers=_auth(reg["token"]), timeout=5))
    assert mine["externalIp"] == "127.0.0.1"
    dev = mine["device"]
    assert dev["id"] == reg["id"] and dev["name"] == "samsung/a52sxqxx"
    assert all(APP_DATE.match(dev[k]) for k in ("createdAt", "updatedAt", "lastSeen"))
    assert dev["simCards"] == SIMS


def test_4_4_message_elements_as_the_app_reads_them(srv):
    reg = _json(register_raw(srv, f"Code {new_code(srv)}", {"name": "a/b", "pushToken": None, "simCards": SIMS}))
    srv.api().patch(f"/devices/{reg['id']}", json={"sim_numbers": {"1": "+923331112222"}})
    assert _json(requests.get(mobile_url(srv) + "/message", headers=_auth(reg["token"]), timeout=5)) == []
    otp = send(srv, body="Your code is 482913", priority="otp", ttl_seconds=300, **{"from": "+923331112222"})
    bulk = send(srv, body="Sale ends today", priority="bulk")
    items = _json(requests.get(mobile_url(srv) + "/message?order=fifo", headers=_auth(reg["token"]), timeout=5))
    assert [i["id"] for i in items] == [otp["id"], bulk["id"]]  # priority first
    first = items[0]
    assert list(first) == ["id", "textMessage", "message", "phoneNumbers", "simNumber", "withDeliveryReport",
                           "priority", "ttl", "validUntil", "state", "createdAt"]
    assert first["textMessage"] == {"text": "Your code is 482913"} and first["message"] == "Your code is 482913"
    assert first["phoneNumbers"] == ["+923001234567"] and first["simNumber"] == 1
    assert first["withDeliveryReport"] is True and first["priority"] == 100 and first["state"] == "Pending"
    assert APP_DATE.match(first["validUntil"]) and APP_DATE.match(first["createdAt"])
    assert 290 <= first["ttl"] <= 300
    assert items[1]["priority"] == -50 and "simNumber" not in items[1]
    lifo = _json(requests.get(mobile_url(srv) + "/message", headers=_auth(reg["token"]), timeout=5))
    assert [i["id"] for i in lifo] == [otp["id"], bulk["id"]]  # re-served (unreported), same order rules
    bad = requests.get(mobile_url(srv) + "/message?order=random", headers=_auth(reg["token"]), timeout=5)
    assert bad.status_code == 400 and "message" in _json(bad)


def test_4_5_state_updates_exactly_as_the_doc_example(srv):
    reg = _json(register_raw(srv, f"Code {new_code(srv)}"))
    m = send(srv, body="Your code is 482913")
    requests.get(mobile_url(srv) + "/message", headers=_auth(reg["token"]), timeout=5)
    doc = [{"id": m["id"], "state": "Delivered",
            "recipients": [{"phoneNumber": "+923001234567", "state": "Delivered", "error": None}],
            "states": {"Pending": "2099-11-22T10:15:02.114Z", "Processed": "2099-11-22T10:15:02.530Z",
                       "Sent": "2099-11-22T10:15:04.002Z", "Delivered": "2099-11-22T10:15:09.871Z"}}]
    r = requests.patch(mobile_url(srv) + "/message", headers=_auth(reg["token"]), json=doc, timeout=5)
    assert r.status_code == 204
    rows = timeline(srv, m["id"])
    assert [x["status"] for x in rows][-2:] == ["sent", "delivered"]
    # A phone clock in the future never puts the timeline ahead of the server.
    assert rows[-1]["unix_timestamp"] < parse_date("2099-01-01T00:00:00Z")
    # Unknown ids: 204. Not an array, or an element without id: 400 with {"message"}.
    r = requests.patch(mobile_url(srv) + "/message", headers=_auth(reg["token"]),
                       json=[{"id": "req_NOT_MINE", "state": "Sent", "recipients": [], "states": {}}], timeout=5)
    assert r.status_code == 204
    for body in ({"id": m["id"]}, [{"state": "Sent"}], [{"id": 5}]):
        r = requests.patch(mobile_url(srv) + "/message", headers=_auth(reg["token"]), json=body, timeout=5)
        assert r.status_code == 400 and isinstance(_json(r)["message"], str)


def test_4_6_webhooks_and_4_7_settings_and_4_8_user_calls(srv):
    reg = _json(register_raw(srv, f"Code {new_code(srv)}"))
    hooks = _json(requests.get(mobile_url(srv) + "/webhooks", headers=_auth(reg["token"]), timeout=5))
    assert [h["event"] for h in hooks] == ["sms:received", "system:ping"]
    for h in hooks:
        assert set(h) == {"id", "deviceId", "url", "event"} and h["deviceId"] is None
        assert h["url"] == f"{srv.url}/api/mobile/v1/inbound/{reg['id']}"
    settings = _json(requests.get(mobile_url(srv) + "/settings", headers=_auth(reg["token"]), timeout=5))
    assert settings["gateway"] == {"notification_channel": "SSE_ONLY"}
    assert settings["ping"] == {"interval_seconds": 60}
    key = settings["webhooks"]["signing_key"]
    assert isinstance(key, str) and len(key) >= 16 and settings["webhooks"]["retry_count"] == 15
    assert set(settings) <= {"encryption", "gateway", "messages", "ping", "logs", "webhooks"}
    other = _json(register_raw(srv, f"Code {new_code(srv)}"))
    other_settings = _json(requests.get(mobile_url(srv) + "/settings", headers=_auth(other["token"]), timeout=5))
    assert other_settings["webhooks"]["signing_key"] != key  # one key per phone
    for method, path in (("GET", "/user/code"), ("PATCH", "/user/password")):
        r = requests.request(method, mobile_url(srv) + path, headers=_auth(reg["token"]), json={}, timeout=5)
        assert r.status_code == 501 and "message" in _json(r)


def test_4_9_sse_bytes_on_the_wire(srv):
    reg = _json(register_raw(srv, f"Code {new_code(srv)}"))
    stream = RawSSE(srv, reg["token"])
    assert stream.body_text(0.3).startswith(":keepalive\n\nevent: WebhooksUpdated\ndata: null\n\n"
                                             "event: SettingsUpdated\ndata: null\n\n")
    stream.buf = b""
    send(srv)
    text = stream.body_text(0.5)
    assert "event: MessageEnqueued\ndata: null\n\n" in text
    stream.close()


def test_never_a_redirect_always_json_and_unknown_tokens_are_401(srv):
    for method, path in (("GET", "/message/"), ("GET", "/settings/"), ("POST", "/device/"), ("GET", "/nope")):
        r = requests.request(method, mobile_url(srv) + path, allow_redirects=False, timeout=5)
        assert r.status_code == 404 and r.headers["Content-Type"] == "application/json"
    for method, path in (("GET", "/message"), ("PATCH", "/message"), ("GET", "/settings"), ("GET", "/webhooks"),
                         ("GET", "/events"), ("PATCH", "/device")):
        r = requests.request(method, mobile_url(srv) + path, headers={"Authorization": "Bearer foreign-token"},
                             json={"id": "x"}, allow_redirects=False, timeout=5)
        assert r.status_code == 401 and _json(r)["message"]
    r = requests.post(mobile_url(srv) + "/device", data=b"<xml/>", headers={"Authorization": "Bearer doc-private-token",
                                                                          "Content-Type": "text/xml"}, timeout=5)
    assert r.status_code == 400 and _json(r)["message"]


@pytest.mark.parametrize("text,expected", [
    ("2026-11-22T10:15:02.114Z", "2026-11-22T10:15:02.114+00:00"),
    ("2026-11-22T10:30:00.000+05:00", "2026-11-22T05:30:00.000+00:00"),
    ("2026-11-22T10:30:00.000+0500", "2026-11-22T05:30:00.000+00:00"),
    ("2026-11-22T10:30:00.5-03:30", "2026-11-22T14:00:00.500+00:00"),
    ("2026-11-22T10:30:00.123456789Z", "2026-11-22T10:30:00.123+00:00"),
    ("2026-11-22T10:30:00-0-3:00", "2026-11-22T13:30:00.000+00:00"),  # Android < 7's malformed offset
    ("2026-11-22T10:30:00", "2026-11-22T10:30:00.000+00:00"),
])
def test_dates_are_read_leniently_and_written_in_the_apps_pattern(text, expected):
    assert format_date(parse_date(text)) == expected


@pytest.mark.parametrize("junk", [None, 5, "", "yesterday", "2026-13-40T00:00:00Z", "2026-11-22T10:30:00+99:00"])
def test_unreadable_dates_are_ignored(junk):
    assert parse_date(junk) is None


def test_guessing_codes_is_slowed_down(srv):
    code = new_code(srv)
    for i in range(20):
        assert register_raw(srv, f"Code {10000000 + i}").status_code == 401
    r = register_raw(srv, f"Code {code}")
    assert r.status_code == 429 and "wait" in _json(r)["message"]
