"""Accounts end to end: the admin CLI, API access, key regeneration, subscriptions, balance,
ledger, debits and refunds, and concurrent senders that must never overdraw."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
from datetime import date, timedelta
from typing import Any

from conftest import wait_for

PK = "+923001234567"
BILLING = """
billing = true
currency = "USD"

[[price]]
prefix = "+92"
per_segment = 0.01
label = "PK"

[[price]]
prefix = "+9230"
per_segment = 0.02
label = "PK mobile 30x"
"""


def cli(srv: Any, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "relaybox.cli", *args, "--data-dir", str(srv.data_dir)]
    if srv.config_path:
        cmd += ["--config", str(srv.config_path)]
    return subprocess.run(cmd, env=srv.env, capture_output=True, text=True, timeout=60, check=False)


def error_of(r: Any, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["ok"] is False and body["error"]["code"] == code, body
    return body["error"]


def send(api: Any, to: str = PK, body: str = "hello", **extra: Any) -> Any:
    return api.post("/sms/send", json={"to": to, "body": body, **extra})


def status_of(api: Any, mid: str) -> str:
    return api.get(f"/sms/{mid}").json()["data"]["status"]


def balance(api: Any) -> float:
    return api.get("/balance").json()["data"]["balance"]


# -- accounts and API access ------------------------------------------------------------------
def test_admin_creates_accounts_and_api_access_is_forbidden_until_enabled(sandbox):
    r = cli(sandbox, "account", "create", "Karachi branch", "--json")
    assert r.returncode == 0, r.stderr
    created = json.loads(r.stdout)
    assert created["api_enabled"] is False and created["api_key"].startswith("rbx_")
    api = sandbox.api(key=created["api_key"])
    err = error_of(api.get("/contacts"), 403, "FORBIDDEN")
    assert "not enabled" in err["message"]
    error_of(send(api), 403, "FORBIDDEN")
    assert cli(sandbox, "account", "enable", created["account_id"]).returncode == 0
    assert api.get("/contacts").status_code == 200
    me = api.get("/account").json()["data"]
    assert me["id"] == created["account_id"] and me["name"] == "Karachi branch" and me["api_enabled"] is True
    assert cli(sandbox, "account", "disable", created["account_id"]).returncode == 0
    error_of(api.get("/account"), 403, "FORBIDDEN")
    listed = json.loads(cli(sandbox, "account", "list", "--json").stdout)["accounts"]
    assert {a["id"] for a in listed} == {sandbox.account_id, created["account_id"]}
    assert "api_key" not in json.dumps(listed)
    assert cli(sandbox, "account", "enable", "acc_nope").returncode == 2


def test_regenerated_key_is_shown_once_and_the_old_key_dies_at_once(sandbox):
    old = sandbox.api()
    r = old.post("/api-key/regenerate")
    assert r.status_code == 200
    data = r.json()["data"]
    new_key = data["api_key"]
    assert new_key != sandbox.key and "not be shown again" in data["message"]
    error_of(old.get("/account"), 401, "UNAUTHORIZED")
    error_of(send(old), 401, "UNAUTHORIZED")
    fresh = sandbox.api(key=new_key)
    assert fresh.get("/account").status_code == 200
    assert new_key not in fresh.get("/account").text
    # The admin can do the same from the CLI.
    r = cli(sandbox, "account", "regenerate-key", sandbox.account_id, "--json")
    assert r.returncode == 0
    error_of(fresh.get("/account"), 401, "UNAUTHORIZED")
    assert sandbox.api(key=json.loads(r.stdout)["api_key"]).get("/account").status_code == 200


def test_accounts_do_not_see_each_others_data(sandbox):
    owner = sandbox.api()
    other_created = json.loads(cli(sandbox, "account", "create", "Other", "--enable-api", "--json").stdout)
    other = sandbox.api(key=other_created["api_key"])
    cid = owner.post("/contacts", json={"name": "Ayesha", "phone": PK}).json()["data"]["id"]
    error_of(other.get(f"/contacts/{cid}"), 404, "NOT_FOUND")
    error_of(other.delete(f"/contacts/{cid}"), 404, "NOT_FOUND")
    assert other.get("/contacts").json()["data"]["total"] == 0
    # The same number may be in both directories.
    assert other.post("/contacts", json={"name": "Ayesha", "phone": PK}).status_code == 201
    mid = send(owner).json()["data"]["id"]
    error_of(other.get(f"/sms/{mid}"), 404, "NOT_FOUND")


# -- subscriptions ----------------------------------------------------------------------------
def test_expired_subscription_answers_subscription_expired_and_ready_says_so(sandbox):
    api = sandbox.api()
    yesterday = (date.today() - timedelta(days=2)).isoformat()
    r = cli(sandbox, "account", "subscription", sandbox.account_id, "--until", yesterday, "--json")
    assert r.returncode == 0, r.stderr
    err = error_of(send(api), 402, "SUBSCRIPTION_EXPIRED")
    assert "renew" in err["message"]
    error_of(api.post("/sms/list", json={"numbers": [PK], "body": "x"}), 402, "SUBSCRIPTION_EXPIRED")
    ready = api.get("/ready")
    assert ready.status_code == 503
    checks = {c["name"]: c for c in ready.json()["data"]["checks"]}
    assert checks["subscription"]["ok"] is False and "expired" in checks["subscription"]["reason"]
    assert api.get("/account").json()["data"]["subscription_expired"] is True
    assert api.get("/queue").json()["data"]["blocked"] is True
    future = (date.today() + timedelta(days=30)).isoformat()
    assert cli(sandbox, "account", "subscription", sandbox.account_id, "--until", future).returncode == 0
    assert send(api).status_code == 202
    assert api.get("/ready").status_code == 200
    assert cli(sandbox, "account", "subscription", sandbox.account_id, "--until", "none").returncode == 0
    assert cli(sandbox, "account", "subscription", sandbox.account_id, "--until", "31/12/2026").returncode == 2


# -- billing ----------------------------------------------------------------------------------
def test_billing_is_off_by_default(sandbox):
    data = sandbox.api().get("/balance").json()["data"]
    assert data == {"balance": None, "currency": "USD", "billing": False}
    assert send(sandbox.api()).status_code == 202
    assert sandbox.api().get("/transactions").json()["data"]["total"] == 0


def test_debit_on_accept_by_prefix_and_segments_and_refund_when_failed_before_sending(server_factory):
    srv = server_factory(config_text=BILLING, sandbox=True, sandbox_delay_ms=30)
    api = srv.api()
    error_of(send(api), 402, "INSUFFICIENT_BALANCE")
    assert api.get("/ready").status_code == 503
    r = cli(srv, "account", "topup", srv.account_id, "1.00", "--note", "Invoice 7", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["balance"] == 1.0
    assert balance(api) == 1.0 and api.get("/ready").status_code == 200
    # +9230... matches the longer prefix: 0.02 per segment.
    send(api, to=PK)
    assert balance(api) == 0.98
    # +9231...: the +92 price, 0.01, times 2 segments.
    r = send(api, to="+923111234567", body="x" * 200)
    assert r.json()["data"]["segments"] == 2
    assert balance(api) == 0.96
    # No price for Germany and no price_default: refused naming "to", nothing charged.
    assert error_of(send(api, to="+4915123456789"), 400, "INVALID_REQUEST")["field"] == "to"
    assert balance(api) == 0.96
    # The sandbox fails numbers ending 0001 before sending: the debit comes back, once.
    mid = send(api, to="+923001230001").json()["data"]["id"]
    assert balance(api) == 0.94
    wait_for(lambda: status_of(api, mid) == "failed", message="sandbox failure")
    wait_for(lambda: balance(api) == 0.96, message="refund")
    # Undelivered messages did go out: no refund.
    mid = send(api, to="+923001230002").json()["data"]["id"]
    wait_for(lambda: status_of(api, mid) == "undelivered", message="carrier rejection")
    txs = api.get("/transactions", params={"limit": 100}).json()["data"]
    kinds = [t["type"] for t in reversed(txs["transactions"])]
    assert kinds == ["topup", "debit", "debit", "debit", "refund", "debit"]
    assert txs["transactions"][-1]["description"] == "Invoice 7"
    for t in txs["transactions"]:
        assert set(t) >= {"timestamp", "type", "amount", "description", "balance_after"}
    assert txs["transactions"][0]["balance_after"] == 0.94 == balance(api)
    refunds = [t for t in txs["transactions"] if t["type"] == "refund"]
    assert len(refunds) == 1 and refunds[0]["amount"] == 0.02
    page = api.get("/transactions", params={"limit": 2, "page": 2}).json()["data"]
    assert page["total"] == 6 and page["has_more"] is True and len(page["transactions"]) == 2
    assert error_of(api.get("/transactions", params={"limit": 101}), 400, "INVALID_REQUEST")["field"] == "limit"


def test_a_message_that_expires_in_the_queue_is_refunded_exactly_once(server_factory):
    from relaybox import billing
    from relaybox.db import open_database
    from relaybox.models import Message
    from relaybox.timeutil import now_ms

    srv = server_factory(config_text="price_default = 0.05\n" + BILLING)  # no channel: nothing leaves
    api = srv.api()
    assert cli(srv, "account", "topup", srv.account_id, "0.5").returncode == 0
    mid = send(api, to="+4915123456789").json()["data"]["id"]
    assert balance(api) == 0.45
    open_database(srv.env.get("RELAYBOX_DATABASE") or f"sqlite:///{srv.data_dir}/relaybox.db")
    Message.update(expires_at=now_ms() - 1).where(Message.id == mid).execute()  # its TTL passes
    wait_for(lambda: status_of(api, mid) == "expired", message="TTL expiry by the housekeeper")
    wait_for(lambda: balance(api) == 0.5, message="refund on the expiry event")
    # A crash right after an expiry was committed loses its event: the sweeper refunds on restart.
    lost = send(api, to="+4915123456780").json()["data"]["id"]
    assert balance(api) == 0.45
    srv.kill()
    Message.update(status="expired", error_code="TTL_EXPIRED").where(Message.id == lost).execute()
    srv.start()
    wait_for(lambda: balance(srv.api()) == 0.5, message="refund by the sweeper after a restart")
    # Settling again (event replayed, sweeper racing) changes nothing: exactly once.
    assert billing.settle(mid) is None and billing.settle(lost) is None
    assert billing.settle_due() == 0
    assert balance(srv.api()) == 0.5
    txs = srv.api().get("/transactions").json()["data"]["transactions"]
    assert [t["type"] for t in txs] == ["refund", "debit", "refund", "debit", "topup"]
    assert {t["message_id"] for t in txs if t["type"] == "refund"} == {mid, lost}


def test_twenty_concurrent_senders_never_drive_the_balance_below_zero(server_factory):
    srv = server_factory(config_text=BILLING, sandbox=True, sandbox_delay_ms=30)
    assert cli(srv, "account", "topup", srv.account_id, "0.07").returncode == 0  # 7 messages at 0.01
    barrier = threading.Barrier(20)
    results: list[Any] = [None] * 20

    def sender(i: int) -> None:
        api = srv.api()
        barrier.wait()
        results[i] = send(api, to=f"+92311{1000100 + i:07d}")  # no sandbox magic endings

    threads = [threading.Thread(target=sender, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    codes = sorted(r.status_code for r in results)
    assert codes.count(202) == 7 and codes.count(402) == 13, codes
    for r in results:
        if r.status_code == 402:
            err = r.json()["error"]
            assert err["code"] == "INSUFFICIENT_BALANCE" and err["required"] == 0.01
    assert balance(srv.api()) == 0.0
    txs = srv.api().get("/transactions", params={"limit": 100}).json()["data"]["transactions"]
    assert [t["type"] for t in txs].count("debit") == 7
    assert min(t["balance_after"] for t in txs) == 0.0
    # A batch that would overdraw is refused whole; a list send likewise.
    assert cli(srv, "account", "topup", srv.account_id, "0.015").returncode == 0
    r = srv.api().post("/sms/list", json={"numbers": ["+923111000101", "+923111000102"], "body": "x"})
    error_of(r, 402, "INSUFFICIENT_BALANCE")
    assert balance(srv.api()) == 0.015


def test_topup_validates_its_arguments(sandbox):
    assert cli(sandbox, "account", "topup", sandbox.account_id, "abc").returncode == 2
    assert cli(sandbox, "account", "topup", sandbox.account_id, "-5").returncode == 2
    assert cli(sandbox, "account", "topup", "acc_missing", "5").returncode == 2
