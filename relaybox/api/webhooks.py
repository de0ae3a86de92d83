"""Webhooks API: URLs (global and per number), the signing secret, the attempt log, redelivery,
test sends, and the test bins (``/status/bin``, ``/messages/bin``).

The delivery machinery lives in :mod:`relaybox.webhooks`; nothing here makes an HTTP request
except ``POST /webhooks/test``, which waits for its single attempt on the delivery threads.
"""
from __future__ import annotations

from typing import Any, Literal

from flask import current_app, request
from flask_openapi3 import APIBlueprint, Tag
from pydantic import BaseModel, Field, ValidationError

from relaybox import webhooks as wh
from relaybox.api.common import (
    SECURITY,
    HttpUrl,
    PageQuery,
    StrictBody,
    current_account,
    normalize_e164,
    page_of,
    presented_key,
)
from relaybox.db import write_tx
from relaybox.errors import ApiError, envelope, invalid
from relaybox.models import Account
from relaybox.timeutil import iso, now_ms

bp = APIBlueprint("webhooks", __name__, url_prefix="/api/v1", abp_tags=[Tag(name="Webhooks")],
                  abp_security=SECURITY)
bins = APIBlueprint("webhook_bins", __name__, url_prefix="/api/v1", abp_tags=[Tag(name="Webhook test bins")])


def _service() -> wh.WebhookService:
    return current_app.extensions["relaybox.webhooks"]


# -- models ------------------------------------------------------------------------------------
class WebhooksBody(StrictBody):
    status_url: HttpUrl | None = Field(None, description="Status webhooks (message.status, otp.verified, "
                                                         "device.online/offline); null clears")
    inbound_url: HttpUrl | None = Field(None, description="message.inbound webhooks; null clears")


class NumberPath(BaseModel):
    phone: str = Field(max_length=40, description="A sender number in E.164 (URL-encode the + as %2B or keep it)")


class NumberWebhooksBody(StrictBody):
    inbound_callback: HttpUrl | None = Field(description="Inbound webhooks for this number; null clears")


class RotateBody(StrictBody):
    keep_previous_seconds: int = Field(wh.DEFAULT_KEEP_PREVIOUS_S, ge=0, le=7 * 86400,
                                       description="How long the old secret still signs (both signatures sent)")


class TestBody(StrictBody):
    target: Literal["status", "inbound"] = Field("status", description="Which configured URL to test")
    url: HttpUrl | None = Field(None, description="Test this URL instead of the configured one")


class DeliveryPath(BaseModel):
    delivery_id: str = Field(max_length=64)


class DeliveriesQuery(PageQuery):
    event: Literal[wh.EVENT_TYPES] | None = None  # type: ignore[valid-type]
    state: Literal[wh.STATES] | None = None  # type: ignore[valid-type]
    message_id: str | None = Field(None, max_length=255)


class BinQuery(PageQuery):
    scope: Literal["all", "account", "instance"] = Field(
        "all", description="account: posted with your key; instance: posted without a key (owner only)")


def _optional_body(model: type[StrictBody]) -> Any:
    """For POSTs whose body is optional: an empty body means the defaults. (flask-openapi3 would
    reject an empty body, so these views validate it themselves, with the same error shape.)"""
    from flask import abort

    from relaybox.app import validation_error

    data = request.get_json(silent=True) if request.get_data(cache=True).strip() else {}
    try:
        return model.model_validate({} if data is None else data)
    except ValidationError as exc:
        abort(validation_error(exc))


def _body_doc(model: type[BaseModel]) -> dict[str, Any]:
    return {"requestBody": {"required": False, "content": {"application/json": {"schema": model.model_json_schema()}}}}


# -- configuration -------------------------------------------------------------------------------
def _config_view(account_id: str) -> dict[str, Any]:
    s = wh.settings_for(account_id)
    return {
        "status_url": s.status_url,
        "inbound_url": s.inbound_url,
        "disabled_urls": wh.disabled_urls(account_id),
        "retry_schedule_seconds": list(_service().schedule),
        "signature_scheme": "standard-webhooks v1 (webhook-id, webhook-timestamp, webhook-signature)",
        "updated_at": iso(s.updated_at),
    }


@bp.get("/webhooks")
def get_webhooks():
    """The global webhook URLs, URLs disabled after a 410, and the retry schedule."""
    account = current_account()
    return envelope(_config_view(account.id))


@bp.put("/webhooks")
def put_webhooks(body: WebhooksBody):
    """Set the global webhook URLs.

    Omitted fields stay as they are; null clears. Setting a URL that was disabled by a 410
    enables it again."""
    account = current_account()
    changes = {k: getattr(body, k) for k in body.model_fields_set}
    wh.set_urls(account.id, changes)
    return envelope(_config_view(account.id))


def _owned_number(account: Account, phone: str) -> str:
    """A number of ``GET /numbers`` for this account (same rule), else NOT_FOUND."""
    from relaybox.numbers import owned_numbers

    try:
        number = normalize_e164(phone)
    except ValueError as exc:
        raise invalid("phone", str(exc)) from None
    if not any(n["phone"] == number for n in owned_numbers(current_app.extensions["relaybox"], account)):
        raise ApiError("NOT_FOUND", f"{number} is not a number of your devices or modems (GET /numbers)")
    return number


@bp.get("/numbers/<phone>/webhooks")
def get_number_webhooks(path: NumberPath):
    """The inbound webhook of one of your sender numbers."""
    account = current_account()
    number = _owned_number(account, path.phone)
    return envelope({"phone": number, "inbound_callback": wh.inbound_callback_for(account.id, number)})


@bp.put("/numbers/<phone>/webhooks")
def put_number_webhooks(path: NumberPath, body: NumberWebhooksBody):
    """Send inbound messages to this number to their own URL (overrides the global inbound_url)."""
    account = current_account()
    number = _owned_number(account, path.phone)
    wh.set_inbound_callback(account.id, number, body.inbound_callback)
    return envelope({"phone": number, "inbound_callback": body.inbound_callback})


def _secret_view(account_id: str) -> dict[str, Any]:
    s = wh.settings_for(account_id)
    now = now_ms()
    previous = bool(s.previous_salt and (s.previous_until or 0) > now)
    return {"secret": wh.current_secret(account_id), "rotated_at": iso(s.secret_rotated_at),
            "previous_valid_until": iso(s.previous_until) if previous else None}


@bp.get("/webhooks/secret")
def get_secret():
    """The signing secret (``whsec_...``) to verify webhook signatures with."""
    account = current_account()
    return envelope(_secret_view(account.id))


@bp.post("/webhooks/secret/rotate", openapi_extensions=_body_doc(RotateBody))
def rotate_secret():
    """Rotate the signing secret.

    The previous secret keeps signing (a second signature in the header) for
    ``keep_previous_seconds`` (default 24 h), so receivers can switch without missing events."""
    account = current_account()
    body = _optional_body(RotateBody)
    wh.rotate_secret(account.id, body.keep_previous_seconds)
    return envelope(_secret_view(account.id))


# -- attempt log ---------------------------------------------------------------------------------
def _delivery(account: Account, delivery_id: str) -> wh.WebhookDelivery:
    d = wh.WebhookDelivery.get_or_none((wh.WebhookDelivery.id == delivery_id)
                                       & (wh.WebhookDelivery.account == account))
    if d is None:
        raise ApiError("NOT_FOUND", f"no webhook delivery {delivery_id}")
    return d


def _detail(d: wh.WebhookDelivery) -> dict[str, Any]:
    data = wh.delivery_view(d, _service().schedule)
    data["attempt_log"] = [wh.attempt_view(a) for a in
                           wh.WebhookAttempt.select().where(wh.WebhookAttempt.delivery == d.id)
                           .order_by(wh.WebhookAttempt.number, wh.WebhookAttempt.id)]
    return data


@bp.get("/webhooks/deliveries")
def list_deliveries(query: DeliveriesQuery):
    """Webhook deliveries, newest first; filter by event, state and message id."""
    account = current_account()
    D = wh.WebhookDelivery
    q = D.select().where(D.account == account)
    if query.event:
        q = q.where(D.event_type == query.event)
    if query.state:
        q = q.where(D.state == query.state)
    if query.message_id:
        q = q.where(D.message_id == query.message_id)
    rows, total, more = page_of(q.order_by(D.id.desc()), query.page, query.limit)
    schedule = _service().schedule
    return envelope({"deliveries": [wh.delivery_view(d, schedule, with_payload=False) for d in rows],
                     "page": query.page, "limit": query.limit, "total": total, "has_more": more})


@bp.get("/webhooks/deliveries/<delivery_id>")
def get_delivery(path: DeliveryPath):
    """One delivery with its payload and every attempt.

    Each attempt: time, URL, HTTP status or network error, latency, the first 1 KB of the
    answer, and the next retry time."""
    account = current_account()
    return envelope(_detail(_delivery(account, path.delivery_id)))


@bp.post("/webhooks/deliveries/<delivery_id>/redeliver", responses={202: None})
def redeliver(path: DeliveryPath):
    """Send a delivery again now.

    A fresh retry schedule, to the URL configured now, with the same webhook-id. Works for
    failed, disabled and succeeded deliveries; a success re-enables a URL disabled by a 410."""
    account = current_account()
    d = _delivery(account, path.delivery_id)
    try:
        d = _service().redeliver(d)
    except LookupError as exc:
        raise ApiError("CONFLICT", f"{exc}; set one with PUT /webhooks") from None
    except RuntimeError as exc:
        raise ApiError("CONFLICT", str(exc)) from None
    return envelope(_detail(d), 202)


@bp.post("/webhooks/test", openapi_extensions=_body_doc(TestBody))
def send_test():
    """Send a signed test webhook and answer the attempt.

    A ``webhook.test`` event goes to the configured status (or inbound) URL, or ``url``: one
    attempt, no retries, kept in the attempt log."""
    account = current_account()
    body = _optional_body(TestBody)
    if body.url:
        url, source = body.url, "test"
    else:
        s = wh.settings_for(account.id)
        url = s.status_url if body.target == "status" else s.inbound_url
        source = f"{body.target}_url"
        if not url:
            raise invalid("target", f"no {body.target}_url is configured; set it with PUT /webhooks or pass url")
    d = _service().send_test(account.id, url, source)
    data = _detail(d)
    data["attempt"] = data["attempt_log"][-1] if data["attempt_log"] else None
    return envelope(data)


# -- test bins -----------------------------------------------------------------------------------
_KEPT_HEADERS = ("content-type", "user-agent", "webhook-id", "webhook-timestamp", "webhook-signature")


def _bin_post(name: str):
    account = current_account() if presented_key() else None
    raw = request.get_data(cache=True)
    if len(raw) > wh.BIN_MAX_BYTES:
        raise invalid("body", "larger than 64 KB")
    if not raw.strip():
        raise invalid("body", "a JSON payload is required")
    payload = request.get_json(silent=True)
    if payload is None and raw.strip() != b"null":
        raise invalid("body", "not valid JSON")
    headers = {k: request.headers[k] for k in _KEPT_HEADERS if k in request.headers}
    E = wh.WebhookBinEntry
    owner = account.id if account else None
    with write_tx():
        entry = E.create(bin=name, account=owner, payload=payload, headers=headers, size=len(raw),
                         received_at=now_ms())
        mine = (E.bin == name) & (E.account == owner if owner else E.account.is_null())
        keep = E.select(E.id).where(mine).order_by(E.id.desc()).limit(wh.BIN_KEEP)
        E.delete().where(mine & E.id.not_in(keep)).execute()
    return envelope({"id": entry.id, "bin": name, "scope": "account" if owner else "instance",
                     "size": len(raw), "received_at": iso(entry.received_at)}, 201)


def _bin_get(name: str, query: BinQuery):
    account = current_account()
    E = wh.WebhookBinEntry
    if query.scope == "instance" and not account.is_owner:
        raise ApiError("FORBIDDEN", "only the owner account can read the instance-wide bin")
    cond = E.account == account
    if query.scope == "instance":
        cond = E.account.is_null()
    elif query.scope == "all" and account.is_owner:
        cond = cond | E.account.is_null()
    rows, total, more = page_of(E.select().where((E.bin == name) & cond).order_by(E.id.desc()),
                                query.page, query.limit)
    items = [{"id": r.id, "scope": "account" if r.account_id else "instance", "received_at": iso(r.received_at),
              "unix_timestamp": r.received_at, "size": r.size, "headers": r.headers, "payload": r.payload}
             for r in rows]
    return envelope({"bin": name, "items": items, "page": query.page, "limit": query.limit, "total": total,
                     "has_more": more})


_BIN_DOC = {"requestBody": {"required": True, "content": {"application/json": {"schema": {}}}}}


@bins.post("/status/bin", openapi_extensions=_BIN_DOC, responses={201: None})
def post_status_bin():
    """Store a status payload in the test bin.

    Any JSON (at most 64 KB; the last 100 are kept). With an API key it goes to your account's
    bin, without one to the instance-wide bin. Point a status_url here to try webhooks."""
    return _bin_post("status")


@bins.get("/status/bin", security=SECURITY)
def get_status_bin(query: BinQuery):
    """Read the status test bin, newest first.

    The owner account also sees the instance-wide bin (payloads posted without a key)."""
    return _bin_get("status", query)


@bins.post("/messages/bin", openapi_extensions=_BIN_DOC, responses={201: None})
def post_messages_bin():
    """Store an inbound-message payload in the test bin (like /status/bin)."""
    return _bin_post("messages")


@bins.get("/messages/bin", security=SECURITY)
def get_messages_bin(query: BinQuery):
    """Read the inbound-message test bin, newest first."""
    return _bin_get("messages", query)


def init_app(app: Any) -> None:
    """Register blueprints, the delivery service, its Huey task and sweeper (called by create_app)."""
    runtime = app.extensions["relaybox"]
    app.extensions["relaybox.webhooks"] = wh.install(runtime)
    app.register_api(bp)
    app.register_api(bins)
