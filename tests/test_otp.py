"""OTP end to end against a real ``relaybox serve``: send, verify, expiry, limits, lock-out, leaks.

The test plays the handset: it reads the text a channel would transmit through
``relaybox.messages.sending_body`` (bound to the server's own SQLite file and instance secret),
which is the only place the code exists outside the server's memory. Time moves through
``RELAYBOX_TEST_CLOCK_FILE`` (see relaybox.timeutil), never by sleeping.
"""
from __future__ import annotations

import json
import os
import re
import threading
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import RelayboxServer, wait_for
from standardwebhooks import Webhook

from relaybox import messages, otp
from relaybox.db import open_database
from relaybox.models import Message
from relaybox.security import load_or_create_secret, set_instance_secret
from relaybox.sms.pdu import analyze

PK = "+923001234567"


def pk(i: int) -> str:
    """Distinct valid numbers that avoid the sandbox's magic endings 0001-0003."""
    return f"+92301{1000 + i:07d}"


class Clock:
    """The server's clock offset, written atomically to the file it reads on every now_ms()."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset_ms = 0
        self._write()

    def advance(self, seconds: float) -> None:
        self.offset_ms += int(seconds * 1000)
        self._write()

    def _write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(str(self.offset_ms))
        os.replace(tmp, self.path)


@pytest.fixture
def clock(tmp_path: Path) -> Clock:
    return Clock(tmp_path / "clock")


@pytest.fixture
def srv(server_factory, clock) -> RelayboxServer:
    """Sandbox on; its radio waits 10 s before "sent", so the handset can read the text first (the
    text is wiped once sent; none of these tests waits for delivery)."""
    return server_factory(sandbox=True, sandbox_delay_ms=10000, test_clock_file=clock.path)


@pytest.fixture
def offline(server_factory, clock) -> RelayboxServer:
    """No channel online: OTP messages wait in the queue."""
    return server_factory(test_clock_file=clock.path)


def database_url(srv: RelayboxServer) -> str:
    """The server's database: its SQLite file, or PostgreSQL in a scale-out run of the suite."""
    return srv.env.get("RELAYBOX_DATABASE") or f"sqlite:///{srv.data_dir / 'relaybox.db'}"


@contextmanager
def server_db(srv: RelayboxServer) -> Iterator[Any]:
    """Bind this process's database handle and instance secret to the server's own."""
    set_instance_secret(load_or_create_secret(str(srv.data_dir)))
    database = open_database(database_url(srv))
    try:
        yield database
    finally:
        database.close()


def db_rows(srv: RelayboxServer, sql: str, *args: Any) -> list[tuple]:
    """Run SQL ('?' placeholders) on the server's database; commits."""
    with server_db(srv) as database:
        rows = database.execute_sql(sql.replace("?", database.param), args).fetchall()
        return [tuple(r) for r in rows]


def handset_text(srv: RelayboxServer, message_id: str) -> str:
    """What the channel transmits for the message (channels call messages.sending_body)."""
    messages.add_body_source(otp.body_source)
    with server_db(srv):
        return messages.sending_body(Message.get_by_id(message_id))


def send(api, **fields: Any):
    return api.post("/otp/send", json={"to": PK, "purpose": "login", **fields})


def sent_code(srv: RelayboxServer, data: dict[str, Any]) -> tuple[str, str]:
    """(code, full text) of a 202 answer of /otp/send, read the way the handset gets it."""
    text = handset_text(srv, data["message_id"])
    masked = srv.api().get(f"/sms/{data['message_id']}").json()["data"]["body"]
    assert len(masked) == len(text)
    first = masked.index("*")
    code = text[first:first + data["length"]]
    assert code.isdigit() and code.isascii(), text
    assert masked == text.replace(code, "*" * len(code))
    return code, text


def verify(api, **fields: Any) -> dict[str, Any]:
    r = api.post("/otp/verify", json=fields)
    assert r.status_code == 200, r.text
    return r.json()["data"]


def error(r, status: int, code: str, field: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["ok"] is False and body["error"]["code"] == code, body
    if field is not None:
        assert body["error"].get("field") == field, body
    return body["error"]


# -- the happy path ----------------------------------------------------------------------------
def test_send_then_verify_succeeds_records_the_event_and_the_message_rides_the_otp_lane(srv):
    api = srv.api()
    r = send(api, app_name="Acme")
    assert r.status_code == 202, r.text
    d = r.json()["data"]
    assert d["otp_id"].startswith("otp_") and d["message_id"].startswith("req_")
    assert d["status"] == "sent" and d["expires_in_seconds"] == 300 and d["expires_at"].endswith("Z")
    assert (d["to"], d["purpose"], d["locale"], d["length"]) == (PK, "login", "en", 6)
    assert d["segments"] == 1 and d["encoding"] == "GSM-7"
    assert 'q=5;w=900' in r.headers["RateLimit-Policy"]
    code, text = sent_code(srv, d)
    assert text == f"{code} is your Acme code. Valid for 5 min. Do not share it."

    m = api.get(f"/sms/{d['message_id']}").json()["data"]
    assert m["priority"] == "otp" and m["otp_id"] == d["otp_id"]
    assert m["expires_at"] == d["expires_at"]  # the message's TTL is the code's expiry
    assert m["body"] == "****** is your Acme code. Valid for 5 min. Do not share it."

    g = api.get(f"/otp/{d['otp_id']}").json()["data"]
    assert g["status"] == "sent" and g["attempts"] == 0 and g["attempts_remaining"] == 5
    assert g["verified_at"] is None and "code" not in g

    v = verify(api, otp_id=d["otp_id"], code=code)
    assert v["result"] == "success" and v["attempts_remaining"] == 4 and v["verified_at"].endswith("Z")
    g = api.get(f"/otp/{d['otp_id']}").json()["data"]
    assert g["status"] == "verified" and g["verified_at"] == v["verified_at"] and g["attempts"] == 1

    rows = db_rows(srv, "SELECT payload FROM event WHERE type = 'otp.verified'")
    assert len(rows) == 1
    payload = json.loads(rows[0][0])
    assert {k: payload[k] for k in ("otp_id", "to", "purpose")} == {
        "otp_id": d["otp_id"], "to": PK, "purpose": "login"}
    assert payload["verified_at"].endswith("Z") and code not in rows[0][0]


class Receiver:
    """A webhook receiver on 127.0.0.1 that answers 200 and keeps every request."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        got = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                got.append({"headers": dict(self.headers.items()), "body": body})
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_otp_verified_webhook_is_signed_and_never_carries_the_code(server_factory):
    s = server_factory(sandbox=True, sandbox_delay_ms=4000, webhook_retry_schedule="[0, 0.3]")
    rcv = Receiver()
    try:
        api = s.api()
        assert api.put("/webhooks", json={"status_url": rcv.url}).status_code == 200
        secret = api.get("/webhooks/secret").json()["data"]["secret"]
        d = send(api, length=8).json()["data"]
        code, _ = sent_code(s, d)
        v = verify(api, otp_id=d["otp_id"], code=code)
        assert v["result"] == "success"

        def verified() -> list[dict[str, Any]]:
            return [r for r in list(rcv.requests) if json.loads(r["body"]).get("event") == "otp.verified"]

        wait_for(verified, message="otp.verified webhook")
        body = Webhook(secret).verify(verified()[0]["body"], verified()[0]["headers"])
        assert {k: body[k] for k in ("event", "otp_id", "to", "purpose", "verified_at")} == {
            "event": "otp.verified", "otp_id": d["otp_id"], "to": PK, "purpose": "login",
            "verified_at": v["verified_at"][:19] + "Z"}
        wait_for(lambda: any(json.loads(r["body"]).get("status") == "delivered" for r in list(rcv.requests)),
                 30, message="the OTP message's delivered webhook")
        assert all(code.encode() not in r["body"] for r in rcv.requests)
    finally:
        rcv.stop()


def test_wrong_code_then_right_code(srv):
    api = srv.api()
    d = send(api).json()["data"]
    code, _ = sent_code(srv, d)
    wrong = "000000" if code != "000000" else "111111"
    v = verify(api, otp_id=d["otp_id"], code=wrong)
    assert v == {**v, "result": "failed", "reason": "wrong_code", "attempts_remaining": 4}
    v = verify(api, otp_id=d["otp_id"], code=code[:5])  # shorter is just wrong
    assert v["reason"] == "wrong_code" and v["attempts_remaining"] == 3
    v = verify(api, otp_id=d["otp_id"], code=code)
    assert v["result"] == "success" and v["attempts_remaining"] == 2


def test_verify_by_number_and_purpose_checks_the_latest_code(srv):
    api = srv.api()
    d = send(api, purpose="password_reset").json()["data"]
    code, _ = sent_code(srv, d)
    error(api.post("/otp/verify", json={"to": PK, "purpose": "login", "code": code}), 404, "NOT_FOUND")
    v = verify(api, to=PK, purpose="password_reset", code=code)
    assert v["result"] == "success" and v["otp_id"] == d["otp_id"]


def test_reuse_after_success_is_already_used(srv):
    api = srv.api()
    d = send(api).json()["data"]
    code, _ = sent_code(srv, d)
    assert verify(api, otp_id=d["otp_id"], code=code)["result"] == "success"
    v = verify(api, otp_id=d["otp_id"], code=code)
    assert (v["result"], v["reason"], v["attempts_remaining"]) == ("failed", "already_used", 0)


# -- expiry --------------------------------------------------------------------------------------
def test_expiry_with_the_injected_clock(srv, clock):
    api = srv.api()
    d = send(api, expires_in_seconds=60).json()["data"]
    code, text = sent_code(srv, d)
    assert "Valid for 1 min" in text
    clock.advance(59)
    assert api.get(f"/otp/{d['otp_id']}").json()["data"]["expires_in_seconds"] <= 1
    clock.advance(2)
    v = verify(api, otp_id=d["otp_id"], code=code)
    assert v["result"] == "expired" and v["attempts_remaining"] == 0
    g = api.get(f"/otp/{d['otp_id']}").json()["data"]
    assert g["status"] == "expired" and g["expires_in_seconds"] == 0 and g["verified_at"] is None


def test_a_late_otp_is_never_sent(offline, clock):
    """No channel online: the code expires, its message expires with it (TTL), and a channel
    that picked it up anyway would be told not to send it."""
    api = offline.api()
    d = send(api, expires_in_seconds=60).json()["data"]
    handset_text(offline, d["message_id"])  # readable while it may still go out
    clock.advance(61)
    wait_for(lambda: api.get(f"/sms/{d['message_id']}").json()["data"]["status"] == "expired",
             message="the OTP message expired")
    m = api.get(f"/sms/{d['message_id']}").json()["data"]
    assert m["error_code"] == "TTL_EXPIRED" and m["sent_at"] is None
    with pytest.raises(messages.NotSendable) as exc:
        handset_text(offline, d["message_id"])
    assert exc.value.status == "expired"
    wait_for(lambda: db_rows(offline, "SELECT sealed, status FROM otp")[0] == (None, "expired"),
             message="sealed text wiped and expiry persisted")


# -- attempts, supersede, lock-out ---------------------------------------------------------------
def test_max_attempts(srv):
    api = srv.api()
    d = send(api).json()["data"]
    code, _ = sent_code(srv, d)
    wrong = "999999" if code != "999999" else "888888"
    for left in (4, 3, 2, 1, 0):
        v = verify(api, otp_id=d["otp_id"], code=wrong)
        assert (v["result"], v["reason"], v["attempts_remaining"]) == ("failed", "wrong_code", left)
    v = verify(api, otp_id=d["otp_id"], code=code)  # even the right code is too late now
    assert (v["result"], v["reason"], v["attempts_remaining"]) == ("failed", "max_attempts_reached", 0)
    g = api.get(f"/otp/{d['otp_id']}").json()["data"]
    assert g["status"] == "failed" and g["attempts"] == 5


def test_concurrent_wrong_codes_never_use_more_than_the_attempts(srv):
    api = srv.api()
    d = send(api).json()["data"]
    code, _ = sent_code(srv, d)
    wrong = "000000" if code != "000000" else "111111"
    results: list[dict[str, Any]] = []

    def one() -> None:
        s = srv.api()
        results.append(s.post("/otp/verify", json={"otp_id": d["otp_id"], "code": wrong}).json()["data"])

    threads = [threading.Thread(target=one) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    reasons = sorted(r["reason"] for r in results)
    assert reasons == ["max_attempts_reached"] * 15 + ["wrong_code"] * 5, reasons
    assert api.get(f"/otp/{d['otp_id']}").json()["data"]["attempts"] == 5


def test_max_attempts_is_configurable(server_factory):
    s = server_factory(sandbox=True, sandbox_delay_ms=10000, otp_max_attempts=2)
    api = s.api()
    d = send(api).json()["data"]
    code, _ = sent_code(s, d)
    bad = "123456" if code != "123456" else "654321"
    assert verify(api, otp_id=d["otp_id"], code=bad)["attempts_remaining"] == 1
    assert verify(api, otp_id=d["otp_id"], code=bad)["attempts_remaining"] == 0
    assert verify(api, otp_id=d["otp_id"], code=code)["reason"] == "max_attempts_reached"


def test_a_new_send_supersedes_the_live_code_and_cancels_its_waiting_message(offline, clock):
    api = offline.api()
    a = send(api).json()["data"]
    code_a, _ = sent_code(offline, a)
    clock.advance(31)
    b = send(api).json()["data"]
    code_b, _ = sent_code(offline, b)
    v = verify(api, otp_id=a["otp_id"], code=code_a)
    assert (v["result"], v["reason"], v["attempts_remaining"]) == ("failed", "superseded", 0)
    assert api.get(f"/otp/{a['otp_id']}").json()["data"]["status"] == "superseded"
    ma = api.get(f"/sms/{a['message_id']}").json()["data"]
    assert ma["status"] == "cancelled" and ma["error_code"] == "OTP_SUPERSEDED"
    with pytest.raises(messages.NotSendable):
        handset_text(offline, a["message_id"])
    assert api.get(f"/sms/{b['message_id']}").json()["data"]["status"] == "queued"
    v = verify(api, to=PK, purpose="login", code=code_b)
    assert v["result"] == "success" and v["otp_id"] == b["otp_id"]


def test_failures_add_up_across_resends_and_lock_the_pair_out_for_a_growing_delay(srv, clock):
    api = srv.api()

    def wrong_for(code: str) -> str:
        return "0" * len(code) if code != "0" * len(code) else "1" * len(code)

    a = send(api).json()["data"]
    code_a, _ = sent_code(srv, a)
    for _ in range(3):
        assert verify(api, otp_id=a["otp_id"], code=wrong_for(code_a))["reason"] == "wrong_code"
    clock.advance(31)
    b = send(api).json()["data"]  # resending does not reset the count of failures
    code_b, _ = sent_code(srv, b)
    assert verify(api, otp_id=b["otp_id"], code=wrong_for(code_b))["attempts_remaining"] == 4
    v = verify(api, otp_id=b["otp_id"], code=wrong_for(code_b))  # 5th failure for the pair: locked
    assert v["reason"] == "wrong_code" and v["attempts_remaining"] == 0 and v["retry_after_seconds"] == 60
    v = verify(api, otp_id=b["otp_id"], code=code_b)
    assert v["reason"] == "max_attempts_reached" and 0 < v["retry_after_seconds"] <= 60
    clock.advance(31)
    r = send(api)
    err = error(r, 429, "RATE_LIMITED")
    assert err["policy"] == "otp-lockout" and 0 < int(r.headers["Retry-After"]) <= 30

    clock.advance(30)  # the first lock-out is over; b still has 3 attempts
    for _ in range(3):
        assert verify(api, otp_id=b["otp_id"], code=wrong_for(code_b))["reason"] == "wrong_code"
    c = send(api).json()["data"]
    code_c, _ = sent_code(srv, c)
    verify(api, otp_id=c["otp_id"], code=wrong_for(code_c))
    v = verify(api, otp_id=c["otp_id"], code=wrong_for(code_c))  # 10th failure: twice as long
    assert v["retry_after_seconds"] == 120
    r = send(api)
    error(r, 429, "RATE_LIMITED")
    assert 115 <= int(r.headers["Retry-After"]) <= 120  # real time passes between the two requests
    clock.advance(121)
    assert verify(api, otp_id=c["otp_id"], code=code_c)["result"] == "success"
    assert db_rows(srv, "SELECT COUNT(*) FROM otp_guard") == [(0,)]  # success forgets the failures


# -- send limits ----------------------------------------------------------------------------------
def test_send_limits_per_number_and_purpose_with_retry_after_survive_a_restart(srv, clock):
    api = srv.api()
    assert send(api).status_code == 202
    r = send(api)
    err = error(r, 429, "RATE_LIMITED")
    assert 20 <= int(r.headers["Retry-After"]) <= 30 and err["retry_after_seconds"] == int(r.headers["Retry-After"])
    assert err["policy"] == "otp-resend"
    assert '"otp-resend";q=1;w=30' in r.headers["RateLimit-Policy"]
    assert re.search(r'(^|, )"otp-resend";r=0;t=\d+(,|$)', r.headers["RateLimit"])
    assert send(api, purpose="signup").status_code == 202  # another purpose is another pair
    assert send(api, to=pk(7)).status_code == 202  # another number too
    for _ in range(4):
        clock.advance(31)
        assert send(api).status_code == 202
    clock.advance(31)
    r = send(api)  # the 6th within 15 minutes
    err = error(r, 429, "RATE_LIMITED")
    assert err["policy"] == "otp-number"
    wait = int(r.headers["Retry-After"])
    assert 900 - 5 * 31 - 30 <= wait <= 900 - 5 * 31 + 1  # minus the real seconds the test took

    srv.stop()  # the counters are rows in the database, not memory
    srv.start()
    r = send(api)
    error(r, 429, "RATE_LIMITED")
    clock.advance(wait + 1)
    assert send(api).status_code == 202


def test_send_limit_per_account(server_factory):
    s = server_factory(sandbox=True, otp_account_max_sends=2, otp_account_window=600)
    api = s.api()
    assert send(api, to=pk(1)).status_code == 202
    assert send(api, to=pk(2)).status_code == 202
    r = send(api, to=pk(3))
    err = error(r, 429, "RATE_LIMITED")
    assert err["policy"] == "otp-account" and 590 <= int(r.headers["Retry-After"]) <= 600


def test_idempotent_send_replays_without_sending_twice(srv):
    api = srv.api()
    h = {"Idempotency-Key": "otp-login-1"}
    a = api.post("/otp/send", json={"to": PK, "purpose": "login"}, headers=h)
    b = api.post("/otp/send", json={"to": PK, "purpose": "login"}, headers=h)
    assert a.status_code == b.status_code == 202
    assert b.headers.get("Idempotent-Replayed") == "true"
    assert a.json()["data"] == b.json()["data"]
    assert db_rows(srv, "SELECT COUNT(*) FROM otp") == [(1,)]


# -- texts ----------------------------------------------------------------------------------------
SCRIPTS = {"ur": "ARABIC", "ne": "DEVANAGARI", "bn": "BENGALI"}


def _letters_script(text: str) -> set[str]:
    return {unicodedata.name(ch).split()[0] for ch in text if ch.isalpha() and not ch.isascii()}


def test_each_locale_text_is_in_its_script_with_the_ascii_code(srv):
    api = srv.api()
    for locale in ("en", "ur", "ne", "bn"):
        r = send(api, to=pk(10), purpose=f"login-{locale}", locale=locale, app_name="ShopKeeper12")
        assert r.status_code == 202, r.text
        d = r.json()["data"]
        code, text = sent_code(srv, d)
        assert text.count(code) == 1, text
        assert all(ch in "0123456789" for ch in text if unicodedata.category(ch) == "Nd"), text  # ASCII digits
        assert "ShopKeeper12" in text and "5" in text
        if locale == "en":
            assert text.isascii() and d["encoding"] == "GSM-7"
        else:
            assert _letters_script(text) == {SCRIPTS[locale]}, text
            assert sum(1 for ch in text if not ch.isascii()) >= 20, text
            assert d["encoding"] == "UCS-2"
        assert d["segments"] == 1, text  # the defaults fit one segment with a 12-character app name


def test_default_locale_comes_from_the_account(srv):
    db_rows(srv, "UPDATE account SET locale = 'bn' RETURNING id")  # what the account settings will set
    d = send(srv.api()).json()["data"]
    assert d["locale"] == "bn"
    _, text = sent_code(srv, d)
    assert _letters_script(text) == {"BENGALI"}


@pytest.mark.parametrize("locale", otp.LOCALES)
def test_default_templates_fit_one_ucs2_segment(locale):
    for app_name in ("ABCDEFGHIJKL", "অআইঈউঊঋএঐওঔক", None):
        for minutes in (1, 5, 60):
            text = otp.render_text(locale=locale, code="123456", minutes=minutes, app_name=app_name)
            info = analyze(text)
            assert info.segments == 1, (locale, text, info)
            assert len(text.encode("utf-16-le")) // 2 <= 70  # even when forced to UCS-2


def test_app_hash_and_domain_lines_are_formatted_exactly(srv):
    api = srv.api()
    d = send(api, template="Your {app_name} code is {code}. It lasts {minutes} minutes.", app_name="Acme",
             android_app_hash="FA+9qCX9VSu", domain="Login.Example.COM").json()["data"]
    code, text = sent_code(srv, d)
    assert text == f"Your Acme code is {code}. It lasts 5 minutes.\nFA+9qCX9VSu\n@login.example.com #{code}"
    m = api.get(f"/sms/{d['message_id']}").json()["data"]
    assert m["body"] == "Your Acme code is ******. It lasts 5 minutes.\nFA+9qCX9VSu\n@login.example.com #******"
    assert m["segments"] == analyze(text).segments

    d = send(api, purpose="hash-only", android_app_hash="ABC123xyz45").json()["data"]
    _, text = sent_code(srv, d)
    assert text.split("\n")[1:] == ["ABC123xyz45"]
    d = send(api, purpose="domain-only", domain="example.com", locale="ur").json()["data"]
    code, text = sent_code(srv, d)
    assert text.split("\n")[-1] == f"@example.com #{code}" and text.count("\n") == 1


BAD_SEND = [
    ({"purpose": "Login"}, "purpose"),
    ({"purpose": "x" * 33}, "purpose"),
    ({"length": 3}, "length"),
    ({"length": 11}, "length"),
    ({"length": "6"}, "length"),
    ({"expires_in_seconds": 59}, "expires_in_seconds"),
    ({"expires_in_seconds": 3601}, "expires_in_seconds"),
    ({"locale": "fr"}, "locale"),
    ({"template": "no code here"}, "template"),
    ({"template": "{code} {secret}"}, "template"),
    ({"template": "{code} for {app_name}"}, "app_name"),
    ({"app_name": "two\nlines"}, "app_name"),
    ({"android_app_hash": "short"}, "android_app_hash"),
    ({"domain": "https://example.com/x"}, "domain"),
    ({"to": "+1234567890"}, "to"),
    ({"ttl_seconds": 60}, "ttl_seconds"),
    ({"priority": "bulk"}, "priority"),
]


def test_bad_send_input_names_the_field(sandbox):
    api = sandbox.api()
    for fields, field in BAD_SEND:
        r = api.post("/otp/send", json={"to": PK, "purpose": "login", **fields})
        error(r, 400, "INVALID_REQUEST", field)
    assert db_rows(sandbox, "SELECT COUNT(*) FROM otp") == [(0,)]


def test_bad_verify_input_names_the_field(sandbox):
    api = sandbox.api()
    error(api.post("/otp/verify", json={"otp_id": "otp_x", "code": "12ab"}), 400, "INVALID_REQUEST", "code")
    error(api.post("/otp/verify", json={"otp_id": "otp_x", "code": 123456}), 400, "INVALID_REQUEST", "code")
    error(api.post("/otp/verify", json={"code": "123456"}), 400, "INVALID_REQUEST", "otp_id")
    error(api.post("/otp/verify", json={"to": PK, "code": "123456"}), 400, "INVALID_REQUEST", "purpose")
    error(api.post("/otp/verify", json={"otp_id": "otp_nope", "code": "123456"}), 404, "NOT_FOUND")
    error(api.get("/otp/otp_nope"), 404, "NOT_FOUND")
    error(api.post("/otp/verify", data="code=1", headers={"Content-Type": "text/plain"}), 400,
          "INVALID_REQUEST", "body")
    error(sandbox.api(key=None).post("/otp/verify", json={"otp_id": "x", "code": "1234"}), 401, "UNAUTHORIZED")


def test_another_accounts_otp_is_not_found(srv):
    d = send(srv.api()).json()["data"]
    from relaybox.accounts import create_account

    with server_db(srv):
        _, other_key = create_account("Other", api_enabled=True)
    other = srv.api(key=other_key)
    error(other.get(f"/otp/{d['otp_id']}"), 404, "NOT_FOUND")
    error(other.post("/otp/verify", json={"otp_id": d["otp_id"], "code": "123456"}), 404, "NOT_FOUND")


# -- the code never leaks ---------------------------------------------------------------------------
def test_the_code_is_in_no_log_line_no_api_answer_and_no_database_column(server_factory):
    s = server_factory(sandbox=True, sandbox_delay_ms=4000, log_level="DEBUG")
    api = s.api()
    answers: list[str] = []

    def keep(r):
        answers.append(r.text + "\n" + "\n".join(f"{k}: {v}" for k, v in r.headers.items()))
        return r

    d = keep(send(api, length=10, app_name="Acme", domain="example.com")).json()["data"]
    code, _ = sent_code(s, d)
    wrong = str((int(code) + 1) % 10**10).zfill(10)
    keep(api.post("/otp/verify", json={"otp_id": d["otp_id"], "code": wrong}))
    keep(api.get(f"/otp/{d['otp_id']}"))
    keep(api.post("/otp/verify", json={"otp_id": d["otp_id"], "code": code}))
    wait_for(lambda: keep(api.get(f"/sms/{d['message_id']}")).json()["data"]["status"] == "delivered",
             30, 0.2, message="OTP message delivered")
    keep(api.get(f"/messages/{d['message_id']}/log"))
    keep(api.get("/messages"))
    keep(api.get(f"/otp/{d['otp_id']}"))
    keep(api.post("/otp/verify", json={"otp_id": d["otp_id"], "code": code}))

    assert all(code not in a for a in answers)
    log = s.log()
    assert "otp/verify" in log and code not in log

    with server_db(s) as database:
        sqlite = database.param == "?"
        tables = database.get_tables()
        assert {"otp", "otp_guard", "message", "event"} <= set(tables)
        find = 'instr(CAST("{c}" AS TEXT), ?) > 0' if sqlite else 'strpos(CAST("{c}" AS TEXT), %s) > 0'
        checked = 0
        for t in tables:
            for col in database.get_columns(t):
                hits = database.execute_sql(f'SELECT COUNT(*) FROM "{t}" WHERE ' + find.format(c=col.name),
                                            (code,)).fetchone()[0]
                assert hits == 0, f"the code is in {t}.{col.name}"
                checked += 1
        assert checked > 50
        assert database.execute_sql("SELECT COUNT(*) FROM otp WHERE sealed IS NOT NULL").fetchone()[0] == 0
    for f in s.data_dir.iterdir():  # nor in any byte of any file (WAL, queue, ...)
        if f.is_file() and f.name != "server.log":
            assert code.encode() not in f.read_bytes(), f.name
