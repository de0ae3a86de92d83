"""Pairing phones: by code (API and CLI), by private token, code reuse and expiry refused, a
foreign token re-registers, restarts PATCH, unpairing revokes the token at once, the pairing page."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any

import pytest
import qrcode
import requests
from android_support import (
    UA,
    device_view,
    mobile_url,
    new_code,
    phone_server,
    query,
    register_raw,
    wait_for,
)

from relaybox.channels.android.simulator import HttpStatusError, SimulatedDevice


def test_pair_by_code_registers_once_and_the_code_cannot_be_reused(server_factory, phones):
    srv = phone_server(server_factory)
    code = new_code(srv)
    dev = phones.add(srv, code=code)
    assert dev.registrations == 1 and dev.device_id.startswith("dev_")
    assert re.fullmatch(r"dev_[0-9A-HJKMNP-TV-Z]{26}", dev.device_id)
    assert dev.login == dev.device_id and dev.token

    listed = srv.api().get("/devices").json()["data"]
    assert listed["total"] == 1
    d = listed["devices"][0]
    assert d["id"] == dev.device_id and d["online"] is True and d["sse_connected"] is True
    assert d["app_version"] == "1.68.0" and d["model"] == dev.name and d["paired_by"] == "code"
    assert [s["reported_number"] for s in d["sims"]] == ["********0001", "********0002"]

    # The same code a second time: refused (401), nothing registered.
    again = SimulatedDevice(mobile_url(srv), code=code, backoff_scale=0.02)
    with pytest.raises(HttpStatusError) as err:
        again.start()
    assert err.value.status == 401
    assert srv.api().get("/devices").json()["data"]["total"] == 1


def test_an_expired_or_unknown_code_is_refused(server_factory):
    srv = phone_server(server_factory)
    code = new_code(srv)
    # Ten minutes pass (the row's expiry moves into the past; the clock of the server is real).
    query(srv, "UPDATE pairing_code SET expires_at = expires_at - 600001")
    r = register_raw(srv, f"Code {code}")
    assert r.status_code == 401 and r.headers["Content-Type"] == "application/json"
    assert "expired" in r.json()["message"]
    assert register_raw(srv, "Code 12345678").status_code == 401
    assert register_raw(srv, "Code abc").status_code == 401
    assert register_raw(srv, "").status_code == 401
    # Stored hashed: no clear code in the table.
    rows = query(srv, "SELECT code_hash, token_hash FROM pairing_code")
    assert rows and all(code not in "".join(r) for r in rows)


def test_pair_by_private_token_and_a_wrong_token_is_refused(server_factory, phones):
    srv = phone_server(server_factory, android_private_token="shared-secret-123")
    dev = phones.add(srv, private_token="shared-secret-123")
    assert dev.registrations == 1
    assert device_view(srv, dev.device_id)["paired_by"] == "private_token"
    assert register_raw(srv, "Bearer wrong-secret").status_code == 401
    # Without the setting the private-token path is closed.
    srv2 = phone_server(server_factory)
    assert register_raw(srv2, "Bearer shared-secret-123").status_code == 401


def test_a_phone_with_a_foreign_token_gets_401_and_registers_again(server_factory, phones, tmp_path):
    srv = phone_server(server_factory, android_private_token="moved-phone-token")
    state = tmp_path / "phone.json"
    state.write_text(json.dumps({"registration": {"id": "dev7Qk2mPz1LxV9sNaB3c", "token": "tKp8WZr2bQeYx0mLs4VhD",
                                                  "login": "K7D2QX", "password": "m4kz9qv7wtr2pn"},
                                 "settings": {}, "webhooks": []}))
    dev = phones.add(srv, private_token="moved-phone-token", state_file=str(state))
    assert dev.device_patches == 0 and dev.registrations == 1
    assert dev.device_id.startswith("dev_") and dev.token != "tKp8WZr2bQeYx0mLs4VhD"
    # Its restart now PATCHes (204) instead of registering again.
    dev.stop()
    dev.start()
    assert dev.device_patches == 1 and dev.registrations == 1
    assert srv.api().get("/devices").json()["data"]["total"] == 1


def test_patch_device_rules(server_factory, phones):
    srv = phone_server(server_factory)
    dev = phones.add(srv, push_token="fcm-token-1")  # a phone with a push token opens no SSE
    url = mobile_url(srv) + "/device"
    auth = {"Authorization": f"Bearer {dev.token}", **UA}
    assert device_view(srv, dev.device_id)["push_token"] is True
    r = requests.patch(url, headers=auth, json={"id": "dev_SOMEONE_ELSE", "pushToken": None}, timeout=5)
    assert r.status_code == 403 and r.headers["Content-Type"] == "application/json"
    r = requests.patch(url, headers={"Authorization": "Bearer not-a-token"}, json={"id": dev.device_id}, timeout=5)
    assert r.status_code == 401
    r = requests.patch(url, headers=auth, json={"id": dev.device_id, "pushToken": None, "simCards": []}, timeout=5)
    assert r.status_code == 204 and r.content == b""
    assert device_view(srv, dev.device_id)["push_token"] is False  # null clears it
    r = requests.patch(url, headers=auth, data=b"{not json", timeout=5)
    assert r.status_code == 400 and "message" in r.json()


def test_unpairing_revokes_the_token_at_once_and_ends_the_stream(server_factory, phones):
    srv = phone_server(server_factory)
    dev = phones.add(srv)
    token = dev.token
    assert srv.api().delete(f"/devices/{dev.device_id}").json()["data"]["unpaired"] is True
    r = requests.get(mobile_url(srv) + "/message", headers={"Authorization": f"Bearer {token}"}, timeout=5)
    assert r.status_code == 401
    wait_for(lambda: not dev.connected or dev.sse_failures, 5, message="stream closed")
    assert srv.api().get(f"/devices/{dev.device_id}").status_code == 404
    assert srv.api().get("/devices").json()["data"]["total"] == 0


def test_devices_are_loaded_at_start_up(server_factory, phones):
    srv = phone_server(server_factory)
    dev = phones.add(srv)
    srv.api().patch(f"/devices/{dev.device_id}", json={"label": "Shop phone", "sim_numbers": {"1": "+923001112233"}})
    dev.stop()
    srv.stop()
    srv.start()
    d = device_view(srv, dev.device_id)
    assert d["name"] == "Shop phone" and d["numbers"] == ["+923001112233"]
    dev.start()
    assert dev.device_patches == 1
    wait_for(lambda: device_view(srv, dev.device_id)["sse_connected"], 5, message="reconnected")
    # Its SIM number is a sender of the account now, so a send `from` it goes to this phone.
    r = srv.api().post("/sms/send", json={"to": "+923001234567", "body": "via SIM 1", "from": "+923001112233"})
    assert r.status_code == 202, r.text
    mid = r.json()["data"]["id"]
    assert dev.wait_state(mid, "Delivered", 10)
    pulled = dev.messages[mid]
    assert pulled.sim_number == 1


def test_management_api_validation(server_factory, phones):
    srv = phone_server(server_factory)
    dev = phones.add(srv)
    api = srv.api()
    r = api.patch(f"/devices/{dev.device_id}", json={"sim_numbers": {"1": "+1234567890"}})
    assert r.status_code == 400 and r.json()["error"]["field"].startswith("sim_numbers")
    r = api.patch(f"/devices/{dev.device_id}", json={"sim_numbers": {"x": "+923001112233"}})
    assert r.status_code == 400 and r.json()["error"]["field"] == "sim_numbers.x"
    r = api.patch(f"/devices/{dev.device_id}", json={"colour": "red"})
    assert r.status_code == 400 and r.json()["error"]["field"] == "colour"
    r = api.patch(f"/devices/{dev.device_id}", json={"enabled": False, "label": "Spare"})
    assert r.status_code == 200 and r.json()["data"]["enabled"] is False and r.json()["data"]["name"] == "Spare"
    assert api.get("/devices/dev_01HNOPE").status_code == 404
    assert api.post("/devices/pairing", json={"api_url": "ftp://x"}).json()["error"]["field"] == "api_url"
    assert requests.get(srv.api_base + "/devices", timeout=5).status_code == 401


def test_pairing_page_shows_url_and_code_and_expires_after_use(server_factory, phones):
    srv = phone_server(server_factory)
    data = srv.api().post("/devices/pairing", json={"api_url": "https://relaybox.lan/api/mobile/v1"}).json()["data"]
    assert data["api_url"] == "https://relaybox.lan/api/mobile/v1"
    token = data["page_url"].rsplit("/", 1)[1]
    assert data["page_url"] == f"https://relaybox.lan/pair/{token}"
    assert data["notification_channel"] == "SSE_ONLY" and data["expires_in_seconds"] > 590
    # The SVG QR code is the page URL (same modules as qrcode draws for it).
    qr = qrcode.QRCode(border=2, error_correction=qrcode.constants.ERROR_CORRECT_M)
    qr.add_data(data["page_url"])
    qr.make(fit=True)
    assert data["qr_svg"].startswith("<svg") and f'viewBox="0 0 {qr.modules_count + 4} {qr.modules_count + 4}"' \
        in data["qr_svg"]

    page = requests.get(f"{srv.url}/pair/{token}", timeout=5)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert data["code"] in page.text and "https://relaybox.lan/api/mobile/v1" in page.text
    assert "SSE Only" in page.text and "github.com/capcom6/android-sms-gateway/releases" in page.text
    assert page.headers["Referrer-Policy"] == "no-referrer" and "no-store" in page.headers["Cache-Control"]
    assert "CA certificate" not in page.text  # TLS not set up
    svg = requests.get(f"{srv.url}/pair/{token}/qr.svg", timeout=5)
    assert svg.status_code == 200 and svg.headers["Content-Type"].startswith("image/svg+xml")

    phones.add(srv, code=data["code"])
    gone = requests.get(f"{srv.url}/pair/{token}", timeout=5)
    assert gone.status_code == 410 and data["code"] not in gone.text
    assert requests.get(f"{srv.url}/pair/not-a-token", timeout=5).status_code == 410


def _cli(srv: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "relaybox.cli", *args, "--data-dir", str(srv.data_dir)],
                          env=srv.env, capture_output=True, text=True, timeout=60, check=False)


def test_cli_pair_prints_code_url_and_qr_and_the_code_works(server_factory, phones):
    srv = phone_server(server_factory)
    out = _cli(srv, "device", "pair", "--url", srv.url)
    assert out.returncode == 0, out.stderr
    code = re.search(r"Code:\s+(\d{8})", out.stdout).group(1)
    assert f"API URL:      {srv.url}/api/mobile/v1" in out.stdout
    assert "SSE Only" in out.stdout and "▄" in out.stdout  # the QR code, in half blocks
    page_url = re.search(r"pairing page \((\S+)\)", out.stdout).group(1)
    assert requests.get(page_url, timeout=5).status_code == 200
    dev = phones.add(srv, code=code)
    js = json.loads(_cli(srv, "device", "list", "--json").stdout)
    assert [d["id"] for d in js] == [dev.device_id]
    as_json = json.loads(_cli(srv, "device", "pair", "--json", "--url", "https://box.lan").stdout)
    assert as_json["api_url"] == "https://box.lan/api/mobile/v1" and len(as_json["code"]) == 8


def test_cli_device_simulate_runs_a_phone(server_factory):
    srv = phone_server(server_factory)
    code = new_code(srv)
    proc = subprocess.Popen([sys.executable, "-m", "relaybox.cli", "device", "simulate", "--url",
                             mobile_url(srv), "--code", code, "--delay-ms", "10"],
                            env=srv.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        d = wait_for(lambda: srv.api().get("/devices").json()["data"]["devices"], 15, message="device")
        wait_for(lambda: device_view(srv, d[0]["id"])["sse_connected"], 10, message="stream")
        mid = srv.api().post("/sms/send", json={"to": "+923001234567", "body": "cli phone"}).json()["data"]["id"]
        wait_for(lambda: srv.api().get(f"/sms/{mid}").json()["data"]["status"] == "delivered", 15,
                 message="delivered")
    finally:
        proc.send_signal(2)
        out, _ = proc.communicate(timeout=15)
    assert "running as device dev_" in out
