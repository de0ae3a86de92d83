"""Accounts and their API keys (stored as HMAC digests; the clear key is shown once)."""
from __future__ import annotations

import hmac

from relaybox.db import write_tx
from relaybox.ids import new_id
from relaybox.models import Account, ApiKey
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


def account_for_key(key: str) -> Account | None:
    """The account owning an active key, or None. Lookup by digest (indexed)."""
    if not key or len(key) > 200:
        return None
    h = digest(key, KEY_PURPOSE)
    # Checked on every request: a plain indexed query, without the query builder's cost.
    row = (ApiKey.select(ApiKey.key_hash, ApiKey.account)
           .where((ApiKey.key_hash == h) & ApiKey.revoked_at.is_null()).tuples().first())
    if row is None or not hmac.compare_digest(row[0], h):
        return None
    return Account.get_or_none(Account.id == row[1])


def owner_account() -> Account | None:
    return Account.select().where(Account.is_owner == True).first()  # noqa: E712
