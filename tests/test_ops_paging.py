"""relaybox.paging: bucketed counts kept by triggers give the same pages and totals as the plain
COUNT/OFFSET query, through inserts, status changes and deletions (real SQLite file)."""
from __future__ import annotations

import random

import pytest
from ulid import ULID

from relaybox import paging
from relaybox.db import create_tables, db, open_database, write_tx
from relaybox.models import Account, Message
from relaybox.timeutil import now_ms

STATUSES = ["queued", "dispatched", "sent", "delivered", "failed", "received"]


@pytest.fixture
def database(tmp_path):
    open_database(f"sqlite:///{tmp_path / 'p.db'}")
    create_tables()
    now = now_ms()
    for acc in ("acc_a", "acc_b"):
        Account.create(id=acc, name=acc, api_enabled=True, created_at=now, settings={})
    yield
    db.close()


def _insert(n: int, rnd: random.Random, start_ms: int) -> list[str]:
    rows = []
    for i in range(n):
        at = start_ms + i * 600_000 + rnd.randrange(0, 1000)  # 10 minutes apart: many buckets
        mid = rnd.choice(["req_", "inb_"]) + str(ULID.from_timestamp(at / 1000))
        direction = "inbound" if mid.startswith("inb_") else "outbound"
        rows.append(dict(id=mid, account=rnd.choice(["acc_a", "acc_a", "acc_b"]), client_reference_id=mid,
                         direction=direction, to_number="+923001234567", body="x",
                         status=rnd.choice(STATUSES), created_at=at, updated_at=at))
    with write_tx():
        Message.insert_many(rows).execute()
    return [r["id"] for r in rows]


def _naive(account: str, direction: str | None, status: str | None, page: int, limit: int):
    q = Message.select(Message.id).where(Message.account == account)
    if direction:
        q = q.where(Message.direction == direction)
    if status:
        q = q.where(Message.status == status)
    q = q.order_by(Message.id.desc())
    return [m.id for m in q.offset((page - 1) * limit).limit(limit)], q.count()


def _check_everything(rnd: random.Random) -> int:
    checked = 0
    for account in ("acc_a", "acc_b"):
        for direction in (None, "inbound", "outbound"):
            for status in (None, *STATUSES):
                _, total = _naive(account, direction, status, 1, 1)
                limit = rnd.choice([1, 7, 25, 100])
                last = max(1, -(-total // limit))
                for page in {1, 2, last, last + 1, rnd.randint(1, last)}:
                    rows, t, more = paging.message_page(account, direction, status, page, limit)
                    expect, et = _naive(account, direction, status, page, limit)
                    assert [m.id for m in rows] == expect, (account, direction, status, page, limit)
                    assert t == et and more == ((page - 1) * limit + len(expect) < et)
                    checked += 1
    return checked


def test_pages_and_totals_match_count_offset_through_inserts_updates_and_deletes(database):
    rnd = random.Random(5)
    start = now_ms() - 30 * 86_400_000
    ids = _insert(1500, rnd, start)  # before the triggers: backfilled on install
    assert paging.install()
    _check_everything(rnd)

    ids += _insert(700, rnd, start + 1500 * 600_000)  # through the insert trigger
    for mid in rnd.sample(ids, 400):  # status changes (the update trigger)
        Message.update(status=rnd.choice(STATUSES)).where(Message.id == mid).execute()
    with write_tx():
        for mid in rnd.sample(ids, 150):
            Message.update(account="acc_b" if rnd.random() < 0.5 else "acc_a").where(Message.id == mid).execute()
        for mid in rnd.sample(ids, 100):  # account and status at once
            Message.update(account=rnd.choice(["acc_a", "acc_b"]), status=rnd.choice(STATUSES)) \
                .where(Message.id == mid).execute()
    gone = rnd.sample(ids, 300)  # deletions (retention)
    Message.delete().where(Message.id << gone).execute()
    assert _check_everything(rnd) > 100
    # Counts never go negative or leave stale rows behind that matter.
    assert db.execute_sql("SELECT COUNT(*) FROM message_bucket WHERE n < 0").fetchone()[0] == 0
    total = db.execute_sql("SELECT SUM(n) FROM message_bucket WHERE direction = '*' AND status = '*'").fetchone()[0]
    assert total == Message.select().count()


def test_install_is_idempotent_and_survives_reopening(database, tmp_path):
    rnd = random.Random(9)
    _insert(50, rnd, now_ms() - 86_400_000)
    assert paging.install() and paging.install()
    paging._installed.clear()
    assert paging.install()  # triggers found: no second backfill
    assert db.execute_sql("SELECT SUM(n) FROM message_bucket WHERE direction='*' AND status='*'").fetchone()[0] == 50


def test_an_older_data_dirs_update_trigger_is_replaced_without_losing_counts(database):
    """Data dirs from before the status-only trigger have one update trigger doing eight
    statements; install() swaps it for the two new ones and keeps the counts it maintained."""
    rnd = random.Random(11)
    with write_tx():
        db.execute_sql(paging.TABLE)
        for name in ("message_bucket_ai", "message_bucket_ad"):
            db.execute_sql(f"CREATE TRIGGER {name} {paging.TRIGGERS[name]}")
        db.execute_sql(
            "CREATE TRIGGER message_bucket_au AFTER UPDATE OF account_id, direction, status, id ON message "
            "WHEN OLD.account_id IS NOT NEW.account_id OR OLD.direction IS NOT NEW.direction "
            "OR OLD.status IS NOT NEW.status OR OLD.id IS NOT NEW.id BEGIN\n"
            f"{paging._bump('OLD', '-')}\n{paging._bump('NEW', '+')}\nEND")
    ids = _insert(300, rnd, now_ms() - 10 * 86_400_000)
    with write_tx():
        for mid in rnd.sample(ids, 80):  # kept by the old trigger
            Message.update(status=rnd.choice(STATUSES)).where(Message.id == mid).execute()
        db.execute_sql("UPDATE message_bucket SET n = n + 1000 WHERE status = 'failed'")  # a marker:
    # a backfill would wipe it, so it shows that install() kept the counts it found.
    assert paging.install()
    names = {r[0] for r in db.execute_sql("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall()}
    assert "message_bucket_au" not in names and set(paging.TRIGGERS) <= names
    assert db.execute_sql("SELECT MIN(n) FROM message_bucket WHERE status = 'failed'").fetchone()[0] >= 1000
    db.execute_sql("UPDATE message_bucket SET n = n - 1000 WHERE status = 'failed'")
    with write_tx():
        for mid in rnd.sample(ids, 120):  # kept by the new triggers
            Message.update(status=rnd.choice(STATUSES)).where(Message.id == mid).execute()
    assert _check_everything(rnd) > 50


def test_single_column_indexes_a_composite_covers_are_dropped_and_plans_still_use_an_index(database):
    from relaybox.db import RETIRED_INDEXES, create_tables

    with write_tx():  # as a data dir from an earlier version has them
        db.execute_sql('CREATE INDEX "message_account_id" ON "message" ("account_id")')
        db.execute_sql('CREATE INDEX "message_batch_id" ON "message" ("batch_id")')
        db.execute_sql('CREATE INDEX "message_event_message_id" ON "message_event" ("message_id")')
    create_tables()
    names = {r[0] for r in db.execute_sql("SELECT name FROM sqlite_master WHERE type = 'index'").fetchall()}
    assert not names & set(RETIRED_INDEXES)
    # The lookups those indexes served (and the foreign keys' cascades) still use an index.
    for sql in ("SELECT id FROM message WHERE account_id = 'acc_a'",
                "SELECT id FROM message WHERE batch_id = 'bat_x'",
                "SELECT id FROM message_event WHERE message_id = 'req_x'"):
        plan = " ".join(str(r[-1]) for r in db.execute_sql("EXPLAIN QUERY PLAN " + sql).fetchall())
        assert "USING" in plan and "INDEX" in plan, (sql, plan)
