"""CLI: ``relaybox doctor``, ``relaybox backup FILE``, ``relaybox restore FILE``.

Exit codes: 0 success; 1 a check failed / the backup or restore could not be done (the
message says why); 2 bad usage or bad config (CONTRACT.md).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def cmd_doctor(args: argparse.Namespace) -> int:
    from relaybox.cli import config_from_args
    from relaybox.doctor import FAIL, as_dicts, render, run_checks

    checks = run_checks(lambda: config_from_args(args), getattr(args, "config", None))
    if args.json:
        print(json.dumps({"ok": not any(c.status == FAIL for c in checks), "checks": as_dicts(checks)}))
    else:
        print(render(checks))
    if checks[0].name == "config" and checks[0].status == FAIL:
        return 2  # bad config (CONTRACT.md exit codes)
    return 1 if any(c.status == FAIL for c in checks) else 0


def cmd_backup(args: argparse.Namespace) -> int:
    from relaybox.backup import BackupError, backup
    from relaybox.cli import config_from_args

    config = config_from_args(args)
    try:
        info = backup(config, args.file)
    except BackupError as exc:
        print(f"relaybox backup: {exc}", file=sys.stderr)
        return 1
    print(f"backup written to {info.path} ({info.bytes} bytes, {info.messages} messages, {info.seconds:.2f}s)")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from relaybox.backup import BackupError, restore
    from relaybox.cli import config_from_args

    config = config_from_args(args)
    try:
        info = restore(config, args.file)
    except BackupError as exc:
        print(f"relaybox restore: {exc}", file=sys.stderr)
        return 1
    print(f"restored {info.messages} messages into {info.path} ({info.seconds:.2f}s); start relaybox again")
    return 0


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("doctor", parents=[common], help="check the installation and say what to fix")
    p.add_argument("--json", action="store_true", help="print the checks as one JSON object")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("backup", parents=[common],
                       help="copy the SQLite database to FILE (online, consistent while serving)")
    p.add_argument("file", help="where to write the backup (replaced atomically)")
    p.set_defaults(func=cmd_backup)

    p = sub.add_parser("restore", parents=[common], help="replace the database with a backup (stop relaybox first)")
    p.add_argument("file", help="a file written by `relaybox backup`")
    p.set_defaults(func=cmd_restore)
