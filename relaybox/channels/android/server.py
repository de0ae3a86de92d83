"""The Android device API at /api/mobile/v1 and the device management API (issue: Android)."""
from __future__ import annotations

from typing import Any


def init_app(app: Any) -> None:
    """Register blueprints, tasks and hooks on the app (called by create_app)."""
