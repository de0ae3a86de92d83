"""The device API of "SMS Gateway for Android" at ``/api/mobile/v1`` (ANDROID-PROTOCOL.md §3).

This is the app's protocol, not relaybox's ``/api/v1``: its own JSON shapes (camelCase, no
envelope), its own status codes (201/204/401/403/501), errors as ``{"message": ...}``, always
``application/json``, never a redirect.
"""
from __future__ import annotations

import hmac
import json
import logging
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import Blueprint, Response, current_app, g, request
from pydantic import BaseModel, ValidationError

from relaybox.accounts import owner_account
from relaybox.channels.android import dispatch, inbound
from relaybox.channels.android.channel import AndroidArea, AndroidChannel, merge_sims
from relaybox.channels.android.models import Device, PairingCode
from relaybox.channels.android.pairing import (
    MOBILE_PREFIX,
    new_device_token,
    redeem_code,
    signing_key,
    token_hash,
)
from relaybox.channels.android.protocol import (
    PatchDeviceIn,
    RegisterIn,
    StateUpdateIn,
    WebhookEventIn,
    app_version,
    first_error,
    format_date,
)
from relaybox.channels.android.sse import KEEPALIVE, frame
from relaybox.db import db, write_tx
from relaybox.ids import new_id
from relaybox.timeutil import now_ms

log = logging.getLogger("relaybox.android.api")
bp = Blueprint("android_mobile", __name__, url_prefix=MOBILE_PREFIX)

WEBHOOK_IDS = {"sms:received": "relaybox-sms-received", "system:ping": "relaybox-system-ping"}
FAILED_AUTH_LIMIT = 20  # failed sign-ups per client address per minute, then 429


def area() -> AndroidArea:
    return current_app.extensions["relaybox_android"]


def reply(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data, ensure_ascii=False, separators=(",", ":")), status=status,
                    mimetype="application/json")


def error(status: int, message: str) -> Response:
    return reply({"message": message}, status)


def no_content() -> Response:
    resp = Response(status=204)
    resp.headers.pop("Content-Type", None)
    return resp


def parse(model: type[BaseModel], *, array: bool = False) -> Any:
    """The JSON body as ``model`` (or a list of it); ``Response`` 400 when malformed."""
    data = request.get_json(silent=True, force=True)
    if data is None:
        return error(400, "body: not valid JSON")
    try:
        if array:
            if not isinstance(data, list):
                return error(400, "body: an array is required")
            if len(data) > 1000:
                return error(400, "body: at most 1000 items")
            return [model.model_validate(item) for item in data]
        return model.model_validate(data)
    except ValidationError as exc:
        return error(400, first_error(exc))


def _bearer() -> str | None:
    auth = request.headers.get("Authorization", "")
    return auth[7:].strip() if auth[:7].lower() == "bearer " else None


def current_device() -> tuple[Device, AndroidChannel] | None:
    token = _bearer()
    if not token or len(token) > 200:
        return None
    device = Device.get_or_none(Device.token_hash == token_hash(token))
    if device is None or not hmac.compare_digest(device.token_hash, token_hash(token)):
        return None
    return device, area().channel(device)


def device_auth(view: Callable[..., Any]) -> Callable[..., Any]:
    """Bearer <device token>; 401 for anything else (the app then registers again, §2)."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        found = current_device()
        if found is None:
            return error(401, "unknown device token")
        g.device, g.channel = found
        g.channel.seen()
        _note_user_agent(g.device)
        return view(*args, **kwargs)

    return wrapper


def _note_user_agent(device: Device) -> None:
    ua = request.headers.get("User-Agent", "")
    version = app_version(ua)
    if version and version != device.app_version:
        now = now_ms()
        Device.update(app_version=version, user_agent=ua[:200], updated_at=now).where(
            Device.id == device.id).execute()
        device.app_version, device.user_agent, device.updated_at = version, ua[:200], now
        area().channel(device).refresh(device)


def client_address() -> str:
    """The phone's address; a loopback proxy (nginx) passes it in X-Forwarded-For."""
    addr = request.remote_addr or ""
    if addr in ("127.0.0.1", "::1"):
        fwd = request.headers.get("X-Forwarded-For", "")
        if fwd:
            return fwd.split(",")[-1].strip()
    return addr


def mobile_base() -> str:
    """The API URL as the phone reaches it (``public_url``, else the request's own host)."""
    public = current_app.extensions["relaybox"].config.public_url
    if public:
        return public.rstrip("/") + MOBILE_PREFIX
    scheme, host = request.scheme, request.host
    if (request.remote_addr or "") in ("127.0.0.1", "::1"):
        scheme = request.headers.get("X-Forwarded-Proto", scheme).split(",")[0].strip() or scheme
        host = request.headers.get("X-Forwarded-Host", host).split(",")[0].strip() or host
    return f"{scheme}://{host}{MOBILE_PREFIX}"


class _Throttle:
    """Failed sign-up attempts per client address (codes are 8 digits: slow guessing down)."""

    def __init__(self, limit: int, window: float = 60.0) -> None:
        self.limit, self.window = limit, window
        self._hits: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def blocked(self, key: str) -> bool:
        with self._lock:
            q = self._hits.get(key)
            if not q:
                return False
            while q and q[0] < time.monotonic() - self.window:
                q.popleft()
            return len(q) >= self.limit

    def fail(self, key: str) -> None:
        with self._lock:
            self._hits[key].append(time.monotonic())
            if len(self._hits) > 10_000:
                self._hits.clear()


_throttle = _Throttle(FAILED_AUTH_LIMIT)


# -- #1-#3 the device ---------------------------------------------------------------------------------
@bp.post("/device")
def register():
    """Sign up by ``Code <one-time code>`` or ``Bearer <private token>`` → 201 {id, token, login}."""
    who = client_address()
    if _throttle.blocked(who):
        return error(429, "too many failed attempts; wait a minute")
    auth = request.headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    scheme, value = scheme.lower(), value.strip()
    body = parse(RegisterIn)
    if isinstance(body, Response):
        return body
    private = current_app.extensions["relaybox"].config.android_private_token
    if scheme not in ("code", "bearer"):
        _throttle.fail(who)
        return error(401, "sign in with a pairing code (Code) or the private token (Bearer)")
    if scheme == "bearer" and not (private and hmac.compare_digest(value.encode(), private.encode())):
        _throttle.fail(who)
        return error(401, "invalid private token")
    now = now_ms()
    token = new_device_token()
    ua = request.headers.get("User-Agent", "")[:200]
    device_id = new_id("dev")
    with write_tx():
        if scheme == "code":
            pairing: PairingCode | None = redeem_code(value)
            if pairing is None:
                _throttle.fail(who)
                return error(401, "invalid, used or expired pairing code")
            account_id = pairing.account_id
            PairingCode.update(device_id=device_id).where(PairingCode.id == pairing.id).execute()
        else:
            owner = owner_account()
            if owner is None:
                return error(503, "relaybox has no owner account yet; run relaybox init")
            account_id = owner.id
        device = Device.create(
            id=device_id, account=account_id, token_hash=token_hash(token),
            name=(body.name or "Android phone")[:128], push_token=body.pushToken or None,
            user_agent=ua or None, app_version=app_version(ua),
            sim_cards=merge_sims([], body.simCards or []), paired_by=scheme if scheme == "code" else "private_token",
            last_seen=now, created_at=now, updated_at=now)
    area().add(device).seen()
    log.info("device %s (%s) paired by %s", device.id, device.name, device.paired_by)
    return reply({"id": device.id, "token": token, "login": device.id}, 201)


@bp.patch("/device")
def update_device():
    """401 for an unknown token, 403 when ``id`` is not the token's device, else 204."""
    found = current_device()
    if found is None:
        return error(401, "unknown device token")
    device, ch = found
    body = parse(PatchDeviceIn)
    if isinstance(body, Response):
        return body
    if body.id != device.id:
        return error(403, "id does not match the token's device")
    ch.seen()
    now = now_ms()
    ua = request.headers.get("User-Agent", "")[:200]
    changes: dict[Any, Any] = {Device.push_token: body.pushToken or None, Device.updated_at: now}
    if body.simCards is not None:
        changes[Device.sim_cards] = merge_sims(device.sim_cards or [], body.simCards)
    if app_version(ua):
        changes[Device.app_version] = app_version(ua)
        changes[Device.user_agent] = ua
    with write_tx():
        Device.update(changes).where(Device.id == device.id).execute()
    ch.refresh(Device.get_by_id(device.id))
    return no_content()


@bp.get("/device")
def get_device():
    """``{externalIp, device?}``; works without a token (the app's "public IP")."""
    out: dict[str, Any] = {"externalIp": client_address()}
    found = current_device()
    if found is not None:
        device, ch = found
        ch.seen()
        out["device"] = {"id": device.id, "name": device.name, "createdAt": format_date(device.created_at),
                         "updatedAt": format_date(device.updated_at), "lastSeen": format_date(ch.last_seen_ms),
                         "simCards": [{k: s.get(k) for k in ("slotIndex", "simNumber", "phoneNumber",
                                                              "carrierName", "iccid")}
                                      for s in device.sim_cards or [] if s.get("present", True)]}
    return reply(out)


# -- #4-#5 messages --------------------------------------------------------------------------------
@bp.get("/message")
@bp.get("/messages")
@device_auth
def get_messages():
    order = (request.args.get("order") or "lifo").lower()
    if order not in ("lifo", "fifo"):
        return error(400, "order: lifo or fifo")
    return reply(dispatch.pull(g.channel, order))


@bp.patch("/message")
@bp.patch("/messages")
@device_auth
def patch_messages():
    items = parse(StateUpdateIn, array=True)
    if isinstance(items, Response):
        return items
    for item in items:
        dispatch.apply_report(g.channel, item)
    return no_content()


# -- #6 events ---------------------------------------------------------------------------------------
@bp.get("/events")
@device_auth
def events_stream():
    """SSE: MessageEnqueued, MessageCancelled, WebhooksUpdated, SettingsUpdated (§4.9)."""
    ar = area()
    ch: AndroidChannel = g.channel
    device: Device = g.device
    keepalive = current_app.extensions["relaybox"].config.sse_keepalive_seconds
    disconnected = request.environ.get("waitress.client_disconnected")
    first_sync = device.synced_at is None
    stream = ar.hub.open(ch.id)
    if first_sync:
        with write_tx():
            Device.update(synced_at=now_ms()).where(Device.id == ch.id).execute()
        ch.device.synced_at = now_ms()
    log.info("device %s event stream open", ch.id)

    def generate():
        try:
            # Headers go out with the first bytes: the app's onOpen (and its pull) fires now.
            yield KEEPALIVE
            _release_db_connection()  # this thread now only waits; its SQLite connection is idle
            if first_sync:  # the app's start-up sync raced its registration (§7)
                yield frame("WebhooksUpdated") + frame("SettingsUpdated")
            last = time.monotonic()
            while True:
                wait = max(0.05, min(1.0, keepalive - (time.monotonic() - last)))
                frames = stream.take(wait)
                if frames is None:
                    return
                if frames:
                    yield b"".join(frames)
                    last = time.monotonic()
                elif time.monotonic() - last >= keepalive:
                    yield KEEPALIVE
                    last = time.monotonic()
                if disconnected is not None and disconnected():
                    stream.close("client disconnected")
                    return
                if ar.hub.server_stopping():
                    stream.close("server stopping")
                    return
        finally:
            ar.hub.release(stream)
            log.info("device %s event stream closed (%s)", ch.id, stream.close_reason or "ended")

    resp = Response(generate(), content_type="text/event-stream")  # exactly, no charset (§4.9)
    resp.headers["Cache-Control"] = "no-cache"
    resp.headers["X-Accel-Buffering"] = "no"  # nginx: pass every event through at once
    return resp


def _release_db_connection() -> None:
    """Close this thread's database connection (reopened on its next query)."""
    try:
        if not db.in_transaction():
            db.close()
    except Exception:
        log.debug("could not close the stream thread's connection", exc_info=True)


# -- #7-#8 webhooks and settings ------------------------------------------------------------------------
@bp.get("/webhooks")
@device_auth
def get_webhooks():
    url = f"{mobile_base()}/inbound/{g.device.id}"
    return reply([{"id": hook_id, "deviceId": None, "url": url, "event": event}
                  for event, hook_id in WEBHOOK_IDS.items()])


@bp.get("/settings")
@device_auth
def get_settings():
    cfg = current_app.extensions["relaybox"].config
    return reply({
        "gateway": {"notification_channel": "SSE_ONLY"},
        "ping": {"interval_seconds": cfg.android_ping_interval},
        # A LAN appliance may have no internet: the phone must still post inbound SMS to us.
        "webhooks": {"signing_key": signing_key(g.device.id, g.device.key_version), "retry_count": 15,
                     "internet_required": False},
    })


# -- #9-#10 account calls relaybox does not have ---------------------------------------------------------
@bp.get("/user/code")
def user_code():
    return error(501, "not implemented: pair more phones with relaybox device pair")


@bp.patch("/user/password")
def user_password():
    return error(501, "not implemented: relaybox has no per-phone accounts")


# -- inbound: relaybox's own webhook URL (§7) ---------------------------------------------------------
@bp.post("/inbound/<device_id>")
def inbound_event(device_id: str):
    device = Device.get_or_none(Device.id == device_id) if len(device_id) <= 40 else None
    if device is None:
        return error(404, "unknown device")
    raw = request.get_data(cache=True)
    try:
        inbound.verify(device, raw, request.headers.get("X-Timestamp"), request.headers.get("X-Signature"))
    except inbound.Refused as exc:
        log.warning("inbound post for %s refused: %s", device_id, exc)
        return error(exc.status, str(exc))
    ch = area().channel(device)
    ch.seen()
    body = parse(WebhookEventIn)
    if isinstance(body, Response):
        return body
    try:
        outcome = inbound.handle(ch, body)
    except inbound.Refused as exc:
        return error(exc.status, str(exc))
    return reply({"status": outcome})
