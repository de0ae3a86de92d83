"""A small publish/subscribe bus for events that must reach every relaybox process.

One process (the default): :class:`LocalBus` calls the subscribers in the publishing process.
Scale-out (``queue = "redis://..."``): :class:`RedisBus` publishes through Redis pub/sub, so a
phone connected to process A hears about a message that process B accepted. Either way a
subscriber is told *after* the fact and must treat the call as a nudge (re-read the rows): pub/sub
delivers at most once and a process that was down misses what was published meanwhile.

Use it through :func:`get_bus` (one bus per runtime)::

    bus = get_bus(runtime)
    bus.subscribe("device", lambda data: ...)   # data is what was published (JSON-able)
    bus.publish("device", {"device_id": "dev_...", "event": "MessageEnqueued"})
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("relaybox.bus")

Handler = Callable[[Any], None]


class Bus:
    """The interface; ``publish`` never raises (a lost nudge is recovered by the sweeps)."""

    def publish(self, channel: str, data: Any) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def subscribe(self, channel: str, fn: Handler) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        """Stop background work (the Redis listener)."""

    def _deliver(self, handlers: list[Handler], channel: str, data: Any) -> None:
        for fn in handlers:
            try:
                fn(data)
            except Exception:
                log.exception("bus subscriber on %s failed", channel)


class LocalBus(Bus):
    """In-process: subscribers are called synchronously in the publisher's thread."""

    def __init__(self) -> None:
        self._subs: dict[str, list[Handler]] = {}
        self._lock = threading.Lock()

    def publish(self, channel: str, data: Any) -> None:
        with self._lock:
            handlers = list(self._subs.get(channel, ()))
        self._deliver(handlers, channel, data)

    def subscribe(self, channel: str, fn: Handler) -> None:
        with self._lock:
            self._subs.setdefault(channel, []).append(fn)


class RedisBus(Bus):
    """Redis pub/sub; every process (including the publisher) gets each message once.

    Channels are namespaced with ``prefix`` so several installations can share one Redis.
    The listener thread reconnects on its own after Redis restarts.
    """

    def __init__(self, url: str, prefix: str = "relaybox") -> None:
        import redis

        self._redis = redis.Redis.from_url(url)
        self._prefix = prefix + ":bus:"
        self._subs: dict[str, list[Handler]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._confirmed: set[str] = set()
        self._confirmed_cv = threading.Condition()

    def publish(self, channel: str, data: Any) -> None:
        try:
            self._redis.publish(self._prefix + channel, json.dumps(data, separators=(",", ":")))
        except Exception as exc:  # noqa: BLE001 - Redis down: subscribers catch up from the rows
            log.warning("bus publish on %s failed: %s", channel, exc)

    def subscribe(self, channel: str, fn: Handler) -> None:
        with self._lock:
            self._subs.setdefault(channel, []).append(fn)
            if self._thread is None:
                self._thread = threading.Thread(target=self._listen, name="bus-redis", daemon=True)
                self._thread.start()
        # Wait (bounded) until Redis confirmed the subscription, so that a publish made right
        # after subscribe() returns is not missed.
        deadline = time.monotonic() + 5
        with self._confirmed_cv:
            while channel not in self._confirmed and time.monotonic() < deadline:
                self._confirmed_cv.wait(0.1)

    def _listen(self) -> None:
        # The PubSub object is used from this thread only (redis-py's PubSub is not thread-safe):
        # new channels are picked up here from self._subs.
        while not self._stop.is_set():
            pubsub = self._redis.pubsub()
            subscribed: set[str] = set()
            try:
                while not self._stop.is_set():
                    with self._lock:
                        wanted = set(self._subs) - subscribed
                    if wanted:
                        pubsub.subscribe(*(self._prefix + c for c in wanted))
                        subscribed |= wanted
                    msg = pubsub.get_message(timeout=0.1)
                    if msg is None:
                        continue
                    channel = msg["channel"].decode()[len(self._prefix):]
                    if msg["type"] == "subscribe":
                        with self._confirmed_cv:
                            self._confirmed.add(channel)
                            self._confirmed_cv.notify_all()
                        continue
                    if msg["type"] != "message":
                        continue
                    with self._lock:
                        handlers = list(self._subs.get(channel, ()))
                    self._deliver(handlers, channel, json.loads(msg["data"]))
            except Exception as exc:  # noqa: BLE001 - reconnect with a pause
                if self._stop.is_set():
                    break
                log.warning("bus listener lost Redis (%s); reconnecting", exc)
                with self._confirmed_cv:
                    self._confirmed.clear()
                time.sleep(0.5)
            finally:
                try:
                    pubsub.close()
                except Exception:
                    log.debug("bus: closing the pub/sub connection failed", exc_info=True)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(3)


def make_bus(queue_url: str) -> Bus:
    """RedisBus when the queue is Redis (the processes share it), else LocalBus."""
    if queue_url.startswith(("redis://", "rediss://")):
        return RedisBus(queue_url)
    return LocalBus()


def get_bus(runtime: Any) -> Bus:
    """The runtime's bus, created on first use from ``runtime.config.queue``."""
    bus = getattr(runtime, "_relaybox_bus", None)
    if bus is None:
        with _create_lock:
            bus = getattr(runtime, "_relaybox_bus", None)
            if bus is None:
                bus = make_bus(runtime.config.queue)
                runtime._relaybox_bus = bus
    return bus


_create_lock = threading.Lock()
