"""The router: which channel sends a message, and when it is handed over.

A message goes to the channel that ``device_id`` or ``from`` names (``resolve_pin``: unknown,
offline or disabled is ``INVALID_DEVICE``). Every other message goes to the best channel: online,
enabled, not parked, under its caps (``runtime.usable``), with the fewest messages waiting on it,
round-robin among equals. An account with ``sticky_sender`` keeps talking to a recipient through
the channel that last sent to them while that channel is usable.

*When* matters as much as *where*: a channel holds only what it may send soon. An unpaced
channel (the sandbox, a phone whose pacing is off) takes everything at once, as before. A paced
one (``relaybox.pacing``) gets only what its pace allows now, so the rest of the queue waits
unassigned and goes to whichever channel is free next; that keeps every channel busy at its own
rate and lets the priority lane work: ``otp`` and ``high`` (priority 0 and 1) are assigned at
once, skip pacing and sending windows, and are claimed before anything else (claims order by
priority, then FIFO). ``normal``/``bulk`` messages of an account outside its sending window, or
whose queue is paused, are not assigned at all (``relaybox.windows``).

Unassigned queued messages (late binding, no channel online at accept, a failover, a channel
that went away) are placed by :meth:`Router.route_pending`, which the housekeeper runs every
sweep, the pacer when a channel's next send comes due, and channels when they come or go. A
failed-over message avoids the channels it failed on (``detail.failover_from`` on the timeline):
never a phone again (the app keeps message ids and would only repeat its failure); a modem only
when no other channel can take it.
"""
from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import peewee as pw

from relaybox.db import write_tx
from relaybox.errors import ApiError
from relaybox.models import Message, MessageEvent
from relaybox.timeutil import now_ms

if TYPE_CHECKING:  # pragma: no cover
    from relaybox.channels.base import Channel
    from relaybox.messages import NewMessage
    from relaybox.runtime import Runtime

log = logging.getLogger("relaybox.router")

URGENT_MAX = 1  # otp (0) and high (1)
UNBOUNDED = 10**9
STICKY_SETTING = "sticky_sender"
STICKY_STATUSES = ("dispatched", "sent", "delivered")


class Router:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._rr = itertools.count()
        self._lock = threading.Lock()
        self._route_lock = threading.Lock()
        # Messages assigned but not yet claimed, per channel: counted from the database by
        # route_pending, kept current in between by assignments and claims.
        self.waiting: Counter[str] = Counter()
        self._accepting_at = 0.0  # last assignment by a request still writing its messages
        # Installed by relaybox.routing (None: everything unpaced, no windows, no sticky).
        self.pacer: Any = None
        self.windows: Any = None
        self.parking: Any = None

    # -- choosing ---------------------------------------------------------------------------------
    def channel_for_number(self, number: str) -> Channel | None:
        for ch in list(self.runtime.channels.values()):
            if number in ch.numbers():
                return ch
        return None

    def resolve_pin(self, device_id: str | None, from_number: str | None) -> str | None:
        """Validate an explicit ``device_id`` / ``from`` at accept time (INVALID_DEVICE if not usable)."""
        chosen: Channel | None = None
        if device_id:
            chosen = self.runtime.channels.get(device_id)
            if chosen is None:
                raise ApiError("INVALID_DEVICE", f"device_id: no device {device_id}", field="device_id")
        if from_number:
            owner = self.channel_for_number(from_number)
            if owner is None:
                raise ApiError("INVALID_DEVICE", f"from: {from_number} is not a number of your channels",
                               field="from")
            if chosen is not None and owner.id != chosen.id:
                raise ApiError("INVALID_DEVICE", "from: the number belongs to another device", field="from")
            chosen = owner
        if chosen is None:
            return None
        if not (chosen.enabled() and chosen.online()):
            field = "device_id" if device_id else "from"
            raise ApiError("INVALID_DEVICE", f"{field}: device {chosen.name} is offline or disabled", field=field)
        return chosen.id

    def target(self, ch: Channel) -> int:
        """How many unclaimed messages the channel should hold (see the module docstring); a
        parked channel being tried again holds the one message it is tried with."""
        if self.parking is not None and self.parking.parked(ch.id) is not None:
            return 1
        return self.pacer.buffer_target(ch) if self.pacer is not None else UNBOUNDED

    def usable_channels(self, exclude: set[str] | None = None) -> list[Channel]:
        rt = self.runtime
        return [ch for ch in list(rt.channels.values()) if ch.id not in (exclude or ()) and rt.usable(ch)]

    def best_channel(self, exclude: set[str] | None = None, *, urgent: bool = False,
                     accepting: bool = True) -> str | None:
        """The usable channel with the fewest waiting messages (round-robin among equals), and
        count one more message on it. Unless ``urgent``, only channels with room (their pace).
        ``accepting``: called by a request that is writing the messages (the API's default)."""
        candidates = self.usable_channels(exclude)
        if not candidates:
            return None
        targets = {} if urgent else {ch.id: self.target(ch) for ch in candidates}
        if urgent and len(candidates) > 1:
            # A modem sends one message at a time: one that is sending now would make an OTP
            # wait for it, a phone or an idle modem would not.
            busy = self._busy_modems([ch for ch in candidates if ch.kind == "modem"])
            candidates = [ch for ch in candidates if ch.id not in busy] or candidates
        with self._lock:
            if not urgent:
                candidates = [ch for ch in candidates if self.waiting[ch.id] < targets[ch.id]]
                if not candidates:
                    return None
            least = min(self.waiting[ch.id] for ch in candidates)
            equal = [ch for ch in candidates if self.waiting[ch.id] == least]
            ch = equal[next(self._rr) % len(equal)]
            self.waiting[ch.id] += 1
            if accepting:
                self._accepting_at = time.monotonic()
        return ch.id

    @staticmethod
    def _busy_modems(modems: list[Channel]) -> set[str]:
        if not modems:
            return set()
        return {cid for (cid,) in Message.select(Message.channel_id).distinct()
                .where((Message.status == "dispatched") & Message.channel_id.in_([ch.id for ch in modems])).tuples()}

    def assigned(self, channel_id: str, n: int = 1) -> None:
        with self._lock:
            self.waiting[channel_id] = max(0, self.waiting[channel_id] + n)

    def claimed(self, channel_id: str, n: int) -> None:
        """A channel claimed ``n`` of its messages (called after the claim committed)."""
        with self._lock:
            self.waiting[channel_id] = max(0, self.waiting[channel_id] - n)
        if self.pacer is not None and n:
            self.pacer.after_claim(channel_id)

    # -- accept time ----------------------------------------------------------------------------------
    def before_accept(self, account: Any, items: list[NewMessage]) -> None:
        """``runtime.before_accept`` hook: settle the channel of each new message (the API's
        ``best_channel()`` call knows neither the priority, the account nor the recipient)."""
        now = now_ms()
        held = self._holds(account, now)
        sticky = self._sticky_for(account, [it.to for it in items if not (it.device_hint or it.from_number)])
        # FIFO within a class: while older messages of this class (or a higher one) wait for a
        # channel, new ones queue behind them; and once one of this request's messages found no
        # channel with room, the later ones wait too.
        behind: dict[int, bool] = {}
        for it in items:
            if it.device_hint or it.from_number or (it.send_at and it.send_at > now):
                continue  # pinned by the caller, or scheduled (routed when it is due)
            urgent = it.priority <= URGENT_MAX
            want = it.channel_id
            stick = sticky.get(it.to)
            if not urgent and not held and it.priority not in behind:
                behind[it.priority] = self._backlog(it.priority)
            if not urgent and held:
                want = None
            elif stick is not None:  # the recipient's own channel: queue there
                if stick != want:
                    want = stick
                    self.assigned(stick)
            elif not urgent and behind[it.priority]:
                want = None
            elif urgent and want is None:
                want = self.best_channel(urgent=True)
            if want != it.channel_id and it.channel_id is not None:
                self.assigned(it.channel_id, -1)
            it.channel_id = want
            if want is None and not urgent:
                behind[it.priority] = True

    def _backlog(self, priority: int) -> bool:
        """Do messages of this class or a higher one wait for a channel (and may go now)?

        Asked on every normal/bulk send, so it is one plain statement (the query builder cost
        several times the query). The instance-wide pause is not checked here: a paused box
        holds every normal/bulk message anyway (see :meth:`_holds`)."""
        from relaybox.db import db

        closed = sorted(self.windows.closed(now_ms())) if self.windows is not None else []
        p = db.obj.param
        sql = ('SELECT 1 FROM "message" WHERE "status" = ' + p + ' AND "channel_id" IS NULL'
               f' AND "priority" > {p} AND "priority" <= {p}'
               f' AND "account_id" NOT IN (SELECT "id" FROM "account" WHERE "paused" = {p})')
        if closed:
            sql += f' AND "account_id" NOT IN ({", ".join([p] * len(closed))})'
        params = ("queued", URGENT_MAX, priority, True, *closed)
        return db.execute_sql(sql + " LIMIT 1", params).fetchone() is not None

    def _holds(self, account: Any, now: int) -> bool:
        """Must this account's normal/bulk messages wait (window closed, queue paused)?"""
        if getattr(account, "paused", False):
            return True
        paused = getattr(account, "_instance_paused", None)  # asked earlier in this request
        if paused if paused is not None else self.runtime.instance_paused():
            return True
        return self.windows is not None and account.id in self.windows.closed(now)

    def _sticky_for(self, account: Any, numbers: list[str]) -> dict[str, str]:
        """recipient -> the usable channel that last sent to them (accounts with sticky_sender)."""
        if not numbers or not (getattr(account, "settings", None) or {}).get(STICKY_SETTING):
            return {}
        return self._sticky_lookup({account.id: numbers})

    def _sticky_lookup(self, wanted: dict[str, list[str]]) -> dict[str, str]:
        usable = {ch.id for ch in self.usable_channels()}
        out: dict[str, str] = {}
        for account_id, numbers in wanted.items():
            numbers = sorted(set(numbers))
            for i in range(0, len(numbers), 500):
                rows = (Message.select(Message.to_number, Message.channel_id)
                        .where((Message.account == account_id) & (Message.direction == "outbound")
                               & (Message.to_number << numbers[i:i + 500]) & Message.channel_id.is_null(False)
                               & (Message.status << list(STICKY_STATUSES)))
                        .order_by(Message.id).tuples())
                for to, cid in rows:
                    out[to] = cid  # the latest wins
        return {to: cid for to, cid in out.items() if cid in usable}

    # -- failover --------------------------------------------------------------------------------------
    def _failed_on(self, message_id: str) -> tuple[set[str], str | None]:
        """(every channel the message came back from, the last one)."""
        rows = (MessageEvent.select(MessageEvent.detail)
                .where((MessageEvent.message == message_id) & (MessageEvent.status == "queued")
                       & MessageEvent.detail.is_null(False)).order_by(MessageEvent.seq))
        origins = [(r.detail or {}).get("failover_from") for r in rows]
        origins = [o for o in origins if isinstance(o, str)]
        return set(origins), (origins[-1] if origins else None)

    def _failover_target(self, m: Message, room: dict[str, int]) -> str | None:
        failed, last = self._failed_on(m.id)
        urgent = m.priority <= URGENT_MAX
        target = self._pick(room, urgent, exclude=failed)
        if target is None and last is not None:
            # Only a modem may have the message again (a phone would repeat its failure).
            phones = {cid for cid in failed if self._kind(cid) == "android"}
            if last not in phones:
                target = self._pick(room, urgent, exclude=phones | (failed - {last}))
        return target

    def _pick(self, room: dict[str, int], urgent: bool, exclude: set[str] | None = None) -> str | None:
        """route_pending's choice among the usable channels (``room``: what each may still take
        in this pass; urgent messages need none): fewest waiting, round-robin among equals."""
        cands = [cid for cid, r in room.items() if cid not in (exclude or ()) and (urgent or r > 0)]
        if not cands:
            return None
        with self._lock:
            least = min(self.waiting[c] for c in cands)
            equal = [c for c in cands if self.waiting[c] == least]
            cid = equal[next(self._rr) % len(equal)]
            self.waiting[cid] += 1
        if not urgent:
            room[cid] -= 1
        return cid

    def _kind(self, channel_id: str) -> str:
        ch = self.runtime.channels.get(channel_id)
        if ch is not None:
            return ch.kind
        return "android" if channel_id.startswith("dev_") else "modem" if channel_id.startswith("modem_") else ""

    # -- background routing ---------------------------------------------------------------------------
    def route_pending(self, limit: int = 2000) -> int:
        """Assign queued messages that have no (usable) channel. Returns how many moved."""
        with self._route_lock:  # one pass at a time per process; a second caller would only race it
            return self._route_pending(limit)

    def _route_pending(self, limit: int) -> int:
        rt = self.runtime
        online = {ch.id: ch for ch in self.usable_channels()}
        now = now_ms()
        # A message waiting on a channel that went away, went offline or was parked before
        # claiming it is released (unless the caller pinned it to that channel).
        gone = ((Message.status == "queued") & Message.channel_id.is_null(False)
                & Message.device_hint.is_null() & Message.channel_id.not_in(list(online) or [""]))
        stale = 0
        # Read first: this runs after every accept that left a message unassigned, and a write
        # transaction each time would queue behind (and hold up) the API's own writes.
        if Message.select(Message.id).where(gone).limit(1).exists():
            with write_tx():
                stale = Message.update(channel_id=None, updated_at=now).where(gone).execute()
        if not online:
            return stale
        counts = dict(Message.select(Message.channel_id, pw.fn.COUNT(Message.id))
                      .where((Message.status == "queued") & Message.channel_id.is_null(False))
                      .group_by(Message.channel_id).tuples())
        with self._lock:
            # Re-count from the rows (cancelled or expired messages never report a claim), unless
            # a request may still be writing messages it was just given channels for.
            if time.monotonic() - self._accepting_at > 2.0:
                self.waiting = Counter({cid: n for cid, n in counts.items() if n})
        room = {cid: max(0, self.target(ch) - counts.get(cid, 0)) for cid, ch in online.items()}
        rows = self._urgent_rows(limit) + self._normal_rows(online, room, limit)
        if not rows:
            return stale
        sticky_wanted: dict[str, list[str]] = {}
        sticky_accounts = self._sticky_accounts({m.account_id for m in rows})
        for m in rows:
            if m.account_id in sticky_accounts and not (m.device_hint or m.from_number):
                sticky_wanted.setdefault(m.account_id, []).append(m.to_number)
        sticky = self._sticky_lookup(sticky_wanted) if sticky_wanted else {}
        plan: list[tuple[str, str]] = []
        for m in rows:
            urgent = m.priority <= URGENT_MAX
            if m.device_hint:
                target = m.device_hint if m.device_hint in online else None
            elif m.from_number:
                owner = self.channel_for_number(m.from_number)
                target = owner.id if owner and owner.id in online else None
            elif m.error_code:
                target = self._failover_target(m, room)
            elif m.account_id in sticky_accounts and sticky.get(m.to_number) in online:
                target = sticky[m.to_number]
                self.assigned(target)
            else:
                target = self._pick(room, urgent)
            if target is not None:
                plan.append((m.id, target))
        touched: Counter[str] = Counter()
        if plan:
            with write_tx():
                for mid, target in plan:
                    n = (Message.update(channel_id=target, updated_at=now)
                         .where((Message.id == mid) & (Message.status == "queued") & Message.channel_id.is_null())
                         .execute())
                    if n:
                        touched[target] += 1
                    else:
                        self.assigned(target, -1)
        for cid in touched:
            ch = rt.channels.get(cid)
            if ch is not None:
                ch.notify()
        return stale + sum(touched.values())

    def _urgent_rows(self, limit: int) -> list[Message]:
        return list(Message.select(Message.id, Message.account, Message.to_number, Message.from_number,
                                   Message.device_hint, Message.error_code, Message.priority)
                    .where((Message.status == "queued") & Message.channel_id.is_null()
                           & (Message.priority <= URGENT_MAX))
                    .order_by(Message.priority, Message.id).limit(limit))

    def _normal_rows(self, online: dict[str, Channel], room: dict[str, int], limit: int) -> list[Message]:
        """normal/bulk messages to place now: as many as the channels have room for (plus some,
        for pinned ones and ones a channel's filter skips), never those that must wait."""
        want = sum(room.values())
        if want <= 0:
            return []
        q = (Message.select(Message.id, Message.account, Message.to_number, Message.from_number,
                            Message.device_hint, Message.error_code, Message.priority)
             .where((Message.status == "queued") & Message.channel_id.is_null() & (Message.priority > URGENT_MAX)
                    & (Message.device_hint.is_null() | Message.device_hint.in_(list(online))))
             .order_by(Message.priority, Message.id).limit(min(limit, want + 200)))
        numbers = sorted({n for ch in online.values() for n in ch.numbers()})
        q = q.where(Message.from_number.is_null() | Message.from_number.in_(numbers or [""]))
        go = self.go_filter()
        if go is not None:
            q = q.where(go)
        return list(q)

    def go_filter(self) -> Any:
        """WHERE for normal/bulk messages that may go now: not of an account whose window is
        closed or whose queue is paused (None: all may go; False-ish: none)."""
        from relaybox.models import Account

        rt = self.runtime
        if rt.instance_paused():
            return Message.id.is_null()  # nothing may go
        cond = Message.account.not_in(Account.select(Account.id).where(Account.paused == True))
        if self.windows is not None:
            closed = self.windows.closed(now_ms())
            if closed:
                cond &= Message.account.not_in(list(closed))
        return cond

    @staticmethod
    def _sticky_accounts(account_ids: set[str]) -> set[str]:
        from relaybox.models import Account

        if not account_ids:
            return set()
        return {a.id for a in Account.select(Account.id, Account.settings).where(Account.id.in_(list(account_ids)))
                if (a.settings or {}).get(STICKY_SETTING)}
