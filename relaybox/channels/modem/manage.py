"""``/api/v1/modems``: list, add, change and remove USB modems; USSD, reset, port scan.

Anyone with API access sees the modems their account may send through (the owner: all);
adding, changing, removing, resetting and scanning ports are the owner's (the box's hardware).
Modems of ``config.toml`` are listed with ``"source": "config"`` and can only be changed in the
file (``CONFLICT``); modems added here are stored (``"source": "api"``) and driven by this
process. Ids are ``modem_<name>``; the bare name is accepted too.
"""
from __future__ import annotations

import os
from typing import Any

from flask import current_app
from flask_openapi3 import APIBlueprint, Tag
from pydantic import BaseModel, Field, ValidationError

from relaybox.api.common import E164, SECURITY, PageQuery, StrictBody, current_account
from relaybox.channels.modem.channel import (
    ModemArea,
    ModemChannel,
    channel_id,
    modem_channels,
    view,
)
from relaybox.channels.modem.models import Modem, seal_pin
from relaybox.config import ModemConfig as ModemSettings
from relaybox.db import write_tx
from relaybox.errors import ApiError, envelope, invalid
from relaybox.timeutil import now_ms

bp = APIBlueprint("modems", __name__, url_prefix="/api/v1", abp_tags=[Tag(name="Modems")],
                  abp_security=SECURITY)

NAME = r"^[a-zA-Z0-9_-]{1,32}$"
PIN = r"^[0-9]{4,8}$"
SMSC = r"^\+?[0-9]{3,20}$"
PORT = r"^/[^\x00-\x1f]{1,511}$"
# Fields changed without restarting the driver; anything else gets a fresh driver.
IN_PLACE = frozenset({"label", "number", "enabled", "per_minute", "per_hour", "per_day"})


class ModemPath(BaseModel):
    modem_id: str = Field(max_length=64)


class ModemIn(StrictBody):
    name: str = Field(pattern=NAME, description="Letters, digits, _ and -; the channel id is modem_<name>")
    port: str = Field(pattern=PORT, description="Stable serial path, e.g. /dev/serial/by-id/usb-...-if02-port0")
    baud: int = Field(115200, ge=300, le=4_000_000)
    pin: str | None = Field(None, pattern=PIN, description="SIM PIN, entered once; never shown again")
    smsc: str | None = Field(None, pattern=SMSC, description="Message centre number, when the SIM has none")
    number: E164 | None = Field(None, description="The SIM's own number: a `from` for sends, `to` of inbound")
    label: str | None = Field(None, max_length=100)
    enabled: bool = Field(True, description="false: no messages are routed to it (it still receives)")
    per_minute: int | None = Field(None, ge=1, le=100_000)
    per_hour: int | None = Field(None, ge=1, le=1_000_000)
    per_day: int | None = Field(None, ge=1, le=10_000_000)
    status_reports: bool = Field(True, description="Ask the network for delivery reports")


class ModemPatch(StrictBody):
    port: str | None = Field(None, pattern=PORT)
    baud: int | None = Field(None, ge=300, le=4_000_000)
    pin: str | None = Field(None, pattern=PIN, description="New PIN (null removes it)")
    smsc: str | None = Field(None, pattern=SMSC)
    number: E164 | None = None
    label: str | None = Field(None, max_length=100)
    enabled: bool | None = None
    per_minute: int | None = Field(None, ge=1, le=100_000)
    per_hour: int | None = Field(None, ge=1, le=1_000_000)
    per_day: int | None = Field(None, ge=1, le=10_000_000)
    status_reports: bool | None = None


class UssdBody(StrictBody):
    code: str = Field(pattern=r"^[0-9*#+]{1,40}$", description='A USSD code such as "*123#"')


# -- helpers ------------------------------------------------------------------------------------
def _area() -> ModemArea:
    return current_app.extensions["relaybox_modem"]


def _owner() -> Any:
    account = current_account()
    if not account.is_owner:
        raise ApiError("FORBIDDEN", "only the owner account can manage modems")
    return account


def _channel(modem_id: str) -> ModemChannel:
    account = current_account()
    cid = modem_id if modem_id.startswith("modem_") else channel_id(modem_id)
    ch = _area().channels.get(cid)
    if ch is None or not (account.is_owner or ch.account_id == account.id):
        raise ApiError("NOT_FOUND", f"no modem {modem_id}")
    return ch


def _check_unique(name: str | None, port: str | None, number: str | None, exclude: str | None = None) -> None:
    area = _area()
    if name is not None and (channel_id(name) in area.channels or name in area.config_names):
        raise invalid("name", f"a modem called {name} already exists")
    rt = area.runtime
    if port is not None:
        real = os.path.realpath(port)
        for ch in modem_channels(rt):
            if ch.id != exclude and (ch.settings.port == port or os.path.realpath(ch.settings.port) == real):
                raise invalid("port", f"{port} is already the port of modem {ch.settings.name}")
    if number is not None:
        owner = rt.router.channel_for_number(number)
        if owner is not None and owner.id != exclude:
            raise invalid("number", f"{number} already belongs to {owner.name}")


def _settings(fields: dict[str, Any]) -> ModemSettings:
    try:
        return ModemSettings(**fields)
    except ValidationError as exc:  # the API models check the same; this is the last word
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "body"
        raise invalid(field, err["msg"]) from None


def _save(settings: ModemSettings, account_id: str, created: bool) -> int:
    spec = settings.model_dump(mode="json", exclude={"name", "pin"})
    now = now_ms()
    sealed = seal_pin(settings.name, settings.pin) if settings.pin else None
    with write_tx():
        if created:
            Modem.insert(name=settings.name, account=account_id, spec=spec, pin_sealed=sealed,
                         created_at=now, updated_at=now).execute()
        else:
            Modem.update(spec=spec, pin_sealed=sealed, updated_at=now).where(Modem.name == settings.name).execute()
    return now


# -- endpoints -------------------------------------------------------------------------------------
@bp.get("/modems")
def list_modems(query: PageQuery):
    """USB modems: state (ready, parked with the reason, ...), signal, operator, SIM, queue."""
    account = current_account()
    chans = [ch for ch in modem_channels(_area().runtime) if account.is_owner or ch.account_id == account.id]
    start = (query.page - 1) * query.limit
    page = chans[start:start + query.limit]
    return envelope({"modems": [view(ch) for ch in page], "page": query.page, "limit": query.limit,
                     "total": len(chans), "has_more": start + query.limit < len(chans)})


@bp.post("/modems", responses={201: None})
def add_modem(body: ModemIn):
    """Add a modem (owner only). It is opened at once and shows ``state: ready`` once it answers."""
    account = _owner()
    _check_unique(body.name, body.port, body.number)
    settings = _settings(body.model_dump())
    created = _save(settings, account.id, created=True)
    area = _area()
    ch = area.add(ModemChannel(area, settings, source="api", account_id=account.id, created_at=created))
    return envelope(view(ch), 201)


@bp.get("/modems/scan")
def scan_ports():
    """Serial ports that may be modems, each probed with ``ATI`` (owner only; takes a few seconds).
    A port a modem of this box holds is named in ``in_use_by``; a busy one says who holds it."""
    _owner()
    from relaybox.channels.modem.scan import scan

    ours = {os.path.realpath(ch.settings.port): ch.id for ch in modem_channels(_area().runtime)}
    found = scan(probe=True, timeout=1.0)
    out = []
    for c in found:
        mine = ours.get(os.path.realpath(c.path))
        out.append({"port": c.path, "device": c.device, "description": c.description,
                    "manufacturer": c.manufacturer, "vid": c.vid, "pid": c.pid, "serial_number": c.serial_number,
                    "responds": c.responds, "ati": " / ".join(c.info) or None,
                    "error": None if mine else c.error, "in_use_by": mine})
    return envelope({"candidates": out, "total": len(out)})


@bp.get("/modems/<modem_id>")
def get_modem(path: ModemPath):
    """One modem."""
    return envelope(view(_channel(path.modem_id)))


@bp.patch("/modems/<modem_id>")
def patch_modem(path: ModemPath, body: ModemPatch):
    """Change a modem added through the API (owner only). Port, PIN, SMSC, baud or reports
    restart its driver (a send in progress may end ``MODEM_UNCONFIRMED``); label, number,
    enabled and caps apply at once."""
    _owner()
    ch = _channel(path.modem_id)
    if ch.source != "api":
        raise ApiError("CONFLICT", f"modem {ch.settings.name} is defined in config.toml; change it there")
    changed = body.model_dump(exclude_unset=True)
    _check_unique(None, changed.get("port"), changed.get("number"), exclude=ch.id)
    settings = _settings({**ch.settings.model_dump(), **changed})
    _save(settings, ch.account_id or "", created=False)
    area = _area()
    if set(changed) <= IN_PLACE:
        ch.apply(settings)
        area.kick()
    else:
        ch = area.replace(ch, settings)
    return envelope(view(ch))


@bp.delete("/modems/<modem_id>")
def delete_modem(path: ModemPath):
    """Remove a modem added through the API (owner only): its port is closed and the messages
    waiting for it go to other channels."""
    _owner()
    ch = _channel(path.modem_id)
    if ch.source != "api":
        raise ApiError("CONFLICT", f"modem {ch.settings.name} is defined in config.toml; remove it there")
    with write_tx():
        Modem.delete().where(Modem.name == ch.settings.name).execute()
    _area().remove(ch.id)
    return envelope({"id": ch.id, "removed": True})


@bp.post("/modems/<modem_id>/ussd")
def run_ussd(path: ModemPath, body: UssdBody):
    """Run a USSD code (balance check) and wait for the network's answer (up to ~40 s)."""
    _owner()
    ch = _channel(path.modem_id)
    if not ch.online():
        st = ch.driver.status()
        raise ApiError("INVALID_DEVICE", f"modem {ch.settings.name} is {st['state']}"
                       + (f": {st['reason']}" if st.get("reason") else ""), field="modem_id")
    from relaybox.channels.modem.driver import ModemUnavailable

    try:
        result = ch.driver.ussd(body.code)
    except ModemUnavailable as exc:
        raise ApiError("INVALID_DEVICE", f"modem {ch.settings.name}: {exc}", field="modem_id") from None
    return envelope({"modem_id": ch.id, "code": body.code, "status": result.status, "reply": result.text,
                     "dcs": result.dcs, "session_closed": result.status != 1})


@bp.post("/modems/<modem_id>/reset")
def reset_modem(path: ModemPath):
    """Initialise the modem again (owner only): leaves ``parked`` once the SIM or config is fixed."""
    _owner()
    ch = _channel(path.modem_id)
    ch.driver.restart()
    return envelope(view(ch))


@bp.post("/modems/<modem_id>/probe")
def probe_modem(path: ModemPath):
    """Check the modem now (owner only): one that is not ready is initialised again."""
    _owner()
    ch = _channel(path.modem_id)
    if not ch.online():
        ch.driver.restart()
    return envelope(view(ch))
