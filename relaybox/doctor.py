"""``relaybox doctor``: check an installation and say what to fix.

Checks, in order: the config loads; the data dir exists, is writable by this user and not open
to others; the instance secret is private; the database answers and has the schema; the queue
answers; every configured modem port exists and this user may open it (group ``dialout``); the
clock is sane (not before the newest row in the database; NTP synchronised where systemd tells).
Each check is ``ok``, ``warn`` or ``fail``; the exit code is 1 when anything failed.
"""
from __future__ import annotations

import glob
import grp
import os
import pwd
import shutil
import stat
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from relaybox.config import Config

OK, WARN, FAIL = "ok", "warn", "fail"
# Earliest plausible wall clock: a Pi without an RTC boots in 1970 until NTP answers.
CLOCK_FLOOR_MS = 1_735_689_600_000  # 2025-01-01T00:00:00Z


@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""


def _user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def check_data_dir(config: Config) -> list[Check]:
    d = config.data_dir
    out: list[Check] = []
    if not os.path.isdir(d):
        return [Check("data_dir", FAIL, f"{d} does not exist",
                      f"run `relaybox init --data-dir {d}` as the user that runs relaybox")]
    st = os.stat(d)
    if not os.access(d, os.W_OK | os.X_OK):
        out.append(Check("data_dir", FAIL, f"{d} is not writable by {_user()}",
                         f"chown -R {_user()} {d}  (or run relaybox as its owner)"))
    elif st.st_mode & stat.S_IWOTH:
        out.append(Check("data_dir", FAIL, f"{d} is writable by everyone (mode {stat.S_IMODE(st.st_mode):o})",
                         f"chmod 750 {d}"))
    else:
        free = shutil.disk_usage(d).free
        status = WARN if free < 100 * 1024 * 1024 else OK
        out.append(Check("data_dir", status, f"{d} writable, {free // (1024 * 1024)} MiB free",
                         "free some disk space (or set retention_days)" if status == WARN else ""))
    secret = os.path.join(d, "secret")
    if config.secret:
        out.append(Check("secret", OK, "instance secret set in the configuration"))
    elif not os.path.exists(secret):
        out.append(Check("secret", WARN, f"{secret} not created yet", "run `relaybox init`"))
    else:
        mode = stat.S_IMODE(os.stat(secret).st_mode)
        if mode & 0o077:
            out.append(Check("secret", FAIL, f"{secret} is readable by others (mode {mode:o})", f"chmod 600 {secret}"))
        elif not os.access(secret, os.R_OK):
            out.append(Check("secret", FAIL, f"{secret} is not readable by {_user()}", f"chown {_user()} {secret}"))
        else:
            out.append(Check("secret", OK, f"{secret} private (mode {mode:o})"))
    if not config.database_url.startswith("sqlite") and not config.secret:
        out.append(Check("secret_shared", WARN, "PostgreSQL is configured but the secret comes from the data dir",
                         "set the same `secret` on every relaybox process that shares the database, "
                         "or keys issued by one process fail on the others"))
    return out


def check_database(config: Config) -> list[Check]:
    from relaybox.db import db, is_sqlite, open_database

    url = config.database_url
    shown = url.split("@")[-1] if "@" in url else url
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]
        if not os.path.exists(path):
            return [Check("database", FAIL, f"no database at {path}", "run `relaybox init`")]
        if not os.access(path, os.R_OK | os.W_OK):
            return [Check("database", FAIL, f"{path} is not readable and writable by {_user()}",
                          f"chown {_user()} {path}*")]
    try:
        open_database(url)
        db.connect(reuse_if_open=True)
        db.execute_sql("SELECT 1").fetchone()
        tables = set(db.get_tables())
    except Exception as exc:  # noqa: BLE001 - report any driver error
        return [Check("database", FAIL, f"{shown}: {type(exc).__name__}: {exc}".strip(),
                      "check `database` in the config, that the server runs and the user may connect")]
    out: list[Check] = []
    if "message" not in tables or "account" not in tables:
        return [Check("database", FAIL, f"{shown}: schema missing", "run `relaybox init`")]
    from relaybox.accounts import owner_account

    n = db.execute_sql("SELECT COUNT(*) FROM message").fetchone()[0]
    detail = f"{shown}: answers, {n} messages"
    if is_sqlite():
        mode = db.execute_sql("PRAGMA journal_mode").fetchone()[0]
        quick = db.execute_sql("PRAGMA quick_check").fetchone()[0]
        if quick != "ok":
            return [Check("database", FAIL, f"{shown}: quick_check says {quick}",
                          "restore the latest backup (`relaybox restore FILE`)")]
        cache_kb = -db.execute_sql("PRAGMA cache_size").fetchone()[0]
        detail += f", journal_mode={mode}, page cache {cache_kb // 1000} MB a connection"
    out.append(Check("database", OK, detail))
    if owner_account() is None:
        out.append(Check("owner", WARN, "no owner account yet", "run `relaybox init` to create it and its API key"))
    return out


def check_queue(config: Config) -> list[Check]:
    q = config.queue
    if q == "memory":
        return [Check("queue", WARN, "in-memory queue: nudges are lost on restart (tests only)",
                      "set queue = \"sqlite\" (default) or a redis:// URL")]
    if q.startswith(("redis://", "rediss://")):
        try:
            import redis

            redis.Redis.from_url(q, socket_timeout=3, socket_connect_timeout=3).ping()
        except Exception as exc:  # noqa: BLE001
            return [Check("queue", FAIL, f"Redis at {q.split('@')[-1]}: {exc}",
                          "start redis-server or fix `queue` in the config")]
        return [Check("queue", OK, f"Redis at {q.split('@')[-1]} answers")]
    path = config.queue_path
    d = os.path.dirname(path)
    if os.path.exists(path) and not os.access(path, os.R_OK | os.W_OK):
        return [Check("queue", FAIL, f"{path} is not writable by {_user()}", f"chown {_user()} {path}*")]
    if not os.access(d, os.W_OK):
        return [Check("queue", FAIL, f"cannot create {path}", f"chown {_user()} {d}")]
    return [Check("queue", OK, f"SQLite queue at {path}")]


def _in_group(name: str) -> bool:
    try:
        gid = grp.getgrnam(name).gr_gid
    except KeyError:
        return False
    return gid in os.getgroups() or os.getegid() == gid


def check_serial(config: Config) -> list[Check]:
    out: list[Check] = []
    visible = sorted(glob.glob("/dev/ttyUSB*") + glob.glob("/dev/ttyACM*") + glob.glob("/dev/serial/by-id/*"))
    for modem in config.modem:
        if not modem.enabled:
            out.append(Check(f"modem:{modem.name}", OK, f"{modem.port} (disabled in the config)"))
            continue
        if not os.path.exists(modem.port):
            out.append(Check(f"modem:{modem.name}", FAIL, f"{modem.port} does not exist",
                             "plug the modem in, or fix `port` (stable names: /dev/serial/by-id/...); "
                             f"visible now: {', '.join(visible) or 'none'}"))
        elif not os.access(modem.port, os.R_OK | os.W_OK):
            out.append(Check(f"modem:{modem.name}", FAIL, f"{modem.port} is not accessible by {_user()}",
                             f"sudo usermod -aG dialout {_user()}  (then restart relaybox)"))
        else:
            out.append(Check(f"modem:{modem.name}", OK, f"{modem.port} present and accessible"))
    if not config.modem:
        detail = f"no [[modem]] configured; serial ports visible: {', '.join(visible) or 'none'}"
        out.append(Check("serial", OK, detail))
        if visible and not _in_group("dialout") and os.geteuid() != 0:
            out[-1] = Check("serial", WARN, detail + f"; {_user()} is not in group dialout",
                            f"sudo usermod -aG dialout {_user()}")
    return out


def check_clock(config: Config) -> list[Check]:
    now = int(time.time() * 1000)
    if now < CLOCK_FLOOR_MS:
        return [Check("clock", FAIL, f"system time is {time.strftime('%Y-%m-%d', time.gmtime(now / 1000))}",
                      "set the clock / enable NTP (timedatectl set-ntp true); a Pi without RTC needs network time")]
    out: list[Check] = []
    try:
        from relaybox.db import db

        newest = db.execute_sql("SELECT MAX(created_at) FROM message").fetchone()[0]
    except Exception:  # noqa: BLE001 - no database: reported by check_database
        newest = None
    if newest and newest > now + 60_000:
        out.append(Check("clock", FAIL, f"the newest message is {(newest - now) // 1000} s in the future: "
                         "the clock went back", "fix the time (NTP) before serving, or timelines go backwards"))
    else:
        out.append(Check("clock", OK, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now / 1000))))
    if shutil.which("timedatectl"):
        try:
            res = subprocess.run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"],
                                 capture_output=True, text=True, timeout=5, check=False)
            if res.returncode == 0 and res.stdout.strip() == "no":
                out.append(Check("ntp", WARN, "the clock is not NTP-synchronised", "timedatectl set-ntp true"))
        except (OSError, subprocess.TimeoutExpired):
            pass
    return out


def run_checks(config_loader: Callable[[], Config], source: str | None = None) -> list[Check]:
    from relaybox.config import ConfigError

    try:
        config = config_loader()
    except ConfigError as exc:
        return [Check("config", FAIL, str(exc), "fix the setting named above (see config.example.toml)")]
    where = source or os.environ.get("RELAYBOX_CONFIG") or "defaults/flags/env"
    checks = [Check("config", OK, f"loaded ({where})")]
    for fn in (check_data_dir, check_database, check_queue, check_serial, check_clock):
        try:
            checks.extend(fn(config))
        except Exception as exc:  # noqa: BLE001 - a check must never crash the doctor
            checks.append(Check(fn.__name__.replace("check_", ""), FAIL, f"{type(exc).__name__}: {exc}"))
    return checks


def render(checks: list[Check]) -> str:
    marks = {OK: "ok  ", WARN: "WARN", FAIL: "FAIL"}
    lines = []
    for c in checks:
        lines.append(f"[{marks[c.status]}] {c.name}: {c.detail}")
        if c.fix and c.status != OK:
            lines.append(f"       fix: {c.fix}")
    failed = sum(c.status == FAIL for c in checks)
    warned = sum(c.status == WARN for c in checks)
    lines.append("all checks passed" if not failed and not warned else f"{failed} failed, {warned} warning(s)")
    return "\n".join(lines)


def as_dicts(checks: list[Check]) -> list[dict[str, Any]]:
    return [asdict(c) for c in checks]
