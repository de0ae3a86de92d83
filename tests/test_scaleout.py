"""Scale-out: two relaybox processes on one PostgreSQL database and one Redis queue.

Each process has its own sandbox channel instance (same channel id), so every message could be
claimed by either; the conditional UPDATE of the claim and the row lock of each transition are
what keep it exactly once. Needs PostgreSQL and Redis on loopback (.ci/services.sh); skipped
with the reason when they are not there.
"""
from __future__ import annotations

import subprocess
import sys
import uuid

import pytest
import requests
from conftest import fresh_postgres_url, fresh_redis_url
from ops_support import (
    Db,
    Load,
    audit,
    postgres_or_skip,
    redis_or_skip,
    time_until,
    wait_all_finished,
)
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def shared(tmp_path):
    pg = postgres_or_skip()
    rq = redis_or_skip()
    cleanups: list = []
    db_url = fresh_postgres_url(pg, cleanups)
    yield {"database": db_url, "queue": fresh_redis_url(rq), "secret": "scaleout-" + uuid.uuid4().hex}
    for drop in cleanups:
        drop()


def _sent_by(srv) -> float:
    text = requests.get(srv.url + "/metrics", timeout=10).text
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "relaybox_message_transitions_total" and s.labels.get("status") == "sent":
                return s.value
    return 0.0


def test_two_processes_share_postgres_and_redis_and_send_each_message_exactly_once(server_factory, shared):
    common = dict(sandbox=True, sandbox_delay_ms=30, **shared)
    a = server_factory(**common)
    b = server_factory(**common)
    assert b.key is None  # the database was initialised by a: one owner, one key for both
    b.key = a.key
    try:
        # A message accepted by one process is visible through the other at once.
        mid = a.api().post("/sms/send", json={"to": "+923001234567", "body": "via a"}).json()["data"]["id"]
        assert b.api().get(f"/sms/{mid}").status_code == 200

        la = Load(a.url, a.key, threads=3).start()
        lb = Load(b.url, b.key, threads=3).start()
        time_until(lambda: len(la.accepted) + len(lb.accepted) >= 80, timeout=90)
        # Kill -9 one process mid-load; the other keeps serving; then bring it back.
        a.kill()
        la.stop()
        n_b = len(lb.accepted)
        time_until(lambda: len(lb.accepted) >= n_b + 20, timeout=60)
        a.start(port=a.port)
        time_until(lambda: len(lb.accepted) >= n_b + 40, timeout=60)
        lb.stop()
        assert not la.errors and not lb.errors, (la.errors[:3], lb.errors[:3])
        assert 500 not in la.statuses and 500 not in lb.statuses

        db = Db(shared["database"])
        accepted = la.ids | lb.ids | {mid}
        final = wait_all_finished(db, timeout=120)
        result = audit(db, accepted)
        sent_a, sent_b = _sent_by(a), _sent_by(b)
        print(f"\n[scaleout] accepted via a={len(la.ids)} via b={len(lb.ids)} "
              f"sent by b={sent_b:.0f} by a after restart={sent_a:.0f} audit={final.summary()}")
        assert result.missing == [], "accepted messages lost"
        assert result.sent_twice == [] and result.claimed_twice == [], "a message went out twice"
        assert final.by_status == {"delivered": final.messages}
        assert final.messages >= len(accepted)
        assert sent_b > 0  # b did real work, not only a
    finally:
        a.stop()
        b.stop()


def test_init_on_postgres_twice_at_once_creates_one_schema_and_one_owner(shared, tmp_path):
    env = {"RELAYBOX_DATABASE": shared["database"], "RELAYBOX_SECRET": shared["secret"], "PATH": "/usr/bin:/bin"}
    procs = [subprocess.Popen([sys.executable, "-m", "relaybox.cli", "init", "--json", "--data-dir",
                               str(tmp_path / f"d{i}")], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [o[1][-500:] for o in outs]
    keys = [o[0].strip() for o in outs if o[0].strip()]
    assert len(keys) == 1, outs  # exactly one process created the owner and printed its key
    db = Db(shared["database"])
    assert db.scalar("SELECT COUNT(*) FROM account WHERE is_owner") == 1
    res = subprocess.run([sys.executable, "-m", "relaybox.cli", "doctor", "--data-dir", str(tmp_path / "d0")],
                         env=env, capture_output=True, text=True, timeout=60, check=False)
    assert "[ok  ] database: 127.0.0.1" in res.stdout, res.stdout
    assert shared["database"].split("@")[0] not in res.stdout  # user and password never printed
