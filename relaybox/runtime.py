"""The running appliance: config, database, queue, channels, router and the housekeeper.

``create_app`` builds one :class:`Runtime`; ``relaybox serve`` starts its threads. Nothing here
runs at import time.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from huey.api import Huey

from relaybox import messages
from relaybox.channels.base import Channel
from relaybox.channels.router import Router
from relaybox.config import Config
from relaybox.db import create_tables, open_database
from relaybox.models import QUEUE_PAUSED, IdempotencyRecord
from relaybox.queue import QueueRunner, make_huey
from relaybox.security import load_or_create_secret, set_instance_secret
from relaybox.timeutil import now_ms

log = logging.getLogger("relaybox.runtime")
_UNREAD: Any = object()  # instance_paused(): the setting was not read by the caller

current: Runtime | None = None


class Tasks:
    """The Huey tasks, bound to one Huey instance. Each is a nudge that re-reads the rows."""

    def __init__(self, huey: Huey, runtime: Runtime) -> None:
        self.huey = huey

        @huey.task(name="sandbox_pump")
        def sandbox_pump() -> int:
            ch = runtime.channels.get("sandbox")
            return ch.pump() if ch is not None else 0  # type: ignore[attr-defined]

        @huey.task(name="route_pending")
        def route_pending() -> int:
            return runtime.router.route_pending()

        self.sandbox_pump = sandbox_pump
        self.route_pending = route_pending

    def add(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Feature modules (webhooks, ...) register their tasks here."""
        task = self.huey.task(name=name)(fn)
        setattr(self, name, task)
        return task


class Runtime:
    def __init__(self, config: Config) -> None:
        global current
        self.config = config
        os.makedirs(config.data_dir, exist_ok=True)
        set_instance_secret(load_or_create_secret(config.data_dir, config.secret))
        self.database = open_database(config.database_url)
        self.huey = make_huey(config)
        self.tasks = Tasks(self.huey, self)
        self.channels: dict[str, Channel] = {}
        self.router = Router(self)
        self.timeout_codes: dict[str, str] = {}
        self.sweepers: list[Callable[[], None]] = []
        # Extension points other features hook into (traffic control, billing, OTP, ...):
        self.send_gates: list[Callable[[Any], None]] = []          # account -> raise ApiError
        self.message_checks: list[Callable[[Any, str | None, str | None], None]] = []  # (account, to, body)
        self.before_accept: list[Callable[[Any, list[Any]], None]] = []  # in the accept transaction
        self.after_accept: list[Callable[[list[Any]], None]] = []   # after commit
        self.message_view_hooks: list[Callable[[Any, dict[str, Any]], None]] = []
        self.ready_checks: list[Callable[[Any], tuple[str, bool, str]]] = []
        # Traffic control: a channel every filter refuses is skipped by the router (daily cap
        # reached); claim policies run inside claim_for_channel's transaction and return
        # (channel_id, limit) -> (new limit, extra WHERE on Message or None) (caps, held queues).
        self.channel_filters: list[Callable[[Channel], bool]] = []
        self.claim_policies: list[Callable[[str, int], tuple[int, Any]]] = []
        # Queue health adds what other features know about a channel: (channel_id, row) -> None.
        self.channel_view_hooks: list[Callable[[str, dict[str, Any]], None]] = []
        # Background work of features (e.g. the routing pacer): run by start() and stop().
        # before_start: first thing start() does, before recovery or any channel runs (the
        # serve lock: `relaybox restore` must see a starting server as running).
        self.before_start: list[Callable[[], None]] = []
        self.start_hooks: list[Callable[[], None]] = []
        self.stop_hooks: list[Callable[[], None]] = []
        # POST /sms/list "tags": (account, tags) -> the numbers of the contacts with those tags.
        self.tag_recipients: Callable[[Any, list[str]], list[str]] | None = None
        self.started = False
        self._stop = threading.Event()
        self._queue_runner: QueueRunner | None = None
        self._housekeeper = threading.Thread(target=self._housekeep_loop, name="housekeeper", daemon=True)
        current = self

    def init_schema(self) -> None:
        create_tables()

    # -- channels --------------------------------------------------------------------------
    def add_channel(self, channel: Channel) -> None:
        self.channels[channel.id] = channel
        if self.started:
            channel.start()

    def remove_channel(self, channel_id: str) -> None:
        ch = self.channels.pop(channel_id, None)
        if ch is not None and self.started:
            ch.stop()

    def instance_paused(self, setting: Any = _UNREAD) -> bool:
        """Instance-wide pause flag (admin: ``relaybox queue pause``). A ``Setting`` row, so every
        process sharing the database sees it and it survives a restart; a ``paused`` file in
        the data dir also pauses this box. ``setting``: the row's raw value when the caller
        has just read it (API requests read it with the key lookup)."""
        if setting is _UNREAD:
            from relaybox.db import db

            # Asked on every send: a plain statement, not the query builder.
            row = db.execute_sql(f'SELECT "value" FROM "setting" WHERE "key" = {db.obj.param}',
                                 (QUEUE_PAUSED,)).fetchone()
            setting = None if row is None else row[0]
        paused = setting is not None and bool(json.loads(setting))
        return paused or os.path.exists(os.path.join(self.config.data_dir, "paused"))

    def usable(self, channel: Channel) -> bool:
        """Enabled, online and not refused by a channel filter (e.g. its daily cap)."""
        return channel.enabled() and channel.online() and all(f(channel) for f in self.channel_filters)

    def channel_names(self) -> dict[str, str]:
        return {cid: ch.name for cid, ch in self.channels.items()}

    def notify_channel(self, channel_id: str | None) -> None:
        if channel_id and channel_id in self.channels:
            self.channels[channel_id].notify()

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Start the queue consumer, channels and the housekeeper (``relaybox serve``)."""
        if self.started:
            return
        self.started = True
        for hook in list(self.before_start):
            hook()
        self.recover()
        self._queue_runner = QueueRunner(self.huey, self.config.workers)
        self._queue_runner.start()
        for ch in list(self.channels.values()):
            ch.start()
        self._housekeeper.start()
        for hook in list(self.start_hooks):
            hook()
        self.kick()

    def stop(self) -> None:
        self._stop.set()
        for hook in list(self.stop_hooks):
            try:
                hook()
            except Exception:
                log.exception("stop hook %s failed", getattr(hook, "__name__", hook))
        for ch in list(self.channels.values()):
            try:
                ch.stop()
            except Exception:
                log.exception("channel %s stop failed", ch.id)
        if self._queue_runner is not None:
            self._queue_runner.stop()
        self._housekeeper.join(3)

    def recover(self) -> None:
        """After a crash: messages waiting on a channel are re-routed from scratch.

        ``dispatched`` messages are left alone: a channel took them and may have sent them.
        Each channel decides on start what it can prove (the sandbox resumes its own; a phone
        reports or times out with DEVICE_TIMEOUT; a modem ends MODEM_UNCONFIRMED).
        """
        from relaybox.models import Message

        n = (Message.update(channel_id=None)
             .where((Message.status == "queued") & Message.device_hint.is_null()).execute())
        if n:
            log.info("recovered %d queued messages for re-routing", n)

    def kick(self) -> None:
        """Route what waits and wake every channel (cheap; safe to call often)."""
        try:
            self.router.route_pending()
        except Exception:
            log.exception("routing failed")
        for ch in list(self.channels.values()):
            ch.notify()

    def sweep(self) -> None:
        """One housekeeping pass: schedules, TTL expiry, routing, feature sweepers."""
        now = now_ms()
        released = messages.release_scheduled(now)
        messages.expire_due(now, self.timeout_codes)
        routed = self.router.route_pending()
        if released or routed:
            for ch in list(self.channels.values()):
                ch.notify()
        else:
            self.renudge(now)
        for fn in list(self.sweepers):
            try:
                fn()
            except Exception:
                log.exception("sweeper %s failed", getattr(fn, "__name__", fn))

    def renudge(self, now: int, older_than_ms: int = 2000) -> None:
        """Wake channels whose assigned messages have waited a while: their queue nudge may
        have been lost (Huey has no acks; an enqueue can fail on a full disk)."""
        from relaybox.models import Message

        waiting = {cid for (cid,) in Message.select(Message.channel_id).distinct().where(
            (Message.status == "queued") & Message.channel_id.is_null(False)
            & (Message.queued_at < now - older_than_ms)).tuples()}
        for cid in waiting & set(self.channels):
            self.channels[cid].notify()

    def prune(self) -> None:
        IdempotencyRecord.delete().where(IdempotencyRecord.created_at < now_ms() - 86_400_000).execute()

    def _housekeep_loop(self) -> None:
        last_prune = 0.0
        while not self._stop.wait(self.config.sweep_interval):
            try:
                self.sweep()
                if time.monotonic() - last_prune > 600:
                    self.prune()
                    last_prune = time.monotonic()
            except Exception:
                log.exception("housekeeping pass failed")
