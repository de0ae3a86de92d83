"""What the pages show, read through the API of each area (``internal.call``) when it exists,
else from the core (channel registry, message table) so the page works before an area lands.
"""
from __future__ import annotations

from typing import Any

import peewee as pw
from flask import current_app

from relaybox.admin.internal import call, exists
from relaybox.messages import view
from relaybox.models import Account, Message, MessageEvent
from relaybox.timeutil import iso, now_ms

STATUSES = ["accepted", "scheduled", "queued", "dispatched", "sent", "delivered", "failed",
            "undelivered", "expired", "cancelled", "received"]
WAITING = ("accepted", "scheduled", "queued", "dispatched")


def runtime() -> Any:
    return current_app.extensions["relaybox"]


def _start_of_day_ms() -> int:
    now = now_ms()
    return now - now % 86_400_000


def _first(d: dict[str, Any], *names: str, default: Any = None) -> Any:
    for n in names:
        if d.get(n) is not None:
            return d[n]
    return default


def _list_in(data: Any, *names: str) -> list[Any]:
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        for n in names:
            if isinstance(data.get(n), list):
                return data[n]
    return []


# -- channels: phones, modems, sandbox ------------------------------------------------------------
def _normalize_device(d: dict[str, Any]) -> dict[str, Any]:
    sims = _first(d, "sims", "sim_cards", "simCards", default=[]) or []
    numbers = [s.get("number") or s.get("phone_number") or s.get("phoneNumber") for s in sims
               if isinstance(s, dict)]
    numbers = [n for n in numbers if n] or list(_first(d, "numbers", default=[]) or [])
    if d.get("number"):
        numbers = numbers or [d["number"]]
    battery = d.get("battery")
    if isinstance(battery, dict):
        level, charging = battery.get("level"), battery.get("charging", battery.get("is_charging"))
    else:
        level, charging = _first(d, "battery_level", "battery"), d.get("charging")
    signal = d.get("signal")
    if isinstance(signal, dict):
        signal = _first(signal, "percent", "rssi", "dbm", "bars")
    return {
        "id": d.get("id"), "kind": _first(d, "kind", "type", default="android"),
        "name": _first(d, "label", "name", default=d.get("id")), "label": d.get("label"),
        "online": bool(d.get("online")), "enabled": d.get("enabled", True),
        "last_seen": _first(d, "last_seen", "last_seen_at", "last_heartbeat"),
        "battery": level, "charging": charging,
        "signal": signal, "connectivity": d.get("connectivity"),
        "numbers": numbers, "sims": sims,
        "queue_depth": _first(d, "queue_depth", "queued", default=0),
        "sent_today": _first(d, "sent_today", default=0),
        "app_version": d.get("app_version"), "state": _first(d, "state", "status"),
        "operator": d.get("operator"), "port": d.get("port"),
        "reason": _first(d, "reason", "error", "last_error"),
        # Modems: what their edit form shows (``source: config`` ones are edited in config.toml).
        "source": d.get("source"), "number": d.get("number"), "caps": d.get("caps") or {},
        "status_reports": d.get("status_reports", True),
    }


def _channel_counts(channel_ids: list[str]) -> tuple[dict[str, int], dict[str, int]]:
    if not channel_ids:
        return {}, {}
    depth = dict(Message.select(Message.channel_id, pw.fn.COUNT(Message.id))
                 .where(Message.channel_id.in_(channel_ids) & Message.status.in_(("queued", "dispatched")))
                 .group_by(Message.channel_id).tuples())
    sent = dict(Message.select(Message.channel_id, pw.fn.COUNT(Message.id))
                .where(Message.channel_id.in_(channel_ids) & (Message.sent_at >= _start_of_day_ms()))
                .group_by(Message.channel_id).tuples())
    return depth, sent


def channels(account: Account) -> dict[str, Any]:
    """Phones and modems (``GET /devices``) plus channels only the runtime knows (sandbox)."""
    out: list[dict[str, Any]] = []
    api = exists("GET", "/devices")
    if api:
        ans = call("GET", "/devices", account, query={"limit": 100})
        out = [_normalize_device(d) for d in _list_in(ans.data, "devices", "items") if isinstance(d, dict)]
    if exists("GET", "/modems"):
        ans = call("GET", "/modems", account)
        seen = {c["id"] for c in out}
        for d in _list_in(ans.data, "modems", "items"):
            if isinstance(d, dict) and d.get("id") not in seen:
                out.append(_normalize_device({"kind": "modem", **d}))
    seen = {c["id"] for c in out}
    for ch in list(runtime().channels.values()):
        if ch.id in seen:
            continue
        try:
            st = ch.status() or {}
        except Exception:  # noqa: BLE001 - a broken channel must not break the page
            st = {}
        out.append(_normalize_device({**st, "id": ch.id, "kind": ch.kind, "name": ch.name,
                                      "online": ch.online(), "enabled": ch.enabled(),
                                      "numbers": ch.numbers()}))
    missing = [c["id"] for c in out if c["id"]]
    depth, sent = _channel_counts(missing)
    for c in out:
        if not c["queue_depth"]:
            c["queue_depth"] = depth.get(c["id"], 0)
        if not c["sent_today"]:
            c["sent_today"] = sent.get(c["id"], 0)
    return {"channels": out, "devices_api": api}


# -- queue --------------------------------------------------------------------------------------
def queue_health(account: Account) -> dict[str, Any]:
    """``GET /queue`` (traffic control) when it exists, else counts from the message table."""
    if exists("GET", "/queue"):
        ans = call("GET", "/queue", account)
        if ans.ok and isinstance(ans.data, dict):
            data = dict(ans.data)
            depth = data.get("depth")
            data["by_status"] = depth if isinstance(depth, dict) else data.get("depth_by_status", {})
            data["waiting"] = _first(data, "total_waiting", default=depth if isinstance(depth, int) else
                                     sum(v for v in data["by_status"].values() if isinstance(v, int)))
            data["source"] = "api"
            return data
    counts = dict(Message.select(Message.status, pw.fn.COUNT(Message.id))
                  .where((Message.account == account) & Message.status.in_(WAITING))
                  .group_by(Message.status).tuples())
    oldest = (Message.select(pw.fn.MIN(Message.queued_at))
              .where((Message.account == account) & (Message.status == "queued")).scalar())
    since = now_ms() - 5 * 60_000
    sent5 = Message.select().where((Message.account == account) & (Message.sent_at >= since)).count()
    rt = runtime()
    return {"by_status": counts, "waiting": sum(counts.values()), "blocked_reasons": [],
            "oldest_queued_age_seconds": round((now_ms() - oldest) / 1000) if oldest else None,
            "sent_last_5_minutes": sent5, "blocked": bool(account.paused or rt.instance_paused()),
            "source": "core"}


# -- messages -----------------------------------------------------------------------------------
def search_messages(account: Account, status: str | None = None, q: str | None = None, page: int = 1,
                    limit: int = 25) -> dict[str, Any]:
    """Newest first; ``q`` matches the id, your reference, a number (any part) or the text."""
    query = Message.select().where(Message.account == account)
    if status in STATUSES:
        query = query.where(Message.status == status)
    q = (q or "").strip()
    if q:
        digits = "".join(ch for ch in q if ch.isdigit())
        cond = (Message.id == q) | (Message.client_reference_id == q) | Message.body.contains(q)
        if digits:
            cond |= Message.to_number.contains(digits) | Message.from_number.contains(digits)
        query = query.where(cond)
    total = query.count()
    rows = list(query.order_by(Message.id.desc()).paginate(max(page, 1), limit))
    names = runtime().channel_names()
    return {"messages": [view(m, names) for m in rows], "total": total, "page": page,
            "has_more": page * limit < total}


def message_detail(account: Account, message_id: str) -> dict[str, Any] | None:
    ans = call("GET", f"/messages/{message_id}/log", account)
    if not ans.ok:
        return None
    log = ans.data
    msg = call("GET", f"/sms/{message_id}", account).data or {}
    deliveries: list[Any] | None = None
    if exists("GET", "/webhooks/deliveries"):
        d = call("GET", "/webhooks/deliveries", account, query={"message_id": log["id"], "limit": 50})
        deliveries = _list_in(d.data, "deliveries", "items")
    return {"message": msg, "log": log, "deliveries": deliveries}


def counts_today(account: Account) -> dict[str, int]:
    since = _start_of_day_ms()
    rows = (Message.select(Message.status, pw.fn.COUNT(Message.id))
            .where((Message.account == account) & (Message.created_at >= since)).group_by(Message.status).tuples())
    return dict(rows)


# -- small helpers for templates ------------------------------------------------------------------
def ago(value: Any) -> str:
    """``12 s`` / ``4 min`` / ``3 h`` / ``2 d`` from an ISO time or ms; empty when unknown."""
    ms: int | None = None
    if isinstance(value, (int, float)):
        ms = int(value)
    elif isinstance(value, str) and value:
        from relaybox.timeutil import parse_rfc3339

        try:
            ms = parse_rfc3339(value)
        except ValueError:
            return value
    if ms is None:
        return ""
    secs = max(0, (now_ms() - ms) // 1000)
    if secs < 90:
        return f"{secs} s"
    if secs < 5400:
        return f"{secs // 60} min"
    if secs < 172800:
        return f"{secs // 3600} h"
    return f"{secs // 86400} d"


def timeline_rows(message_id: str) -> list[dict[str, Any]]:
    return [{"status": r.status, "timestamp": iso(r.at), "detail": r.detail}
            for r in MessageEvent.select().where(MessageEvent.message == message_id).order_by(MessageEvent.seq)]


