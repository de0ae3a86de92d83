"""Queue control and health: pause/resume (per account, and instance-wide by the admin), ``GET /queue``.

A paused queue sends nothing: channels claim no message of a paused account (or none at all
while the instance is paused), so what was already queued waits. New sends answer
``QUEUE_BLOCKED`` (``pause_mode = "reject"``, the default) or are accepted and held until resume
(``pause_mode = "hold"``); messages held past their TTL expire as usual. The instance-wide flag is
a database row (``relaybox queue pause``), so it survives restarts and every process sharing the
database sees it.
"""
from __future__ import annotations

import os
from typing import Any

import peewee as pw
from flask import current_app
from flask_openapi3 import APIBlueprint, Tag

from relaybox.api.common import SECURITY, current_account
from relaybox.db import write_tx
from relaybox.errors import envelope
from relaybox.limits import channel_cap
from relaybox.models import QUEUE_PAUSED, Account, Message, MessageEvent, Setting
from relaybox.timeutil import iso, now_ms

PAUSE_KEY = QUEUE_PAUSED
WAITING = ("accepted", "scheduled", "queued", "dispatched")


def set_instance_pause(data_dir: str, paused: bool, by: str = "admin") -> None:
    """The admin's instance-wide pause (CLI). Resuming also removes a legacy ``paused`` file."""
    now = now_ms()
    with write_tx():
        value = {"by": by, "at": now} if paused else None
        (Setting.insert(key=PAUSE_KEY, value=value, updated_at=now)
         .on_conflict(conflict_target=[Setting.key], update={Setting.value: value, Setting.updated_at: now})
         .execute())
    if not paused:
        try:
            os.remove(os.path.join(data_dir, "paused"))
        except FileNotFoundError:
            pass


def set_account_pause(account_id: str, paused: bool) -> None:
    with write_tx():
        Account.update(paused=paused).where(Account.id == account_id).execute()


def _count_events(status: str, since: int, account_id: str) -> dict[str | None, int]:
    """Timeline rows of ``status`` since ``since`` for the account's messages, per channel."""
    rows = (MessageEvent.select(MessageEvent.channel_id, pw.fn.COUNT(MessageEvent.id))
            .join(Message, on=(Message.id == MessageEvent.message))
            .where((MessageEvent.status == status) & (MessageEvent.at >= since) & (Message.account == account_id))
            .group_by(MessageEvent.channel_id).tuples())
    return {cid: n for cid, n in rows}


def health(rt: Any, account: Any) -> dict[str, Any]:
    """The queue as this account sees it: depth, oldest waiting message, throughput, channels."""
    now = now_ms()
    depth = {s: 0 for s in WAITING}
    depth["sent_awaiting_report"] = 0
    for status, n in (Message.select(Message.status, pw.fn.COUNT(Message.id))
                      .where((Message.account == account.id) & (Message.status << list(WAITING)))
                      .group_by(Message.status).tuples()):
        depth[status] = n
    depth["sent_awaiting_report"] = (Message.select().where(
        (Message.account == account.id) & (Message.status == "sent")
        & (Message.report_expected == True)).count())
    oldest = (Message.select(Message.queued_at, Message.created_at)
              .where((Message.account == account.id) & (Message.status == "queued"))
              .order_by(Message.id).first())
    oldest_at = (oldest.queued_at or oldest.created_at) if oldest else None
    windows = {}
    per_channel: dict[str | None, dict[str, int]] = {}
    for minutes in (5, 60):
        since = now - minutes * 60_000
        handed = _count_events("dispatched", since, account.id)
        sent = _count_events("sent", since, account.id)
        windows[f"last_{minutes}m"] = {"dispatched": sum(handed.values()), "sent": sum(sent.values()),
                                       "per_minute": round(sum(handed.values()) / minutes, 2)}
        for cid, n in handed.items():
            per_channel.setdefault(cid, {})[f"dispatched_{minutes}m"] = n
        for cid, n in sent.items():
            per_channel.setdefault(cid, {})[f"sent_{minutes}m"] = n
    waiting_on = {cid: {"queued": 0, "dispatched": 0} for cid in rt.channels}
    for cid, status, n in (Message.select(Message.channel_id, Message.status, pw.fn.COUNT(Message.id))
                           .where((Message.account == account.id) & (Message.status << ["queued", "dispatched"])
                                  & Message.channel_id.is_null(False))
                           .group_by(Message.channel_id, Message.status).tuples()):
        waiting_on.setdefault(cid, {"queued": 0, "dispatched": 0})[status] = n
    caps = current_app.extensions.get("relaybox.limits")
    channels = []
    for cid in sorted(set(rt.channels) | set(waiting_on) | {c for c in per_channel if c}):
        ch = rt.channels.get(cid)
        cap = channel_cap(rt, cid)
        used = caps.used(cid) if caps is not None and cap else None
        stats = per_channel.get(cid, {})
        channels.append({
            "id": cid, "name": ch.name if ch else None, "kind": ch.kind if ch else None,
            "online": bool(ch and ch.online()), "enabled": bool(ch and ch.enabled()),
            "queued": waiting_on.get(cid, {}).get("queued", 0),
            "dispatched": waiting_on.get(cid, {}).get("dispatched", 0),
            **{k: stats.get(k, 0) for k in ("dispatched_5m", "sent_5m", "dispatched_60m", "sent_60m")},
            "daily_cap": cap or None, "used_today": used,
            "capped": bool(cap and used is not None and used >= cap),
        })
        for hook in getattr(rt, "channel_view_hooks", ()):
            hook(cid, channels[-1])  # e.g. routing: parked, pacing
    instance = rt.instance_paused()
    reasons = []
    if account.paused:
        reasons.append("paused for this account (POST /queue/resume)")
    if instance:
        reasons.append("paused on this box by the admin (relaybox queue resume)")
    sub = account.subscription_until
    if sub is not None and sub <= now:
        reasons.append("subscription expired")
    live = [ch for ch in rt.channels.values() if ch.enabled() and ch.online()]
    if not live:
        reasons.append("no channel online")
    elif all(c["capped"] for c in channels if c["id"] in {ch.id for ch in live}):
        reasons.append("every online channel reached its daily cap")
    return {
        "blocked": bool(reasons), "blocked_reasons": reasons,
        "paused": bool(account.paused), "instance_paused": instance, "pause_mode": rt.config.pause_mode,
        "depth": depth, "total_waiting": sum(depth.values()),
        "oldest_queued_at": iso(oldest_at), "oldest_queued_age_seconds":
            round((now - oldest_at) / 1000, 3) if oldest_at else None,
        "throughput": windows, "channels": channels,
    }


# -- API ----------------------------------------------------------------------------------------
bp = APIBlueprint("queue", __name__, url_prefix="/api/v1", abp_tags=[Tag(name="Queue")],
                  abp_security=SECURITY)


def _pause_view(rt: Any, account: Any) -> dict[str, Any]:
    return {"paused": bool(account.paused), "instance_paused": rt.instance_paused(),
            "pause_mode": rt.config.pause_mode}


@bp.get("/queue")
def queue_health():
    """Queue health: depth by status, oldest queued age, throughput over 5 and 60 minutes, channels."""
    account = current_account()
    return envelope(health(current_app.extensions["relaybox"], account))


@bp.post("/queue/pause")
def pause_queue():
    """Pause your queue: nothing of yours is sent; new sends answer QUEUE_BLOCKED (or are held)."""
    account = current_account()
    set_account_pause(account.id, True)
    account.paused = True
    return envelope(_pause_view(current_app.extensions["relaybox"], account))


@bp.post("/queue/resume")
def resume_queue():
    """Resume your queue: held messages go out again."""
    account = current_account()
    set_account_pause(account.id, False)
    account.paused = False
    rt = current_app.extensions["relaybox"]
    rt.kick()
    return envelope(_pause_view(rt, account))


def init(app: Any, rt: Any) -> None:
    app.register_api(bp)

    def hold_paused(channel_id: str, limit: int) -> tuple[int, Any]:
        if rt.instance_paused():
            return 0, None
        paused = Account.select(Account.id).where(Account.paused == True)
        return limit, Message.account.not_in(paused)

    was_paused = [False]

    def wake_after_admin_resume() -> None:
        # The CLI resumes from another process: wake the channels when the flag drops.
        now_paused = rt.instance_paused()
        if was_paused[0] and not now_paused:
            rt.kick()
        was_paused[0] = now_paused

    rt.claim_policies.append(hold_paused)
    rt.sweepers.append(wake_after_admin_resume)

