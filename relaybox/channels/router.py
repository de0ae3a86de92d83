"""The router: which channel sends a message.

A message goes to the channel that ``device_id`` or ``from`` names, else to the best online,
enabled channel (fewest messages waiting on it, round-robin among equals). Unassigned queued
messages (no channel online at accept time, or a failover) are routed by :meth:`route_pending`,
which the housekeeper calls every sweep and channels call when they come online.
"""
from __future__ import annotations

import itertools
import logging
import threading
from collections import Counter
from typing import TYPE_CHECKING

from relaybox.db import write_tx
from relaybox.errors import ApiError
from relaybox.models import Message, MessageEvent

if TYPE_CHECKING:  # pragma: no cover
    from relaybox.channels.base import Channel
    from relaybox.runtime import Runtime

log = logging.getLogger("relaybox.router")


class Router:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._rr = itertools.count()
        self._lock = threading.Lock()
        # Messages assigned but not yet claimed, per channel (an estimate kept in memory;
        # refreshed from the database by route_pending).
        self.waiting: Counter[str] = Counter()

    # -- choosing -------------------------------------------------------------------------
    def channel_for_number(self, number: str) -> Channel | None:
        for ch in self.runtime.channels.values():
            if number in ch.numbers():
                return ch
        return None

    def resolve_pin(self, device_id: str | None, from_number: str | None) -> str | None:
        """Validate an explicit ``device_id`` / ``from`` at accept time (INVALID_DEVICE if not usable)."""
        chosen: Channel | None = None
        if device_id:
            chosen = self.runtime.channels.get(device_id)
            if chosen is None:
                raise ApiError("INVALID_DEVICE", f"device_id: no device {device_id}", field="device_id")
        if from_number:
            owner = self.channel_for_number(from_number)
            if owner is None:
                raise ApiError("INVALID_DEVICE", f"from: {from_number} is not a number of your channels",
                               field="from")
            if chosen is not None and owner.id != chosen.id:
                raise ApiError("INVALID_DEVICE", "from: the number belongs to another device", field="from")
            chosen = owner
        if chosen is None:
            return None
        if not (chosen.enabled() and chosen.online()):
            field = "device_id" if device_id else "from"
            raise ApiError("INVALID_DEVICE", f"{field}: device {chosen.name} is offline or disabled", field=field)
        return chosen.id

    def best_channel(self, exclude: set[str] | None = None) -> str | None:
        candidates = [ch for ch in self.runtime.channels.values()
                      if self.runtime.usable(ch) and ch.id not in (exclude or set())]
        if not candidates:
            return None
        with self._lock:
            least = min(self.waiting[ch.id] for ch in candidates)
            equal = [ch for ch in candidates if self.waiting[ch.id] == least]
            ch = equal[next(self._rr) % len(equal)]
            self.waiting[ch.id] += 1
        return ch.id

    def assigned(self, channel_id: str, n: int = 1) -> None:
        with self._lock:
            self.waiting[channel_id] += n

    def claimed(self, channel_id: str, n: int) -> None:
        with self._lock:
            self.waiting[channel_id] = max(0, self.waiting[channel_id] - n)

    @staticmethod
    def _failed_on(message_id: str) -> set[str]:
        """The channel a requeued message came back from (its last timeline row says)."""
        row = (MessageEvent.select(MessageEvent.detail).where(MessageEvent.message == message_id)
               .order_by(MessageEvent.seq.desc()).first())
        origin = (row.detail or {}).get("failover_from") if row is not None else None
        return {origin} if isinstance(origin, str) else set()

    # -- background routing ---------------------------------------------------------------
    def route_pending(self, limit: int = 2000) -> int:
        """Assign queued messages that have no (usable) channel. Returns how many moved."""
        online = {cid for cid, ch in self.runtime.channels.items() if self.runtime.usable(ch)}
        # A message waiting on a channel that went away or offline before claiming it is
        # released (unless the caller pinned it to that channel).
        stale = (Message.update(channel_id=None)
                 .where((Message.status == "queued") & Message.channel_id.is_null(False)
                        & Message.device_hint.is_null() & Message.channel_id.not_in(list(online) or [""]))
                 .execute())
        if not online:
            return stale
        rows = list(Message.select(Message.id, Message.from_number, Message.device_hint, Message.error_code)
                    .where((Message.status == "queued") & Message.channel_id.is_null())
                    .order_by(Message.priority, Message.id).limit(limit))
        touched: Counter[str] = Counter()
        with write_tx():
            for m in rows:
                if m.device_hint:
                    target = m.device_hint if m.device_hint in online else None
                elif m.from_number:
                    owner = self.channel_for_number(m.from_number)
                    target = owner.id if owner and owner.id in online else None
                elif m.error_code:
                    # A failover (requeue_for_failover): prefer another channel than the one
                    # that just could not send it; fall back to it when it is the only one.
                    target = self.best_channel(exclude=self._failed_on(m.id)) or self.best_channel()
                else:
                    target = self.best_channel()
                if target is None:
                    continue
                n = (Message.update(channel_id=target)
                     .where((Message.id == m.id) & (Message.status == "queued") & Message.channel_id.is_null())
                     .execute())
                if n:
                    touched[target] += 1
        for cid in touched:
            ch = self.runtime.channels.get(cid)
            if ch is not None:
                ch.notify()
        return stale + sum(touched.values())
