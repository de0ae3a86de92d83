"""Fast ``GET /messages`` pages at any depth: bucketed counts kept by SQLite triggers.

``COUNT(*)`` and ``OFFSET n`` both walk every row before the answer, so with a million messages
a deep page (or any ``total``) costs tens to hundreds of milliseconds. Message ids are
``<prefix>_<ULID>``, so they sort by time, and every id sharing its first five ULID characters
falls in one ~2.3-hour *bucket* (a prefix of the id, so buckets sort exactly like ids).

Triggers on ``message`` keep ``message_bucket(account_id, direction, status, bucket, n)``
exact inside every writer's own transaction (the API, the channels, retention, any CLI), with
``'*'`` rows for "any direction" / "any status". A page then costs one short range scan of that
table (total, and which bucket the offset falls in) plus a keyset query inside one bucket:
``id < <bucket>~ ORDER BY id DESC LIMIT n OFFSET <rest of the offset within the bucket>``.
Both run in one read transaction, so ``total`` and the rows always agree.

SQLite only (the appliance's database; the growth target is measured there). On PostgreSQL the
plain ``COUNT``/``OFFSET`` query is used.
"""
from __future__ import annotations

import logging
from typing import Any

from relaybox.db import db, is_sqlite, write_tx
from relaybox.models import Message

log = logging.getLogger("relaybox.paging")

ANY = "*"
_BUCKET = "substr({r}.id, 1, length({r}.id) - 21)"  # "<prefix>_" + the first 5 ULID characters
_installed: dict[tuple[int, str], bool] = {}


def _bump(row: str, sign: str, any_status: bool = True) -> str:
    """Statements adding ``sign``1 to the four (direction|*, status|*) rows of ``row`` (NEW/OLD);
    without ``any_status`` only to the two rows of its own status."""
    bucket = _BUCKET.format(r=row)
    out = []
    for direction in (f"{row}.direction", f"'{ANY}'"):
        for status in (f"{row}.status", f"'{ANY}'")[:2 if any_status else 1]:
            if sign == "+":
                out.append(
                    "INSERT INTO message_bucket (account_id, direction, status, bucket, n) "
                    f"VALUES ({row}.account_id, {direction}, {status}, {bucket}, 1) "
                    "ON CONFLICT (account_id, direction, status, bucket) DO UPDATE SET n = n + 1;")
            else:
                out.append(
                    "UPDATE message_bucket SET n = n - 1 "
                    f"WHERE account_id = {row}.account_id AND direction = {direction} "
                    f"AND status = {status} AND bucket = {bucket};")
    return "\n".join(out)


_SAME_KEY = "OLD.account_id IS NEW.account_id AND OLD.direction IS NEW.direction AND OLD.id IS NEW.id"
TABLE = ("CREATE TABLE IF NOT EXISTS message_bucket (account_id TEXT NOT NULL, direction TEXT NOT NULL, "
         "status TEXT NOT NULL, bucket TEXT NOT NULL, n INTEGER NOT NULL, "
         "PRIMARY KEY (account_id, direction, status, bucket)) WITHOUT ROWID")
TRIGGERS = {
    "message_bucket_ai": f"AFTER INSERT ON message BEGIN\n{_bump('NEW', '+')}\nEND",
    "message_bucket_ad": f"AFTER DELETE ON message BEGIN\n{_bump('OLD', '-')}\nEND",
    # A status change (every transition) leaves the "any status" rows as they are: four
    # statements, not eight.
    "message_bucket_au_status": (
        f"AFTER UPDATE OF status ON message WHEN OLD.status IS NOT NEW.status AND {_SAME_KEY} BEGIN\n"
        f"{_bump('OLD', '-', any_status=False)}\n{_bump('NEW', '+', any_status=False)}\nEND"),
    "message_bucket_au_key": (
        f"AFTER UPDATE OF account_id, direction, status, id ON message WHEN NOT ({_SAME_KEY}) BEGIN\n"
        f"{_bump('OLD', '-')}\n{_bump('NEW', '+')}\nEND"),
}
#: Update triggers of earlier versions, replaced by the two above (the counts stay valid).
_RETIRED = ("message_bucket_au",)


def install() -> bool:
    """Create the bucket table and triggers (SQLite), backfilling from existing rows once."""
    if not is_sqlite():
        return False
    key = (id(db.obj), str(db.obj.database))
    if _installed.get(key):
        return True
    with write_tx():
        have = {r[0] for r in db.execute_sql(
            "SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'message_bucket_%'").fetchall()}
        for name in have & set(_RETIRED):
            db.execute_sql(f"DROP TRIGGER {name}")
        counted = {"message_bucket_ai", "message_bucket_ad"} <= have  # counts kept so far
        db.execute_sql(TABLE)
        for name, body in TRIGGERS.items():
            if name not in have:
                db.execute_sql(f"CREATE TRIGGER {name} {body}")
        if not counted:
            db.execute_sql("DELETE FROM message_bucket")
            bucket = _BUCKET.format(r="message")
            db.execute_sql(
                "INSERT INTO message_bucket (account_id, direction, status, bucket, n) "
                "SELECT account_id, CASE WHEN any_d THEN '*' ELSE d0 END, CASE WHEN any_s THEN '*' ELSE s0 END, "
                "b, SUM(c) FROM ("
                f"  SELECT account_id, direction AS d0, status AS s0, {bucket} AS b, COUNT(*) AS c "
                "  FROM message GROUP BY 1, 2, 3, 4) AS g, "
                "  (SELECT 0 AS any_d UNION ALL SELECT 1) AS x1, (SELECT 0 AS any_s UNION ALL SELECT 1) AS x2 "
                "GROUP BY 1, 2, 3, 4")
            log.info("message_bucket: triggers installed and counts backfilled")
    _installed[key] = True
    return True


def _buckets(account_id: str, direction: str | None, status: str | None) -> list[tuple[str, int]]:
    return [(b, n) for b, n in db.execute_sql(
        "SELECT bucket, n FROM message_bucket WHERE account_id = ? AND direction = ? AND status = ? AND n > 0 "
        "ORDER BY bucket DESC", (account_id, direction or ANY, status or ANY)).fetchall()]


def message_page(account_id: str, direction: str | None, status: str | None, page: int,
                 limit: int) -> tuple[list[Message], int, bool]:
    """One page of an account's messages, newest first: (rows, total, has_more)."""
    where = Message.account == account_id
    if direction:
        where &= Message.direction == direction
    if status:
        where &= Message.status == status
    offset = (page - 1) * limit
    if not install():
        q = Message.select().where(where).order_by(Message.id.desc())
        total = q.count()
        rows = list(q.offset(offset).limit(limit))
        return rows, total, offset + len(rows) < total
    with db.atomic():  # one read snapshot: the total and the rows agree
        buckets = _buckets(account_id, direction, status)
        total = sum(n for _, n in buckets)
        rows: list[Any] = []
        if offset < total:
            skip = offset
            upper = None
            for bucket, n in buckets:
                if skip < n:
                    upper = bucket
                    break
                skip -= n
            q = (Message.select().where(where & (Message.id < upper + "~"))
                 .order_by(Message.id.desc()).offset(skip).limit(limit))
            rows = list(q)
    return rows, total, offset + len(rows) < total
