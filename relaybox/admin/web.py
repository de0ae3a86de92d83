"""The admin blueprint and what every page shares: the session guard, the selected account,
CSRF, the login rate limit and page rendering.

Only ``/admin/login`` (and static files) answer without a session; everything else redirects
there (HTML) or answers UNAUTHORIZED (fetches). Forms carry Flask-WTF CSRF tokens; fetches send
``X-CSRFToken``. The /api/v1 and /api/mobile/v1 blueprints use keys and tokens, not cookies, so
CSRF is checked on the session-authenticated area (/admin) only.
"""
from __future__ import annotations

import threading
import time
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.sessions import SecureCookieSessionInterface

from relaybox.admin import users
from relaybox.admin.i18n import LANGUAGES, direction, ensure_babel, get_locale
from relaybox.admin.i18n import gettext as _
from relaybox.errors import ApiError, error_response
from relaybox.models import Account

bp = Blueprint("admin", __name__, url_prefix="/admin")
login_bp = Blueprint("admin_login", __name__, url_prefix="/admin")

SESSION_HOURS = 12
# Failed logins only (a successful login redirects): per address and per user name.
LOGIN_LIMITS = ("10 per 5 minutes", "30 per hour")
USER_LIMIT = "5 per minute"


def wants_json() -> bool:
    return (request.headers.get("X-Requested-With") == "fetch"
            or request.accept_mimetypes.best == "application/json")


# -- session ----------------------------------------------------------------------------------------
def start_session(user: users.AdminUser) -> None:
    lang = session.get("lang")
    old = session.get("sid")
    if old:
        users.close_session(old)
    session.clear()  # no fixation: a fresh session id at login
    session.permanent = True
    session["sid"] = users.open_session(user, SESSION_HOURS * 3_600_000)
    if lang:
        session["lang"] = lang


def end_session() -> None:
    sid = session.get("sid")
    if sid:
        users.close_session(sid)
    lang = session.get("lang")
    session.clear()
    if lang:
        session["lang"] = lang


class SessionCookies(SecureCookieSessionInterface):
    """Flask's signed cookie (it holds only a random session id, see :mod:`relaybox.admin.users`),
    marked ``Secure`` whenever the page was reached over HTTPS (directly or through the TLS
    front), not only when ``public_url`` says https."""

    def get_cookie_secure(self, app: Any) -> bool:
        return bool(super().get_cookie_secure(app) or request.is_secure)

    def open_session(self, app: Any, request: Any) -> Any:
        # The REST API and the phones' endpoints authenticate with keys and tokens, never the
        # admin cookie: they get Flask's null session instead of a signature check per request.
        if request.path.startswith("/api/"):
            return self.make_null_session(app)
        return super().open_session(app, request)


def current_user() -> users.AdminUser | None:
    sid = session.get("sid")
    if not sid:
        return None
    user = users.session_user(sid)
    if user is None:
        session.pop("sid", None)
    return user


def current_account() -> Account:
    """The account the admin is looking at (session), else the owner, else the first."""
    acc = None
    chosen = session.get("account_id")
    if chosen:
        acc = Account.get_or_none(Account.id == chosen)
    if acc is None:
        acc = (Account.select().order_by(Account.is_owner.desc(), Account.created_at).first())
    if acc is None:  # `relaybox serve` and `relaybox init` always create the owner first
        abort(503, "no account yet: run `relaybox init`")
    return acc


@bp.before_request
def _require_session() -> Any:
    user = current_user()
    if user is None:
        if wants_json():
            return error_response(ApiError("UNAUTHORIZED", "log in to the admin page first"))
        return redirect(url_for("admin_login.login", next=request.full_path.rstrip("?")))
    g.admin = user
    g.account = None  # never confuse the admin's session with API-key auth
    return None


def safe_next(target: str | None) -> str:
    """Only same-site relative paths under /admin (no open redirect)."""
    if target:
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc and target.startswith("/admin") and "\\" not in target:
            return target
    return url_for("admin.dashboard")


# -- rendering ----------------------------------------------------------------------------------
def page(template: str, status: int = 200, **context: Any) -> Response:
    resp = current_app.make_response((render_template(template, **context), status))
    resp.headers["Cache-Control"] = "no-store"
    return resp


def template_globals() -> dict[str, Any]:
    ensure_babel(current_app)  # before the template's _() runs
    lang = str(get_locale() or "en")
    ctx: dict[str, Any] = {"lang": lang, "dir": direction(lang), "languages": LANGUAGES}
    if getattr(g, "admin", None) is not None:
        ctx["admin_user"] = g.admin
        ctx["account"] = current_account()
        ctx["accounts"] = list(Account.select().order_by(Account.is_owner.desc(), Account.created_at))
    return ctx


# -- app wiring ---------------------------------------------------------------------------------
def init_security(app: Any) -> None:
    app.config["SESSION_COOKIE_NAME"] = "relaybox_session"
    app.config["SESSION_COOKIE_HTTPONLY"] = True
    app.config["SESSION_COOKIE_SAMESITE"] = "Strict"
    app.config["SESSION_COOKIE_PATH"] = "/"
    runtime = app.extensions["relaybox"]
    app.config["SESSION_COOKIE_SECURE"] = runtime.config.public_url.startswith("https://")
    app.session_interface = SessionCookies()
    from datetime import timedelta

    app.config["PERMANENT_SESSION_LIFETIME"] = timedelta(hours=SESSION_HOURS)
    from relaybox.security import digest

    app.secret_key = digest("flask-session", "admin")
    # Flask-WTF's CSRF check and token, loaded on the first page or form (it brings WTForms and
    # Flask-Babel along): the API and the phones never need them. CSRFProtect.init_app is not
    # used because it registers a global before_request, which Flask forbids after the first
    # request; the settings its check reads are set here, the check runs below for /admin only.
    app.config["WTF_CSRF_ENABLED"] = True
    app.config["WTF_CSRF_CHECK_DEFAULT"] = False
    app.config["WTF_CSRF_METHODS"] = {"POST", "PUT", "PATCH", "DELETE"}
    app.config["WTF_CSRF_FIELD_NAME"] = "csrf_token"
    app.config["WTF_CSRF_HEADERS"] = ["X-CSRFToken", "X-CSRF-Token"]
    app.config["WTF_CSRF_SSL_STRICT"] = True
    app.config["WTF_CSRF_TIME_LIMIT"] = SESSION_HOURS * 3600
    app.jinja_env.globals["csrf_token"] = csrf_token

    @app.before_request
    def _csrf_for_admin() -> Response | None:
        if request.path.startswith("/admin") and request.method not in ("GET", "HEAD", "OPTIONS"):
            from flask_wtf.csrf import CSRFError, CSRFProtect

            try:
                CSRFProtect().protect()
            except CSRFError as exc:
                return _csrf_error(exc)
        return None

    app.extensions["relaybox_admin_logins"] = LoginLimits()


def csrf_token() -> str:
    """``{{ csrf_token() }}`` in the templates (Flask-WTF's ``generate_csrf``)."""
    from flask_wtf.csrf import generate_csrf

    return generate_csrf()


def _csrf_error(exc: Any) -> Response:
    if wants_json() or not request.path.startswith("/admin"):
        return error_response(ApiError("INVALID_REQUEST", f"csrf_token: {exc.description}",
                                       field="csrf_token"))
    return page("admin/error.html", 400, title=_("This form has expired"),
                message=_("The page was open too long or was opened in another session. "
                          "Go back, reload the page and try again."))


class LoginLimits:
    """Failed logins per client address and per user name, moving windows (the ``limits``
    library, in memory: waitress is one process). Only failures count, so people who type their
    password right are never slowed down; over a limit even the right password waits.

    The check runs in the login view only, so no other request pays for it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ready = False

    def _setup(self) -> None:
        # Built on the first login: the limits package (and asyncio under it) costs memory
        # that only the login view needs.
        with self._lock:
            if self._ready:
                return
            from limits import parse
            from limits.storage import MemoryStorage
            from limits.strategies import MovingWindowRateLimiter

            self.strategy = MovingWindowRateLimiter(MemoryStorage())
            self.rules = [(parse(v), "addr") for v in LOGIN_LIMITS] + [(parse(USER_LIMIT), "user")]
            self._ready = True

    def _keys(self, username: str) -> dict[str, str]:
        self._setup()
        return {"addr": request.remote_addr or "-", "user": username.lower()[:64]}

    def retry_after(self, username: str) -> int:
        """Seconds to wait before the next attempt; 0 when one is allowed now."""
        keys = self._keys(username)
        wait = 0
        for item, kind in self.rules:
            if not self.strategy.test(item, "login", kind, keys[kind]):
                reset = self.strategy.get_window_stats(item, "login", kind, keys[kind]).reset_time
                wait = max(wait, int(reset - time.time()) + 1)
        return wait

    def failed(self, username: str) -> None:
        keys = self._keys(username)
        for item, kind in self.rules:
            self.strategy.hit(item, "login", kind, keys[kind])


def too_many(retry_after: int, username: str) -> Response:
    """Over the login limit: the login page again, 429, with ``Retry-After``."""
    resp = page("admin/login.html", 429, username=username,
                error=_("Too many failed attempts. Wait a few minutes and try again."))
    resp.headers["Retry-After"] = str(retry_after)
    return resp
