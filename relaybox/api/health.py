"""The two quick endpoints: ``/health`` (no auth) and ``/ready`` (auth)."""
from __future__ import annotations

from typing import Any

from flask import current_app, g
from flask_openapi3 import APIBlueprint, Tag

from relaybox import __version__
from relaybox.accounts import account_for_key
from relaybox.api.common import SECURITY, presented_key
from relaybox.db import db
from relaybox.errors import ApiError, envelope

bp = APIBlueprint("health", __name__, url_prefix="/api/v1", abp_tags=[Tag(name="Health")])


@bp.get("/health")
def health():
    """Process alive and database reachable. No auth: for load balancers and CI."""
    try:
        db.execute_sql("SELECT 1").fetchone()
        database = "ok"
    except Exception as exc:  # noqa: BLE001 - report, don't crash
        raise ApiError("INTERNAL_ERROR", f"database unreachable: {type(exc).__name__}", status=503) from None
    return envelope({"status": "ok", "database": database, "version": __version__})


@bp.get("/ready", security=SECURITY)
def ready():
    """Is this account ready for real traffic? Every check listed with pass/fail and a reason."""
    account = g.get("account")  # set by the admin page's in-process calls (relaybox.admin.internal)
    if account is None:
        key = presented_key()
        if not key:
            raise ApiError("UNAUTHORIZED", "missing API key: send X-API-Key or Authorization: Bearer")
        account = account_for_key(key)
        if account is None:
            raise ApiError("UNAUTHORIZED", "invalid API key")
    rt = current_app.extensions["relaybox"]
    checks: list[dict[str, Any]] = []

    def add(name: str, ok: bool, reason: str) -> None:
        checks.append({"name": name, "ok": ok, "reason": reason})

    add("api_enabled", bool(account.api_enabled),
        "API access is enabled" if account.api_enabled else "API access is not enabled for this account")
    online = [ch for ch in rt.channels.values() if ch.enabled() and ch.online()]
    add("channel_online", bool(online),
        f"{len(online)} channel(s) online: " + ", ".join(ch.name for ch in online) if online
        else "no phone, modem or sandbox channel is online")
    blocked = account.paused or rt.instance_paused()
    add("queue_not_blocked", not blocked,
        "the queue is paused" if blocked else "the queue is accepting messages")
    for check in rt.ready_checks:
        add(*check(account))
    ok = all(c["ok"] for c in checks)
    return envelope({"ready": ok, "checks": checks}, 200 if ok else 503)
