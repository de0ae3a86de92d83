"""Devices: pair the Android Relay (QR code, API URL, numeric code, checklist); add, edit and
remove modems and run USSD codes on them.

Pairing goes through ``POST /api/v1/devices/pairing`` (the Android area); the new phone shows up
in the device list by itself (the list refreshes). Modems go through ``/api/v1/modems``.
"""
from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlsplit

from flask import flash, redirect, request, session, url_for

from relaybox.admin import state
from relaybox.admin.apidoc import public_base
from relaybox.admin.i18n import gettext as _
from relaybox.admin.internal import call, exists
from relaybox.admin.web import bp, current_account, page
from relaybox.timeutil import now_ms

MOBILE_PREFIX = "/api/mobile/v1"


def _loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _qr_svg(data: str) -> str:
    from relaybox.channels.android.pairing import qr_svg

    return qr_svg(data)


def _live_pairing() -> dict[str, Any] | None:
    p = session.get("pairing")
    if not p or p.get("account_id") != current_account().id or p.get("expires_ms", 0) <= now_ms():
        session.pop("pairing", None)
        return None
    return p


@bp.route("/devices")
def devices() -> Any:
    account = current_account()
    pairing = _live_pairing()
    qr = _qr_svg(pairing["page_url"]) if pairing and pairing.get("page_url") else None
    modems = _modem_support()
    return page("admin/devices.html", chans=state.channels(account), pairing=pairing, qr=qr,
                can_pair=exists("POST", "/devices/pairing"), modems=modems,
                loopback=_loopback(public_base()), tls=public_base().startswith("https://"),
                apk_url=_apk_url())


def _apk_url() -> str:
    try:
        from relaybox.channels.android.pairing import APK_URL
    except ImportError:  # the Android area is not installed
        return "https://github.com/capcom6/android-sms-gateway/releases"
    return APK_URL


@bp.route("/devices/pair", methods=["POST"])
def pair() -> Any:
    """Ask the Android area for a one-time code; keep it in the session until it expires."""
    account = current_account()
    ans = call("POST", "/devices/pairing", account, json={})
    if not ans.ok:
        flash(_("Could not create a pairing code: %(error)s", error=ans.error.get("message", ans.status)), "error")
        return redirect(url_for("admin.devices"))
    d = ans.data
    from relaybox.timeutil import parse_rfc3339

    expires = d.get("expires_at")
    expires_ms = parse_rfc3339(expires) if isinstance(expires, str) else int(expires or now_ms() + 600_000)
    session["pairing"] = {
        "account_id": account.id, "code": str(d.get("code", "")),
        "api_url": d.get("api_url") or public_base() + MOBILE_PREFIX,
        "page_url": d.get("page_url") or d.get("pairing_url") or d.get("url"),
        "expires_at": expires if isinstance(expires, str) else None, "expires_ms": expires_ms,
        "ca_certificate_url": d.get("ca_certificate_url"),
        "private_token_enabled": bool(d.get("private_token_enabled")),
    }
    return redirect(url_for("admin.devices") + "#pairing")


@bp.route("/devices/pair/cancel", methods=["POST"])
def pair_done() -> Any:
    session.pop("pairing", None)
    return redirect(url_for("admin.devices"))


@bp.route("/devices/<device_id>/update", methods=["POST"])
def device_update(device_id: str) -> Any:
    """Label, enabled, SIM numbers (the app masks them; the admin types each SIM's number)."""
    account = current_account()
    body: dict[str, Any] = {}
    if "label" in request.form:
        body["label"] = request.form["label"].strip() or None
    if "enabled" in request.form:
        body["enabled"] = request.form["enabled"] == "1"
    sims = [(k[len("sim_"):], v.strip()) for k, v in request.form.items() if k.startswith("sim_")]
    if sims:
        body["sim_numbers"] = {slot: (num or None) for slot, num in sims}
    ans = call("PATCH", f"/devices/{device_id}", account, json=body)
    _report(ans, _("Saved."))
    return redirect(url_for("admin.devices"))


@bp.route("/devices/<device_id>/delete", methods=["POST"])
def device_delete(device_id: str) -> Any:
    ans = call("DELETE", f"/devices/{device_id}", current_account())
    _report(ans, _("Device removed; its token no longer works."))
    return redirect(url_for("admin.devices"))


# -- modems -------------------------------------------------------------------------------------
def _modem_support() -> dict[str, Any]:
    return {"add": exists("POST", "/modems"), "scan": exists("GET", "/modems/scan") or exists("POST", "/modems/scan"),
            "candidates": session.pop("modem_scan", None)}


@bp.route("/modems/add", methods=["POST"])
def modem_add() -> Any:
    account = current_account()
    body = {k: request.form[k].strip() for k in ("name", "port", "number", "label", "pin")
            if request.form.get(k, "").strip()}
    if request.form.get("baud", "").strip().isdigit():
        body["baud"] = int(request.form["baud"])
    ans = call("POST", "/modems", account, json=body)
    _report(ans, _("Modem added. It appears in the list once it answers."))
    return redirect(url_for("admin.devices"))


@bp.route("/modems/scan", methods=["POST"])
def modem_scan() -> Any:
    account = current_account()
    method = "POST" if exists("POST", "/modems/scan") else "GET"
    ans = call(method, "/modems/scan", account)
    if ans.ok:
        session["modem_scan"] = state._list_in(ans.data, "candidates", "ports", "items")
    else:
        _report(ans, "")
    return redirect(url_for("admin.devices") + "#modems")


@bp.route("/modems/<modem_id>/<action>", methods=["POST"])
def modem_action(modem_id: str, action: str) -> Any:
    account = current_account()
    if action == "delete":
        ans = call("DELETE", f"/modems/{modem_id}", account)
    elif action in ("probe", "reset"):
        ans = call("POST", f"/modems/{modem_id}/{action}", account)
    else:
        return redirect(url_for("admin.devices"))
    _report(ans, _("Done."))
    return redirect(url_for("admin.devices"))


_CLEARABLE = ("label", "number", "per_minute", "per_hour", "per_day")


@bp.route("/modems/<modem_id>/edit", methods=["POST"])
def modem_edit(modem_id: str) -> Any:
    """PATCH only what differs from the modem as the API shows it now: a new port, PIN or delivery
    report setting restarts its driver, so an unchanged one must not be sent. The form shows the
    current values, so a label, number or cap emptied by the admin is removed (sent as null); an
    empty port or PIN leaves it as it is (a modem needs a port; the PIN is never shown). A field
    the form does not carry is left alone; checkboxes always come (a hidden 0 after each)."""
    account = current_account()
    cur = call("GET", f"/modems/{modem_id}", account)
    if not cur.ok:
        _report(cur, "")
        return redirect(url_for("admin.devices") + "#modems")
    now = {**cur.data, **(cur.data.get("caps") or {})}
    body: dict[str, Any] = {}
    for k in ("label", "number", "port", "pin", "per_minute", "per_hour", "per_day"):
        if k not in request.form:
            continue
        v: Any = request.form[k].strip()
        if v == "":
            if k in _CLEARABLE and now.get(k) not in (None, ""):
                body[k] = None
            continue
        if k.startswith("per_") and v.isdigit():
            v = int(v)  # anything else goes as typed and the API names the field
        if v != now.get(k):
            body[k] = v
    for k in ("enabled", "status_reports"):
        if k in request.form and (request.form[k] == "1") != now.get(k):
            body[k] = request.form[k] == "1"
    ans = call("PATCH", f"/modems/{modem_id}", account, json=body)
    _report(ans, _("Saved."))
    return redirect(url_for("admin.devices") + "#modems")


@bp.route("/modems/<modem_id>/ussd", methods=["POST"])
def modem_ussd(modem_id: str) -> Any:
    """Run a USSD code (balance check); the network's reply is shown as text (it is untrusted,
    and the page escapes it like any flash). Code and reply are bidi-isolated (U+2068..U+2069) so
    "*123#" and an English reply stay in order inside an Urdu sentence."""
    account = current_account()
    code = request.form.get("code", "").strip()
    ans = call("POST", f"/modems/{modem_id}/ussd", account, json={"code": code})
    if ans.ok:
        reply, shown = ans.data.get("reply"), f"\u2068{code}\u2069"
        if reply:
            flash(_("USSD %(code)s: %(reply)s", code=shown, reply=f"\u2068{reply}\u2069"), "ok")
        else:
            flash(_("USSD %(code)s: the network sent no text (status %(status)s).", code=shown,
                    status=ans.data.get("status")), "error")
    else:
        _report(ans, "")
    return redirect(url_for("admin.devices") + "#modems")


def _report(ans: Any, ok_text: str) -> None:
    if ans.ok:
        if ok_text:
            flash(ok_text, "ok")
    else:
        err = ans.error
        flash(f"{err.get('code', ans.status)}: {err.get('message', '')}", "error")
