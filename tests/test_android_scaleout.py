"""Phones with two relaybox processes on one PostgreSQL database and one Redis: a phone streams
from process A, a message accepted by process B reaches it at once (the Redis bus), B sees the
phone online, and unpairing through B ends the stream on A. Skipped (with the reason) without
PostgreSQL and Redis on loopback (.ci/services.sh)."""
from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import requests
from android_support import mobile_url, wait_for
from conftest import fresh_postgres_url, fresh_redis_url
from ops_support import postgres_or_skip, redis_or_skip

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def shared() -> Iterator[dict[str, str]]:
    pg = postgres_or_skip()
    rq = redis_or_skip()
    cleanups: list = []
    yield {"database": fresh_postgres_url(pg, cleanups), "queue": fresh_redis_url(rq),
           "secret": "android-scaleout-" + uuid.uuid4().hex}
    for drop in cleanups:
        drop()


def test_a_message_accepted_by_one_process_reaches_a_phone_streaming_from_another(server_factory, shared,
                                                                                   phones):
    common = dict(sse_keepalive_seconds=1, device_offline_after=5, **shared)
    a = server_factory(**common)
    b = server_factory(**common)
    b.key = a.key  # one database, one owner
    dev = phones.add(a, delay_ms=10)  # paired and streaming through A
    wait_for(lambda: b.api().get(f"/devices/{dev.device_id}").status_code == 200, 5, message="B knows it")
    before = len(dev.events)
    t0 = time.time()
    r = b.api().post("/sms/send", json={"to": "+923001234567", "body": "accepted by B"})
    assert r.status_code == 202, r.text
    mid = r.json()["data"]["id"]
    assert r.json()["data"]["device_id"] == dev.device_id
    wait_for(lambda: any(e.name == "MessageEnqueued" for e in dev.events[before:]), 3, interval=0.01,
             message="MessageEnqueued through the bus")
    first = next(e for e in dev.events[before:] if e.name == "MessageEnqueued")
    assert first.received_at - t0 < 1.0
    assert dev.wait_state(mid, "Delivered", 10)
    wait_for(lambda: b.api().get(f"/sms/{mid}").json()["data"]["status"] == "delivered", 10, message="delivered")
    # B keeps it online past device_offline_after: A saves the stream's last-seen time.
    time.sleep(6)
    assert b.api().get(f"/devices/{dev.device_id}").json()["data"]["online"] is True
    # Unpaired through B: the token fails on A at once and A ends the stream.
    token = dev.token
    assert b.api().delete(f"/devices/{dev.device_id}").status_code == 200
    r = requests.get(mobile_url(a) + "/message", headers={"Authorization": f"Bearer {token}"}, timeout=5)
    assert r.status_code == 401
    wait_for(lambda: not dev.connected or dev.sse_failures, 5, message="stream on A closed")
    wait_for(lambda: a.api().get(f"/devices/{dev.device_id}").status_code == 404, 5, message="A forgot it")
