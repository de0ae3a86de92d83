"""The sandbox channel: a fake radio for integrating before a phone or modem is paired.

Recipients are classified by the last four digits of the national number (CONTRACT.md):
``0001`` failed (SANDBOX_FAILURE), ``0002`` sent then undelivered, ``0003`` sent and no report
ever, anything else sent then delivered; ``sandbox_delay_ms`` apart. The claim goes through the
normal :func:`claim_for_channel`, so the sandbox proves the same no-duplicate rules as a phone.
"""
from __future__ import annotations

import heapq
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import phonenumbers

from relaybox import messages
from relaybox.channels.base import Channel
from relaybox.models import Message

if TYPE_CHECKING:  # pragma: no cover
    from relaybox.runtime import Runtime

log = logging.getLogger("relaybox.sandbox")

SANDBOX_ID = "sandbox"


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
            for m in batch:
                self._after(self.delay, m.id, "send")

    def resume(self) -> None:
        """After a restart: finish what the sandbox had claimed (never claim twice)."""
        for m in Message.select(Message.id, Message.status).where(
                (Message.channel_id == self.id) & (Message.status << ["dispatched", "sent"])):
            self._after(self.delay, m.id, "send" if m.status == "dispatched" else "report")

    def _after(self, delay: float, message_id: str, step: str) -> None:
        if delay <= 0:
            self._step(message_id, step)
            return
        with self._cv:
            self._seq += 1
            heapq.heappush(self._timers, (time.monotonic() + delay, self._seq, message_id, step))
            self._cv.notify()

    def _step(self, message_id: str, step: str) -> None:
        m = Message.get_or_none(Message.id == message_id)
        if m is None:
            return
        result = outcome_for(m.to_number)
        if step == "send":
            if result == "failed":
                messages.transition(m.id, "failed", error_code="SANDBOX_FAILURE",
                                    error_message="sandbox: recipient ending 0001 always fails",
                                    expect_channel=self.id)
                return
            if result == "sent_only":
                # Known before sending: no report will ever come, so "sent" is final.
                Message.update(report_expected=False).where(Message.id == m.id).execute()
            if messages.transition(m.id, "sent", expect_channel=self.id):
                self.sent_count += 1
                if result != "sent_only":
                    self._after(self.delay, m.id, "report")
        elif step == "report":
            if result == "undelivered":
                messages.transition(m.id, "undelivered", error_code="CARRIER_REJECTED",
                                    error_message="sandbox: recipient ending 0002 is refused by the carrier",
                                    expect_channel=self.id)
            elif result == "delivered":
                messages.transition(m.id, "delivered", expect_channel=self.id)

    def _timer_loop(self) -> None:
        while not self._stop.is_set():
            with self._cv:
                if not self._timers:
                    self._cv.wait(0.5)
                    continue
                due, _, mid, step = self._timers[0]
                wait = due - time.monotonic()
                if wait > 0:
                    self._cv.wait(min(wait, 0.5))
                    continue
                heapq.heappop(self._timers)
            try:
                self._step(mid, step)
            except Exception:  # noqa: BLE001 - keep the radio alive; the row is the truth
                # E.g. the database was locked or the disk full: try the same step again later
                # (transitions are conditional, so a retry never moves a message twice).
                log.exception("sandbox step %s for %s failed; retrying in 1 s", step, mid)
                self._after(max(self.delay, 1.0), mid, step)

    def start(self) -> None:
        self._thread.start()
        self.resume()

    def stop(self) -> None:
        self._stop.set()
        with self._cv:
            self._cv.notify()
        self._thread.join(2)
