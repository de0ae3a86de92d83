"""Tables of the Android area: paired phones, pairing codes, what phones reported, inbound dedupe.

Secrets are never stored in clear: the device token and the pairing code are kept as keyed
HMACs (``relaybox.security.digest``); the per-phone webhook signing key is derived from the
instance secret and the device id (see :func:`relaybox.channels.android.pairing.signing_key`).
"""
from __future__ import annotations

import peewee as pw

from relaybox.db import BaseModel, JSONField
from relaybox.models import Account


class Device(BaseModel):
    """One paired phone running "SMS Gateway for Android". ``id`` is ``dev_<ULID>``."""

    id = pw.CharField(primary_key=True, max_length=40)
    account = pw.ForeignKeyField(Account, backref="devices", on_delete="CASCADE")
    token_hash = pw.CharField(max_length=64, unique=True)
    name = pw.CharField(max_length=128)  # MANUFACTURER/PRODUCT, as the app sends it
    label = pw.CharField(max_length=100, null=True)  # set by the admin
    enabled = pw.BooleanField(default=True)
    push_token = pw.CharField(max_length=512, null=True)
    user_agent = pw.CharField(max_length=200, null=True)
    app_version = pw.CharField(max_length=40, null=True)
    # As the app reports them (masked) plus ``number``: the SIM's own E.164 number set by the admin.
    sim_cards = JSONField(default=list)
    battery_level = pw.IntegerField(null=True)
    charging = pw.BooleanField(null=True)
    connectivity = JSONField(null=True)
    health_status = pw.CharField(max_length=8, null=True)
    last_ping_at = pw.BigIntegerField(null=True)
    last_seen = pw.BigIntegerField(null=True)
    # The last presence recorded as a device.online / device.offline event.
    presence = pw.CharField(max_length=8, null=True)
    # Set once the first SSE stream after registration got WebhooksUpdated + SettingsUpdated.
    synced_at = pw.BigIntegerField(null=True)
    # Bumped to rotate the webhook signing key.
    key_version = pw.IntegerField(default=1)
    paired_by = pw.CharField(max_length=16)  # "code" | "private_token"
    created_at = pw.BigIntegerField()
    updated_at = pw.BigIntegerField()


class PairingCode(BaseModel):
    """A single-use numeric code (8 digits, 10 minutes). Both it and the page token are hashed."""

    id = pw.CharField(primary_key=True, max_length=40)
    account = pw.ForeignKeyField(Account, on_delete="CASCADE")
    code_hash = pw.CharField(max_length=64, index=True)
    token_hash = pw.CharField(max_length=64, unique=True)
    api_url = pw.CharField(max_length=2048)
    created_at = pw.BigIntegerField()
    expires_at = pw.BigIntegerField()
    used_at = pw.BigIntegerField(null=True)
    device_id = pw.CharField(max_length=40, null=True)


class DeviceMessage(BaseModel):
    """What one phone said about a message it pulled.

    A message is handed to a phone once (``claim_for_channel``). Until the phone reports any
    state for it, every pull returns it again (the app de-duplicates by id). ``cancel_at`` marks a
    cancel the phone has been asked to carry out (served as ``state: Cancelling``).
    """

    message_id = pw.CharField(primary_key=True, max_length=40)
    device_id = pw.CharField(max_length=40, index=True)
    reported_at = pw.BigIntegerField(null=True)
    last_state = pw.CharField(max_length=12, null=True)
    cancel_at = pw.BigIntegerField(null=True)


class InboundEvent(BaseModel):
    """Webhook event ids already taken from a phone (the app retries; each is stored once)."""

    device_id = pw.CharField(max_length=40)
    event_id = pw.CharField(max_length=64)
    created_at = pw.BigIntegerField(index=True)

    class Meta:
        indexes = ((("device_id", "event_id"), True),)


MODELS = [Device, PairingCode, DeviceMessage, InboundEvent]
