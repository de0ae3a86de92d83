"""Log in and out. The only admin page reachable without a session is the login page."""
from __future__ import annotations

from typing import Any

from flask import current_app, redirect, request, url_for

from relaybox.admin import users
from relaybox.admin.i18n import gettext as _
from relaybox.admin.web import (
    bp,
    current_user,
    end_session,
    login_bp,
    page,
    safe_next,
    start_session,
    too_many,
)


@login_bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    if request.method == "GET":
        if current_user() is not None:
            return redirect(safe_next(request.args.get("next")))
        return page("admin/login.html", no_users=not users.has_users(), next=request.args.get("next", ""))
    username = (request.form.get("username") or "").strip()
    password = request.form.get("password") or ""
    limits = current_app.extensions["relaybox_admin_logins"]
    wait = limits.retry_after(username)
    if wait:
        return too_many(wait, username)
    user = users.authenticate(username, password) if username and password else None
    if user is None:
        limits.failed(username)
        return page("admin/login.html", 401, error=_("Wrong user name or password."), username=username,
                    no_users=not users.has_users(), next=request.form.get("next", ""))
    start_session(user)
    return redirect(safe_next(request.form.get("next")), 302)


@bp.route("/logout", methods=["POST"])
def logout() -> Any:
    end_session()
    return redirect(url_for("admin_login.login"))
