"""Admin users of the web page: argon2id password hashes (argon2-cffi), nothing else stored.

API keys use a keyed HMAC because they are checked on every request; a person's password is
checked once per login, so it gets a slow, memory-hard hash (LIBRARIES.md 6a).
"""
from __future__ import annotations

import functools
import re
import secrets
from typing import Any

import peewee as pw

from relaybox.db import BaseModel, write_tx
from relaybox.security import digest
from relaybox.timeutil import now_ms


@functools.cache
def _hasher() -> Any:
    """argon2-cffi's PasswordHasher, loaded on the first login or password change (the server
    does not keep argon2 and cffi resident for a page nobody may open)."""
    from argon2 import PasswordHasher

    return PasswordHasher()


# Verified against when the user does not exist, so a login for an unknown name costs the same.
@functools.cache
def _dummy_hash() -> str:
    """A hash to verify against for unknown users (same work either way). Made on first use:
    an argon2 hash costs 64 MiB and ~0.4 s, which every process start paid before."""
    return _hasher().hash("relaybox-no-such-user")

USERNAME_RE = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
MIN_PASSWORD = 8
MAX_PASSWORD = 1024


class AdminUser(BaseModel):
    username = pw.CharField(max_length=64, unique=True)
    password_hash = pw.CharField(max_length=255)
    created_at = pw.BigIntegerField()
    last_login_at = pw.BigIntegerField(null=True)


class AdminSession(BaseModel):
    """A logged-in browser. The cookie holds a random id; the table holds only its HMAC, so
    logging out (or a new password) really ends a session, unlike a bare signed cookie."""

    id_hash = pw.CharField(max_length=64, primary_key=True)
    user = pw.ForeignKeyField(AdminUser, backref="sessions", on_delete="CASCADE")
    created_at = pw.BigIntegerField()
    expires_at = pw.BigIntegerField(index=True)


SESSION_PURPOSE = "admin-session"


def open_session(user: AdminUser, ttl_ms: int) -> str:
    sid = secrets.token_urlsafe(32)
    now = now_ms()
    with write_tx():
        AdminSession.delete().where(AdminSession.expires_at < now).execute()
        AdminSession.create(id_hash=digest(sid, SESSION_PURPOSE), user=user, created_at=now, expires_at=now + ttl_ms)
    return sid


def session_user(sid: str) -> AdminUser | None:
    if not sid or len(sid) > 100:
        return None
    row = (AdminSession.select(AdminSession, AdminUser).join(AdminUser)
           .where((AdminSession.id_hash == digest(sid, SESSION_PURPOSE)) & (AdminSession.expires_at > now_ms()))
           .first())
    return row.user if row is not None else None


def close_session(sid: str) -> None:
    with write_tx():
        AdminSession.delete().where(AdminSession.id_hash == digest(sid, SESSION_PURPOSE)).execute()


class AdminUserError(ValueError):
    """A username or password that cannot be used; the message says why."""


def check_new_credentials(username: str, password: str) -> None:
    if not USERNAME_RE.match(username):
        raise AdminUserError("username: 1-64 letters, digits or . _ @ -")
    if len(password) < MIN_PASSWORD:
        raise AdminUserError(f"password: at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise AdminUserError(f"password: at most {MAX_PASSWORD} characters")


def create_user(username: str, password: str) -> AdminUser:
    check_new_credentials(username, password)
    with write_tx():
        if AdminUser.get_or_none(AdminUser.username == username) is not None:
            raise AdminUserError(f"admin user {username!r} already exists")
        return AdminUser.create(username=username, password_hash=_hasher().hash(password), created_at=now_ms())


def set_password(username: str, password: str) -> None:
    check_new_credentials(username, password)
    with write_tx():
        n = (AdminUser.update(password_hash=_hasher().hash(password))
             .where(AdminUser.username == username).execute())
        # A new password ends every session of that user.
        AdminSession.delete().where(AdminSession.user.in_(
            AdminUser.select(AdminUser.id).where(AdminUser.username == username))).execute()
    if not n:
        raise AdminUserError(f"no admin user {username!r}")


def delete_user(username: str) -> bool:
    with write_tx():
        return bool(AdminUser.delete().where(AdminUser.username == username).execute())


def authenticate(username: str, password: str) -> AdminUser | None:
    """The user when the password matches; same work whether or not the user exists."""
    from argon2.exceptions import InvalidHashError, VerificationError

    user = AdminUser.get_or_none(AdminUser.username == username) if len(username) <= 64 else None
    stored = user.password_hash if user is not None else _dummy_hash()
    try:
        _hasher().verify(stored, password[:MAX_PASSWORD])
    except (VerificationError, InvalidHashError):
        return None
    if user is None:
        return None
    with write_tx():
        fields = {"last_login_at": now_ms()}
        if _hasher().check_needs_rehash(user.password_hash):
            fields["password_hash"] = _hasher().hash(password)
        AdminUser.update(**fields).where(AdminUser.id == user.id).execute()
    return user


def has_users() -> bool:
    return AdminUser.select().exists()
