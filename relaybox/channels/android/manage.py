"""Phones as a person sees them: ``/api/v1/devices`` (relaybox envelope) and the pairing page.

``POST /api/v1/devices/pairing`` makes a one-time code and a QR code (SVG) that opens the
mobile pairing page ``/pair/<token>`` in the phone's camera app: API URL and code with copy
buttons, "Notification channel: SSE Only", where to get the APK, and relaybox's CA certificate
when TLS is set up (``relaybox tls init``). The page speaks English, Urdu (right-to-left), Nepali
or Bengali (``?lang=``, the browser's languages, the account's locale); the CLI and the JSON API
keep the English steps.
"""
from __future__ import annotations

import os
from typing import Any

from flask import Blueprint, Response, current_app, render_template, request, send_file
from flask_openapi3 import APIBlueprint, Tag
from pydantic import BaseModel, Field, ValidationError

from relaybox.api.common import (
    E164,
    SECURITY,
    HttpUrl,
    PageQuery,
    StrictBody,
    current_account,
)
from relaybox.channels.android import pairing as pairing_mod
from relaybox.channels.android.channel import AndroidArea, AndroidChannel, view
from relaybox.channels.android.mobile import mobile_base
from relaybox.channels.android.models import Device
from relaybox.errors import ApiError, envelope, invalid
from relaybox.timeutil import iso, now_ms

bp = APIBlueprint("android_devices", __name__, url_prefix="/api/v1", abp_tags=[Tag(name="Devices")],
                  abp_security=SECURITY)
page_bp = Blueprint("android_pair_page", __name__)


def area() -> AndroidArea:
    return current_app.extensions["relaybox_android"]


def ca_path() -> str | None:
    """relaybox's local CA certificate, when ``relaybox tls init`` made one."""
    path = os.path.join(current_app.extensions["relaybox"].config.data_dir, "tls", "ca.crt")
    return path if os.path.isfile(path) else None


# -- models --------------------------------------------------------------------------------------------
class DevicePath(BaseModel):
    device_id: str = Field(max_length=64)


class DevicePatch(StrictBody):
    label: str | None = Field(None, max_length=100, description="A name for people; null clears")
    enabled: bool | None = Field(None, description="false: no new messages are routed to this phone")
    sim_numbers: dict[str, E164 | None] | None = Field(
        None, max_length=16, description='Each SIM\'s own number by SIM number (1-based), e.g. '
                                         '{"1": "+923001234567", "2": null}; the app masks them')


class PairingBody(StrictBody):
    api_url: HttpUrl | None = Field(None, description="The API URL phones use; default: this host's")


# -- helpers -------------------------------------------------------------------------------------------
def _channel(device_id: str) -> AndroidChannel:
    account = current_account()
    device = Device.get_or_none(Device.id == device_id)
    if device is None or (device.account_id != account.id and not account.is_owner):
        raise ApiError("NOT_FOUND", f"no device {device_id}")
    return area().channel(device)


def pairing_data(p: pairing_mod.Pairing, tls: bool) -> dict[str, Any]:
    cfg = current_app.extensions["relaybox"].config
    return {
        "code": p.code,
        "expires_at": iso(p.expires_at),
        "expires_in_seconds": max(0, (p.expires_at - now_ms()) // 1000),
        "api_url": p.api_url,
        "page_url": p.page_url,
        "notification_channel": "SSE_ONLY",
        "apk_url": pairing_mod.APK_URL,
        "ca_certificate_url": f"{pairing_mod.origin_of(p.api_url)}/pair/ca.crt" if tls else None,
        "private_token_enabled": bool(cfg.android_private_token),
        "steps": pairing_mod.steps(p.api_url, p.code, tls),
        "qr_svg": pairing_mod.qr_svg(p.page_url),
    }


# -- endpoints -------------------------------------------------------------------------------------------
@bp.get("/devices")
def list_devices(query: PageQuery):
    """Paired phones (online state, last seen, battery, SIMs, queue depth, sent today), then the
    USB modems (``kind: modem``, as ``/modems`` shows them)."""
    from relaybox.channels.modem.channel import device_views

    account = current_account()
    q = Device.select().order_by(Device.created_at)
    if not account.is_owner:
        q = q.where(Device.account == account)
    phones = q.count()
    rows = list(q.paginate(query.page, query.limit))
    items = [view(area().channel(d)) for d in rows]
    modems = device_views(area().runtime, account)
    start = max(0, (query.page - 1) * query.limit - phones)
    items += modems[start:start + query.limit - len(items)]
    total = phones + len(modems)
    return envelope({"devices": items, "page": query.page,
                     "limit": query.limit, "total": total, "has_more": query.page * query.limit < total})


@bp.post("/devices/pairing", responses={201: None})
def create_pairing():
    """A single-use 8-digit pairing code (10 minutes) with the API URL, steps and a QR code (SVG)."""
    account = current_account()
    raw = request.get_json(silent=True) if request.get_data() else {}
    if not isinstance(raw, dict):
        raise invalid("body", "must be a JSON object")
    try:
        body = PairingBody.model_validate(raw)
    except ValidationError as exc:
        from relaybox.app import validation_error

        return validation_error(exc)
    api_url = (body.api_url or mobile_base()).rstrip("/")
    p = pairing_mod.create_pairing(account.id, api_url)
    return envelope(pairing_data(p, ca_path() is not None), 201)


@bp.get("/devices/<device_id>")
def get_device(path: DevicePath):
    """One phone."""
    return envelope(view(_channel(path.device_id)))


@bp.patch("/devices/<device_id>")
def patch_device(path: DevicePath, body: DevicePatch):
    """Label, enabled, and each SIM's own number (which becomes a ``from`` of ``GET /numbers``)."""
    ch = _channel(path.device_id)
    device = Device.get_by_id(ch.id)
    changes: dict[Any, Any] = {}
    if "label" in body.model_fields_set:
        changes[Device.label] = (body.label or "").strip() or None
    if body.enabled is not None:
        changes[Device.enabled] = body.enabled
    if body.sim_numbers is not None:
        sims = [dict(s) for s in device.sim_cards or []]
        for key, number in body.sim_numbers.items():
            field = f"sim_numbers.{key}"
            if not key.isdigit() or not 1 <= int(key) <= 16:
                raise invalid(field, "the key must be a SIM number, 1 to 16")
            if number:
                owner = area().runtime.router.channel_for_number(number)
                if owner is not None and owner.id != ch.id:
                    raise invalid(field, f"{number} already belongs to {owner.name}")
            sim_number = int(key)
            match = next((s for s in sims if s.get("simNumber") == sim_number), None)
            if match is None:
                match = {"slotIndex": sim_number - 1, "simNumber": sim_number, "phoneNumber": None,
                         "carrierName": None, "iccid": None, "present": False}
                sims.append(match)
            match["number"] = number
        changes[Device.sim_cards] = sorted(sims, key=lambda s: s["simNumber"])
    if changes:
        changes[Device.updated_at] = now_ms()
        Device.update(changes).where(Device.id == ch.id).execute()
        ch.refresh(Device.get_by_id(ch.id))
        if Device.enabled in changes:
            area()._kick()
    return envelope(view(ch))


@bp.delete("/devices/<device_id>")
def delete_device(path: DevicePath):
    """Unpair: the phone's token fails at once; its waiting messages are routed elsewhere."""
    ch = _channel(path.device_id)
    area().remove(ch.id)
    return envelope({"id": ch.id, "unpaired": True})


# -- the mobile pairing page --------------------------------------------------------------------------------
# In the phone user's language (en/ur/ne/bn, the admin page's catalogues). Flask-Babel and Babel's
# CLDR data load on the first page rendered (relaybox.admin.i18n.ensure_babel), not at start-up.
def _page_headers(resp: Response) -> Response:
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["Referrer-Policy"] = "no-referrer"  # the token is in the URL
    resp.headers["X-Robots-Tag"] = "noindex"
    return resp


def page_language(account_id: str | None = None) -> str:
    """``?lang=``, else the browser's best match among the four, else the locale of the account
    that made the code (the owner's when unknown), else English."""
    from relaybox.admin.i18n import DEFAULT, LANGUAGES
    from relaybox.models import Account

    asked = request.args.get("lang")
    if asked in LANGUAGES:
        return asked
    best = request.accept_languages.best_match(list(LANGUAGES))
    if best:
        return best
    account = (Account.get_or_none(Account.id == account_id) if account_id else None) or (
        Account.select().where(Account.is_owner).first())
    if account is not None and account.locale in LANGUAGES:
        return account.locale
    return DEFAULT


def _ltr(value: str) -> Any:
    """A URL or code inside a sentence: isolated and left-to-right, also in Urdu."""
    from markupsafe import Markup

    return Markup('<bdi dir="ltr">%s</bdi>') % value


def _render_page(status: int, account_id: str | None = None,
                 steps_for: tuple[str, str, bool] | None = None, **context: Any) -> Response:
    """``pair.html`` in the page's language; ``steps_for`` (API URL, code, TLS) adds the steps."""
    from flask_babel import force_locale, gettext
    from markupsafe import escape

    from relaybox.admin.i18n import LANGUAGES, direction, ensure_babel

    ensure_babel(current_app)
    lang = page_language(account_id)
    with force_locale(lang):
        if steps_for:
            context["steps"] = pairing_mod.steps(*steps_for, translate=lambda t: escape(gettext(t)), value=_ltr)
        html = render_template("pair.html", page_lang=lang, page_dir=direction(lang), languages=LANGUAGES,
                               **context)
    resp = Response(html, status=status, mimetype="text/html")
    resp.headers["Content-Language"] = lang
    resp.vary.add("Accept-Language")
    return _page_headers(resp)


@page_bp.get("/pair/ca.crt")
def ca_certificate():
    path = ca_path()
    if path is None:
        return _render_page(404, expired=True, tls=False, no_tls=True)
    return send_file(path, mimetype="application/x-x509-ca-cert", as_attachment=True,
                     download_name="relaybox-ca.crt", max_age=0)


@page_bp.get("/pair/<token>")
def pair_page(token: str):
    found = pairing_mod.page_pairing(token)
    if found is None:
        return _render_page(410, expired=True, tls=False, no_tls=False)
    row, code = found
    tls = ca_path() is not None
    return _render_page(
        200, row.account_id, expired=False, api_url=row.api_url, code=code, tls=tls,
        expires_at=iso(row.expires_at), expires_hm=f"{iso(row.expires_at)[11:16]} UTC",
        expires_in=max(0, (row.expires_at - now_ms()) // 1000),
        apk_url=pairing_mod.APK_URL, steps_for=(row.api_url, code, tls))


@page_bp.get("/pair/<token>/qr.svg")
def pair_qr(token: str):
    found = pairing_mod.page_pairing(token)
    if found is None:
        return _page_headers(Response(b"", status=410, mimetype="image/svg+xml"))
    row, _ = found
    url = f"{pairing_mod.origin_of(row.api_url)}/pair/{token}"
    return _page_headers(Response(pairing_mod.qr_svg(url), mimetype="image/svg+xml"))
