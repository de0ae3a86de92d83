"""Traffic control end to end: rate limits and their headers, caps, countries, queue pause and
health, sender numbers and spam diagnosis (real server, real SQLite, the sandbox as the radio)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import http_sfv
import pytest
from conftest import wait_for

PK = "+923001234567"
NP = "+9779841234567"  # a valid Nepali mobile number
SANDBOX_FROM = "+15005550006"


def cli(srv: Any, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "relaybox.cli", *args, "--data-dir", str(srv.data_dir)]
    return subprocess.run(cmd, env=srv.env, capture_output=True, text=True, timeout=60, check=False)


def new_account(srv: Any, name: str = "Branch") -> tuple[str, Any]:
    r = cli(srv, "account", "create", name, "--enable-api", "--json")
    assert r.returncode == 0, r.stderr
    created = json.loads(r.stdout)
    return created["account_id"], srv.api(key=created["api_key"])


def error_of(r: Any, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    body = r.json()
    assert body["ok"] is False and body["error"]["code"] == code, body
    return body["error"]


def status_of(api: Any, mid: str) -> str:
    return api.get(f"/sms/{mid}").json()["data"]["status"]


def send(api: Any, to: str = PK, **extra: Any) -> Any:
    return api.post("/sms/send", json={"to": to, "body": "hello", **extra})


def sf_list(value: str) -> list[tuple[str, dict[str, Any]]]:
    """Parse an RFC 8941 structured-field list (proves the header syntax, not just a substring)."""
    parsed = http_sfv.List()
    parsed.parse(value.encode())
    return [(item.value, dict(item.params)) for item in parsed]


# -- per-key request rate --------------------------------------------------------------------
def test_api_key_rate_limit_is_a_token_bucket_with_ietf_headers(server_factory):
    srv = server_factory(sandbox=True, sandbox_delay_ms=30, api_rate_limit=5, api_rate_window=60)
    api = srv.api()
    remaining = []
    for _ in range(5):
        r = api.get("/queue")
        assert r.status_code == 200
        assert sf_list(r.headers["RateLimit-Policy"]) == [("api", {"q": 5, "w": 60})]
        (name, params), = sf_list(r.headers["RateLimit"])
        assert name == "api" and set(params) == {"r", "t"}
        remaining.append(params["r"])
    assert remaining == [4, 3, 2, 1, 0]
    r = send(api)
    err = error_of(r, 429, "RATE_LIMITED")
    retry = int(r.headers["Retry-After"])
    assert 1 <= retry <= 12  # one token every 60/5 = 12 s
    assert err["retry_after_seconds"] == retry
    assert sf_list(r.headers["RateLimit-Policy"]) == [("api", {"q": 5, "w": 60})]
    (name, params), = sf_list(r.headers["RateLimit"])
    assert name == "api" and params["r"] == 0 and 1 <= params["t"] <= 60
    # Per key: another account's key has its own bucket.
    _, other = new_account(srv)
    assert other.get("/queue").status_code == 200


# -- per-recipient caps ----------------------------------------------------------------------
def test_recipient_hourly_cap_refuses_the_next_message_and_survives_a_restart(server_factory):
    srv = server_factory(sandbox=True, sandbox_delay_ms=30, recipient_hourly_cap=2)
    api = srv.api()
    assert send(api).status_code == 202
    assert send(api).status_code == 202
    r = send(api)
    err = error_of(r, 429, "RATE_LIMITED")
    assert err["field"] == "to" and err["policy"] == "recipient"
    assert 3500 <= int(r.headers["Retry-After"]) <= 3600
    policies = dict(sf_list(r.headers["RateLimit-Policy"]))
    assert policies["recipient"] == {"q": 2, "w": 3600}
    assert "api" in policies  # the key's own policy is listed beside it
    assert dict(sf_list(r.headers["RateLimit"]))["recipient"]["r"] == 0
    # Another recipient is fine; in a batch only the capped item is rejected.
    assert send(api, to="+923011234567").status_code == 202
    r = api.post("/sms/batch", json={"messages": [{"to": PK, "body": "x"}, {"to": "+923021234567", "body": "y"}]})
    assert r.status_code == 202, r.text
    data = r.json()["data"]
    assert data["accepted"] == 1 and data["results"][0]["error"]["code"] == "RATE_LIMITED"
    # The cap is counted from the stored messages: a restart forgets nothing.
    srv.stop()
    srv.start()
    error_of(send(srv.api()), 429, "RATE_LIMITED")


def test_a_batch_over_the_recipient_cap_is_refused_whole(server_factory):
    srv = server_factory(sandbox=True, sandbox_delay_ms=30, recipient_hourly_cap=2)
    r = srv.api().post("/sms/batch", json={"messages": [{"to": PK, "body": str(i)} for i in range(3)]})
    error_of(r, 429, "RATE_LIMITED")
    assert srv.api().get("/messages").json()["data"]["total"] == 0


# -- per-channel daily caps ------------------------------------------------------------------
def test_channel_daily_cap_is_counted_from_the_timeline_and_survives_a_restart(server_factory):
    srv = server_factory(sandbox=True, sandbox_delay_ms=30, channel_daily_caps='{"sandbox": 2}')
    api = srv.api()
    ids = [send(api, to=f"+92301000{i:04d}").json()["data"]["id"] for i in range(10, 12)]
    for mid in ids:
        wait_for(lambda mid=mid: status_of(api, mid) == "delivered", message="delivery")
    time.sleep(1.2)  # the router's view of the cap is cached for a second
    r = send(api)
    err = error_of(r, 429, "RATE_LIMITED")
    assert err["policy"] == "channel_daily"
    assert dict(sf_list(r.headers["RateLimit-Policy"]))["channel_daily"] == {"q": 2, "w": 86400}
    assert 1 <= int(r.headers["Retry-After"]) <= 86400
    ready = api.get("/ready")
    assert ready.status_code == 503
    assert {c["name"]: c["ok"] for c in ready.json()["data"]["checks"]}["daily_caps"] is False
    q = api.get("/queue").json()["data"]
    (sandbox,) = [c for c in q["channels"] if c["id"] == "sandbox"]
    assert sandbox["daily_cap"] == 2 and sandbox["used_today"] == 2 and sandbox["capped"] is True
    assert q["blocked"] is True
    srv.stop()
    srv.start()
    error_of(send(srv.api()), 429, "RATE_LIMITED")
    # A send pinned to the full channel through its number is refused too.
    error_of(send(srv.api(), **{"from": SANDBOX_FROM}), 429, "RATE_LIMITED")


# -- destination countries -------------------------------------------------------------------
def test_allowed_countries_from_config_and_per_account(server_factory):
    srv = server_factory(sandbox=True, sandbox_delay_ms=30, allowed_countries='["PK"]')
    api = srv.api()
    assert send(api, to=PK).status_code == 202
    err = error_of(send(api, to=NP), 400, "INVALID_REQUEST")
    assert err["field"] == "to" and "NP" in err["message"]
    # The admin allows Nepal only for one account.
    r = cli(srv, "account", "limits", srv.account_id, "--countries", "NP", "--json")
    assert r.returncode == 0, r.stderr
    assert send(api, to=NP).status_code == 202
    assert error_of(send(api, to=PK), 400, "INVALID_REQUEST")["field"] == "to"
    # In a list send the refused numbers are reported one by one.
    r = api.post("/sms/list", json={"numbers": [NP, PK], "body": "x"})
    assert r.status_code == 202
    data = r.json()["data"]
    assert data["accepted"] == 1 and data["rejected"][0]["to"] == PK
    assert cli(srv, "account", "limits", srv.account_id, "--countries", "*").returncode == 0
    assert send(api, to="+4915123456789").status_code == 202
    assert cli(srv, "account", "limits", srv.account_id, "--countries", "XX").returncode == 2


def test_default_allowed_countries_are_those_of_the_boxs_sims(tmp_path):
    """In-process app with a fake radio (a channel owning a Pakistani SIM number)."""
    from relaybox.app import create_app
    from relaybox.channels.base import Channel
    from relaybox.config import load_config

    class FakeSim(Channel):
        id, kind, name = "modem_fake", "modem", "Fake SIM"

        def numbers(self) -> list[str]:
            return ["+923331234567"]

        def online(self) -> bool:
            return True

        def notify(self) -> None:
            pass

    app = create_app(load_config(data_dir=str(tmp_path), queue="memory"))
    rt = app.extensions["relaybox"]
    from relaybox.accounts import create_account

    _, key = create_account("Shop", api_enabled=True)
    client = app.test_client()
    headers = {"X-API-Key": key}
    # Without a SIM (no channel, or only the sandbox) nothing reaches a carrier: no restriction.
    assert client.post("/api/v1/sms/send", json={"to": NP, "body": "x"}, headers=headers).status_code == 202
    rt.add_channel(FakeSim())
    r = client.post("/api/v1/sms/send", json={"to": NP, "body": "x"}, headers=headers)
    assert r.status_code == 400 and r.json["error"]["field"] == "to"
    assert "SIM" in r.json["error"]["message"]
    assert client.post("/api/v1/sms/send", json={"to": PK, "body": "x"}, headers=headers).status_code == 202
    acc = client.get("/api/v1/account", headers=headers).json["data"]
    assert acc["limits"]["allowed_countries"] == ["PK"] and acc["limits"]["allowed_countries_from"] == "sims"


# -- queue control -----------------------------------------------------------------------------
def test_account_pause_blocks_sends_and_resume_lets_them_flow(sandbox):
    api = sandbox.api()
    r = api.post("/queue/pause")
    assert r.status_code == 200 and r.json()["data"]["paused"] is True
    err = error_of(send(api), 503, "QUEUE_BLOCKED")
    assert "this account" in err["message"]
    q = api.get("/queue").json()["data"]
    assert q["blocked"] is True and q["paused"] is True
    ready = api.get("/ready")
    assert ready.status_code == 503
    # Another account of the box is not affected.
    _, other = new_account(sandbox)
    assert send(other).status_code == 202
    assert api.post("/queue/resume").json()["data"]["paused"] is False
    mid = send(api).json()["data"]["id"]
    wait_for(lambda: status_of(api, mid) == "delivered", message="delivery after resume")
    assert api.get("/queue").json()["data"]["blocked"] is False


def test_admin_instance_pause_blocks_every_account_until_resume(sandbox):
    api = sandbox.api()
    _, other = new_account(sandbox)
    r = cli(sandbox, "queue", "pause", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["instance_paused"] is True
    for a in (api, other):
        err = error_of(send(a), 503, "QUEUE_BLOCKED")
        assert "admin" in err["message"]
    assert api.get("/queue").json()["data"]["instance_paused"] is True
    assert cli(sandbox, "queue", "resume").returncode == 0
    mid = send(other).json()["data"]["id"]
    wait_for(lambda: status_of(other, mid) == "delivered", message="delivery after admin resume")


def test_hold_mode_accepts_while_paused_and_sends_on_resume(server_factory):
    srv = server_factory(sandbox=True, sandbox_delay_ms=30, pause_mode="hold")
    api = srv.api()
    api.post("/queue/pause")
    r = send(api)
    assert r.status_code == 202 and r.json()["data"]["status"] == "queued"
    mid = r.json()["data"]["id"]
    time.sleep(1.5)  # several claim rounds and housekeeping sweeps
    assert status_of(api, mid) == "queued"
    q = api.get("/queue").json()["data"]
    assert q["depth"]["queued"] == 1 and q["oldest_queued_age_seconds"] >= 1.0
    assert q["pause_mode"] == "hold" and q["blocked"] is True
    api.post("/queue/resume")
    wait_for(lambda: status_of(api, mid) == "delivered", message="held message sent after resume")
    # Held by the admin's pause too; the CLI resumes from another process.
    assert cli(srv, "queue", "pause").returncode == 0
    mid = send(api).json()["data"]["id"]
    time.sleep(1.2)
    assert status_of(api, mid) == "queued"
    assert cli(srv, "queue", "resume").returncode == 0
    wait_for(lambda: status_of(api, mid) == "delivered", message="held message sent after admin resume")


def test_queue_health_reports_depth_age_throughput_and_channels(sandbox):
    api = sandbox.api()
    ids = [send(api, to=f"+92301000{i:04d}").json()["data"]["id"] for i in range(20, 23)]
    for mid in ids:
        wait_for(lambda mid=mid: status_of(api, mid) == "delivered", message="delivery")
    q = api.get("/queue").json()["data"]
    assert set(q) >= {"blocked", "depth", "oldest_queued_age_seconds", "throughput", "channels"}
    assert q["depth"]["queued"] == 0 and q["oldest_queued_age_seconds"] is None
    assert q["throughput"]["last_5m"]["dispatched"] == 3 and q["throughput"]["last_60m"]["sent"] == 3
    (ch,) = [c for c in q["channels"] if c["id"] == "sandbox"]
    assert ch["online"] is True and ch["dispatched_5m"] == 3 and ch["sent_60m"] == 3
    # Another account sees only its own traffic.
    _, other = new_account(sandbox)
    assert other.get("/queue").json()["data"]["throughput"]["last_5m"]["dispatched"] == 0


# -- numbers ------------------------------------------------------------------------------------
def test_numbers_lists_the_channel_numbers_and_from_must_be_one_of_them(sandbox):
    api = sandbox.api()
    data = api.get("/numbers").json()["data"]
    assert data["total"] == 1
    (n,) = data["numbers"]
    assert n["phone"] == SANDBOX_FROM and n["inbound_callback"] is None and n["channel_id"] == "sandbox"
    assert send(api, **{"from": SANDBOX_FROM}).status_code == 202
    err = error_of(send(api, **{"from": "+15005550007"}), 409, "INVALID_DEVICE")
    assert err["field"] == "from"


# -- spam diagnosis -------------------------------------------------------------------------------
def diagnosis(api: Any, number: str = SANDBOX_FROM, **params: Any) -> Any:
    return api.get(f"/numbers/{number.replace('+', '%2B')}/spam-diagnosis", params=params)


SEED_KEYS = {"number", "spam_filtered", "diagnosis_reason", "delivery_status", "message_content_included",
             "checked_messages", "scanned_pages", "window_hours", "latest_message"}


def test_spam_diagnosis_validates_its_parameters_and_ownership(sandbox):
    api = sandbox.api()
    error_of(diagnosis(api, "+15005550007"), 404, "NOT_FOUND")
    assert error_of(diagnosis(api, "12345"), 400, "INVALID_REQUEST")["field"] == "number"
    for name, bad in (("hours", 337), ("hours", 0), ("limit", 101), ("max_pages", 21), ("max_pages", 0)):
        assert error_of(diagnosis(api, **{name: bad}), 400, "INVALID_REQUEST")["field"] == name
    err = error_of(diagnosis(api), 404, "NOT_FOUND")
    assert err["message"] == "No outbound message found for this number in the requested window"


def test_spam_diagnosis_from_sandbox_delivery_signals(sandbox):
    api = sandbox.api()
    mid = send(api, to="+923001230002", body="secret body").json()["data"]["id"]
    wait_for(lambda: status_of(api, mid) == "undelivered", message="carrier rejection")
    r = diagnosis(api, hours=72, limit=50, max_pages=5)
    assert r.status_code == 200, r.text
    d = r.json()["data"]
    assert set(d) == SEED_KEYS and "secret body" not in r.text
    assert d["spam_filtered"] is True and d["diagnosis_reason"] == "provider_spam_signal_detected"
    assert d["delivery_status"] == "delivery_failed" and d["message_content_included"] is False
    assert d["checked_messages"] == 1 and d["scanned_pages"] == 1 and d["window_hours"] == 72
    assert set(d["latest_message"]) == {"status", "created_at", "updated_at"}
    assert d["latest_message"]["status"] == "delivery_failed"
    # Only the latest signal counts: a delivered message clears it.
    mid = send(api).json()["data"]["id"]
    wait_for(lambda: status_of(api, mid) == "delivered", message="delivery")
    d = diagnosis(api).json()["data"]
    assert d["spam_filtered"] is False and d["diagnosis_reason"] == "delivered_no_spam_signal"
    # A message that can get no report is a "sent" signal, not spam.
    mid = send(api, to="+923001230003").json()["data"]["id"]
    wait_for(lambda: status_of(api, mid) == "sent", message="sent without report")
    d = diagnosis(api).json()["data"]
    assert d["delivery_status"] == "sent" and d["diagnosis_reason"] == "sent_no_delivery_report"


def _fixture_db(srv: Any) -> Any:
    """Bind relaybox's models to the server's own database (to write delivery-signal fixtures)."""
    from relaybox.db import open_database

    return open_database(srv.env.get("RELAYBOX_DATABASE") or f"sqlite:///{srv.data_dir}/relaybox.db")


SIGNAL_FIXTURES = [
    ({"status": "failed", "error_code": "MODEM_REJECTED", "detail": {"cms": 21}}, True),
    ({"status": "failed", "error_code": "MODEM_REJECTED", "detail": {"cms_error": 8}}, True),
    ({"status": "failed", "error_code": "CMS_ERROR_29"}, True),
    ({"status": "failed", "error_code": "MODEM_REJECTED", "detail": {"cms": 38}}, False),
    ({"status": "failed", "sent": True, "detail": {"tp_status": 0x48, "tp_status_hex": "0x48"}}, True),
    ({"status": "failed", "sent": True, "detail": {"all_parts": [{"tp_status": 0}, {"tp_status": "0x42"}]}}, True),
    ({"status": "failed", "sent": True, "detail": {"tp_status": 0x46}}, False),
    ({"status": "failed", "error_code": "DEVICE_SEND_FAILED", "error_message": "Blocked as spam by the carrier"}, True),
    ({"status": "failed", "error_code": "DEVICE_SEND_FAILED", "error_message": "Can't send message: radio off"}, False),
    ({"status": "undelivered", "sent": True, "error_code": "CARRIER_SPAM"}, True),
    ({"status": "undelivered", "sent": True, "error_code": "ABSENT_SUBSCRIBER"}, False),
    ({"status": "failed", "error_code": "MODEM_OFFLINE"}, False),
]


def test_spam_diagnosis_signals_on_fixtures(sandbox):
    """Each documented signal (and near misses) as the newest outbound message of the number."""
    from relaybox.models import Message, MessageEvent
    from relaybox.timeutil import now_ms

    _fixture_db(sandbox)
    base = now_ms() - 60_000
    for k, (fixture, spam) in enumerate(SIGNAL_FIXTURES):
        at = base + k * 1000
        sent = fixture.get("sent", False)
        m = Message.create(id=f"req_FIXTURE{k:04d}", account=sandbox.account_id, client_reference_id=f"fx{k}",
                           to_number=PK, from_number=SANDBOX_FROM, body="content never shown",
                           status=fixture["status"], channel_id="sandbox", error_code=fixture.get("error_code"),
                           error_message=fixture.get("error_message"), created_at=at,
                           sent_at=at + 100 if sent else None, updated_at=at + 500, sequence=2)
        MessageEvent.create(message=m.id, seq=1, status="dispatched", at=at + 50, channel_id="sandbox")
        MessageEvent.create(message=m.id, seq=2, status=fixture["status"], at=at + 500, channel_id="sandbox",
                            detail=fixture.get("detail"))
        d = diagnosis(sandbox.api()).json()["data"]
        assert d["spam_filtered"] is spam, (fixture, d)
        assert d["diagnosis_reason"] == ("provider_spam_signal_detected" if spam
                                         else "failed_without_spam_signal"), (fixture, d)
        assert d["delivery_status"] == ("delivery_failed" if sent else "send_failed"), (fixture, d)
        assert d["checked_messages"] == 1
        assert "content never shown" not in json.dumps(d)


def test_spam_diagnosis_scans_pages_past_messages_without_a_signal(sandbox):
    from relaybox.models import Message
    from relaybox.timeutil import now_ms

    _fixture_db(sandbox)
    now = now_ms()

    def row(i: int, status: str, age_s: float, **kw: Any) -> None:
        Message.create(id=f"req_PAGE{i:04d}", account=sandbox.account_id, client_reference_id=f"p{i}",
                       to_number=PK, from_number=SANDBOX_FROM, body="x", status=status, channel_id="sandbox",
                       created_at=now - int(age_s * 1000), updated_at=now - int(age_s * 1000), **kw)

    row(0, "undelivered", 100 * 3600, error_code="CARRIER_REJECTED", sent_at=now)  # outside 72 h
    d = diagnosis(sandbox.api()).json()
    assert d["error"]["code"] == "NOT_FOUND"
    d = diagnosis(sandbox.api(), hours=120).json()["data"]
    assert d["spam_filtered"] is True and d["window_hours"] == 120
    row(1, "undelivered", 600, error_code="CARRIER_REJECTED", sent_at=now)
    for i in range(2, 7):  # five newer messages still on their way
        row(i, "dispatched", 600 - i)
    d = diagnosis(sandbox.api(), limit=2, max_pages=5).json()["data"]
    assert d["spam_filtered"] is True and d["checked_messages"] == 6 and d["scanned_pages"] == 3
    d = diagnosis(sandbox.api(), limit=2, max_pages=2).json()["data"]
    assert d["spam_filtered"] is False and d["diagnosis_reason"] == "no_delivery_signal_yet"
    assert d["delivery_status"] == "pending" and d["checked_messages"] == 4 and d["scanned_pages"] == 2


def test_traffic_control_settings_are_validated(tmp_path: Path):
    from relaybox.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="pause_mode"):
        load_config(data_dir=str(tmp_path), pause_mode="drop")
    with pytest.raises(ConfigError, match="api_rate_window"):
        load_config(data_dir=str(tmp_path), api_rate_window=0)
