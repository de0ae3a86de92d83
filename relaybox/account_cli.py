"""``relaybox account ...`` and ``relaybox queue ...``: the admin's account and queue controls.

They work on the data dir (or ``database``) directly, whether or not the server runs: the
server reads accounts, balances and the pause flag from the database on every request.
Exit codes: 0 done, 2 bad usage (unknown account, bad amount or date).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, date, datetime, timedelta
from typing import Any

from relaybox.config import Config


class UsageError(Exception):
    """Bad arguments: printed, exit 2."""


def _open(args: argparse.Namespace) -> Config:
    import relaybox.models  # noqa: F401
    from relaybox import billing, contacts  # noqa: F401 - declare their tables
    from relaybox.cli import config_from_args
    from relaybox.db import create_tables, open_database
    from relaybox.security import load_or_create_secret, set_instance_secret

    config = config_from_args(args)
    os.makedirs(config.data_dir, exist_ok=True)
    set_instance_secret(load_or_create_secret(config.data_dir, config.secret))
    open_database(config.database_url)
    create_tables()
    return config


def _account(account_id: str) -> Any:
    from relaybox.models import Account

    acc = Account.get_or_none(Account.id == account_id)
    if acc is None:
        raise UsageError(f"no account {account_id} (see: relaybox account list)")
    return acc


def _describe(acc: Any, config: Config) -> dict[str, Any]:
    from relaybox.billing import balance_of, show
    from relaybox.timeutil import iso

    return {"id": acc.id, "name": acc.name, "api_enabled": acc.api_enabled, "owner": acc.is_owner,
            "paused": acc.paused, "subscription_until": iso(acc.subscription_until, millis=False),
            "balance": show(balance_of(acc.id)), "currency": config.currency,
            "limits": {k: v for k, v in (acc.settings or {}).items()
                       if k in ("allowed_countries", "recipient_hourly_cap")},
            "created_at": iso(acc.created_at, millis=False)}


def _out(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    print(json.dumps(data, ensure_ascii=False) if getattr(args, "json", False) else text)


def parse_until(value: str) -> int | None:
    """``none``, a date (valid through that whole day, UTC) or an RFC 3339 time → ms."""
    if value.lower() in ("none", "never", ""):
        return None
    try:
        if len(value) == 10:
            day = date.fromisoformat(value) + timedelta(days=1)
            return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)
        from relaybox.timeutil import parse_rfc3339

        return parse_rfc3339(value)
    except ValueError as exc:
        raise UsageError(f"--until: not a date (YYYY-MM-DD) or RFC 3339 time: {value} ({exc})") from None


# -- account commands -------------------------------------------------------------------------
def cmd_create(args: argparse.Namespace) -> int:
    from relaybox.accounts import create_account

    config = _open(args)
    name = args.name.strip()
    if not name or len(name) > 200:
        raise UsageError("NAME: 1 to 200 characters")
    acc, key = create_account(name, api_enabled=args.enable_api)
    _out(args, {"account_id": acc.id, "api_key": key, "api_enabled": acc.api_enabled},
         f"Created account {acc.id} ({name}) in {config.data_dir}; API access "
         f"{'enabled' if acc.api_enabled else 'off (relaybox account enable ' + acc.id + ')'}\n"
         f"API key (shown once, save it now): {key}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from relaybox.models import Account

    config = _open(args)
    rows = [_describe(a, config) for a in Account.select().order_by(Account.created_at, Account.id)]
    if args.json:
        print(json.dumps({"accounts": rows}, ensure_ascii=False))
        return 0
    for r in rows:
        flags = [f for f, on in (("api", r["api_enabled"]), ("owner", r["owner"]), ("paused", r["paused"])) if on]
        print(f"{r['id']}  {r['name']}  [{', '.join(flags) or '-'}]  balance {r['balance']} {r['currency']}"
              f"  subscription {r['subscription_until'] or 'no end'}")
    return 0


def _set_api(args: argparse.Namespace, enabled: bool) -> int:
    from relaybox.db import write_tx
    from relaybox.models import Account

    config = _open(args)
    acc = _account(args.id)
    with write_tx():
        Account.update(api_enabled=enabled).where(Account.id == acc.id).execute()
    acc.api_enabled = enabled
    _out(args, _describe(acc, config), f"API access {'enabled' if enabled else 'disabled'} for {acc.id}")
    return 0


def cmd_topup(args: argparse.Namespace) -> int:
    from relaybox.billing import fmt, to_micros, top_up

    config = _open(args)
    acc = _account(args.id)
    try:
        amount = to_micros(args.amount)
    except ValueError as exc:
        raise UsageError(f"AMOUNT: {exc}") from None
    if amount <= 0:
        raise UsageError("AMOUNT: must be positive")
    entry = top_up(acc.id, amount, args.note)
    _out(args, {"account_id": acc.id, "transaction_id": entry.id, "balance": float(fmt(entry.balance_after)),
                "currency": config.currency},
         f"Topped up {acc.id} by {fmt(amount)} {config.currency}; balance {fmt(entry.balance_after)} "
         f"{config.currency}" + ("" if config.billing else " (billing is off on this box)"))
    return 0


def cmd_subscription(args: argparse.Namespace) -> int:
    from relaybox.db import write_tx
    from relaybox.models import Account
    from relaybox.timeutil import iso

    config = _open(args)
    acc = _account(args.id)
    until = parse_until(args.until)
    with write_tx():
        Account.update(subscription_until=until).where(Account.id == acc.id).execute()
    acc.subscription_until = until
    _out(args, _describe(acc, config), f"Subscription of {acc.id}: "
         + (f"until {iso(until, millis=False)}" if until is not None else "no end date"))
    return 0


def cmd_limits(args: argparse.Namespace) -> int:
    import phonenumbers

    from relaybox.db import write_tx
    from relaybox.models import Account

    config = _open(args)
    acc = _account(args.id)
    settings = dict(acc.settings or {})
    if args.countries is not None:
        if args.countries.lower() == "default":
            settings.pop("allowed_countries", None)
        else:
            codes = [c.strip().upper() for c in args.countries.split(",") if c.strip()]
            known = phonenumbers.SUPPORTED_REGIONS
            bad = [c for c in codes if c != "*" and c not in known]
            if bad or not codes:
                raise UsageError(f"--countries: not ISO country codes: {', '.join(bad) or args.countries}")
            settings["allowed_countries"] = codes
    if args.recipient_hourly_cap is not None:
        if args.recipient_hourly_cap.lower() == "default":
            settings.pop("recipient_hourly_cap", None)
        elif args.recipient_hourly_cap.isdigit():
            settings["recipient_hourly_cap"] = int(args.recipient_hourly_cap)
        else:
            raise UsageError("--recipient-hourly-cap: a number (0 = no cap) or 'default'")
    with write_tx():
        Account.update(settings=settings).where(Account.id == acc.id).execute()
    acc.settings = settings
    _out(args, _describe(acc, config), f"Limits of {acc.id}: {json.dumps(_describe(acc, config)['limits'])}")
    return 0


def cmd_regenerate(args: argparse.Namespace) -> int:
    from relaybox.accounts import regenerate_key

    _open(args)
    acc = _account(args.id)
    key = regenerate_key(acc)
    _out(args, {"account_id": acc.id, "api_key": key},
         f"New API key for {acc.id} (the old one no longer works; shown once): {key}")
    return 0


# -- queue commands ---------------------------------------------------------------------------
def _queue_state(config: Config) -> dict[str, Any]:
    from relaybox.models import Setting

    row = Setting.get_or_none(Setting.key == "queue_paused")
    paused = bool(row is not None and row.value) or os.path.exists(os.path.join(config.data_dir, "paused"))
    return {"instance_paused": paused, "pause_mode": config.pause_mode}


def cmd_queue(args: argparse.Namespace) -> int:
    from relaybox.queue_health import set_instance_pause

    config = _open(args)
    if args.queue_action in ("pause", "resume"):
        set_instance_pause(config.data_dir, args.queue_action == "pause", by="cli")
    state = _queue_state(config)
    _out(args, state, "The queue is " + ("paused on this box (relaybox queue resume)"
                                         if state["instance_paused"] else "running"))
    return 0


def _run(fn: Any) -> Any:
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except UsageError as exc:
            print(f"relaybox: {exc}", file=sys.stderr)
            return 2

    return wrapper


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    acc = sub.add_parser("account", help="accounts: create, list, API access, balance, subscription, limits")
    asub = acc.add_subparsers(dest="account_action", required=True)

    p = asub.add_parser("create", parents=[common], help="create an account and print its API key once")
    p.add_argument("name")
    p.add_argument("--enable-api", action="store_true", help="enable API access now")
    p.add_argument("--json", action="store_true", help="print one JSON line with account_id and api_key")
    p.set_defaults(func=_run(cmd_create))

    p = asub.add_parser("list", parents=[common], help="list accounts")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_run(cmd_list))

    for name, enabled in (("enable", True), ("disable", False)):
        p = asub.add_parser(name, parents=[common], help=f"{name} API access of an account")
        p.add_argument("id")
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=_run(lambda a, e=enabled: _set_api(a, e)))

    p = asub.add_parser("topup", parents=[common], help="credit an account's balance")
    p.add_argument("id")
    p.add_argument("amount", help="e.g. 25 or 12.50 (in the configured currency)")
    p.add_argument("--note", help="ledger description (default: Top-up)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_run(cmd_topup))

    p = asub.add_parser("subscription", parents=[common], help="set the subscription end")
    p.add_argument("id")
    p.add_argument("--until", required=True, help="YYYY-MM-DD (through that day, UTC), an RFC 3339 time, or none")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_run(cmd_subscription))

    p = asub.add_parser("limits", parents=[common], help="per-account safety limits")
    p.add_argument("id")
    p.add_argument("--countries", help="allowed destination countries: PK,NP,BD or * or default")
    p.add_argument("--recipient-hourly-cap", dest="recipient_hourly_cap",
                   help="messages to one number per hour (0 = none) or default")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_run(cmd_limits))

    p = asub.add_parser("regenerate-key", parents=[common], help="issue a new API key (the old one dies)")
    p.add_argument("id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_run(cmd_regenerate))

    q = sub.add_parser("queue", help="pause or resume sending on the whole box")
    qsub = q.add_subparsers(dest="queue_action", required=True)
    for name, text in (("pause", "stop sending for every account (new sends: QUEUE_BLOCKED)"),
                       ("resume", "resume sending"), ("status", "show whether the box is paused")):
        p = qsub.add_parser(name, parents=[common], help=text)
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=_run(cmd_queue))
