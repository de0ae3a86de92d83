"""Outbound messaging: send, batch, list send, status, listing, timeline."""
from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Literal, TypeVar

import peewee as pw
from flask import g
from flask_openapi3 import APIBlueprint, Tag
from pydantic import AfterValidator, BaseModel, Field, ValidationError, field_validator

from relaybox import events
from relaybox.api.common import (
    E164,
    SECURITY,
    HttpUrl,
    PageQuery,
    StrictBody,
    current_account,
    idempotent,
    page_of,
)
from relaybox.db import group_write, write_tx
from relaybox.errors import ApiError, envelope, invalid
from relaybox.ids import new_id
from relaybox.messages import TERMINAL, NewMessage, accept, view
from relaybox.models import PRIORITIES, Batch, Message, MessageEvent
from relaybox.runtime import _UNREAD, Runtime
from relaybox.sms.pdu import analyze
from relaybox.timeutil import iso, now_ms, parse_rfc3339

log = logging.getLogger("relaybox.api.sms")
bp = APIBlueprint("sms", __name__, url_prefix="/api/v1", abp_tags=[Tag(name="Messages")],
                  abp_security=SECURITY)

MAX_SEND_AHEAD_MS = 30 * 86_400_000
Priority = Literal["otp", "high", "normal", "bulk"]
T = TypeVar("T")


def _runtime() -> Runtime:
    from flask import current_app

    return current_app.extensions["relaybox"]


# -- request models ---------------------------------------------------------------------------
class _Common(StrictBody):
    status_callback: HttpUrl | None = Field(None, description="URL for this message's status webhooks")
    metadata: dict[str, Any] | None = Field(None, description="Returned in webhooks; at most 4 KB as JSON")

    @field_validator("metadata")
    @classmethod
    def _small_metadata(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None and len(json.dumps(v, ensure_ascii=False).encode()) > 4096:
            raise ValueError("must be at most 4 KB as JSON")
        return v


class _Routing(StrictBody):
    from_: E164 | None = Field(None, alias="from", description="A number of one of your channels")
    device_id: str | None = Field(None, max_length=64, description="Send through this device or modem")
    ttl_seconds: int | None = Field(None, ge=10, le=30 * 86400, description="Expire if not sent by then")
    priority: Priority = "normal"
    send_at: str | None = Field(None, max_length=64, description="RFC 3339 time, up to 30 days ahead")


def _encodable(v: str) -> str:
    """Reject lone surrogates (valid in JSON escapes, not sendable as UCS-2)."""
    try:
        v.encode("utf-16-be")
    except UnicodeEncodeError:
        raise ValueError("contains an invalid character (lone surrogate)") from None
    return v


SmsText = Annotated[str, Field(min_length=1, max_length=1600, description="1-1600 characters"),
                    AfterValidator(_encodable)]


class SendBody(_Common, _Routing):
    to: E164 = Field(description="Recipient in E.164, e.g. +923001234567")
    body: SmsText
    client_reference_id: str | None = Field(None, min_length=1, max_length=255)


class BatchItem(_Common):
    to: E164
    body: SmsText
    client_reference_id: str | None = Field(None, min_length=1, max_length=255)


class BatchBody(_Common, _Routing):
    messages: list[dict[str, Any]] = Field(min_length=1, max_length=1000,
                                           description="Up to 1000 items: to, body, metadata, status_callback")


class ListBody(_Common, _Routing):
    numbers: list[Any] | None = Field(None, max_length=10_000)
    tags: list[str] | None = Field(None, min_length=1, max_length=20,
                                   description="Also send to your contacts that have any of these tags")
    body: SmsText


class MessagePath(BaseModel):
    message_id: str = Field(max_length=255)


class BatchPath(BaseModel):
    batch_id: str = Field(max_length=64)


class ListQuery(PageQuery):
    direction: Literal["inbound", "outbound"] | None = None
    status: Literal["accepted", "scheduled", "queued", "dispatched", "sent", "delivered", "failed",
                    "undelivered", "expired", "cancelled", "received"] | None = None


class BatchMessagesQuery(PageQuery):
    limit: int = Field(50, ge=1, le=100)


# -- helpers ----------------------------------------------------------------------------------
def _when(routing: _Routing, now: int) -> tuple[int | None, int]:
    """(send_at, expires_at) in ms from the request's send_at / ttl_seconds."""
    send_at = None
    if routing.send_at:
        try:
            send_at = parse_rfc3339(routing.send_at)
        except ValueError as exc:
            raise invalid("send_at", f"not an RFC 3339 time: {exc}") from None
        if send_at > now + MAX_SEND_AHEAD_MS:
            raise invalid("send_at", "at most 30 days ahead")
    start = max(send_at or now, now)
    ttl = routing.ttl_seconds or _runtime().config.default_ttl_seconds
    return send_at, start + ttl * 1000


def _new_message(account_id: str, routing: _Routing, to: str, body: str, *, channel: str | None,
                 send_at: int | None, expires_at: int, item: _Common, ref: str | None = None,
                 batch_id: str | None = None, index: int | None = None) -> NewMessage:
    info = analyze(body)
    mid = new_id("req")
    return NewMessage(
        id=mid, account_id=account_id, to=to, body=body, segments=info.segments, encoding=info.encoding,
        from_number=routing.from_, client_reference_id=ref, metadata=item.metadata,
        status_callback=item.status_callback, device_hint=routing.device_id or None,
        channel_id=channel, priority=PRIORITIES[routing.priority], send_at=send_at,
        expires_at=expires_at, batch_id=batch_id, batch_index=index,
    )


def _assign(rt: Runtime, routing: _Routing, pinned: str | None, scheduled: bool) -> str | None:
    """Channel for one message now (None: the housekeeper routes it later)."""
    if scheduled:
        return None
    return pinned or rt.router.best_channel()


def check_can_send(account: Any) -> None:
    """Account-level gates shared by every sending endpoint (pause, subscription, ...)."""
    rt = _runtime()
    # pause_mode "hold" accepts while paused; the claim policy holds the messages until resume.
    if rt.config.pause_mode == "reject":
        # Remembered on the request's account object, so the router's hold check in the same
        # request does not ask the database again.
        account._instance_paused = rt.instance_paused(getattr(account, "_pause_setting", _UNREAD))
        if account.paused or account._instance_paused:
            who = "for this account" if account.paused else "on this box by the admin"
            raise ApiError("QUEUE_BLOCKED", f"sending is paused {who}; resume the queue to send")
    for gate in rt.send_gates:
        gate(account)


def _finish(rt: Runtime, rows: list[Message], evs: list[Any]) -> None:
    """After commit: tell event listeners and wake the channels that got work."""
    events.publish(evs)
    for cid in {m.channel_id for m in rows if m.channel_id}:
        rt.notify_channel(cid)
    for fn in rt.after_accept:
        fn(rows)


def _queue_failed(exc: Exception) -> ApiError:
    log.error("could not queue: %s", exc)
    return ApiError("QUEUE_FAILED", "could not queue the message: the database is unavailable, "
                    "retry with the same Idempotency-Key")


@contextmanager
def queue_tx() -> Iterator[None]:
    """The accept transaction; a database that cannot take the write is QUEUE_FAILED (503)."""
    try:
        with write_tx():
            yield
    except (pw.OperationalError, pw.InterfaceError) as exc:
        raise _queue_failed(exc) from None


def queue_write(fn: Callable[[], T]) -> T:
    """:func:`queue_tx` as a group commit (:func:`relaybox.db.group_write`): ``fn`` may run on
    another request's thread, so it must not use Flask's ``g`` or ``request``."""
    try:
        return group_write(fn)
    except (pw.OperationalError, pw.InterfaceError) as exc:
        raise _queue_failed(exc) from None


# -- endpoints --------------------------------------------------------------------------------
@bp.post("/sms/send", responses={202: None})
@idempotent
def send_sms(body: SendBody):
    """Send one SMS. It is queued durably and sent asynchronously; poll GET /sms/{id} or use webhooks."""
    account = current_account()
    check_can_send(account)
    rt = _runtime()
    now = now_ms()
    send_at, expires_at = _when(body, now)
    pinned = rt.router.resolve_pin(body.device_id, body.from_)
    for check in rt.message_checks:
        check(account, body.to, body.body)
    channel = _assign(rt, body, pinned, bool(send_at and send_at > now))
    item = _new_message(account.id, body, body.to, body.body, channel=channel, send_at=send_at,
                        expires_at=expires_at, item=body, ref=body.client_reference_id)
    idem = g.idem
    names = rt.channel_names()

    def write() -> tuple[Message, list[Any], dict[str, Any]]:
        for hook in rt.before_accept:
            hook(account, [item])
        (m,), evs = accept([item], now)
        data = view(m, names)
        data["queued_at"] = data["queued_at"] or data["created_at"]
        data["message"] = "Message queued for delivery. Poll GET /sms/{id} for status updates."
        idem.store(202, data)
        return m, evs, data

    m, evs, data = queue_write(write)
    _finish(rt, [m], evs)
    return envelope(data, 202)


def _validate_items(raw: list[dict[str, Any]]) -> tuple[list[tuple[int, BatchItem]], list[dict[str, Any]]]:
    good: list[tuple[int, BatchItem]] = []
    bad: list[dict[str, Any]] = []
    for i, obj in enumerate(raw):
        try:
            good.append((i, BatchItem.model_validate(obj)))
        except ValidationError as exc:
            err = exc.errors()[0]
            fieldname = ".".join(str(p) for p in err["loc"]) or "item"
            path = f"messages[{i}].{fieldname}" if err["loc"] else f"messages[{i}]"
            msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
            bad.append({"index": i, "to": obj.get("to") if isinstance(obj, dict) else None,
                        "error": {"code": "INVALID_REQUEST", "message": f"{path}: {msg}", "field": path}})
    return good, bad


@bp.post("/sms/batch", responses={202: None})
@idempotent
def send_batch(body: BatchBody):
    """Up to 1000 messages with per-recipient body; invalid items are rejected one by one."""
    account = current_account()
    check_can_send(account)
    rt = _runtime()
    now = now_ms()
    send_at, expires_at = _when(body, now)
    pinned = rt.router.resolve_pin(body.device_id, body.from_)
    good, bad = _validate_items(body.messages)
    items: list[NewMessage] = []
    batch_id = new_id("batch")
    scheduled = bool(send_at and send_at > now)
    for i, it in good:
        try:
            for check in rt.message_checks:
                check(account, it.to, it.body)
        except ApiError as exc:
            bad.append({"index": i, "to": it.to, "error": exc.body()})
            continue
        # Already validated: construct without validating the number and text a second time.
        merged = BatchItem.model_construct(
            to=it.to, body=it.body, client_reference_id=it.client_reference_id,
            metadata=it.metadata if it.metadata is not None else body.metadata,
            status_callback=it.status_callback or body.status_callback)
        items.append(_new_message(account.id, body, it.to, it.body, channel=_assign(rt, body, pinned, scheduled),
                                  send_at=send_at, expires_at=expires_at, item=merged,
                                  ref=it.client_reference_id, batch_id=batch_id, index=i))
    bad.sort(key=lambda r: r["index"])
    if not items:
        raise ApiError("INVALID_REQUEST", "messages: no valid item in the batch", field="messages",
                       extra={"results": bad})
    with queue_tx():
        for hook in rt.before_accept:
            hook(account, items)
        Batch.create(id=batch_id, account=account, kind="batch", total=len(items),
                     from_number=body.from_, created_at=now)
        rows, evs = accept(items, now)
        results = [{"index": m.batch_index, "to": m.to_number, "id": m.id, "request_id": m.id,
                    "client_reference_id": m.client_reference_id, "status": m.status} for m in rows]
        results = sorted(results + bad, key=lambda r: r["index"])
        data = {"batch_id": batch_id, "job_id": batch_id, "accepted": len(rows), "rejected": len(bad),
                "total": len(body.messages), "results": results}
        g.idem.store(202, data)
    _finish(rt, rows, evs)
    return envelope(data, 202)


@bp.post("/sms/list", responses={202: None})
@idempotent
def send_list(body: ListBody):
    """One body to up to 10,000 numbers; each number becomes its own queue item."""
    account = current_account()
    check_can_send(account)
    rt = _runtime()
    now = now_ms()
    send_at, expires_at = _when(body, now)
    pinned = rt.router.resolve_pin(body.device_id, body.from_)
    for check in rt.message_checks:
        check(account, None, body.body)
    scheduled = bool(send_at and send_at > now)
    seen: set[str] = set()
    rejected: list[dict[str, Any]] = []
    duplicates = 0
    batch_id = new_id("batch")
    items: list[NewMessage] = []
    from relaybox.api.common import normalize_e164

    numbers = list(body.numbers or [])
    if body.tags:
        if rt.tag_recipients is None:
            raise invalid("tags", "the recipient directory is not available")
        tagged = rt.tag_recipients(account, body.tags)
        if not tagged:
            raise invalid("tags", "none of your contacts has these tags")
        numbers += tagged
    if not numbers:
        raise invalid("numbers", "give at least one number (or tags of your contacts)")
    if len(numbers) > 10_000:
        raise invalid("numbers", "at most 10,000 numbers, the tagged contacts included")

    for i, raw in enumerate(numbers):
        if not isinstance(raw, str):
            rejected.append({"index": i, "to": raw, "reason": "must be a string"})
            continue
        try:
            to = normalize_e164(raw.strip())
            for check in rt.message_checks:
                check(account, to, None)
        except ValueError as exc:
            rejected.append({"index": i, "to": raw, "reason": str(exc)})
            continue
        except ApiError as exc:
            rejected.append({"index": i, "to": raw, "reason": exc.message})
            continue
        if to in seen:
            duplicates += 1
            continue
        seen.add(to)
        items.append(_new_message(account.id, body, to, body.body, channel=_assign(rt, body, pinned, scheduled),
                                  send_at=send_at, expires_at=expires_at, item=body, batch_id=batch_id,
                                  index=len(items)))
    if not items:
        raise ApiError("INVALID_REQUEST", "numbers: no valid number in the list", field="numbers",
                       extra={"rejected": rejected})
    with queue_tx():
        for hook in rt.before_accept:
            hook(account, items)
        Batch.create(id=batch_id, account=account, kind="list", total=len(items), from_number=body.from_,
                     created_at=now)
        rows, evs = accept(items, now)
        data = {"batch_id": batch_id, "job_id": batch_id, "total": len(numbers), "accepted": len(rows),
                "duplicates_removed": duplicates, "rejected": rejected,
                "status": rows[0].status if rows else "queued"}
        g.idem.store(202, data)
    _finish(rt, rows, evs)
    return envelope(data, 202)


def find_message(account: Any, message_id: str) -> Message:
    m = Message.get_or_none((Message.account == account) & (Message.id == message_id))
    if m is None:
        m = (Message.select().where((Message.account == account) & (Message.client_reference_id == message_id))
             .order_by(Message.id.desc()).first())
    if m is None:
        raise ApiError("NOT_FOUND", f"no message {message_id}")
    return m


@bp.post("/sms/<message_id>/cancel")
def cancel_sms(path: MessagePath):
    """Cancel a message not yet sent: 200 ``cancelled``, 202 while the phone confirms, 409 if sent."""
    from relaybox import messages

    account = current_account()
    m = find_message(account, path.message_id)
    outcome = messages.cancel(m.id, _runtime().channels)
    m = Message.get_by_id(m.id)
    if outcome == "too_late":
        raise ApiError("CONFLICT", f"message {m.id} is {m.status}: only messages not yet sent can be cancelled",
                       extra={"status": m.status})
    data = {"id": m.id, "request_id": m.id, "client_reference_id": m.client_reference_id,
            "status": m.status, "cancel": outcome}
    return envelope(data, 200 if outcome == "cancelled" else 202)


@bp.post("/sms/batch/<batch_id>/cancel")
def cancel_batch(path: BatchPath):
    """Cancel every message of a batch that has not been sent yet."""
    from relaybox import messages

    account = current_account()
    b = _batch(account, path.batch_id)
    counts = {"cancelled": 0, "requested": 0, "too_late": 0}
    ids = [m.id for m in Message.select(Message.id).where(
        (Message.batch == b.id) & (Message.status << ["scheduled", "queued", "dispatched"]))]
    channels = _runtime().channels
    for mid in ids:
        counts[messages.cancel(mid, channels)] += 1
    return envelope({"batch_id": b.id, "job_id": b.id, **counts})


@bp.get("/sms/<message_id>")
def get_sms(path: MessagePath):
    """A message by ``id`` (req_...) or by your ``client_reference_id``."""
    account = current_account()
    m = find_message(account, path.message_id)
    data = view(m, _runtime().channel_names())
    for fn in _runtime().message_view_hooks:
        fn(m, data)
    return envelope(data)


@bp.get("/messages/<message_id>/log")
def get_log(path: MessagePath):
    """The delivery timeline: every status transition with its time (ms precision)."""
    account = current_account()
    m = find_message(account, path.message_id)
    rows = MessageEvent.select().where(MessageEvent.message == m.id).order_by(MessageEvent.seq)
    data = {k: v for k, v in view(m, _runtime().channel_names()).items()
            if k in ("id", "request_id", "client_reference_id", "status", "direction", "to", "from",
                     "segments", "encoding", "attempts", "device_id", "device_name", "error_code",
                     "error_message")}
    data["timeline"] = [{"status": r.status, "timestamp": iso(r.at), "unix_timestamp": r.at,
                         "device_id": r.channel_id, **({"detail": r.detail} if r.detail else {})}
                        for r in rows]
    return envelope(data)


@bp.get("/messages")
def list_messages(query: ListQuery):
    """Your messages, newest first; filter by direction and status."""
    account = current_account()
    # Bucketed counts + keyset within a bucket: any page stays fast at millions of rows.
    from relaybox.paging import message_page

    rows, total, more = message_page(account.id, query.direction, query.status, query.page, query.limit)
    names = _runtime().channel_names()
    return envelope({"messages": [view(m, names) for m in rows], "page": query.page, "limit": query.limit,
                     "total": total, "has_more": more})


def _batch(account: Any, batch_id: str) -> Batch:
    b = Batch.get_or_none((Batch.id == batch_id) & (Batch.account == account))
    if b is None:
        raise ApiError("NOT_FOUND", f"no batch {batch_id}")
    return b


@bp.get("/sms/batch/<batch_id>")
def get_batch(path: BatchPath):
    """Progress counters of a batch or list send."""
    account = current_account()
    b = _batch(account, path.batch_id)
    from peewee import fn

    counts = {s: n for s, n in Message.select(Message.status, fn.COUNT(Message.id))
              .where(Message.batch == b.id).group_by(Message.status).tuples()}
    no_report = (Message.select().where((Message.batch == b.id) & (Message.status == "sent")
                                        & (Message.report_expected == False)).count())
    waiting = sum(counts.get(s, 0) for s in ("accepted", "scheduled", "queued"))
    failed = sum(counts.get(s, 0) for s in ("failed", "undelivered", "expired", "cancelled"))
    completed = counts.get("delivered", 0) + no_report
    finished = sum(counts.get(s, 0) for s in TERMINAL) + no_report
    return envelope({
        "batch_id": b.id, "job_id": b.id, "kind": b.kind,
        "status": "completed" if finished >= b.total else "processing",
        "total": b.total, "processed": b.total - waiting, "completed": completed, "failed": failed,
        "by_status": counts, "from_number": b.from_number, "channel": "api", "created_at": iso(b.created_at),
    })


@bp.get("/sms/batch/<batch_id>/messages")
def get_batch_messages(path: BatchPath, query: BatchMessagesQuery):
    """The messages of a batch, in item order."""
    account = current_account()
    b = _batch(account, path.batch_id)
    q = Message.select().where(Message.batch == b.id).order_by(Message.batch_index)
    rows, total, more = page_of(q, query.page, query.limit)
    items = [{"index": m.batch_index, "id": m.id, "request_id": m.id,
              "client_reference_id": m.client_reference_id, "to": m.to_number, "status": m.status,
              "error_code": m.error_code, "created_at": iso(m.created_at), "updated_at": iso(m.updated_at)}
             for m in rows]
    return envelope({"items": items, "page": query.page, "limit": query.limit, "total": total, "has_more": more})
