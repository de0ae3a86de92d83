"""Group commit (``relaybox.db.group_write``) on a real SQLite file: concurrent callers share
commits, each gets its own result or error back, and one caller's error undoes only its writes."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable

import peewee as pw
import pytest

from relaybox import db as dbmod
from relaybox.db import group_write, open_database, write_tx


class Thing(pw.Model):  # not a relaybox model: the app's table creation never sees it
    name = pw.CharField(unique=True)

    class Meta:
        database = dbmod.db


def _wait_queued(n: int) -> None:
    deadline = time.monotonic() + 10
    while len(dbmod._group_pending) < n:
        assert time.monotonic() < deadline, f"only {len(dbmod._group_pending)} of {n} writers queued"
        time.sleep(0.005)


def _queue_up(worker: Callable[[int], None], n: int) -> None:
    """Run ``worker(0..n-1)`` in threads that all queue behind a held writer lock, so they
    must share commits; returns when they are done."""
    with write_tx():
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        _wait_queued(n)
    for t in threads:
        t.join(10)


@pytest.fixture
def database(tmp_path):
    database = open_database(f"sqlite:///{tmp_path / 'g.db'}")
    database.create_tables([Thing])
    yield database
    database.close()


def test_concurrent_writers_share_commits_and_each_gets_its_own_answer(database, monkeypatch):
    batches: list[int] = []
    real = dbmod._run_group

    def counting(batch):
        batches.append(len(batch))
        return real(batch)

    monkeypatch.setattr(dbmod, "_run_group", counting)
    results: dict[int, object] = {}
    gate = threading.Barrier(16)

    def worker(i: int) -> None:
        gate.wait()

        def write() -> int:
            Thing.create(name=f"t{i}")
            if i % 5 == 0:
                raise ValueError(f"job {i} refuses")
            return i * 10

        try:
            results[i] = group_write(write)
        except ValueError as exc:
            results[i] = str(exc)

    _queue_up(worker, 16)
    assert results == {i: (f"job {i} refuses" if i % 5 == 0 else i * 10) for i in range(16)}
    assert sum(batches) == 16 and len(batches) < 16  # fewer commits than writers
    names = {t.name for t in Thing.select()}
    assert names == {f"t{i}" for i in range(16) if i % 5}  # a failing job's insert is undone


def test_a_failed_commit_reaches_every_writer_and_nothing_is_kept(database):
    # A deferred foreign key is checked at COMMIT: one bad job makes the shared commit fail.
    database.execute_sql("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
    database.execute_sql("CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER "
                         "REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)")
    errors: dict[int, Exception] = {}

    def worker(i: int) -> None:
        def write() -> None:
            Thing.create(name=f"c{i}")
            if i == 3:
                database.execute_sql("INSERT INTO child (parent_id) VALUES (42)")  # no parent 42

        try:
            group_write(write)
        except pw.IntegrityError as exc:
            errors[i] = exc

    _queue_up(worker, 6)
    assert sorted(errors) == list(range(6))  # every writer of that commit is told
    assert len({id(e) for e in errors.values()}) == 6  # each its own exception object
    assert Thing.select().count() == 0


def test_inside_a_transaction_it_runs_inline(database):
    with write_tx():
        assert group_write(lambda: Thing.create(name="inline").name) == "inline"
    assert Thing.get(Thing.name == "inline")
