"""Retention: finished messages (and their timeline, events, webhook attempts) older than
``retention_days`` are pruned by the periodic sweeper of a running server."""
from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

from conftest import wait_for
from ops_support import Receiver, free_port, server_db


def _clock(path, offset_ms: int) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(str(offset_ms))
    os.replace(tmp, path)


def test_retention_prunes_finished_messages_and_their_logs_but_keeps_open_and_recent_ones(server_factory, tmp_path):
    clock = tmp_path / "clock"
    _clock(clock, 0)
    srv = server_factory(sandbox=True, sandbox_delay_ms=20, retention_days=1, retention_interval=0.5,
                         test_clock_file=str(clock))
    receiver = Receiver(free_port())
    receiver.up()
    try:
        api = srv.api()
        assert api.put("/webhooks", json={"status_url": f"http://127.0.0.1:{receiver.port}/h"}).status_code == 200
        old = [api.post("/sms/send", json={"to": to, "body": "old"}).json()["data"]["id"]
               for to in ("+923001234567", "+923001234568", "+923001230001", "+923001230003")]
        later = (datetime.now(UTC) + timedelta(days=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
        scheduled = api.post("/sms/send", json={"to": "+923001234569", "body": "later", "send_at": later}
                             ).json()["data"]["id"]

        def finished() -> bool:
            st = [api.get(f"/sms/{i}").json()["data"]["status"] for i in old]
            return st.count("delivered") == 2 and "failed" in st and "sent" in st

        wait_for(finished, timeout=30, message="old messages finished")
        db = server_db(srv)
        marks = ",".join("?" * len(old))

        def all_delivered() -> bool:
            # Every status webhook of the old messages (4+4+3+3) has been delivered: a delivery
            # still pending when the clock jumps is not finished, so retention rightly keeps it.
            total = db.scalar(f"SELECT COUNT(*) FROM webhook_delivery WHERE message_id IN ({marks})", tuple(old))
            done = db.scalar(f"SELECT COUNT(*) FROM webhook_delivery WHERE message_id IN ({marks}) "
                             "AND state = 'succeeded'", tuple(old))
            return total >= 14 and done == total

        wait_for(all_delivered, timeout=30, message="webhooks delivered")
        assert db.scalar(f"SELECT COUNT(*) FROM message_event WHERE message_id IN ({marks})", tuple(old)) > 0

        _clock(clock, 2 * 86_400_000)  # two days later
        recent = api.post("/sms/send", json={"to": "+923001234570", "body": "new"}).json()["data"]["id"]
        wait_for(lambda: all(api.get(f"/sms/{i}").status_code == 404 for i in old), timeout=30,
                 message="old messages pruned")
        assert api.get(f"/sms/{scheduled}").json()["data"]["status"] == "scheduled"
        assert api.get(f"/sms/{recent}").status_code == 200
        assert db.scalar(f"SELECT COUNT(*) FROM message_event WHERE message_id IN ({marks})", tuple(old)) == 0
        assert db.scalar(f"SELECT COUNT(*) FROM event WHERE message_id IN ({marks})", tuple(old)) == 0
        assert db.scalar(f"SELECT COUNT(*) FROM webhook_delivery WHERE message_id IN ({marks})", tuple(old)) == 0
        assert db.scalar("SELECT COUNT(*) FROM webhook_attempt a LEFT JOIN webhook_delivery d "
                         "ON a.delivery_id = d.id WHERE d.id IS NULL") == 0
        assert db.scalar("SELECT COUNT(*) FROM message_event WHERE message_id = ?", (scheduled,)) == 2
        assert "retention: deleted" in srv.log()
    finally:
        receiver.down()


def test_retention_off_by_default_keeps_everything(server_factory, tmp_path):
    clock = tmp_path / "clock"
    _clock(clock, 0)
    srv = server_factory(sandbox=True, sandbox_delay_ms=20, test_clock_file=str(clock))
    api = srv.api()
    mid = api.post("/sms/send", json={"to": "+923001234567", "body": "keep"}).json()["data"]["id"]
    wait_for(lambda: api.get(f"/sms/{mid}").json()["data"]["status"] == "delivered", timeout=30)
    _clock(clock, 400 * 86_400_000)
    import time

    time.sleep(2.5)
    assert api.get(f"/sms/{mid}").status_code == 200
