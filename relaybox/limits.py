"""Traffic control: per-key request rate, per-recipient caps, per-channel daily caps, countries.

Every limit answers ``RATE_LIMITED`` (429) with ``Retry-After`` and the IETF httpapi
rate-limit header fields (draft-ietf-httpapi-ratelimit-headers): ``RateLimit-Policy`` names the
policy with its quota ``q`` and window ``w`` (seconds), ``RateLimit`` gives what remains ``r`` and
the seconds ``t`` until the quota is back to full. The policies:

- ``"api"`` — per API key, a token bucket of ``api_rate_limit`` requests refilled evenly over
  ``api_rate_window`` seconds. In memory: a restart refills it (harmless: it only shapes load).
  Neither ``limits`` nor ``pyrate-limiter`` has a token bucket (both count windows), and the
  bucket is a few lines, so it is ours. Every authenticated response carries its headers.
- ``"recipient"`` — at most ``recipient_hourly_cap`` messages from one account to one number in
  any 60 minutes (a sliding window counted from the message rows, so it survives a restart).
  Checked per item (a batch or list rejects just that item) and again inside the accept
  transaction, so concurrent requests cannot slip past it together.
- ``"channel_daily"`` — at most ``channel_daily_cap`` hand-offs (``dispatched`` timeline rows)
  per channel per UTC day (``channel_daily_caps`` per channel id). Counted from the timeline, so
  a restart forgets nothing. A full channel is skipped by the router and its claims stop; a send
  pinned to it, or any send when every online channel is full, is refused until midnight UTC.

Allowed destination countries: the account's list (``relaybox account limits``), else
``allowed_countries``, else the countries of the box's own SIM numbers (phones and modems; the
sandbox reaches no carrier and does not count). ``"*"`` allows any. A send elsewhere is
``INVALID_REQUEST`` naming ``to``.
"""
from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import phonenumbers
from flask import g, request

from relaybox.api.common import presented_key
from relaybox.errors import ApiError, invalid
from relaybox.models import Message, MessageEvent
from relaybox.security import digest
from relaybox.timeutil import now_ms

if TYPE_CHECKING:  # pragma: no cover
    from relaybox.channels.base import Channel
    from relaybox.messages import NewMessage
    from relaybox.runtime import Runtime

HOUR_MS = 3_600_000
DAY_MS = 86_400_000


# -- header fields -------------------------------------------------------------------------
def policy_item(name: str, quota: int, window: int) -> str:
    """One ``RateLimit-Policy`` list member: ``"send";q=100;w=60``."""
    return f'"{name}";q={quota};w={window}'


def limit_item(name: str, remaining: int, reset: int) -> str:
    """One ``RateLimit`` list member: ``"send";r=0;t=12``."""
    return f'"{name}";r={max(0, remaining)};t={max(0, reset)}'


def rate_limited(message: str, name: str, quota: int, window: int, retry_after: float,
                 remaining: int = 0, reset: float | None = None, field: str | None = None) -> ApiError:
    wait = max(1, math.ceil(retry_after))
    return ApiError("RATE_LIMITED", message, field=field, headers={
        "Retry-After": str(wait),
        "RateLimit-Policy": policy_item(name, quota, window),
        "RateLimit": limit_item(name, remaining, math.ceil(reset if reset is not None else wait)),
    }, extra={"policy": name, "retry_after_seconds": wait})


# -- per-key token bucket ------------------------------------------------------------------
class TokenBuckets:
    """Token buckets by key id: ``quota`` tokens, refilled at ``quota / window`` per second.

    Bounded: the least recently used buckets are dropped past ``max_keys`` (a dropped bucket
    comes back full, which only ever errs towards letting a request through).
    """

    def __init__(self, quota: int, window: int, max_keys: int = 10_000) -> None:
        self.quota = quota
        self.window = window
        self.rate = quota / window
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, key: str, now: float | None = None) -> tuple[bool, int, float, float]:
        """Spend one token: (allowed, remaining, seconds until full, seconds until one token)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, last = self._buckets.pop(key, (float(self.quota), now))
            tokens = min(float(self.quota), tokens + (now - last) * self.rate)
            allowed = tokens >= 1.0
            if allowed:
                tokens -= 1.0
            self._buckets[key] = (tokens, now)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        until_full = (self.quota - tokens) / self.rate
        until_one = 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate
        return allowed, int(tokens), until_full, until_one


# -- per-recipient caps --------------------------------------------------------------------
def _account_setting(account: Any, name: str, default: Any) -> Any:
    value = (account.settings or {}).get(name)
    return default if value is None else value


def recipient_cap(rt: Runtime, account: Any) -> int:
    return int(_account_setting(account, "recipient_hourly_cap", rt.config.recipient_hourly_cap))


def _recent_to(account_id: str, numbers: list[str], since: int) -> dict[str, list[int]]:
    """created_at of this account's outbound messages per number since ``since`` (oldest first)."""
    out: dict[str, list[int]] = {}
    for i in range(0, len(numbers), 500):
        chunk = numbers[i:i + 500]
        rows = (Message.select(Message.to_number, Message.created_at)
                .where((Message.account == account_id) & (Message.to_number << chunk)
                       & (Message.created_at >= since) & (Message.direction == "outbound"))
                .order_by(Message.created_at).tuples())
        for to, at in rows:
            out.setdefault(to, []).append(at)
    return out


def check_recipients(rt: Runtime, account: Any, wanted: dict[str, int]) -> None:
    """Raise RATE_LIMITED if sending ``wanted[number]`` more messages would pass the cap."""
    cap = recipient_cap(rt, account)
    if not cap or not wanted:
        return
    now = now_ms()
    recent = _recent_to(account.id, list(wanted), now - HOUR_MS)
    for to, n in wanted.items():
        sent = recent.get(to, [])
        over = len(sent) + n - cap
        if over <= 0:
            continue
        # The window makes room when the over-th oldest message of the hour ages out.
        frees_at = sent[over - 1] + HOUR_MS if n <= cap and over <= len(sent) else now + HOUR_MS
        raise rate_limited(f"to: at most {cap} messages to {to} per hour; try again later",
                           "recipient", cap, 3600, (frees_at - now) / 1000,
                           reset=(sent[-1] + HOUR_MS - now) / 1000 if sent else 3600, field="to")


# -- per-channel daily caps ----------------------------------------------------------------
def day_start(now: int) -> int:
    return now - now % DAY_MS


def channel_cap(rt: Runtime, channel_id: str) -> int:
    return int(rt.config.channel_daily_caps.get(channel_id, rt.config.channel_daily_cap))


def used_today(channel_id: str, now: int | None = None) -> int:
    """Hand-offs to the channel since midnight UTC (timeline rows: exact, survive restarts)."""
    now = now or now_ms()
    return (MessageEvent.select().where((MessageEvent.status == "dispatched")
                                        & (MessageEvent.at >= day_start(now))
                                        & (MessageEvent.channel_id == channel_id)).count())


class DailyCaps:
    """The router's view of the caps, cached for a second (the claim policy recounts exactly)."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._cache: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def used(self, channel_id: str) -> int:
        with self._lock:
            hit = self._cache.get(channel_id)
            if hit and hit[0] > time.monotonic():
                return hit[1]
        n = used_today(channel_id)
        self.remember(channel_id, n)
        return n

    def remember(self, channel_id: str, used: int) -> None:
        with self._lock:
            self._cache[channel_id] = (time.monotonic() + 1.0, used)

    def full(self, channel_id: str) -> bool:
        cap = channel_cap(self.rt, channel_id)
        return bool(cap) and self.used(channel_id) >= cap

    # runtime.channel_filters: the router skips full channels (their waiting messages move on).
    def has_room(self, channel: Channel) -> bool:
        return not self.full(channel.id)

    # runtime.claim_policies: never hand a channel more than its cap today.
    def claim_policy(self, channel_id: str, limit: int) -> tuple[int, Any]:
        cap = channel_cap(self.rt, channel_id)
        if not cap:
            return limit, None
        used = used_today(channel_id)
        with self._lock:  # this claim changes the count: let the router recount
            self._cache.pop(channel_id, None)
        return min(limit, max(0, cap - used)), None

    def error(self, channel_ids: list[str], what: str) -> ApiError:
        caps = [channel_cap(self.rt, c) for c in channel_ids]
        now = now_ms()
        reset = (day_start(now) + DAY_MS - now) / 1000
        return rate_limited(f"{what} reached the daily cap of {min(caps)} messages; it resets at "
                            "midnight UTC", "channel_daily", min(caps), 86400, reset, reset=reset)


# -- destination countries -----------------------------------------------------------------
def region_of(number: str) -> str | None:
    try:
        return phonenumbers.region_code_for_number(phonenumbers.parse(number, None))
    except phonenumbers.NumberParseException:
        return None


def sim_regions(rt: Runtime) -> set[str]:
    """Countries of the box's own SIM numbers (phones and modems; not the sandbox)."""
    regions = {region_of(n) for ch in list(rt.channels.values()) if ch.kind != "sandbox"
               for n in ch.numbers()}
    return {r for r in regions if r and r != "ZZ"}


def allowed_regions(rt: Runtime, account: Any) -> tuple[set[str] | None, str]:
    """(allowed ISO codes or None for any, where the rule comes from)."""
    own = (account.settings or {}).get("allowed_countries")
    if own:
        return (None if "*" in own else {c.upper() for c in own}), "account"
    if rt.config.allowed_countries:
        conf = rt.config.allowed_countries
        return (None if "*" in conf else {c.upper() for c in conf}), "config"
    sims = sim_regions(rt)
    return (sims or None), "sims"


# -- wiring ---------------------------------------------------------------------------------
def init(app: Any, rt: Runtime) -> None:
    caps = DailyCaps(rt)
    app.extensions["relaybox.limits"] = caps
    buckets = TokenBuckets(rt.config.api_rate_limit, rt.config.api_rate_window) \
        if rt.config.api_rate_limit else None

    @app.before_request
    def _api_rate() -> None:
        if buckets is None or not request.path.startswith("/api/v1/"):
            return
        key = presented_key()
        if not key or len(key) > 200:
            return
        allowed, remaining, until_full, until_one = buckets.take(digest(key, "api-key"))
        g.api_rate = (remaining, math.ceil(until_full))
        if not allowed:
            g.api_rate = None  # the error carries the headers
            raise rate_limited(f"more than {buckets.quota} requests in {buckets.window} s with this API key",
                               "api", buckets.quota, buckets.window, until_one,
                               remaining=remaining, reset=until_full)

    @app.after_request
    def _api_rate_headers(response: Any) -> Any:
        rate = g.get("api_rate")
        if buckets is None or not rate:
            return response
        policy = policy_item("api", buckets.quota, buckets.window)
        current = limit_item("api", rate[0], rate[1])
        # A 429 from another policy already names its own: list both (structured-field lists).
        if response.headers.get("RateLimit-Policy"):
            policy = response.headers["RateLimit-Policy"] + ", " + policy
            current = response.headers.get("RateLimit", "") + ", " + current
        response.headers["RateLimit-Policy"] = policy
        response.headers["RateLimit"] = current.lstrip(", ")
        return response

    def check_message(account: Any, to: str | None, body: str | None) -> None:
        if to is None:
            return
        allowed, source = allowed_regions(rt, account)
        if allowed is not None:
            region = region_of(to)
            if region not in allowed:
                hint = {"account": "this account's allowed countries",
                        "config": "allowed_countries", "sims": "the countries of this box's SIMs"}[source]
                raise invalid("to", f"sending to {region or 'this destination'} is not allowed "
                              f"({hint}: {', '.join(sorted(allowed))}); ask your admin")
        check_recipients(rt, account, {to: 1})

    def gate(account: Any) -> None:
        live = [ch for ch in list(rt.channels.values()) if ch.enabled() and ch.online()]
        if live and all(caps.full(ch.id) for ch in live):
            raise caps.error([ch.id for ch in live], "every online channel")

    def before_accept(account: Any, items: list[NewMessage]) -> None:
        wanted: dict[str, int] = {}
        for it in items:
            wanted[it.to] = wanted.get(it.to, 0) + 1
        check_recipients(rt, account, wanted)  # again, now inside the write transaction
        pinned = {it.channel_id for it in items if it.channel_id and (it.device_hint or it.from_number)}
        full = [cid for cid in pinned if caps.full(cid)]
        if full:
            raise caps.error(full, f"channel {', '.join(full)}")

    rt.message_checks.append(check_message)
    rt.send_gates.append(gate)
    rt.before_accept.append(before_accept)
    rt.channel_filters.append(caps.has_room)
    rt.claim_policies.append(caps.claim_policy)

    def ready(account: Any) -> tuple[str, bool, str]:
        live = [ch for ch in list(rt.channels.values()) if ch.enabled() and ch.online()]
        full = [ch.name for ch in live if caps.full(ch.id)]
        if live and len(full) == len(live):
            return "daily_caps", False, "every online channel reached its daily cap: " + ", ".join(full)
        return "daily_caps", True, ("no channel is at its daily cap" if not full
                                    else "at the daily cap: " + ", ".join(full))

    rt.ready_checks.append(ready)

