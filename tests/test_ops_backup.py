"""``relaybox backup`` under load (SQLite online backup API) and ``relaybox restore``."""
from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys

import pytest
from conftest import wait_for
from ops_support import Db, Load, audit, time_until, wait_all_finished


def _cli(srv, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "relaybox.cli", args[0], "--data-dir", str(srv.data_dir), *args[1:]]
    return subprocess.run(cmd, env=srv.env, capture_output=True, text=True, timeout=120, check=False)


def _consistent(path) -> int:
    """Every message in the copy has its whole timeline (one row per sequence step): the copy is
    one transaction-consistent snapshot, taken while the server wrote. Returns the count."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        broken = con.execute(
            "SELECT m.id, m.sequence, COUNT(e.id) FROM message m LEFT JOIN message_event e ON e.message_id = m.id "
            "GROUP BY m.id HAVING COUNT(e.id) != m.sequence").fetchall()
        assert broken == [], broken[:5]
        assert con.execute("SELECT secret FROM relaybox_backup").fetchone()[0]
        return con.execute("SELECT COUNT(*) FROM message").fetchone()[0]
    finally:
        con.close()


def test_backup_under_load_is_consistent_and_restore_brings_back_messages_and_keys(server_factory, tmp_path):
    srv = server_factory(sandbox=True, sandbox_delay_ms=20)
    if str(srv.env.get("RELAYBOX_DATABASE", "")).startswith("postgres"):
        res = _cli(srv, "backup", str(tmp_path / "b.db"))
        assert res.returncode == 1 and "pg_dump" in res.stderr
        return
    load = Load(srv.url, srv.key, threads=3).start()
    time_until(lambda: len(load.accepted) >= 20, timeout=60)
    first = tmp_path / "backups" / "first.db"
    res = _cli(srv, "backup", str(first))
    assert res.returncode == 0, res.stderr
    assert "backup written to" in res.stdout
    n_accepted_at_first = len(load.accepted)
    time_until(lambda: len(load.accepted) >= n_accepted_at_first + 20, timeout=60)
    second = tmp_path / "backups" / "second.db"
    assert _cli(srv, "backup", str(second)).returncode == 0
    load.stop()
    assert not load.errors and 500 not in load.statuses

    n1, n2 = _consistent(first), _consistent(second)
    assert 0 < n1 < n2 <= len(load.ids)
    assert stat.S_IMODE(os.stat(first).st_mode) == 0o600
    assert not (tmp_path / "backups" / "first.db.tmp").exists()
    print(f"\n[backup] messages in first={n1} second={n2} accepted={len(load.ids)} statuses={load.statuses}")

    # Restoring under a running server is refused; nothing changes.
    res = _cli(srv, "restore", str(first))
    assert res.returncode == 1 and "stop it first" in res.stderr
    srv.stop()
    res = _cli(srv, "restore", str(first))
    assert res.returncode == 0, res.stderr
    assert list(srv.data_dir.glob("relaybox.db.before-restore-*"))
    srv.start()
    api = srv.api()
    assert api.get("/messages", params={"limit": 1}).json()["data"]["total"] == n1
    db = Db(srv.data_dir / "relaybox.db")
    final = wait_all_finished(db, timeout=60)
    result = audit(db, set())
    assert result.sent_twice == [] and result.claimed_twice == []
    assert final.messages == n1


def test_restore_is_refused_the_moment_a_server_answers(server_factory, tmp_path):
    """The serve lock is taken before the server does anything, not on its first housekeeping
    pass: a restore right after start must not overwrite a running server's database."""
    srv = server_factory(sweep_interval=30)
    if str(srv.env.get("RELAYBOX_DATABASE", "")).startswith("postgres"):
        pytest.skip("SQLite backup/restore")
    copy = tmp_path / "copy.db"
    assert _cli(srv, "backup", str(copy)).returncode == 0
    res = _cli(srv, "restore", str(copy))
    assert res.returncode == 1 and "stop it first" in res.stderr, res.stdout + res.stderr


def test_restore_onto_a_new_box_keeps_the_api_key_working(server_factory, tmp_path):
    old = server_factory(sandbox=True, sandbox_delay_ms=20)
    if str(old.env.get("RELAYBOX_DATABASE", "")).startswith("postgres"):
        pytest.skip("SQLite backup/restore")
    api = old.api()
    mid = api.post("/sms/send", json={"to": "+923001234567", "body": "keep me"}).json()["data"]["id"]
    wait_for(lambda: api.get(f"/sms/{mid}").json()["data"]["status"] == "delivered", timeout=30)
    backup = tmp_path / "move.db"
    assert _cli(old, "backup", str(backup)).returncode == 0
    old.stop()

    new = server_factory(sandbox=True, sandbox_delay_ms=20, start=False)  # its own secret and owner
    assert new.key != old.key
    res = _cli(new, "restore", str(backup))
    assert res.returncode == 0, res.stderr
    new.start()
    r = new.api(old.key).get(f"/sms/{mid}")
    assert r.status_code == 200 and r.json()["data"]["body"] == "keep me"
    assert new.api(new.key).get("/messages").status_code == 401  # the new box's own owner is gone


def test_backup_and_restore_say_what_is_wrong(server_factory, tmp_path):
    srv = server_factory(start=False)
    if str(srv.env.get("RELAYBOX_DATABASE", "")).startswith("postgres"):
        pytest.skip("SQLite backup/restore")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    res = _cli(srv, "restore", str(junk))
    assert res.returncode == 1 and "not a relaybox backup" in res.stderr
    res = _cli(srv, "restore", str(tmp_path / "missing.db"))
    assert res.returncode == 1 and "no backup file" in res.stderr
    res = _cli(srv, "backup", str(tmp_path))
    assert res.returncode == 1 and "directory" in res.stderr
