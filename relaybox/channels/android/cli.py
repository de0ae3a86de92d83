"""``relaybox device pair | list | simulate``.

``pair`` writes a one-time code straight into the database (the server may be running: SQLite
in WAL mode and PostgreSQL both allow it) and prints the API URL, the code, the steps and a QR
code for the mobile pairing page. ``simulate`` runs the simulated phone
(:mod:`relaybox.channels.android.simulator`) with its own options.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
from typing import Any

MOBILE_PREFIX = "/api/mobile/v1"  # as relaybox.channels.android.pairing (kept light: no imports)


def default_api_url(config: Any) -> str:
    """public_url, else HTTPS on this box when ``relaybox tls init`` ran, else its HTTP port."""
    if config.public_url:
        return config.public_url.rstrip("/") + MOBILE_PREFIX
    from relaybox.tls import lan_addresses

    host = config.host
    if host in ("0.0.0.0", "::", "127.0.0.1", "localhost", "::1", ""):
        lan = lan_addresses()
        host = lan[0] if lan else host
    try:
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    except ValueError:
        pass
    if os.path.isfile(os.path.join(config.data_dir, "tls", "ca.crt")):
        return f"https://{host}{MOBILE_PREFIX}"
    return f"http://{host}:{config.port}{MOBILE_PREFIX}"


def _open(args: argparse.Namespace) -> Any:
    from relaybox.channels.android.models import MODELS  # noqa: F401 - declares the tables
    from relaybox.cli import config_from_args, ensure_owner
    from relaybox.db import create_tables

    config = config_from_args(args)
    ensure_owner(config)
    create_tables()
    return config


def cmd_pair(args: argparse.Namespace) -> int:
    from relaybox.accounts import owner_account
    from relaybox.channels.android.pairing import create_pairing, qr_text, steps
    from relaybox.timeutil import iso

    config = _open(args)
    api_url = (args.url or default_api_url(config)).rstrip("/")
    if not api_url.startswith(("http://", "https://")):
        print("relaybox device pair: --url must start with http:// or https://", file=sys.stderr)
        return 2
    if not api_url.endswith(MOBILE_PREFIX):
        api_url += MOBILE_PREFIX
    owner = owner_account()
    assert owner is not None
    p = create_pairing(owner.id, api_url)
    tls = api_url.startswith("https://")
    if args.json:
        print(json.dumps({"code": p.code, "api_url": p.api_url, "page_url": p.page_url,
                          "expires_at": iso(p.expires_at)}))
        return 0
    print("Pair an Android phone with relaybox")
    print()
    print(f"  API URL:      {p.api_url}")
    print(f"  Code:         {p.code}   (one use, valid 10 minutes)")
    print("  Notification channel: SSE Only")
    print()
    for i, step in enumerate(steps(p.api_url, p.code, tls), 1):
        print(f"  {i}. {step}")
    if not args.no_qr:
        print()
        print(f"Scan with the phone's camera to open the pairing page ({p.page_url}):")
        print(qr_text(p.page_url))
    if "127.0.0.1" in api_url or "localhost" in api_url:
        print("Note: a phone cannot reach 127.0.0.1; pass --url or set public_url.", file=sys.stderr)
    elif (api_url.startswith("http://") and not args.url and not config.public_url
          and config.host in ("127.0.0.1", "localhost", "::1")):
        # The LAN address above is this box's, but `relaybox serve` only listens on loopback.
        print(f"Note: relaybox listens on {config.host} only, so the phone cannot reach {p.api_url} yet: "
              "set host = \"0.0.0.0\" (a trusted LAN, the app's plain-HTTP build), or run "
              "`relaybox tls init` and the nginx site in packaging/ for HTTPS on the LAN.", file=sys.stderr)
    if config.android_private_token:
        print("Note: android_private_token is set, so any phone that knows it may register "
              "(\"Private Token\" in the app's Cloud Server settings).")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from relaybox.channels.android.models import Device
    from relaybox.timeutil import iso, now_ms

    config = _open(args)
    rows = list(Device.select().order_by(Device.created_at))
    offline_after = config.device_offline_after * 1000
    data = [{"id": d.id, "name": d.label or d.name, "app_version": d.app_version, "enabled": d.enabled,
             "presence": d.presence, "recently_seen": bool(d.last_seen and now_ms() - d.last_seen < offline_after),
             "last_seen": iso(d.last_seen), "battery": d.battery_level,
             "numbers": [s["number"] for s in d.sim_cards or [] if s.get("number")]} for d in rows]
    if args.json:
        print(json.dumps(data))
        return 0
    if not data:
        print("No phone is paired. Pair one with: relaybox device pair")
        return 0
    for d in data:
        state = d["presence"] or "never connected"
        print(f"{d['id']}  {d['name']}  app {d['app_version'] or '?'}  {state}  last seen {d['last_seen'] or '-'}"
              f"  battery {d['battery'] if d['battery'] is not None else '?'}%"
              f"{'  DISABLED' if not d['enabled'] else ''}  {' '.join(d['numbers'])}")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from relaybox.channels.android.simulator import main

    return main(args.rest)


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("device", help="pair and list Android phones, or run a simulated one")
    dsub = p.add_subparsers(dest="device_command", required=True)
    pair = dsub.add_parser("pair", parents=[common], help="make a one-time pairing code (and QR code)")
    pair.add_argument("--url", help="the API URL phones use (default: public_url, else this box's address)")
    pair.add_argument("--json", action="store_true", help="print code, api_url, page_url, expires_at as JSON")
    pair.add_argument("--no-qr", action="store_true", help="do not draw the QR code")
    pair.set_defaults(func=cmd_pair)
    lst = dsub.add_parser("list", parents=[common], help="paired phones")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=cmd_list)
    # Every argument goes to the simulator's own parser (relaybox device simulate --help).
    sim = dsub.add_parser("simulate", add_help=False, prefix_chars="\0",
                          help="run a simulated phone: --url URL --code CODE [--fail-rate R] [--delay-ms N]")
    sim.add_argument("rest", nargs=argparse.REMAINDER)
    sim.set_defaults(func=cmd_simulate)
