"""USB modems end to end: a real ``relaybox serve`` whose ``[[modem]]`` tables point at simulated
modems on real ptys (``ModemSimulator``, in this process), driven through the public API.

What the simulator received over the "radio" (``sim.sent``) is decoded by relaybox's decoder and
by python-gsmmodem-new as an independent oracle. Every wait is bounded; the modems' timeouts are
shrunk in the config so that a fault and the recovery from it take a second or two.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import RelayboxServer, wait_for
from gsmmodem.pdu import decodeSmsPdu

from relaybox.channels.modem.simulator import ModemSimulator
from relaybox.sms import pdu

pytestmark = pytest.mark.timeout(60)

NUM_A = "+46701234567"  # the modems' own numbers (Swedish, like the recipients)
NUM_B = "+46701234568"
TO = "+46708251358"
TO2 = "+46701112233"
TO3 = "+46709876543"

FAST: dict[str, Any] = {
    "health_interval": 0.5, "sweep_interval": 1.0, "send_deadline": 10.0, "send_retries": 1,
    "retry_backoff": 0.2, "reconnect_backoff": [0.2, 1.0], "reset_settle": 0.2,
}
FAST_TIMEOUTS = ("{ basic = 0.5, pin_query = 1.0, pin_entry = 1.0, pin_ready = 2.0, registration = 0.5, "
                 "registration_wait = 0.3, prompt = 1.0, submit = 2.0, read = 1.0, list = 2.0, ussd = 2.0 }")


def modem_table(name: str, sim: ModemSimulator, number: str | None = None, **extra: Any) -> str:
    """A [[modem]] table for ``sim`` with timeouts shrunk for tests (``extra`` overrides)."""
    lines = ["[[modem]]", f'name = "{name}"', f'port = "{sim.path}"']
    if number:
        lines.append(f'number = "{number}"')
    for key, value in {**FAST, **extra}.items():
        lines.append(f"{key} = {json.dumps(value)}")
    lines.append(f"timeouts = {FAST_TIMEOUTS}")
    return "\n".join(lines) + "\n\n"


@pytest.fixture
def serve(server_factory: Callable[..., RelayboxServer]) -> Callable[..., RelayboxServer]:
    """A server with these [[modem]] tables; waits until the named modems are ready."""

    def make(*tables: str, ready: tuple[str, ...] = (), **settings: Any) -> RelayboxServer:
        srv = server_factory(config_text="".join(tables), **settings)
        for name in ready:
            wait_modem(srv, name, lambda m: m["online"], what=f"modem {name} ready")
        return srv

    return make


# -- helpers ------------------------------------------------------------------------------------------
def modem(srv: RelayboxServer, name: str) -> dict[str, Any]:
    r = srv.api().get(f"/modems/{name}")
    assert r.status_code == 200, r.text
    return r.json()["data"]


def wait_modem(srv: RelayboxServer, name: str, test: Callable[[dict[str, Any]], Any], timeout: float = 10,
               what: str = "modem state") -> dict[str, Any]:
    box: dict[str, Any] = {}

    def check() -> bool:
        box["m"] = modem(srv, name)
        return bool(test(box["m"]))

    wait_for(check, timeout, 0.05, f"{what} (last: {box.get('m', {}).get('state')} "
                                   f"{box.get('m', {}).get('reason')})")
    return box["m"]


def send(srv: RelayboxServer, to: str, body: str, **extra: Any) -> str:
    r = srv.api().post("/sms/send", json={"to": to, "body": body, **extra})
    assert r.status_code == 202, r.text
    return r.json()["data"]["id"]


def message(srv: RelayboxServer, mid: str) -> dict[str, Any]:
    return srv.api().get(f"/sms/{mid}").json()["data"]


def timeline(srv: RelayboxServer, mid: str) -> list[dict[str, Any]]:
    return srv.api().get(f"/messages/{mid}/log").json()["data"]["timeline"]


def wait_status(srv: RelayboxServer, mid: str, status: str, timeout: float = 10) -> dict[str, Any]:
    return wait_for(lambda: (m := message(srv, mid))["status"] == status and m, timeout, 0.05,
                    f"message {mid} {status} (now {message(srv, mid)['status']})")


def statuses(srv: RelayboxServer, mid: str) -> list[str]:
    return [row["status"] for row in timeline(srv, mid)]


def oracle_text(hexes: list[str]) -> str:
    """Parts decoded by python-gsmmodem-new (which leaves surrogates unpaired), joined."""
    joined = "".join(decodeSmsPdu(h)["text"] for h in hexes)
    return joined.encode("utf-16-be", "surrogatepass").decode("utf-16-be")


def parts_to(sim: ModemSimulator, number: str) -> list[Any]:
    return [p for p in sim.sent if p.to == number]


def db_rows(srv: RelayboxServer, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Rows from the server's database (SQLite or, in the scale-out run, PostgreSQL)."""
    return [tuple(r) for r in srv.sql(sql, args)]


# -- one modem, one server for the plain send/receive tests (each test its own recipients) -------------
_numbers = iter(f"+467032{i:05d}" for i in range(100_000))


def fresh_number() -> str:
    return next(_numbers)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RelayboxServer, ModemSimulator]]:
    from conftest import _env

    root = tmp_path_factory.mktemp("shared-modem")
    sim = ModemSimulator(link=str(root / "usb-Relaybox_Shared-if02-port0"), name="shared",
                         first_reference=250).start()
    config = root / "config.toml"
    config.write_text(modem_table("a", sim, NUM_A))
    cleanups: list[Callable[[], None]] = []  # the scale-out run gives it a database of its own
    srv = RelayboxServer(root, _env({"log_level": "INFO"}, cleanups), config).start()
    try:
        wait_modem(srv, "a", lambda m: m["online"], what="shared modem ready")
        yield srv, sim
    finally:
        srv.stop()
        sim.stop()
        for drop in cleanups:
            drop()


# -- sending ---------------------------------------------------------------------------------------------
def test_single_gsm7_message_goes_out_as_the_right_pdu_and_is_delivered(shared):
    srv, sim = shared
    to = fresh_number()
    mid = send(srv, to, "hellohello")
    m = wait_status(srv, mid, "delivered")
    assert m["segments"] == 1 and m["encoding"] == "GSM-7" and m["device_id"] == "modem_a"
    assert m["attempts"] == 1 and m["error_code"] is None
    (part,) = parts_to(sim, to)
    assert part.length == len(bytes.fromhex(part.hex)) - 1  # AT+CMGS=<TPDU length without SMSC>
    decoded = decodeSmsPdu(part.hex)
    assert decoded["type"] == "SMS-SUBMIT" and decoded["number"] == to and decoded["text"] == "hellohello"
    assert part.submit.status_report_request and part.submit.validity is not None
    rows = timeline(srv, mid)
    assert [r["status"] for r in rows] == ["accepted", "queued", "dispatched", "sent", "delivered"]
    assert rows[3]["detail"]["refs"] == [part.reference]
    assert rows[4]["detail"]["tp_status"] == 0 and rows[4]["detail"]["report"]["reference"] == part.reference


def test_three_part_gsm7_message_is_delivered_once_after_every_parts_report(shared):
    srv, sim = shared
    to = fresh_number()
    text = ("Your order [GSM-7 with {escapes}] has shipped and will arrive on Monday. " * 6)[:420]
    assert pdu.analyze(text).segments == 3
    mid = send(srv, to, text)
    m = wait_status(srv, mid, "delivered")
    assert m["segments"] == 3 and m["encoding"] == "GSM-7"
    parts = parts_to(sim, to)
    refs = [p.reference for p in parts]
    concat = [p.submit.concat for p in parts]
    assert [c.seq for c in concat] == [1, 2, 3] and {c.total for c in concat} == {3}
    assert len({c.ref for c in concat}) == 1
    assert oracle_text([p.hex for p in parts]) == text
    rows = timeline(srv, mid)
    assert [r["status"] for r in rows].count("delivered") == 1
    assert next(r for r in rows if r["status"] == "sent")["detail"]["refs"] == refs
    detail = rows[-1]["detail"]
    assert sorted(p["reference"] for p in detail["all_parts"]) == sorted(refs)
    assert {p["tp_status"] for p in detail["all_parts"]} == {0} and detail["report"]["parts"] == 3


@pytest.mark.parametrize("text", [
    "আপনার অর্ডার পাঠানো হয়েছে। কোড ৪৫৬৭ কাউকে বলবেন না। ধন্যবাদ, আপনার দিনটি শুভ হোক! " * 2,  # Bengali
    "آپ کا آرڈر روانہ کر دیا گیا ہے۔ شکریہ!",  # Urdu
    "Order shipped 😀🚀 " * 5,  # emoji: surrogate pairs never split across parts
], ids=["bengali", "urdu", "emoji"])
def test_ucs2_messages_are_split_as_the_api_counts_and_arrive_whole(shared, text):
    srv, sim = shared
    to = fresh_number()
    info = pdu.analyze(text)
    mid = send(srv, to, text)
    m = wait_status(srv, mid, "delivered")
    assert m["encoding"] == "UCS-2" and m["segments"] == info.segments
    parts = parts_to(sim, to)
    assert len(parts) == info.segments
    assert all(p.submit.encoding == "UCS-2" for p in parts)
    assert "".join(p.text for p in parts) == text
    assert oracle_text([p.hex for p in parts]) == text
    if info.segments > 1:
        assert [p.submit.concat.seq for p in parts] == list(range(1, info.segments + 1))


def test_failed_report_makes_the_message_undelivered_with_the_raw_tp_status(shared):
    srv, sim = shared
    to = fresh_number()
    sim.set_report(to, "failed", status=0x45)
    mid = send(srv, to, "your code is 1234")
    m = wait_status(srv, mid, "undelivered")
    assert m["error_code"] == "CARRIER_UNDELIVERED" and "0x45" in m["error_message"]
    row = timeline(srv, mid)[-1]
    assert row["status"] == "undelivered" and row["detail"]["tp_status"] == 0x45
    assert row["detail"]["report"]["pdu"]
    time.sleep(0.5)
    assert statuses(srv, mid).count("undelivered") == 1
    # TP-Status 0x42 (the recipient rejected it) is a spam signal the number's diagnosis reads.
    to = fresh_number()
    sim.set_report(to, "failed", status=0x42)
    mid = send(srv, to, "promo", **{"from": NUM_A})
    wait_status(srv, mid, "undelivered")
    r = srv.api().get(f"/numbers/{NUM_A}/spam-diagnosis")
    assert r.status_code == 200, r.text
    assert r.json()["data"]["spam_filtered"] is True


def test_permanent_refusal_fails_at_once_with_the_cms_error_kept(shared):
    srv, sim = shared
    to = fresh_number()
    sim.fail_sends("+CMS ERROR: 21")
    mid = send(srv, to, "hello")
    m = wait_status(srv, mid, "failed")
    assert m["error_code"] == "MODEM_REJECTED" and m["attempts"] == 1
    assert timeline(srv, mid)[-1]["detail"]["cms"] == 21
    assert parts_to(sim, to) == []


# -- inbound ------------------------------------------------------------------------------------------------
def test_inbound_single_and_concatenated_are_stored_once_then_deleted_from_the_sim(shared):
    srv, sim = shared
    short_from, long_from = fresh_number(), fresh_number()
    deleted_before = len(sim.deleted)
    long_text = "Reply from a customer: " + "the parcel arrived but the box was damaged. " * 7
    sim.inject_sms(short_from, "YES please")
    slots = sim.inject_sms(long_from, long_text, reverse=True)
    assert len(slots) == pdu.analyze(long_text).segments == 3

    def inbound() -> list[dict[str, Any]]:
        got = srv.api().get("/messages", params={"direction": "inbound"}).json()["data"]["messages"]
        return [m for m in got if m["from"] in (short_from, long_from)]

    got = wait_for(lambda: len(m := inbound()) == 2 and m, 10, 0.1, "two inbound messages")
    by_sender = {m["from"]: m for m in got}
    assert by_sender[short_from]["body"] == "YES please" and by_sender[long_from]["body"] == long_text
    for m in got:
        assert m["direction"] == "inbound" and m["status"] == "received"
        assert m["to"] == NUM_A and m["device_id"] == "modem_a"
    wait_for(lambda: len(sim.deleted) - deleted_before == 4, 5, 0.05, "SIM copies deleted after the commit")
    assert sim.stored("SM") == {}
    events = db_rows(srv, "SELECT payload FROM event WHERE type = 'message.inbound'")
    payloads = [p for p in (json.loads(p) for (p,) in events) if p["from"] in (short_from, long_from)]
    assert sorted(p["from"] for p in payloads) == sorted([short_from, long_from])
    assert all(p["to"] == NUM_A and p["device_id"] == "modem_a" and p["media_urls"] == [] for p in payloads)
    time.sleep(1.2)  # a storage sweep later: nothing is offered twice
    assert len(inbound()) == 2


def test_ussd_through_the_api(shared):
    srv, sim = shared
    sim.set_ussd("*123#", "Balance: 10.50 SEK, valid until 2027-01-01")
    r = srv.api().post("/modems/a/ussd", json={"code": "*123#"})
    assert r.status_code == 200, r.text
    assert r.json()["data"]["reply"] == "Balance: 10.50 SEK, valid until 2027-01-01"
    r = srv.api().post("/modems/a/ussd", json={"code": "*123#; AT+CFUN=0"})
    assert r.status_code == 400 and r.json()["error"]["field"] == "code"
    r = srv.api().post("/modems/a/ussd", json={"code": "*999#"})  # the network does not know it
    assert r.status_code == 200 and r.json()["data"]["status"] == 4


# -- faults -----------------------------------------------------------------------------------------------------
def test_hung_then_unplugged_modem_claims_nothing_keeps_the_api_responsive_and_recovers(sims, serve):
    sim = sims()
    srv = serve(modem_table("a", sim, NUM_A), ready=("a",))
    # 1. The modem stops answering.
    sim.hang()
    wait_modem(srv, "a", lambda m: not m["online"], what="modem seen hung")
    mid = send(srv, TO, "sent once the modem answers again")
    slow = []
    for _ in range(20):  # the API never waits for the modem
        t0 = time.monotonic()
        assert srv.api().get("/health").status_code == 200
        assert srv.api().get("/modems").status_code == 200
        slow.append(time.monotonic() - t0)
        time.sleep(0.05)
    assert sorted(slow)[len(slow) // 2] < 0.25 and max(slow) < 2.0, slow
    assert message(srv, mid)["status"] == "queued" and sim.sent == []
    sim.wake()
    wait_status(srv, mid, "delivered", timeout=20)
    assert len(sim.sent) == 1
    assert modem(srv, "a")["resets"] >= 1
    # 2. The USB cable is pulled, then plugged back in (a new pty behind the same by-id path).
    sim.unplug()
    m = wait_modem(srv, "a", lambda m: m["state"] == "disconnected", what="modem disconnected")
    assert not m["online"] and sim.path in (m["reason"] or "")
    devices = srv.api().get("/devices").json()["data"]["devices"]
    assert any(d["id"] == "modem_a" and d["kind"] == "modem" and not d["online"] for d in devices)
    later = send(srv, TO2, "after the replug")
    time.sleep(0.3)
    assert message(srv, later)["status"] == "queued"
    sim.replug()
    wait_status(srv, later, "delivered", timeout=15)
    assert len(sim.sent) == 2
    offline = db_rows(srv, "SELECT payload FROM event WHERE type = 'device.offline'")
    assert offline and all(json.loads(p)["device_id"] == "modem_a" for (p,) in offline)
    assert db_rows(srv, "SELECT count(*) FROM event WHERE type = 'device.online'")[0][0] >= 1


def test_retryable_error_fails_over_to_another_modem_and_is_sent_exactly_once(sims, serve):
    sim_a, sim_b = sims(), sims()
    # retry_backoff 3 s: modem a keeps the message ~9 s (3 s, then 6 s), long enough for modem b
    # to start on a loaded machine.
    srv = serve(modem_table("a", sim_a, NUM_A, send_retries=2, retry_backoff=3.0), ready=("a",))
    sim_a.fail_sends("+CMS ERROR: 512", count=20)  # the network refuses everything from modem a
    mid = send(srv, TO, "fail over to modem b")
    wait_for(lambda: message(srv, mid)["status"] == "dispatched", 5, 0.02, "dispatched on modem a")
    assert message(srv, mid)["device_id"] == "modem_a"
    # A second modem appears while modem a is still retrying.
    r = srv.api().post("/modems", json={"name": "b", "port": sim_b.path, "number": NUM_B})
    assert r.status_code == 201, r.text
    wait_modem(srv, "b", lambda m: m["online"], what="modem b ready")
    assert message(srv, mid)["status"] == "dispatched"  # still modem a's
    m = wait_status(srv, mid, "delivered", timeout=40)
    assert m["device_id"] == "modem_b" and m["attempts"] == 2
    assert sim_a.sent == [] and len(sim_b.sent) == 1
    rows = timeline(srv, mid)
    assert [r["status"] for r in rows] == ["accepted", "queued", "dispatched", "queued", "dispatched",
                                          "sent", "delivered"]
    assert rows[3]["detail"] == {"failover_from": "modem_a"}
    assert [r["device_id"] for r in rows if r["status"] == "dispatched"] == ["modem_a", "modem_b"]


def test_timeout_after_ctrl_z_is_unconfirmed_never_resent_and_a_report_can_prove_it(sims, serve):
    sim = sims()
    sim.set_report(TO, "none")
    srv = serve(modem_table("a", sim, NUM_A), ready=("a",))
    sim.swallow_results(1)
    lost = send(srv, TO, "no answer after Ctrl-Z")
    m = wait_status(srv, lost, "failed", timeout=10)
    assert m["error_code"] == "MODEM_UNCONFIRMED" and "not sent again" in m["error_message"]
    # The same modem keeps working, and the unconfirmed message is never sent again.
    ok = send(srv, TO2, "the next one goes out")
    wait_status(srv, ok, "delivered")
    time.sleep(1.5)
    assert len(parts_to(sim, TO)) == 1 and message(srv, lost)["status"] == "failed"
    # This time the network does report: the report proves the unconfirmed message arrived.
    sim.swallow_results(1)
    proven = send(srv, TO3, "no answer, but a report")
    m = wait_status(srv, proven, "delivered", timeout=10)
    assert m["error_code"] is None and m["error_message"] is None
    assert statuses(srv, proven)[-3:] == ["dispatched", "failed", "delivered"]
    assert len(parts_to(sim, TO3)) == 1


# -- SIM PIN -----------------------------------------------------------------------------------------------------
def test_pin_is_entered_once_and_a_wrong_pin_parks_the_modem_with_the_reason(sims, serve):
    good, bad = sims(pin="1234"), sims(pin="1234")
    srv = serve(modem_table("good", good, NUM_A, pin="1234"), modem_table("bad", bad, NUM_B, pin="9999"),
                ready=("good",))
    m = wait_modem(srv, "bad", lambda m: m["state"] == "parked", what="modem with a wrong PIN parked")
    assert not m["online"] and "PIN" in m["reason"] and m["pin_set"] and "pin" not in m
    devices = {d["id"]: d for d in srv.api().get("/devices").json()["data"]["devices"]}
    assert devices["modem_bad"]["state"] == "parked" and "PIN" in devices["modem_bad"]["reason"]
    assert devices["modem_good"]["online"]
    r = srv.api().post("/sms/send", json={"to": TO, "body": "hi", "device_id": "modem_bad"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "INVALID_DEVICE"
    mid = send(srv, TO, "goes through the good one")
    assert wait_status(srv, mid, "delivered")["device_id"] == "modem_good"
    time.sleep(1.0)
    assert good.pin_attempts == ["1234"]
    assert bad.pin_attempts == ["9999"]  # never tried twice: a few wrong tries lock the SIM
    assert not re.search(r"CPIN=\W*\d", srv.log())  # PINs are masked in the AT log


# -- several modems -----------------------------------------------------------------------------------------------
def test_two_modems_send_at_once(sims, serve):
    sim_a, sim_b = sims(radio_delay=1.0), sims(radio_delay=1.0)
    srv = serve(modem_table("a", sim_a, NUM_A), modem_table("b", sim_b, NUM_B), ready=("a", "b"))
    ids = [send(srv, TO, f"message {i}") for i in range(4)]
    for mid in ids:
        wait_status(srv, mid, "delivered", timeout=15)
    assert len(sim_a.sent) + len(sim_b.sent) == 4 and sim_a.sent and sim_b.sent
    # In parallel: each modem took a PDU while the other was still waiting 1 s for its +CMGS.
    gap = min(abs(a.at - b.at) for a in sim_a.sent for b in sim_b.sent)
    assert gap < 0.8, gap
    assert {message(srv, mid)["device_id"] for mid in ids} == {"modem_a", "modem_b"}


def test_restart_recovers_interrupted_and_sent_messages_by_their_reports(sims, serve):
    sim = sims()
    sim.set_report(TO, "delivered", delay=3.0)
    sim.set_report(TO2, "delivered", delay=0.3)
    srv = serve(modem_table("a", sim, NUM_A), ready=("a",))
    sent_before = send(srv, TO, "sent before the crash, report after it")
    wait_status(srv, sent_before, "sent")
    sim.radio_delay = 2.0  # the next send is still waiting for +CMGS when relaybox dies
    interrupted = send(srv, TO2, "handed to the modem when relaybox was killed")
    wait_for(lambda: len(sim.sent) == 2, 5, 0.02, "second PDU on the radio")
    assert message(srv, interrupted)["status"] == "dispatched"
    srv.kill()
    srv.start()
    # Dispatched with no "sent": unknown, so failed MODEM_UNCONFIRMED, never sent again ...
    rows = wait_for(lambda: "failed" in (s := statuses(srv, interrupted)) and s, 10, 0.05, "recovery")
    assert rows[:4] == ["accepted", "queued", "dispatched", "failed"]
    failed_row = next(r for r in timeline(srv, interrupted) if r["status"] == "failed")
    assert failed_row["detail"]["recovered"] is True
    # ... until its report proves it arrived; the report of the earlier message is matched too.
    wait_status(srv, interrupted, "delivered", timeout=10)
    wait_status(srv, sent_before, "delivered", timeout=10)
    assert len(sim.sent) == 2


# -- the modems API -------------------------------------------------------------------------------------------------
def test_modems_api_adds_lists_changes_and_removes_api_modems(sims, serve):
    sim_a, sim_c = sims(), sims(pin="4321")
    srv = serve(modem_table("a", sim_a, NUM_A), ready=("a",))
    api = srv.api()
    bad = [
        ({"name": "no spaces", "port": sim_c.path}, "name"),
        ({"name": "c", "port": "relative/path"}, "port"),
        ({"name": "c", "port": sim_c.path, "pin": "12"}, "pin"),
        ({"name": "c", "port": sim_c.path, "number": "+1234"}, "number"),
        ({"name": "c", "port": sim_c.path, "bogus": 1}, "bogus"),
        ({"name": "a", "port": sim_c.path}, "name"),  # the config's modem a
        ({"name": "c", "port": sim_a.path}, "port"),  # modem a's port
        ({"name": "c", "port": sim_c.path, "number": NUM_A}, "number"),  # modem a's number
    ]
    for body, field in bad:
        r = api.post("/modems", json=body)
        assert r.status_code == 400 and r.json()["error"]["field"] == field, (body, r.text)
    r = api.post("/modems", json={"name": "c", "port": sim_c.path, "pin": "4321", "number": NUM_B,
                                  "label": "Shop SIM"})
    assert r.status_code == 201, r.text
    created = r.json()["data"]
    assert created["id"] == "modem_c" and created["source"] == "api" and created["pin_set"]
    assert "pin" not in created and "4321" not in r.text
    wait_modem(srv, "modem_c", lambda m: m["online"], what="API modem ready")
    listed = api.get("/modems").json()["data"]
    assert [m["id"] for m in listed["modems"]] == ["modem_a", "modem_c"] and listed["total"] == 2
    numbers = {d["id"]: d["numbers"] for d in api.get("/devices").json()["data"]["devices"]}
    assert numbers["modem_c"] == [NUM_B]
    # The new modem's number is a sender at once.
    mid = send(srv, TO, "from the shop SIM", **{"from": NUM_B})
    assert wait_status(srv, mid, "delivered")["device_id"] == "modem_c"
    r = api.patch("/modems/c", json={"label": "Front desk", "enabled": False})
    assert r.status_code == 200 and r.json()["data"]["name"] == "Front desk" and not r.json()["data"]["enabled"]
    r = api.patch("/modems/modem_a", json={"label": "x"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "CONFLICT"
    assert api.delete("/modems/a").status_code == 409
    assert api.get("/modems/nope").status_code == 404
    r = api.patch("/modems/c", json={"baud": "fast"})
    assert r.status_code == 400 and r.json()["error"]["field"] == "baud"
    # Stored across a restart, PIN included (sealed): the power-cycled SIM is unlocked again.
    srv.stop()
    sim_c.replug()
    srv.start()
    m = wait_modem(srv, "c", lambda m: m["online"], what="API modem back after a restart")
    assert m["name"] == "Front desk" and not m["enabled"] and m["source"] == "api"
    assert sim_c.pin_attempts == ["4321", "4321"]
    sealed = db_rows(srv, "SELECT pin_sealed, spec FROM modem WHERE name = 'c'")
    assert "4321" not in repr(sealed)
    r = srv.api().delete("/modems/c")
    assert r.status_code == 200 and r.json()["data"]["removed"]
    assert [m["id"] for m in srv.api().get("/modems").json()["data"]["modems"]] == ["modem_a"]
    wait_for(lambda: sim_c.path and _port_free(sim_c.path), 5, 0.1, "port of the removed modem released")


def _port_free(path: str) -> bool:
    from relaybox.channels.modem.at import ATPort, PortOpenError

    port = ATPort(path)
    try:
        port.open()
    except PortOpenError:
        return False
    port.close()
    return True


# -- command line ------------------------------------------------------------------------------------------------
def relaybox_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYBOX_")}
    return subprocess.run([sys.executable, "-m", "relaybox.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, check=False)


def test_cli_scan_probes_a_port_and_ussd_works_with_or_without_the_server(sims, serve, tmp_path):
    sim = sims()
    sim.set_ussd("*100#", "You have 42 minutes left")
    out = relaybox_cli("modem", "scan", "--port", sim.path, "--json")
    assert out.returncode == 0, out.stderr
    (found,) = [c for c in json.loads(out.stdout)["candidates"] if c["path"] == sim.path]
    assert found["responds"] is True and any("relaybox" in line for line in found["info"])
    config = tmp_path / "cli.toml"
    config.write_text(modem_table("a", sim, NUM_A))
    data = tmp_path / "clidata"
    # No server: the command opens the port itself.
    out = relaybox_cli("modem", "ussd", "a", "*100#", "--config", str(config), "--data-dir", str(data))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "You have 42 minutes left"
    # A server holds the port: without a key the command says so; with one it asks the server.
    srv = serve(modem_table("a", sim, NUM_A), ready=("a",))
    out = relaybox_cli("modem", "ussd", "a", "*100#", "--config", str(config), "--data-dir", str(data))
    assert out.returncode == 1 and "--api-key" in out.stderr
    out = relaybox_cli("modem", "ussd", "modem_a", "*100#", "--api-key", srv.key, "--url", srv.url)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "You have 42 minutes left"
    out = relaybox_cli("modem", "ussd", "zz", "*100#", "--config", str(config), "--data-dir", str(data))
    assert out.returncode == 2 and "no modem called zz" in out.stderr


def test_cli_simulate_prints_the_pty_path_first():
    proc = subprocess.Popen([sys.executable, "-m", "relaybox.cli", "modem", "simulate", "--radio-delay", "0"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        path = proc.stdout.readline().strip()
        assert path.startswith("/dev/pts/")
        from relaybox.channels.modem.at import ATPort

        port = ATPort(path)
        port.open()
        try:
            assert port.command("AT", 2.0).final == "OK"
        finally:
            port.close()
        proc.stdin.write("quit\n")
        proc.stdin.flush()
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


# -- caps ------------------------------------------------------------------------------------------------------------
def test_rate_cap_holds_messages_back_instead_of_claiming_them(sims, serve):
    sim = sims()
    srv = serve(modem_table("a", sim, NUM_A, per_minute=2), ready=("a",))
    ids = [send(srv, fresh_number(), f"capped {i}") for i in range(3)]
    wait_for(lambda: sum(message(srv, i)["status"] == "delivered" for i in ids) == 2, 10, 0.05, "two sent")
    (held,) = [i for i in ids if message(srv, i)["status"] != "delivered"]
    # Released by the router (the capped modem takes nothing new) and never claimed.
    wait_for(lambda: message(srv, held)["device_id"] is None, 5, 0.1, "capped modem's message released")
    time.sleep(1.0)
    m = message(srv, held)
    assert m["status"] == "queued" and m["attempts"] == 0 and m["device_id"] is None
    assert len(sim.sent) == 2
    assert modem(srv, "a")["caps"]["per_minute"] == 2


# -- in process: the parts a live server cannot easily show ------------------------------------------------------------
def test_inbound_offered_again_after_a_lost_commit_is_stored_once(tmp_path):
    from datetime import UTC, datetime

    from relaybox.accounts import create_account
    from relaybox.app import create_app
    from relaybox.channels.modem.driver import InboundSms
    from relaybox.config import load_config
    from relaybox.models import Message

    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[[modem]]\nname = "a"\nport = "{tmp_path / "absent"}"\nnumber = "{NUM_A}"\n')
    app = create_app(load_config(str(cfg), data_dir=str(tmp_path / "data")))
    create_account("Owner", api_enabled=True, owner=True)
    ch = app.extensions["relaybox"].channels["modem_a"]
    sms = InboundSms(modem="a", sender="46701112233", text="hello twice", received_at=datetime.now(UTC),
                     smsc=None, parts=1, complete=True, key="k" * 32)
    commits: list[int] = []
    ch._on_inbound(sms, lambda: commits.append(1))
    ch._on_inbound(sms, lambda: commits.append(1))  # the SIM copy was not deleted: offered again
    rows = list(Message.select().where(Message.direction == "inbound"))
    assert len(rows) == 1 and rows[0].body == "hello twice" and rows[0].to_number == NUM_A
    assert rows[0].from_number == "46701112233"  # not a valid E.164 number: kept as given
    assert commits == [1, 1]  # committed both times, so the driver deletes it
    assert ch.driver.config.port == str(tmp_path / "absent") and ch.driver.config.timeouts.submit == 60.0
    assert ch.online() is False and ch.status()["state"] == "stopped"
