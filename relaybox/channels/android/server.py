"""The Android device API at /api/mobile/v1 and the device management API (issue: Android).

``init_app`` creates the phone tables, loads every paired phone into ``runtime.channels`` (one
:class:`~relaybox.channels.android.channel.AndroidChannel` each), registers the device protocol
blueprint (``/api/mobile/v1``), the management API (``/api/v1/devices``), the mobile pairing page
(``/pair/<token>``) and a housekeeping sweeper for presence (``device.online``/``device.offline``).
"""
from __future__ import annotations

from typing import Any


def init_app(app: Any) -> None:
    """Register blueprints, tasks and hooks on the app (called by create_app)."""
    from relaybox.channels.android import manage, mobile
    from relaybox.channels.android.channel import AndroidArea
    from relaybox.channels.android.models import MODELS  # noqa: F401 - declares the tables
    from relaybox.db import create_tables

    runtime = app.extensions["relaybox"]
    create_tables()
    area = AndroidArea(runtime)
    app.extensions["relaybox_android"] = area
    area.load()
    runtime.sweepers.append(area.sweep)
    app.register_blueprint(mobile.bp)
    app.register_api(manage.bp)
    app.register_blueprint(manage.page_bp)
