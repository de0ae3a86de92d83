"""The core tables: accounts, API keys, messages and their timeline, batches, idempotency, events.

Times are integer milliseconds since the epoch (UTC): exact, sortable, portable across
SQLite and PostgreSQL. Feature modules (devices, webhooks, OTP, ...) declare their own models on
the same ``BaseModel``; ``relaybox.db.create_tables`` finds them all.
"""
from __future__ import annotations

import peewee as pw

from relaybox.db import BaseModel, JSONField

PRIORITIES = {"otp": 0, "high": 1, "normal": 2, "bulk": 3}
PRIORITY_NAMES = {v: k for k, v in PRIORITIES.items()}


class Account(BaseModel):
    id = pw.CharField(primary_key=True, max_length=40)
    name = pw.CharField(max_length=200)
    api_enabled = pw.BooleanField(default=False)
    is_owner = pw.BooleanField(default=False)
    locale = pw.CharField(max_length=8, default="en")
    timezone = pw.CharField(max_length=64, default="UTC")
    subscription_until = pw.BigIntegerField(null=True)
    paused = pw.BooleanField(default=False)
    settings = JSONField(default=dict)
    created_at = pw.BigIntegerField()


class ApiKey(BaseModel):
    id = pw.CharField(primary_key=True, max_length=40)
    account = pw.ForeignKeyField(Account, backref="keys", on_delete="CASCADE")
    key_hash = pw.CharField(max_length=64, unique=True)
    hint = pw.CharField(max_length=32)
    created_at = pw.BigIntegerField()
    revoked_at = pw.BigIntegerField(null=True)


class Batch(BaseModel):
    id = pw.CharField(primary_key=True, max_length=40)
    account = pw.ForeignKeyField(Account, backref="batches", on_delete="CASCADE")
    kind = pw.CharField(max_length=8)  # "batch" | "list"
    total = pw.IntegerField()
    from_number = pw.CharField(max_length=20, null=True)
    created_at = pw.BigIntegerField()


class Message(BaseModel):
    """The row is the truth about a message; queue tasks are only nudges."""

    id = pw.CharField(primary_key=True, max_length=40)
    # Indexed by the composite indexes below, which start with it (as do batch and message in
    # MessageEvent): single-column copies only cost every insert another B-tree.
    account = pw.ForeignKeyField(Account, backref="messages", on_delete="CASCADE", index=False)
    client_reference_id = pw.CharField(max_length=255)
    direction = pw.CharField(max_length=8, default="outbound")
    to_number = pw.CharField(max_length=20)
    from_number = pw.CharField(max_length=20, null=True)
    body = pw.TextField()
    status = pw.CharField(max_length=12)
    segments = pw.IntegerField(default=1)
    encoding = pw.CharField(max_length=5, default="GSM-7")
    metadata = JSONField(null=True)
    status_callback = pw.CharField(max_length=2048, null=True)
    batch = pw.ForeignKeyField(Batch, backref="messages", null=True, on_delete="SET NULL", index=False)
    batch_index = pw.IntegerField(null=True)
    device_hint = pw.CharField(max_length=40, null=True)
    channel_id = pw.CharField(max_length=64, null=True)
    priority = pw.SmallIntegerField(default=PRIORITIES["normal"])
    send_at = pw.BigIntegerField(null=True)
    expires_at = pw.BigIntegerField(null=True)
    attempts = pw.IntegerField(default=0)
    error_code = pw.CharField(max_length=40, null=True)
    error_message = pw.TextField(null=True)
    sequence = pw.IntegerField(default=0)
    # False once the channel knows no delivery report will come (then "sent" is final).
    report_expected = pw.BooleanField(default=True)
    created_at = pw.BigIntegerField()
    queued_at = pw.BigIntegerField(null=True)
    dispatched_at = pw.BigIntegerField(null=True)
    sent_at = pw.BigIntegerField(null=True)
    delivered_at = pw.BigIntegerField(null=True)
    updated_at = pw.BigIntegerField()

    class Meta:
        indexes = (
            (("account", "id"), False),
            (("account", "client_reference_id"), False),
            (("account", "status", "id"), False),
            (("account", "direction", "id"), False),
            (("status", "channel_id", "priority", "id"), False),
            (("batch", "batch_index"), False),
            # Per-recipient caps: messages to one number in the last hour (relaybox.limits).
            (("account", "to_number", "created_at"), False),
        )


class MessageEvent(BaseModel):
    """One timeline row per status transition."""

    message = pw.ForeignKeyField(Message, backref="timeline", on_delete="CASCADE", index=False)
    seq = pw.IntegerField()
    status = pw.CharField(max_length=12)
    at = pw.BigIntegerField()
    channel_id = pw.CharField(max_length=64, null=True)
    detail = JSONField(null=True)

    class Meta:
        # (status, at): hand-offs per channel today (daily caps) and queue throughput windows.
        # (channel_id, status, at): one channel's recent hand-offs (pacing caps and delays).
        indexes = ((("message", "seq"), True), (("status", "at"), False),
                   (("channel_id", "status", "at"), False))


class Event(BaseModel):
    """The event outbox: every webhook-worthy happening, written in the same transaction."""

    id = pw.CharField(primary_key=True, max_length=40)
    account = pw.ForeignKeyField(Account, backref="events", on_delete="CASCADE", null=True)
    type = pw.CharField(max_length=32)
    message_id = pw.CharField(max_length=40, null=True, index=True)
    payload = JSONField()
    created_at = pw.BigIntegerField(index=True)
    # Set when relaybox.webhooks turned the event into its delivery (or decided none is due);
    # NULL rows are the webhook outbox, so a restart resumes exactly where it stopped.
    webhooked_at = pw.BigIntegerField(null=True, index=True)


class IdempotencyRecord(BaseModel):
    account = pw.ForeignKeyField(Account, on_delete="CASCADE")
    key = pw.CharField(max_length=255)
    fingerprint = pw.CharField(max_length=64)
    state = pw.CharField(max_length=8)  # running | done
    status_code = pw.IntegerField(null=True)
    response = pw.TextField(null=True)
    created_at = pw.BigIntegerField(index=True)

    class Meta:
        indexes = ((("account", "key"), True),)


#: The ``Setting`` key of the admin's instance-wide queue pause.
QUEUE_PAUSED = "queue_paused"


class Setting(BaseModel):
    """Instance-wide flags that every process sharing the database must see (e.g. the admin's
    queue pause), as JSON values by key."""

    key = pw.CharField(primary_key=True, max_length=64)
    value = JSONField(null=True)
    updated_at = pw.BigIntegerField()
