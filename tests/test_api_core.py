"""End-to-end tests of the core messaging API against a real `relaybox serve` on loopback."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone

import pytest
import requests

from conftest import wait_for

PK = "+923001234567"  # a valid Pakistani mobile number


def pk(i: int) -> str:
    """Distinct valid numbers that avoid the sandbox's magic endings 0001-0003."""
    return f"+92301{1000 + i:07d}"


def status_of(api, mid: str) -> str:
    return api.get(f"/sms/{mid}").json()["data"]["status"]


def count_messages(api) -> int:
    return api.get("/messages").json()["data"]["total"]


def assert_envelope_error(r: requests.Response, status: int, code: str, field: str | None = None) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    body = r.json()
    assert body["ok"] is False
    assert body["error"]["code"] == code, body
    assert body["timestamp"].endswith("Z") and isinstance(body["unix_timestamp"], int)
    if field is not None:
        assert body["error"]["field"] == field, body
    return body


def test_send_is_queued_then_delivered_by_the_sandbox_with_a_complete_timeline(sandbox):
    api = sandbox.api()
    r = api.post("/sms/send", json={"to": PK, "body": "Hello from relaybox!", "metadata": {"order_id": "12345"},
                                    "client_reference_id": "order-12345"})
    assert r.status_code == 202, r.text
    d = r.json()["data"]
    assert d["id"].startswith("req_") and d["request_id"] == d["id"]
    assert d["client_reference_id"] == "order-12345"
    assert d["status"] == "queued" and d["queued_at"].endswith("Z")
    assert d["segments"] == 1 and d["encoding"] == "GSM-7"
    wait_for(lambda: status_of(api, d["id"]) == "delivered", message="delivered")
    m = api.get("/sms/order-12345").json()["data"]  # by client_reference_id
    assert m["id"] == d["id"] and m["attempts"] == 1 and m["device_name"] == "Sandbox"
    assert m["metadata"] == {"order_id": "12345"} and m["delivered_at"]
    log = api.get(f"/messages/{d['id']}/log").json()["data"]
    statuses = [t["status"] for t in log["timeline"]]
    assert statuses == ["accepted", "queued", "dispatched", "sent", "delivered"]
    stamps = [t["unix_timestamp"] for t in log["timeline"]]
    assert stamps == sorted(stamps)
    assert all(len(t["timestamp"]) == len("2026-01-27T07:00:02.123Z") for t in log["timeline"])


def test_sandbox_magic_numbers_end_in_their_documented_states(sandbox):
    api = sandbox.api()
    ids = {}
    for suffix, _ in (("0001", "failed"), ("0002", "undelivered"), ("0003", "sent"), ("0004", "delivered")):
        r = api.post("/sms/send", json={"to": f"+92300123{suffix}", "body": "t"})
        assert r.status_code == 202, r.text
        ids[suffix] = r.json()["data"]["id"]
    wait_for(lambda: status_of(api, ids["0001"]) == "failed")
    wait_for(lambda: status_of(api, ids["0002"]) == "undelivered")
    wait_for(lambda: status_of(api, ids["0004"]) == "delivered")
    assert status_of(api, ids["0003"]) == "sent"
    failed = api.get(f"/sms/{ids['0001']}").json()["data"]
    assert failed["error_code"] == "SANDBOX_FAILURE" and failed["error_message"]


@pytest.mark.parametrize("body,encoding,segments", [
    ("a" * 160, "GSM-7", 1),
    ("a" * 161, "GSM-7", 2),
    ("€" * 80, "GSM-7", 1),        # extension table: 2 septets each
    ("€" * 81, "GSM-7", 2),
    ("আমার সোনার বাংলা", "UCS-2", 1),
    ("ا" * 71, "UCS-2", 2),
    ("😀" * 35, "UCS-2", 1),       # surrogate pairs count as two units
    ("😀" * 36, "UCS-2", 2),
])
def test_segments_and_encoding_are_reported(sandbox, body, encoding, segments):
    r = sandbox.api().post("/sms/send", json={"to": PK, "body": body})
    assert r.status_code == 202, r.text
    assert (r.json()["data"]["encoding"], r.json()["data"]["segments"]) == (encoding, segments)


def test_batch_accepts_valid_items_and_rejects_invalid_ones_individually(sandbox):
    api = sandbox.api()
    r = api.post("/sms/batch", json={"messages": [
        {"to": pk(1), "body": "Hello Alice!", "metadata": {"n": 1}},
        {"to": "+1234567890", "body": "bad number"},
        {"to": pk(2), "body": ""},
        {"to": pk(3), "body": "Hello Charlie!", "status_callback": "http://127.0.0.1:9/x"},
        {"to": pk(4), "body": "x", "bogus": True},
    ]})
    assert r.status_code == 202, r.text
    d = r.json()["data"]
    assert (d["accepted"], d["rejected"], d["total"]) == (2, 3, 5)
    assert d["batch_id"].startswith("batch_")
    by_index = {x["index"]: x for x in d["results"]}
    assert by_index[0]["status"] == "queued" and by_index[0]["client_reference_id"]
    assert by_index[1]["error"]["field"] == "messages[1].to"
    assert by_index[2]["error"]["field"] == "messages[2].body"
    assert by_index[4]["error"]["field"] == "messages[4].bogus"
    wait_for(lambda: api.get(f"/sms/batch/{d['batch_id']}").json()["data"]["status"] == "completed")
    b = api.get(f"/sms/batch/{d['batch_id']}").json()["data"]
    assert b["job_id"] == d["batch_id"] and (b["total"], b["processed"], b["completed"], b["failed"]) == (2, 2, 2, 0)
    page = api.get(f"/sms/batch/{d['batch_id']}/messages", params={"limit": 1}).json()["data"]
    assert page["total"] == 2 and page["has_more"] is True and page["items"][0]["index"] == 0
    page2 = api.get(f"/sms/batch/{d['batch_id']}/messages", params={"limit": 1, "page": 2}).json()["data"]
    assert page2["items"][0]["index"] == 3 and page2["has_more"] is False


def test_list_send_removes_duplicates_and_reports_invalid_numbers(sandbox):
    api = sandbox.api()
    numbers = [pk(1), pk(2), pk(1), "+92 301 0001001", "not-a-number", 42, pk(3)]
    r = api.post("/sms/list", json={"numbers": numbers, "body": "Shop closes at 6 today"})
    assert r.status_code == 202, r.text
    d = r.json()["data"]
    assert d["accepted"] == 3 and d["duplicates_removed"] == 2 and d["total"] == 7
    assert [x["index"] for x in d["rejected"]] == [4, 5]
    items = api.get(f"/sms/batch/{d['batch_id']}/messages").json()["data"]["items"]
    assert sorted(i["to"] for i in items) == sorted([pk(1), pk(2), pk(3)])


def test_idempotent_replay_returns_the_first_answer_and_sends_once(sandbox):
    api = sandbox.api()
    body = {"to": PK, "body": "pay 100"}
    h = {"Idempotency-Key": "order-77"}
    r1 = api.post("/sms/send", json=body, headers=h)
    r2 = api.post("/sms/send", json=body, headers=h)
    assert r1.status_code == r2.status_code == 202
    assert r1.json()["data"]["id"] == r2.json()["data"]["id"]
    assert r2.headers.get("Idempotent-Replayed") == "true"
    assert count_messages(api) == 1
    r3 = api.post("/sms/send", json={**body, "body": "pay 200"}, headers=h)
    assert_envelope_error(r3, 422, "IDEMPOTENCY_CONFLICT")
    assert_envelope_error(api.post("/sms/send", json=body, headers={"Idempotency-Key": "k" * 256}),
                          400, "INVALID_REQUEST", "Idempotency-Key")


def test_idempotency_key_reused_while_the_first_request_runs_is_409(sandbox):
    big = {"messages": [{"to": pk(i), "body": f"m{i}"} for i in range(1000)]}
    h = {"Idempotency-Key": "big-batch"}
    outcomes: list[set[str]] = []
    for _ in range(5):  # a race: retry until the second request lands while the first runs
        results: list[requests.Response] = []
        start = threading.Barrier(2)

        def post() -> None:
            start.wait()
            results.append(sandbox.api().post("/sms/batch", json=big, headers=h))

        threads = [threading.Thread(target=post) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        kinds = set()
        for r in results:
            if r.status_code == 409:
                assert r.json()["error"]["code"] == "IDEMPOTENCY_CONFLICT"
                kinds.add("conflict")
            else:
                assert r.status_code == 202, r.text
                kinds.add("replay" if r.headers.get("Idempotent-Replayed") else "first")
        outcomes.append(kinds)
        if kinds == {"first", "conflict"}:
            break
    assert {"first", "conflict"} in outcomes, outcomes
    assert count_messages(sandbox.api()) == 1000


def test_auth_failures(sandbox):
    body = {"to": PK, "body": "x"}
    assert_envelope_error(sandbox.api(key=None).post("/sms/send", json=body), 401, "UNAUTHORIZED")
    assert_envelope_error(sandbox.api(key="rbx_wrong").post("/sms/send", json=body), 401, "UNAUTHORIZED")
    bearer = sandbox.api(key=None)
    bearer.headers["Authorization"] = f"Bearer {sandbox.key}"
    assert bearer.post("/sms/send", json=body).status_code == 202
    sandbox.sql("UPDATE account SET api_enabled = ?", (False,))
    assert_envelope_error(sandbox.api().post("/sms/send", json=body), 403, "FORBIDDEN")
    ready = sandbox.api().get("/ready")
    assert ready.status_code == 503 and ready.json()["data"]["ready"] is False


def test_health_needs_no_auth_and_ready_lists_checks(sandbox):
    h = requests.get(sandbox.api_base + "/health", timeout=5)
    assert h.status_code == 200 and h.json()["data"]["database"] == "ok"
    r = sandbox.api().get("/ready")
    assert r.status_code == 200
    checks = {c["name"]: c for c in r.json()["data"]["checks"]}
    assert checks["channel_online"]["ok"] and checks["api_enabled"]["ok"]
    assert_envelope_error(sandbox.api(key=None).get("/ready"), 401, "UNAUTHORIZED")


def test_ready_fails_without_any_channel(server_factory):
    srv = server_factory()  # sandbox off, nothing paired
    r = srv.api().get("/ready")
    assert r.status_code == 503
    checks = {c["name"]: c for c in r.json()["data"]["checks"]}
    assert checks["channel_online"]["ok"] is False and checks["channel_online"]["reason"]


def test_every_reachable_core_error_code(sandbox):
    api = sandbox.api()
    assert_envelope_error(api.get("/sms/req_01NOPE"), 404, "NOT_FOUND")
    assert_envelope_error(api.get("/nope"), 404, "NOT_FOUND")
    assert_envelope_error(api.delete("/sms/send"), 405, "METHOD_NOT_ALLOWED")
    assert "POST" in api.delete("/sms/send").headers["Allow"]
    assert_envelope_error(api.post("/sms/send", json={"to": PK, "body": "x", "from": "+15005550007"}),
                          409, "INVALID_DEVICE", "from")
    assert_envelope_error(api.post("/sms/send", json={"to": PK, "body": "x", "device_id": "dev_nope"}),
                          409, "INVALID_DEVICE", "device_id")
    # `from` that the sandbox owns is accepted
    assert api.post("/sms/send", json={"to": PK, "body": "x", "from": "+15005550006"}).status_code == 202
    (sandbox.data_dir / "paused").write_text("")
    assert_envelope_error(api.post("/sms/send", json={"to": PK, "body": "x"}), 503, "QUEUE_BLOCKED")
    (sandbox.data_dir / "paused").unlink()
    assert api.post("/sms/send", json={"to": PK, "body": "x"}).status_code == 202


@pytest.mark.parametrize("payload,field", [
    ({"to": "+1234567890", "body": "x"}, "to"),
    ({"to": "923001234567", "body": "x"}, "to"),
    ({"to": PK}, "body"),
    ({"to": PK, "body": ""}, "body"),
    ({"to": PK, "body": "x" * 1601}, "body"),
    ({"to": PK, "body": 123}, "body"),
    ({"to": PK, "body": "x", "unknown": 1}, "unknown"),
    ({"to": PK, "body": "x", "metadata": "string"}, "metadata"),
    ({"to": PK, "body": "x", "metadata": {"k": "v" * 5000}}, "metadata"),
    ({"to": PK, "body": "x", "status_callback": "ftp://x"}, "status_callback"),
    ({"to": PK, "body": "x", "ttl_seconds": "60"}, "ttl_seconds"),
    ({"to": PK, "body": "x", "send_at": "tomorrow"}, "send_at"),
    ({"to": PK, "body": "x", "send_at": "2026-01-01T10:00:00"}, "send_at"),
    ({"to": PK, "body": "x", "priority": "urgent"}, "priority"),
    ({"to": PK, "body": "\ud800"}, "body"),
    ([1, 2], "body"),
])
def test_bad_send_input_is_invalid_request_naming_the_field_and_writes_nothing(sandbox, payload, field):
    api = sandbox.api()
    assert_envelope_error(api.post("/sms/send", json=payload), 400, "INVALID_REQUEST", field)
    assert count_messages(api) == 0


def test_malformed_bodies_are_invalid_request(sandbox):
    api = sandbox.api()
    url = "/sms/send"
    assert_envelope_error(api.post(url, data=b'{"to": "+92', headers={"Content-Type": "application/json"}),
                          400, "INVALID_REQUEST", "body")
    assert_envelope_error(api.post(url, data=b"to=1", headers={"Content-Type": "application/x-www-form-urlencoded"}),
                          400, "INVALID_REQUEST", "body")
    assert_envelope_error(api.post(url, files={"f": ("a.txt", b"x")}), 400, "INVALID_REQUEST", "body")
    huge = json.dumps({"to": PK, "body": "x", "metadata": {"k": "v" * (1024 * 1024)}})
    assert_envelope_error(api.post(url, data=huge, headers={"Content-Type": "application/json"}),
                          400, "INVALID_REQUEST", "body")
    assert_envelope_error(api.post(url), 400, "INVALID_REQUEST", "body")
    assert_envelope_error(api.post("/sms/batch", json={"messages": []}), 400, "INVALID_REQUEST", "messages")
    assert_envelope_error(api.post("/sms/batch", json={"messages": [{"to": PK, "body": "x"}] * 1001}),
                          400, "INVALID_REQUEST", "messages")
    assert_envelope_error(api.post("/sms/batch", json={"messages": [{"to": "+1", "body": "x"}]}),
                          400, "INVALID_REQUEST", "messages")
    assert_envelope_error(api.post("/sms/list", json={"numbers": [PK] * 10_001, "body": "x"}),
                          400, "INVALID_REQUEST", "numbers")
    assert_envelope_error(api.post("/sms/list", json={"numbers": [], "body": "x"}), 400, "INVALID_REQUEST", "numbers")
    for bad in ({"limit": 0}, {"limit": 101}, {"page": 0}, {"page": "x"}, {"status": "nope"}, {"direction": "up"}):
        name = next(iter(bad))
        assert_envelope_error(api.get("/messages", params=bad), 400, "INVALID_REQUEST", name)
    assert count_messages(api) == 0


def test_paging_and_filters(sandbox):
    api = sandbox.api()
    for i in range(5):
        assert api.post("/sms/send", json={"to": pk(i), "body": f"m{i}"}).status_code == 202
    p1 = api.get("/messages", params={"limit": 2}).json()["data"]
    assert (p1["page"], p1["limit"], p1["total"], p1["has_more"]) == (1, 2, 5, True)
    p3 = api.get("/messages", params={"limit": 2, "page": 3}).json()["data"]
    assert len(p3["messages"]) == 1 and p3["has_more"] is False
    assert p1["messages"][0]["body"] == "m4"  # newest first
    wait_for(lambda: api.get("/messages", params={"status": "delivered"}).json()["data"]["total"] == 5)
    assert api.get("/messages", params={"direction": "inbound"}).json()["data"]["total"] == 0


def test_ttl_expiry_moves_a_waiting_message_to_expired(server_factory):
    srv = server_factory(sweep_interval=0.2)  # no channel: the message waits
    api = srv.api()
    mid = api.post("/sms/send", json={"to": PK, "body": "late", "ttl_seconds": 10}).json()["data"]["id"]
    assert status_of(api, mid) == "queued"
    srv.sql("UPDATE message SET expires_at = expires_at - 20000 WHERE id = ?", (mid,))  # age it, no sleep
    wait_for(lambda: status_of(api, mid) == "expired")
    log = api.get(f"/messages/{mid}/log").json()["data"]["timeline"]
    assert [t["status"] for t in log] == ["accepted", "queued", "expired"]


def test_scheduled_message_waits_until_send_at(sandbox):
    api = sandbox.api()
    at = (datetime.now(timezone.utc) + timedelta(seconds=4)).isoformat()
    r = api.post("/sms/send", json={"to": PK, "body": "later", "send_at": at})
    d = r.json()["data"]
    assert r.status_code == 202 and d["status"] == "scheduled"
    assert status_of(api, d["id"]) == "scheduled"
    wait_for(lambda: status_of(api, d["id"]) == "delivered", timeout=20)


def test_init_is_idempotent_and_config_errors_exit_2(tmp_path):
    cmd = [sys.executable, "-m", "relaybox.cli"]
    first = subprocess.run(cmd + ["init", "--data-dir", str(tmp_path), "--json"], capture_output=True, text=True)
    assert first.returncode == 0
    created = json.loads(first.stdout)
    assert set(created) == {"account_id", "api_key"}
    again = subprocess.run(cmd + ["init", "--data-dir", str(tmp_path), "--json"], capture_output=True, text=True)
    assert again.returncode == 0 and created["api_key"] not in again.stdout and again.stdout.strip() == ""
    bad = subprocess.run(cmd + ["init", "--data-dir", str(tmp_path)], capture_output=True, text=True,
                         env={"RELAYBOX_PORT": "not-a-port", "PATH": "/usr/bin:/bin"})
    assert bad.returncode == 2 and "port" in bad.stderr
    cfg = tmp_path / "bad.toml"
    cfg.write_text("workers = 0\n")
    bad2 = subprocess.run(cmd + ["init", "--config", str(cfg)], capture_output=True, text=True)
    assert bad2.returncode == 2 and "workers" in bad2.stderr
    bad3 = subprocess.run(cmd + ["serve", "--config", str(tmp_path / "missing.toml")], capture_output=True, text=True)
    assert bad3.returncode == 2


def test_cancel_before_sending_and_409_after(server_factory):
    srv = server_factory(sandbox=True, sandbox_delay_ms=30)
    api = srv.api()
    later = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
    sched = api.post("/sms/send", json={"to": PK, "body": "later", "send_at": later}).json()["data"]["id"]
    r = api.post(f"/sms/{sched}/cancel")
    assert r.status_code == 200 and r.json()["data"]["status"] == "cancelled"
    log = [t["status"] for t in api.get(f"/messages/{sched}/log").json()["data"]["timeline"]]
    assert log == ["accepted", "scheduled", "cancelled"]
    done = api.post("/sms/send", json={"to": PK, "body": "now"}).json()["data"]["id"]
    wait_for(lambda: status_of(api, done) == "delivered")
    assert_envelope_error(api.post(f"/sms/{done}/cancel"), 409, "CONFLICT")
    assert_envelope_error(api.post("/sms/req_nope/cancel"), 404, "NOT_FOUND")
    b = api.post("/sms/batch", json={"send_at": later, "messages": [{"to": pk(i), "body": "x"} for i in range(3)]})
    bid = b.json()["data"]["batch_id"]
    c = api.post(f"/sms/batch/{bid}/cancel").json()["data"]
    assert c["cancelled"] == 3
    assert api.get(f"/sms/batch/{bid}").json()["data"]["status"] == "completed"
    assert api.get(f"/sms/batch/{bid}").json()["data"]["failed"] == 3
