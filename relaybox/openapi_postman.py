"""A Postman collection (v2.1) generated from relaybox's OpenAPI file.

One request per operation, grouped by tag, in an order that works top to bottom on a fresh box:
reads of the service first, then the requests that create things (their ids are captured into
collection variables), then reads and changes of those things, then deletions, and the key
regeneration last (its new key replaces ``apiKey``). ``baseUrl`` and ``apiKey`` are collection
variables. Every request carries ``pm.test`` assertions: the status is one the OpenAPI file
documents for that operation, and the body is relaybox's envelope (``ok`` + ``data`` or ``error``
with a catalogue code, ``timestamp``, ``unix_timestamp``).

Request bodies hold the required fields only (example values from the schema, else from the
field's name), so running the collection never changes optional settings by accident.
"""
from __future__ import annotations

import json
import re
import uuid
from typing import Any

SCHEMA_URL = "https://schema.getpostman.com/json/collection/v2.1.0/collection.json"
API_PREFIX = "/api/v1"
METHOD_ORDER = {"get": 0, "post": 1, "put": 2, "patch": 3, "delete": 5}
ID_RE = r"^([a-z]+)_[0-9A-HJKMNP-TV-Z]{26}$"
# Path parameter name -> the id prefix whose captured value fills it.
PARAM_PREFIX = {"message_id": "req", "batch_id": "batch", "otp_id": "otp", "device_id": "dev",
                "delivery_id": "whd", "contact_id": "ct", "modem_id": "modem"}
SEGMENT_PREFIX = {"sms": "req", "messages": "req", "batch": "batch", "otp": "otp", "devices": "dev",
                  "deliveries": "whd", "contacts": "ct", "modems": "modem"}

EXAMPLES_BY_NAME: dict[str, Any] = {
    "to": "+923001234567", "from": "+15005550006", "phone": "+923001234567", "number": "+923001234567",
    "body": "Hello from relaybox", "text": "Hello from relaybox", "purpose": "login", "code": "123456",
    "name": "Example", "locale": "en", "numbers": ["+923001234567", "+923001234568"],
    "messages": [{"to": "+923001234567", "body": "Hello from relaybox"}],
    "otp_id": "{{id_otp}}", "message_id": "{{id_req}}", "csv": "name,phone\nAsha,+923001234567\n",
    # A webhook URL that works on every box: its own test bin.
    "url": "{{baseUrl}}/status/bin",
}
# Optional fields sent anyway: the API needs one of several (otp_id or to + purpose, numbers or
# tags) or the request is pointless without it (the test webhook's target).
ALWAYS_INCLUDE = {"numbers", "otp_id", "url"}


# -- schema helpers ---------------------------------------------------------------------------------
def _resolve(spec: dict[str, Any], schema: dict[str, Any] | None) -> dict[str, Any]:
    seen = 0
    while schema and "$ref" in schema and seen < 20:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = spec.get("components", {}).get("schemas", {}).get(name, {})
        seen += 1
    return schema or {}


def _non_null(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    schema = _resolve(spec, schema)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            options = [_resolve(spec, s) for s in schema[key] if _resolve(spec, s).get("type") != "null"]
            if options:
                return options[0]
    return schema


def example_for(spec: dict[str, Any], schema: dict[str, Any] | None, name: str = "", depth: int = 0) -> Any:
    """A value valid for ``schema``: its example/default/enum, else one chosen by the field's name."""
    schema = _non_null(spec, schema or {})
    for key in ("example", "default"):
        if schema.get(key) is not None:
            return schema[key]
    if schema.get("examples"):
        return schema["examples"][0]
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    if name in EXAMPLES_BY_NAME:
        return EXAMPLES_BY_NAME[name]
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        if depth > 4:
            return {}
        props = schema.get("properties", {})
        wanted = [k for k in props if k in schema.get("required", []) or (depth == 0 and k in ALWAYS_INCLUDE)]
        return {k: example_for(spec, props[k], k, depth + 1) for k in wanted}
    if kind == "array":
        n = max(1, int(schema.get("minItems", 1)))
        return [example_for(spec, schema.get("items"), name.rstrip("s"), depth + 1) for _ in range(n)]
    if kind == "integer":
        return int(schema.get("minimum", schema.get("exclusiveMinimum", 0) + 1 if "exclusiveMinimum" in schema else 1))
    if kind == "number":
        return float(schema.get("minimum", 1))
    if kind == "boolean":
        return True
    if kind == "string":
        if schema.get("format") in ("uri", "url") or name.endswith(("url", "callback")):
            return "{{baseUrl}}/messages/bin" if "inbound" in name else "{{baseUrl}}/status/bin"
        pattern = schema.get("pattern", "")
        if pattern.startswith(("^[0-9]", "^\\d")):
            return "123456"[: max(int(schema.get("minLength", 4)), 4)]
        return "example"[: schema.get("maxLength", 7)] if schema.get("maxLength", 7) >= 1 else "x"
    return "example"


# -- scripts ----------------------------------------------------------------------------------------
def _test_script(codes: list[int], captures_key: bool, success_type: str = "application/json") -> list[str]:
    if success_type != "application/json":
        # A download (CSV, ...): the documented status and media type; errors are still envelopes.
        return [
            f"const documented = {json.dumps(codes)};",
            "pm.test('status is documented for this operation (' + documented.join(', ') + ')', function () {",
            "    pm.expect(documented).to.include(pm.response.code);",
            "});",
            "pm.test('body is " + success_type + " or the error envelope', function () {",
            "    if (pm.response.code < 300) {",
            f"        pm.expect(pm.response.headers.get('Content-Type')).to.include({json.dumps(success_type)});",
            "    } else {",
            "        pm.expect(pm.response.json().ok).to.eql(false);",
            "    }",
            "});",
        ]
    lines = [
        f"const documented = {json.dumps(codes)};",
        "pm.test('status is documented for this operation (' + documented.join(', ') + ')', function () {",
        "    pm.expect(documented).to.include(pm.response.code);",
        "});",
        "pm.test('body is the relaybox envelope', function () {",
        "    const body = pm.response.json();",
        "    pm.expect(body).to.have.property('timestamp').that.is.a('string');",
        "    pm.expect(body).to.have.property('unix_timestamp').that.is.a('number');",
        "    if (pm.response.code < 300) { pm.expect(body.ok).to.eql(true); }",
        "    if (body.ok === true) {",
        "        pm.expect(body).to.have.property('data');",
        "    } else {",
        "        pm.expect(body.ok).to.eql(false);",
        "        pm.expect(body.error).to.have.property('code').that.is.a('string');",
        "        pm.expect(body.error).to.have.property('message').that.is.a('string');",
        "    }",
        "});",
        "// Remember ids (req_..., otp_..., batch_..., dev_..., whd_...) for the requests that follow.",
        "(function capture(value, depth) {",
        "    if (depth > 3 || value === null || value === undefined) { return; }",
        "    if (typeof value === 'string') {",
        f"        const m = value.match(/{ID_RE}/);",
        "        if (m && !pm.collectionVariables.get('captured_' + m[1])) {",
        "            pm.collectionVariables.set('captured_' + m[1], '1');",
        "            pm.collectionVariables.set('id_' + m[1], value);",
        "        }",
        "        return;",
        "    }",
        "    if (Array.isArray(value)) { value.slice(0, 1).forEach(function (v) { capture(v, depth + 1); }); return; }",
        "    if (typeof value === 'object') { Object.keys(value).forEach(function (k) { capture(value[k], depth + 1); }); }",
        "})(pm.response.code < 300 ? pm.response.json().data : null, 0);",
    ]
    if captures_key:
        lines += ["if (pm.response.code < 300 && pm.response.json().data.api_key) {",
                  "    pm.collectionVariables.set('apiKey', pm.response.json().data.api_key);", "}"]
    return lines


def _param_variable(path: str, param: str) -> str:
    prefix = PARAM_PREFIX.get(param)
    if prefix is None:
        segments = [s for s in path.split("/") if s and not s.startswith("{")]
        before = path.split("{" + param + "}")[0].rstrip("/").rsplit("/", 1)[-1]
        prefix = SEGMENT_PREFIX.get(before) or (SEGMENT_PREFIX.get(segments[-1]) if segments else None)
    return f"id_{prefix}" if prefix else param


# -- the collection ---------------------------------------------------------------------------------
def _sort_key(path: str, method: str) -> tuple[int, int, str]:
    if path.endswith("/api-key/regenerate"):
        return (9, 0, path)
    if method == "delete":
        return (8, 0, path)
    has_param = "{" in path
    if method == "get" and not has_param:
        return (0, 0, path)
    if method == "post" and not has_param:
        return (1, 0, path)
    return (2 + METHOD_ORDER.get(method, 4), int(has_param), path)


def collection(spec: dict[str, Any], base_url: str, api_key: str = "",
               variables: dict[str, str] | None = None) -> dict[str, Any]:
    """The collection for ``spec`` with ``baseUrl`` (…/api/v1) and ``apiKey`` as variables."""
    folders: dict[str, list[dict[str, Any]]] = {}
    ops: list[tuple[tuple[int, int, str], str, str, dict[str, Any]]] = []
    for path, item in spec.get("paths", {}).items():
        if not path.startswith(API_PREFIX + "/"):
            continue  # the phone protocol (/api/mobile/v1) is for the app, not for integrators
        for method, op in item.items():
            if method in METHOD_ORDER and path not in (API_PREFIX + "/openapi.json",):
                ops.append((_sort_key(path, method), path, method, op))
    ops.sort(key=lambda t: t[0])
    params_used: set[str] = set()
    last: list[dict[str, Any]] = []
    for _key, path, method, op in ops:
        rel = path[len(API_PREFIX):]
        raw_path = rel
        path_params = re.findall(r"{([^}]+)}", rel)
        for p in path_params:
            var = _param_variable(rel, p)
            params_used.add(var)
            raw_path = raw_path.replace("{" + p + "}", "{{" + var + "}}")
        query = []
        for p in op.get("parameters", []):
            if p.get("in") == "query" and p.get("required"):
                query.append({"key": p["name"], "value": str(example_for(spec, p.get("schema"), p["name"]))})
        url: dict[str, Any] = {"raw": "{{baseUrl}}" + raw_path + ("?" + "&".join(f"{q['key']}={q['value']}" for q in query) if query else ""),
                               "host": ["{{baseUrl}}"], "path": [s for s in raw_path.split("/") if s]}
        if query:
            url["query"] = query
        request: dict[str, Any] = {"method": method.upper(), "header": [], "url": url,
                                   "description": (op.get("summary") or "") + ("\n\n" + op["description"] if op.get("description") else "")}
        if not op.get("security"):
            request["auth"] = {"type": "noauth"}
        body_schema = (op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema"))
        if body_schema is not None and method in ("post", "put", "patch"):
            body = example_for(spec, body_schema)
            if body == {} and method == "patch":  # a change needs at least one field
                props = _non_null(spec, body_schema).get("properties", {})
                first = next((k for k in props if k in EXAMPLES_BY_NAME), None)
                if first:
                    body = {first: EXAMPLES_BY_NAME[first]}
            if body_schema == {} or body is None or body == "example":
                body = {"test": "payload"}
            request["header"].append({"key": "Content-Type", "value": "application/json"})
            request["body"] = {"mode": "raw", "raw": json.dumps(body, indent=2, ensure_ascii=False),
                               "options": {"raw": {"language": "json"}}}
        responses = op.get("responses", {})
        codes = sorted(int(c) for c in responses if str(c).isdigit())
        success = [responses[str(c)] for c in codes if 200 <= c < 300]
        types = list((success[0].get("content") or {"application/json": {}}) if success else {"application/json": {}})
        success_type = "application/json" if "application/json" in types else types[0]
        script = _test_script(codes, rel == "/api-key/regenerate", success_type)
        entry = {"name": f"{method.upper()} {rel}", "request": request,
                 "event": [{"listen": "test", "script": {"type": "text/javascript", "exec": script}}]}
        if rel == "/api-key/regenerate":
            last.append(entry)  # a new key for every request after it: run it last
            continue
        tag = (op.get("tags") or ["Other"])[0]
        folders.setdefault(tag, []).append(entry)
    # Folders keep the order of their first request, so the whole run goes top to bottom.
    items = [{"name": tag, "item": entries} for tag, entries in folders.items()]
    if last:
        items.append({"name": "Run last", "item": last})
    defaults = {"baseUrl": base_url.rstrip("/"), "apiKey": api_key}
    phone = (variables or {}).get("phone", EXAMPLES_BY_NAME["phone"])
    for var in sorted(params_used):
        fallback = phone if var in ("phone", "number") else "unknown"
        defaults.setdefault(var, (variables or {}).get(var, fallback))
    for k, v in (variables or {}).items():
        defaults[k] = v
    info = spec.get("info", {})
    return {
        "info": {"_postman_id": str(uuid.uuid5(uuid.NAMESPACE_URL, base_url)),
                 "name": f"{info.get('title', 'relaybox API')} ({base_url})",
                 "description": info.get("description", ""), "schema": SCHEMA_URL},
        "auth": {"type": "apikey", "apikey": [{"key": "key", "value": "X-API-Key", "type": "string"},
                                              {"key": "value", "value": "{{apiKey}}", "type": "string"},
                                              {"key": "in", "value": "header", "type": "string"}]},
        "variable": [{"key": k, "value": v, "type": "string"} for k, v in defaults.items()],
        "item": items,
    }
