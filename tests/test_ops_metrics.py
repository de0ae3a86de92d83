"""GET /metrics (Prometheus), request log lines, JSON logs: end to end on a real server."""
from __future__ import annotations

import json

import requests
from conftest import wait_for
from prometheus_client.parser import text_string_to_metric_families

DELIVERED = "+923001234567"
FAILS = "+923001230001"


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def _finished(api, ids: list[str]) -> bool:
    return all(api.get(f"/sms/{i}").json()["data"]["status"] in ("delivered", "failed") for i in ids)


def test_metrics_count_messages_by_status_and_channel_requests_and_channels(sandbox):
    api = sandbox.api()
    ids = [api.post("/sms/send", json={"to": to, "body": "hi"}).json()["data"]["id"]
           for to in (DELIVERED, DELIVERED, FAILS)]
    wait_for(lambda: _finished(api, ids), timeout=30, message="messages finished")

    r = requests.get(sandbox.url + "/metrics", timeout=10)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain")
    m = _samples(r.text)
    assert _value(m, "relaybox_messages", status="delivered", channel="sandbox") == 2
    assert _value(m, "relaybox_messages", status="failed", channel="sandbox") == 1
    assert _value(m, "relaybox_queue_depth") == 0
    assert _value(m, "relaybox_queue_oldest_age_seconds") == 0
    assert _value(m, "relaybox_channels_online", kind="sandbox") == 1
    assert _value(m, "relaybox_devices_online") == 0
    # The latency histogram is labelled by route rule, never by the raw path.
    assert _value(m, "relaybox_http_request_duration_seconds_count",
                  method="POST", route="/api/v1/sms/send", status="202") == 3
    assert _value(m, "relaybox_http_request_duration_seconds_count",
                  method="GET", route="/api/v1/sms/<message_id>", status="200") >= 3
    assert not any("req_" in dict(labels).get("route", "") for _, labels in m)
    assert _value(m, "relaybox_message_transitions_total", status="delivered") == 2
    assert _value(m, "relaybox_message_transitions_total", status="failed") == 1

    # Behind a proxy (nginx sets X-Real-IP) a client is not local: refused without a token.
    r = requests.get(sandbox.url + "/metrics", headers={"X-Real-IP": "203.0.113.9"}, timeout=10)
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "FORBIDDEN"


def test_metrics_queue_depth_and_oldest_age_when_no_channel_can_send(server_factory):
    srv = server_factory()  # no sandbox, no phone, no modem: messages wait in the queue
    api = srv.api()
    for _ in range(2):
        assert api.post("/sms/send", json={"to": DELIVERED, "body": "waits"}).status_code == 202

    def aged() -> dict | None:
        m = _samples(requests.get(srv.url + "/metrics", timeout=10).text)
        return m if (_value(m, "relaybox_queue_oldest_age_seconds") or 0) > 0.2 else None

    m = wait_for(aged, timeout=10, message="oldest age grows")
    assert _value(m, "relaybox_queue_depth") == 2
    assert _value(m, "relaybox_messages", status="queued", channel="none") == 2


def test_metrics_token_required_when_set_and_metrics_can_be_disabled(server_factory):
    srv = server_factory(metrics_token="metrics-token-for-tests-123")
    url = srv.url + "/metrics"
    r = requests.get(url, timeout=10)
    assert r.status_code == 401 and r.json()["error"]["code"] == "UNAUTHORIZED"
    r = requests.get(url, headers={"Authorization": "Bearer wrong-token"}, timeout=10)
    assert r.status_code == 401
    # The owner's API key is not the metrics token.
    r = requests.get(url, headers={"Authorization": f"Bearer {srv.key}"}, timeout=10)
    assert r.status_code == 401
    r = requests.get(url, headers={"Authorization": "Bearer metrics-token-for-tests-123",
                                   "X-Real-IP": "203.0.113.9"}, timeout=10)
    assert r.status_code == 200 and "relaybox_queue_depth" in r.text

    off = server_factory(metrics_enabled=False)
    r = requests.get(off.url + "/metrics", timeout=10)
    assert r.status_code == 404 and r.json()["error"]["code"] == "NOT_FOUND"


def test_json_logs_one_line_per_request_and_per_state_change_without_secrets(server_factory):
    srv = server_factory(sandbox=True, sandbox_delay_ms=20, log_json=True)
    api = srv.api()
    mid = api.post("/sms/send", json={"to": DELIVERED, "body": "log me"}).json()["data"]["id"]
    wait_for(lambda: _finished(api, [mid]), timeout=30, message="delivered")
    assert api.get("/sms/nope").status_code == 404
    requests.get(srv.api_base + "/messages", headers={"X-API-Key": "rbx_not-a-real-key-000000000000"}, timeout=10)

    def parsed() -> list[dict]:
        rows = []
        for line in srv.log().splitlines():
            if line.startswith("{"):
                rows.append(json.loads(line))
        return rows

    rows = wait_for(lambda: (r := parsed()) and any(x.get("status") == 401 for x in r) and r,
                    timeout=10, message="access lines")
    text = srv.log()
    access = [r for r in rows if r["logger"] == "relaybox.access"]
    sends = [r for r in access if r["route"] == "/api/v1/sms/send"]
    assert len(sends) == 1 and sends[0]["status"] == 202 and sends[0]["method"] == "POST"
    assert isinstance(sends[0]["ms"], float) and sends[0]["ts"].endswith("Z")
    assert any(r["route"] == "/api/v1/sms/<message_id>" and r["status"] == 404 for r in access)
    state = [r["msg"] for r in rows if r["logger"] == "relaybox.messages" and mid in r["msg"]]
    for step in ("accepted, queued", "dispatched to sandbox", " sent", " delivered"):
        assert sum(step in s for s in state) == 1, (step, state)
    # No key, no body, no query string in any line.
    assert srv.key not in text and "rbx_not-a-real-key" not in text
    assert "log me" not in text
    # Every line on stderr is one JSON object.
    for line in text.splitlines():
        if line.strip() and not line.startswith("{"):
            raise AssertionError(f"not a JSON log line: {line[:200]}")
