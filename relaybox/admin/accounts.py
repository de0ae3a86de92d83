"""Accounts (admin only: enable API, subscription, balance top-up) and the contact directory.

Account flags are the core's columns; money goes through :func:`relaybox.billing.top_up` (the
ledger's own function) and balances are read with ``GET /balance`` as the account. Contacts are
``/api/v1/contacts``.
"""
from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import current_app, flash, redirect, request, session, url_for

from relaybox.accounts import create_account
from relaybox.admin import state
from relaybox.admin.devices import _report
from relaybox.admin.i18n import gettext as _
from relaybox.admin.internal import call, exists
from relaybox.admin.web import bp, current_account, page
from relaybox.db import write_tx
from relaybox.models import Account


def _billing_on() -> bool:
    return bool(getattr(current_app.extensions["relaybox"].config, "billing", False))


def _balance(account: Account) -> dict[str, Any] | None:
    if not exists("GET", "/balance"):
        return None
    return call("GET", "/balance", account).data


@bp.route("/accounts")
def accounts(new_key: str | None = None, new_account: Account | None = None, status: int = 200) -> Any:
    rows = list(Account.select().order_by(Account.is_owner.desc(), Account.created_at))
    balances = {a.id: _balance(a) for a in rows}
    return page("admin/accounts.html", status, rows=rows, balances=balances, billing=_billing_on(),
                new_key=new_key, new_account=new_account)


@bp.route("/accounts/create", methods=["POST"])
def account_create() -> Any:
    name = (request.form.get("name") or "").strip()
    if not name or len(name) > 200:
        flash(_("Name: 1 to 200 characters."), "error")
        return redirect(url_for("admin.accounts"))
    acc, key = create_account(name, api_enabled=request.form.get("api_enabled") == "1")
    return accounts(new_key=key, new_account=acc)


def _account_or_404(account_id: str) -> Account | None:
    acc = Account.get_or_none(Account.id == account_id)
    if acc is None:
        flash(_("No such account."), "error")
    return acc


@bp.route("/accounts/<account_id>/update", methods=["POST"])
def account_update(account_id: str) -> Any:
    acc = _account_or_404(account_id)
    if acc is None:
        return redirect(url_for("admin.accounts"))
    fields: dict[str, Any] = {}
    if "api_enabled" in request.form:
        fields["api_enabled"] = request.form["api_enabled"] == "1"
    if "subscription_until" in request.form:
        raw = request.form["subscription_until"].strip()
        if raw:
            try:
                day = datetime.strptime(raw, "%Y-%m-%d").replace(tzinfo=UTC)
            except ValueError:
                flash(_("Subscription: a date like 2026-12-31."), "error")
                return redirect(url_for("admin.accounts"))
            # Valid through the end of that day (UTC).
            fields["subscription_until"] = int(day.timestamp() * 1000) + 86_400_000 - 1
        else:
            fields["subscription_until"] = None
    if "name" in request.form and request.form["name"].strip():
        fields["name"] = request.form["name"].strip()[:200]
    if fields:
        with write_tx():
            Account.update(**fields).where(Account.id == acc.id).execute()
        flash(_("Saved."), "ok")
    return redirect(url_for("admin.accounts") + f"#{acc.id}")


@bp.route("/accounts/<account_id>/topup", methods=["POST"])
def account_topup(account_id: str) -> Any:
    acc = _account_or_404(account_id)
    if acc is None:
        return redirect(url_for("admin.accounts"))
    try:
        from relaybox import billing
    except ImportError:
        flash(_("Billing is not available on this box."), "error")
        return redirect(url_for("admin.accounts"))
    try:
        amount = billing.to_micros(request.form.get("amount", ""))
        billing.top_up(acc.id, amount, (request.form.get("note") or "").strip()[:200] or None)
    except ValueError as exc:
        flash(_("Amount: %(error)s", error=str(exc)), "error")
        return redirect(url_for("admin.accounts"))
    flash(_("Balance topped up."), "ok")
    return redirect(url_for("admin.accounts") + f"#{acc.id}")


@bp.route("/accounts/<account_id>/open", methods=["POST"])
def account_open(account_id: str) -> Any:
    acc = _account_or_404(account_id)
    if acc is not None:
        session["account_id"] = acc.id
    return redirect(url_for("admin.dashboard"))


@bp.app_template_filter("day")
def _day(ms: int | None) -> str:
    if not ms:
        return ""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d")


# -- contacts -----------------------------------------------------------------------------------
@bp.route("/contacts")
def contacts() -> Any:
    account = current_account()
    if not exists("GET", "/contacts"):
        return page("admin/contacts.html", available=False)
    q = (request.args.get("q") or "").strip()[:200]
    try:
        page_no = max(1, int(request.args.get("page", 1)))
    except ValueError:
        page_no = 1
    ans = call("GET", "/contacts", account, query={"q": q, "page": page_no, "limit": 25})
    data = ans.data or {}
    return page("admin/contacts.html", available=True, q=q, page_no=page_no,
                items=state._list_in(data, "contacts", "items"), total=data.get("total"),
                has_more=data.get("has_more"), error=None if ans.ok else ans.error,
                can_import=exists("POST", "/contacts/import"))


@bp.route("/contacts/add", methods=["POST"])
def contact_add() -> Any:
    body: dict[str, Any] = {"name": (request.form.get("name") or "").strip(),
                            "phone": (request.form.get("phone") or "").strip()}
    tags = [t.strip() for t in (request.form.get("tags") or "").split(",") if t.strip()]
    if tags:
        body["tags"] = tags
    if (request.form.get("notes") or "").strip():
        body["notes"] = request.form["notes"].strip()
    _report(call("POST", "/contacts", current_account(), json=body), _("Contact saved."))
    return redirect(url_for("admin.contacts"))


@bp.route("/contacts/<contact_id>/delete", methods=["POST"])
def contact_delete(contact_id: str) -> Any:
    _report(call("DELETE", f"/contacts/{contact_id}", current_account()), _("Contact deleted."))
    return redirect(url_for("admin.contacts"))
