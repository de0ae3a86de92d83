"""Accounts and traffic control: keys, contacts, numbers, balance, limits, queue (issue: accounts).

This module is the area's entry point: ``init_app`` registers the blueprints and runtime hooks of
``relaybox.contacts``, ``relaybox.numbers``, ``relaybox.billing``, ``relaybox.limits`` and
``relaybox.queue_health``, and serves the account's own endpoints (``GET /account``,
``POST /api-key/regenerate``) and its subscription gate.
"""
from __future__ import annotations

from typing import Any

from flask import current_app
from flask_openapi3 import APIBlueprint, Tag

from relaybox.accounts import regenerate_key
from relaybox.api.common import SECURITY, current_account
from relaybox.errors import ApiError, envelope
from relaybox.timeutil import iso, now_ms

bp = APIBlueprint("account", __name__, url_prefix="/api/v1", abp_tags=[Tag(name="Account")],
                  abp_security=SECURITY)


def subscription_expired(account: Any, now: int | None = None) -> bool:
    until = account.subscription_until
    return until is not None and until <= (now or now_ms())


@bp.get("/account")
def get_account():
    """Your account: name, API access, subscription end, queue pause, limits in force."""
    account = current_account()
    rt = current_app.extensions["relaybox"]
    from relaybox.limits import allowed_regions, recipient_cap

    regions, source = allowed_regions(rt, account)
    return envelope({
        "id": account.id, "name": account.name, "api_enabled": account.api_enabled,
        "subscription_until": iso(account.subscription_until, millis=False),
        "subscription_expired": subscription_expired(account), "paused": account.paused,
        "limits": {
            "allowed_countries": sorted(regions) if regions is not None else ["*"],
            "allowed_countries_from": source,
            "recipient_hourly_cap": recipient_cap(rt, account) or None,
            "api_rate_limit": {"requests": rt.config.api_rate_limit, "window_seconds": rt.config.api_rate_window}
            if rt.config.api_rate_limit else None,
        },
        "created_at": iso(account.created_at, millis=False),
    })


@bp.post("/api-key/regenerate")
def regenerate_api_key():
    """A new API key, shown once; the key used for this request stops working at once."""
    account = current_account()
    key = regenerate_key(account)
    return envelope({"api_key": key,
                     "message": "API key regenerated. Save this key - it will not be shown again."})


def init_app(app: Any) -> None:
    """Register blueprints, tasks and hooks on the app (called by create_app)."""
    from relaybox import billing, contacts, limits, numbers, queue_health

    rt = app.extensions["relaybox"]
    app.register_api(bp)

    def subscription_gate(account: Any) -> None:
        if subscription_expired(account):
            raise ApiError("SUBSCRIPTION_EXPIRED", "the subscription expired on "
                           f"{iso(account.subscription_until, millis=False)}; ask your admin to renew it")

    def subscription_ready(account: Any) -> tuple[str, bool, str]:
        until = account.subscription_until
        if until is None:
            return "subscription", True, "no end date"
        if subscription_expired(account):
            return "subscription", False, f"the subscription expired on {iso(until, millis=False)}"
        return "subscription", True, f"active until {iso(until, millis=False)}"

    rt.send_gates.append(subscription_gate)
    rt.ready_checks.append(subscription_ready)
    for module in (contacts, numbers, queue_health, limits, billing):
        module.init(app, rt)
