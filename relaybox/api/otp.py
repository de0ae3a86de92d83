"""OTP: send and verify one-time codes (issue: OTP)."""
from __future__ import annotations

from typing import Any


def init_app(app: Any) -> None:
    """Register blueprints, tasks and hooks on the app (called by create_app)."""
