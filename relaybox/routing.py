"""Routing across phones, SIMs and modems: the feature that wires the router's policies in.

``init_app`` installs, on the runtime the core built:

* the pacer (``relaybox.pacing``): a claim policy and a thread that wakes channels on time;
* sending windows (``relaybox.windows``): a claim policy that holds ``normal``/``bulk`` messages
  of accounts outside their window, and the ``waiting`` field of ``GET /sms/{id}``;
* parking (``relaybox.failover``): a channel filter, a claim policy, an event listener, a
  ``/ready`` check and queue health fields;
* the precise ``send_at`` scheduler (``relaybox.scheduling``);
* the router's accept hook (channel of otp/high at once, sticky sender, windows);
* the API: ``GET``/``PUT /api/v1/account/settings`` (time zone, sending window, sticky sender),
  ``GET /api/v1/routing`` and ``PUT``/``DELETE /api/v1/routing/channels/{id}/pacing``.
"""
from __future__ import annotations

import time
from typing import Any

from flask import current_app
from flask_openapi3 import APIBlueprint, Tag
from pydantic import BaseModel, Field, field_validator

from relaybox import events
from relaybox.api.common import SECURITY, StrictBody, current_account
from relaybox.config import PacingSpec
from relaybox.db import write_tx
from relaybox.errors import ApiError, envelope
from relaybox.failover import Parking
from relaybox.models import PRIORITY_NAMES, Account, Message
from relaybox.pacing import URGENT_MAX, ChannelPacing, Pacer, free_at
from relaybox.scheduling import Scheduler
from relaybox.timeutil import iso, now_ms
from relaybox.windows import SETTING as WINDOW_SETTING
from relaybox.windows import SendingWindow, Windows, state, valid_timezone, window_of

bp = APIBlueprint("routing", __name__, url_prefix="/api/v1", abp_tags=[Tag(name="Routing")],
                  abp_security=SECURITY)
STICKY = "sticky_sender"
# Timeline rows a channel writes itself (not the ones written when a message is queued for it).
ACTIVITY = ("dispatched", "sent", "delivered", "failed", "undelivered", "cancelled")


def _rt() -> Any:
    return current_app.extensions["relaybox"]


def _routing() -> Routing:
    return current_app.extensions["relaybox.routing"]


# -- account settings ---------------------------------------------------------------------------------
class AccountSettingsBody(StrictBody):
    timezone: str | None = Field(None, description="IANA time zone of the sending window, e.g. Asia/Karachi")
    sending_window: SendingWindow | None = Field(
        None, description="When normal/bulk messages may go out (local time); null: any time")
    sticky_sender: bool | None = Field(None, description="Keep each recipient on the channel (SIM) "
                                                         "that last sent to them")

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str | None) -> str | None:
        return None if v is None else valid_timezone(v)


def settings_view(account: Account) -> dict[str, Any]:
    win = window_of(account)
    is_open, change = state(win, account.timezone, now_ms())
    return {
        "timezone": account.timezone or "UTC",
        "sending_window": win.model_dump() if win else None,
        "sending_window_open": is_open,
        "sending_window_changes_at": iso(change) if win else None,
        "sticky_sender": bool((account.settings or {}).get(STICKY)),
    }


@bp.get("/account/settings")
def get_account_settings():
    """Your routing settings: time zone, sending window, sticky sender."""
    return envelope(settings_view(current_account()))


@bp.put("/account/settings")
def put_account_settings(body: AccountSettingsBody):
    """Change the fields you send (``sending_window: null`` removes the window)."""
    account = current_account()
    given = body.model_fields_set
    with write_tx():
        acc = Account.get_by_id(account.id)
        settings = dict(acc.settings or {})
        if "sending_window" in given:
            if body.sending_window is None:
                settings.pop(WINDOW_SETTING, None)
            else:
                settings[WINDOW_SETTING] = body.sending_window.model_dump()
        if "sticky_sender" in given:
            if body.sticky_sender:
                settings[STICKY] = True
            else:
                settings.pop(STICKY, None)
        acc.settings = settings
        if "timezone" in given:
            acc.timezone = body.timezone or "UTC"
        acc.save()
    _routing().windows.invalidate()
    _rt().kick()  # a window that opened releases messages at once
    return envelope(settings_view(acc))


# -- channels: pacing, parking -----------------------------------------------------------------------
class ChannelPath(BaseModel):
    channel_id: str = Field(max_length=64)


class PacingBody(StrictBody, PacingSpec):
    """Fields you leave out inherit from config.toml and the defaults."""


def channel_view(routing: Routing, ch: Any) -> dict[str, Any]:
    pacer, rt = routing.pacer, routing.rt
    pace = pacer.pace_for(ch)
    now = now_ms()
    out: dict[str, Any] = {
        "id": ch.id, "name": ch.name, "kind": ch.kind, "online": ch.online(), "enabled": ch.enabled(),
        "usable": rt.usable(ch), "numbers": ch.numbers(),
        "pacing": {**pace.as_dict(), "paced": pace.paced,
                   "override": (o.model_dump(exclude_none=True) if (o := pacer.override(ch.id)) else None)},
    }
    if pace.paced:
        from relaybox.pacing import usage

        used = usage(ch.id, pace, now)
        nxt = free_at(ch.id, pace, now, used)
        out["pacing"]["sent"] = {name: used.counts.get(ms, 0) for name, ms in
                                 (("last_minute", 60_000), ("last_hour", 3_600_000), ("last_day", 86_400_000))
                                 if ms in used.counts}
        out["pacing"]["next_send_at"] = iso(max(nxt, now))
    out.update(routing.parking.view(ch.id))
    return out


def _owner() -> Any:
    account = current_account()
    if not account.is_owner:
        raise ApiError("FORBIDDEN", "only the owner account may change channel pacing")
    return account


def _channel(channel_id: str) -> Any:
    ch = _rt().channels.get(channel_id)
    if ch is None:
        raise ApiError("NOT_FOUND", f"no channel {channel_id}")
    return ch


def _visible(account: Any, ch: Any) -> bool:
    """The owner sees every channel; another account its own phones and modems (and the sandbox)."""
    if account.is_owner or ch.kind == "sandbox":
        return True
    owner = getattr(ch, "account_id", None) or getattr(getattr(ch, "device", None), "account_id", None)
    return owner == account.id


@bp.get("/routing")
def get_routing():
    """Every channel as the router sees it: usable, pacing and what it sent, parking."""
    account = current_account()
    routing = _routing()
    chans = sorted((ch for ch in routing.rt.channels.values() if _visible(account, ch)), key=lambda c: c.id)
    return envelope({"channels": [channel_view(routing, ch) for ch in chans],
                     "max_attempts": routing.rt.config.max_attempts,
                     "park_after_failures": routing.rt.config.park_after_failures})


@bp.put("/routing/channels/<channel_id>/pacing")
def put_pacing(path: ChannelPath, body: PacingBody):
    """Set this channel's pacing (owner only); unset fields inherit."""
    _owner()
    ch = _channel(path.channel_id)
    _routing().pacer.set_override(ch.id, PacingSpec(**body.model_dump()))
    return envelope(channel_view(_routing(), ch))


@bp.delete("/routing/channels/<channel_id>/pacing")
def delete_pacing(path: ChannelPath):
    """Back to the configured pacing (owner only)."""
    _owner()
    ch = _channel(path.channel_id)
    _routing().pacer.set_override(ch.id, None)
    return envelope(channel_view(_routing(), ch))


# -- the wiring ---------------------------------------------------------------------------------------
class Routing:
    def __init__(self, rt: Any) -> None:
        self.rt = rt
        self.pacer = Pacer(rt)
        self.windows = Windows()
        self.parking = Parking(rt)
        self.scheduler = Scheduler(rt)
        self._accounts: dict[str, tuple[float, Any]] = {}
        self._last_stuck_check = 0.0

    # claims: closed windows hold normal/bulk
    def window_policy(self, channel_id: str, limit: int) -> tuple[int, Any]:
        closed = self.windows.closed(now_ms())
        if not closed:
            return limit, None
        return limit, (Message.priority <= URGENT_MAX) | Message.account.not_in(list(closed))

    def _account(self, account_id: str) -> Any:
        hit = self._accounts.get(account_id)
        if hit and hit[0] > time.monotonic():
            return hit[1]
        acc = Account.get_or_none(Account.id == account_id)
        self._accounts[account_id] = (time.monotonic() + 1.0, acc)
        return acc

    def view_hook(self, m: Message, data: dict[str, Any]) -> None:
        """``GET /sms/{id}``: why a queued message waits, and until when."""
        if m.status != "queued" or m.direction != "outbound":
            return
        now = now_ms()
        urgent = m.priority <= URGENT_MAX
        if not urgent:
            acc = self._account(m.account_id)
            win = window_of(acc) if acc is not None else None
            if win is not None:
                is_open, change = state(win, acc.timezone, now)
                if not is_open:
                    data["waiting"] = {"reason": "sending_window", "until": iso(change),
                                       "timezone": acc.timezone or "UTC",
                                       "window": win.model_dump(), "priority": PRIORITY_NAMES.get(m.priority)}
                    return
        if m.channel_id:
            parked = self.parking.parked(m.channel_id)
            if parked is not None:
                data["waiting"] = {"reason": "channel_parked", "device_id": m.channel_id,
                                   "until": iso(parked.parked_until)}
                return
            if not urgent:
                pace = self.pacer.pace_for(m.channel_id)
                nxt = free_at(m.channel_id, pace, now) if pace.paced else 0
                if nxt > now:
                    data["waiting"] = {"reason": "pacing", "device_id": m.channel_id, "until": iso(nxt)}
                    return
        elif not any(self.rt.usable(ch) for ch in list(self.rt.channels.values())):
            data["waiting"] = {"reason": "no_channel", "until": None}
        elif not urgent:
            # Not assigned yet: the next channel whose pace allows takes it.
            data["waiting"] = {"reason": "channels_busy", "until": None}

    def after_accept(self, rows: list[Any]) -> None:
        """Messages left without a channel (paced channels get theirs when they can send) are
        routed at once by the pacer thread, not at the next housekeeping pass."""
        if any(m.status == "queued" and m.channel_id is None for m in rows):
            self.pacer.request_routing()

    def ready(self, account: Any) -> tuple[str, bool, str]:
        return self.parking.ready(account)

    def queue_hook(self, channel_id: str, row: dict[str, Any]) -> None:
        row.update(self.parking.view(channel_id))
        pace = self.pacer.pace_for(channel_id)
        row["paced"] = pace.paced
        if pace.paced and channel_id in self.rt.channels:
            nxt = free_at(channel_id, pace, now_ms())
            row["next_send_at"] = iso(max(nxt, now_ms()))

    def sweep(self) -> None:
        """Housekeeping: probes that never answered; channels that hold messages they may
        send but do not take (parked, so their messages go elsewhere)."""
        self.parking.sweep()
        if time.monotonic() - self._last_stuck_check < 2.0:
            return
        self._last_stuck_check = time.monotonic()
        self.find_stuck_channels()

    def find_stuck_channels(self) -> None:
        import peewee as pw

        from relaybox.models import MessageEvent

        rt = self.rt
        now = now_ms()
        timeout = int(rt.config.handoff_timeout * 1000)
        go = rt.router.go_filter()
        for ch in list(rt.channels.values()):
            if not rt.usable(ch):
                continue
            pace = self.pacer.pace_for(ch)
            if pace.paced and free_at(ch.id, pace, now) > now - timeout:
                continue  # it has not been free to send for the whole time
            q = Message.select(Message.id).where((Message.status == "queued") & (Message.channel_id == ch.id)
                                                 & (Message.updated_at < now - timeout))
            if go is not None:
                q = q.where((Message.priority <= URGENT_MAX) | go)
            if not q.limit(1).exists():
                continue
            # Anything the channel did (took a message, or reported on one it holds) shows it
            # is working through what it has; nothing at all for the whole time shows it is not.
            last = (MessageEvent.select(pw.fn.MAX(MessageEvent.at))
                    .where((MessageEvent.channel_id == ch.id) & (MessageEvent.status << list(ACTIVITY))
                           & (MessageEvent.at >= now - timeout)).scalar())
            if last is None:
                self.parking.park(ch.id, f"took none of its messages for {timeout // 1000} s", now)


def init_app(app: Any) -> None:
    """Install the routing policies on the runtime and register the API."""
    from relaybox.db import create_tables

    rt = app.extensions["relaybox"]
    assert ChannelPacing  # declares the table
    create_tables()
    routing = Routing(rt)
    app.extensions["relaybox.routing"] = routing
    router = rt.router
    router.pacer = routing.pacer
    router.windows = routing.windows
    router.parking = routing.parking
    routing.pacer.go_filter = router.go_filter
    routing.scheduler.on_released = routing.pacer.request_routing

    rt.channel_filters.append(routing.parking.usable)
    rt.claim_policies.append(routing.parking.claim_policy)
    rt.claim_policies.append(routing.window_policy)
    rt.claim_policies.append(routing.pacer.claim_policy)
    rt.before_accept.append(router.before_accept)
    rt.after_accept.append(routing.scheduler.after_accept)
    rt.after_accept.append(routing.after_accept)
    rt.message_view_hooks.append(routing.view_hook)
    rt.ready_checks.append(routing.ready)
    rt.channel_view_hooks.append(routing.queue_hook)
    rt.sweepers.append(routing.sweep)
    rt.start_hooks.append(routing.pacer.start)
    rt.start_hooks.append(routing.scheduler.start)
    rt.stop_hooks.append(routing.pacer.stop)
    rt.stop_hooks.append(routing.scheduler.stop)
    events.subscribe(routing.parking.on_events)
    app.register_api(bp)
