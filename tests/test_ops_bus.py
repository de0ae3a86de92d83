"""relaybox.bus: in-process and Redis pub/sub buses (events that must reach every process)."""
from __future__ import annotations

import threading
import time
import uuid

from conftest import wait_for
from ops_support import redis_or_skip

from relaybox.bus import LocalBus, RedisBus, make_bus


def test_local_bus_calls_subscribers_in_order_and_survives_a_failing_one():
    bus = LocalBus()
    got: list[tuple[str, object]] = []
    bus.subscribe("device", lambda d: got.append(("a", d)))
    bus.subscribe("device", lambda d: 1 / 0)
    bus.subscribe("device", lambda d: got.append(("b", d)))
    bus.subscribe("other", lambda d: got.append(("other", d)))
    bus.publish("device", {"event": "MessageEnqueued", "device_id": "dev_1"})
    assert got == [("a", {"event": "MessageEnqueued", "device_id": "dev_1"}),
                   ("b", {"event": "MessageEnqueued", "device_id": "dev_1"})]


def test_make_bus_follows_the_queue_setting():
    assert isinstance(make_bus("sqlite"), LocalBus)
    assert isinstance(make_bus("memory"), LocalBus)
    bus = make_bus("redis://127.0.0.1:6379/0")
    assert isinstance(bus, RedisBus)
    bus.close()


def test_redis_bus_reaches_every_process_once():
    url = redis_or_skip()
    prefix = f"relaybox-test-{uuid.uuid4().hex[:8]}"
    a, b = RedisBus(url, prefix=prefix), RedisBus(url, prefix=prefix)  # two "processes"
    other = RedisBus(url, prefix=prefix + "-elsewhere")                 # another installation
    got_a: list[dict] = []
    got_b: list[dict] = []
    got_other: list[dict] = []
    lock = threading.Lock()
    try:
        a.subscribe("device", lambda d: (lock.acquire(), got_a.append(d), lock.release()))
        b.subscribe("device", lambda d: (lock.acquire(), got_b.append(d), lock.release()))
        other.subscribe("device", got_other.append)
        t0 = time.monotonic()
        for i in range(20):
            a.publish("device", {"event": "MessageEnqueued", "n": i})
        wait_for(lambda: len(got_a) == 20 and len(got_b) == 20, timeout=10, message="both processes told")
        latency = time.monotonic() - t0
        assert [d["n"] for d in got_b] == list(range(20))
        assert [d["n"] for d in got_a] == list(range(20))
        time.sleep(0.3)
        assert got_other == [] and len(got_a) == 20
        # A channel subscribed later is picked up by the same listener.
        late: list[dict] = []
        b.subscribe("late", late.append)
        a.publish("late", {"x": 1})
        wait_for(lambda: late == [{"x": 1}], timeout=10, message="late subscription")
        print(f"\n[bus] 20 events to 2 processes in {latency * 1000:.0f} ms")
    finally:
        for bus in (a, b, other):
            bus.close()
