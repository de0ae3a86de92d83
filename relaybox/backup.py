"""``relaybox backup FILE`` and ``relaybox restore FILE`` for the SQLite database.

Backup uses SQLite's online backup API (``sqlite3.Connection.backup``): it copies a consistent
snapshot while the server keeps reading and writing (WAL mode), page batch by page batch, and
starts over on its own if a write lands mid-copy. The copy is written to ``FILE.tmp``, checked
(``PRAGMA integrity_check``), then renamed into place, so ``FILE`` is never half-written.

The instance secret goes into the copy (table ``relaybox_backup``), because API keys, device
tokens and OTP codes are stored as HMACs keyed with it: without it a restored database would
reject every key. Keep backups as private as the data dir itself (the file is created 0600).

Restore refuses while a server holds the data dir (stop the service first), keeps the current
database as ``relaybox.db.before-restore-<time>``, and copies the backup in with the same API.
The queue (``queue.db``) is not part of a backup: it only carries nudges, and the housekeeper
re-creates the work from the message rows.

PostgreSQL installations back up with ``pg_dump`` (the database is not in the data dir).
"""
from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass

from relaybox import __version__
from relaybox.config import Config

META_TABLE = "relaybox_backup"


class BackupError(Exception):
    """Backup or restore cannot proceed; the message says why and what to do."""


@dataclass
class BackupInfo:
    path: str
    bytes: int
    messages: int
    seconds: float


def sqlite_path(config: Config) -> str:
    url = config.database_url
    if not url.startswith("sqlite:///"):
        raise BackupError("backup/restore work on SQLite only; for PostgreSQL use pg_dump / pg_restore")
    return url[len("sqlite:///"):]


def _connect(path: str, timeout: float = 30.0) -> sqlite3.Connection:
    con = sqlite3.connect(path, timeout=timeout, isolation_level=None)
    con.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
    return con


def _check(con: sqlite3.Connection, what: str) -> None:
    row = con.execute("PRAGMA integrity_check").fetchone()
    if not row or row[0] != "ok":
        raise BackupError(f"{what} failed the integrity check: {row[0] if row else 'no answer'}")


def _count_messages(con: sqlite3.Connection) -> int:
    try:
        return int(con.execute("SELECT COUNT(*) FROM message").fetchone()[0])
    except sqlite3.DatabaseError:
        return 0


def backup(config: Config, dest: str, pages_per_step: int = 1024) -> BackupInfo:
    """Copy the live database to ``dest`` (atomically) with the instance secret."""
    from relaybox.security import load_or_create_secret

    src_path = sqlite_path(config)
    if not os.path.exists(src_path):
        raise BackupError(f"no database at {src_path} (run relaybox init, or check data_dir)")
    dest = os.path.abspath(dest)
    if os.path.isdir(dest):
        raise BackupError(f"{dest} is a directory; give a file name")
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    tmp = dest + ".tmp"
    for leftover in (tmp, tmp + "-journal", tmp + "-wal", tmp + "-shm"):
        if os.path.exists(leftover):
            os.unlink(leftover)
    started = time.monotonic()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    try:
        src = _connect(src_path)
        out = _connect(tmp)
        try:
            # Short sleeps between steps let the server's writers in while a big copy runs.
            src.backup(out, pages=pages_per_step, sleep=0.005)
        finally:
            src.close()
        secret = load_or_create_secret(config.data_dir, config.secret)
        out.execute("PRAGMA journal_mode = DELETE")
        out.execute(f"CREATE TABLE {META_TABLE} (created_at INTEGER, version TEXT, secret TEXT)")
        out.execute(f"INSERT INTO {META_TABLE} VALUES (?, ?, ?)",
                    (int(time.time() * 1000), __version__, secret.decode()))
        _check(out, "the backup copy")
        messages = _count_messages(out)
        out.close()
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return BackupInfo(dest, os.path.getsize(dest), messages, time.monotonic() - started)


def restore(config: Config, src: str) -> BackupInfo:
    """Replace the database (and the instance secret) with a backup made by :func:`backup`."""
    from relaybox.ops import data_dir_in_use

    dest_path = sqlite_path(config)
    src = os.path.abspath(src)
    if not os.path.isfile(src):
        raise BackupError(f"no backup file at {src}")
    if data_dir_in_use(config.data_dir):
        raise BackupError(f"relaybox is running on {config.data_dir}; stop it first "
                          "(systemctl stop relaybox), then restore")
    started = time.monotonic()
    check = _connect(src)
    try:
        try:
            _check(check, "the backup file")
            meta = check.execute(f"SELECT secret, version FROM {META_TABLE}").fetchone()
            check.execute("SELECT COUNT(*) FROM message").fetchone()
        except sqlite3.DatabaseError as exc:
            raise BackupError(f"{src} is not a relaybox backup ({exc})") from None
    finally:
        check.close()
    if not meta:
        raise BackupError(f"{src} is not a relaybox backup (no {META_TABLE} row)")
    secret = meta[0]

    os.makedirs(os.path.dirname(os.path.abspath(dest_path)), exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if os.path.exists(dest_path):
        keep = f"{dest_path}.before-restore-{stamp}"
        cur, saved = _connect(dest_path), _connect(keep)
        try:
            cur.backup(saved)  # a consistent copy, WAL included
        finally:
            cur.close()
            saved.close()
    # Copy with the backup API into the live file: it takes the locks and handles the WAL.
    source = _connect(src)
    target = _connect(dest_path)
    try:
        source.backup(target)
        target.execute(f"DROP TABLE IF EXISTS {META_TABLE}")
        target.execute("PRAGMA journal_mode = WAL")
        _check(target, "the restored database")
        messages = _count_messages(target)
    finally:
        source.close()
        target.close()

    if not config.secret:
        path = os.path.join(config.data_dir, "secret")
        current = None
        if os.path.exists(path):
            with open(path) as fh:
                current = fh.read().strip()
        if current != secret:
            if current is not None:
                os.replace(path, f"{path}.before-restore-{stamp}")
            fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secret)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(path + ".tmp", path)
    return BackupInfo(dest_path, os.path.getsize(dest_path), messages, time.monotonic() - started)
