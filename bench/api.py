"""Core benchmark: POST /sms/send against a bare waitress+Flask app, in one run.

Prints: send throughput as a ratio to the bare app's (both at saturation, 32 connections),
p50/p99 latency at 32 clients at a fixed offered rate of half the bare app's throughput,
the time to accept a 1,000-item batch, and idle RSS.
Targets (core issue): ratio ≥ 0.5, p99 ≤ 25 ms, batch ≤ 300 ms, idle RSS ≤ 60 MB.

For reference it also measures ``GET /api/v1/account`` at saturation (``account_ratio``): an
authenticated request through the same stack (waitress, Flask, flask-openapi3, the key lookup,
the envelope) that writes nothing. It bounds what any authenticated endpoint of this one
process can reach relative to the bare app, before a send does any of its own work.

    python bench/api.py [--duration 10]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bare_app, relaybox, wrk  # noqa: E402

SEND_BODY = '{"to": "+923011234567", "body": "Your order COUNTER has shipped"}'


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--threads", type=int, default=24, help="waitress threads for both apps")
    args = ap.parse_args()
    results: dict[str, float] = {}
    with bare_app(args.threads) as url:
        wrk(url, "{}", duration=2)  # warm-up
        bare = wrk(url, "{}", duration=args.duration)
    results["bare_rps"] = bare["rps"]
    # The sandbox channel sends for real (no radio delay), so the queue and channel work run
    # during the measurement, as in production.
    # The per-key rate limit (a safety threshold, 6000 requests a minute by default) is off:
    # this measures what the box can take, not the policy.
    with relaybox(sandbox=True, sandbox_delay_ms=0, threads=args.threads, api_rate_limit=0) as rb:
        time.sleep(2)
        results["idle_rss_mb"] = round(rb.rss_mb(), 1)
        send_url = rb.base + "/sms/send"
        hdr = {"X-API-Key": rb.key}
        wrk(send_url, SEND_BODY, duration=2, headers=hdr)
        sat = wrk(send_url, SEND_BODY, duration=args.duration, headers=hdr)
        results["send_rps"] = sat["rps"]
        results["send_non2xx"] = sat["non2xx"]
        wrk(rb.base + "/account", "", duration=2, headers=hdr, method="GET")
        ref = wrk(rb.base + "/account", "", duration=args.duration, headers=hdr, method="GET")
        assert ref["non2xx"] == 0, ref
        results["account_get_rps"] = ref["rps"]
        time.sleep(2)
        paced = wrk(send_url, SEND_BODY, duration=args.duration, headers=hdr, rate=bare["rps"] / 2)
        results.update(paced_rate_target=round(bare["rps"] / 2), paced_rps=paced["rps"],
                       p50_ms=paced["p50_ms"], p99_ms=paced["p99_ms"])
        batch = {"messages": [{"to": f"+92301{2000000 + i:07d}", "body": f"Invoice {i} is due"} for i in range(1000)]}
        times = []
        s = requests.Session()
        for _ in range(5):
            t0 = time.perf_counter()
            r = s.post(rb.base + "/sms/batch", json=batch, headers=hdr, timeout=60)
            times.append((time.perf_counter() - t0) * 1000)
            assert r.status_code == 202 and r.json()["data"]["accepted"] == 1000, r.text[:300]
        results["batch_1000_ms_median"] = round(statistics.median(times), 1)
        results["batch_1000_ms_max"] = round(max(times), 1)
    results["ratio"] = round(results["send_rps"] / results["bare_rps"], 3)
    results["account_ratio"] = round(results["account_get_rps"] / results["bare_rps"], 3)
    targets = {"ratio": (results["ratio"] >= 0.5), "p99_ms": results["p99_ms"] <= 25,
               "batch_1000_ms_median": results["batch_1000_ms_median"] <= 300,
               "idle_rss_mb": results["idle_rss_mb"] <= 60}
    print(json.dumps(results, indent=2))
    for k, ok in targets.items():
        print(f"{'MET ' if ok else 'MISS'} {k} = {results[k]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
