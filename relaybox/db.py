"""The database handle: one peewee proxy, bound at start-up to SQLite (default) or PostgreSQL.

SQLite runs in WAL mode with ``synchronous=NORMAL`` and a busy timeout; writes take the lock up
front (``BEGIN IMMEDIATE``) so two writers never deadlock on a lock upgrade.
"""
from __future__ import annotations

import json
import os
from typing import Any

import peewee
from playhouse.db_url import connect

db = peewee.DatabaseProxy()

SQLITE_PRAGMAS = {
    "journal_mode": "wal",
    "synchronous": "normal",
    "busy_timeout": 10000,
    "foreign_keys": 1,
    "cache_size": -16000,
}


def open_database(url: str) -> peewee.Database:
    """Connect (lazily, per thread) and bind the proxy."""
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]
        if path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        database = peewee.SqliteDatabase(path, pragmas=SQLITE_PRAGMAS, timeout=10)
    else:
        database = connect(url)
    db.initialize(database)
    return database


def is_sqlite() -> bool:
    return isinstance(db.obj, peewee.SqliteDatabase)


def write_tx() -> Any:
    """A write transaction; on SQLite it takes the write lock at BEGIN (IMMEDIATE)."""
    if is_sqlite():
        return db.atomic("IMMEDIATE")
    return db.atomic()


def for_update(query: Any) -> Any:
    """Lock the selected rows until the transaction ends (PostgreSQL ``SELECT ... FOR UPDATE``).

    On SQLite the write transaction (``BEGIN IMMEDIATE``) already serialises writers, and SQLite
    has no ``FOR UPDATE``; on PostgreSQL (READ COMMITTED) a read-modify-write of a row must lock
    it, or two processes could both move a message from the same state.
    """
    return query if is_sqlite() else query.for_update()


class JSONField(peewee.TextField):
    """JSON stored as text: portable across SQLite and PostgreSQL."""

    def db_value(self, value: Any) -> str | None:
        return None if value is None else json.dumps(value, separators=(",", ":"), ensure_ascii=False)

    def python_value(self, value: str | None) -> Any:
        return None if value is None else json.loads(value)


class BaseModel(peewee.Model):
    class Meta:
        database = db
        legacy_table_names = False


def all_models() -> list[type[BaseModel]]:
    """Every model class that has been imported (feature modules declare their own)."""
    found: list[type[BaseModel]] = []
    stack = list(BaseModel.__subclasses__())
    while stack:
        cls = stack.pop(0)
        if cls not in found:
            found.append(cls)
            stack.extend(cls.__subclasses__())
    return found


def create_tables() -> None:
    with db.atomic():
        if not is_sqlite():
            # Two processes starting at once on one PostgreSQL would race on CREATE TABLE IF
            # NOT EXISTS (duplicate pg_type rows); the advisory lock makes it one at a time.
            db.execute_sql("SELECT pg_advisory_xact_lock(7297812)")
        db.create_tables(all_models(), safe=True)
