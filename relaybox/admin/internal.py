"""The admin page calls the same /api/v1 endpoints a developer calls, as the selected account.

Why: devices, modems, webhooks, contacts, OTP and traffic control each live in their own area
with their own rules. The web page must show exactly what the API shows and pick up an
endpoint the moment its area lands, without a second copy of anyone's logic. So a page asks
``call("GET", "/devices", account)``: the request is dispatched in-process through Flask's
full pipeline (before/after hooks, validation, error envelope) with ``g.account`` set, which
``relaybox.api.common.current_account`` honours instead of an API key.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import current_app, g, has_request_context, request

from relaybox.models import Account


@dataclass
class ApiAnswer:
    status: int
    body: dict[str, Any]

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300 and bool(self.body.get("ok"))

    @property
    def data(self) -> Any:
        return self.body.get("data") if self.ok else None

    @property
    def error(self) -> dict[str, Any]:
        return self.body.get("error") or {}

    @property
    def missing(self) -> bool:
        """The endpoint does not exist (its area has not landed on this box)."""
        return self.status in (404, 405) and self.error.get("message", "").startswith(
            ("no such path", )) or self.status == 405


def exists(method: str, path: str) -> bool:
    """Is ``METHOD /api/v1<path>`` routed? (Area not installed yet → False.)"""
    adapter = current_app.url_map.bind("localhost")
    try:
        adapter.match("/api/v1" + path, method=method)
    except Exception:  # noqa: BLE001 - NotFound / MethodNotAllowed / RequestRedirect
        return False
    return True


def call(method: str, path: str, account: Account, *, json: Any = None,
         query: dict[str, Any] | None = None) -> ApiAnswer:
    """Dispatch ``METHOD /api/v1<path>`` in-process as ``account``; never raises for API errors."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    kwargs: dict[str, Any] = {"method": method, "query_string": {k: v for k, v in (query or {}).items()
                                                                  if v not in (None, "")}}
    if has_request_context():
        kwargs["base_url"] = request.host_url
        kwargs["environ_base"] = {"REMOTE_ADDR": request.remote_addr or "127.0.0.1",
                                  "relaybox.internal": True}
        for name in ("X-Forwarded-Proto", "X-Forwarded-Host", "X-Forwarded-For", "Accept-Language"):
            if name in request.headers:
                kwargs.setdefault("headers", {})[name] = request.headers[name]
    if json is not None:
        kwargs["json"] = json
    # A fresh app context gives the inner request its own ``g`` (no leaking idempotency state).
    with app.app_context():
        g.account = account
        with app.test_request_context("/api/v1" + path, **kwargs):
            resp = app.full_dispatch_request()
    body = resp.get_json(silent=True)
    if not isinstance(body, dict):
        body = {"ok": False, "error": {"code": "INTERNAL_ERROR", "message": "not a JSON answer"}}
    return ApiAnswer(resp.status_code, body)
