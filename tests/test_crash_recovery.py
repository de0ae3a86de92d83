"""SIGKILL during a 1,000-message batch: after a restart every message ends in exactly one
terminal state and none is sent twice (the message row is the truth, queue tasks only nudges)."""
from __future__ import annotations

import time

from conftest import wait_for


def test_sigkill_during_a_1000_message_batch_loses_nothing_and_sends_nothing_twice(server_factory):
    srv = server_factory(sandbox=True, sandbox_delay_ms=40, sweep_interval=0.2)
    api = srv.api()
    items = [{"to": f"+92301{5000 + i:07d}", "body": f"order {i} is ready"} for i in range(1000)]
    r = api.post("/sms/batch", json={"messages": items}, headers={"Idempotency-Key": "crash-batch"})
    assert r.status_code == 202, r.text
    batch_id = r.json()["data"]["batch_id"]

    def sent_so_far() -> int:
        return srv.sql("SELECT COUNT(*) FROM message_event WHERE status = 'sent'")[0][0]

    # Kill while the radio is half way: some sent, some delivered, some still waiting.
    wait_for(lambda: sent_so_far() >= 50, timeout=30, message="some messages sent")
    srv.kill()
    before = dict(srv.sql("SELECT status, COUNT(*) FROM message GROUP BY status"))
    assert sum(before.values()) == 1000
    assert before.get("delivered", 0) < 1000, f"kill came too late to prove anything: {before}"

    srv.start()
    # The client retries with the same key after the crash: replayed, nothing new accepted.
    again = srv.api().post("/sms/batch", json={"messages": items}, headers={"Idempotency-Key": "crash-batch"})
    assert again.status_code == 202 and again.json()["data"]["batch_id"] == batch_id
    wait_for(lambda: srv.api().get(f"/sms/batch/{batch_id}").json()["data"]["status"] == "completed",
             timeout=90, message="batch completed after restart")

    assert srv.sql("SELECT COUNT(*) FROM message")[0][0] == 1000
    statuses = dict(srv.sql("SELECT status, COUNT(*) FROM message GROUP BY status"))
    assert statuses == {"delivered": 1000}, statuses
    dup_sends = srv.sql("""SELECT message_id, COUNT(*) FROM message_event WHERE status = 'sent'
                           GROUP BY message_id HAVING COUNT(*) <> 1""")
    assert dup_sends == []
    assert srv.sql("SELECT COUNT(*) FROM message_event WHERE status = 'sent'")[0][0] == 1000
    terminal = srv.sql("""SELECT message_id, COUNT(*) FROM message_event
                          WHERE status IN ('delivered','failed','undelivered','expired','cancelled')
                          GROUP BY message_id""")
    assert len(terminal) == 1000 and all(n == 1 for _, n in terminal)
    assert tuple(srv.sql("SELECT MAX(attempts), MIN(attempts) FROM message")[0]) == (1, 1)
    print(f"\nkilled with {before}; after restart all 1000 delivered, each sent once")


def test_sigkill_while_accepting_a_batch_is_all_or_nothing(server_factory):
    srv = server_factory(sandbox=True, sandbox_delay_ms=0)
    api = srv.api()
    items = [{"to": f"+92301{7000 + i:07d}", "body": "x"} for i in range(1000)]
    import threading

    t = threading.Thread(target=lambda: _swallow(lambda: api.post("/sms/batch", json={"messages": items})))
    t.start()
    time.sleep(0.15)
    srv.kill()
    t.join(30)
    n = srv.sql("SELECT COUNT(*) FROM message")[0][0]
    batches = tuple(srv.sql("SELECT COUNT(*), COALESCE(SUM(total), 0) FROM batch")[0])
    assert n in (0, 1000), n
    assert batches == ((0, 0) if n == 0 else (1, 1000))


def _swallow(fn):
    try:
        fn()
    except Exception:  # noqa: BLE001 - the server was killed under the request
        pass
