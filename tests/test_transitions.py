"""``transition_many`` applies moves set-based (one read, one write of each kind) with the same
rules as one ``transition`` after another: on a real SQLite file through the real app."""
from __future__ import annotations

import pytest

from relaybox import messages
from relaybox.models import Event, Message, MessageEvent


@pytest.fixture
def queued(tmp_path):
    from relaybox.app import create_app
    from relaybox.cli import ensure_owner
    from relaybox.config import load_config

    cfg = load_config(data_dir=str(tmp_path / "data"), sandbox=False, queue="memory", api_rate_limit=0)
    key = ensure_owner(cfg)["api_key"]
    client = create_app(cfg).test_client()

    def send(to: str = "+923011234567") -> str:
        r = client.post("/api/v1/sms/send", json={"to": to, "body": "hi"}, headers={"X-API-Key": key})
        assert r.status_code == 202, r.get_json()
        return r.get_json()["data"]["id"]

    return send


def test_several_moves_of_one_message_apply_in_order_and_late_ones_are_refused(queued):
    a, b = queued(), queued("+923011234568")
    before = Event.select().count()
    ok = messages.transition_many([
        (a, "dispatched", {"channel_id": "x"}),
        (a, "sent", {"at": 1}),  # a clock far behind: the timeline never goes back
        (b, "sent", {}),  # not allowed from queued
        (a, "delivered", {"expect_channel": "y"}),  # not its channel
        (a, "delivered", {"expect_channel": "x"}),
        (a, "sent", {}),  # too late: already delivered
        ("req_missing", "sent", {}),
    ])
    assert ok == [True, True, False, False, True, False, False]
    m = Message.get_by_id(a)
    assert (m.status, m.channel_id, m.attempts, m.sequence) == ("delivered", "x", 1, 5)
    assert m.dispatched_at and m.sent_at and m.delivered_at
    rows = list(MessageEvent.select().where(MessageEvent.message == a).order_by(MessageEvent.seq))
    assert [(r.seq, r.status) for r in rows] == [(1, "accepted"), (2, "queued"), (3, "dispatched"),
                                                  (4, "sent"), (5, "delivered")]
    assert all(x.at <= y.at for x, y in zip(rows, rows[1:]))
    assert Message.get_by_id(b).status == "queued"
    assert Event.select().count() == before + 3  # one message.status event per move made
    statuses = [e.payload["status"] for e in Event.select().where(Event.message_id == a).order_by(Event.created_at)]
    assert statuses[-3:] == ["dispatched", "sent", "delivered"]
