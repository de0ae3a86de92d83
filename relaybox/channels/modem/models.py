"""Tables of the modem area: modems added through the API, and inbound SMS already stored.

Modems of ``config.toml`` have no row: the file is their truth and only the process that reads
it drives them. A modem added with ``POST /api/v1/modems`` is a :class:`Modem` row holding the
same settings as a ``[[modem]]`` table (``spec``, validated by ``relaybox.config.ModemConfig``);
its SIM PIN is sealed with a key derived from the instance secret (AES-GCM), because it must be
typed into the modem in clear and so cannot be hashed.
"""
from __future__ import annotations

import os

import peewee as pw

from relaybox.db import BaseModel, JSONField
from relaybox.models import Account
from relaybox.security import digest


class Modem(BaseModel):
    """A modem added through the API (``name`` is unique among config and API modems)."""

    name = pw.CharField(primary_key=True, max_length=32)
    account = pw.ForeignKeyField(Account, backref="modems", on_delete="CASCADE")
    spec = JSONField()  # relaybox.config.ModemConfig fields, without the PIN
    pin_sealed = pw.TextField(null=True)  # hex of nonce + AES-GCM(PIN)
    created_at = pw.BigIntegerField()
    updated_at = pw.BigIntegerField()


class ModemInbound(BaseModel):
    """Inbound SMS already stored, by the driver's stable key: the SIM copy is deleted only
    after the commit, so a crash in between offers it again; this keeps it stored once."""

    channel_id = pw.CharField(max_length=64)
    key = pw.CharField(max_length=64)
    message_id = pw.CharField(max_length=40)
    created_at = pw.BigIntegerField(index=True)

    class Meta:
        indexes = ((("channel_id", "key"), True),)


MODELS = [Modem, ModemInbound]


def _pin_key() -> bytes:
    return bytes.fromhex(digest("sim-pin", "modem-pin-sealing-key"))


def seal_pin(name: str, pin: str) -> str:
    nonce = os.urandom(12)
    from cryptography.hazmat.primitives.ciphers.aead import (
        AESGCM,  # on use: keeps start-up light
    )

    return (nonce + AESGCM(_pin_key()).encrypt(nonce, pin.encode(), name.encode())).hex()


def unseal_pin(name: str, sealed: str | None) -> str | None:
    """The PIN, or None when there is none or it was sealed under another instance secret."""
    if not sealed:
        return None
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    blob = bytes.fromhex(sealed)
    try:
        return AESGCM(_pin_key()).decrypt(blob[:12], blob[12:], name.encode()).decode()
    except (InvalidTag, ValueError):
        return None
