"""The developer page against a live server: its cURL, Python and Node snippets (and Java when a
JDK is present) are run as shown and succeed; the other languages name the right URL, header and
fields; the error table is the catalogue; the Postman collection generated from the OpenAPI file
runs green in newman."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from datetime import UTC
from pathlib import Path

import pytest
import requests
from web_support import admin, module_server, snippets_of

from relaybox.admin import snippets as sn
from relaybox.errors import CATALOGUE

HERE = Path(__file__).resolve().parent
NODE_DIR = HERE / "node"
OPS = ["send_sms", "send_otp", "verify_otp", "message_status"]
FIELDS = {"send_sms": ["to", "body", "metadata"], "send_otp": ["to", "purpose", "locale"],
          "verify_otp": ["otp_id", "code"], "message_status": []}
PATHS = {"send_sms": "/sms/send", "send_otp": "/otp/send", "verify_otp": "/otp/verify",
         "message_status": "/sms/" + sn.EXAMPLE_MESSAGE_ID}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # OTP resends are normally 30 s apart per number; the snippets of several languages send in a row.
    yield from module_server(tmp_path_factory, "devpage", sandbox=True, sandbox_delay_ms=20, otp_resend_interval=0)


@pytest.fixture(scope="module")
def box(server):
    """One sandbox server for the whole module (the tests only read, or make their own ids)."""
    session = admin(server)
    page = session.get(server.url + "/admin/developers", timeout=30)
    assert page.status_code == 200
    return server, session, page.text


def _run(lang: str, code: str, tmp: Path, key: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, sn.ENV_KEY: key}
    if lang == "curl":
        cmd = ["bash", "-c", code.replace("curl ", "curl -sS ", 1)]
    elif lang == "python":
        cmd = [sys.executable, "-c", code]
    elif lang == "node":
        path = tmp / "snippet.mjs"
        path.write_text(code)
        cmd = ["node", str(path)]
    elif lang == "java":
        path = tmp / "Relaybox.java"
        path.write_text(code)
        cmd = ["java", str(path)]  # single-file source launch (JDK 11+)
    else:  # pragma: no cover
        raise AssertionError(lang)
    return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120, env=env, cwd=tmp)


def _runnable() -> list[str]:
    langs = ["curl", "python", "node"]
    missing = [x for x, exe in (("curl", "curl"), ("node", "node")) if shutil.which(exe) is None]
    assert not missing, f"the snippet tests need {missing} on PATH"
    if shutil.which("java") and shutil.which("javac"):
        langs.append("java")
    return langs


def test_snippets_run_as_shown_and_succeed(box, tmp_path):
    srv, _session, page = box
    code = snippets_of(page)
    for lang in _runnable():
        # 1. send an SMS
        r = _run(lang, code[("send_sms", lang)], tmp_path, srv.key)
        assert r.returncode == 0, (lang, r.stdout, r.stderr)
        assert "202" in r.stdout or lang == "curl", (lang, r.stdout)
        mid = re.search(r"req_[0-9A-HJKMNP-TV-Z]{26}", r.stdout).group(0)
        msg = srv.api().get(f"/sms/{mid}").json()["data"]
        assert msg["to"] == "+923001234567" and msg["metadata"] == {"order_id": "1234"}
        # 2. its status, by the id the first call answered
        r = _run(lang, code[("message_status", lang)].replace(sn.EXAMPLE_MESSAGE_ID, mid), tmp_path, srv.key)
        assert r.returncode == 0 and mid in r.stdout and ("200" in r.stdout or lang == "curl"), (lang, r.stdout, r.stderr)
        # 3. an OTP
        r = _run(lang, code[("send_otp", lang)], tmp_path, srv.key)
        assert r.returncode == 0, (lang, r.stdout, r.stderr)
        otp_id = re.search(r"otp_[0-9A-HJKMNP-TV-Z]{26}", r.stdout).group(0)
        assert srv.api().get(f"/otp/{otp_id}").status_code == 200
        # 4. verify it (the example code is wrong, which is a 200 with result "failed")
        r = _run(lang, code[("verify_otp", lang)].replace(sn.EXAMPLE_OTP_ID, otp_id), tmp_path, srv.key)
        assert r.returncode == 0, (lang, r.stdout, r.stderr)
        assert re.search(r"""['"]result['"]:\s*['"]failed['"]""", r.stdout), (lang, r.stdout)
    # The key never appears in the page: only the environment variable's name.
    assert srv.key not in page and f"${sn.ENV_KEY}" in code[("send_sms", "curl")]


def test_every_language_names_the_url_header_and_fields(box):
    srv, _session, page = box
    code = snippets_of(page)
    base = srv.url + "/api/v1"
    names = [lang for lang, _label in sn.LANGUAGES]
    assert len(names) == 12 and {"curl", "php", "laravel", "node", "axios", "python", "flutter", "kotlin",
                                 "java", "csharp", "go", "ruby"} == set(names)
    for op in OPS:
        for lang in names:
            text = code[(op, lang)]
            assert base + PATHS[op] in text, (op, lang)
            assert "X-API-Key" in text and sn.ENV_KEY in text, (op, lang)
            for field in FIELDS[op]:
                assert re.search(rf"""(['"]?){field}\1\s*(:|=>|=)""", text), (op, lang, field)
            method = "POST" if op != "message_status" else "GET"
            assert method.lower() in text.lower(), (op, lang)
    # Tabs and copy buttons for every snippet.
    assert page.count('data-tab="curl"') == len(OPS) and page.count("data-copy=\"code-") == len(OPS) * 12


def test_error_table_is_the_catalogue_and_page_has_every_section(box):
    srv, session, page = box
    rows = re.findall(r'<tr data-code="([A-Z_]+)"><td><code>\1</code></td><td>(\d+)</td>', page)
    assert [(c, int(s)) for c, s in rows] == [(c, s) for c, (s, _m) in CATALOGUE.items()]
    for anchor in ("base-url", "auth", "examples", "endpoints", "errors", "webhooks", "health", "downloads"):
        assert f'id="{anchor}"' in page
    assert f'<code id="base-url-value">{srv.url}/api/v1</code>' in page
    assert "X-API-Key: your_api_key_here" in page and "Authorization: Bearer your_api_key_here" in page
    spec = requests.get(srv.api_base + "/openapi.json", timeout=30).json()
    for path, item in spec["paths"].items():
        for method in item:
            assert f'data-method="{method.upper()}" data-path="{path[len("/api/v1"):]}"' in page, (method, path)
    for event in ("message.status", "message.inbound", "otp.verified", "device.offline"):
        assert f"<code>{event}</code>" in page
    assert "webhook-signature" in page and f"{srv.url}/api/v1/health" in page
    assert session.get(srv.url + "/admin/developers?lang=ur").status_code == 200


def test_node_signature_check_accepts_relaybox_webhooks_and_refuses_forgeries(box, tmp_path):
    """The Node verification snippet against signatures made by the standardwebhooks package."""
    from datetime import datetime

    from standardwebhooks import Webhook

    _srv, _session, page = box
    m = re.search(r'<code id="verify-node" data-verify="node">(.*?)</code>', page, re.DOTALL)
    import html

    (tmp_path / "verify.mjs").write_text(html.unescape(m.group(1)))
    secret = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = json.dumps({"event": "message.status", "status": "delivered"})
    now = datetime.now(tz=UTC)
    sig = Webhook(secret).sign("whd_1", now, body)
    check = tmp_path / "check.mjs"
    check.write_text(
        'import { verifyWebhook } from "./verify.mjs";\n'
        f"const body = {json.dumps(body)};\n"
        f'const h = {{"webhook-id": "whd_1", "webhook-timestamp": "{int(now.timestamp())}", "webhook-signature": "{sig}"}};\n'
        f'const secret = "{secret}";\n'
        "console.log(verifyWebhook(body, h, secret), verifyWebhook(body + ' ', h, secret),\n"
        "  verifyWebhook(body, {...h, 'webhook-timestamp': '1000'}, secret));\n")
    r = subprocess.run(["node", str(check)], capture_output=True, text=True, check=False, timeout=60)
    assert r.stdout.split() == ["true", "false", "false"], (r.stdout, r.stderr)


def _newman() -> str:
    exe = NODE_DIR / "node_modules" / ".bin" / "newman"
    if not exe.exists():
        if shutil.which("npm") is None:
            pytest.skip("npm is not installed")
        r = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=NODE_DIR,
                           capture_output=True, text=True, check=False, timeout=300)
        assert r.returncode == 0, r.stderr
    return str(exe)


def test_postman_collection_runs_green_in_newman(box, tmp_path):
    srv, session, _page = box
    r = session.get(srv.url + "/admin/developers/postman.json", timeout=30)
    assert r.status_code == 200 and "attachment" in r.headers["Content-Disposition"]
    coll = r.json()
    assert coll["info"]["schema"].endswith("/v2.1.0/collection.json")
    variables = {v["key"]: v["value"] for v in coll["variable"]}
    assert variables["baseUrl"] == srv.url + "/api/v1" and variables["apiKey"] == ""
    requests_ = [i for folder in coll["item"] for i in folder["item"]]
    spec = requests.get(srv.api_base + "/openapi.json", timeout=30).json()
    n_ops = sum(len(item) for path, item in spec["paths"].items() if path != "/api/v1/openapi.json")
    assert len(requests_) == n_ops
    for req in requests_:
        script = "\n".join(req["event"][0]["script"]["exec"])
        assert "pm.test('status is documented" in script
        # JSON operations check the whole envelope; downloads (CSV) their media type or the error envelope.
        assert "body is the relaybox envelope" in script or "or the error envelope" in script
    # As a user would: put the key into the collection variable, then run it.
    for v in coll["variable"]:
        if v["key"] == "apiKey":
            v["value"] = srv.key
    path = tmp_path / "relaybox.postman_collection.json"
    path.write_text(json.dumps(coll))
    report = tmp_path / "newman.json"
    run = subprocess.run([_newman(), "run", str(path), "--reporters", "cli,json", "--reporter-json-export", str(report),
                          "--timeout-request", "30000", "--bail", "failure"],
                         capture_output=True, text=True, check=False, timeout=600)
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
    result = json.loads(report.read_text())["run"]
    assert result["failures"] == []
    assert result["stats"]["assertions"]["failed"] == 0 and result["stats"]["assertions"]["total"] >= 2 * n_ops
    codes = {e["item"]["name"]: e["response"]["code"] for e in result["executions"]}
    for e in result["executions"]:  # the run ended with a new key; later tests use it
        if e["item"]["name"] == "POST /api-key/regenerate" and e["response"]["code"] == 200:
            srv.key = json.loads(bytes(e["response"]["stream"]["data"]).decode())["data"]["api_key"]
    # The flows a fresh sandbox box supports end to end answered with success, ids chained.
    for name in ("GET /health", "GET /ready", "POST /sms/send", "GET /sms/{message_id}",
                 "GET /messages/{message_id}/log", "GET /messages", "POST /sms/batch", "GET /sms/batch/{batch_id}",
                 "POST /otp/send", "POST /otp/verify", "GET /otp/{otp_id}", "GET /webhooks", "PUT /webhooks",
                 "POST /status/bin", "GET /status/bin", "POST /api-key/regenerate"):
        if name in codes:
            assert 200 <= codes[name] < 300, (name, codes[name])
    assert {"GET /health", "POST /sms/send", "GET /sms/{message_id}"} <= set(codes)
