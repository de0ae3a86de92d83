"""Secrets are stored only as HMAC-SHA256 keyed with the instance secret; compared in constant time.

API keys, device tokens and OTP codes are checked on hot paths, so a slow password hash is
wrong for them; they are long random values, so a keyed HMAC is enough (LIBRARIES.md 6a).
Admin passwords use argon2 (see ``relaybox.admin``).
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets

_instance_secret: bytes = b""


def set_instance_secret(secret: bytes) -> None:
    global _instance_secret
    _instance_secret = secret


def load_or_create_secret(data_dir: str, configured: str = "") -> bytes:
    """The configured secret, else one generated once into ``<data_dir>/secret`` (mode 0600)."""
    if configured:
        return configured.encode()
    path = os.path.join(data_dir, "secret")
    try:
        with open(path, "rb") as fh:
            return fh.read().strip()
    except FileNotFoundError:
        value = secrets.token_hex(32).encode()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(value)
        return value


def digest(value: str, purpose: str = "") -> str:
    """Keyed hash of a secret value; ``purpose`` separates key spaces (api key vs OTP)."""
    if not _instance_secret:
        raise RuntimeError("instance secret not set")
    return hmac.new(_instance_secret, f"{purpose}:{value}".encode(), hashlib.sha256).hexdigest()


def matches(value: str, stored_digest: str, purpose: str = "") -> bool:
    return hmac.compare_digest(digest(value, purpose), stored_digest)


def new_api_key() -> str:
    return "rbx_" + secrets.token_urlsafe(32)


def mask(key: str) -> str:
    """What the dashboard shows: the prefix and the last four characters."""
    return key[:8] + "…" + key[-4:]
