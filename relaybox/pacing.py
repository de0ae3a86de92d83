"""Pacing per channel: a random delay between two sends and caps per rolling minute, hour, day.

Carriers block SIMs that send too fast, and Android itself allows an app 30 SMS per 30 minutes
unless the phone's ``sms_outgoing_check_max_count`` setting is raised (README "Pacing"). So every
channel (a phone, a modem's SIM) has a :class:`Pace`; relaybox paces on the server rather than
in the app, which gives one behaviour for phones and modems, keeps the phone's own queue one
message deep (so an OTP never waits behind a pulled batch) and lets ``otp``/``high`` skip pacing.

Where a channel's pace comes from, the first that sets a field winning: an override set through
``PUT /api/v1/routing/channels/{id}/pacing`` (:class:`ChannelPacing` rows), ``[pacing.<channel
id>]`` in config.toml, a modem's own ``per_minute``/``per_hour``/``per_day``, ``[pacing.<kind>]``,
then :data:`DEFAULTS`.

The counters are the timeline: one ``dispatched`` row per hand-off (``otp``/``high`` count too,
they are never held back). So they survive a restart, and every process sharing the database
sees the same numbers. The delay after a hand-off is random in ``min_delay..max_delay`` but
derived from the hand-off itself (channel and time), so every process computes the same one.

The claim policy (:meth:`Pacer.claim_policy`, one of ``runtime.claim_policies``) is the
authority: inside the claim's transaction it lets ``otp``/``high`` through and at most what the
pace allows of the rest. The pacer thread only decides when to wake a channel: when its next
send becomes due it tops up the channel's share of the queue (``Router.route_pending``) and
notifies it.
"""
from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import peewee as pw

from relaybox.config import PacingSpec
from relaybox.db import BaseModel, JSONField, write_tx
from relaybox.models import Message, MessageEvent
from relaybox.timeutil import now_ms

if TYPE_CHECKING:  # pragma: no cover
    from relaybox.channels.base import Channel
    from relaybox.runtime import Runtime

log = logging.getLogger("relaybox.pacing")

URGENT_MAX = 1  # priorities 0 (otp) and 1 (high) skip pacing and sending windows
UNBOUNDED = 10**9
WINDOWS_MS = (("per_minute", 60_000), ("per_hour", 3_600_000), ("per_day", 86_400_000))

#: Built-in paces per channel kind. A phone: Android's own limit is 30 SMS per 30 minutes per
#: app, so 30 an hour never trips it; 200 a day is under the daily limits carriers (and PTA in
#: Pakistan) put on ordinary SIMs. A modem's SIM: the same daily ceiling, at most one message
#: every 1-3 s. The sandbox reaches no carrier and is not paced.
DEFAULTS: dict[str, PacingSpec] = {
    "android": PacingSpec(min_delay=2, max_delay=6, per_minute=0, per_hour=30, per_day=200),
    "modem": PacingSpec(min_delay=1, max_delay=3, per_minute=12, per_hour=120, per_day=200),
}
OFF = PacingSpec(min_delay=0, max_delay=0, per_minute=0, per_hour=0, per_day=0)


class ChannelPacing(BaseModel):
    """An admin's pacing override for one channel (API), as a PacingSpec dict."""

    channel_id = pw.CharField(primary_key=True, max_length=64)
    spec = JSONField()
    updated_at = pw.BigIntegerField()


@dataclass(frozen=True)
class Pace:
    """The effective pacing of one channel (every field resolved)."""

    min_delay: float
    max_delay: float
    per_minute: int
    per_hour: int
    per_day: int

    @property
    def paced(self) -> bool:
        return bool(self.max_delay or self.min_delay or self.caps())

    def caps(self) -> list[tuple[int, int]]:
        """(window ms, cap) of every cap that is set."""
        return [(ms, getattr(self, name)) for name, ms in WINDOWS_MS if getattr(self, name)]

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class Usage:
    """What one channel sent recently, read from the timeline."""

    last_at: int | None
    counts: dict[int, int]  # window ms -> hand-offs within it


@dataclass
class State:
    """A channel's pace and what it sent, as last read (cached by the pacer)."""

    pace: Pace
    usage: Usage
    free_at: int
    read_at: float  # time.monotonic()


def merge(*specs: PacingSpec | None) -> Pace:
    """The first spec that sets a field wins; unset everywhere means off."""
    out: dict[str, Any] = {}
    for name in PacingSpec.model_fields:
        value = next((getattr(s, name) for s in specs if s is not None and getattr(s, name) is not None), None)
        out[name] = value or 0
    out["max_delay"] = max(out["max_delay"], out["min_delay"])
    return Pace(**out)


def delay_ms(channel_id: str, last_at: int, pace: Pace) -> int:
    """The random delay after the hand-off at ``last_at`` (the same in every process)."""
    if not pace.max_delay:
        return 0
    rng = random.Random(f"{channel_id}:{last_at}")
    return int(rng.uniform(pace.min_delay, pace.max_delay) * 1000)


def usage(channel_id: str, pace: Pace, now: int) -> Usage:
    """Hand-offs of the channel in each capped window, and the last one (one indexed query)."""
    caps = pace.caps()
    span = max([ms for ms, _ in caps] + [int(pace.max_delay * 1000) + 1000])
    cases = [pw.fn.SUM(pw.Case(None, [(MessageEvent.at >= now - ms, 1)], 0)) for ms, _ in caps]
    row = (MessageEvent.select(pw.fn.MAX(MessageEvent.at), *cases)
           .where((MessageEvent.channel_id == channel_id) & (MessageEvent.status == "dispatched")
                  & (MessageEvent.at >= now - span)).tuples().first())
    row = row or (None,)
    counts = {ms: int(row[i + 1] or 0) for i, (ms, _) in enumerate(caps)}
    return Usage(last_at=row[0], counts=counts)


def free_at(channel_id: str, pace: Pace, now: int, used: Usage | None = None) -> int:
    """When the channel may (or could already) take its next ``normal``/``bulk`` message: a
    time after ``now`` while the pace holds it back, else the time it became free (0: never
    held in the windows looked at)."""
    if not pace.paced:
        return 0
    used = used or usage(channel_id, pace, now)
    at = 0
    if used.last_at is not None:
        at = used.last_at + delay_ms(channel_id, used.last_at, pace)
    for ms, cap in pace.caps():
        n = used.counts.get(ms, 0)
        if n >= cap:
            # The window makes room when its (n - cap + 1)-th oldest hand-off ages out.
            oldest = (MessageEvent.select(MessageEvent.at)
                      .where((MessageEvent.channel_id == channel_id) & (MessageEvent.status == "dispatched")
                             & (MessageEvent.at >= now - ms))
                      .order_by(MessageEvent.at).offset(n - cap).limit(1).scalar())
            at = max(at, (oldest if oldest is not None else now) + ms + 1)
    return at


def allowance(channel_id: str, pace: Pace, now: int) -> tuple[int, int]:
    """(normal/bulk messages the channel may take now, when the next may go)."""
    if not pace.paced:
        return UNBOUNDED, 0
    used = usage(channel_id, pace, now)
    nxt = free_at(channel_id, pace, now, used)
    if nxt > now:
        return 0, nxt
    if pace.max_delay:
        return 1, nxt
    room = [cap - used.counts.get(ms, 0) for ms, cap in pace.caps()]
    return max(1, min(room)), nxt


class Pacer:
    """Paces every channel of a runtime: resolves paces, polices claims, wakes channels on time."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._overrides: dict[str, PacingSpec] = {}
        self._load_overrides()
        self._lock = threading.Lock()
        self._states: dict[str, State] = {}
        self._dirty_until: dict[str, float] = {}  # a claim just ran: re-read until then
        self._due: dict[str, tuple[int, int]] = {}  # channel -> (due at, nudged at)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._route_requested = False
        # Which normal/bulk messages may go now (a WHERE that excludes closed sending windows
        # and paused accounts), or None for all; set by relaybox.routing.
        self.go_filter: Callable[[], Any] = lambda: None

    # -- paces ------------------------------------------------------------------------------------
    def _load_overrides(self) -> None:
        try:
            self._overrides = {r.channel_id: PacingSpec(**(r.spec or {})) for r in ChannelPacing.select()}
        except pw.PeeweeException:  # table not there yet (created by init)
            self._overrides = {}

    def set_override(self, channel_id: str, spec: PacingSpec | None) -> None:
        now = now_ms()
        with write_tx():
            if spec is None:
                ChannelPacing.delete().where(ChannelPacing.channel_id == channel_id).execute()
            else:
                data = spec.model_dump(exclude_none=True)
                (ChannelPacing.insert(channel_id=channel_id, spec=data, updated_at=now)
                 .on_conflict(conflict_target=[ChannelPacing.channel_id],
                              update={ChannelPacing.spec: data, ChannelPacing.updated_at: now}).execute())
        if spec is None:
            self._overrides.pop(channel_id, None)
        else:
            self._overrides[channel_id] = spec
        self._states.pop(channel_id, None)
        self.wake()

    def override(self, channel_id: str) -> PacingSpec | None:
        return self._overrides.get(channel_id)

    def pace_for(self, channel: Channel | str) -> Pace:
        ch = self.rt.channels.get(channel) if isinstance(channel, str) else channel
        cid = channel if isinstance(channel, str) else channel.id
        kind = ch.kind if ch is not None else ("modem" if cid.startswith("modem_") else
                                               "android" if cid.startswith("dev_") else cid)
        conf = self.rt.config.pacing
        own = None
        settings = getattr(ch, "settings", None)  # a modem's [[modem]] caps
        if kind == "modem" and settings is not None:
            own = PacingSpec(per_minute=getattr(settings, "per_minute", None),
                             per_hour=getattr(settings, "per_hour", None),
                             per_day=getattr(settings, "per_day", None))
        return merge(self._overrides.get(cid), conf.get(cid), own, conf.get(kind), DEFAULTS.get(kind, OFF))

    # -- what the router and the claims ask ------------------------------------------------------------
    def state(self, channel: Channel | str, max_age: float = 0.25) -> State:
        """The channel's counters, read again when older than ``max_age`` s or a claim may have
        changed them (they change only by hand-offs: in this process, a claim marks them)."""
        cid = channel if isinstance(channel, str) else channel.id
        mono = time.monotonic()
        st = self._states.get(cid)
        if (st is not None and mono - st.read_at < max_age and self._dirty_until.get(cid, 0.0) < mono):
            return st
        pace = self.pace_for(channel)
        now = now_ms()
        used = usage(cid, pace, now) if pace.paced else Usage(None, {})
        st = State(pace=pace, usage=used, free_at=free_at(cid, pace, now, used) if pace.paced else 0, read_at=mono)
        self._states[cid] = st
        return st

    def buffer_target(self, channel: Channel) -> int:
        """How many unclaimed messages the router should keep assigned to the channel: all it
        likes when unpaced, else what it may send now (at least 1 once it is free, 0 while a
        cap holds it back), so the rest of the queue stays free for whichever channel is next."""
        pace = self.pace_for(channel)
        if not pace.paced:
            return UNBOUNDED
        st = self.state(channel)
        now = now_ms()
        if st.free_at > now:
            return 1 if st.free_at - now < 2000 else 0  # the next one, ready when it is due
        if pace.max_delay:
            return 1
        room = [cap - st.usage.counts.get(ms, 0) for ms, cap in pace.caps()]
        return max(1, min(min(room), 100))

    def next_send_at(self, channel_id: str) -> int:
        return self.state(channel_id).free_at

    def claim_policy(self, channel_id: str, limit: int) -> tuple[int, Any]:
        """Inside the claim: otp/high always, normal/bulk only as far as the pace allows."""
        pace = self.pace_for(channel_id)
        if not pace.paced:
            return limit, None
        now = now_ms()
        allowed, _ = allowance(channel_id, pace, now)
        self._dirty_until[channel_id] = time.monotonic() + 0.3  # this claim changes the counters
        self._wake.set()  # the pacer re-reads them after the claim
        if allowed >= limit:
            return limit, None
        urgent = Message.priority <= URGENT_MAX
        if allowed <= 0:
            return limit, urgent
        # The first `allowed` normal/bulk messages in claim order (priority, then FIFO) that
        # may go now; otp/high besides them.
        first = (Message.select(Message.id)
                 .where((Message.status == "queued") & (Message.channel_id == channel_id)
                        & (Message.priority > URGENT_MAX))
                 .order_by(Message.priority, Message.id).limit(allowed))
        go = self.go_filter()
        if go is not None:
            first = first.where(go)
        return limit, urgent | Message.id.in_(first)

    # -- the pacer thread ------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="pacer", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(3)
            self._thread = None

    def wake(self) -> None:
        self._wake.set()

    def after_claim(self, channel_id: str) -> None:
        """A channel took messages: re-read its counters, and give it the next one now, so it
        is there when the channel is due again."""
        self._dirty_until[channel_id] = time.monotonic() + 0.3
        if self.pace_for(channel_id).paced:
            self.request_routing()

    def request_routing(self) -> None:
        """Unassigned messages were queued (late binding): route them from the pacer thread now."""
        self._route_requested = True
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            wait = 0.25
            try:
                wait = self.tick()
            except Exception:
                log.exception("pacer tick failed")
                wait = 0.5
            self._wake.wait(max(0.005, min(wait, 0.25)))
            self._wake.clear()

    def tick(self) -> float:
        """Wake the channels whose next send has come; returns seconds until worth looking again.

        A channel that already holds a message is notified first; the router then tops up the
        ones that hold none (and notifies them itself)."""
        rt = self.rt
        now = now_ms()
        soonest = now + 250
        due: list[Channel] = []
        for ch in list(rt.channels.values()):
            if not self.pace_for(ch).paced or not rt.usable(ch):
                self._due.pop(ch.id, None)
                continue
            at = self.state(ch, max_age=1.0).free_at
            if at > now:
                soonest = min(soonest, at)
                continue
            last = self._due.get(ch.id)
            if last is not None and last[0] == at and now - last[1] < 1000:
                continue  # woken for this slot already (again each second while it stays free)
            self._due[ch.id] = (at, now)
            due.append(ch)
        empty = []
        for ch in due:
            if self.has_work(ch.id):
                ch.notify()
            else:
                empty.append(ch)
        if empty or self._route_requested:
            self._route_requested = False
            rt.router.route_pending()  # their share of the queue, notified by the router
        return (soonest - now) / 1000

    def has_work(self, channel_id: str) -> bool:
        """Queued messages of the channel that may go now (pace aside)."""
        q = Message.select(Message.id).where((Message.status == "queued") & (Message.channel_id == channel_id))
        go = self.go_filter()
        if go is not None:
            q = q.where((Message.priority <= URGENT_MAX) | go)
        return q.limit(1).exists()
