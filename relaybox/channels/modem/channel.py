"""USB modems as channels: config, API, wiring of the driver to the message table (issue: modems)."""
from __future__ import annotations

from typing import Any


def init_app(app: Any) -> None:
    """Register blueprints, tasks and hooks on the app (called by create_app)."""
