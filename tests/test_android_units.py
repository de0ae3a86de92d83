"""The Android area's parts on their own: the SSE hub against waitress's real thread pool, SIM
merging, pairing codes, the housekeeping prune on a real SQLite file."""
from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from waitress.task import ThreadedTaskDispatcher

from relaybox.channels.android.channel import merge_sims
from relaybox.channels.android.protocol import SimCardIn
from relaybox.channels.android.sse import SSEHub, frame


def _hub(threads: int = 4) -> tuple[SSEHub, ThreadedTaskDispatcher]:
    dispatcher = ThreadedTaskDispatcher()
    dispatcher.set_thread_count(threads)
    runtime = SimpleNamespace(config=SimpleNamespace(threads=threads),
                              http_server=SimpleNamespace(task_dispatcher=dispatcher))
    return SSEHub(runtime), dispatcher


def _running(d: ThreadedTaskDispatcher) -> int:
    return len(d.threads) - d.stop_count


def test_hub_grows_and_shrinks_the_waitress_pool_one_thread_per_stream():
    hub, dispatcher = _hub(4)
    try:
        a, b = hub.open("dev_a"), hub.open("dev_b")
        assert _running(dispatcher) == 6 and hub.count() == 2
        hub.release(a)
        assert _running(dispatcher) == 5
        # Waitress shutting down (count 0): a stream ending must not start threads again.
        dispatcher.set_thread_count(0)
        assert hub.server_stopping()
        hub.release(b)
        assert _running(dispatcher) <= 0
    finally:
        dispatcher.shutdown(timeout=2)


def test_a_new_stream_replaces_the_old_one_and_enqueued_events_coalesce():
    hub, dispatcher = _hub(4)
    try:
        old = hub.open("dev_a")
        new = hub.open("dev_a")
        assert old.take(0.01) is None and old.close_reason == "replaced by a new connection"
        hub.release(old)  # the old iterator ending does not unregister the new stream
        assert hub.is_open("dev_a") and hub.stream_of("dev_a") is new
        for _ in range(5):
            assert hub.publish("dev_a", "MessageEnqueued")
        hub.publish("dev_a", "MessageCancelled", {"messageId": "req_1"})
        assert new.take(0.01) == [frame("MessageEnqueued"), frame("MessageCancelled", {"messageId": "req_1"})]
        assert new.take(0.01) == []
        hub.publish("dev_a", "MessageEnqueued")  # after a write, the next one goes out again
        assert new.take(0.01) == [b"event: MessageEnqueued\ndata: null\n\n"]
        assert not hub.publish("dev_b", "MessageEnqueued")
        t0 = time.monotonic()
        assert new.take(0.2) == [] and time.monotonic() - t0 >= 0.15
        hub.close_device("dev_a", "unpaired")
        assert new.take(5) is None
    finally:
        dispatcher.shutdown(timeout=2)


def test_frames_are_the_go_servers_wire_format():
    assert frame("MessageEnqueued") == b"event: MessageEnqueued\ndata: null\n\n"
    assert frame("MessageCancelled", {"messageId": "req_01J"}) == \
        b'event: MessageCancelled\ndata: {"messageId":"req_01J"}\n\n'


def test_sims_reported_by_the_app_keep_the_numbers_the_admin_set():
    old = [{"slotIndex": 0, "simNumber": 1, "phoneNumber": "****4567", "number": "+923001234567"},
           {"slotIndex": 1, "simNumber": 2, "phoneNumber": "****9999", "number": "+923339999999"}]
    merged = merge_sims(old, [SimCardIn(slotIndex=0, simNumber=1, phoneNumber="****4567", carrierName="**zz")])
    assert merged[0]["number"] == "+923001234567" and merged[0]["carrierName"] == "**zz"
    assert merged[1]["simNumber"] == 2 and merged[1]["present"] is False and merged[1]["number"] == "+923339999999"
    assert merge_sims(old, None) is old
    # Old apps send no simNumber: the slot decides (1-based).
    assert merge_sims([], [SimCardIn(slotIndex=1)])[0]["simNumber"] == 2


@pytest.fixture
def app(tmp_path):
    from relaybox.app import create_app
    from relaybox.config import load_config

    application = create_app(load_config(data_dir=str(tmp_path), queue="memory"))
    yield application


def test_pairing_codes_are_single_use_derived_from_the_page_token_and_pruned(app):
    from relaybox.accounts import create_account
    from relaybox.channels.android import pairing
    from relaybox.channels.android.models import PairingCode
    from relaybox.db import write_tx

    acc, _ = create_account("Owner", api_enabled=True, owner=True)
    p = pairing.create_pairing(acc.id, "https://box.lan/api/mobile/v1")
    assert p.code == pairing.code_for_token(p.token) and len(p.code) == 8
    row, code = pairing.page_pairing(p.token)
    assert code == p.code and row.id == p.id
    with write_tx():
        assert pairing.redeem_code(p.code).id == p.id
    with write_tx():
        assert pairing.redeem_code(p.code) is None  # single use
    assert pairing.page_pairing(p.token) is None
    PairingCode.update(expires_at=PairingCode.expires_at - 2 * 86_400_000).execute()
    assert pairing.prune_pairings() == 1


def test_housekeeping_prunes_reports_of_finished_messages_and_old_inbound_ids(app):
    from relaybox.accounts import create_account
    from relaybox.channels.android.models import DeviceMessage, InboundEvent
    from relaybox.models import Message
    from relaybox.timeutil import now_ms

    area = app.extensions["relaybox_android"]
    acc, _ = create_account("Owner", api_enabled=True, owner=True)
    now = now_ms()
    for mid, status in (("req_A", "dispatched"), ("req_B", "delivered")):
        Message.create(id=mid, account=acc, client_reference_id=mid, to_number="+923001234567", body="x",
                       status=status, created_at=now, updated_at=now)
        DeviceMessage.create(message_id=mid, device_id="dev_X", reported_at=now)
    DeviceMessage.create(message_id="req_GONE", device_id="dev_X", reported_at=now)  # message deleted
    InboundEvent.create(device_id="dev_X", event_id="old", created_at=now - 8 * 86_400_000)
    InboundEvent.create(device_id="dev_X", event_id="new", created_at=now)
    area.sweep()
    assert sorted(d.message_id for d in DeviceMessage.select()) == ["req_A"]
    assert [e.event_id for e in InboundEvent.select()] == ["new"]


def test_cli_pair_warns_when_the_server_only_listens_on_loopback(tmp_path):
    """With the default host (127.0.0.1) the printed URL names this box's LAN address, which
    `relaybox serve` does not listen on: the command says so and how to fix it."""
    import subprocess
    import sys

    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("RELAYBOX_")}
    out = subprocess.run([sys.executable, "-m", "relaybox.cli", "device", "pair", "--no-qr", "--data-dir",
                          str(tmp_path)], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert "cannot reach" in out.stderr  # the LAN address it printed, or 127.0.0.1 on a box without one
    lan = subprocess.run([sys.executable, "-m", "relaybox.cli", "device", "pair", "--no-qr", "--data-dir",
                          str(tmp_path)], env={**env, "RELAYBOX_HOST": "0.0.0.0"}, capture_output=True,
                         text=True, timeout=60, check=False)
    assert lan.returncode == 0 and "cannot reach" not in lan.stderr, lan.stderr
