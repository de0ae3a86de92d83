"""The OpenAPI 3.1 file at /api/v1/openapi.json: valid, complete (every /api/v1 route, every
schema), and true to the running server (a bounded schemathesis run finds no 5xx and no answer
that breaks it)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from openapi_spec_validator import OpenAPIV31SpecValidator

from relaybox.errors import CATALOGUE

ROOT = Path(__file__).resolve().parent.parent
RULES = """
import json, tempfile
from relaybox.app import create_app
from relaybox.config import load_config
app = create_app(load_config(data_dir=tempfile.mkdtemp(prefix="relaybox-rules-"), sandbox=True))
print(json.dumps([[r.rule, sorted(r.methods - {"HEAD", "OPTIONS"})] for r in app.url_map.iter_rules()]))
"""


def _api_routes() -> dict[str, set[str]]:
    out = subprocess.run([sys.executable, "-c", RULES], capture_output=True, text=True, check=True, timeout=120)
    routes: dict[str, set[str]] = {}
    for rule, methods in json.loads(out.stdout.strip().splitlines()[-1]):
        if rule.startswith("/api/v1/") and not rule.startswith("/api/v1/docs"):
            routes.setdefault(re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule), set()).update(methods)
    return routes


def test_openapi_file_is_valid_and_describes_every_endpoint(sandbox):
    r = requests.get(sandbox.api_base + "/openapi.json", timeout=30)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json")
    spec = r.json()
    assert spec["openapi"].startswith("3.1")
    OpenAPIV31SpecValidator(spec).validate()
    # The generated file, kept as a CI artifact.
    (ROOT / "artifacts").mkdir(exist_ok=True)
    (ROOT / "artifacts" / "openapi.json").write_text(json.dumps(spec, indent=2, ensure_ascii=False))
    # Served the same under flask-openapi3's own path.
    assert requests.get(sandbox.api_base + "/docs/openapi.json", timeout=30).json()["paths"] == spec["paths"]
    # The real host, for clients and for Postman.
    assert spec["servers"][0]["url"] == sandbox.url
    # Every /api/v1 route and method of the running app is described.
    routes = _api_routes()
    for path, methods in routes.items():
        if path == "/api/v1/openapi.json":
            continue
        assert path in spec["paths"], f"{path} is not in the OpenAPI file"
        for m in methods:
            assert m.lower() in spec["paths"][path], f"{m} {path} is not in the OpenAPI file"
    schemas = spec["components"]["schemas"]
    assert schemas["ErrorBody"]["properties"]["code"]["enum"] == list(CATALOGUE)
    for path, item in spec["paths"].items():
        for method, op in item.items():
            assert op.get("summary"), f"{method} {path} has no summary"
            responses = op["responses"]
            ok = [c for c in responses if c.isdigit() and 200 <= int(c) < 300]
            assert ok, f"{method} {path} documents no success"
            for c in ok:
                if c != "204":
                    assert responses[c].get("content"), f"{method} {path} {c} has no schema"
            assert responses["default"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorEnvelope")
            assert responses["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorEnvelope")
            if op.get("security"):
                assert "401" in responses and "403" in responses
    for name in ("SendBody", "BatchBody", "ListBody"):
        assert name in schemas
    send = spec["paths"]["/api/v1/sms/send"]["post"]
    assert any(p["name"] == "Idempotency-Key" and p["in"] == "header" for p in send["parameters"])
    assert spec["components"]["securitySchemes"]["ApiKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}


def test_docs_index_is_not_an_open_page(sandbox):
    r = requests.get(sandbox.api_base + "/docs/", timeout=30, allow_redirects=False)
    assert r.status_code == 302 and r.headers["Location"].endswith("/admin/developers")


def test_bounded_schemathesis_run_finds_no_server_error_and_no_schema_break(sandbox):
    exe = shutil.which("schemathesis", path=os.path.dirname(sys.executable)) or shutil.which("schemathesis")
    if exe is None:
        pytest.skip("schemathesis is not installed (pip install schemathesis)")
    cmd = [exe, "run", sandbox.api_base + "/openapi.json", "-H", f"X-API-Key: {sandbox.key}",
           "--checks", ("not_a_server_error,status_code_conformance,content_type_conformance,"
                        "response_schema_conformance,response_headers_conformance"),
           "--phases", "examples,coverage,fuzzing", "--max-examples", "8", "--workers", "1",
           "--request-timeout", "20", "--max-failures", "20", "--seed", "20261123",
           # These two change the world under the run: a new key (every later call 401) and a
           # real webhook POST to whatever URL was generated (15 s each).
           "--exclude-path", "/api/v1/api-key/regenerate", "--exclude-path", "/api/v1/webhooks/test"]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "", "NO_COLOR": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=420, env=env)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    assert re.search(r"Tested:\s+\d+", out), out[-2000:]
    assert requests.get(sandbox.api_base + "/health", timeout=30).status_code == 200
