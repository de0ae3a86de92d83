"""The developer page: base URL, auth, ready examples in twelve languages, every endpoint (from
the OpenAPI file), the error catalogue, webhook payloads and signature checks, health and
readiness for CI, and the OpenAPI / Postman downloads. One page, as the seeds describe it."""
from __future__ import annotations

from typing import Any

from flask import Response, current_app, json

from relaybox.admin import apidoc, snippets
from relaybox.admin.i18n import gettext as _
from relaybox.admin.settings import key_hint
from relaybox.admin.web import bp, current_account, page
from relaybox.errors import CATALOGUE
from relaybox.openapi_postman import collection

METHODS = ("get", "post", "put", "patch", "delete")


def api_base() -> str:
    return apidoc.public_base() + apidoc.API_PREFIX


def endpoints(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Every /api/v1 operation, grouped by tag in the order the spec lists them."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for path, item in spec.get("paths", {}).items():
        if not path.startswith(apidoc.API_PREFIX + "/"):
            continue
        for method in METHODS:
            op = item.get(method)
            if op is None:
                continue
            body = _fields(spec, op.get("requestBody", {}).get("content", {}).get("application/json", {})
                           .get("schema"))
            params = [{"name": p["name"], "in": p["in"], "required": p.get("required", False),
                       "type": _type(spec, p.get("schema", {})), "description": p.get("description")
                       or p.get("schema", {}).get("description", "")} for p in op.get("parameters", [])]
            groups.setdefault((op.get("tags") or ["Other"])[0], []).append({
                "method": method.upper(), "path": path[len(apidoc.API_PREFIX):], "summary": op.get("summary", ""),
                "description": op.get("description", ""), "auth": bool(op.get("security")),
                "params": params, "body": body,
                "codes": sorted(c for c in op.get("responses", {}) if c.isdigit()),
                "anchor": f"{method}-{path}".replace("/", "-").replace("{", "").replace("}", ""),
            })
    return [{"tag": tag, "ops": ops} for tag, ops in groups.items()]


def _schema(spec: dict[str, Any], schema: dict[str, Any] | None) -> dict[str, Any]:
    from relaybox.openapi_postman import _non_null

    return _non_null(spec, schema or {})


def _type(spec: dict[str, Any], schema: dict[str, Any]) -> str:
    s = _schema(spec, schema)
    t = s.get("type") or ("object" if "properties" in s else "")
    if t == "array":
        return f"array of {_type(spec, s.get('items', {})) or 'any'}"
    if s.get("enum"):
        return " | ".join(str(v) for v in s["enum"])
    return str(t or "any")


def _fields(spec: dict[str, Any], schema: dict[str, Any] | None) -> list[dict[str, Any]]:
    s = _schema(spec, schema)
    required = set(s.get("required", []))
    out = []
    for name, prop in (s.get("properties") or {}).items():
        p = _schema(spec, prop)
        limits = [f"{k}={p[k]}" for k in ("minLength", "maxLength", "minimum", "maximum", "maxItems", "pattern")
                  if k in p]
        out.append({"name": name, "required": name in required, "type": _type(spec, prop),
                    "description": prop.get("description") or p.get("description", ""), "limits": ", ".join(limits)})
    return out


def error_table() -> list[dict[str, Any]]:
    return [{"code": code, "status": status, "meaning": _(meaning)} for code, (status, meaning) in CATALOGUE.items()]


def webhook_examples() -> list[dict[str, Any]]:
    """Payload examples; ``message.status`` is built by the same function that builds real ones."""
    from relaybox.messages import status_payload
    from relaybox.models import Message

    m = Message(id=snippets.EXAMPLE_MESSAGE_ID, client_reference_id="order-1234", to_number="+923001234567",
                from_number="+923001112223", direction="outbound", error_code=None, error_message=None,
                metadata={"order_id": "1234"}, attempts=1, sequence=4)
    status = status_payload(m, "delivered", 1769497202000)
    return [
        {"event": "message.status", "payload": status},
        {"event": "message.inbound", "payload": {
            "event": "message.inbound", "message_id": "req_01HV6Y2K3M4N5P6Q7R8S9T0VWY", "from": "+923001234567",
            "to": "+923001112223", "body": "Hello!", "timestamp": "2026-01-27T07:00:00Z",
            "unix_timestamp": 1769497200000, "media_urls": []}},
        {"event": "otp.verified", "payload": {
            "event": "otp.verified", "otp_id": snippets.EXAMPLE_OTP_ID, "to": "+923001234567", "purpose": "login",
            "verified_at": "2026-01-27T07:01:10Z", "timestamp": "2026-01-27T07:01:10Z",
            "unix_timestamp": 1769497270000}},
        {"event": "device.offline", "payload": {
            "event": "device.offline", "device_id": "dev_01HV6Y2K3M4N5P6Q7R8S9T0VWZ", "device_name": "Relay Device 1",
            "last_seen": "2026-01-27T06:58:00Z", "timestamp": "2026-01-27T07:00:00Z",
            "unix_timestamp": 1769497200000}},
    ]


def _sandbox() -> dict[str, Any] | None:
    cfg = current_app.extensions["relaybox"].config
    return {"from": cfg.sandbox_from} if cfg.sandbox else None


@bp.route("/developers")
def developers() -> Any:
    spec = apidoc.spec()
    base = api_base()
    ops = [{"id": op.id, "method": op.method, "path": op.path} for op in snippets.OPERATIONS]
    return page("admin/developers.html", base=base, key_hint=key_hint(current_account()),
                code=snippets.snippets(base), ops=ops, code_languages=snippets.LANGUAGES,
                endpoint_groups=endpoints(spec), errors=error_table(), webhooks=webhook_examples(),
                verify=snippets.VERIFY, env_key=snippets.ENV_KEY, sandbox=_sandbox(),
                otp_available=any(g["tag"] == "OTP" for g in endpoints(spec)))


@bp.route("/developers/postman.json")
def postman() -> Response:
    base = api_base()
    variables = {}
    sandbox = _sandbox()
    if sandbox:
        variables["phone"] = sandbox["from"]
    body = collection(apidoc.spec(), base, variables=variables)
    resp = Response(json.dumps(body, indent=2), mimetype="application/json")
    resp.headers["Content-Disposition"] = 'attachment; filename="relaybox.postman_collection.json"'
    return resp
