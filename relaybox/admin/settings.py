"""API key and webhooks: the key (masked, regenerate once confirmed), webhook URLs and secret,
"send test webhook", the attempt log with redeliver. Webhook parts go through /api/v1/webhooks.
"""
from __future__ import annotations

from typing import Any

from flask import flash, redirect, request, url_for

from relaybox.accounts import regenerate_key
from relaybox.admin import state
from relaybox.admin.devices import _report
from relaybox.admin.i18n import gettext as _
from relaybox.admin.internal import call, exists
from relaybox.admin.web import bp, current_account, page
from relaybox.models import Account, ApiKey

DELIVERY_STATES = ("pending", "succeeded", "failed", "disabled")


def key_hint(account: Account) -> str | None:
    row = (ApiKey.select().where((ApiKey.account == account) & ApiKey.revoked_at.is_null())
           .order_by(ApiKey.created_at.desc()).first())
    return row.hint if row else None


def webhook_state(account: Account) -> dict[str, Any] | None:
    if not exists("GET", "/webhooks"):
        return None
    cfg = call("GET", "/webhooks", account).data or {}
    secret = call("GET", "/webhooks/secret", account).data if exists("GET", "/webhooks/secret") else None
    return {"config": cfg, "secret": (secret or {}).get("secret"), "secret_info": secret or {},
            "can_test": exists("POST", "/webhooks/test")}


def deliveries(account: Account, state_filter: str | None, page_no: int) -> dict[str, Any] | None:
    if not exists("GET", "/webhooks/deliveries"):
        return None
    ans = call("GET", "/webhooks/deliveries", account,
               query={"state": state_filter if state_filter in DELIVERY_STATES else None, "page": page_no,
                      "limit": 20})
    data = ans.data or {}
    return {"items": state._list_in(data, "deliveries", "items"), "page": page_no,
            "has_more": data.get("has_more", False), "total": data.get("total")}


def _settings_page(new_key: str | None = None, status: int = 200, test_result: Any = None) -> Any:
    account = current_account()
    st = request.args.get("state")
    try:
        page_no = max(1, int(request.args.get("page", 1)))
    except ValueError:
        page_no = 1
    return page("admin/settings.html", status, key_hint=key_hint(account), new_key=new_key,
                hooks=webhook_state(account), log=deliveries(account, st, page_no), state_filter=st,
                delivery_states=DELIVERY_STATES, test_result=test_result)


@bp.route("/settings")
def settings() -> Any:
    return _settings_page()


@bp.route("/settings/key", methods=["POST"])
def regenerate() -> Any:
    """A new key, shown once on this answer (never stored in clear, never put in a cookie)."""
    if request.form.get("confirm") != "yes":
        flash(_("Tick the box to confirm: the old key stops working at once."), "error")
        return redirect(url_for("admin.settings"))
    key = regenerate_key(current_account())
    return _settings_page(new_key=key)


@bp.route("/settings/webhooks", methods=["POST"])
def save_webhooks() -> Any:
    body = {name: (request.form.get(name) or "").strip() or None for name in ("status_url", "inbound_url")}
    _report(call("PUT", "/webhooks", current_account(), json=body), _("Webhook URLs saved."))
    return redirect(url_for("admin.settings") + "#webhooks")


@bp.route("/settings/webhooks/rotate", methods=["POST"])
def rotate_secret() -> Any:
    _report(call("POST", "/webhooks/secret/rotate", current_account(), json={}),
            _("New signing secret. The previous one keeps signing for 24 hours."))
    return redirect(url_for("admin.settings") + "#webhooks")


@bp.route("/settings/webhooks/test", methods=["POST"])
def test_webhook() -> Any:
    target = request.form.get("target", "status")
    ans = call("POST", "/webhooks/test", current_account(), json={"target": target})
    if not ans.ok:
        _report(ans, "")
        return redirect(url_for("admin.settings") + "#webhooks")
    return _settings_page(test_result=ans.data)


@bp.route("/settings/webhooks/<delivery_id>/redeliver", methods=["POST"])
def redeliver(delivery_id: str) -> Any:
    _report(call("POST", f"/webhooks/deliveries/{delivery_id}/redeliver", current_account()),
            _("Sent again. The attempt appears in the log."))
    back = request.form.get("back") or ""
    if back.startswith("/admin/messages/"):
        return redirect(back)
    return redirect(url_for("admin.settings") + "#attempts")


@bp.route("/webhooks/<delivery_id>")
def delivery(delivery_id: str) -> Any:
    ans = call("GET", f"/webhooks/deliveries/{delivery_id}", current_account())
    if not ans.ok:
        return page("admin/error.html", 404, title="404", message=delivery_id)
    return page("admin/delivery.html", d=ans.data)
