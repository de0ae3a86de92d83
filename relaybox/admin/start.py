"""Getting started, in the seeds' order; every step is done or not done from the live state."""
from __future__ import annotations

from typing import Any

from relaybox.admin import state
from relaybox.admin.i18n import gettext as _
from relaybox.admin.internal import call, exists
from relaybox.admin.settings import key_hint
from relaybox.admin.web import bp, current_account, page
from relaybox.models import Account, Message


def steps(account: Account) -> list[dict[str, Any]]:
    chans = [c for c in state.channels(account)["channels"] if c["kind"] != "sandbox"]
    hooks = call("GET", "/webhooks", account).data if exists("GET", "/webhooks") else None
    outbound = Message.select().where((Message.account == account) & (Message.direction == "outbound"))
    return [
        {"id": "account", "done": bool(account.api_enabled), "title": _("Create the account"),
         "text": _("API access must be enabled by an administrator for the account."), "link": "admin.accounts"},
        {"id": "device", "done": bool(chans), "title": _("Pair the Android Relay (or add a modem)"),
         "text": _("The device should preferably stay online with permissions and foreground service enabled so sending and status heartbeat continue normally."),
         "link": "admin.devices"},
        {"id": "token", "done": key_hint(account) is not None, "title": _("Take the access token"),
         "text": _("Your API key is on the API key page (masked for security); regenerate it to see a new one once."),
         "link": "admin.settings"},
        {"id": "first_request", "done": outbound.exists(), "title": _("Run the first request from the ready examples"),
         "text": _("Choose the right scenario and run the first request through cURL or the ready snippets."),
         "link": "admin.developers"},
        {"id": "webhooks", "done": bool(hooks and (hooks.get("status_url") or hooks.get("inbound_url"))),
         "title": _("Set the webhooks"),
         "text": _("Receive sent, delivered, and failed callbacks in your system with retries and a visible attempt log."),
         "link": "admin.settings"},
    ]


def production(account: Account) -> list[dict[str, Any]]:
    health = call("GET", "/health", account)
    ready = call("GET", "/ready", account)
    failing = [c for c in (ready.body.get("data") or {}).get("checks", []) if not c.get("ok")]
    real = (Message.select().where((Message.account == account) & (Message.direction == "outbound")
                                   & (Message.status == "delivered")
                                   & (Message.channel_id.is_null(False)) & (Message.channel_id != "sandbox")))
    tested = False
    if exists("GET", "/webhooks/deliveries"):
        d = call("GET", "/webhooks/deliveries", account,
                 query={"event": "webhook.test", "state": "succeeded", "limit": 1})
        tested = bool((d.data or {}).get("total") or (d.data or {}).get("deliveries"))
    return [
        {"id": "health", "done": health.ok, "title": _("Health is green"), "text": "GET /api/v1/health"},
        {"id": "ready", "done": ready.ok, "title": _("Readiness is green"),
         "text": "; ".join(c.get("reason", "") for c in failing) or "GET /api/v1/ready"},
        {"id": "test_sms", "done": real.exists(), "title": _("A test SMS to your own phone was delivered"),
         "text": _("Send one through a paired phone or modem and see it delivered.")},
        {"id": "webhook_test", "done": tested, "title": _("A test webhook was delivered"),
         "text": _("Use Send test webhook on the API key & webhooks page.")},
    ]


@bp.route("/start")
def start() -> Any:
    account = current_account()
    return page("admin/start.html", steps=steps(account), production=production(account))
