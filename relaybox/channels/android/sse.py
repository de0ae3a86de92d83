"""The event hub: one Server-Sent Events stream per phone (ANDROID-PROTOCOL.md §4.9).

Wire format: ``event: <Type>\\ndata: <json or null>\\n\\n``, a ``:keepalive`` comment at least
every 15 s, ``Content-Type: text/event-stream``. Waitress serves each open stream from one of
its worker threads (the WSGI iterator blocks in :meth:`Stream.take`), so the hub grows the
server's thread pool by one per open stream and shrinks it again when the stream ends: phones
never starve the API of threads. Waitress's ``send_bytes`` is 1, so every yielded frame is
written to the socket at once (no buffering of small writes).

A phone has at most one stream: a new one (the app reconnecting after a network change, while
the old TCP connection is still half-open) replaces the old one, which ends at once.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger("relaybox.android.sse")

KEEPALIVE = b":keepalive\n\n"


def frame(event: str, data: dict[str, str] | None = None) -> bytes:
    """One SSE event; ``data`` is a map of strings, or the literal ``null`` (§4.9)."""
    payload = "null" if data is None else json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"event: {event}\ndata: {payload}\n\n".encode()


class Stream:
    """The queue between publishers (any thread) and one stream's WSGI iterator."""

    def __init__(self, device_id: str) -> None:
        self.device_id = device_id
        self.opened_at = time.time()
        self._cv = threading.Condition()
        self._frames: deque[bytes] = deque()
        self._enqueued_waiting = False
        self.closed = False
        self.close_reason = ""

    def put(self, event: str, data: dict[str, str] | None = None) -> None:
        with self._cv:
            if self.closed:
                return
            if event == "MessageEnqueued" and data is None:
                # One pending "there is work" is enough: the phone pulls everything at once.
                if self._enqueued_waiting:
                    return
                self._enqueued_waiting = True
            self._frames.append(frame(event, data))
            self._cv.notify()

    def take(self, timeout: float) -> list[bytes] | None:
        """Frames to write now ([] on timeout), or None once the stream is closed."""
        with self._cv:
            if not self._frames and not self.closed:
                self._cv.wait(timeout)
            if self.closed:
                return None
            out = list(self._frames)
            self._frames.clear()
            self._enqueued_waiting = False
            return out

    def close(self, reason: str) -> None:
        with self._cv:
            if not self.closed:
                self.closed = True
                self.close_reason = reason
            self._cv.notify_all()


class SSEHub:
    """Open streams by device id; publishing is cheap and never blocks on a socket."""

    def __init__(self, runtime: Any, on_change: Callable[[str], None] | None = None) -> None:
        self.runtime = runtime
        self.on_change = on_change
        self._lock = threading.Lock()
        self._streams: dict[str, Stream] = {}

    # -- streams ---------------------------------------------------------------------------------
    def open(self, device_id: str) -> Stream:
        stream = Stream(device_id)
        with self._lock:
            old = self._streams.get(device_id)
            self._streams[device_id] = stream
            self._resize_pool(grow=True)
        if old is not None:
            old.close("replaced by a new connection")
        if self.on_change:
            self.on_change(device_id)
        return stream

    def release(self, stream: Stream) -> None:
        """The stream's iterator ended (client gone, replaced, unpaired or shutting down)."""
        stream.close(stream.close_reason or "ended")
        with self._lock:
            if self._streams.get(stream.device_id) is stream:
                del self._streams[stream.device_id]
            self._resize_pool(grow=False)
        if self.on_change:
            self.on_change(stream.device_id)

    def close_device(self, device_id: str, reason: str) -> None:
        with self._lock:
            stream = self._streams.get(device_id)
        if stream is not None:
            stream.close(reason)

    def close_all(self, reason: str) -> None:
        with self._lock:
            streams = list(self._streams.values())
        for s in streams:
            s.close(reason)

    def is_open(self, device_id: str) -> bool:
        return device_id in self._streams

    def stream_of(self, device_id: str) -> Stream | None:
        return self._streams.get(device_id)

    def count(self) -> int:
        return len(self._streams)

    # -- events ----------------------------------------------------------------------------------
    def publish(self, device_id: str, event: str, data: dict[str, str] | None = None) -> bool:
        """Queue an event for the phone's open stream; False when it has none."""
        stream = self._streams.get(device_id)
        if stream is None:
            return False
        stream.put(event, data)
        return True

    # -- waitress threads ------------------------------------------------------------------------
    def server_stopping(self) -> bool:
        """Waitress is shutting down (its ``shutdown`` asked every thread to stop): streams end,
        or its shutdown would wait for them."""
        dispatcher = getattr(getattr(self.runtime, "http_server", None), "task_dispatcher", None)
        if dispatcher is None:
            return False
        return len(getattr(dispatcher, "threads", ())) <= getattr(dispatcher, "stop_count", 0)

    def _resize_pool(self, grow: bool) -> None:
        """Keep ``threads`` free for the API on top of one thread per open stream (lock held).

        Grows when a stream opens, shrinks when one ends; never grows a pool that waitress is
        shutting down (its ``shutdown`` sets the count to 0 while streams are still ending).
        """
        server = getattr(self.runtime, "http_server", None)
        dispatcher = getattr(server, "task_dispatcher", None)
        if dispatcher is None or not hasattr(dispatcher, "set_thread_count"):
            return
        target = self.runtime.config.threads + len(self._streams)
        running = len(getattr(dispatcher, "threads", ())) - getattr(dispatcher, "stop_count", 0)
        if (grow and running >= target) or (not grow and running <= target):
            return
        try:
            dispatcher.set_thread_count(target)
        except Exception:
            log.exception("could not resize the waitress thread pool")
