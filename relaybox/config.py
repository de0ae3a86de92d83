"""Settings: defaults that run with no file, a TOML file, ``RELAYBOX_*`` environment, flags.

Precedence is flag > environment > config file > default (CONTRACT.md). The core settings are
top-level keys so that ``RELAYBOX_<KEY>`` maps one to one; tables such as ``[[modem]]`` only
live in the file. A pydantic model, so a bad value names the setting; the file and the environment
are merged here the way pydantic-settings did (LIBRARIES.md §7 allows "plain tomllib + our own env
merge"): pydantic-settings imports asyncio, ~3 MB resident in a server that never uses it.
"""
from __future__ import annotations

import json
import os
import tomllib
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

ENV_PREFIX = "RELAYBOX_"


def default_data_dir() -> str:
    """A per-user data dir (XDG), so ``relaybox serve`` needs no config and no root."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "relaybox")


class ModemTimeouts(BaseModel):
    """``[modem.timeouts]``: wall-clock limits of AT commands, in seconds (the modem driver's
    ``ModemTimeouts``; unset keys keep its defaults)."""

    model_config = ConfigDict(extra="forbid")

    basic: float | None = Field(None, gt=0, le=600)
    pin_query: float | None = Field(None, gt=0, le=600)
    pin_entry: float | None = Field(None, gt=0, le=600)
    pin_ready: float | None = Field(None, gt=0, le=600)
    registration: float | None = Field(None, gt=0, le=600)
    registration_wait: float | None = Field(None, ge=0, le=3600)
    prompt: float | None = Field(None, gt=0, le=600)
    submit: float | None = Field(None, gt=0, le=600)
    read: float | None = Field(None, gt=0, le=600)
    list: float | None = Field(None, gt=0, le=600)
    ussd: float | None = Field(None, gt=0, le=600)


class ModemConfig(BaseModel):
    """One ``[[modem]]`` table: a USB GSM modem driven by this process."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,32}$")
    port: str = Field(min_length=1, max_length=512)
    baud: int = Field(115200, ge=300, le=4_000_000)
    pin: str | None = Field(None, pattern=r"^[0-9]{4,8}$")
    smsc: str | None = Field(None, pattern=r"^\+?[0-9]{3,20}$")
    number: str | None = None
    label: str | None = Field(None, max_length=100)
    enabled: bool = True
    per_minute: int | None = Field(None, ge=1)
    per_hour: int | None = Field(None, ge=1)
    per_day: int | None = Field(None, ge=1)
    # Driver tuning (defaults suit real modems; the tests shrink them).
    status_reports: bool = True  # ask the network for delivery reports
    rtscts: bool = False
    send_retries: int = Field(2, ge=0, le=10)  # extra tries of a part after a retryable +CMS ERROR
    retry_backoff: float = Field(10.0, ge=0, le=3600)  # first wait between those tries; doubles
    send_deadline: float = Field(60.0, gt=0, le=86400)  # a message waiting this long for the modem fails over
    health_interval: float = Field(30.0, gt=0, le=3600)  # signal/registration poll, and the hang watchdog
    sweep_interval: float = Field(30.0, gt=0, le=3600)  # AT+CMGL sweep of SIM storage
    reconnect_backoff: tuple[float, float] = (1.0, 30.0)  # first and longest wait to reopen the port
    reset_settle: float = Field(5.0, ge=0, le=600)  # wait after AT+CFUN=1,1 before reopening
    timeouts: ModemTimeouts = Field(default_factory=ModemTimeouts)


class PriceConfig(BaseModel):
    """One ``[[price]]`` table: the price of one SMS segment to numbers starting with ``prefix``
    (the longest matching prefix wins; ``price_default`` covers the rest)."""

    model_config = ConfigDict(extra="forbid")

    prefix: str = Field(pattern=r"^\+[0-9]{1,15}$")
    per_segment: float = Field(ge=0, le=1000)
    label: str | None = Field(None, max_length=40)


class PacingSpec(BaseModel):
    """Pacing of one channel (``[pacing.android]``, ``[pacing.modem]``, ``[pacing.<channel id>]``):
    a random delay of ``min_delay``..``max_delay`` seconds between two sends, and at most
    ``per_minute`` / ``per_hour`` / ``per_day`` sends in any rolling minute, hour, day (0: no
    cap). Unset keys inherit (channel id > kind > built-in default, see relaybox.pacing)."""

    model_config = ConfigDict(extra="forbid")

    min_delay: float | None = Field(None, ge=0, le=3600)
    max_delay: float | None = Field(None, ge=0, le=3600)
    per_minute: int | None = Field(None, ge=0, le=1_000_000)
    per_hour: int | None = Field(None, ge=0, le=10_000_000)
    per_day: int | None = Field(None, ge=0, le=100_000_000)


class ConfigError(Exception):
    """A setting is wrong; the message names it. The CLI exits 2 with it."""


class Config(BaseModel):
    """Every setting of config.example.toml, with its default. Build it with :func:`load_config`
    (file, ``RELAYBOX_*`` environment and flags)."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    data_dir: str = Field(default_factory=default_data_dir)
    # Empty means "<data_dir>/relaybox.db". Also sqlite:///path or postgresql://user:pw@host/db.
    database: str = ""
    # "sqlite" (a SqliteHuey file in the data dir), "memory" (tests), or redis://host:port/db.
    queue: str = "sqlite"
    workers: int = Field(2, ge=1, le=64)
    # waitress request threads; every open phone SSE stream holds one.
    threads: int = Field(24, ge=4, le=512)
    public_url: str = ""
    sandbox: bool = False
    sandbox_delay_ms: int = Field(500, ge=0, le=600_000)
    sandbox_from: str = "+15005550006"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = False
    # Instance secret for HMAC of keys, tokens and OTP codes; generated in the data dir if empty.
    secret: str = ""
    max_attempts: int = Field(3, ge=1, le=10)
    # Routing (relaybox.channels.router, relaybox.pacing): per kind or channel id, e.g.
    # RELAYBOX_PACING='{"android": {"per_hour": 100}}'; see PacingSpec.
    pacing: dict[str, PacingSpec] = Field(default_factory=dict)
    # A channel that fails this many sends in a row is parked (0: never), first for
    # park_backoff_seconds, doubling at each further parking up to park_backoff_max_seconds;
    # then it is tried again with one message.
    park_after_failures: int = Field(3, ge=0, le=1000)
    park_backoff_seconds: float = Field(60.0, gt=0, le=86400)
    park_backoff_max_seconds: float = Field(3600.0, gt=0, le=7 * 86400)
    # A channel that may send but takes none of its messages for this long loses them to others.
    handoff_timeout: float = Field(120.0, ge=1, le=86400)
    default_ttl_seconds: int = Field(86400, ge=60, le=30 * 86400)
    # How often the housekeeping loop recovers stuck work, expires messages, fires schedules (s).
    sweep_interval: float = Field(1.0, gt=0, le=60)
    device_offline_after: int = Field(120, ge=5)
    # When set, any phone that presents it ("Private Token" in the app) may register as a device.
    android_private_token: str = ""
    # Phones: the ping interval served in /settings (0 = no ping service), and the SSE keep-alive.
    android_ping_interval: int = Field(60, ge=0, le=86400)
    sse_keepalive_seconds: float = Field(15.0, gt=0, le=15)
    # GET /metrics (Prometheus): with a token, any client presenting "Authorization: Bearer
    # <token>"; without one, loopback clients only (never requests relayed by a proxy).
    metrics_enabled: bool = True
    metrics_token: str = ""
    # One log line per request (method, route, status, ms); never bodies, keys or query strings.
    log_requests: bool = True
    # Finished messages, their timelines and events older than this many days are deleted
    # (0 keeps everything); a pass runs every retention_interval seconds.
    retention_days: int = Field(0, ge=0, le=36500)
    retention_interval: float = Field(3600.0, gt=0, le=86400)
    # Webhook retries: the delay in seconds before each attempt (the first is the first attempt),
    # on the Standard Webhooks schedule; jitter is added. RELAYBOX_WEBHOOK_RETRY_SCHEDULE='[0,5,300]'.
    webhook_retry_schedule: list[Annotated[float, Field(ge=0, le=7 * 86400)]] = Field(
        default_factory=lambda: [0, 5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400],
        min_length=1, max_length=30)
    # Deliveries in flight at once (a dedicated thread pool, so slow receivers never starve the queue).
    webhook_workers: int = Field(8, ge=1, le=64)
    # OTP: verify attempts per code; sends per (number, purpose) at least otp_resend_interval
    # seconds apart and at most otp_max_sends per otp_send_window seconds; per account at most
    # otp_account_max_sends per otp_account_window seconds. Every otp_max_attempts consecutive
    # wrong codes for a (number, purpose), across resends, lock it out for otp_lockout_seconds,
    # doubled at each further lock-out, up to a day (NIST SP 800-63B throttling).
    otp_max_attempts: int = Field(5, ge=1, le=20)
    otp_resend_interval: int = Field(30, ge=0, le=3600)
    otp_max_sends: int = Field(5, ge=1, le=1000)
    otp_send_window: int = Field(900, ge=60, le=86400)
    otp_account_max_sends: int = Field(500, ge=1, le=1_000_000)
    otp_account_window: int = Field(3600, ge=60, le=86400)
    otp_lockout_seconds: int = Field(60, ge=1, le=86400)
    # Accounts and traffic control (relaybox.limits, relaybox.billing); 0 turns a limit off.
    # Per API key: a token bucket of api_rate_limit requests, refilled over api_rate_window s.
    api_rate_limit: int = Field(6000, ge=0, le=10_000_000)
    api_rate_window: int = Field(60, ge=1, le=86400)
    # At most this many messages from one account to one number in any hour (loops, pumping).
    recipient_hourly_cap: int = Field(0, ge=0, le=1_000_000)
    # Messages handed to one channel per UTC day; channel_daily_caps overrides it per channel id
    # (RELAYBOX_CHANNEL_DAILY_CAPS='{"sandbox": 500}').
    channel_daily_cap: int = Field(0, ge=0, le=10_000_000)
    channel_daily_caps: dict[str, Annotated[int, Field(ge=0, le=10_000_000)]] = Field(default_factory=dict)
    # Destination countries (ISO 3166 codes, or "*" for any); empty means the countries of the
    # box's own SIMs. An account's own list (relaybox account limits) wins over this one.
    allowed_countries: list[str] = Field(default_factory=list)
    # While a queue is paused: "reject" answers QUEUE_BLOCKED; "hold" accepts and holds messages.
    pause_mode: Literal["reject", "hold"] = "reject"
    # Billing (off on a single-business box): a price per segment by destination prefix.
    billing: bool = False
    currency: str = Field("USD", pattern=r"^[A-Z]{3}$")
    price: list[PriceConfig] = Field(default_factory=list)
    price_default: float | None = Field(None, ge=0, le=1000)
    modem: list[ModemConfig] = Field(default_factory=list)

    # -- derived paths -------------------------------------------------------------------
    @property
    def database_url(self) -> str:
        return self.database or "sqlite:///" + os.path.join(self.data_dir, "relaybox.db")

    @property
    def queue_path(self) -> str:
        return os.path.join(self.data_dir, "queue.db")


def _is_json_field(annotation: Any) -> bool:
    """Tables and lists come from the environment as JSON (``RELAYBOX_PACING='{...}'``)."""
    origin = typing.get_origin(annotation)
    if origin in (dict, list, tuple, set):
        return True
    if origin is not None:  # Optional[...], unions, Annotated[...]
        return any(_is_json_field(a) for a in typing.get_args(annotation))
    return isinstance(annotation, type) and issubclass(annotation, (BaseModel, dict, list, tuple, set))


def environment(env: typing.Mapping[str, str] | None = None) -> dict[str, Any]:
    """The settings given as ``RELAYBOX_<KEY>`` (any case); others are ignored."""
    given = {k.lower(): v for k, v in (os.environ if env is None else env).items()
             if k.upper().startswith(ENV_PREFIX)}
    out: dict[str, Any] = {}
    for name, field in Config.model_fields.items():
        key = (ENV_PREFIX + name).lower()
        if key not in given:
            continue
        value: Any = given[key]
        if _is_json_field(field.annotation):
            try:
                value = json.loads(value)
            except ValueError as exc:
                raise ConfigError(f"setting {name!r}: {ENV_PREFIX}{name.upper()} is not valid JSON ({exc})") from None
        out[name] = value
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` wins; tables present in both are merged key by key (as pydantic-settings did)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | None = None, **overrides: Any) -> Config:
    """Build the settings (flag > environment > file > default); raise ConfigError naming the bad setting."""
    path = path or os.environ.get("RELAYBOX_CONFIG") or None
    if path and not Path(path).is_file():
        raise ConfigError(f"config: file not found: {path}")
    flags = {k: v for k, v in overrides.items() if v is not None}
    try:
        data: dict[str, Any] = {}
        if path:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        data = _merge(_merge(data, environment()), flags)
        return Config(**data)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config: {path}: {exc}") from None
    except ValidationError as exc:
        err = exc.errors()[0]
        name = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"setting {name!r}: {err['msg']}") from None
