"""``relaybox admin``: the web page's users (create, passwd, list, delete).

Passwords are read from standard input (``--password-stdin``, or when stdin is not a terminal),
else prompted twice without echo; never from the command line, where ``ps`` would show them.
"""
from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any


def _open(args: argparse.Namespace) -> None:
    import os

    import relaybox.models  # noqa: F401 - core tables
    from relaybox.admin import users  # noqa: F401 - the admin_user table
    from relaybox.cli import config_from_args
    from relaybox.db import create_tables, open_database
    from relaybox.security import load_or_create_secret, set_instance_secret

    config = config_from_args(args)
    os.makedirs(config.data_dir, exist_ok=True)
    set_instance_secret(load_or_create_secret(config.data_dir, config.secret))
    open_database(config.database_url)
    create_tables()


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin or not sys.stdin.isatty():
        line = sys.stdin.readline()
        return line.rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != first:
        raise ValueError("password: the two entries differ")
    return first


def cmd_create(args: argparse.Namespace) -> int:
    from relaybox.admin.users import AdminUserError, create_user

    _open(args)
    try:
        create_user(args.username, _read_password(args))
    except (AdminUserError, ValueError) as exc:
        print(f"relaybox: {exc}", file=sys.stderr)
        return 2
    print(f"Admin user {args.username} created. Log in at /admin/login.")
    return 0


def cmd_passwd(args: argparse.Namespace) -> int:
    from relaybox.admin.users import AdminUserError, set_password

    _open(args)
    try:
        set_password(args.username, _read_password(args))
    except (AdminUserError, ValueError) as exc:
        print(f"relaybox: {exc}", file=sys.stderr)
        return 2
    print(f"Password of {args.username} changed; its old sessions are logged out.")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from relaybox.admin.users import AdminUser
    from relaybox.timeutil import iso

    _open(args)
    for u in AdminUser.select().order_by(AdminUser.username):
        print(f"{u.username}\tcreated {iso(u.created_at, millis=False)}\tlast login "
              f"{iso(u.last_login_at, millis=False) if u.last_login_at else '-'}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    from relaybox.admin.users import delete_user

    _open(args)
    if not delete_user(args.username):
        print(f"relaybox: no admin user {args.username!r}", file=sys.stderr)
        return 2
    print(f"Admin user {args.username} deleted.")
    return 0


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    admin = sub.add_parser("admin", help="users of the admin web page")
    asub = admin.add_subparsers(dest="admin_command", required=True)
    for name, fn, text in (("create", cmd_create, "create an admin user"),
                           ("passwd", cmd_passwd, "set an admin user's password")):
        p = asub.add_parser(name, parents=[common], help=text)
        p.add_argument("username")
        p.add_argument("--password-stdin", action="store_true",
                       help="read the password from the first line of standard input")
        p.set_defaults(func=fn)
    p = asub.add_parser("list", parents=[common], help="list admin users")
    p.set_defaults(func=cmd_list)
    p = asub.add_parser("delete", parents=[common], help="delete an admin user")
    p.add_argument("username")
    p.set_defaults(func=cmd_delete)
