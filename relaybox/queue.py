"""The Huey instance and its in-process consumer.

Huey carries background work (the sandbox radio, webhook deliveries, nudges). It has no
acknowledgements — a task dequeued when the process dies is gone — so every task is a nudge
that re-reads the database, and the housekeeper re-creates lost work from the rows.

SqliteHuey lives in its own file (``queue.db``): it takes exclusive locks that would otherwise
contend with API writes (LIBRARIES.md §14). ``queue = "redis://..."`` selects RedisHuey for
scale-out.
"""
from __future__ import annotations

import logging
import os
import threading

from huey import MemoryHuey, RedisHuey, SqliteHuey
from huey.api import Huey
from huey.consumer import Consumer

from relaybox.config import Config

log = logging.getLogger("relaybox.queue")


def make_huey(config: Config) -> Huey:
    if config.queue == "memory":
        return MemoryHuey("relaybox", results=False)
    if config.queue.startswith("redis://") or config.queue.startswith("rediss://"):
        from redis import ConnectionPool

        return RedisHuey("relaybox", results=False,
                         connection_pool=ConnectionPool.from_url(config.queue))
    if config.queue != "sqlite":
        raise ValueError(f"queue: unknown backend {config.queue!r} (sqlite, memory or redis://...)")
    os.makedirs(config.data_dir, exist_ok=True)
    return SqliteHuey("relaybox", filename=config.queue_path, results=False,
                      journal_mode="wal", timeout=10)


class _ThreadConsumer(Consumer):
    """Huey's consumer without signal handlers: the main thread (waitress) owns the signals."""

    def _set_signal_handlers(self) -> None:
        return None


class QueueRunner:
    """Runs ``Consumer.run()`` in a daemon thread so its worker health checks keep running."""

    def __init__(self, huey: Huey, workers: int) -> None:
        # Short poll delays: a nudge should run within tens of milliseconds, not after
        # Huey's default back-off of up to 10 s.
        self.consumer = _ThreadConsumer(huey, workers=workers, worker_type="thread",
                                        initial_delay=0.02, backoff=1.3, max_delay=0.25,
                                        periodic=True, check_worker_health=True)
        self.thread = threading.Thread(target=self.consumer.run, name="huey-consumer", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        try:
            self.consumer.stop(graceful=True)
        except Exception:
            log.exception("queue consumer stop failed")
        self.thread.join(timeout)
