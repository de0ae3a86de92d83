"""relaybox.logs: JSON formatter and the secret redaction safety net (in-process)."""
from __future__ import annotations

import io
import json
import logging

from relaybox.logs import JsonFormatter, RedactFilter, redact


def test_redact_masks_keys_bearer_tokens_and_codes_but_not_error_codes():
    line = ("auth rbx_AbCdEfGhIjKlMnOp_qrstu-vw with Authorization: Bearer abcdefghijklmnop123 "
            "X-API-Key: secret123456 otp code=482913 error_code=SANDBOX_FAILURE")
    out = redact(line)
    assert "AbCdEfGh" not in out and "abcdefghijklmnop123" not in out
    assert "secret123456" not in out and "482913" not in out
    assert "error_code=SANDBOX_FAILURE" in out


def test_json_formatter_one_object_per_line_with_extras_and_exceptions():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactFilter())
    log = logging.getLogger("relaybox.test.json")
    log.propagate = False
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        log.info("request %s done for rbx_ZZZZZZZZZZZZZZZZ", "POST /x", extra={"status": 202, "ms": 1.5})
        try:
            raise ValueError("boom with rbx_SECRETSECRETSECRET")
        except ValueError:
            log.exception("failed ünïcode")
    finally:
        log.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(x) for x in lines)
    assert first["level"] == "INFO" and first["logger"] == "relaybox.test.json"
    assert first["msg"] == "request POST /x done for rbx_[redacted]"
    assert first["status"] == 202 and first["ms"] == 1.5
    assert first["ts"].endswith("Z") and "T" in first["ts"]
    assert second["msg"] == "failed ünïcode" and "ValueError" in second["exc"]
    assert "SECRETSECRET" not in lines[1]
