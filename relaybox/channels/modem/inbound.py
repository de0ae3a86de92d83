"""Inbound SMS bookkeeping between "read from SIM storage" and "deleted from it" (MODEM.md §1.6).

A message must be deleted from the SIM only after the app has stored it, or a crash in between
loses it. So each storage slot the driver has read is *claimed* until its deletion: a part of a
concatenated message waiting for its siblings, a whole message waiting for the app's commit,
or something to ignore (undecodable, or a stored SUBMIT). The periodic ``AT+CMGL`` sweep skips
claimed slots, which is what keeps a message from being offered twice while the app is still
storing it. Pure bookkeeping, used only from the modem thread.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from relaybox.sms import pdu

Slot = tuple[str, int]  # (memory, index), e.g. ("SM", 3)


@dataclass(frozen=True)
class InboundSms:
    """A received SMS. ``key`` is stable across re-reads of the same SIM copy: store it with
    the message to make storing idempotent (an uncommitted message is offered again)."""

    modem: str
    sender: str
    text: str
    received_at: datetime  # SMSC timestamp, or arrival time when the PDU has none
    smsc: str | None
    parts: int
    complete: bool  # False when parts went missing past the multipart timeout
    key: str


@dataclass
class Offer:
    """A message ready for the app and the slots to delete once it is committed."""

    message: InboundSms
    slots: list[Slot]


@dataclass
class _Claim:
    hex: str
    kind: str  # part / commit / ignored
    since: float = field(default_factory=time.monotonic)


def message_key(sender: str, received_at: datetime, text: str) -> str:
    return hashlib.sha256(
        f"{sender}|{received_at.isoformat()}|{text}".encode()
    ).hexdigest()[:32]


class InboundCollector:
    def __init__(self, modem: str, multipart_timeout: float, commit_timeout: float):
        self.modem = modem
        self.multipart_timeout = multipart_timeout
        self.commit_timeout = commit_timeout
        self._claims: dict[Slot, _Claim] = {}
        self._groups: dict[tuple[str, int, int], list[Slot]] = {}
        self._reassembler = pdu.Reassembler()

    def claimed(self, slot: Slot, hex_pdu: str | None = None) -> bool:
        """Is the slot claimed (with this very PDU, when ``hex_pdu`` is given)?"""
        claim = self._claims.get(slot)
        return claim is not None and (hex_pdu is None or claim.hex == hex_pdu)

    def ignore(self, slot: Slot, hex_pdu: str) -> None:
        self._claims[slot] = _Claim(hex_pdu, "ignored")

    def deleted(self, slot: Slot) -> None:
        self._claims.pop(slot, None)

    def add(self, part: pdu.Deliver, slot: Slot | None, hex_pdu: str) -> Offer | None:
        """Take one DELIVER; return an offer once the message is whole."""
        concat = part.concat
        if concat is None or concat.total == 1:
            slots = [slot] if slot else []
            if slot:
                self._claims[slot] = _Claim(hex_pdu, "part")
            return self._offer((part,), part.text, slots, complete=True)
        key = (part.sender, concat.ref, concat.total)
        if slot is not None:
            self._claims[slot] = _Claim(hex_pdu, "part")
            self._groups.setdefault(key, []).append(slot)
        assembled = self._reassembler.add(part)
        if assembled is None:
            return None
        return self._offer(
            assembled.parts, assembled.text, self._groups.pop(key, []), True
        )

    def _offer(
        self,
        parts: tuple[pdu.Deliver, ...],
        text: str,
        slots: list[Slot],
        complete: bool,
    ) -> Offer:
        first = parts[0]
        received = first.scts or datetime.now(UTC)
        message = InboundSms(
            modem=self.modem,
            sender=first.sender,
            text=text,
            received_at=received,
            smsc=first.smsc,
            parts=len(parts),
            complete=complete,
            key=message_key(first.sender, received, text),
        )
        for slot in slots:  # now waiting for the app's commit
            claim = self._claims.get(slot)
            self._claims[slot] = _Claim(claim.hex if claim else "", "commit")
        return Offer(message, slots)

    def release(self, offer: Offer) -> None:
        """The app failed to take the message: let the next sweep offer it again."""
        for slot in offer.slots:
            self._claims.pop(slot, None)

    def reconcile(self, mem: str, listed: dict[int, str]) -> None:
        """After a sweep listed ``mem``: forget claims on slots that are gone or now hold a
        different PDU (index reused after someone else deleted it)."""
        for (cmem, index), claim in list(self._claims.items()):
            if cmem == mem and claim.kind != "part" and listed.get(index) != claim.hex:
                del self._claims[(cmem, index)]

    def expire(self) -> list[Offer]:
        """Periodic: release messages the app never committed (they are offered again, same
        key), and return concatenations that never completed, to deliver as they are."""
        now = time.monotonic()
        for slot, claim in list(self._claims.items()):
            if claim.kind == "commit" and now - claim.since > self.commit_timeout:
                del self._claims[slot]
        offers = []
        for key, parts in self._reassembler.expire(self.multipart_timeout):
            offers.append(
                self._offer(
                    parts, pdu.join_parts(parts), self._groups.pop(key, []), False
                )
            )
        return offers
