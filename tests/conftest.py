"""Test fixtures: a real relaybox process on an ephemeral loopback port, real SQLite files.

``server_factory(**settings)`` starts ``relaybox serve`` in a subprocess with its own data dir
(settings become RELAYBOX_* environment variables, or ``config_text`` a config.toml), and
returns a :class:`RelayboxServer` with a ready ``requests`` session carrying the owner's key.
"""
from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import requests

HERE = Path(__file__).resolve().parent


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05,
             message: str = "condition") -> Any:
    """Poll until predicate() is truthy; bounded, fails the test with ``message``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message} (last: {last!r})")


class Api(requests.Session):
    """A session whose relative paths go to /api/v1 of one server."""

    def __init__(self, base: str, key: str | None) -> None:
        super().__init__()
        self.base = base
        if key:
            self.headers["X-API-Key"] = key

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        if url.startswith("/"):
            url = self.base + url
        kwargs.setdefault("timeout", 30)
        return super().request(method, url, *args, **kwargs)


class RelayboxServer:
    def __init__(self, data_dir: Path, env: dict[str, str], config_path: Path | None = None) -> None:
        self.data_dir = data_dir
        self.env = env
        self.config_path = config_path
        self.proc: subprocess.Popen[str] | None = None
        self.port: int | None = None
        self.log_path = data_dir / "server.log"
        init = subprocess.run(self._cmd("init", "--json"), env=env, capture_output=True, text=True, timeout=60)
        assert init.returncode == 0, init.stderr
        lines = init.stdout.strip().splitlines()
        # On a database another server already initialised (scale-out tests) init prints no key.
        created = json.loads(lines[-1]) if lines else {"account_id": None, "api_key": None}
        self.account_id: str = created["account_id"]
        self.key: str = created["api_key"]

    def _cmd(self, *args: str) -> list[str]:
        cmd = [sys.executable, "-m", "relaybox.cli", args[0], "--data-dir", str(self.data_dir)]
        if self.config_path:
            cmd += ["--config", str(self.config_path)]
        return cmd + list(args[1:])

    def start(self, port: int | None = None) -> RelayboxServer:
        port = port if port is not None else (self.port or 0)
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen(self._cmd("serve", "--port", str(port), "--host", "127.0.0.1"),
                                     env=self.env, stdout=subprocess.PIPE, stderr=log, text=True)
        deadline = time.monotonic() + 30
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                if self.proc.poll() is not None:
                    raise AssertionError(f"relaybox exited: {self.log_path.read_text()[-3000:]}")
                continue
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                break
        else:
            raise AssertionError("relaybox did not start")
        # Keep draining stdout so the child never blocks on a full pipe.
        import threading

        out = self.proc.stdout
        threading.Thread(target=lambda: [None for _ in out], daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base(self) -> str:
        return self.url + "/api/v1"

    def api(self, key: str | None = "") -> Api:
        return Api(self.api_base, self.key if key == "" else key)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    @property
    def database_url(self) -> str:
        """The database this server uses: its SQLite file, or the PostgreSQL URL of a scale-out run."""
        return self.env.get("RELAYBOX_DATABASE") or "sqlite:///" + str(self.data_dir / "relaybox.db")

    def sql(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run one statement on this server's database and commit; rows if it returns any.

        ``?`` placeholders work on SQLite and PostgreSQL alike, so tests that look at (or age)
        rows directly also run in the scale-out run.
        """
        url = self.database_url
        if url.startswith("postgres"):
            import psycopg2

            con = psycopg2.connect(url)
            try:
                with con, con.cursor() as cur:
                    cur.execute(query.replace("%", "%%").replace("?", "%s"), params)
                    return list(cur.fetchall()) if cur.description else []
            finally:
                con.close()
        import sqlite3

        con = sqlite3.connect(url[len("sqlite:///"):], timeout=30)
        try:
            with con:
                cur = con.execute(query, params)
                return list(cur.fetchall()) if cur.description else []
        finally:
            con.close()

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""


# -- scale-out runs: every server gets its own PostgreSQL database and Redis db -----------------
_scale_seq = itertools.count(1)


def fresh_postgres_url(outer: str, cleanups: list[Callable[[], None]]) -> str:
    """CREATE a new, empty database next to ``outer``'s (same server, user); dropped at teardown."""
    import psycopg2

    parts = urlsplit(outer)
    name = f"rbt_{os.getpid()}_{next(_scale_seq)}_{uuid.uuid4().hex[:6]}"
    con = psycopg2.connect(outer)
    con.autocommit = True
    try:
        with con.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    finally:
        con.close()

    def drop() -> None:
        con = psycopg2.connect(outer)
        con.autocommit = True
        try:
            with con.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            con.close()

    cleanups.append(drop)
    return urlunsplit(parts._replace(path="/" + name))


def fresh_redis_url(outer: str) -> str:
    """A Redis db number of its own (emptied first), on ``outer``'s server."""
    import redis

    client = redis.Redis.from_url(outer)
    try:
        count = int(client.config_get("databases").get("databases", 16))
    except redis.RedisError:
        count = 16
    base = urlsplit(outer)
    first = int(base.path.strip("/") or 0)
    # Spread over every db but the outer one; pid keeps concurrent pytest runs apart.
    number = (first + 1 + (os.getpid() * 7 + next(_scale_seq)) % (count - 1)) % count
    redis.Redis.from_url(urlunsplit(base._replace(path=f"/{number}"))).flushdb()
    return urlunsplit(base._replace(path=f"/{number}"))


def _env(settings: dict[str, Any], cleanups: list[Callable[[], None]] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYBOX_")}
    env["PYTHONUNBUFFERED"] = "1"
    for k, v in settings.items():
        env["RELAYBOX_" + k.upper()] = str(v).lower() if isinstance(v, bool) else str(v)
    # Scale-out runs of the suite point every server at PostgreSQL/Redis (see .ci/run), each
    # server on a database and Redis db of its own, as each gets a data dir of its own.
    outer_db = os.environ.get("RELAYBOX_TEST_DATABASE")
    if outer_db and "RELAYBOX_DATABASE" not in env:
        env["RELAYBOX_DATABASE"] = (fresh_postgres_url(outer_db, cleanups) if cleanups is not None
                                    and outer_db.startswith("postgres") else outer_db)
    outer_q = os.environ.get("RELAYBOX_TEST_QUEUE")
    if outer_q and "RELAYBOX_QUEUE" not in env:
        env["RELAYBOX_QUEUE"] = fresh_redis_url(outer_q) if outer_q.startswith("redis") else outer_q
    return env


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., RelayboxServer]]:
    servers: list[RelayboxServer] = []
    cleanups: list[Callable[[], None]] = []

    def make(config_text: str | None = None, start: bool = True, data_dir: Path | None = None,
             **settings: Any) -> RelayboxServer:
        d = data_dir or tmp_path / f"data{len(servers)}"
        d.mkdir(parents=True, exist_ok=True)
        cfg = None
        if config_text is not None:
            cfg = d / "config.toml"
            cfg.write_text(config_text)
        settings.setdefault("log_level", "INFO")
        srv = RelayboxServer(d, _env(settings, cleanups), cfg)
        servers.append(srv)
        return srv.start() if start else srv

    yield make
    for s in servers:
        s.stop()
    for drop in cleanups:
        try:
            drop()
        except Exception as exc:  # noqa: BLE001 - a leftover test database is not a failure
            print(f"cleanup failed: {exc}")


@pytest.fixture
def sandbox(server_factory: Callable[..., RelayboxServer]) -> RelayboxServer:
    """A server with the sandbox channel on and short radio delays."""
    return server_factory(sandbox=True, sandbox_delay_ms=30)


@pytest.fixture
def phones() -> Iterator[Any]:
    """Simulated Android phones (``tests/android_support.Phones``), stopped after the test."""
    from android_support import Phones

    p = Phones()
    yield p
    p.stop_all()


@pytest.fixture
def sims(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start pty modem simulators (``relaybox.channels.modem.simulator``); stopped afterwards.
    Each sits behind a /dev/serial/by-id style link in the test's temp dir."""
    from relaybox.channels.modem.simulator import ModemSimulator

    started: list[ModemSimulator] = []

    def make(**options: Any) -> ModemSimulator:
        link = str(tmp_path / f"usb-Relaybox_Sim_{len(started)}-if02-port0")
        sim = ModemSimulator(link=link, name=f"sim{len(started)}", **options).start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        sim.stop()
