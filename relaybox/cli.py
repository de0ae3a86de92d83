"""The ``relaybox`` command: serve, init, and the commands feature areas add.

Exit codes (CONTRACT.md): 0 success, 2 bad usage or bad config (with a message naming the
setting). Feature areas add subcommands through ``CLI_MODULES``: each module has
``add_commands(subparsers, common)`` where ``common`` is a parent parser with
``--config`` and ``--data-dir``.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from relaybox import __version__
from relaybox.config import Config, ConfigError, load_config

CLI_MODULES: list[str] = ["relaybox.ops_cli", "relaybox.channels.android.cli", "relaybox.tls", "relaybox.account_cli",
                         "relaybox.admin_cli", "relaybox.channels.modem.cli"]


def config_from_args(args: argparse.Namespace, **extra: Any) -> Config:
    return load_config(getattr(args, "config", None), data_dir=getattr(args, "data_dir", None), **extra)


def setup_logging(config: Config) -> None:
    if config.log_json:
        from relaybox.logs import JsonFormatter

        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        logging.basicConfig(level=config.log_level, handlers=[handler], force=True)
    else:
        logging.basicConfig(level=config.log_level, force=True,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("huey").setLevel(max(logging.WARNING, logging.getLevelName(config.log_level)))


def ensure_owner(config: Config, *, as_json: bool = False, quiet_if_exists: bool = True) -> dict[str, str] | None:
    """Create the owner account (API enabled) if there is none; return its key once."""
    import os

    import relaybox.models  # noqa: F401 - declare the core tables
    from relaybox.accounts import create_account, owner_account
    from relaybox.db import create_tables, open_database
    from relaybox.security import load_or_create_secret, set_instance_secret

    os.makedirs(config.data_dir, exist_ok=True)
    set_instance_secret(load_or_create_secret(config.data_dir, config.secret))
    open_database(config.database_url)
    create_tables()
    from relaybox.db import db, is_sqlite, write_tx

    with write_tx():
        # Several processes may init one PostgreSQL database at once (scale-out): one owner only.
        if not is_sqlite():
            db.execute_sql("SELECT pg_advisory_xact_lock(7297813)")
        if owner_account() is not None:
            return None
        acc, key = create_account("Owner", api_enabled=True, owner=True)
    return {"account_id": acc.id, "api_key": key}


def cmd_init(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    created = ensure_owner(config)
    if created is None:
        if not args.json:
            print(f"relaybox is already initialised in {config.data_dir}; no key printed.")
        return 0
    if args.json:
        print(json.dumps(created))
    else:
        _print_key(config, created)
    return 0


def _print_key(config: Config, created: dict[str, str]) -> None:
    print(f"Created the owner account {created['account_id']} in {config.data_dir}")
    print(f"API key (shown once, save it now): {created['api_key']}")


class _LifoCondition(threading.Condition):
    """A Condition whose ``notify`` wakes the thread that started waiting last (stock: first)."""

    def notify(self, n: int = 1) -> None:
        if not self._is_owned():  # type: ignore[attr-defined]
            raise RuntimeError("cannot notify on un-acquired lock")
        waiters = self._waiters  # type: ignore[attr-defined]
        while waiters and n > 0:
            waiter = waiters[-1]
            try:
                waiter.release()
            except RuntimeError:
                pass
            else:
                n -= 1
            try:
                waiters.remove(waiter)
            except ValueError:
                pass


def lifo_dispatcher(threads: int) -> Any:
    """Waitress's thread pool, handing each request to the thread that went idle last.

    Stock waitress wakes the thread idle the longest, so requests rotate through every thread of
    the pool and each one warms up its own SQLite connection, malloc arena and stack (~0.3 MB a
    thread): after a few dozen requests the whole pool is resident. Newest-first keeps the work on
    as few threads as the concurrency needs; the pool size (and what it can serve at once) is
    unchanged."""
    from waitress.task import ThreadedTaskDispatcher

    dispatcher = ThreadedTaskDispatcher()
    if hasattr(dispatcher.queue_cv, "_waiters") and hasattr(dispatcher.queue_cv, "_is_owned"):
        dispatcher.queue_cv = _LifoCondition(dispatcher.lock)
    dispatcher.set_thread_count(threads)
    return dispatcher


def cmd_serve(args: argparse.Namespace) -> int:
    config = config_from_args(args, host=args.host, port=args.port)
    setup_logging(config)
    created = ensure_owner(config)
    if created is not None:
        _print_key(config, created)
    from waitress import create_server

    from relaybox.app import create_app

    app = create_app(config)
    runtime = app.extensions["relaybox"]
    # channel_request_lookahead=1 keeps a connection readable while its request runs, so a phone
    # that drops its SSE stream is noticed at once (environ["waitress.client_disconnected"]).
    # A reverse proxy on this box (packaging/nginx/relaybox.conf terminates TLS) is trusted for the
    # client's scheme, host and address, so URLs relaybox hands out (phones' webhook URL, pairing
    # page) say https://; waitress drops these headers from anyone else.
    # _dispatcher: waitress's own ThreadedTaskDispatcher, whose idle threads are woken newest first.
    server = create_server(app, _dispatcher=lifo_dispatcher(config.threads),
                           host=config.host, port=config.port, threads=config.threads,
                           channel_timeout=300, connection_limit=1000, ident="relaybox",
                           channel_request_lookahead=1, trusted_proxy="127.0.0.1", trusted_proxy_count=1,
                           trusted_proxy_headers={"x-forwarded-for", "x-forwarded-host", "x-forwarded-proto"})
    runtime.base_url = f"http://{config.host}:{server.effective_port}"
    runtime.http_server = server  # phones' SSE streams each hold a thread; the hub grows the pool
    runtime.start()
    # From here the main thread only runs waitress's socket loop: its database connection (schema,
    # recovery) would sit idle with its page cache for the life of the process.
    from relaybox.db import db

    db.close()

    def _term(signum: int, frame: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _term)
    print(f"relaybox {__version__} listening on http://{config.host}:{server.effective_port}/api/v1 "
          f"(data in {config.data_dir})", flush=True)
    try:
        server.run()
    except (SystemExit, KeyboardInterrupt):
        pass
    finally:
        server.close()
        runtime.stop()
    return 0


def build_parser(feature_commands: bool = True) -> argparse.ArgumentParser:
    """The whole command line; ``feature_commands=False`` leaves out the commands of
    ``CLI_MODULES`` (``relaybox serve`` does not keep their modules resident)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="config.toml (optional; defaults run without one)")
    common.add_argument("--data-dir", dest="data_dir", help="where the database and queue live")

    parser = argparse.ArgumentParser(prog="relaybox", description="Self-hosted SMS gateway appliance")
    parser.add_argument("--version", action="version", version=f"relaybox {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", parents=[common], help="run the API, queue and channels")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("init", parents=[common], help="create the data dir and the owner account")
    p.add_argument("--json", action="store_true", help="print one JSON line with account_id and api_key")
    p.set_defaults(func=cmd_init)

    for name in CLI_MODULES if feature_commands else ():
        importlib.import_module(name).add_commands(sub, common)
    return parser


@contextmanager
def _hidden(names: list[str]) -> Iterator[None]:
    """Make ``import name`` fail (ImportError) inside the block, for modules not imported yet."""
    hidden = [n for n in names if n not in sys.modules]
    for n in hidden:
        sys.modules[n] = None  # type: ignore[assignment]  # the import system's "not available"
    try:
        yield
    finally:
        for n in hidden:
            if sys.modules.get(n, 0) is None:
                del sys.modules[n]


def skip_unused_drivers(config: Config) -> None:
    """peewee imports psycopg2 and huey imports redis whenever they are installed (~11 MB resident
    together). A server whose config uses SQLite for both never needs them: peewee and huey are
    imported here with those drivers hidden, so they see them as absent (``PostgresqlDatabase``
    and ``RedisHuey`` then refuse to connect in this process, which the config never asks for).
    The drivers stay importable afterwards (``relaybox.bus`` imports redis itself when used)."""
    hide: list[str] = []
    if config.database_url.startswith("sqlite"):
        hide += ["psycopg2", "psycopg", "psycopg2cffi", "pymysql"]
    if not config.queue.startswith(("redis://", "rediss://")):
        hide += ["redis"]
    if not hide or "peewee" in sys.modules or "huey" in sys.modules:
        return
    with _hidden(hide):
        import huey.api  # noqa: F401
        import peewee  # noqa: F401

        import relaybox.db  # noqa: F401


def _skip_unused_drivers_for_serve(argv: list[str]) -> None:
    """``relaybox serve`` is the long-running process: read its config before anything imports
    peewee or huey (the subcommands' modules do) and skip the database/queue drivers it does not use."""
    if not argv or argv[0] != "serve":
        return
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    pre.add_argument("--data-dir", dest="data_dir")
    try:
        args, _ = pre.parse_known_args(argv[1:])
        config = config_from_args(args)
    except (ConfigError, SystemExit):
        return  # the real parser and cmd_serve report it
    skip_unused_drivers(config)


def limit_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives every thread that allocates while another one does its own malloc arena (up to
    8 per core), and each arena keeps its own free pages: a server with dozens of threads (waitress,
    one per phone stream, queue workers) holds megabytes in arenas it rarely needs, since the GIL
    lets one thread run Python at a time. Two arenas (glibc's ``M_ARENA_MAX``) keep that bounded.
    Called before any thread starts; an explicit ``MALLOC_ARENA_MAX`` in the environment wins."""
    if "MALLOC_ARENA_MAX" in os.environ or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None).mallopt(-8, arenas)  # M_ARENA_MAX (malloc.h); not glibc: no such symbol
    except (OSError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        limit_malloc_arenas()
    _skip_unused_drivers_for_serve(argv)
    parser = build_parser(feature_commands=argv[:1] != ["serve"])
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"relaybox: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
