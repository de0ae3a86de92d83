"""Handing messages to a phone (``GET /message``) and taking its reports (``PATCH /message``).

The rules (issue "No message lost, none sent twice"):

* A pull claims this phone's queued messages with ``claim_for_channel`` (queued → dispatched,
  atomically; ``attempts`` counts that one hand-off).
* A message handed over but not yet reported is served again on the next pull (the app
  de-duplicates by id, §6); that is not a second hand-off and changes nothing.
* A dispatched message is never given to another channel: without a report it stays
  ``dispatched`` until its TTL, then the housekeeper fails it with ``DEVICE_TIMEOUT``.
* Reports: Pending/Processed → already ``dispatched``; Sent → ``sent``; Delivered → ``delivered``;
  Failed → ``failed`` with the recipient's error; Cancelled → ``cancelled``. The phone's own
  timestamps (``states``) become the timeline times, kept between the hand-off and now.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import peewee as pw

from relaybox import messages
from relaybox.channels.android.models import DeviceMessage
from relaybox.channels.android.protocol import StateUpdateIn, message_dto, parse_date
from relaybox.db import write_tx
from relaybox.failover import android_nothing_sent
from relaybox.models import Message
from relaybox.timeutil import now_ms

if TYPE_CHECKING:  # pragma: no cover
    from relaybox.channels.android.channel import AndroidChannel

log = logging.getLogger("relaybox.android")

MAX_PULL = 100
FAILED_CODE = "DEVICE_SEND_FAILED"


def _text_for(ch: AndroidChannel, m: Message) -> str | None:
    """The text to send, or None when the message must not go out (it is ended here)."""
    sending_body = getattr(messages, "sending_body", None)
    if sending_body is None:
        return m.body
    not_sendable = getattr(messages, "NotSendable", ())
    try:
        return sending_body(m)
    except not_sendable as exc:  # type: ignore[misc]
        messages.transition(m.id, exc.status, error_code=exc.error_code, error_message=str(exc),
                            expect_channel=ch.id)
        ch.area.signal(ch.id, "MessageCancelled", {"messageId": m.id})
        log.info("message %s not sent by %s: %s", m.id, ch.id, exc)
        return None


def pull(ch: AndroidChannel, order: str) -> list[dict[str, Any]]:
    """This phone's pending messages (≤ 100): unreported ones again, then newly claimed ones."""
    lifo = order == "lifo"
    id_order = Message.id.desc() if lifo else Message.id
    again = list(
        Message.select(Message, DeviceMessage.cancel_at.alias("cancel_at"))
        .join(DeviceMessage, pw.JOIN.LEFT_OUTER, on=(DeviceMessage.message_id == Message.id))
        .where((Message.status == "dispatched") & (Message.channel_id == ch.id)
               & (DeviceMessage.reported_at.is_null() | DeviceMessage.cancel_at.is_null(False)))
        .order_by(Message.priority, id_order).limit(MAX_PULL).objects())
    claimed: list[Message] = []
    # Claiming takes the write lock: only when something waits (a read costs no lock in WAL).
    waiting = Message.select(Message.id).where(
        (Message.status == "queued") & (Message.channel_id == ch.id)).limit(1).exists()
    if waiting and ch.enabled() and len(again) < MAX_PULL:
        # Always FIFO within a priority (the router's promise); `order` only sorts the answer.
        claimed = messages.claim_for_channel(ch.id, limit=MAX_PULL - len(again), order="fifo")
        if claimed:
            ch.area.runtime.router.claimed(ch.id, len(claimed))
    out: list[tuple[Message, dict[str, Any]]] = []
    for m in again:
        cancelling = getattr(m, "cancel_at", None) is not None
        text = m.body if cancelling else _text_for(ch, m)
        if text is None:
            continue
        out.append((m, message_dto(m, text, sim_number=ch.sim_for(m.from_number),
                                   state="Cancelling" if cancelling else "Pending")))
    for m in claimed:
        text = _text_for(ch, m)
        if text is None:
            continue
        out.append((m, message_dto(m, text, sim_number=ch.sim_for(m.from_number))))
    out.sort(key=lambda pair: pair[0].id, reverse=lifo)
    out.sort(key=lambda pair: pair[0].priority)  # stable: priority first, then the id order
    if claimed:
        log.info("device %s pulled %d new message(s)%s", ch.id, len(claimed),
                 f" and {len(again)} unreported again" if again else "")
    elif again:
        log.info("device %s pulled %d unreported message(s) again", ch.id, len(again))
    return [dto for _, dto in out]


def _digits(number: str) -> str:
    return "".join(c for c in number if c.isdigit())


def _clamp(at: int | None, m: Message, now: int) -> int:
    """A phone's clock may be off: keep its time between the hand-off and now."""
    if at is None:
        return now
    return min(max(at, m.dispatched_at or m.created_at or 0), now)


def apply_report(ch: AndroidChannel, item: StateUpdateIn) -> None:
    """One ``PATCH /message`` element. Unknown or foreign ids are ignored (§4.5)."""
    m = Message.get_or_none(Message.id == item.id)
    if m is None or m.channel_id != ch.id or m.direction != "outbound":
        return
    state, error = item.state, None
    mine = [r for r in item.recipients if _digits(r.phoneNumber) == _digits(m.to_number)]
    if mine:
        state, error = mine[0].state or state, mine[0].error
    elif len(item.recipients) == 1:
        state, error = item.recipients[0].state or state, item.recipients[0].error
    now = now_ms()
    if m.status == "dispatched":
        # The first report stops the re-serving on pulls (later ones change nothing here).
        row = DeviceMessage.get_or_none(DeviceMessage.message_id == m.id)
        if row is None or row.reported_at is None:
            with write_tx():
                n = (DeviceMessage.update(reported_at=now, last_state=state)
                     .where(DeviceMessage.message_id == m.id).execute())
                if not n:
                    DeviceMessage.insert(message_id=m.id, device_id=ch.id, reported_at=now,
                                         last_state=state).on_conflict_ignore().execute()
    times = {k: parse_date(v) for k, v in item.states.items()}
    if state == "Sent":
        if m.status == "dispatched":
            messages.transition(m.id, "sent", at=_clamp(times.get("Sent"), m, now), expect_channel=ch.id)
    elif state == "Delivered":
        if m.status == "dispatched":
            messages.transition(m.id, "sent", at=_clamp(times.get("Sent") or times.get("Delivered"), m, now),
                                expect_channel=ch.id)
        if m.status in ("dispatched", "sent"):
            messages.transition(m.id, "delivered", at=_clamp(times.get("Delivered"), m, now),
                                expect_channel=ch.id)
    elif state == "Failed":
        reason = (error or "the phone reported the send as failed")[:1000]
        pinned = bool(m.device_hint or m.from_number)  # the caller wants this phone, no other
        if m.status == "dispatched" and not pinned and android_nothing_sent(error, m.segments, item.states):
            # Nothing went out (radio off, no service, Android's limit): another channel tries.
            outcome = messages.requeue_for_failover(m.id, ch.id, FAILED_CODE, reason,
                                                    max_attempts=ch.area.runtime.config.max_attempts)
            if outcome == "queued":
                with write_tx():
                    DeviceMessage.delete().where(DeviceMessage.message_id == m.id).execute()
                ch.area._kick()
                log.info("message %s failed over from %s: %s", m.id, ch.id, reason)
                return
        messages.transition(m.id, "failed", at=_clamp(times.get("Failed"), m, now), error_code=FAILED_CODE,
                            error_message=reason, expect_channel=ch.id)
    elif state == "Cancelled":
        messages.transition(m.id, "cancelled", at=_clamp(times.get("Cancelled"), m, now),
                            expect_channel=ch.id)
    # Pending / Processed / Cancelling: the message is already "dispatched" on our side.
