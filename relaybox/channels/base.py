"""The small interface every sending channel implements.

A channel is anything that can put an SMS on the air: the sandbox, a paired Android phone, a USB
modem. The router assigns a queued message to a channel (``Message.channel`` set, status still
``queued``) and calls :meth:`Channel.notify`. The channel then *claims* its assigned messages
with :func:`relaybox.messages.claim_for_channel`, which atomically moves them to ``dispatched``
(so two workers never send the same message), and reports progress with
:func:`relaybox.messages.transition`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any


class Channel(ABC):
    """One way out to the radio.

    ``id`` is stable and stored on the message row (``sandbox``, ``dev_<ULID>``,
    ``modem_<name>``). ``kind`` is ``sandbox``, ``android`` or ``modem``.
    """

    id: str
    kind: str
    name: str

    @abstractmethod
    def numbers(self) -> list[str]:
        """E.164 sender numbers this channel owns (may be empty when unknown)."""

    @abstractmethod
    def online(self) -> bool:
        """True when the channel can take a message now."""

    def enabled(self) -> bool:
        return True

    @abstractmethod
    def notify(self) -> None:
        """Messages were assigned to this channel: wake whatever sends them.

        Must return quickly; it is called from request threads and queue workers.
        """

    def cancel(self, message_id: str) -> bool:
        """Ask the channel to drop a message it has claimed but not sent.

        Returns True when the cancel is certain (the message never left), False when the
        channel cannot promise that.
        """
        return False

    def status(self) -> dict[str, Any]:
        """Health details shown in ``/devices``, ``/ready`` and the dashboard."""
        return {"online": self.online()}

    def start(self) -> None:
        """Start background work (threads), if any. Called once by the app."""

    def stop(self) -> None:
        """Stop background work. Must return within a few seconds."""
