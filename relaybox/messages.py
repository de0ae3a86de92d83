"""The message lifecycle: accept, claim, transition (timeline row + event), expire, recover.

Every status change goes through :func:`transition` (or the bulk forms below), which writes the
message row, one timeline row and one ``message.status`` event in one transaction. A transition
that is not allowed from the current state (a duplicate or late report) changes nothing and
returns False, so reports can be replayed safely.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import peewee as pw

from relaybox import events
from relaybox.db import db, fast_insert, for_update, is_sqlite, write_tx
from relaybox.models import PRIORITY_NAMES, Message, MessageEvent
from relaybox.timeutil import iso, now_ms

log = logging.getLogger("relaybox.messages")

TERMINAL = frozenset({"delivered", "failed", "undelivered", "expired", "cancelled"})
# The states a message can move to from each state. "queued" from "dispatched" is a failover:
# only allowed when the channel proved nothing went out (see requeue_for_failover).
ALLOWED: dict[str, frozenset[str]] = {
    "accepted": frozenset({"queued", "scheduled", "failed"}),
    "scheduled": frozenset({"queued", "cancelled", "expired"}),
    "queued": frozenset({"dispatched", "expired", "cancelled", "failed"}),
    "dispatched": frozenset({"sent", "delivered", "failed", "undelivered", "cancelled", "queued", "expired"}),
    "sent": frozenset({"delivered", "undelivered", "failed"}),
}
# A ``failed`` whose outcome was really unknown (a modem timed out after Ctrl-Z, or relaybox
# stopped while the modem had the message) may still be proven by a delivery report: it moves
# on to ``delivered`` / ``undelivered`` (one more timeline row and webhook) and loses the code.
PROVABLE_FAILURES = frozenset({"MODEM_UNCONFIRMED"})
PROVEN_BY_REPORT = frozenset({"delivered", "undelivered"})
STATUSES = ("accepted", "scheduled", "queued", "dispatched", "sent", "delivered",
            "failed", "undelivered", "expired", "cancelled")
# Events that become webhooks (CONTRACT: one status webhook per transition, "accepted" is implied).
_TIMESTAMP_COLUMN = {"queued": "queued_at", "dispatched": "dispatched_at", "sent": "sent_at",
                     "delivered": "delivered_at"}


def status_payload(m: Message, status: str, at: int) -> dict[str, Any]:
    """The ``message.status`` webhook body of the API reference, plus ``sequence``."""
    return {
        "event": "message.status",
        "message_id": m.id,
        "client_reference_id": m.client_reference_id,
        "status": status,
        "to": m.to_number,
        "from": m.from_number,
        "direction": m.direction,
        "timestamp": iso(at, millis=False),
        "unix_timestamp": at,
        "error_code": m.error_code,
        "error_message": m.error_message,
        "metadata": m.metadata,
        "attempts": m.attempts,
        "sequence": m.sequence,
    }


def status_event(m: Any, status: str, at: int) -> dict[str, Any]:
    """The ``message.status`` event row for :func:`relaybox.events.record_many`."""
    return {"account": m.account_id, "type": "message.status", "message_id": m.id,
            "payload": status_payload(m, status, at)}


@dataclass
class NewMessage:
    """A validated message ready to be written (see :func:`accept`)."""

    account_id: str
    to: str
    body: str
    segments: int
    encoding: str
    from_number: str | None = None
    client_reference_id: str | None = None
    metadata: dict[str, Any] | None = None
    status_callback: str | None = None
    device_hint: str | None = None
    channel_id: str | None = None
    priority: int = 2
    send_at: int | None = None
    expires_at: int | None = None
    batch_id: str | None = None
    batch_index: int | None = None
    id: str = ""
    extra_events: list[dict[str, Any]] = field(default_factory=list)


# -- the text a channel transmits ---------------------------------------------------------------
class NotSendable(Exception):
    """The message must not go out (e.g. its OTP was superseded or expired meanwhile).

    A channel that gets this from :func:`sending_body` transmits nothing and ends the message
    with ``transition(m.id, exc.status, error_code=exc.error_code, error_message=str(exc),
    expect_channel=<its id>)``.
    """

    def __init__(self, message: str, *, status: str = "cancelled", error_code: str = "WITHDRAWN") -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code


_body_sources: list[Callable[[Message], str | None]] = []


def add_body_source(fn: Callable[[Message], str | None]) -> None:
    """Register a source of the real text for some messages (None: not mine, use the row)."""
    if fn not in _body_sources:
        _body_sources.append(fn)


def sending_body(m: Message) -> str:
    """The text to transmit for ``m``. Channels call this right before sending, never read
    ``Message.body`` directly: some rows keep only a redacted body (an OTP code is never stored
    in clear) and the feature that owns them supplies the real text here. May raise
    :class:`NotSendable`."""
    for source in _body_sources:
        text = source(m)
        if text is not None:
            return text
    return m.body


def accept(items: Iterable[NewMessage], now: int | None = None) -> tuple[list[Message], list[events.Event]]:
    """Write accepted messages, their timeline rows and events. Call inside a transaction.

    A message lands as ``queued`` (or ``scheduled`` with a future ``send_at``); its timeline
    gets ``accepted`` then ``queued``/``scheduled``. Returns the rows and the event rows to
    :func:`relaybox.events.publish` after commit.
    """
    now = now or now_ms()
    rows: list[Message] = []
    msg_rows: list[dict[str, Any]] = []
    timeline: list[dict[str, Any]] = []
    evs: list[dict[str, Any]] = []
    for it in items:
        status = "scheduled" if it.send_at and it.send_at > now else "queued"
        fields = {
            "id": it.id, "account": it.account_id, "client_reference_id": it.client_reference_id or it.id,
            "direction": "outbound", "to_number": it.to, "from_number": it.from_number, "body": it.body,
            "status": status, "segments": it.segments, "encoding": it.encoding, "metadata": it.metadata,
            "status_callback": it.status_callback, "batch": it.batch_id, "batch_index": it.batch_index,
            "device_hint": it.device_hint, "channel_id": it.channel_id, "priority": it.priority,
            "send_at": it.send_at, "expires_at": it.expires_at, "attempts": 0, "sequence": 2, "report_expected": True,
            "created_at": now, "queued_at": now if status == "queued" else None, "updated_at": now,
        }
        msg_rows.append(fields)
        m = Message(**fields)
        rows.append(m)
        timeline.append({"message": it.id, "seq": 1, "status": "accepted", "at": now, "channel_id": None})
        timeline.append({"message": it.id, "seq": 2, "status": status, "at": now, "channel_id": it.channel_id})
        evs.append(status_event(m, status, now))
    fast_insert(Message, msg_rows)
    fast_insert(MessageEvent, timeline)
    return rows, events.record_many(evs)


INBOUND_NUMBER_MAX = 20


def store_inbound(*, account_id: str, channel_id: str, sender: str, recipient: str, body: str,
                  received_at: int | None = None, detail: dict[str, Any] | None = None,
                  ) -> tuple[Message, events.Event]:
    """Write one received SMS, the same way for every channel (phones, modems): a ``Message``
    row (``direction`` inbound, status ``received``, ``from`` the sender, ``to`` the channel's
    own number), one ``received`` timeline row carrying ``detail``, and a ``message.inbound``
    event in the API reference's webhook shape (plus ``device_id``).

    Call inside a write transaction; publish the returned event after commit. The caller makes
    storing idempotent (channels re-deliver) and normalises numbers; ``received_at`` (ms) later
    than now is clamped to now.
    """
    from relaybox.ids import new_id
    from relaybox.sms.pdu import analyze

    now = now_ms()
    received = min(received_at, now) if received_at else now
    try:
        info = analyze(body) if body else None
    except ValueError:  # e.g. a lone surrogate from a broken concatenation
        info = None
    mid = new_id("in")
    m = Message.create(
        id=mid, account=account_id, client_reference_id=mid, direction="inbound",
        to_number=(recipient or "")[:INBOUND_NUMBER_MAX], from_number=(sender or "")[:INBOUND_NUMBER_MAX],
        body=body, status="received", segments=info.segments if info else 1,
        encoding=info.encoding if info else "GSM-7", channel_id=channel_id, attempts=0, sequence=1,
        report_expected=False, created_at=received, updated_at=now,
    )
    MessageEvent.insert(message=mid, seq=1, status="received", at=received, channel_id=channel_id,
                        detail=detail or None).execute()
    payload = {
        "event": "message.inbound",
        "message_id": mid,
        "from": m.from_number,
        "to": m.to_number,
        "body": body,
        "timestamp": iso(received, millis=False),
        "unix_timestamp": received,
        "media_urls": [],
        "device_id": channel_id,
    }
    log.info("message %s received by %s from %s", mid, channel_id, m.from_number)
    return m, events.record(account_id, "message.inbound", payload, mid)


def _apply(m: Message, new: str, at: int, *, error_code: str | None, error_message: str | None,
           channel_id: str | None, detail: dict[str, Any] | None) -> dict[str, Any]:
    """Mutate ``m`` for the transition and return the timeline row (caller saves both)."""
    m.status = new
    m.sequence += 1
    m.updated_at = at
    col = _TIMESTAMP_COLUMN.get(new)
    if col and getattr(m, col) is None:
        setattr(m, col, at)
    if new == "dispatched":
        m.attempts += 1
        m.error_code = m.error_message = None
    if error_code is not None:
        m.error_code = error_code
    if error_message is not None:
        m.error_message = error_message
    if channel_id is not None:
        m.channel_id = channel_id
    return {"message": m.id, "seq": m.sequence, "status": new, "at": at,
            "channel_id": channel_id or m.channel_id, "detail": detail}


def _transition_in_tx(message_id: str, new: str, **kwargs: Any) -> events.Event | None:
    """The body of :func:`transition`, inside the caller's write transaction."""
    evs = _transitions_in_tx([(message_id, new, kwargs)])
    return evs[0] if evs else None


# The columns a transition may change (see _apply); written with one cached UPDATE.
_MUTABLE = ("status", "sequence", "updated_at", "queued_at", "dispatched_at", "sent_at", "delivered_at",
            "attempts", "error_code", "error_message", "channel_id")
_update_sql: list[str] = []


def _save_transitions(changed: list[Any]) -> None:
    if not _update_sql:
        p = db.obj.param
        sets = ", ".join(f'"{getattr(Message, c).column_name}" = {p}' for c in _MUTABLE)
        _update_sql.append(f'UPDATE "message" SET {sets} WHERE "id" = {p}')
    fields = [getattr(Message, c) for c in _MUTABLE]
    db.cursor().executemany(_update_sql[0], [
        tuple(f.db_value(getattr(m, f.name)) for f in fields) + (m.id,) for m in changed])


_ROW_FIELDS = ("id", "account", "client_reference_id", "to_number", "from_number", "direction", "metadata",
               "priority", *_MUTABLE)


class _Row:
    """The columns of a message a transition reads and writes, without a peewee model per row
    (building models was most of the CPU of a channel's status ticks)."""

    __slots__ = tuple(("account_id" if f == "account" else f) for f in _ROW_FIELDS)

    def __init__(self, values: tuple[Any, ...]) -> None:
        for name, v in zip(self.__slots__, values):
            setattr(self, name, v)


def _transitions_in_tx(moves: list[tuple[str, str, dict[str, Any]]],
                       made: list[int] | None = None) -> list[events.Event]:
    """Apply ``(message_id, new, kwargs)`` moves in order, set-based: one SELECT of the rows, one
    of their last timeline times, one UPDATE statement, one INSERT of timeline rows and one of
    events — whatever the number of moves (a channel reporting 500 messages is one tick).
    Same rules as one :func:`transition` after another; returns the events of the moves made
    (and appends their indexes in ``moves`` to ``made``)."""
    ids = list(dict.fromkeys(mid for mid, _, _ in moves))
    rows: dict[str, _Row] = {}
    last: dict[str, int] = {}
    for i in range(0, len(ids), 500):
        chunk = ids[i:i + 500]
        q = Message.select(*(getattr(Message, f) for f in _ROW_FIELDS)).where(Message.id << chunk)
        rows.update((t[0], _Row(t)) for t in for_update(q).tuples())
        last.update(MessageEvent.select(MessageEvent.message, pw.fn.MAX(MessageEvent.at))
                    .where(MessageEvent.message << chunk).group_by(MessageEvent.message).tuples())
    changed: dict[str, _Row] = {}
    timeline: list[dict[str, Any]] = []
    ev_rows: list[dict[str, Any]] = []
    priorities: list[int] = []
    for index, (message_id, new, kw) in enumerate(moves):
        m = rows.get(message_id)
        if m is None:
            continue
        proven = (m.status == "failed" and m.error_code in PROVABLE_FAILURES and new in PROVEN_BY_REPORT)
        if not proven and new not in ALLOWED.get(m.status, ()):
            continue
        expect = kw.get("expect_channel")
        if expect is not None and m.channel_id != expect:
            continue
        if proven:
            m.error_code = m.error_message = None
        # Timeline timestamps never go back, even if a device's clock does.
        at = max(kw.get("at") or now_ms(), last.get(message_id) or 0)
        last[message_id] = at
        timeline.append(_apply(m, new, at, error_code=kw.get("error_code"), error_message=kw.get("error_message"),
                               channel_id=kw.get("channel_id"), detail=kw.get("detail")))
        changed[message_id] = m
        ev_rows.append(status_event(m, new, at))
        priorities.append(m.priority)
        if made is not None:
            made.append(index)
    if not changed:
        return []
    _save_transitions(list(changed.values()))
    fast_insert(MessageEvent, timeline)
    evs = events.record_many(ev_rows)
    for ev, priority in zip(evs, priorities):
        ev.message_priority = priority  # not stored: lets listeners skip what isn't theirs
    return evs


def transition(
    message_id: str,
    new: str,
    *,
    at: int | None = None,
    error_code: str | None = None,
    error_message: str | None = None,
    channel_id: str | None = None,
    expect_channel: str | None = None,
    detail: dict[str, Any] | None = None,
) -> bool:
    """Move one message to ``new`` if allowed; write timeline + event. True when it moved."""
    with write_tx():
        ev = _transition_in_tx(message_id, new, at=at, error_code=error_code, error_message=error_message,
                               channel_id=channel_id, expect_channel=expect_channel, detail=detail)
    if ev is None:
        return False
    events.publish([ev])
    log.info("message %s %s%s", message_id, new, f" ({error_code})" if error_code else "")
    return True


def transition_many(moves: list[tuple[str, str, dict[str, Any]]]) -> list[bool]:
    """Several transitions ``(message_id, new, kwargs)`` in one write transaction.

    For channels that learn about many messages at once (the sandbox's radio ticks, a batch of
    reports): one commit instead of one per message, same rules as :func:`transition`.
    """
    made: list[int] = []
    with write_tx():
        evs = _transitions_in_tx(moves, made)
    events.publish(evs)
    if log.isEnabledFor(logging.INFO):
        for i in made:
            log.info("message %s %s", moves[i][0], moves[i][1])
    done = set(made)
    return [i in done for i in range(len(moves))]


def claim_for_channel(channel_id: str, limit: int = 100, order: str = "fifo") -> list[Message]:
    """Atomically move this channel's queued messages to ``dispatched`` and return them.

    The conditional UPDATE (status still queued, channel still this one) is what guarantees two
    workers never send the same message. Highest priority first, FIFO (or LIFO) within it.
    """
    now = now_ms()
    claimed: list[Message] = []
    with write_tx():
        where = ((Message.status == "queued") & (Message.channel_id == channel_id)
                 & ((Message.send_at.is_null()) | (Message.send_at <= now)))
        # Traffic control (daily caps, paused queues) narrows the claim, inside this transaction.
        from relaybox import runtime

        for policy in (runtime.current.claim_policies if runtime.current else ()):
            limit, extra = policy(channel_id, limit)
            if extra is not None:
                where &= extra
        if limit <= 0:
            return []
        id_order = Message.id.desc() if order == "lifo" else Message.id
        candidates = list(Message.select().where(where).order_by(Message.priority, id_order).limit(limit))
        if not candidates:
            return []
        ids = [m.id for m in candidates]
        update = (Message.update(status="dispatched", attempts=Message.attempts + 1,
                                 sequence=Message.sequence + 1, dispatched_at=now, updated_at=now,
                                 error_code=None, error_message=None)
                  .where(Message.id.in_(ids) & (Message.status == "queued") & (Message.channel_id == channel_id)))
        if is_sqlite():
            # BEGIN IMMEDIATE: no other writer since the SELECT above, every candidate moves.
            update.execute()
            won = set(ids)
        else:
            # PostgreSQL: another process may have claimed some meanwhile; keep what we won.
            won = {mid for (mid,) in update.returning(Message.id).tuples().execute()}
        timeline: list[dict[str, Any]] = []
        ev_rows: list[dict[str, Any]] = []
        for m in candidates:
            if m.id not in won:
                continue
            m.status, m.attempts, m.sequence = "dispatched", m.attempts + 1, m.sequence + 1
            m.dispatched_at = m.updated_at = now
            m.error_code = m.error_message = None
            timeline.append({"message": m.id, "seq": m.sequence, "status": "dispatched", "at": now,
                             "channel_id": channel_id})
            ev_rows.append(status_event(m, "dispatched", now))
            claimed.append(m)
        fast_insert(MessageEvent, timeline)
        evs = events.record_many(ev_rows)
    events.publish(evs)
    for m in claimed:
        log.info("message %s dispatched to %s (attempt %d)", m.id, channel_id, m.attempts)
    return claimed


def requeue_for_failover(message_id: str, channel_id: str, error_code: str, error_message: str,
                         max_attempts: int) -> str:
    """A channel proved nothing went out: queue again for another channel, or fail for good.

    Returns the new status ("queued" or "failed"). Never call this when the message may
    have been sent.
    """
    m = Message.get_or_none(Message.id == message_id)
    if m is None or m.status != "dispatched" or m.channel_id != channel_id:
        return m.status if m else "missing"
    if m.attempts >= max_attempts:
        transition(message_id, "failed", error_code=error_code, error_message=error_message,
                   expect_channel=channel_id)
        return "failed"
    with write_tx():
        m = for_update(Message.select().where(Message.id == message_id)).get()
        if m.status != "dispatched" or m.channel_id != channel_id:
            return m.status
        at = now_ms()
        row = _apply(m, "queued", at, error_code=error_code, error_message=error_message,
                     channel_id=None, detail={"failover_from": channel_id})
        m.channel_id = None  # let the router choose again (it avoids the failed channel)
        m.save()
        MessageEvent.insert(row).execute()
        ev = events.record(m.account_id, "message.status", status_payload(m, "queued", at), m.id)
    events.publish([ev])
    return "queued"


def expire_due(now: int | None = None, timeout_codes: dict[str, str] | None = None) -> int:
    """TTL passed: waiting messages end ``expired``; handed-off ones that never reported end
    ``failed`` with the channel's timeout code (DEVICE_TIMEOUT for phones)."""
    now = now or now_ms()
    moved = 0
    waiting = (Message.select(Message.id).where(
        (Message.status << ["queued", "scheduled"]) & (Message.expires_at < now)).limit(500))
    for m in waiting:
        moved += transition(m.id, "expired", error_code="TTL_EXPIRED",
                            error_message="time to live passed before sending")
    stuck = (Message.select(Message.id, Message.channel_id).where(
        (Message.status == "dispatched") & (Message.expires_at < now)).limit(500))
    for m in stuck:
        code = (timeout_codes or {}).get(m.channel_id or "", "DEVICE_TIMEOUT")
        moved += transition(m.id, "failed", error_code=code,
                            error_message="handed to the channel, no result before the TTL")
    return moved


def release_scheduled(now: int | None = None) -> list[str]:
    """``scheduled`` messages whose ``send_at`` has come move to ``queued``."""
    now = now or now_ms()
    due = [m.id for m in Message.select(Message.id).where(
        (Message.status == "scheduled") & (Message.send_at <= now)).order_by(Message.send_at).limit(1000)]
    return [mid for mid in due if transition(mid, "queued")]


def view(m: Message, channel_names: dict[str, str] | None = None) -> dict[str, Any]:
    """The API's message object (both ``id`` and ``request_id``, as CONTRACT.md says)."""
    return {
        "id": m.id,
        "request_id": m.id,
        "client_reference_id": m.client_reference_id,
        "status": m.status,
        "direction": m.direction,
        "to": m.to_number,
        "from": m.from_number,
        "body": m.body,
        "segments": m.segments,
        "encoding": m.encoding,
        "priority": PRIORITY_NAMES.get(m.priority, "normal"),
        "metadata": m.metadata,
        "status_callback": m.status_callback,
        "batch_id": m.batch_id,
        "device_id": m.channel_id,
        "device_name": (channel_names or {}).get(m.channel_id or "") if m.channel_id else None,
        "attempts": m.attempts,
        "error_code": m.error_code,
        "error_message": m.error_message,
        "created_at": iso(m.created_at),
        "queued_at": iso(m.queued_at),
        "send_at": iso(m.send_at),
        "expires_at": iso(m.expires_at),
        "dispatched_at": iso(m.dispatched_at),
        "sent_at": iso(m.sent_at),
        "delivered_at": iso(m.delivered_at),
        "updated_at": iso(m.updated_at),
    }


def cancel(message_id: str, channels: dict[str, Any]) -> str:
    """Cancel a message that has not been sent. Returns what happened:

    ``cancelled`` (it is now cancelled), ``requested`` (it is on a channel that will confirm
    or refuse — e.g. a phone gets the protocol's ``Cancelling`` state), or ``too_late`` (it was
    sent, or it already ended).
    """
    m = Message.get_or_none(Message.id == message_id)
    if m is None:
        return "too_late"
    if m.status in ("scheduled", "queued") and transition(message_id, "cancelled", error_code="CANCELLED",
                                                           error_message="cancelled by request"):
        return "cancelled"
    m = Message.get_by_id(message_id)  # it may have been claimed meanwhile
    if m.status == "dispatched":
        ch = channels.get(m.channel_id or "")
        if ch is not None and ch.cancel(message_id):
            if transition(message_id, "cancelled", error_code="CANCELLED", error_message="cancelled by request",
                          expect_channel=m.channel_id):
                return "cancelled"
        elif ch is not None:
            return "requested"
    return "cancelled" if Message.get_by_id(message_id).status == "cancelled" else "too_late"
