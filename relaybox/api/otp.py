"""OTP endpoints: ``POST /otp/send``, ``POST /otp/verify``, ``GET /otp/{otp_id}``.

The OTP SMS is an ordinary message built on the ``/sms/send`` path (``relaybox.api.sms``):
same account gates, routing, checks, accept transaction and after-commit steps, in the
``otp`` priority lane and with the code's expiry as its TTL, so a late code is never sent.
The rules and the storage of codes are in :mod:`relaybox.otp` (read its docstring).
"""
from __future__ import annotations

import re
from typing import Any, Literal

from flask import current_app, g
from flask_openapi3 import APIBlueprint, Tag
from pydantic import BaseModel, Field, field_validator

from relaybox import events, messages, otp
from relaybox.api import sms
from relaybox.api.common import E164, SECURITY, StrictBody, current_account, idempotent
from relaybox.errors import ApiError, envelope, invalid
from relaybox.ids import new_id
from relaybox.models import PRIORITIES, Message
from relaybox.runtime import Runtime
from relaybox.sms.pdu import analyze
from relaybox.timeutil import iso, now_ms

bp = APIBlueprint("otp", __name__, url_prefix="/api/v1", abp_tags=[Tag(name="OTP")], abp_security=SECURITY)

PURPOSE = r"^[a-z0-9_-]{1,32}$"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _runtime() -> Runtime:
    return current_app.extensions["relaybox"]


class OtpSendBody(sms._Common):
    to: E164 = Field(description="Recipient in E.164, e.g. +923001234567")
    purpose: str = Field(pattern=PURPOSE, description="What the code is for, e.g. login, password_reset")
    locale: Literal["en", "ur", "ne", "bn"] | None = Field(None, description="Default: the account's locale")
    length: int = Field(6, ge=4, le=10, description="Digits in the code")
    expires_in_seconds: int = Field(300, ge=60, le=3600)
    app_name: str | None = Field(None, min_length=1, max_length=40, description="Shown in the text")
    template: str | None = Field(None, min_length=1, max_length=1000,
                                 description="Your text: must contain {code}; may use {app_name}, {minutes}")
    android_app_hash: str | None = Field(None, pattern=r"^[A-Za-z0-9+/]{11}$",
                                         description="Android SMS Retriever app hash (11 characters)")
    domain: str | None = Field(None, max_length=253,
                               description="Adds the last line '@domain #code' (WebOTP, iOS autofill)")
    from_: E164 | None = Field(None, alias="from", description="A number of one of your channels")
    device_id: str | None = Field(None, max_length=64, description="Send through this device or modem")
    client_reference_id: str | None = Field(None, min_length=1, max_length=255)

    @property
    def priority(self) -> str:
        """The routing lane, as ``relaybox.api.sms._new_message`` reads it."""
        return "otp"

    @field_validator("app_name")
    @classmethod
    def _one_line(cls, v: str | None) -> str | None:
        if v is not None and (_CONTROL.search(v) or not v.strip()):
            raise ValueError("must be one line of text")
        return v

    @field_validator("template")
    @classmethod
    def _template(cls, v: str | None) -> str | None:
        return None if v is None else otp.check_template(v)

    @field_validator("domain")
    @classmethod
    def _domain(cls, v: str | None) -> str | None:
        return None if v is None else otp.valid_domain(v)


class OtpVerifyBody(StrictBody):
    otp_id: str | None = Field(None, min_length=1, max_length=40, description="The otp_id of /otp/send")
    to: E164 | None = Field(None, description="With purpose, instead of otp_id: the latest code sent")
    purpose: str | None = Field(None, pattern=PURPOSE)
    code: str = Field(pattern=r"^[0-9]{4,10}$", description="The digits the user typed")


class OtpPath(BaseModel):
    otp_id: str = Field(max_length=64)


# -- endpoints --------------------------------------------------------------------------------
@bp.post("/otp/send", responses={202: None})
@idempotent
def send_otp(body: OtpSendBody):
    """Send a one-time code by SMS. The answer never contains the code."""
    account = current_account()
    sms.check_can_send(account)
    rt = _runtime()
    cfg = rt.config
    now = now_ms()
    locale = body.locale or (account.locale if account.locale in otp.LOCALES else "en")
    if body.template and "{app_name}" in body.template and not body.app_name:
        raise invalid("app_name", "required by the template's {app_name}")
    code = otp.new_code(body.length)
    text, masked = otp.render_pair(code, locale=locale, minutes=otp.minutes_for(body.expires_in_seconds),
                                   app_name=body.app_name, template=body.template,
                                   android_app_hash=body.android_app_hash, domain=body.domain)
    if len(text) > 1600:
        raise invalid("template", "the text would be longer than 1600 characters")
    expires_at = now + body.expires_in_seconds * 1000
    pinned = rt.router.resolve_pin(body.device_id, body.from_)
    for check in rt.message_checks:
        check(account, body.to, masked)  # checks see the masked text: they may log it
    info = analyze(text)
    otp_id = new_id("otp")
    with sms.queue_tx():
        # Counted inside the write transaction, so concurrent sends cannot both pass.
        limits = otp.send_limits(cfg, account.id, body.to, body.purpose, now)
        if limits.retry_after_s:
            raise otp.rate_limited(limits)
        item = sms._new_message(account.id, body, body.to, text, channel=sms._assign(rt, body, pinned, False),
                                send_at=None, expires_at=expires_at, item=body, ref=body.client_reference_id)
        item.body = masked  # segments/encoding were counted on the real text; the row keeps the mask
        otp.supersede(account.id, body.to, body.purpose, now)
        for hook in rt.before_accept:
            hook(account, [item])
        (m,), evs = messages.accept([item], now)
        otp.create(otp_id=otp_id, account_id=account.id, to=body.to, purpose=body.purpose, locale=locale,
                   code=code, text=text, message_id=m.id, max_attempts=cfg.otp_max_attempts, now=now,
                   expires_at=expires_at)
        data = {
            "otp_id": otp_id, "status": "sent", "to": body.to, "purpose": body.purpose, "locale": locale,
            "length": body.length, "expires_in_seconds": body.expires_in_seconds,
            "expires_at": iso(expires_at), "created_at": iso(now), "message_id": m.id,
            "message_status": m.status, "segments": info.segments, "encoding": info.encoding,
        }
        g.idem.store(202, data)
    sms._finish(rt, [m], evs)
    return envelope(data, 202, headers=limits.headers)


@bp.post("/otp/verify")
def verify_otp(body: OtpVerifyBody):
    """Check a code. A wrong code is a 200 with ``result: failed``, not an HTTP error."""
    account = current_account()
    now = now_ms()
    o = _find(account, body)
    outcome = otp.verify(_runtime().config, o, body.code, now)
    events.publish(outcome.events)
    return envelope(outcome.answer())


@bp.get("/otp/<otp_id>")
def get_otp(path: OtpPath):
    """State, attempts and times of an OTP (never the code)."""
    account = current_account()
    o = otp.Otp.get_or_none((otp.Otp.id == path.otp_id) & (otp.Otp.account == account.id))
    if o is None:
        raise ApiError("NOT_FOUND", f"no OTP {path.otp_id}")
    m = Message.get_or_none(Message.id == o.message_id)
    return envelope(otp.view(o, now_ms(), m))


def _find(account: Any, body: OtpVerifyBody) -> otp.Otp:
    if body.otp_id:
        o = otp.find(account.id, body.otp_id)
        if o is None or (body.to and body.to != o.to_number) or (body.purpose and body.purpose != o.purpose):
            raise ApiError("NOT_FOUND", f"no OTP {body.otp_id}")
        return o
    if not body.to:
        raise invalid("otp_id", "required (or to and purpose)")
    if not body.purpose:
        raise invalid("purpose", "required with to (or give otp_id)")
    o = otp.latest(account.id, body.to, body.purpose)
    if o is None:
        raise ApiError("NOT_FOUND", "no OTP for this number and purpose")
    return o


def _link_message(m: Message, data: dict[str, Any]) -> None:
    """``GET /sms/{id}`` of an OTP message names its OTP."""
    if m.priority == PRIORITIES["otp"]:
        o = otp.Otp.select(otp.Otp.id).where(otp.Otp.message_id == m.id).first()
        if o is not None:
            data["otp_id"] = o.id


def init_app(app: Any) -> None:
    """Register the blueprint, the body source channels use, the wipe listener and sweeper."""
    app.register_api(bp)
    rt: Runtime = app.extensions["relaybox"]
    messages.add_body_source(otp.body_source)
    events.subscribe(otp.on_events)
    rt.message_view_hooks.append(_link_message)
    last = {"wipe": 0, "prune": 0}

    def otp_sweeper() -> None:
        now = now_ms()
        otp.expire_due(now)
        if now - last["wipe"] > 30_000:
            otp.wipe_stale()
            last["wipe"] = now
        if now - last["prune"] > 600_000:
            otp.prune(now)
            last["prune"] = now

    rt.sweepers.append(otp_sweeper)
