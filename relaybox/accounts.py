"""Accounts and their API keys (stored as HMAC digests; the clear key is shown once)."""
from __future__ import annotations

import hmac

from relaybox.db import db, write_tx
from relaybox.ids import new_id
from relaybox.models import QUEUE_PAUSED, Account, ApiKey
from relaybox.security import digest, mask, new_api_key
from relaybox.timeutil import now_ms

KEY_PURPOSE = "api-key"


def create_account(name: str, *, api_enabled: bool = False, owner: bool = False) -> tuple[Account, str]:
    """Create an account with a first API key; returns (account, clear key)."""
    with write_tx():
        acc = Account.create(id=new_id("acc"), name=name, api_enabled=api_enabled, is_owner=owner,
                             created_at=now_ms(), settings={})
        key = issue_key(acc)
    return acc, key


def issue_key(account: Account) -> str:
    """Revoke the account's keys and issue a new one (call inside a transaction)."""
    now = now_ms()
    ApiKey.update(revoked_at=now).where((ApiKey.account == account) & ApiKey.revoked_at.is_null()).execute()
    key = new_api_key()
    ApiKey.create(id=new_id("key"), account=account, key_hash=digest(key, KEY_PURPOSE), hint=mask(key),
                  created_at=now)
    return key


def regenerate_key(account: Account) -> str:
    with write_tx():
        return issue_key(account)


_key_sql: str | None = None


def _account_by_key_sql() -> str:
    """One joined SELECT, built once: every API request runs it, and building it with the
    query builder each time cost more than running it. It also reads the instance-wide pause
    flag, which every sending request needs next (one statement instead of two)."""
    global _key_sql
    if _key_sql is None:
        cols = ", ".join(f'a."{f.column_name}"' for f in Account._meta.sorted_fields)
        p = db.obj.param
        _key_sql = (f'SELECT k."key_hash", {cols}, (SELECT s."value" FROM "setting" s WHERE s."key" = {p}) '
                    f'FROM "api_key" k JOIN "account" a ON a."id" = k."account_id" '
                    f'WHERE k."key_hash" = {p} AND k."revoked_at" IS NULL')
    return _key_sql


def account_for_key(key: str) -> Account | None:
    """The account owning an active key, or None. Lookup by digest (indexed), then a
    constant-time comparison of the digests. The instance's pause setting read with it is
    kept on the account as ``_pause_setting`` (raw JSON text, or None) for
    :meth:`relaybox.runtime.Runtime.instance_paused`."""
    if not key or len(key) > 200:
        return None
    h = digest(key, KEY_PURPOSE)
    row = db.execute_sql(_account_by_key_sql(), (QUEUE_PAUSED, h)).fetchone()
    if row is None or not hmac.compare_digest(row[0], h):
        return None
    fields = Account._meta.sorted_fields
    account = Account(**{f.name: f.python_value(v) for f, v in zip(fields, row[1:-1])})
    account._dirty.clear()
    account._pause_setting = row[-1]
    return account


def owner_account() -> Account | None:
    return Account.select().where(Account.is_owner == True).first()
