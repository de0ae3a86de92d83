"""Operations: ``GET /metrics``, request logging, retention pruning, the data-dir lock.

- ``/metrics`` (Prometheus text format, ``prometheus_client``): messages by status and channel,
  queue depth and oldest age, webhook attempts by outcome (from the attempt log), channels/devices online, a request
  latency histogram. With ``metrics_token`` set it needs ``Authorization: Bearer <token>``;
  without one it answers loopback clients only, and never a request relayed by a proxy
  (``X-Real-IP`` present; waitress drops ``X-Forwarded-*``/``Forwarded`` from untrusted peers
  before the app sees them), since behind nginx every client looks like 127.0.0.1: a proxy in
  front must set ``X-Real-IP`` (or not pass ``/metrics`` at all). The figures that live in the database are read at scrape time, so every
  process of a scale-out installation reports the same totals.
- One log line per request (``relaybox.access``: method, route, status, ms; never the query
  string, body or headers, so no key or OTP code).
- Retention: with ``retention_days`` > 0, finished messages older than that (with their
  timeline, events and any rows of other areas that reference them) and finished webhook
  deliveries (with their attempt log) are deleted in small
  transactions every ``retention_interval`` seconds. Other areas opt a table in by giving its
  model a ``retention_field`` class attribute (the name of an integer-ms time column).
"""
from __future__ import annotations

import fcntl
import hmac
import logging
import os
import threading
import time
from collections.abc import Iterable
from typing import Any

from flask import Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from relaybox.errors import ApiError

log = logging.getLogger("relaybox.ops")
access_log = logging.getLogger("relaybox.access")
log_state = logging.getLogger("relaybox.messages")

LOOPBACK = ("127.0.0.1", "::1", "::ffff:127.0.0.1")
PROXY_HEADERS = ("X-Forwarded-For", "Forwarded", "X-Real-IP")
# Statuses after which a message will not change any more (inbound ones included).
OPEN_STATUSES = ("accepted", "scheduled", "queued", "dispatched")
DAY_MS = 86_400_000

_current: Metrics | None = None


# -- metrics ------------------------------------------------------------------------------------
class _DatabaseCollector(Collector):
    """Figures read from the database at scrape time (shared by every process)."""

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime

    def collect(self) -> Iterable[Any]:
        from peewee import fn

        from relaybox.models import Message
        from relaybox.timeutil import now_ms

        by_status = GaugeMetricFamily("relaybox_messages", "Messages in the database by status and channel",
                                      labels=["status", "channel"])
        for status, channel, n in (Message.select(Message.status, Message.channel_id, fn.COUNT(Message.id))
                                   .group_by(Message.status, Message.channel_id).tuples()):
            by_status.add_metric([status, channel or "none"], n)
        yield by_status

        depth, oldest = (Message.select(fn.COUNT(Message.id), fn.MIN(Message.queued_at))
                         .where(Message.status == "queued").tuples().get())
        yield GaugeMetricFamily("relaybox_queue_depth", "Messages queued and not yet handed to a channel",
                                value=depth or 0)
        age = max(0.0, (now_ms() - oldest) / 1000) if oldest else 0.0
        yield GaugeMetricFamily("relaybox_queue_oldest_age_seconds",
                                "Age of the oldest queued message (0 when the queue is empty)", value=age)
        scheduled = Message.select().where(Message.status == "scheduled").count()
        yield GaugeMetricFamily("relaybox_scheduled_messages", "Messages waiting for their send_at",
                                value=scheduled)

        online = GaugeMetricFamily("relaybox_channels_online", "Channels of this process online, by kind",
                                   labels=["kind"])
        total = GaugeMetricFamily("relaybox_channels", "Channels of this process, by kind", labels=["kind"])
        kinds: dict[str, list[int]] = {}
        for ch in list(self.runtime.channels.values()):
            k = kinds.setdefault(getattr(ch, "kind", "unknown"), [0, 0])
            k[1] += 1
            try:
                k[0] += int(bool(ch.enabled() and ch.online()))
            except Exception:
                log.debug("channel %s status failed", getattr(ch, "id", "?"), exc_info=True)
        for kind, (up, n) in sorted(kinds.items()):
            online.add_metric([kind], up)
            total.add_metric([kind], n)
        yield online
        yield total
        yield GaugeMetricFamily("relaybox_devices_online", "Paired Android phones online (this process)",
                                value=kinds.get("android", [0, 0])[0])

        try:
            from relaybox.webhooks import WebhookAttempt, WebhookDelivery
        except ImportError:  # pragma: no cover - the webhooks area is part of the package
            return
        attempts = CounterMetricFamily("relaybox_webhook_attempts",
                                       "Webhook delivery attempts in the attempt log, by outcome",
                                       labels=["outcome"])
        for outcome, n in (WebhookAttempt.select(WebhookAttempt.outcome, fn.COUNT(WebhookAttempt.id))
                           .group_by(WebhookAttempt.outcome).tuples()):
            attempts.add_metric([outcome], n)
        yield attempts
        deliveries = GaugeMetricFamily("relaybox_webhook_deliveries", "Webhook deliveries by state",
                                       labels=["state"])
        for state, n in (WebhookDelivery.select(WebhookDelivery.state, fn.COUNT(WebhookDelivery.id))
                         .group_by(WebhookDelivery.state).tuples()):
            deliveries.add_metric([state], n)
        yield deliveries


class Metrics:
    """One registry per app (tests build several apps in one process)."""

    def __init__(self, runtime: Any) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.request_seconds = Histogram(
            "relaybox_http_request_duration_seconds", "HTTP request latency by route",
            ["method", "route", "status"], registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.state_changes = Counter(
            "relaybox_message_transitions", "Message status changes made by this process", ["status"],
            registry=self.registry)
        self.registry.register(_DatabaseCollector(runtime))

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _is_local_request() -> bool:
    if any(request.headers.get(h) for h in PROXY_HEADERS):
        return False
    addr = request.remote_addr or ""
    return addr in LOOPBACK or addr.startswith("127.")


def _authorise_metrics(token: str) -> None:
    if token:
        auth = request.headers.get("Authorization", "")
        given = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        if not given or not hmac.compare_digest(given.encode(), token.encode()):
            raise ApiError("UNAUTHORIZED", "metrics: send Authorization: Bearer <metrics_token>")
        return
    if not _is_local_request():
        raise ApiError("FORBIDDEN", "metrics: only loopback clients may read /metrics unless metrics_token is set")


# -- retention ----------------------------------------------------------------------------------
def prune(cutoff_ms: int, chunk: int = 500) -> dict[str, int]:
    """Delete finished messages created before ``cutoff_ms`` and what hangs off them.

    Small transactions (``chunk`` messages each) so the API keeps answering during a big pass.
    Returns how many rows went, by table.
    """
    import peewee as pw

    from relaybox.db import all_models, write_tx
    from relaybox.models import Batch, Event, Message, MessageEvent

    counts: dict[str, int] = {}

    def add(name: str, n: int) -> None:
        if n:
            counts[name] = counts.get(name, 0) + n

    # Rows of other areas that reference a message (attempt logs, device copies, ...).
    dependents = [(m, f) for m in all_models() for f in m._meta.refs
                  if getattr(f, "rel_model", None) is Message and m is not MessageEvent]
    while True:
        ids = [r.id for r in Message.select(Message.id)
               .where((Message.created_at < cutoff_ms) & Message.status.not_in(OPEN_STATUSES))
               .order_by(Message.created_at).limit(chunk)]
        if not ids:
            break
        with write_tx():
            for model, fk in dependents:
                if fk.null and fk.on_delete != "CASCADE":
                    add(model._meta.table_name, model.update({fk: None}).where(fk << ids).execute())
                else:
                    add(model._meta.table_name, model.delete().where(fk << ids).execute())
            add("message_event", MessageEvent.delete().where(MessageEvent.message << ids).execute())
            add("event", Event.delete().where(Event.message_id << ids).execute())
            add("message", Message.delete().where(Message.id << ids).execute())
        if len(ids) < chunk:
            break
    # Events not tied to a message (device.offline, otp.verified, ...), by age.
    while True:
        ids = [r.id for r in Event.select(Event.id).where(Event.created_at < cutoff_ms).limit(chunk)]
        if not ids:
            break
        with write_tx():
            add("event", Event.delete().where(Event.id << ids).execute())
    # Batches whose messages are all gone.
    gone = (Batch.select(Batch.id).where(
        (Batch.created_at < cutoff_ms)
        & ~pw.fn.EXISTS(Message.select(Message.id).where(Message.batch == Batch.id))))
    ids = [b.id for b in gone.limit(10_000)]
    for i in range(0, len(ids), chunk):
        with write_tx():
            add("batch", Batch.delete().where(Batch.id << ids[i:i + chunk]).execute())
    # Webhook deliveries that ended (their attempt log goes with them), and test-bin entries.
    try:
        from relaybox.webhooks import WebhookAttempt, WebhookBinEntry, WebhookDelivery
    except ImportError:  # pragma: no cover
        WebhookDelivery = None  # type: ignore[assignment,misc]
    if WebhookDelivery is not None:
        while True:
            ids = [r.id for r in WebhookDelivery.select(WebhookDelivery.id).where(
                (WebhookDelivery.completed_at < cutoff_ms) & (WebhookDelivery.state != "pending")).limit(chunk)]
            if not ids:
                break
            with write_tx():
                add("webhook_attempt", WebhookAttempt.delete().where(WebhookAttempt.delivery << ids).execute())
                add("webhook_delivery", WebhookDelivery.delete().where(WebhookDelivery.id << ids).execute())
            if len(ids) < chunk:
                break
        with write_tx():
            add("webhook_bin_entry", WebhookBinEntry.delete().where(WebhookBinEntry.received_at < cutoff_ms).execute())
    # Tables of other areas that opted in with ``retention_field``.
    for model in all_models():
        name = getattr(model, "retention_field", None)
        if not name:
            continue
        field = getattr(model, name)
        pk = model._meta.primary_key
        while True:
            ids = [r[0] for r in model.select(pk).where(field < cutoff_ms).limit(chunk).tuples()]
            if not ids:
                break
            with write_tx():
                add(model._meta.table_name, model.delete().where(pk << ids).execute())
            if len(ids) < chunk:
                break
    return counts


class RetentionSweeper:
    """Runs :func:`prune` every ``retention_interval`` seconds (a housekeeper sweeper)."""

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime
        self._last = 0.0
        self._running = threading.Lock()

    def __call__(self) -> None:
        cfg = self.runtime.config
        if not cfg.retention_days or time.monotonic() - self._last < cfg.retention_interval:
            return
        if not self._running.acquire(blocking=False):
            return
        try:
            self._last = time.monotonic()
            from relaybox.timeutil import now_ms

            started = time.monotonic()
            counts = prune(now_ms() - cfg.retention_days * DAY_MS)
            if counts:
                log.info("retention: deleted %s older than %d days in %.2fs",
                         ", ".join(f"{n} {t}" for t, n in sorted(counts.items())), cfg.retention_days,
                         time.monotonic() - started)
        finally:
            self._running.release()


# -- data-dir lock ------------------------------------------------------------------------------
LOCK_NAME = "serve.lock"


class ServeLock:
    """``relaybox serve`` holds an advisory lock on ``<data_dir>/serve.lock`` while it runs, so
    ``relaybox restore`` can refuse to overwrite the database of a running server."""

    def __init__(self, data_dir: str) -> None:
        self.path = os.path.join(data_dir, LOCK_NAME)
        self._fh: Any = None
        self._warned = False

    def __call__(self) -> None:
        if self._fh is not None:
            return
        fh = open(self.path, "a+")  # noqa: SIM115 - held open for the life of the process
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            if not self._warned:
                log.warning("another relaybox process serves %s", os.path.dirname(self.path))
                self._warned = True
            return
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._fh = fh


def data_dir_in_use(data_dir: str) -> bool:
    """True when a running ``relaybox serve`` holds the data dir's lock."""
    path = os.path.join(data_dir, LOCK_NAME)
    if not os.path.exists(path):
        return False
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


# -- wiring -------------------------------------------------------------------------------------
def init_app(app: Any) -> None:
    """Metrics route, request log + latency, retention sweeper, data-dir lock."""
    global _current
    from relaybox.logs import install_redaction

    runtime = app.extensions["relaybox"]
    config = runtime.config
    install_redaction()
    metrics = Metrics(runtime)
    app.extensions["relaybox.metrics"] = metrics
    _current = metrics

    from relaybox import events

    def _count_transitions(evs: list[Any]) -> None:
        for ev in evs:
            if ev.type == "message.status":
                metrics.state_changes.labels(status=str(ev.payload.get("status"))).inc()

    events.subscribe(_count_transitions)

    def _log_accepted(rows: list[Any]) -> None:
        # After the accept transaction committed: one line per message (accepted -> queued or
        # scheduled); later changes are logged by relaybox.messages as they happen.
        for m in rows:
            log_state.info("message %s accepted, %s%s", m.id, m.status,
                           f" on {m.channel_id}" if m.channel_id else "")

    runtime.after_accept.append(_log_accepted)

    @app.before_request
    def _start_timer() -> None:
        g._relaybox_t0 = time.perf_counter()

    @app.after_request
    def _observe(response: Response) -> Response:
        t0 = getattr(g, "_relaybox_t0", None)
        if t0 is None:
            return response
        elapsed = time.perf_counter() - t0
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        metrics.request_seconds.labels(request.method, route, str(response.status_code)).observe(elapsed)
        if config.log_requests:
            access_log.info("%s %s %d %.1fms", request.method, route, response.status_code, elapsed * 1000,
                            extra={"method": request.method, "route": route, "status": response.status_code,
                                   "ms": round(elapsed * 1000, 1), "remote": request.remote_addr})
        return response

    if config.metrics_enabled:
        def metrics_view() -> Response:
            _authorise_metrics(config.metrics_token)
            return Response(metrics.render(), mimetype=None, content_type=CONTENT_TYPE_LATEST)

        app.add_url_rule("/metrics", "ops_metrics", metrics_view, methods=["GET"])

    from relaybox.paging import install as install_message_buckets

    install_message_buckets()  # SQLite: counts per page bucket, kept by triggers (GET /messages)
    serve_lock = ServeLock(config.data_dir)
    runtime.before_start.append(serve_lock)  # taken before the server does anything
    runtime.sweepers.append(serve_lock)  # and again later if another process held it then
    runtime.sweepers.append(RetentionSweeper(runtime))
