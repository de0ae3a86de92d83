"""The database handle: one peewee proxy, bound at start-up to SQLite (default) or PostgreSQL.

SQLite runs in WAL mode with ``synchronous=NORMAL`` and a busy timeout; writes take the lock up
front (``BEGIN IMMEDIATE``) so two writers never deadlock on a lock upgrade.
"""
from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import peewee

db = peewee.DatabaseProxy()

# Every thread has its own connection (24 waitress threads by default, plus the queue's), and
# SQLite's page cache is per connection: 4 MB each bounds the worst case at ~120 MB on a 1 GB Pi
# (16 MB each could reach ~450 MB). The kernel's page cache still holds the file once for all of
# them, so a large database pages in fast (bench/growth.py, 1,000,000 messages: p99 <= 7 ms).
# No mmap: its pages would count in the process's resident size (idle RSS +1 MB measured).
SQLITE_PRAGMAS = {
    "journal_mode": "wal",
    "synchronous": "normal",
    "busy_timeout": 10000,
    "foreign_keys": 1,
    "cache_size": -4000,
}


def open_database(url: str) -> peewee.Database:
    """Connect (lazily, per thread) and bind the proxy."""
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]
        if path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        database = peewee.SqliteDatabase(path, pragmas=SQLITE_PRAGMAS, timeout=10)
    else:
        # PostgreSQL only: an SQLite box never loads the URL parser and its drivers.
        from playhouse.db_url import connect

        database = connect(url)
    db.initialize(database)
    return database


def is_sqlite() -> bool:
    return isinstance(db.obj, peewee.SqliteDatabase)


# SQLite allows one writer at a time. Its busy handler waits by sleeping (up to 100 ms a
# nap), which turns contention between our own threads into latency spikes; a process-wide
# lock queues our writers instead and wakes the next one at once. BEGIN IMMEDIATE still guards
# against other processes (backup, CLI).
_sqlite_write_lock = threading.RLock()


@contextmanager
def write_tx() -> Iterator[Any]:
    """A write transaction; on SQLite serialised in-process and IMMEDIATE (lock taken at BEGIN)."""
    if not is_sqlite():
        with db.atomic() as tx:
            yield tx
        return
    with _sqlite_write_lock, db.atomic("IMMEDIATE") as tx:
        yield tx


T = TypeVar("T")


class _Job:
    __slots__ = ("done", "error", "fn", "result")

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn, self.result, self.error, self.done = fn, None, None, False


_group_mutex = threading.Lock()
_group_pending: list[_Job] = []


def group_write(fn: Callable[[], T]) -> T:
    """Run ``fn`` in a write transaction, sharing one commit with concurrent callers (SQLite).

    Group commit: API requests that arrive while another thread holds the writer lock queue
    their work; whichever thread takes the lock next runs every queued ``fn`` (each in its own
    savepoint, so one request's error rolls back only its own writes) and commits once. On
    SQLite a commit, not the inserts, is most of an accept's cost, and one commit for twenty
    requests frees the single writer twenty times sooner. ``fn`` may run on another thread:
    it must not touch Flask's request context (capture what it needs first). Its return value
    or exception comes back to the caller. On PostgreSQL, or inside a transaction, this is
    simply :func:`write_tx`.
    """
    if not is_sqlite() or db.in_transaction():
        with write_tx():
            return fn()
    job = _Job(fn)
    with _group_mutex:
        _group_pending.append(job)
    with _sqlite_write_lock:
        if not job.done:
            with _group_mutex:
                batch = _group_pending[:]
                _group_pending.clear()
            _run_group(batch)
    if job.error is not None:
        raise job.error
    return job.result  # type: ignore[return-value]


def _run_group(batch: list[_Job]) -> None:
    try:
        with db.atomic("IMMEDIATE"):
            for job in batch:
                try:
                    with db.atomic():  # a savepoint
                        job.result = job.fn()
                except Exception as exc:  # noqa: BLE001 - handed to the job's own thread
                    job.error = exc
    except BaseException as exc:  # BEGIN or COMMIT failed (locked, disk full): nothing was written
        for job in batch:
            job.result = None
            if job.error is None:
                # One exception object per waiting thread (raising a shared one from several
                # threads would tangle their tracebacks).
                try:
                    job.error = type(exc)(*exc.args)
                except Exception:  # noqa: BLE001
                    job.error = exc
        if not isinstance(exc, Exception):
            raise
    finally:
        for job in batch:
            job.done = True


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


_insert_plan: dict[str, tuple[str, list[tuple[str, Any, Any, tuple[type, ...]]]]] = {}
# Field types whose db_value only coerces: a value already of the stored Python type goes as is.
_PLAIN: tuple[tuple[type, tuple[type, ...]], ...] = (
    (peewee.BooleanField, (bool,)),
    (peewee.IntegerField, (int,)),  # BigIntegerField, SmallIntegerField too
    (peewee.FloatField, (float, int)),
    (peewee.CharField, (str,)),
    (peewee.TextField, (str,)),
)


def _plan(model: type[peewee.Model]) -> tuple[str, list[tuple[str, Any, Any, tuple[type, ...]]]]:
    key = model._meta.table_name
    plan = _insert_plan.get(key)
    if plan is None:
        # Every column, so fields added later get their Python-side defaults (peewee puts no
        # DEFAULT in the schema).
        fields = [f for f in model._meta.sorted_fields if not isinstance(f, peewee.AutoField)]
        cols = ", ".join(f'"{f.column_name}"' for f in fields)
        marks = ", ".join([db.obj.param] * len(fields))
        sql = f'INSERT INTO "{key}" ({cols}) VALUES ({marks})'
        steps = []
        for f in fields:
            target = f.rel_field if isinstance(f, peewee.ForeignKeyField) else f
            plain: tuple[type, ...] = ()
            if not isinstance(target, JSONField):
                plain = next((types for cls, types in _PLAIN if isinstance(target, cls)), ())
            steps.append((f.name, f.default, f.db_value, plain))
        plan = _insert_plan[key] = (sql, steps)
    return plan


def fast_insert(model: type[peewee.Model], rows: list[dict[str, Any]]) -> None:
    """INSERT many rows with one cached statement and ``executemany``.

    The accept path writes three rows per message; building each statement with peewee's
    query compiler cost more than the write itself. Values go through each field's
    ``db_value`` (unless already of the type it would coerce to), so JSON and booleans are
    stored exactly as peewee would store them.
    """
    if not rows:
        return
    sql, steps = _plan(model)
    values = []
    for r in rows:
        row = []
        for name, default, db_value, plain in steps:
            v = r[name] if name in r else (default() if callable(default) else default)
            row.append(v if v is None or type(v) in plain else db_value(v))
        values.append(tuple(row))
    db.cursor().executemany(sql, values)


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


#: Indexes earlier versions created that a composite index now covers (dropped on start).
RETIRED_INDEXES = ("message_account_id", "message_batch_id", "message_event_message_id")


def create_tables() -> None:
    if is_sqlite():
        with db.atomic():
            db.create_tables(all_models(), safe=True)
            _drop_retired_indexes({r[0] for r in db.execute_sql(
                "SELECT name FROM sqlite_master WHERE type = 'index'").fetchall()})
        return
    with db.atomic():
        # Two processes starting at once on one PostgreSQL would race on CREATE TABLE IF NOT
        # EXISTS (duplicate pg_type rows); the advisory lock makes it one at a time. Only what
        # is missing is created: CREATE INDEX IF NOT EXISTS still takes a SHARE lock on its
        # table, which deadlocks against another process already serving from it.
        db.execute_sql("SELECT pg_advisory_xact_lock(7297812)")
        tables = set(db.get_tables())
        indexes = {r[0] for r in db.execute_sql(
            "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()").fetchall()}
        for model in peewee.sort_models(all_models()):
            if model._meta.table_name not in tables:
                model.create_table(safe=True)
                continue
            for index in model._meta.fields_to_index():
                if index._name not in indexes:
                    db.execute(model._schema._create_index(index, safe=True))
        _drop_retired_indexes(indexes)


def _drop_retired_indexes(have: set[str]) -> None:
    """Drop the :data:`RETIRED_INDEXES` among ``have`` (the database's index names): only what
    exists, since on PostgreSQL DROP INDEX locks its table like CREATE INDEX above."""
    for name in set(RETIRED_INDEXES) & have:
        db.execute_sql(f'DROP INDEX IF EXISTS "{name}"')
