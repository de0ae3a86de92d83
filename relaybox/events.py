"""The event outbox: rows written inside the caller's transaction, listeners told after commit.

Webhook delivery (and anything else that reacts to events) subscribes with :func:`subscribe`;
it must treat the call as a nudge and read the rows, since a crash between commit and the call
loses the call but never the row.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from relaybox.db import fast_insert
from relaybox.ids import new_id
from relaybox.models import Event
from relaybox.timeutil import now_ms

log = logging.getLogger("relaybox.events")
_listeners: list[Callable[[list[Event]], None]] = []


def subscribe(fn: Callable[[list[Event]], None]) -> None:
    if fn not in _listeners:
        _listeners.append(fn)


def unsubscribe_all() -> None:
    _listeners.clear()


def record(account_id: str | None, type_: str, payload: dict[str, Any], message_id: str | None = None) -> Event:
    """Write an event row (call inside the transaction that made it happen)."""
    return Event.create(
        id=new_id("evt"), account=account_id, type=type_, message_id=message_id,
        payload=payload, created_at=now_ms(),
    )


class Recorded:
    """What listeners get for an event written by :func:`record_many`: the row's values without
    a peewee model per event (listeners read ``type``, ``message_id`` and ``payload``)."""

    __slots__ = ("account_id", "created_at", "id", "message_id", "message_priority", "payload", "type")

    def __init__(self, id: str, account: str | None, type: str, message_id: str | None,
                 payload: Any, created_at: int) -> None:
        self.id, self.account_id, self.type, self.message_id = id, account, type, message_id
        self.payload, self.created_at, self.message_priority = payload, created_at, None


def record_many(rows: list[dict[str, Any]]) -> list[Any]:
    """Bulk form of :func:`record` for batches; each row has account, type, payload, message_id."""
    now = now_ms()
    dicts = [{"id": new_id("evt"), "created_at": now, **r} for r in rows]
    fast_insert(Event, dicts)
    return [Recorded(**d) for d in dicts]


def publish(events: list[Event]) -> None:
    """Tell listeners (after commit). A failing listener is logged, never raised to the caller."""
    if not events:
        return
    for fn in _listeners:
        try:
            fn(events)
        except Exception:
            log.exception("event listener failed")
