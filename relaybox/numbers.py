"""Sender numbers (``GET /numbers``) and their spam diagnosis.

The diagnosis reads the newest outbound messages of one sender number in a time window, page by
page (``limit`` per page, at most ``max_pages``), and stops at the first message that carries a
delivery signal: ``delivered``, ``undelivered``, ``failed``, or ``sent`` when no report can come.
Messages still on their way, expired or cancelled carry none and are skipped. The answer is
about that latest signal only and never includes message content.

What counts as a spam-filtering signal (any one is enough):

1. **Carrier rejection codes** — the message's ``error_code`` is one of :data:`SPAM_ERROR_CODES`
   (``CARRIER_REJECTED``: the carrier refused the message, e.g. the sandbox's numbers ending
   ``0002``; ``CARRIER_SPAM``, ``CARRIER_FILTERED``, ``CARRIER_BLOCKED``, ``SPAM_FILTERED``,
   ``SENDER_BLOCKED``, ``CONTENT_BLOCKED``).
2. **Network refusal of the submission** — a modem's ``+CMS ERROR`` in :data:`SPAM_CMS_ERRORS`
   (8 operator determined barring, 10 call barred, 21 short message transfer rejected,
   29 facility rejected), from a timeline row's ``detail`` (``cms`` / ``cms_error``) or an
   ``error_code`` ending ``CMS_<n>``.
3. **Delivery-report status** — a status report whose TP-Status (3GPP TS 23.040 §9.2.3.15) is in
   :data:`SPAM_TP_STATUS` (0x42 connection rejected by SME, 0x48 SM deleted by SC
   administration, 0x63 service rejected), from a timeline row's ``detail.tp_status`` (or any
   part's, ``detail.all_parts[].tp_status``).
4. **Failure reasons from a phone** — the Android app reports free text; an ``error_message`` or
   a timeline ``detail`` ``reason``/``error`` containing "spam", "filtered", "blocked",
   "barred" or "blacklist".
"""
from __future__ import annotations

import re
from typing import Any

import peewee as pw
from flask import current_app
from flask_openapi3 import APIBlueprint, Tag
from pydantic import BaseModel, ConfigDict, Field

from relaybox.api.common import SECURITY, current_account, normalize_e164
from relaybox.errors import ApiError, envelope, invalid
from relaybox.models import Message, MessageEvent
from relaybox.timeutil import iso, now_ms

SPAM_ERROR_CODES = frozenset({"CARRIER_REJECTED", "CARRIER_SPAM", "CARRIER_FILTERED", "CARRIER_BLOCKED",
                              "SPAM_FILTERED", "SENDER_BLOCKED", "CONTENT_BLOCKED"})
SPAM_CMS_ERRORS = {8: "operator determined barring", 10: "call barred", 21: "short message transfer rejected",
                   29: "facility rejected"}
SPAM_TP_STATUS = {0x42: "connection rejected by SME", 0x48: "SM deleted by SC administration",
                  0x63: "service rejected"}
SPAM_WORDS = re.compile(r"spam|filtered|blocked|barred|blacklist", re.IGNORECASE)
_CMS_CODE = re.compile(r"CMS(?:_ERROR)?_(\d+)$")
CONCLUSIVE = ("delivered", "undelivered", "failed", "sent")


# -- numbers ----------------------------------------------------------------------------------
def owned_numbers(rt: Any, account: Any) -> list[dict[str, Any]]:
    """The sender numbers of the channels this account may send through."""
    out: dict[str, dict[str, Any]] = {}
    for ch in list(rt.channels.values()):
        owner = _channel_attr(ch, "account_id")
        if owner is not None and owner != account.id:
            continue
        for phone in ch.numbers():
            created = _channel_attr(ch, "created_at")
            out.setdefault(phone, {
                "phone": phone, "created_at": iso(created, millis=False) if isinstance(created, int) else None,
                "inbound_callback": None, "channel_id": ch.id, "channel_name": ch.name, "kind": ch.kind,
                "online": bool(ch.enabled() and ch.online()),
            })
    callbacks = _inbound_callbacks(account.id)
    for phone, item in out.items():
        item["inbound_callback"] = callbacks.get(phone)
    return sorted(out.values(), key=lambda n: n["phone"])


def _channel_attr(ch: Any, name: str) -> Any:
    """An attribute of the channel, or of the paired device behind it (Android phones)."""
    value = getattr(ch, name, None)
    return value if value is not None else getattr(getattr(ch, "device", None), name, None)


def _inbound_callbacks(account_id: str) -> dict[str, str | None]:
    """Per-number inbound webhooks (the webhooks area owns them)."""
    try:
        from relaybox.webhooks import inbound_callbacks

        return inbound_callbacks(account_id)
    except (ImportError, pw.OperationalError, pw.ProgrammingError):  # pragma: no cover - area absent
        return {}


# -- spam signals -----------------------------------------------------------------------------
def _tp_statuses(detail: dict[str, Any]) -> list[int]:
    found = []
    for d in [detail, *[p for p in detail.get("all_parts") or [] if isinstance(p, dict)]]:
        v = d.get("tp_status")
        if isinstance(v, str):
            try:
                v = int(v, 0)
            except ValueError:
                v = None
        if isinstance(v, int):
            found.append(v)
    return found


def spam_signals(m: Message, details: list[dict[str, Any]]) -> list[str]:
    """The spam-filtering signals (see the module docstring) of one message, as short strings."""
    found: list[str] = []
    code = m.error_code or ""
    if code in SPAM_ERROR_CODES:
        found.append(f"error_code:{code}")
    cms = _CMS_CODE.search(code)
    cms_values = [int(cms.group(1))] if cms else []
    texts = [m.error_message or ""]
    for d in details:
        for key in ("cms", "cms_error"):
            if isinstance(d.get(key), int):
                cms_values.append(d[key])
        if d.get("error_code") in SPAM_ERROR_CODES:
            found.append(f"error_code:{d['error_code']}")
        for st in _tp_statuses(d):
            if st in SPAM_TP_STATUS:
                found.append(f"tp_status:0x{st:02X}")
        texts += [str(d.get(k)) for k in ("reason", "error") if d.get(k)]
    found += [f"cms_error:{n}" for n in cms_values if n in SPAM_CMS_ERRORS]
    if any(SPAM_WORDS.search(t) for t in texts):
        found.append("failure_reason")
    return list(dict.fromkeys(found))


def delivery_status(m: Message) -> str:
    if m.status == "delivered":
        return "delivered"
    if m.status == "undelivered" or (m.status == "failed" and m.sent_at is not None):
        return "delivery_failed"
    if m.status == "failed":
        return "send_failed"
    if m.status == "sent" and not m.report_expected:
        return "sent"
    if m.status in ("expired", "cancelled"):
        return m.status
    return "pending"


def diagnose(account: Any, number: str, channel_ids: list[str], hours: int, limit: int,
             max_pages: int) -> dict[str, Any]:
    since = now_ms() - hours * 3_600_000
    mine = (Message.from_number == number)
    if channel_ids:
        mine |= (Message.from_number.is_null() & (Message.channel_id << channel_ids))
    q = (Message.select().where((Message.account == account.id) & (Message.direction == "outbound")
                                & (Message.created_at >= since) & mine)
         .order_by(Message.created_at.desc(), Message.id.desc()))
    checked = pages = 0
    newest: Message | None = None
    found: Message | None = None
    signals: list[str] = []
    for page in range(1, max_pages + 1):
        rows = list(q.paginate(page, limit))
        if not rows:
            break
        pages += 1
        newest = newest or rows[0]
        for m in rows:
            checked += 1
            if m.status not in CONCLUSIVE or (m.status == "sent" and m.report_expected):
                continue
            details = [r.detail for r in MessageEvent.select(MessageEvent.detail)
                       .where(MessageEvent.message == m.id) if isinstance(r.detail, dict)]
            found, signals = m, spam_signals(m, details)
            break
        if found is not None or len(rows) < limit:
            break
    if newest is None:
        raise ApiError("NOT_FOUND", "No outbound message found for this number in the requested window")
    latest = found or newest
    status = delivery_status(latest)
    if found is None:
        reason = "no_delivery_signal_yet"
    elif signals:
        reason = "provider_spam_signal_detected"
    elif status == "delivered":
        reason = "delivered_no_spam_signal"
    elif status == "sent":
        reason = "sent_no_delivery_report"
    else:
        reason = "failed_without_spam_signal"
    return {
        "number": number,
        "spam_filtered": bool(signals),
        "diagnosis_reason": reason,
        "delivery_status": status,
        "message_content_included": False,
        "checked_messages": checked,
        "scanned_pages": pages,
        "window_hours": hours,
        "latest_message": {"status": status, "created_at": iso(latest.created_at, millis=False),
                           "updated_at": iso(latest.updated_at, millis=False)},
    }


# -- API ----------------------------------------------------------------------------------------
bp = APIBlueprint("numbers", __name__, url_prefix="/api/v1", abp_tags=[Tag(name="Numbers")],
                  abp_security=SECURITY)


class NumberPath(BaseModel):
    number: str = Field(max_length=40, description="An owned sender number in E.164 (URL-encode the +)")


class DiagnosisQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    hours: int = Field(72, ge=1, le=336, description="Lookback window in hours")
    limit: int = Field(50, ge=1, le=100, description="Messages per page")
    max_pages: int = Field(5, ge=1, le=20, description="Pages to scan at most")


@bp.get("/numbers")
def list_numbers():
    """Your sender numbers (SIMs of the phones and modems, and the sandbox's) with their inbound webhook."""
    account = current_account()
    numbers = owned_numbers(current_app.extensions["relaybox"], account)
    return envelope({"numbers": numbers, "total": len(numbers)})


@bp.get("/numbers/<number>/spam-diagnosis")
def spam_diagnosis(path: NumberPath, query: DiagnosisQuery):
    """Is this sender number being spam-filtered? From its latest outbound delivery signal only."""
    account = current_account()
    try:
        number = normalize_e164(path.number.strip().replace(" ", ""))
    except ValueError as exc:
        raise invalid("number", str(exc)) from None
    owned = [n for n in owned_numbers(current_app.extensions["relaybox"], account) if n["phone"] == number]
    if not owned:
        raise ApiError("NOT_FOUND", f"number: {number} is not one of your sender numbers (GET /numbers)")
    data = diagnose(account, number, [n["channel_id"] for n in owned], query.hours, query.limit,
                    query.max_pages)
    return envelope(data)


def init(app: Any, rt: Any) -> None:
    app.register_api(bp)
