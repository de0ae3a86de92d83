"""The sandbox channel: a fake radio for integrating before a phone or modem is paired.

Recipients are classified by the last four digits of the national number (CONTRACT.md):
``0001`` failed (SANDBOX_FAILURE), ``0002`` sent then undelivered, ``0003`` sent and no report
ever, anything else sent then delivered; ``sandbox_delay_ms`` apart. The claim goes through the
normal :func:`claim_for_channel`, so the sandbox proves the same no-duplicate rules as a phone.
"""
from __future__ import annotations

import functools
import heapq
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import phonenumbers

from relaybox import messages
from relaybox.channels.base import Channel
from relaybox.db import write_tx
from relaybox.models import Message

if TYPE_CHECKING:  # pragma: no cover
    from relaybox.runtime import Runtime

log = logging.getLogger("relaybox.sandbox")

SANDBOX_ID = "sandbox"


@functools.lru_cache(maxsize=4096)
def outcome_for(number: str) -> str:
    """``failed`` / ``undelivered`` / ``sent_only`` / ``delivered`` for a recipient."""
    try:
        national = str(phonenumbers.parse(number, None).national_number)
    except phonenumbers.NumberParseException:
        national = number
    return {"0001": "failed", "0002": "undelivered", "0003": "sent_only"}.get(national[-4:], "delivered")


class SandboxChannel(Channel):
    kind = "sandbox"

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.id = SANDBOX_ID
        self.name = "Sandbox"
        self.delay = runtime.config.sandbox_delay_ms / 1000
        self._number = runtime.config.sandbox_from
        self._pump_pending = threading.Event()
        self._pump_requested_at = 0.0
        self._timers: list[tuple[float, int, str, str]] = []
        self._seq = 0
        self._cv = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._timer_loop, name="sandbox-radio", daemon=True)
        self.sent_count = 0

    def numbers(self) -> list[str]:
        return [self._number]

    def online(self) -> bool:
        return True

    def status(self) -> dict[str, Any]:
        return {"online": True, "sent_total": self.sent_count}

    def notify(self) -> None:
        # Coalesce: one pump task in the queue at a time is enough; it drains everything. A
        # request older than 2 s counts as lost (the queue was unwritable, or with a shared Redis
        # queue another process ran the task and this one's flag was never cleared).
        now = time.monotonic()
        if self._pump_pending.is_set() and now - self._pump_requested_at < 2.0:
            return
        self._pump_pending.set()
        self._pump_requested_at = now
        try:
            self.runtime.tasks.sandbox_pump()
        except Exception as exc:  # noqa: BLE001 - never fail the caller; the sweeps re-notify
            self._pump_pending.clear()
            log.warning("sandbox: could not enqueue a pump (%s); retried by the housekeeper", exc)

    # -- the fake radio --------------------------------------------------------------------
    def pump(self) -> int:
        """Claim everything assigned to the sandbox and start its radio steps (a Huey task)."""
        self._pump_pending.clear()
        total = 0
        while True:
            batch = messages.claim_for_channel(self.id, limit=200)
            if not batch:
                return total
            self.runtime.router.claimed(self.id, len(batch))
            total += len(batch)
            self._after_many(self.delay, [(m.id, "send") for m in batch])

    def resume(self) -> None:
        """After a restart: finish what the sandbox had claimed (never claim twice)."""
        for m in Message.select(Message.id, Message.status).where(
                (Message.channel_id == self.id) & (Message.status << ["dispatched", "sent"])):
            self._after(self.delay, m.id, "send" if m.status == "dispatched" else "report")

    def _after(self, delay: float, message_id: str, step: str) -> None:
        self._after_many(delay, [(message_id, step)])

    def _after_many(self, delay: float, items: list[tuple[str, str]]) -> None:
        if delay <= 0:
            self._steps(items)
            return
        with self._cv:
            due = time.monotonic() + delay
            for message_id, step in items:
                self._seq += 1
                heapq.heappush(self._timers, (due, self._seq, message_id, step))
            self._cv.notify()

    def _steps(self, items: list[tuple[str, str]]) -> None:
        """Run radio steps for many messages in one transaction (one commit per radio tick,
        not per message: the sandbox must not eat the database's write capacity)."""
        rows = {m.id: m for m in Message.select(Message.id, Message.to_number)
                .where(Message.id << [mid for mid, _ in items])}
        moves: list[tuple[str, str, dict[str, Any]]] = []
        no_report: list[str] = []
        for mid, step in items:
            m = rows.get(mid)
            if m is None:
                continue
            result = outcome_for(m.to_number)
            if step == "send" and result == "failed":
                moves.append((mid, "failed", {"error_code": "SANDBOX_FAILURE", "expect_channel": self.id,
                                              "error_message": "sandbox: recipient ending 0001 always fails"}))
            elif step == "send":
                if result == "sent_only":
                    no_report.append(mid)  # known before sending: "sent" is final
                moves.append((mid, "sent", {"expect_channel": self.id}))
            elif result == "undelivered":
                moves.append((mid, "undelivered", {
                    "error_code": "CARRIER_REJECTED", "expect_channel": self.id,
                    "error_message": "sandbox: recipient ending 0002 is refused by the carrier"}))
            elif result == "delivered":
                moves.append((mid, "delivered", {"expect_channel": self.id}))
        if no_report:
            with write_tx():
                Message.update(report_expected=False).where(Message.id << no_report).execute()
        moved = messages.transition_many(moves) if moves else []
        reports = []
        for (mid, new, _), ok in zip(moves, moved):
            if ok and new == "sent":
                self.sent_count += 1
                if outcome_for(rows[mid].to_number) != "sent_only":
                    reports.append((mid, "report"))
        if reports:
            self._after_many(self.delay, reports)

    def _timer_loop(self) -> None:
        while not self._stop.is_set():
            with self._cv:
                if not self._timers:
                    self._cv.wait(0.5)
                    continue
                wait = self._timers[0][0] - time.monotonic()
                if wait > 0:
                    self._cv.wait(min(wait, 0.5))
                    continue
                due_items: list[tuple[str, str]] = []
                now = time.monotonic()
                while self._timers and self._timers[0][0] <= now and len(due_items) < 500:
                    _, _, mid, step = heapq.heappop(self._timers)
                    due_items.append((mid, step))
            try:
                self._steps(due_items)
            except Exception:
                # E.g. the database was locked or the disk full: try the same steps again later
                # (transitions are conditional, so a retry never moves a message twice).
                log.exception("sandbox steps for %d messages failed; retrying in 1 s", len(due_items))
                self._after_many(max(self.delay, 1.0), due_items)

    def start(self) -> None:
        self._thread.start()
        self.resume()

    def stop(self) -> None:
        self._stop.set()
        with self._cv:
            self._cv.notify()
        self._thread.join(2)
