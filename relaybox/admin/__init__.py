"""The admin web page and developer page (issue: web page).

Server-rendered Jinja templates (``relaybox/templates/admin``), one stylesheet and one small
script (``relaybox/static``), Flask-Babel catalogues (``relaybox/translations``). Pages read
each area through its /api/v1 endpoints (:mod:`relaybox.admin.internal`), so what the page
shows is what the API says.
"""
from __future__ import annotations

from typing import Any


def init_app(app: Any) -> None:
    """Register blueprints, tasks and hooks on the app (called by create_app)."""
    # Importing the page modules attaches their routes to the blueprints.
    from relaybox.admin import (  # noqa: F401
        accounts,
        apidoc,
        auth,
        developers,
        devices,
        i18n,
        settings,
        start,
        views,
        web,
    )
    from relaybox.admin.users import AdminUser  # noqa: F401 - declares the table

    runtime = app.extensions["relaybox"]
    i18n.init_babel(app, runtime.config.data_dir)
    web.init_security(app)
    app.register_blueprint(web.login_bp)
    app.register_blueprint(web.bp)
    app.add_url_rule("/", "root", views.root)
    app.context_processor(web.template_globals)
    # Examples and payloads keep their documented field order (Jinja's tojson sorts by default).
    app.jinja_env.policies["json.dumps_kwargs"] = {"sort_keys": False}
    apidoc.init_app(app)
