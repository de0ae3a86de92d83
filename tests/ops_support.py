"""Helpers shared by the operations, scale-out and fault tests: load generators and the
"nothing lost, nothing sent twice" audit read straight from the database."""
from __future__ import annotations

import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

PG_URL = os.environ.get("RELAYBOX_TEST_DATABASE") or "postgresql://relaybox:relaybox@127.0.0.1:5432/relaybox"
REDIS_URL = os.environ.get("RELAYBOX_TEST_QUEUE") or "redis://127.0.0.1:6379/0"
# Recipients the sandbox delivers (anything not ending 0001/0002/0003).
GOOD_NUMBERS = [f"+9230012345{i:02d}" for i in range(10, 60)]


def postgres_or_skip() -> str:
    """The outer PostgreSQL URL, or skip naming what is missing (.ci/services.sh starts it)."""
    try:
        import psycopg2
    except ImportError:
        pytest.skip("psycopg2 is not installed (pip install relaybox[pg])")
    try:
        psycopg2.connect(PG_URL, connect_timeout=3).close()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"PostgreSQL not reachable at {PG_URL.split('@')[-1]} ({exc}); run .ci/services.sh")
    return PG_URL


def redis_or_skip() -> str:
    try:
        import redis
    except ImportError:
        pytest.skip("redis is not installed (pip install relaybox[redis])")
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"Redis not reachable at {REDIS_URL} ({exc}); run .ci/services.sh")
    return REDIS_URL


# -- database audit ---------------------------------------------------------------------------
class Db:
    """Read-only SQL against a server's SQLite file or a PostgreSQL URL."""

    def __init__(self, target: str | Path) -> None:
        self.target = str(target)

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if self.target.startswith("postgres"):
            import psycopg2

            con = psycopg2.connect(self.target)
            try:
                with con.cursor() as cur:
                    cur.execute(sql.replace("%", "%%").replace("?", "%s"), params)
                    return list(cur.fetchall())
            finally:
                con.close()
        con = sqlite3.connect(f"file:{self.target}?mode=ro", uri=True, timeout=30)
        try:
            return list(con.execute(sql, params).fetchall())
        finally:
            con.close()

    def scalar(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        return self.rows(sql, params)[0][0]


def sqlite_db(srv: Any) -> Db:
    return Db(srv.data_dir / "relaybox.db")


def server_db(srv: Any) -> Db:
    """The database of a test server: its SQLite file, or its PostgreSQL database (scale-out run)."""
    url = srv.database_url
    return Db(url if url.startswith("postgres") else url[len("sqlite:///"):])


@dataclass
class Audit:
    messages: int
    by_status: dict[str, int]
    sent_twice: list[str]
    claimed_twice: list[str]
    missing: list[str]
    unfinished: list[str]

    def summary(self) -> str:
        return (f"messages={self.messages} by_status={self.by_status} sent_twice={len(self.sent_twice)} "
                f"claimed_twice={len(self.claimed_twice)} missing={len(self.missing)} "
                f"unfinished={len(self.unfinished)}")


FINISHED = ("delivered", "failed", "undelivered", "expired", "cancelled")


def audit(db: Db, accepted: set[str]) -> Audit:
    """Every accepted id present; no message with two 'sent' (or two 'dispatched') rows."""
    present = {r[0] for r in db.rows("SELECT id FROM message")}
    by_status = dict(db.rows("SELECT status, COUNT(*) FROM message GROUP BY status"))
    sent_twice = [r[0] for r in db.rows(
        "SELECT message_id FROM message_event WHERE status = 'sent' GROUP BY message_id HAVING COUNT(*) > 1")]
    claimed_twice = [r[0] for r in db.rows(
        "SELECT message_id FROM message_event WHERE status = 'dispatched' GROUP BY message_id HAVING COUNT(*) > 1")]
    unfinished = [r[0] for r in db.rows(
        "SELECT id FROM message WHERE status NOT IN ('delivered','failed','undelivered','expired','cancelled')")]
    return Audit(len(present), by_status, sent_twice, claimed_twice, sorted(accepted - present), unfinished)


def wait_all_finished(db: Db, timeout: float = 60.0) -> Audit:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = audit(db, set())
        # by_status is one query (one snapshot); the separate queries of an audit may straddle
        # a transition, so "finished" is judged on by_status alone.
        if last.by_status and all(st in FINISHED for st in last.by_status) and not last.unfinished:
            return last
        time.sleep(0.25)
    raise AssertionError(f"messages still unfinished after {timeout}s: {last.summary() if last else '?'}")


# -- load -------------------------------------------------------------------------------------
@dataclass
class Load:
    """Client threads sending SMS as fast as the server answers, each with an Idempotency-Key."""

    base_url: str
    key: str
    threads: int = 4
    accepted: dict[str, str] = field(default_factory=dict)   # idempotency key -> message id
    unanswered: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Load:
        for i in range(self.threads):
            t = threading.Thread(target=self._run, args=(i,), daemon=True)
            t.start()
            self._workers.append(t)
        return self

    def _run(self, n: int) -> None:
        session = requests.Session()
        session.headers["X-API-Key"] = self.key
        i = 0
        while not self._stop.is_set():
            i += 1
            idem = f"load-{n}-{i}-{uuid.uuid4().hex[:8]}"
            body = {"to": GOOD_NUMBERS[(n * 7 + i) % len(GOOD_NUMBERS)], "body": f"load {n}/{i}"}
            self.send(session, idem, body)

    def send(self, session: requests.Session, idem: str, body: dict[str, Any]) -> int | None:
        t0 = time.monotonic()
        try:
            r = session.post(self.base_url + "/api/v1/sms/send", json=body, timeout=30,
                             headers={"Idempotency-Key": idem})
        except requests.RequestException:
            with self._lock:
                self.unanswered.append((idem, body))
            time.sleep(0.05)
            return None
        with self._lock:
            self.latencies.append(time.monotonic() - t0)
            self.statuses[r.status_code] = self.statuses.get(r.status_code, 0) + 1
            if r.status_code == 202:
                self.accepted[idem] = r.json()["data"]["id"]
            elif r.status_code >= 500 and r.headers.get("Content-Type", "").startswith("application/json"):
                code = r.json().get("error", {}).get("code")
                if code not in ("QUEUE_FAILED", "QUEUE_BLOCKED"):
                    self.errors.append(f"{r.status_code} {code}")
            elif r.status_code not in (409, 429, 503):
                self.errors.append(f"{r.status_code} {r.text[:200]}")
        if r.status_code >= 500:
            time.sleep(0.05)
        return r.status_code

    def stop(self) -> Load:
        self._stop.set()
        for t in self._workers:
            t.join(40)
        return self

    @property
    def ids(self) -> set[str]:
        return set(self.accepted.values())


def p(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def time_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> float:
    """Seconds until predicate() holds (AssertionError after ``timeout``)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            if predicate():
                return time.monotonic() - t0
        except requests.RequestException:
            pass
        time.sleep(interval)
    raise AssertionError(f"not true within {timeout}s")


def health_ok(base_url: str) -> bool:
    try:
        return requests.get(base_url + "/api/v1/health", timeout=2).status_code == 200
    except requests.RequestException:
        return False


class Receiver:
    """A webhook receiver on a fixed loopback port that can be down, then up."""

    def __init__(self, port: int) -> None:
        import http.server
        import json as _json

        self.port = port
        self.received: list[tuple[str, dict]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.received.append((self.headers.get("webhook-id", ""), _json.loads(body)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._handler = Handler
        self._server = None

    def up(self) -> None:
        import http.server

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), self._handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def down(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
