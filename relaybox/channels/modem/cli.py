"""``relaybox modem``: scan for modem ports, run a simulated modem, run a USSD code.

``relaybox modem ussd NAME CODE`` asks the running server when it is given an API key
(``--api-key`` or ``RELAYBOX_API_KEY``): the server holds the port, and the answer comes from
``POST /api/v1/modems/<id>/ussd``. Without a key it opens the modem's port itself (the modem of
``config.toml``, or one added through the API, read from the database); when a running server
holds the port that fails at once with "busy", and the message says to pass an API key.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

EXIT_FAILED = 1
EXIT_USAGE = 2


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("modem", help="USB GSM modems: scan, simulate, ussd")
    msub = p.add_subparsers(dest="modem_command", required=True)

    s = msub.add_parser("scan", parents=[common],
                        help="list serial ports that may be modems and probe each with ATI")
    s.add_argument("--port", action="append", default=[], metavar="PATH",
                   help="also probe this path (repeatable), e.g. a simulator's pty")
    s.add_argument("--no-probe", action="store_true", help="only list, do not open the ports")
    s.add_argument("--timeout", type=float, default=1.0, help="seconds to wait for each answer")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=cmd_scan)

    from relaybox.channels.modem.simulator import add_arguments

    s = msub.add_parser("simulate", help="run a simulated modem on a pty (prints the path; Ctrl-C stops it)",
                        description="Run a simulated GSM modem on a pty: prints its path first, then "
                                    "takes commands on stdin (sms, report, ussd, fail, hang, unplug, ...).")
    add_arguments(s)
    s.set_defaults(func=cmd_simulate)

    s = msub.add_parser("ussd", parents=[common], help="run a USSD code (e.g. a balance check)")
    s.add_argument("name", help="the modem's name (modem_<name> works too)")
    s.add_argument("code", help='the USSD code, e.g. "*123#"')
    s.add_argument("--api-key", default=os.environ.get("RELAYBOX_API_KEY"),
                   help="ask the running server with this key (default: $RELAYBOX_API_KEY)")
    s.add_argument("--url", help="the server's base URL (default: http://<host>:<port> of the config)")
    s.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the answer")
    s.set_defaults(func=cmd_ussd)


# -- scan -----------------------------------------------------------------------------------------
def cmd_scan(args: argparse.Namespace) -> int:
    from relaybox.channels.modem.scan import scan

    found = scan(probe=not args.no_probe, extra=args.port, timeout=args.timeout)
    if args.json:
        print(json.dumps({"candidates": [c.__dict__ for c in found]}))
        return 0
    if not found:
        print("No USB serial ports found. Is the modem plugged in? (`lsusb` lists USB devices; some "
              "sticks need usb_modeswitch to leave their CD-ROM mode.)")
        return 0
    for c in found:
        verdict = ("answers AT" if c.responds else "no AT answer" if c.responds is False else "not probed")
        print(c.path)
        if c.device and c.device != c.path:
            print(f"    device:  {c.device}")
        if c.description or c.manufacturer:
            print(f"    what:    {' '.join(x for x in (c.manufacturer, c.description) if x)}")
        print(f"    probe:   {verdict}")
        for line in c.info:
            print(f"    ATI:     {line}")
        if c.error:
            print(f"    error:   {c.error}")
    if any(c.responds for c in found):
        print("\nPut the stable path of a port that answers AT in config.toml:\n\n"
              "[[modem]]\nname = \"modem1\"\nport = \"<path above>\"")
    return 0


# -- simulate -------------------------------------------------------------------------------------
def cmd_simulate(args: argparse.Namespace) -> int:
    from relaybox.channels.modem.simulator import serve

    return serve(args)


# -- ussd -----------------------------------------------------------------------------------------
def cmd_ussd(args: argparse.Namespace) -> int:
    name = args.name.removeprefix("modem_")
    from relaybox.cli import config_from_args

    config = config_from_args(args)
    if args.api_key:
        return _ussd_via_api(config, args, name)
    return _ussd_direct(config, args, name)


def _ussd_via_api(config: Any, args: argparse.Namespace, name: str) -> int:
    import requests

    base = (args.url or f"http://{config.host}:{config.port}").rstrip("/")
    if not base.endswith("/api/v1"):
        base += "/api/v1"
    try:
        r = requests.post(f"{base}/modems/modem_{name}/ussd", json={"code": args.code},
                          headers={"X-API-Key": args.api_key}, timeout=args.timeout)
    except requests.RequestException as exc:
        print(f"relaybox: cannot reach the server at {base}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    try:
        body = r.json()
    except ValueError:
        print(f"relaybox: unexpected answer from {base} (HTTP {r.status_code})", file=sys.stderr)
        return EXIT_FAILED
    if not body.get("ok"):
        print(f"relaybox: {body.get('error', {}).get('message', r.status_code)}", file=sys.stderr)
        return EXIT_FAILED
    return _print_ussd(body["data"].get("status"), body["data"].get("reply") or "")


# +CUSD <m> values (3GPP TS 27.007) that mean no answer came back.
_USSD_REFUSED = {2: "released by the network", 4: "operation not supported", 5: "network timed out"}


def _print_ussd(status: int | None, text: str) -> int:
    """Print the reply; a refusal with no text is an error, not an empty line and exit 0."""
    if not text and status in _USSD_REFUSED:
        print(f"relaybox: no USSD answer: {_USSD_REFUSED[status]} (+CUSD status {status})", file=sys.stderr)
        return EXIT_FAILED
    print(text)
    return 0


def _modem_settings(config: Any, name: str) -> Any:
    """The modem's settings: config.toml first, then the modems added through the API."""
    for settings in config.modem:
        if settings.name == name:
            return settings
    from relaybox.channels.modem.channel import settings_of
    from relaybox.channels.modem.models import Modem
    from relaybox.db import create_tables, open_database
    from relaybox.security import load_or_create_secret, set_instance_secret

    if not os.path.isdir(config.data_dir):
        return None
    set_instance_secret(load_or_create_secret(config.data_dir, config.secret))
    open_database(config.database_url)
    create_tables()
    row = Modem.get_or_none(Modem.name == name)
    return settings_of(row) if row is not None else None


def _ussd_direct(config: Any, args: argparse.Namespace, name: str) -> int:
    from relaybox.channels.modem.at import ATPort, PortBusyError, PortOpenError
    from relaybox.channels.modem.channel import driver_config
    from relaybox.channels.modem.driver import ModemDriver, ModemUnavailable

    settings = _modem_settings(config, name)
    if settings is None:
        print(f"relaybox: no modem called {name} in the config or the database", file=sys.stderr)
        return EXIT_USAGE
    probe = ATPort(settings.port, settings.baud, name=f"ussd:{name}")
    try:
        probe.open()
    except PortBusyError as exc:
        print(f"relaybox: {exc}\nIf `relaybox serve` is running, it holds the port: ask it with "
              f"--api-key (or RELAYBOX_API_KEY).", file=sys.stderr)
        return EXIT_FAILED
    except PortOpenError as exc:
        print(f"relaybox: {exc}", file=sys.stderr)
        return EXIT_FAILED
    probe.close()
    driver = ModemDriver(driver_config(settings))
    driver.start()
    try:
        if not driver.wait_ready(args.timeout):
            st = driver.status()
            print(f"relaybox: modem {name} is {st['state']}: {st['reason'] or st['last_error'] or 'not ready'}",
                  file=sys.stderr)
            return EXIT_FAILED
        try:
            result = driver.ussd(args.code, timeout=args.timeout)
        except ModemUnavailable as exc:
            print(f"relaybox: {exc}", file=sys.stderr)
            return EXIT_FAILED
        return _print_ussd(result.status, result.text)
    finally:
        driver.stop()
