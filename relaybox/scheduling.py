"""``send_at``: release scheduled messages on time, not at the next housekeeping pass.

A scheduled message is a ``scheduled`` row with its ``send_at``; nothing else holds it, so it
survives any restart and the first pass after start-up releases whatever came due meanwhile.
The housekeeper releases due messages every ``sweep_interval`` too; this thread sleeps exactly
until the earliest ``send_at`` (woken early when a sooner one is accepted, and at least every
half second, which also follows a test clock that jumps), releases what is due, routes it and
wakes the channels, so a message fires within milliseconds of its time.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import peewee as pw

from relaybox import messages
from relaybox.models import Message
from relaybox.timeutil import now_ms

if TYPE_CHECKING:  # pragma: no cover
    from relaybox.runtime import Runtime

log = logging.getLogger("relaybox.scheduling")
MAX_SLEEP = 0.5


class Scheduler:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._cv = threading.Condition()
        self._next: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # What to do with released messages; relaybox.routing hands them to the pacer thread
        # so that this one goes straight back to the clock.
        self.on_released: Callable[[], None] = self._route_now

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._cv:
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(3)
            self._thread = None

    def after_accept(self, rows: list[Any]) -> None:
        """``runtime.after_accept``: a message scheduled sooner than the next wake-up wakes us."""
        soonest = min((m.send_at for m in rows if m.status == "scheduled" and m.send_at), default=None)
        if soonest is None:
            return
        with self._cv:
            if self._next is None or soonest < self._next:
                self._next = soonest
                self._cv.notify_all()

    def release_due(self) -> int:
        now = now_ms()
        released = messages.release_scheduled(now)
        if released:
            log.info("released %d scheduled message(s)", len(released))
            self.on_released()
        return len(released)

    def _route_now(self) -> None:
        self.rt.router.route_pending()
        for ch in list(self.rt.channels.values()):
            ch.notify()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                while self.release_due() >= 1000:  # a large batch: the next thousand at once
                    pass
                nxt = Message.select(pw.fn.MIN(Message.send_at)).where(Message.status == "scheduled").scalar()
            except Exception:
                log.exception("scheduler pass failed")
                nxt = None
            with self._cv:
                self._next = nxt
                wait = MAX_SLEEP if nxt is None else max(0.002, min(MAX_SLEEP, (nxt - now_ms()) / 1000))
                if not self._stop.is_set():
                    self._cv.wait(wait)
