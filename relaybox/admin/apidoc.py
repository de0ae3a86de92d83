"""The OpenAPI 3.1 file at ``/api/v1/openapi.json``: flask-openapi3's generated spec, completed.

flask-openapi3 builds paths and request schemas from the pydantic models of every blueprint.
What it cannot know is written here once for every endpoint, so that no area has to repeat it:
the success envelope around ``data``, the error envelope (with the catalogue's codes) for every
error status, ``Idempotency-Key`` on sending POSTs, the server URL of this box, and the docs'
tags. The result is validated with openapi-spec-validator in the tests.
"""
from __future__ import annotations

import copy
from typing import Any

from flask import Response, current_app, json, redirect, request, url_for

from relaybox.errors import CATALOGUE

REF = "#/components/schemas/"
API_PREFIX = "/api/v1"
IDEMPOTENT_POSTS = ("/api/v1/sms/send", "/api/v1/sms/batch", "/api/v1/sms/list", "/api/v1/otp/send")

ENVELOPE = {
    "title": "Envelope",
    "type": "object",
    "description": "Every successful answer: the result is under `data`.",
    "required": ["ok", "data", "timestamp", "unix_timestamp"],
    "properties": {
        "ok": {"type": "boolean", "const": True},
        "data": {"description": "The result; its shape is described by each endpoint."},
        "timestamp": {"type": "string", "format": "date-time", "description": "UTC, with Z"},
        "unix_timestamp": {"type": "integer", "description": "Milliseconds since the epoch"},
    },
}


def _error_envelope() -> dict[str, Any]:
    return {
        "title": "ErrorEnvelope",
        "type": "object",
        "description": "Every error answer. `error.code` is one of the catalogue's codes; "
                       "`error.field` names the bad parameter of an INVALID_REQUEST.",
        "required": ["ok", "error", "timestamp", "unix_timestamp"],
        "properties": {
            "ok": {"type": "boolean", "const": False},
            "error": {"$ref": REF + "ErrorBody"},
            "timestamp": {"type": "string", "format": "date-time"},
            "unix_timestamp": {"type": "integer"},
        },
    }


def _error_body() -> dict[str, Any]:
    return {
        "title": "ErrorBody",
        "type": "object",
        "required": ["code", "message"],
        "properties": {
            "code": {"type": "string", "enum": list(CATALOGUE),
                     "description": "; ".join(f"{c} ({s}): {m}" for c, (s, m) in CATALOGUE.items())},
            "message": {"type": "string"},
            "field": {"type": ["string", "null"]},
            "correlation_id": {"type": "string", "description": "INTERNAL_ERROR only: quote it to your admin"},
        },
        "additionalProperties": True,
    }


ERROR_TEXT = {
    400: "INVALID_REQUEST: a parameter is invalid; error.field names it",
    401: "UNAUTHORIZED: API key or auth header missing or invalid",
    402: "INSUFFICIENT_BALANCE or SUBSCRIPTION_EXPIRED",
    403: "FORBIDDEN: API access not enabled for this account",
    404: "NOT_FOUND: no such resource (or not yours)",
    409: "INVALID_DEVICE, IDEMPOTENCY_CONFLICT (still running) or CONFLICT",
    422: "IDEMPOTENCY_CONFLICT: the Idempotency-Key was used with another body",
    429: "RATE_LIMITED: see Retry-After, RateLimit-Policy and RateLimit",
    503: "QUEUE_BLOCKED or QUEUE_FAILED",
}


def _error_codes(path: str, method: str, op: dict[str, Any]) -> list[int]:
    """The errors an operation can answer, from what it is (secured, has a path id, sends)."""
    codes = [400]
    if op.get("security"):
        codes += [401, 403, 429]
    if "{" in path:
        codes.append(404)
    if method in ("post", "put", "patch", "delete") and op.get("security"):
        codes.append(409)
    if method == "post" and path in IDEMPOTENT_POSTS:
        codes += [402, 422, 503]
    return codes


def _json(ref: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": REF + ref}}}


def _complete(spec: dict[str, Any]) -> dict[str, Any]:
    spec = copy.deepcopy(spec)
    comps = spec.setdefault("components", {})
    schemas = comps.setdefault("schemas", {})
    schemas["Envelope"] = ENVELOPE
    schemas["ErrorEnvelope"] = _error_envelope()
    schemas["ErrorBody"] = _error_body()
    for path, item in spec.get("paths", {}).items():
        for method, op in item.items():
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            responses = op.setdefault("responses", {})
            codes = [c for c in responses if str(c).isdigit()]
            if not any(200 <= int(c) < 300 for c in codes):
                responses["200"] = {"description": "OK"}
            for code, resp in list(responses.items()):
                if not str(code).isdigit():
                    continue
                n = int(code)
                if 200 <= n < 300 and n != 204:
                    if not resp.get("content"):  # declared content (a CSV download, ...) stays
                        resp["content"] = _json("Envelope")
                elif n >= 400:
                    # flask-openapi3 documents its validation error as an *array*; ours is one object.
                    resp["content"] = _json("ErrorEnvelope")
            for code in _error_codes(path, method, op):
                responses.setdefault(str(code), {"description": ERROR_TEXT[code], "content": _json("ErrorEnvelope")})
            responses.setdefault("default", {"description": "Error (see the error catalogue)",
                                             "content": _json("ErrorEnvelope")})
            if path == API_PREFIX + "/ready" and method == "get":
                # Not ready is still an answer, not an error: the success envelope with 503.
                responses["503"] = {"description": "Not ready: data.ready is false; data.checks says why",
                                    "content": _json("Envelope")}
            if method == "post" and path in IDEMPOTENT_POSTS:
                params = op.setdefault("parameters", [])
                if not any(p.get("name") == "Idempotency-Key" for p in params):
                    params.append({"name": "Idempotency-Key", "in": "header", "required": False,
                                   "description": "Retry safely: the same key and body return the first "
                                                  "answer and send nothing twice (kept 24 h).",
                                   "schema": {"type": "string", "minLength": 1, "maxLength": 255}})
    spec.setdefault("info", {})["description"] = (
        (spec["info"].get("description") or "")
        + "\n\nAuthenticate with `X-API-Key: <key>` or `Authorization: Bearer <key>`. "
        "Every answer is an envelope: `{ok, data | error, timestamp, unix_timestamp}`.")
    return spec


def public_base(root: str | None = None) -> str:
    """The box's address as clients reach it: ``public_url`` if set, else this request's host."""
    configured = current_app.extensions["relaybox"].config.public_url.rstrip("/")
    if configured:
        return configured
    return (root or request.host_url).rstrip("/")


def spec() -> dict[str, Any]:
    """The completed spec (cached per app) with ``servers`` set to this box's address."""
    cache = current_app.extensions.setdefault("relaybox_openapi", {})
    if "spec" not in cache:
        cache["spec"] = _complete(current_app.api_doc)  # type: ignore[attr-defined]
    out = dict(cache["spec"])
    out["servers"] = [{"url": public_base(), "description": "this relaybox"}]
    return out


def openapi_json() -> Response:
    resp = Response(json.dumps(spec()), mimetype="application/json")
    resp.headers["Content-Disposition"] = 'inline; filename="relaybox-openapi.json"'
    return resp


def docs_home() -> Response:
    """flask-openapi3's docs index is an unauthenticated page; the developer page replaces it."""
    return redirect(url_for("admin.developers"))


def init_app(app: Any) -> None:
    app.add_url_rule(API_PREFIX + "/openapi.json", "openapi_json", openapi_json, methods=["GET"])
    if "openapi.doc_url" in app.view_functions:
        app.view_functions["openapi.doc_url"] = openapi_json
    if "openapi.openapi" in app.view_functions:
        app.view_functions["openapi.openapi"] = docs_home
