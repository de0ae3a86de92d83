"""The admin pages end to end against a real server: getting started from live state, messages
(search, filter, timeline, webhook attempts), webhooks (save, test, attempt log, redeliver,
rotate), accounts (create, enable, subscription, top-up, switch), contacts, pairing and modems.
Every change is made through the page's forms (with their CSRF tokens) and checked through the
public API, so the page and the API can never disagree."""
from __future__ import annotations

import json
import re
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
from web_support import admin, module_server, post_form

PK = "+923001234567"


class Receiver:
    """A webhook receiver on loopback that records every POST (body and headers)."""

    def __init__(self) -> None:
        self.got: list[tuple[dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.got.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *a: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from module_server(tmp_path_factory, "pages", sandbox=True, sandbox_delay_ms=20,
                             webhook_retry_schedule="[0,1,1]")


@pytest.fixture(scope="module")
def s(server):
    return admin(server)


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    yield r
    r.close()


def steps_of(html: str) -> dict[str, bool]:
    return {k: v == "true" for k, v in re.findall(r'data-step="(\w+)" data-done="(true|false)"', html)}


def wait(pred: Any, timeout: float = 20.0) -> Any:
    from conftest import wait_for

    return wait_for(pred, timeout)


def test_getting_started_follows_the_live_state(server, s, receiver):
    steps = steps_of(s.get(server.url + "/admin/start").text)
    assert steps == {"account": True, "device": False, "token": True, "first_request": False, "webhooks": False,
                     "health": True, "ready": True, "test_sms": False, "webhook_test": False}
    # The first request from the examples.
    assert server.api().post("/sms/send", json={"to": PK, "body": "first"}).status_code == 202
    # Webhooks set through the settings form.
    r = post_form(s, server, "/admin/settings", "/admin/settings/webhooks",
                  {"status_url": receiver.url, "inbound_url": ""})
    assert r.status_code == 200 and "Webhook URLs saved." in r.text
    assert server.api().get("/webhooks").json()["data"]["status_url"] == receiver.url
    # "Send test webhook": one signed attempt, answered on the page.
    r = post_form(s, server, "/admin/settings", "/admin/settings/webhooks/test", {"target": "status"})
    assert r.status_code == 200 and 'id="test-result"' in r.text and "succeeded" in r.text
    headers, body = next((h, b) for h, b in receiver.got if b"webhook.test" in b)
    from standardwebhooks import Webhook

    secret = server.api().get("/webhooks/secret").json()["data"]["secret"]
    assert Webhook(secret).verify(body, headers)["type" if b'"type"' in body else "event"] is not None
    steps = steps_of(s.get(server.url + "/admin/start").text)
    assert steps["first_request"] and steps["webhooks"] and steps["webhook_test"]
    assert not steps["device"] and not steps["test_sms"]  # the sandbox is not a phone
    # Readiness turns red when the queue is paused, and says why.
    assert server.api().post("/queue/pause").status_code == 200
    page = s.get(server.url + "/admin/start").text
    assert steps_of(page)["ready"] is False and "paused" in page
    frag = s.get(server.url + "/admin/f/queue", headers={"X-Requested-With": "fetch"}).text
    assert "Sending is paused" in frag and "POST /queue/resume" in frag
    assert server.api().post("/queue/resume").status_code == 200
    assert steps_of(s.get(server.url + "/admin/start").text)["ready"] is True
    assert "Accepting messages" in s.get(server.url + "/admin/f/queue").text


def test_messages_search_filter_timeline_and_webhook_attempts(server, s, receiver):
    api = server.api()
    ids = {to: api.post("/sms/send", json={"to": to, "body": f"hello {to}", "client_reference_id": f"ref-{to[-4:]}"})
           .json()["data"]["id"] for to in ("+923001230001", "+923001239876", "+923001235555")}
    failed = ids["+923001230001"]
    wait(lambda: api.get(f"/sms/{failed}").json()["data"]["status"] == "failed")
    page = s.get(server.url + "/admin/messages", params={"q": "1239876"}).text
    assert ids["+923001239876"] in page and failed not in page
    page = s.get(server.url + "/admin/messages", params={"q": "ref-5555"}).text
    assert ids["+923001235555"] in page and ids["+923001239876"] not in page
    page = s.get(server.url + "/admin/messages", params={"status": "failed"}).text
    assert failed in page and ids["+923001239876"] not in page and "SANDBOX_FAILURE" in page
    # The refreshing fragment says the same.
    frag = s.get(server.url + "/admin/f/messages", params={"status": "failed"}, headers={"X-Requested-With": "fetch"})
    assert frag.status_code == 200 and failed in frag.text and "<html" not in frag.text
    # The message page: the timeline and the webhook of every transition.
    ok = ids["+923001239876"]
    wait(lambda: api.get(f"/sms/{ok}").json()["data"]["status"] == "delivered")
    def all_delivered() -> bool:
        ds = api.get("/webhooks/deliveries", params={"message_id": ok}).json()["data"]["deliveries"]
        return len(ds) >= 4 and all(d["state"] == "succeeded" for d in ds)

    wait(all_delivered, 30)
    page = s.get(server.url + f"/admin/messages/{ok}").text
    timeline = re.findall(r'<li class="done" data-status="(\w+)"', page)
    assert timeline == ["accepted", "queued", "dispatched", "sent", "delivered"]
    assert page.count("data-delivery-id=") >= 4 and "succeeded" in page
    # Redeliver one from the message page: one more attempt, the same webhook-id.
    delivery = re.search(r'data-delivery-id="(whd_\w+)"', page).group(1)
    before = len(api.get(f"/webhooks/deliveries/{delivery}").json()["data"]["attempt_log"])
    r = post_form(s, server, f"/admin/messages/{ok}", f"/admin/settings/webhooks/{delivery}/redeliver",
                  {"back": f"/admin/messages/{ok}"})
    assert r.status_code == 200 and r.url.endswith(f"/admin/messages/{ok}")
    wait(lambda: len(api.get(f"/webhooks/deliveries/{delivery}").json()["data"]["attempt_log"]) == before + 1)
    ids_seen = {h["webhook-id"] for h, b in receiver.got if delivery.encode() in json.dumps(h).encode()}
    assert ids_seen == {delivery}
    # A delivery's own page: payload and attempts.
    page = s.get(server.url + f"/admin/webhooks/{delivery}").text
    assert "message.status" in page and page.count("<tr><td>") == before + 1
    assert s.get(server.url + "/admin/messages/req_nope").status_code == 404


def test_webhook_attempt_log_and_secret_rotation(server, s):
    api = server.api()
    page = s.get(server.url + "/admin/settings").text
    assert 'id="attempts"' in page and "webhook.test" in page
    secret = api.get("/webhooks/secret").json()["data"]["secret"]
    assert secret in page  # behind a <details>, with a copy button
    r = post_form(s, server, "/admin/settings", "/admin/settings/webhooks/rotate")
    assert r.status_code == 200 and "New signing secret" in r.text
    new = api.get("/webhooks/secret").json()["data"]["secret"]
    assert new != secret and new in r.text
    page = s.get(server.url + "/admin/settings", params={"state": "succeeded"}).text
    assert "data-delivery-id" in page and "pending</span>" not in page


def test_accounts_create_enable_subscription_and_switch(server, s):
    r = post_form(s, server, "/admin/accounts", "/admin/accounts/create", {"name": "Branch Lahore"})
    assert r.status_code == 200
    key = re.search(r'id="new-account-key">(rbx_[^<]+)<', r.text).group(1)
    acc = re.search(r'data-account-id="(acc_\w+)">\s*<td data-label="[^"]+"><b>Branch Lahore', r.text).group(1)
    assert server.api(key=key).get("/messages").json()["error"]["code"] == "FORBIDDEN"
    assert s.get(server.url + "/admin/accounts").text.count(key) == 0  # shown once
    post_form(s, server, "/admin/accounts", f"/admin/accounts/{acc}/update", {"api_enabled": "1"})
    assert server.api(key=key).get("/messages").status_code == 200
    yesterday = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%d")
    post_form(s, server, "/admin/accounts", f"/admin/accounts/{acc}/update", {"subscription_until": yesterday})
    r = server.api(key=key).post("/sms/send", json={"to": PK, "body": "x"})
    assert r.status_code == 402 and r.json()["error"]["code"] == "SUBSCRIPTION_EXPIRED"
    assert yesterday in s.get(server.url + "/admin/accounts").text
    post_form(s, server, "/admin/accounts", f"/admin/accounts/{acc}/update", {"subscription_until": ""})
    assert server.api(key=key).post("/sms/send", json={"to": PK, "body": "x"}).status_code == 202
    bad = post_form(s, server, "/admin/accounts", f"/admin/accounts/{acc}/update", {"subscription_until": "soon"})
    assert "a date like" in bad.text
    # Switch the page to that account: its key hint and its messages.
    post_form(s, server, "/admin/accounts", f"/admin/accounts/{acc}/open")
    page = s.get(server.url + "/admin/settings").text
    assert key[:8] in page and server.key[:8] not in page
    assert "Branch Lahore" in s.get(server.url + "/admin/").text
    post_form(s, server, "/admin/", "/admin/account", {"account_id": server.account_id, "next": "/admin/"})
    assert server.key[:8] in s.get(server.url + "/admin/settings").text


def test_top_up_goes_through_the_ledger(server_factory):
    srv = server_factory(sandbox=True, sandbox_delay_ms=20, billing=True, price_default="0.01")
    s = admin(srv)
    page = s.get(srv.url + "/admin/accounts").text
    assert 'name="amount"' in page
    r = post_form(s, srv, "/admin/accounts", f"/admin/accounts/{srv.account_id}/topup", {"amount": "12.50"})
    assert "Balance topped up." in r.text and "12.5" in r.text
    assert srv.api().get("/balance").json()["data"]["balance"] == 12.5
    tx = srv.api().get("/transactions").json()["data"]["transactions"]
    assert tx[0]["type"] == "topup" and tx[0]["amount"] == 12.5
    r = post_form(s, srv, "/admin/accounts", f"/admin/accounts/{srv.account_id}/topup", {"amount": "-3"})
    assert "Amount:" in r.text and srv.api().get("/balance").json()["data"]["balance"] == 12.5


def test_contacts_add_search_delete(server, s):
    r = post_form(s, server, "/admin/contacts", "/admin/contacts/add",
                  {"name": "علی رضا", "phone": "+923331234567", "tags": "vip, lahore"})
    assert "Contact saved." in r.text
    page = s.get(server.url + "/admin/contacts", params={"q": "3331234"}).text
    assert "علی رضا" in page and "vip" in page
    assert "علی رضا" in s.get(server.url + "/admin/contacts", params={"q": "علی"}).text
    assert "علی رضا" not in s.get(server.url + "/admin/contacts", params={"q": "nobody"}).text
    cid = re.search(r'/admin/contacts/([\w-]+)/delete', page).group(1)
    found = server.api().get("/contacts", params={"q": "3331234"}).json()["data"]
    assert found["total"] == 1
    r = post_form(s, server, "/admin/contacts", f"/admin/contacts/{cid}/delete")
    assert "Contact deleted." in r.text
    assert server.api().get("/contacts", params={"q": "3331234"}).json()["data"]["total"] == 0
    bad = post_form(s, server, "/admin/contacts", "/admin/contacts/add", {"name": "x", "phone": "12"})
    assert "INVALID_REQUEST" in bad.text


def test_pairing_code_qr_and_mobile_page(server, s):
    r = post_form(s, server, "/admin/devices", "/admin/devices/pair")
    assert r.status_code == 200 and r.url.endswith("/admin/devices#pairing")
    code = re.search(r'id="pair-code">(\d{8})<', r.text).group(1)
    assert f'<code id="pair-api-url">{server.url}/api/mobile/v1</code>' in r.text
    assert re.search(r'<div class="qr" id="pair-qr"[^>]*>\s*(<\?xml[^>]*>)?\s*<svg', r.text)
    assert "loopback" in r.text  # opened on 127.0.0.1: the page warns a phone cannot reach it
    # The QR code's link opens the phone's pairing page (no session), which shows the same code.
    page_url = re.search(r'id="pair-page-url" href="([^"]+)"', r.text).group(1)
    phone_page = requests.get(page_url, timeout=30)
    assert phone_page.status_code == 200 and code in phone_page.text
    # The code stays on the page until it is hidden (or expires).
    assert code in s.get(server.url + "/admin/devices").text
    r = post_form(s, server, "/admin/devices", "/admin/devices/pair/cancel")
    assert 'id="pair-code"' not in r.text and 'id="pair-button"' in r.text


def test_modems_are_added_and_probed_from_the_devices_page(server, s, tmp_path):
    from relaybox.channels.modem.simulator import ModemSimulator

    sim = ModemSimulator(name="webtest").start()
    try:
        page = s.get(server.url + "/admin/devices").text
        assert 'id="modems"' in page and 'name="port"' in page
        r = post_form(s, server, "/admin/devices", "/admin/modems/add",
                      {"name": "web1", "port": sim.path, "number": "+923009998877", "baud": "115200"})
        assert "Modem added." in r.text, r.text[-3000:]
        wait(lambda: server.api().get("/modems/modem_web1").json()["data"]["online"], 20)
        frag = s.get(server.url + "/admin/f/channels", headers={"X-Requested-With": "fetch"}).text
        assert 'data-channel-id="modem_web1"' in frag and "+923009998877" in frag
        r = post_form(s, server, "/admin/devices", "/admin/modems/modem_web1/probe")
        assert "Done." in r.text
        r = post_form(s, server, "/admin/devices", "/admin/modems/scan")
        assert r.status_code == 200
        r = post_form(s, server, "/admin/devices", "/admin/modems/modem_web1/delete")
        assert "Done." in r.text
        assert server.api().get("/modems/modem_web1").status_code == 404
    finally:
        sim.stop()


def test_modems_are_edited_and_run_ussd_from_the_devices_page(server, s):
    from relaybox.channels.modem.simulator import ModemSimulator

    sim = ModemSimulator(name="webedit").start()
    api = server.api()
    try:
        r = api.post("/modems", json={"name": "web2", "port": sim.path, "number": "+923009998866"})
        assert r.status_code == 201, r.text
        wait(lambda: api.get("/modems/modem_web2").json()["data"]["online"], 20)
        page = s.get(server.url + "/admin/devices").text
        assert 'action="/admin/modems/modem_web2/edit"' in page and 'value="+923009998866"' in page
        assert 'action="/admin/modems/modem_web2/ussd"' in page
        # Label, number and caps apply in place (the driver is not restarted: still online at once).
        form = {"label": "Jazz SIM", "number": "+923007776655", "port": sim.path, "pin": "",
                "per_minute": "5", "per_hour": "", "per_day": "300",
                "enabled": ["1", "0"], "status_reports": ["1", "0"]}
        r = post_form(s, server, "/admin/devices", "/admin/modems/modem_web2/edit", form)
        assert "Saved." in r.text, r.text[-3000:]
        m = api.get("/modems/modem_web2").json()["data"]
        assert (m["label"], m["number"], m["enabled"], m["status_reports"], m["online"]) == \
            ("Jazz SIM", "+923007776655", True, True, True)
        assert m["caps"] == {"per_minute": 5, "per_hour": None, "per_day": 300}
        page = s.get(server.url + "/admin/devices").text
        assert 'value="Jazz SIM"' in page and 'name="per_day" min="1" value="300"' in page
        # Emptied fields are removed (label, number, a cap); an empty port or PIN changes nothing.
        form = {**form, "label": "", "number": "", "port": "", "per_minute": "", "per_day": "300"}
        r = post_form(s, server, "/admin/devices", "/admin/modems/modem_web2/edit", form)
        assert "Saved." in r.text, r.text[-3000:]
        m = api.get("/modems/modem_web2").json()["data"]
        assert (m["label"], m["number"], m["port"], m["online"]) == (None, None, sim.path, True)
        assert m["caps"] == {"per_minute": None, "per_hour": None, "per_day": 300}
        # An unticked box is sent as false; a bad value is named by the API, not a 500.
        r = post_form(s, server, "/admin/devices", "/admin/modems/modem_web2/edit", {"enabled": "0"})
        assert "Saved." in r.text and api.get("/modems/modem_web2").json()["data"]["enabled"] is False
        r = post_form(s, server, "/admin/devices", "/admin/modems/modem_web2/edit",
                      {"number": "12ab", "per_hour": "many"})
        assert r.status_code == 200 and "INVALID_REQUEST: number:" in r.text
        api.patch("/modems/modem_web2", json={"enabled": True})
        # USSD: the network's reply shows on the page, escaped.
        sim.set_ussd("*123#", "Balance: <b>10.50</b> PKR")
        r = post_form(s, server, "/admin/devices", "/admin/modems/modem_web2/ussd", {"code": "*123#"})
        assert "USSD \u2068*123#\u2069: \u2068Balance: &lt;b&gt;10.50&lt;/b&gt; PKR\u2069" in r.text, r.text[-3000:]
        assert "<b>10.50</b>" not in r.text
        r = post_form(s, server, "/admin/devices", "/admin/modems/modem_web2/ussd", {"code": "*999#"})
        assert "the network sent no text (status 4)" in r.text
        r = post_form(s, server, "/admin/devices", "/admin/modems/modem_web2/ussd", {"code": "*123#; AT+CFUN=0"})
        assert r.status_code == 200 and "INVALID_REQUEST: code:" in r.text
        r = post_form(s, server, "/admin/devices", "/admin/modems/modem_nope/ussd", {"code": "*123#"})
        assert r.status_code == 200 and "NOT_FOUND" in r.text
    finally:
        api.delete("/modems/modem_web2")
        sim.stop()


def test_a_config_toml_modem_is_not_edited_from_the_page(server_factory, tmp_path):
    srv = server_factory(config_text=f'[[modem]]\nname = "cfg"\nport = "{tmp_path / "no-such-port"}"\n')
    s = admin(srv)
    page = s.get(srv.url + "/admin/devices").text
    assert 'data-modem-id="modem_cfg"' in page and "defined in config.toml" in page
    assert "/admin/modems/modem_cfg/edit" not in page
    r = post_form(s, srv, "/admin/devices", "/admin/modems/modem_cfg/edit", {"label": "renamed"})
    assert r.status_code == 200 and "CONFLICT" in r.text
    assert srv.api().get("/modems/modem_cfg").json()["data"]["label"] is None


@pytest.mark.parametrize("lang,word", [("en", "Dashboard"), ("ur", "ڈیش بورڈ"), ("ne", "ड्यासबोर्ड"),
                                       ("bn", "ড্যাশবোর্ড")])
def test_every_page_renders_in_every_language(server, s, lang, word):
    for path in ("/admin/", "/admin/start", "/admin/messages", "/admin/devices", "/admin/settings",
                 "/admin/contacts", "/admin/accounts", "/admin/developers"):
        r = s.get(server.url + path, params={"lang": lang})
        assert r.status_code == 200, (path, lang)
        assert f'<html lang="{lang}" dir="{"rtl" if lang == "ur" else "ltr"}">' in r.text
        assert word in r.text
    # The choice sticks for the session, and the login page has the switcher too.
    assert f'<html lang="{lang}"' in s.get(server.url + "/admin/").text
    assert 'hreflang="ur"' in requests.get(server.url + "/admin/login").text
    s.get(server.url + "/admin/", params={"lang": "en"})
