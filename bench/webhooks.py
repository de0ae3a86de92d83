"""Benchmark: a hanging webhook receiver must not slow ``POST /sms/send`` (issue: webhooks).

Two real relaybox processes (sandbox channel on, fresh data dirs) on loopback:

- **baseline**: no webhook URL configured;
- **hanging**: ``status_url`` points at a receiver that takes 5 s to answer every request, so
  every delivery thread is stuck and the backlog of deliveries grows in the database.

A threaded ``http.client`` load client (keep-alive, one connection per thread) sends for a fixed
time against each, in alternating order over several rounds; the medians are compared. Target:
the hanging figure is within 10 % of the baseline.

    .venv/bin/python bench/webhooks.py [--threads 8] [--seconds 10] [--rounds 3]

Prints both figures and exits 1 when the hanging figure is more than 10 % below the baseline.
"""
from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from conftest import RelayboxServer, _env


class HangingReceiver:
    """Answers every webhook after ``delay`` seconds; counts what arrived."""

    def __init__(self, delay: float) -> None:
        self.received = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with outer.lock:
                    outer.received += 1
                time.sleep(delay)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_server(root: Path, name: str) -> RelayboxServer:
    d = root / name
    d.mkdir()
    # The per-key request limit is off: this measures the send path, not the limiter.
    env = _env({"sandbox": True, "sandbox_delay_ms": 50, "log_level": "WARNING", "api_rate_limit": 0})
    return RelayboxServer(d, env).start()


def recipients() -> list[str]:
    # Fictional +1 415 555 01xx-09xx numbers; none ends in the sandbox's failure suffixes.
    return [f"+1415555{n:04d}" for n in range(100, 1000)]


def load(port: int, key: str, threads: int, seconds: float) -> tuple[float, int, list[float]]:
    """Send for ``seconds`` from ``threads`` keep-alive connections; (accepted/s, errors, latencies)."""
    numbers = recipients()
    stop_at = time.monotonic() + seconds
    counts = [0] * threads
    errors = [0] * threads
    latencies: list[list[float]] = [[] for _ in range(threads)]
    headers = {"X-API-Key": key, "Content-Type": "application/json"}

    def worker(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        n = i
        while time.monotonic() < stop_at:
            body = json.dumps({"to": numbers[n % len(numbers)], "body": f"bench {n}"})
            n += threads
            t0 = time.monotonic()
            try:
                conn.request("POST", "/api/v1/sms/send", body=body, headers=headers)
                resp = conn.getresponse()
                resp.read()
                ok = resp.status == 202
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                ok = False
            latencies[i].append(time.monotonic() - t0)
            if ok:
                counts[i] += 1
            else:
                errors[i] += 1
        conn.close()

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    t0 = time.monotonic()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    elapsed = time.monotonic() - t0
    return sum(counts) / elapsed, sum(errors), [x for xs in latencies for x in xs]


def api(srv: RelayboxServer, method: str, path: str, body: Any = None) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    conn.request(method, "/api/v1" + path, body=json.dumps(body) if body is not None else None,
                 headers={"X-API-Key": srv.key, "Content-Type": "application/json"})
    resp = conn.getresponse()
    data = json.loads(resp.read())
    conn.close()
    return data


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=8, help="load client threads (default 8)")
    ap.add_argument("--seconds", type=float, default=10, help="measured seconds per run (default 10)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    ap.add_argument("--warmup", type=float, default=2, help="unmeasured seconds before the first run")
    ap.add_argument("--delay", type=float, default=5.0, help="receiver answer time in seconds (default 5)")
    args = ap.parse_args()

    receiver = HangingReceiver(args.delay)
    with tempfile.TemporaryDirectory(prefix="relaybox-bench-") as tmp:
        root = Path(tmp)
        base = start_server(root, "baseline")
        hang = start_server(root, "hanging")
        try:
            assert api(hang, "PUT", "/webhooks", {"status_url": receiver.url})["ok"]
            for srv in (base, hang):
                load(srv.port, srv.key, args.threads, args.warmup)
            figures: dict[str, list[float]] = {"baseline": [], "hanging": []}
            lat: dict[str, list[float]] = {"baseline": [], "hanging": []}
            errs = {"baseline": 0, "hanging": 0}
            for r in range(args.rounds):
                order = [("baseline", base), ("hanging", hang)]
                if r % 2:
                    order.reverse()
                for name, srv in order:
                    rate, e, ls = load(srv.port, srv.key, args.threads, args.seconds)
                    figures[name].append(rate)
                    lat[name].extend(ls)
                    errs[name] += e
                    print(f"round {r + 1} {name:8s}: {rate:8.1f} sends/s ({e} errors)", flush=True)
            backlog = api(hang, "GET", "/webhooks/deliveries?state=pending&limit=1")["data"]["total"]
            done = api(hang, "GET", "/webhooks/deliveries?state=succeeded&limit=1")["data"]["total"]
        finally:
            base.stop()
            hang.stop()
            receiver.stop()

    b, h = statistics.median(figures["baseline"]), statistics.median(figures["hanging"])
    ratio = h / b if b else 0.0

    def p95(xs: list[float]) -> float:
        return sorted(xs)[int(len(xs) * 0.95)] * 1000 if xs else 0.0

    print()
    print(f"POST /sms/send, {args.threads} client threads, {args.rounds} x {args.seconds:g} s each, loopback")
    print(f"  without webhooks:                 {b:8.1f} sends/s  (p95 {p95(lat['baseline']):.1f} ms, "
          f"{errs['baseline']} errors)")
    print(f"  with a {args.delay:g} s hanging receiver:     {h:8.1f} sends/s  (p95 {p95(lat['hanging']):.1f} ms, "
          f"{errs['hanging']} errors)")
    print(f"  ratio {ratio:.3f} ({(ratio - 1) * 100:+.1f} %); target: within 10 %")
    print(f"  receiver got {receiver.received} requests; {done} deliveries succeeded, {backlog} still pending")
    ok = ratio >= 0.9 and errs["baseline"] == errs["hanging"] == 0
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
