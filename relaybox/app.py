"""``create_app(config)``: the Flask app, its runtime and blueprints. Nothing runs at import."""
from __future__ import annotations

import logging
import uuid
from typing import Any

from flask import Response, request
from flask_openapi3 import Info, OpenAPI
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from relaybox import __version__
from relaybox.api.common import SECURITY_SCHEMES
from relaybox.config import Config, load_config
from relaybox.errors import ApiError, error_response
from relaybox.runtime import Runtime

log = logging.getLogger("relaybox.app")
MAX_BODY = 1024 * 1024


class ErrorBody(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorEnvelope(BaseModel):
    ok: bool = False
    error: ErrorBody
    timestamp: str
    unix_timestamp: int


def _field_of(err: dict[str, Any]) -> str:
    loc = [str(p) for p in err.get("loc", ())]
    if not loc:
        return "body"
    out = loc[0]
    for p in loc[1:]:
        out += f"[{p}]" if p.isdigit() else f".{p}"
    return out


def validation_error(exc: ValidationError) -> Response:
    """pydantic errors → INVALID_REQUEST naming the first bad field."""
    err = exc.errors()[0]
    field = _field_of(err)
    if err["type"] == "extra_forbidden":
        msg = "unknown field"
    elif err["type"] == "missing":
        msg = "is required"
    elif err["type"] in ("model_type", "dict_type") and field == "body":
        msg = "must be a JSON object"
    else:
        msg = err["msg"]
        msg = msg.removeprefix("Value error, ")
    return error_response(ApiError("INVALID_REQUEST", f"{field}: {msg}", field=field))


def create_app(config: Config | None = None, *, start: bool = False) -> OpenAPI:
    """Build the app; ``start=True`` also starts the queue consumer, channels and housekeeper."""
    config = config or load_config()
    app = OpenAPI(
        __name__,
        info=Info(title="relaybox API", version=__version__,
                  description="Self-hosted SMS gateway: send SMS and OTP through paired Android phones "
                              "and USB GSM modems, track delivery, receive signed webhooks."),
        security_schemes=SECURITY_SCHEMES,
        validation_error_status=400,
        validation_error_model=ErrorEnvelope,
        validation_error_callback=validation_error,
        responses={400: ErrorEnvelope, 401: ErrorEnvelope, 403: ErrorEnvelope, 404: ErrorEnvelope},
        doc_prefix="/api/v1/docs",
    )
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    app.json.sort_keys = False  # type: ignore[attr-defined]

    runtime = Runtime(config)
    app.extensions["relaybox"] = runtime
    runtime.init_schema()
    if config.sandbox:
        from relaybox.channels.sandbox import SandboxChannel

        runtime.add_channel(SandboxChannel(runtime))

    _register_blueprints(app)
    runtime.init_schema()  # feature modules imported above may declare more tables
    _register_error_handlers(app)

    @app.before_request
    def _check_json_body() -> None:
        if not request.path.startswith("/api/v1/") or request.method not in ("POST", "PUT", "PATCH"):
            return
        length = request.content_length
        if length is not None and length > MAX_BODY:
            raise ApiError("INVALID_REQUEST", "body: larger than 1 MiB", field="body")
        if not length and not request.headers.get("Transfer-Encoding"):
            return  # empty body: the endpoint decides whether it needs one
        if not request.is_json:
            raise ApiError("INVALID_REQUEST", "body: Content-Type must be application/json", field="body")
        try:
            data = request.get_data(cache=True)
        except RequestEntityTooLarge:
            raise ApiError("INVALID_REQUEST", "body: larger than 1 MiB", field="body") from None
        if request.get_json(silent=True) is None and data.strip() != b"null":
            raise ApiError("INVALID_REQUEST", "body: not valid JSON", field="body")

    if start:
        runtime.start()
    return app


def _register_blueprints(app: OpenAPI) -> None:
    from relaybox.api import health, sms

    app.register_api(health.bp)
    app.register_api(sms.bp)
    # Feature areas register themselves through relaybox.features (each optional import).
    from relaybox import features

    features.register(app)


def _register_error_handlers(app: OpenAPI) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        return error_response(exc)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        if exc.response is not None and exc.response.mimetype == "application/json":
            return exc.response  # already an envelope (validation errors)
        code = exc.code or 500
        if code == 404:
            err = ApiError("NOT_FOUND", f"no such path: {request.path}")
        elif code == 405:
            allow = ", ".join(getattr(exc, "valid_methods", None) or [])
            err = ApiError("METHOD_NOT_ALLOWED", f"{request.method} is not allowed on {request.path}",
                           headers={"Allow": allow} if allow else None)
        elif code == 413:
            err = ApiError("INVALID_REQUEST", "body: larger than 1 MiB", field="body")
        elif code in (400, 415, 422):
            err = ApiError("INVALID_REQUEST", "body: malformed request", field="body")
        else:
            err = ApiError("INTERNAL_ERROR", exc.description or "error", status=code)
        return error_response(err)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        correlation = uuid.uuid4().hex[:12]
        log.exception("unhandled error %s on %s %s", correlation, request.method, request.path)
        return error_response(ApiError("INTERNAL_ERROR", f"unexpected error (correlation id {correlation})",
                                       extra={"correlation_id": correlation}))
