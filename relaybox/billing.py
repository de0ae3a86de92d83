"""Balance, ledger and prices (optional: ``billing = true``, for operators who resell to tenants).

Money is kept in integer millionths of the currency unit (``micros``): exact sums, and the API
shows plain numbers (``125.485``). The ledger is append-only; each row carries the balance after
it. The balance itself is one row per account, changed only by a conditional UPDATE
(``... SET micros = micros - cost WHERE micros >= cost``) inside the accept transaction: on
SQLite that transaction holds the write lock (``BEGIN IMMEDIATE``), on PostgreSQL the UPDATE is
atomic and locks the row, so concurrent senders can never drive a balance below zero.

A message is debited when it is accepted (price per segment by destination prefix, times its
segments) and refunded when it ends ``failed``, ``expired`` or ``cancelled`` without ever having
been sent (``sent_at`` empty). The debit row stays ``open`` until the message's outcome is known;
closing it is a conditional UPDATE in the refund's own transaction, and the refund row is unique
per message, so a refund happens exactly once. Status events trigger it at once; a sweeper
catches whatever a crash between commit and event lost.
"""
from __future__ import annotations

import logging
import time
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

import peewee as pw
from flask import current_app
from flask_openapi3 import APIBlueprint, Tag

from relaybox import events
from relaybox.api.common import SECURITY, PageQuery, current_account, page_of
from relaybox.db import BaseModel, for_update, write_tx
from relaybox.errors import ApiError, envelope, invalid
from relaybox.ids import new_id
from relaybox.models import Account, Message
from relaybox.timeutil import iso, now_ms

if TYPE_CHECKING:  # pragma: no cover
    from relaybox.config import Config
    from relaybox.messages import NewMessage
    from relaybox.runtime import Runtime

log = logging.getLogger("relaybox.billing")
MICROS = 1_000_000
REFUNDABLE = frozenset({"failed", "expired", "cancelled"})
WENT_OUT = frozenset({"sent", "delivered", "undelivered"})


class Balance(BaseModel):
    account = pw.ForeignKeyField(Account, primary_key=True, on_delete="CASCADE")
    micros = pw.BigIntegerField(default=0)
    updated_at = pw.BigIntegerField()


class LedgerEntry(BaseModel):
    """One append-only ledger row: ``topup``, ``debit`` or ``refund``."""

    id = pw.CharField(primary_key=True, max_length=40)
    account = pw.ForeignKeyField(Account, backref="ledger", on_delete="CASCADE")
    type = pw.CharField(max_length=12)
    amount = pw.BigIntegerField()  # micros, always positive; the type says which way
    balance_after = pw.BigIntegerField()
    message_id = pw.CharField(max_length=40, null=True)
    description = pw.CharField(max_length=200)
    open = pw.BooleanField(default=False)  # a debit whose message may still be refunded
    created_at = pw.BigIntegerField()

    class Meta:
        indexes = (
            (("account", "id"), False),
            (("message_id", "type"), True),
            (("open", "created_at"), False),
        )


# -- money ----------------------------------------------------------------------------------
def to_micros(value: Any) -> int:
    """A decimal amount (``"12.50"``, ``0.015``) as micros; ValueError when it is not a number."""
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"not an amount: {value!r}") from None
    if not d.is_finite():
        raise ValueError(f"not an amount: {value!r}")
    return int((d * MICROS).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def show(micros: int) -> float:
    return float(Decimal(micros) / MICROS)


def fmt(micros: int) -> str:
    return f"{Decimal(micros) / MICROS:.2f}" if micros % 10_000 == 0 else f"{Decimal(micros) / MICROS:f}"


def price_for(config: Config, number: str) -> tuple[int, str] | None:
    """(micros per segment, label) by the longest matching prefix, else price_default, else None."""
    best = None
    for p in config.price:
        if number.startswith(p.prefix) and (best is None or len(p.prefix) > len(best.prefix)):
            best = p
    if best is not None:
        return to_micros(best.per_segment), best.label or best.prefix
    if config.price_default is not None:
        return to_micros(config.price_default), "default"
    return None


def balance_of(account_id: str) -> int:
    row = Balance.get_or_none(Balance.account == account_id)
    return row.micros if row is not None else 0


# -- ledger operations -----------------------------------------------------------------------
def debit_for(config: Config, account: Any, items: list[NewMessage]) -> None:
    """Charge accepted messages (call inside the accept transaction); INSUFFICIENT_BALANCE else."""
    charges = []
    for it in items:
        price = price_for(config, it.to)
        if price is None:
            raise invalid("to", f"no price is set for {it.to}; ask your admin")
        charges.append((it, price[0] * it.segments, price[1]))
    total = sum(c for _, c, _ in charges)
    now = now_ms()
    if total:
        n = (Balance.update(micros=Balance.micros - total, updated_at=now)
             .where((Balance.account == account.id) & (Balance.micros >= total)).execute())
        if n != 1:
            have = balance_of(account.id)
            raise ApiError("INSUFFICIENT_BALANCE",
                           f"the balance {fmt(have)} {config.currency} is below the cost {fmt(total)} "
                           f"{config.currency} of this request; ask your admin to top up",
                           extra={"balance": show(have), "required": show(total), "currency": config.currency})
    running = balance_of(account.id) + total
    rows = []
    for it, cost, label in charges:
        running -= cost
        rows.append({"id": new_id("txn"), "account": account.id, "type": "debit", "amount": cost,
                     "balance_after": running, "message_id": it.id, "open": True, "created_at": now,
                     "description": f"SMS to {label}, {it.segments} segment{'s' if it.segments != 1 else ''}"})
    for i in range(0, len(rows), 200):
        LedgerEntry.insert_many(rows[i:i + 200]).execute()


def top_up(account_id: str, amount: int, note: str | None = None) -> LedgerEntry:
    """Credit an account (admin). ``amount`` in micros, positive."""
    if amount <= 0:
        raise ValueError("the amount must be positive")
    now = now_ms()
    with write_tx():
        Balance.insert(account=account_id, micros=0, updated_at=now).on_conflict_ignore().execute()
        Balance.update(micros=Balance.micros + amount, updated_at=now).where(Balance.account == account_id).execute()
        return LedgerEntry.create(id=new_id("txn"), account=account_id, type="topup", amount=amount,
                                  balance_after=balance_of(account_id), description=note or "Top-up",
                                  created_at=now)


def settle(message_id: str) -> str | None:
    """Close an open debit once its message's outcome is known; refund if it never went out.

    Returns "refunded", "closed" or None (nothing to do yet). Safe to call any number of times.
    """
    open_debit = LedgerEntry.select().where(
        (LedgerEntry.message_id == message_id) & (LedgerEntry.type == "debit") & (LedgerEntry.open == True))
    if not open_debit.exists():  # cheap read first: most events need no write
        return None
    with write_tx():
        debit = for_update(LedgerEntry.select().where(
            (LedgerEntry.message_id == message_id) & (LedgerEntry.type == "debit")
            & (LedgerEntry.open == True))).first()
        if debit is None:
            return None
        m = Message.get_or_none(Message.id == message_id)
        refund = m is not None and m.status in REFUNDABLE and m.sent_at is None
        if m is not None and not refund and m.status not in WENT_OUT and m.status not in REFUNDABLE:
            return None  # still on its way
        closed = (LedgerEntry.update(open=False)
                  .where((LedgerEntry.id == debit.id) & (LedgerEntry.open == True)).execute())
        if closed != 1:
            return None
        if not refund or not debit.amount:
            return "closed"
        now = now_ms()
        Balance.update(micros=Balance.micros + debit.amount, updated_at=now).where(
            Balance.account == debit.account_id).execute()
        LedgerEntry.create(id=new_id("txn"), account=debit.account_id, type="refund", amount=debit.amount,
                           balance_after=balance_of(debit.account_id), message_id=message_id,
                           description=f"Refund: message {m.status} before sending", created_at=now)
    log.info("refunded %s for message %s (%s)", fmt(debit.amount), message_id, m.status)
    return "refunded"


def settle_due(limit: int = 500) -> int:
    """Sweeper: settle open debits whose messages have reached an outcome (or are gone)."""
    rows = (LedgerEntry.select(LedgerEntry.message_id)
            .join(Message, pw.JOIN.LEFT_OUTER, on=(Message.id == LedgerEntry.message_id))
            .where((LedgerEntry.open == True)
                   & (Message.id.is_null() | (Message.status << list(REFUNDABLE | WENT_OUT))))
            .limit(limit))
    return sum(1 for r in rows if settle(r.message_id))


def _on_events(evs: list[Any]) -> None:
    for ev in evs:
        if ev.type == "message.status" and ev.message_id and \
                (ev.payload or {}).get("status") in (REFUNDABLE | WENT_OUT):
            settle(ev.message_id)


# -- API ----------------------------------------------------------------------------------------
bp = APIBlueprint("billing", __name__, url_prefix="/api/v1", abp_tags=[Tag(name="Balance")],
                  abp_security=SECURITY)


def _config() -> Config:
    return current_app.extensions["relaybox"].config


@bp.get("/balance")
def get_balance():
    """Your balance. With billing off (a single-business box) it is null and ``billing`` false."""
    account = current_account()
    cfg = _config()
    bal = balance_of(account.id)
    return envelope({"balance": show(bal) if cfg.billing else None, "currency": cfg.currency,
                     "billing": cfg.billing})


@bp.get("/transactions")
def list_transactions(query: PageQuery):
    """Your ledger, newest first: top-ups, debits per message and refunds, each with ``balance_after``."""
    account = current_account()
    cfg = _config()
    q = LedgerEntry.select().where(LedgerEntry.account == account.id).order_by(LedgerEntry.id.desc())
    rows, total, more = page_of(q, query.page, query.limit)
    return envelope({"transactions": [{
        "id": r.id, "type": r.type, "amount": show(r.amount), "currency": cfg.currency,
        "description": r.description, "balance_after": show(r.balance_after), "message_id": r.message_id,
        "timestamp": iso(r.created_at, millis=False), "unix_timestamp": r.created_at,
    } for r in rows], "page": query.page, "limit": query.limit, "total": total, "has_more": more})


def init(app: Any, rt: Runtime) -> None:
    app.register_api(bp)
    if not rt.config.billing:
        return

    def check_price(account: Any, to: str | None, body: str | None) -> None:
        if to is not None and price_for(rt.config, to) is None:
            raise invalid("to", f"no price is set for {to}; ask your admin")

    def ready(account: Any) -> tuple[str, bool, str]:
        bal = balance_of(account.id)
        if bal > 0:
            return "balance", True, f"balance {fmt(bal)} {rt.config.currency}"
        return "balance", False, f"the balance is {fmt(bal)} {rt.config.currency}: ask your admin to top up"

    last = [0.0]

    def sweep() -> None:
        if time.monotonic() - last[0] >= 5:
            last[0] = time.monotonic()
            settle_due()

    rt.message_checks.append(check_price)
    rt.before_accept.append(lambda account, items: debit_for(rt.config, account, items))
    rt.ready_checks.append(ready)
    rt.sweepers.append(sweep)
    events.subscribe(_on_events)
