"""Dashboard and messages: devices and modems, queue health, recent messages, one message."""
from __future__ import annotations

from typing import Any

from flask import abort, redirect, request, session, url_for
from markupsafe import Markup

from relaybox.admin import state
from relaybox.admin.web import bp, current_account, page, safe_next
from relaybox.models import Account


def _int_arg(name: str, default: int) -> int:
    try:
        return max(1, min(int(request.args.get(name, default)), 10_000))
    except ValueError:
        return default


def _message_filters() -> dict[str, Any]:
    status = request.args.get("status") or None
    return {"status": status if status in state.STATUSES else None,
            "q": (request.args.get("q") or "").strip()[:200], "page": _int_arg("page", 1)}


@bp.route("/")
def dashboard() -> Any:
    account = current_account()
    return page("admin/dashboard.html", title=None, statuses=state.STATUSES, filters=_message_filters(),
                **_dashboard_parts(account))


def _dashboard_parts(account: Account) -> dict[str, Any]:
    filters = _message_filters()
    return {"chans": state.channels(account), "queue": state.queue_health(account),
            "today": state.counts_today(account),
            "recent": state.search_messages(account, filters["status"], filters["q"], filters["page"], 15)}


@bp.route("/f/<name>")
def fragment(name: str) -> Any:
    """The parts of a page that refresh by themselves (see admin.js ``data-refresh``)."""
    account = current_account()
    filters = _message_filters()
    if name == "channels":
        return page("admin/fragments/channels.html", chans=state.channels(account))
    if name == "queue":
        return page("admin/fragments/queue.html", queue=state.queue_health(account),
                    today=state.counts_today(account))
    if name == "messages":
        limit = 15 if request.args.get("compact") else 25
        return page("admin/fragments/messages.html", filters=filters,
                    recent=state.search_messages(account, filters["status"], filters["q"], filters["page"], limit))
    if name == "message":
        detail = state.message_detail(account, request.args.get("id", ""))
        if detail is None:
            abort(404)
        return page("admin/fragments/message.html", **detail)
    abort(404)


@bp.route("/messages")
def messages() -> Any:
    account = current_account()
    filters = _message_filters()
    return page("admin/messages.html", title=None, statuses=state.STATUSES, filters=filters,
                recent=state.search_messages(account, filters["status"], filters["q"], filters["page"], 25))


@bp.route("/messages/<message_id>")
def message(message_id: str) -> Any:
    account = current_account()
    detail = state.message_detail(account, message_id)
    if detail is None:
        return page("admin/error.html", 404, title="404", message=message_id)
    return page("admin/message.html", title=detail["log"]["id"], **detail)


@bp.route("/account", methods=["POST"])
def select_account() -> Any:
    acc = Account.get_or_none(Account.id == request.form.get("account_id", ""))
    if acc is not None:
        session["account_id"] = acc.id
    return redirect(safe_next(request.form.get("next")))


@bp.app_template_filter("ago")
def _ago(value: Any) -> Markup:
    """Age like ``12 s``, isolated left-to-right so it reads the same inside Urdu text."""
    text = state.ago(value)
    return Markup('<bdi dir="ltr">{}</bdi>').format(text) if text else Markup("")


def root() -> Any:
    return redirect(url_for("admin.dashboard"))
