"""Shared benchmark helpers: start relaybox or a bare Flask app, drive them with wrk, read RSS.

Every benchmark runs on loopback only, with bounded durations, and stops what it started.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import requests

BARE_APP = textwrap.dedent("""
    import sys
    from flask import Flask, jsonify, request
    from waitress import serve
    app = Flask("bare")

    @app.post("/hello")
    def hello():
        request.get_json(silent=True)
        return jsonify(ok=True, data={"hello": "world"}), 202

    serve(app, host="127.0.0.1", port=int(sys.argv[1]), threads=int(sys.argv[2]), ident="bare")
""")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


class Relaybox:
    def __init__(self, proc: subprocess.Popen[str], port: int, key: str, data_dir: Path) -> None:
        self.proc, self.port, self.key, self.data_dir = proc, port, key, data_dir

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1"

    def rss_mb(self) -> float:
        return rss_mb(self.proc.pid)


@contextmanager
def relaybox(**settings: Any) -> Iterator[Relaybox]:
    """``relaybox serve`` in a subprocess with a fresh data dir; settings → RELAYBOX_* env."""
    data_dir = Path(tempfile.mkdtemp(prefix="relaybox-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYBOX_")}
    env.update({"RELAYBOX_" + k.upper(): (str(v).lower() if isinstance(v, bool) else str(v))
                for k, v in settings.items()})
    env.setdefault("RELAYBOX_LOG_LEVEL", "WARNING")
    cmd = [sys.executable, "-m", "relaybox.cli"]
    init = subprocess.run(cmd + ["init", "--json", "--data-dir", str(data_dir)], env=env,
                          capture_output=True, text=True, check=True)
    key = json.loads(init.stdout)["api_key"]
    port = free_port()
    proc = subprocess.Popen(cmd + ["serve", "--data-dir", str(data_dir), "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=open(data_dir / "server.log", "w"), text=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/api/v1/health")
        yield Relaybox(proc, port, key, data_dir)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(data_dir, ignore_errors=True)


@contextmanager
def bare_app(threads: int) -> Iterator[str]:
    """The reference: waitress + Flask answering a JSON POST, same thread count."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", BARE_APP, str(port), str(threads)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/hello"
        wait_http(url)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


WRK_SCRIPT = """
wrk.method = "{method}"
wrk.headers["Content-Type"] = "application/json"
{headers}
local counter = 0
local per_conn_delay_ms = {delay_ms}
request = function()
  counter = counter + 1
  local body = string.gsub('{body}', "COUNTER", tostring(counter))
  return wrk.format(nil, nil, nil, body)
end
{delay_fn}
"""


def wrk(url: str, body: str, *, connections: int = 32, duration: int = 10, threads: int = 2,
        headers: dict[str, str] | None = None, rate: float | None = None,
        method: str = "POST") -> dict[str, float]:
    """Run wrk; ``rate`` (req/s, approximate) paces each connection with wrk's delay() hook.
    ``method="GET"`` sends no body.

    Returns requests/s, p50 and p99 latency in ms, and the count of non-2xx answers.
    """
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    hdr = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in (headers or {}).items())
    delay_fn = ""
    delay_ms = 0
    if rate:
        delay_ms = connections / rate * 1000
        delay_fn = "delay = function() return per_conn_delay_ms end"
    script = WRK_SCRIPT.format(headers=hdr, body=body.replace("'", "\\'"), delay_ms=delay_ms, delay_fn=delay_fn,
                               method=method)
    if method == "GET":
        script = script.replace("return wrk.format(nil, nil, nil, body)", "return wrk.format(nil, nil, nil, nil)")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(script + DONE_HOOK)
        path = fh.name
    out = subprocess.run(["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration}s", "--latency",
                          "-s", path, url], capture_output=True, text=True, timeout=duration + 60).stdout
    os.unlink(path)
    m = re.search(r"JSON (\{.*\})", out)
    if not m:
        raise RuntimeError(f"wrk output not understood:\n{out}")
    return json.loads(m.group(1))


DONE_HOOK = """
done = function(summary, latency, requests)
  local non2xx = summary.errors.status
  io.write(string.format('JSON {"rps": %.1f, "p50_ms": %.2f, "p99_ms": %.2f, "requests": %d, "non2xx": %d, "socket_errors": %d}\\n',
    summary.requests / (summary.duration / 1e6), latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.requests, non2xx, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"""
