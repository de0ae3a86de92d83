"""Messages through simulated phones: SSE → pull → Sent → Delivered with a complete timeline,
each message sent exactly once across phones, a phone killed mid-run, presence events."""
from __future__ import annotations

import time

import requests
from android_support import (
    UA,
    RawSSE,
    device_view,
    events_of,
    message,
    mobile_url,
    new_code,
    phone_server,
    register_raw,
    send,
    timeline,
    wait_for,
)

from relaybox.channels.android.protocol import parse_date


def test_send_event_pull_sent_delivered_with_a_complete_timeline(server_factory, phones):
    srv = phone_server(server_factory)
    dev = phones.add(srv, delay_ms=30)
    before = len(dev.events)
    m = send(srv, body="Your order 1234 has shipped")
    assert m["status"] == "queued" and m["device_id"] == dev.device_id
    assert dev.wait_state(m["id"], "Delivered", 10), dev.errors
    assert [e.name for e in dev.events[before:]] == ["MessageEnqueued"]
    wait_for(lambda: message(srv, m["id"])["status"] == "delivered", 5, message="delivered")
    got = message(srv, m["id"])
    assert got["attempts"] == 1 and got["error_code"] is None and got["device_id"] == dev.device_id
    rows = timeline(srv, m["id"])
    assert [r["status"] for r in rows] == ["accepted", "queued", "dispatched", "sent", "delivered"]
    times = [r["unix_timestamp"] for r in rows]
    assert times == sorted(times)
    assert all(r["device_id"] == dev.device_id for r in rows[1:])
    # The phone's own timestamps are the timeline's.
    last = [r for r in dev.reports if r.message_id == m["id"] and r.state == "Delivered"][-1]
    assert rows[3]["unix_timestamp"] == parse_date(last.body["states"]["Sent"])
    assert rows[4]["unix_timestamp"] == parse_date(last.body["states"]["Delivered"])
    local = dev.messages[m["id"]]
    assert local.text == "Your order 1234 has shipped" and local.phone_numbers == ["+923001234567"]
    assert device_view(srv, dev.device_id)["sent_today"] == 1


def test_a_failed_send_ends_failed_with_the_phone_error(server_factory, phones):
    srv = phone_server(server_factory)
    dev = phones.add(srv, fail_rate=1.0)
    m = send(srv)
    assert dev.wait_state(m["id"], "Failed", 10)
    wait_for(lambda: message(srv, m["id"])["status"] == "failed", 5, message="failed")
    got = message(srv, m["id"])
    assert got["error_code"] == "DEVICE_SEND_FAILED"
    assert got["error_message"] == "Send result: RESULT_ERROR_GENERIC_FAILURE (Generic failure cause)"


def test_a_re_pull_returns_unreported_messages_and_is_not_a_second_hand_off(server_factory):
    srv = phone_server(server_factory)
    token = register_raw(srv, f"Code {new_code(srv)}").json()["token"]
    auth = {"Authorization": f"Bearer {token}", **UA}
    url = mobile_url(srv) + "/message"
    m = send(srv)
    first = requests.get(url, headers=auth, timeout=5).json()
    again = requests.get(url, params={"order": "fifo"}, headers=auth, timeout=5).json()
    assert [x["id"] for x in first] == [x["id"] for x in again] == [m["id"]]
    got = message(srv, m["id"])
    assert got["status"] == "dispatched" and got["attempts"] == 1
    assert [r["status"] for r in timeline(srv, m["id"])].count("dispatched") == 1
    # Once the phone reported a state the message is no longer served.
    r = requests.patch(url, headers=auth, json=[{"id": m["id"], "state": "Processed", "recipients": [
        {"phoneNumber": "+923001234567", "state": "Processed"}], "states": {}}], timeout=5)
    assert r.status_code == 204
    assert requests.get(url, headers=auth, timeout=5).json() == []
    r = requests.patch(url, headers=auth, json=[{"id": m["id"], "state": "Sent", "recipients": [
        {"phoneNumber": "+923001234567", "state": "Sent"}], "states": {"Sent": "2020-01-01T00:00:00.000Z"}}],
                       timeout=5)
    assert r.status_code == 204
    got = message(srv, m["id"])
    assert got["status"] == "sent" and got["attempts"] == 1
    # A phone clock far in the past is kept between the hand-off and now.
    rows = timeline(srv, m["id"])
    assert rows[-1]["unix_timestamp"] >= rows[-2]["unix_timestamp"]
    # Someone else's token cannot report on it; an unknown id is ignored with 204.
    other = register_raw(srv, f"Code {new_code(srv)}").json()["token"]
    r = requests.patch(url, headers={"Authorization": f"Bearer {other}"},
                       json=[{"id": m["id"], "state": "Failed", "recipients": []},
                             {"id": "req_UNKNOWN", "state": "Sent"}], timeout=5)
    assert r.status_code == 204 and message(srv, m["id"])["status"] == "sent"


def test_three_phones_300_messages_each_sent_exactly_once(server_factory, phones):
    srv = phone_server(server_factory)
    devs = [phones.add(srv, delay_ms=5) for _ in range(3)]
    r = srv.api().post("/sms/batch", json={"messages": [
        {"to": f"+92300{1000000 + i}", "body": f"message {i}"} for i in range(300)]})
    assert r.status_code == 202, r.text
    batch = r.json()["data"]
    ids = {x["id"] for x in batch["results"]}
    assert len(ids) == 300

    def done() -> bool:
        b = srv.api().get(f"/sms/batch/{batch['batch_id']}").json()["data"]
        return b["status"] == "completed"

    wait_for(done, 60, interval=0.2, message="batch completed")
    b = srv.api().get(f"/sms/batch/{batch['batch_id']}").json()["data"]
    assert b["completed"] == 300 and b["failed"] == 0
    held = [set(d.messages) for d in devs]
    assert set().union(*held) == ids
    assert sum(len(h) for h in held) == 300  # no message on two phones
    assert all(len(h) > 0 for h in held)  # the router spread them
    for d in devs:
        for mid in d.messages:
            assert d.reported_states(mid, resends=False).count("Sent") <= 1
    page = srv.api().get("/messages", params={"limit": 100}).json()["data"]
    assert all(x["attempts"] == 1 and x["status"] == "delivered" for x in page["messages"])


def test_killed_phone_unpulled_messages_rerouted_pulled_ones_never_resent(server_factory, phones):
    srv = phone_server(server_factory)
    a = phones.add(srv)
    b, c = phones.add(srv, delay_ms=5), phones.add(srv, delay_ms=5)
    a.paused = True  # A pulls but sends nothing: its messages are handed over, unreported
    first = [send(srv, to=f"+92300{2000000 + i}", ttl_seconds=10)["id"] for i in range(12)]
    wait_for(lambda: device_view(srv, a.device_id)["queue_depth"] == 0 and a.messages, 5, message="A pulled")
    pulled_by_a = set(a.messages)
    assert pulled_by_a and device_view(srv, a.device_id)["in_flight"] == len(pulled_by_a)

    a.kill()  # connection reset; still "seen" 5 s ago, so it stays online a moment
    second = [send(srv, to=f"+92300{3000000 + i}")["id"] for i in range(12)]
    routed_to_a = [mid for mid in second if timeline(srv, mid)[1]["device_id"] == a.device_id]
    assert routed_to_a, "no message was routed to the dying phone"

    # A goes offline: what it never pulled is routed again and delivered by B or C.
    for mid in second + [x for x in first if x not in pulled_by_a]:
        wait_for(lambda mid=mid: message(srv, mid)["status"] == "delivered", 20, message=f"{mid} delivered")
    for mid in routed_to_a:
        got = message(srv, mid)
        assert got["device_id"] in (b.device_id, c.device_id) and got["attempts"] == 1
    # What A pulled is never handed to anyone else: dispatched until the TTL, then DEVICE_TIMEOUT.
    assert not pulled_by_a & (set(b.messages) | set(c.messages))
    for mid in pulled_by_a:
        wait_for(lambda mid=mid: message(srv, mid)["status"] == "failed", 20, message=f"{mid} timed out")
        got = message(srv, mid)
        assert got["error_code"] == "DEVICE_TIMEOUT" and got["attempts"] == 1 and got["device_id"] == a.device_id
    assert not pulled_by_a & (set(b.messages) | set(c.messages))
    offline = [e for e in events_of(srv, "device.offline") if e["device_id"] == a.device_id]
    assert len(offline) == 1 and offline[0]["online"] is False
    assert device_view(srv, a.device_id)["online"] is False


def test_presence_events_and_routing_follow_the_phone(server_factory, phones):
    srv = phone_server(server_factory)
    dev = phones.add(srv)
    online = wait_for(lambda: [e for e in events_of(srv, "device.online") if e["device_id"] == dev.device_id],
                      5, message="device.online")
    assert set(online[0]) >= {"event", "device_id", "device_name", "online", "last_seen", "timestamp",
                              "unix_timestamp"}
    assert online[0]["event"] == "device.online" and online[0]["online"] is True
    dev.stop()
    started = time.monotonic()
    wait_for(lambda: events_of(srv, "device.offline"), 10, message="device.offline")
    assert time.monotonic() - started < 8  # device_offline_after=5 plus a sweep
    # Offline: a message waits unassigned, then goes out when the phone is back.
    m = send(srv)
    assert m["device_id"] is None
    dev.start()
    assert dev.wait_state(m["id"], "Delivered", 10)
    assert len(events_of(srv, "device.online")) == 2
    # Disabled: no new work is routed to it; enabled again, the waiting message goes out.
    srv.api().patch(f"/devices/{dev.device_id}", json={"enabled": False})
    m2 = send(srv)
    time.sleep(1.5)
    assert message(srv, m2["id"])["status"] == "queued" and m2["id"] not in dev.messages
    srv.api().patch(f"/devices/{dev.device_id}", json={"enabled": True})
    assert dev.wait_state(m2["id"], "Delivered", 10)


def test_event_stream_wire_format_first_sync_keepalive_and_immediate_flush(server_factory):
    srv = phone_server(server_factory)
    token = register_raw(srv, f"Code {new_code(srv)}").json()["token"]
    unauth = requests.get(mobile_url(srv) + "/events", timeout=5)
    assert unauth.status_code == 401 and unauth.headers["Content-Type"] == "application/json"
    s1 = RawSSE(srv, token)
    assert s1.status == 200
    assert s1.header("Content-Type") == "text/event-stream" and s1.header("Cache-Control") == "no-cache"
    text = s1.body_text(0.5)
    assert "event: WebhooksUpdated\ndata: null\n\nevent: SettingsUpdated\ndata: null\n\n" in text
    before = text.count(":keepalive\n\n")
    assert s1.body_text(1.6).count(":keepalive\n\n") > before  # every sse_keepalive_seconds (1 s here)
    s1.buf = b""
    t0 = time.monotonic()
    send(srv)
    wait_for(lambda: "event: MessageEnqueued\ndata: null\n\n" in s1.body_text(0.02), 2, interval=0,
             message="MessageEnqueued")
    assert time.monotonic() - t0 < 0.5
    # The phone reconnects: the new stream replaces the old one; no second first-time sync.
    s2 = RawSSE(srv, token)
    assert s1.closed_within(3)
    assert "WebhooksUpdated" not in s2.body_text(0.5)
    s2.close()


def test_cancel_reaches_the_phone_and_a_sent_message_cannot_be_cancelled(server_factory, phones):
    srv = phone_server(server_factory)
    dev = phones.add(srv)
    dev.paused = True  # the phone holds what it pulls (locally Pending)
    m = send(srv)
    wait_for(lambda: m["id"] in dev.messages, 5, message="pulled")
    r = srv.api().post(f"/sms/{m['id']}/cancel")
    assert r.status_code == 202 and r.json()["data"]["cancel"] == "requested"
    wait_for(lambda: message(srv, m["id"])["status"] == "cancelled", 5, message="cancelled")
    assert any(e.name == "MessageCancelled" and m["id"] in e.data for e in dev.events)
    assert dev.messages[m["id"]].state == "Cancelled"
    assert [x["status"] for x in timeline(srv, m["id"])][-2:] == ["dispatched", "cancelled"]
    dev.paused = False
    done = send(srv)
    assert dev.wait_state(done["id"], "Delivered", 10)
    wait_for(lambda: message(srv, done["id"])["status"] == "delivered", 5, message="delivered")
    r = srv.api().post(f"/sms/{done['id']}/cancel")
    assert r.status_code == 409 and r.json()["error"]["code"] == "CONFLICT"


def test_a_pulled_message_being_cancelled_is_served_as_cancelling(server_factory):
    srv = phone_server(server_factory)
    token = register_raw(srv, f"Code {new_code(srv)}").json()["token"]
    auth = {"Authorization": f"Bearer {token}", **UA}
    url = mobile_url(srv) + "/message"
    m = send(srv)
    assert [x["state"] for x in requests.get(url, headers=auth, timeout=5).json()] == ["Pending"]
    assert srv.api().post(f"/sms/{m['id']}/cancel").status_code == 202
    again = requests.get(url, headers=auth, timeout=5).json()
    assert [(x["id"], x["state"]) for x in again] == [(m["id"], "Cancelling")]
    r = requests.patch(url, headers=auth, json=[{"id": m["id"], "state": "Cancelled", "recipients": [
        {"phoneNumber": "+923001234567", "state": "Cancelled"}], "states": {}}], timeout=5)
    assert r.status_code == 204
    assert message(srv, m["id"])["status"] == "cancelled"
    assert requests.get(url, headers=auth, timeout=5).json() == []
