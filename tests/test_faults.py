"""Fault suite: real `relaybox serve` processes on loopback, real SQLite files, faults injected
from outside (SIGKILL, a foreign lock on the database, a full file system).

Every scenario ends with the same audit, read from the database: no accepted message lost, none
sent twice (one `sent` timeline row, one `dispatched` row per message), every message finished,
and the API answering throughout or again within seconds. Figures are printed (pytest -s).
"""
from __future__ import annotations

import os
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests
from ops_support import (
    Load,
    Receiver,
    audit,
    free_port,
    health_ok,
    p,
    server_db,
    sqlite_db,
    time_until,
    wait_all_finished,
)

pytestmark = pytest.mark.timeout(300)


def _figures(name: str, **figures: object) -> None:
    print(f"\n[fault:{name}] " + " ".join(f"{k}={v}" for k, v in figures.items()), flush=True)


def _write_clock(path: Path, offset_ms: int) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(str(offset_ms))
    os.replace(tmp, path)


def test_kill_9_under_load_then_restart_loses_nothing_and_sends_nothing_twice(server_factory, tmp_path):
    clock = tmp_path / "clock"
    _write_clock(clock, 0)
    srv = server_factory(sandbox=True, sandbox_delay_ms=40, test_clock_file=str(clock))
    load = Load(srv.url, srv.key, threads=4).start()
    time_until(lambda: len(load.accepted) >= 30, timeout=60)
    before = len(load.accepted)
    t_kill = time.monotonic()
    srv.kill()
    time.sleep(0.3)
    load.stop()
    in_flight = list(load.unanswered)

    srv.start(port=srv.port)
    restart_s = time.monotonic() - t_kill
    # A request cut off by the kill may have left its Idempotency-Key "running"; such keys are
    # taken over after 60 s, so move the server's clock past that and retry each one.
    _write_clock(clock, 61_000)
    retried = {}
    session = requests.Session()
    session.headers["X-API-Key"] = srv.key
    for idem, body in in_flight:
        r = session.post(srv.api_base + "/sms/send", json=body, headers={"Idempotency-Key": idem}, timeout=30)
        assert r.status_code == 202, r.text
        load.accepted[idem] = r.json()["data"]["id"]
        retried[idem] = r.headers.get("Idempotent-Replayed") == "true"
    after = Load(srv.url, srv.key, threads=2).start()
    time_until(lambda: len(after.accepted) >= 10, timeout=60)
    after.stop()

    db = server_db(srv)
    accepted = load.ids | after.ids
    final = wait_all_finished(db, timeout=90)
    result = audit(db, accepted)
    in_db = {r[0] for r in db.rows("SELECT id FROM message")}
    _figures("kill-9", accepted_before_kill=before, unanswered_around_kill=len(in_flight),
             replayed=sum(retried.values()), accepted_total=len(accepted), restart_to_serving_s=f"{restart_s:.2f}",
             p99_ms_after_restart=f"{p(after.latencies, 0.99) * 1000:.0f}", audit=final.summary())
    assert not load.errors and not after.errors, (load.errors, after.errors)
    assert result.missing == [], "accepted messages lost"
    assert result.sent_twice == [] and result.claimed_twice == []
    # Idempotency-Key retries after the crash never created a second message.
    assert in_db == accepted
    assert final.by_status.get("delivered") == len(accepted)
    assert restart_s < 30


def test_database_locked_by_another_process_delays_then_recovers(server_factory):
    srv = server_factory(sandbox=True, sandbox_delay_ms=30)
    if str(srv.env.get("RELAYBOX_DATABASE", "")).startswith("postgres"):
        pytest.skip("a foreign lock on the SQLite file; PostgreSQL has no such single write lock")
    dbfile = srv.data_dir / "relaybox.db"
    load = Load(srv.url, srv.key, threads=3).start()
    time_until(lambda: len(load.accepted) >= 10, timeout=60)

    health: list[tuple[float, int]] = []
    stop_probe = threading.Event()

    def probe() -> None:
        while not stop_probe.is_set():
            t0 = time.monotonic()
            try:
                code = requests.get(srv.api_base + "/health", timeout=5).status_code
            except requests.RequestException:
                code = 0
            health.append((time.monotonic() - t0, code))
            time.sleep(0.1)

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    # 1) A short foreign write lock (a backup tool, sqlite3 shell): writers wait and succeed.
    con = sqlite3.connect(dbfile, isolation_level=None, timeout=30)
    n0 = len(load.accepted)
    con.execute("BEGIN IMMEDIATE")
    time.sleep(3)
    con.execute("ROLLBACK")
    short_recovery = time_until(lambda: len(load.accepted) > n0 + 5, timeout=30)
    # 2) A lock held longer than busy_timeout (10 s): sends answer QUEUE_FAILED (503), never 500.
    statuses_before = dict(load.statuses)
    con.execute("BEGIN IMMEDIATE")
    time.sleep(12)
    con.execute("ROLLBACK")
    con.close()
    n1 = len(load.accepted)
    long_recovery = time_until(lambda: len(load.accepted) > n1 + 5, timeout=30)
    time.sleep(0.5)
    load.stop()
    stop_probe.set()
    prober.join(10)

    db = sqlite_db(srv)
    final = wait_all_finished(db, timeout=90)
    result = audit(db, load.ids)
    failed_503 = load.statuses.get(503, 0) - statuses_before.get(503, 0)
    _figures("db-locked", accepted=len(load.ids), queue_failed_503=failed_503, statuses=load.statuses,
             health_probes=len(health), health_failures=sum(1 for _, c in health if c != 200),
             health_p99_ms=f"{p([d for d, _ in health], 0.99) * 1000:.0f}",
             recovery_after_short_lock_s=f"{short_recovery:.2f}", recovery_after_long_lock_s=f"{long_recovery:.2f}",
             audit=final.summary())
    assert not load.errors, load.errors[:5]
    assert 500 not in load.statuses
    # WAL readers are not blocked by a writer: /health answered all along.
    assert all(c == 200 for _, c in health), health
    assert result.missing == [] and result.sent_twice == [] and result.claimed_twice == []
    assert final.by_status.get("delivered") == len(load.ids)
    assert long_recovery < 15 and short_recovery < 15


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("disk-full simulation mounts a small tmpfs: needs root")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
                         capture_output=True, text=True, check=False)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip()}); disk-full simulation skipped")


def _fill(path: Path) -> Path:
    """Write a file until the file system has no byte left."""
    filler = path / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 20, 1 << 16, 1 << 12, 512, 1):
            chunk = b"\0" * size
            while True:
                try:
                    os.write(fd, chunk)
                except OSError:
                    break
    finally:
        os.close(fd)
    return filler


def test_disk_full_on_the_data_dir_refuses_cleanly_and_recovers(server_factory, tmp_path):
    data = tmp_path / "small"
    _mount_tmpfs(data, "24m")
    srv = None
    try:
        srv = server_factory(sandbox=True, sandbox_delay_ms=30, data_dir=data)
        if str(srv.env.get("RELAYBOX_DATABASE", "")).startswith("postgres"):
            pytest.skip("the data dir holds no database in the scale-out run")
        load = Load(srv.url, srv.key, threads=2).start()
        time_until(lambda: len(load.accepted) >= 10, timeout=60)
        filler = _fill(data)
        n_full = len(load.accepted)
        statuses_before = dict(load.statuses)
        # Keep sending into the full disk until writes fail (the WAL may have room for a few).
        time_until(lambda: load.statuses.get(503, 0) > statuses_before.get(503, 0) + 5, timeout=60)
        health_while_full = health_ok(srv.url)
        accepted_while_full = len(load.accepted) - n_full
        filler.unlink()
        t_free = time.monotonic()
        n_free = len(load.accepted)
        recovery = time_until(lambda: len(load.accepted) > n_free + 5, timeout=30)
        load.stop()
        db = sqlite_db(srv)
        final = wait_all_finished(db, timeout=90)
        result = audit(db, load.ids)
        _figures("disk-full", accepted=len(load.ids), accepted_while_full=accepted_while_full,
                 queue_failed_503=load.statuses.get(503, 0) - statuses_before.get(503, 0),
                 statuses=load.statuses, health_while_full=health_while_full,
                 recovery_after_free_s=f"{recovery:.2f}", audit=final.summary())
        assert not load.errors, load.errors[:5]
        assert 500 not in load.statuses
        assert health_while_full
        assert result.missing == [] and result.sent_twice == [] and result.claimed_twice == []
        assert final.by_status.get("delivered") == len(load.ids)
        assert recovery < 15
        assert time.monotonic() - t_free < 120
    finally:
        if srv is not None:
            srv.stop()
        subprocess.run(["umount", "-l", str(data)], capture_output=True, check=False)


def test_webhook_receiver_down_then_up_gets_every_status_and_sends_stay_fast(server_factory):
    srv = server_factory(sandbox=True, sandbox_delay_ms=30, webhook_retry_schedule="[0,1,1,1,1,1,1,1,1,1,1,1]")
    db = server_db(srv)
    receiver = Receiver(free_port())
    api = srv.api()
    r = api.put("/webhooks", json={"status_url": f"http://127.0.0.1:{receiver.port}/hook"})
    assert r.status_code == 200, r.text
    try:
        load = Load(srv.url, srv.key, threads=2).start()
        time_until(lambda: len(load.accepted) >= 20, timeout=60)
        load.stop()
        down_p99 = p(load.latencies, 0.99)
        time.sleep(2)  # deliveries fail and wait for their retry while the receiver is down
        failed_attempts = db.scalar("SELECT COUNT(*) FROM webhook_attempt WHERE outcome != 'succeeded'")
        receiver.up()
        t_up = time.monotonic()
        final = wait_all_finished(db, timeout=90)
        expected = {(mid, st) for mid, st in db.rows(
            "SELECT message_id, status FROM message_event WHERE status != 'accepted'")}

        def got_all() -> bool:
            seen = {(b.get("message_id"), b.get("status")) for _, b in receiver.received}
            return expected <= seen

        catch_up = time_until(got_all, timeout=60)
        result = audit(db, load.ids)
        ids = [wid for wid, _ in receiver.received]
        _figures("webhook-down", messages=len(load.ids), send_p99_ms_while_down=f"{down_p99 * 1000:.0f}",
                 failed_attempts_while_down=failed_attempts, webhooks_expected=len(expected),
                 webhooks_received=len(ids), duplicate_webhook_ids=len(ids) - len(set(ids)),
                 catch_up_after_receiver_up_s=f"{catch_up:.2f}", total_s=f"{time.monotonic() - t_up:.2f}",
                 audit=final.summary())
        assert not load.errors
        assert failed_attempts > 0, "the receiver was down: some attempts must have failed"
        assert result.missing == [] and result.sent_twice == [] and result.claimed_twice == []
        assert final.by_status.get("delivered") == len(load.ids)
        assert down_p99 < 2.0, "a dead webhook receiver must not slow the API"
    finally:
        receiver.down()

