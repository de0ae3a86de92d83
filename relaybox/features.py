"""Where feature areas plug into the app (devices, modems, OTP, webhooks, accounts, admin, ...).

Each area exposes ``init_app(app)``; this is the one list of them, so ``create_app`` stays short
and an area can be read on its own.
"""
from __future__ import annotations

import importlib
from typing import Any

FEATURES: list[str] = [
    "relaybox.channels.android.server",
    "relaybox.channels.modem.channel",
    "relaybox.api.otp",
    "relaybox.api.webhooks",
    "relaybox.api.account",
    "relaybox.routing",
    "relaybox.ops",
    "relaybox.admin",
]


def register(app: Any) -> None:
    for name in FEATURES:
        importlib.import_module(name).init_app(app)
