"""Modem benchmark: driver CPU per send, parallel modems, API throughput while modems send.

Prints three figures (targets from the modem issue):

1. ``driver_cpu_ms_per_send``: the driver's own CPU per single-part send (status report
   included), with a simulated modem at zero radio delay running in *another* process, so this
   process's CPU time is the driver's (reader thread, state machine, PDU encoding, report
   matching) and nothing else. Target ≤ 5 ms.
2. ``four_modem_speedup``: a real ``relaybox serve`` with one modem, then with four, each with a
   3 s radio delay (Ctrl-Z to ``+CMGS``), sending through ``POST /sms/send``: messages sent per
   second with four modems over one. Target 4× (no shared lock between modems).
3. ``api_ratio_while_sending``: ``POST /sms/send`` throughput (wrk) while four modems (3 s
   radio delay) work through a backlog, over the same server's throughput with the modems idle.
   Target ≈ 1. The measured sends are scheduled ``send_at`` 20 days ahead in both runs, so they
   add the same work to the API and none to the modems. The ``_fast_modems`` variant repeats it
   with modems at 0.05 s per send (far faster than any real modem): a stress figure, not a target.

    python bench/modem.py [--sends 500] [--radio-delay 3] [--per-modem 4] [--duration 10]
"""
from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import relaybox, wrk

from relaybox.channels.modem.driver import ModemConfig, ModemDriver
from relaybox.channels.modem.simulator import ModemSimulator

TO = "+46708251358"


# -- 1. driver CPU per send -----------------------------------------------------------------------
def driver_cpu(sends: int) -> dict[str, float]:
    sim = subprocess.Popen(
        [sys.executable, "-m", "relaybox.channels.modem.simulator", "--radio-delay", "0",
         "--report", "delivered", "--report-delay", "0.01"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert sim.stdout is not None and sim.stdin is not None
        path = sim.stdout.readline().strip()
        delivered = threading.Semaphore(0)
        driver = ModemDriver(
            ModemConfig("bench", path, health_interval=3600, sweep_interval=3600),
            on_status=lambda key, status, raw: status == "delivered" and delivered.release())
        driver.start()
        if not driver.wait_ready(10):
            raise SystemExit(f"simulated modem not ready: {driver.status()}")
        for i in range(20):  # warm-up
            driver.send(f"w{i}", TO, "warm up").result(10)
        for _ in range(20):
            delivered.acquire(timeout=10)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        futures = [driver.send(f"m{i}", TO, f"Your order {i} has shipped") for i in range(sends)]
        results = [f.result(60) for f in futures]
        got = sum(delivered.acquire(timeout=30) for _ in range(sends))
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        driver.stop()
        assert all(r.outcome == "sent" for r in results), {r.outcome for r in results}
        return {"driver_sends": sends, "driver_reports_delivered": got,
                "driver_cpu_ms_per_send": round(cpu / sends * 1000, 3),
                "driver_sends_per_s": round(sends / wall, 1)}
    finally:
        if sim.poll() is None:
            try:
                sim.stdin.write("quit\n")  # type: ignore[union-attr]
                sim.stdin.flush()  # type: ignore[union-attr]
                sim.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                sim.kill()


# -- helpers for 2 and 3 -------------------------------------------------------------------------------
def config_for(sims: list[ModemSimulator]) -> str:
    path = Path(tempfile.mkdtemp(prefix="relaybox-bench-modem-")) / "config.toml"
    tables = [f'[[modem]]\nname = "m{i}"\nport = "{s.path}"\nhealth_interval = 5.0\nsweep_interval = 5.0\n'
              for i, s in enumerate(sims)]
    # The modems' own speed is measured here, not relaybox's pacing (bench/routing.py does that).
    tables.append("[pacing.modem]\nmin_delay = 0\nmax_delay = 0\nper_minute = 0\nper_hour = 0\nper_day = 0\n")
    path.write_text("\n".join(tables))
    return str(path)


def wait_ready(base: str, key: str, count: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        modems = requests.get(f"{base}/modems", headers={"X-API-Key": key}, timeout=5).json()["data"]["modems"]
        if sum(m["online"] for m in modems) == count:
            return
        time.sleep(0.1)
    raise SystemExit(f"modems not ready: {modems}")


def count_sent(data_dir: Path) -> int:
    """Messages that went out (sent or later), read from the server's SQLite file."""
    con = sqlite3.connect(f"file:{data_dir / 'relaybox.db'}?mode=ro", uri=True, timeout=10)
    try:
        return con.execute("SELECT count(*) FROM message WHERE sent_at IS NOT NULL").fetchone()[0]
    finally:
        con.close()


# -- 2. one modem vs four ---------------------------------------------------------------------------------
def send_rate(modems: int, per_modem: int, radio_delay: float) -> float:
    sims = [ModemSimulator(name=f"s{i}", radio_delay=radio_delay).start() for i in range(modems)]
    for s in sims:
        s.default_report.outcome = "none"  # "sent" is what is measured
    try:
        with relaybox(config=config_for(sims)) as rb:
            wait_ready(rb.base, rb.key, modems)
            hdr = {"X-API-Key": rb.key}
            total = modems * per_modem
            t0 = time.perf_counter()
            for i in range(total):
                r = requests.post(f"{rb.base}/sms/send", json={"to": TO, "body": f"Order {i} shipped"},
                                  headers=hdr, timeout=10)
                assert r.status_code == 202, r.text
            deadline = time.monotonic() + total * radio_delay + 60
            while count_sent(rb.data_dir) < total:
                if time.monotonic() > deadline:
                    raise SystemExit("messages were not sent in time")
                time.sleep(0.05)
            elapsed = time.perf_counter() - t0
            per_sim = [len(s.sent) for s in sims]
        print(f"  {modems} modem(s): {total} messages in {elapsed:.2f}s, per modem {per_sim}", file=sys.stderr)
        return total / elapsed
    finally:
        for s in sims:
            s.stop()


# -- 3. API throughput while four modems send ------------------------------------------------------------
def api_while_sending(duration: int, radio_delay: float) -> dict[str, float]:
    sims = [ModemSimulator(name=f"s{i}", radio_delay=radio_delay).start() for i in range(4)]
    later = (datetime.now(UTC) + timedelta(days=20)).strftime("%Y-%m-%dT%H:%M:%SZ")
    body = json.dumps({"to": TO, "body": "Your order COUNTER has shipped", "send_at": later})
    try:
        # The per-key rate limit is off: with it on, wrk soon measures 429 answers, not sends.
        with relaybox(config=config_for(sims), threads=24, api_rate_limit=0) as rb:
            wait_ready(rb.base, rb.key, 4)
            url, hdr = rb.base + "/sms/send", {"X-API-Key": rb.key}
            wrk(url, body, duration=2, headers=hdr)  # warm-up
            idle = wrk(url, body, duration=duration, headers=hdr)
            assert idle["non2xx"] == 0, idle
            # A backlog the four modems work through during the second run.
            batch = {"messages": [{"to": TO, "body": f"Backlog {i}"} for i in range(1000)]}
            for _ in range(5):
                r = requests.post(rb.base + "/sms/batch", json=batch, headers=hdr, timeout=60)
                assert r.status_code == 202, r.text
            time.sleep(1)
            sent0 = count_sent(rb.data_dir)
            busy = wrk(url, body, duration=duration, headers=hdr)
            assert busy["non2xx"] == 0, busy
            sent_during = count_sent(rb.data_dir) - sent0
            # Idle again (the modems stop answering, so they claim nothing), to average out the
            # drift of a shared machine between the runs.
            for s in sims:
                s.hang()
            time.sleep(max(3.0, radio_delay + 1))
            idle2 = wrk(url, body, duration=duration, headers=hdr)
            assert idle2["non2xx"] == 0, idle2
        base = (idle["rps"] + idle2["rps"]) / 2
        return {"api_rps_modems_idle": round(base, 1), "api_rps_modems_sending": busy["rps"],
                "api_p99_ms_idle": max(idle["p99_ms"], idle2["p99_ms"]), "api_p99_ms_sending": busy["p99_ms"],
                "modem_sends_during_run": sent_during,
                "api_ratio_while_sending": round(busy["rps"] / base, 3)}
    finally:
        for s in sims:
            s.stop()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sends", type=int, default=500, help="single-part sends for the CPU figure")
    ap.add_argument("--radio-delay", type=float, default=3.0, help="seconds per send for the 1-vs-4 figure")
    ap.add_argument("--per-modem", type=int, default=4, help="messages per modem for the 1-vs-4 figure")
    ap.add_argument("--busy-radio-delay", type=float, default=0.05,
                    help="radio delay of the stress variant of the API run (modems as fast as they go)")
    ap.add_argument("--duration", type=int, default=10, help="seconds of each wrk run")
    args = ap.parse_args()
    os.environ.setdefault("RELAYBOX_LOG_LEVEL", "WARNING")
    results: dict[str, float] = {}
    results.update(driver_cpu(args.sends))
    one = send_rate(1, args.per_modem, args.radio_delay)
    four = send_rate(4, args.per_modem, args.radio_delay)
    results.update(one_modem_per_s=round(one, 3), four_modems_per_s=round(four, 3),
                   four_modem_speedup=round(four / one, 2))
    results.update(api_while_sending(args.duration, args.radio_delay))
    stress = api_while_sending(args.duration, args.busy_radio_delay)
    results.update({f"{k}_fast_modems": v for k, v in stress.items() if k != "api_rps_modems_idle"})
    print(json.dumps(results, indent=2))
    ok = (results["driver_cpu_ms_per_send"] <= 5 and results["four_modem_speedup"] >= 3.6
          and results["api_ratio_while_sending"] >= 0.8)
    print("targets:", "met" if ok else "NOT met", "(cpu ≤ 5 ms/send, speedup ≈ 4×, API ratio ≈ 1)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
