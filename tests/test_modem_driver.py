"""The modem driver against the simulated modem: real pty, real pyserial, real threads.

Every wait is bounded (``wait_for``); timeouts in the driver are shrunk so that a fault and the
recovery from it take a second or two. The simulator records what went over the "radio"
(``sim.sent``), which the tests decode with python-gsmmodem-new as an independent oracle.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from gsmmodem.pdu import decodeSmsPdu

from relaybox.channels.modem.at import ATPort, PortBusyError, mask_line
from relaybox.channels.modem.driver import (
    CONFIGURATION,
    DISCONNECTED,
    PARKED,
    PERMANENT,
    READY,
    RETRYABLE,
    InboundSms,
    ModemConfig,
    ModemDriver,
    ModemTimeouts,
    SendResult,
    classify_error,
    scan,
)
from relaybox.channels.modem.reports import numbers_match
from relaybox.channels.modem.simulator import ModemSimulator
from relaybox.sms import pdu

pytestmark = pytest.mark.timeout(20)

TO = "+46708251358"
FAST = ModemTimeouts(
    basic=0.4,
    pin_query=0.5,
    pin_entry=0.5,
    pin_ready=1.0,
    registration=0.4,
    registration_wait=0.3,
    prompt=0.5,
    submit=1.5,
    read=0.5,
    list=1.0,
    ussd=1.0,
)


def wait_for(
    predicate: Callable[[], Any], timeout: float = 5.0, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Recorder:
    """Collects every callback the driver makes, as the app's message table would."""

    def __init__(self, auto_commit: bool = True):
        self.auto_commit = auto_commit
        self.sent: list[tuple[str, list[int]]] = []
        self.failed: list[tuple[str, SendResult]] = []
        self.statuses: list[tuple[str, str, dict[str, Any]]] = []
        self.inbound: list[InboundSms] = []
        self.commits: list[Callable[[], None]] = []
        self.health: list[dict[str, Any]] = []

    def kwargs(self) -> dict[str, Any]:
        return {
            "on_sent": lambda key, refs: self.sent.append((key, refs)),
            "on_send_failed": lambda key, result: self.failed.append((key, result)),
            "on_status": lambda key, status, raw: self.statuses.append(
                (key, status, raw)
            ),
            "on_inbound": self._inbound,
            "on_health": self.health.append,
        }

    def _inbound(self, message: InboundSms, commit: Callable[[], None]) -> None:
        self.inbound.append(message)
        self.commits.append(commit)
        if self.auto_commit:
            commit()

    def status_of(self, key: str) -> list[str]:
        return [status for k, status, _raw in self.statuses if k == key]


@pytest.fixture
def drivers() -> Iterator[Callable[..., tuple[ModemDriver, Recorder]]]:
    started: list[ModemDriver] = []

    def make(
        sim: ModemSimulator,
        *,
        ready: bool = True,
        auto_commit: bool = True,
        **config: Any,
    ) -> tuple[ModemDriver, Recorder]:
        settings: dict[str, Any] = {
            "timeouts": FAST,
            "health_interval": 0.3,
            "sweep_interval": 0.5,
            "retry_backoff": 0.05,
            "reconnect_backoff": (0.05, 0.3),
            "reset_settle": 0.1,
            "send_deadline": 5.0,
        }
        settings.update(config)
        recorder = Recorder(auto_commit)
        driver = ModemDriver(
            ModemConfig(f"m{len(started)}", sim.path, **settings), **recorder.kwargs()
        )
        started.append(driver)
        driver.start()
        if ready:
            assert driver.wait_ready(5), driver.status()
        return driver, recorder

    yield make
    for driver in started:
        driver.stop()


def oracle_text(hexes: list[str]) -> str:
    """Join parts decoded by python-gsmmodem-new (which leaves surrogates unpaired)."""
    joined = "".join(decodeSmsPdu(h)["text"] for h in hexes)
    return joined.encode("utf-16-be", "surrogatepass").decode("utf-16-be")


# -- sending ---------------------------------------------------------------------------------


def test_single_gsm7_message_goes_out_with_its_tpdu_length_and_reference(sims, drivers):
    sim = sims(first_reference=42)
    driver, rec = drivers(sim)
    result = driver.send("req_1", TO, "hellohello").result(5)
    assert result.outcome == "sent" and result.refs == [42] and result.parts == 1
    assert rec.sent == [("req_1", [42])]
    (part,) = sim.sent
    expected = pdu.encode_submit(TO, "hellohello")[0]
    assert part.hex == expected.hex  # empty SMSC field, SRR set, driver MR 0
    assert part.length == expected.tpdu_length == len(bytes.fromhex(part.hex)) - 1
    decoded = decodeSmsPdu(part.hex)
    assert decoded["type"] == "SMS-SUBMIT" and decoded["number"] == TO
    assert decoded["text"] == "hellohello"
    assert part.submit.status_report_request


def test_three_part_gsm7_message_keeps_every_parts_reference(sims, drivers):
    sim = sims(first_reference=254)
    driver, _rec = drivers(sim)
    text = ("The quick brown fox jumps over the lazy dog [GSM-7 with {escapes}] " * 6)[
        :400
    ]
    assert pdu.analyze(text).segments == 3
    result = driver.send("req_3", TO, text, validity_seconds=86400).result(5)
    assert result.outcome == "sent" and result.refs == [254, 255, 0]
    assert [p.reference for p in sim.sent] == [254, 255, 0]
    concat = [p.submit.concat for p in sim.sent]
    assert [c.seq for c in concat] == [1, 2, 3] and {c.total for c in concat} == {3}
    assert len({c.ref for c in concat}) == 1
    for part in sim.sent:  # AT+CMGS=<n> counts the TPDU without the SMSC field
        assert part.length == len(bytes.fromhex(part.hex)) - 1
        assert part.submit.validity == 86400
    assert oracle_text([p.hex for p in sim.sent]) == text


@pytest.mark.parametrize(
    "text",
    [
        "আমি বাংলায় গান গাই, আমি বাংলার গান গাই। " * 4,  # Bengali
        "یہ ایک آزمائشی پیغام ہے جو اردو میں لکھا گیا ہے۔ " * 4,  # Urdu
        "Launch day 🚀🎉 — all systems go 😀👍 " * 5,  # emoji: surrogate pairs
    ],
    ids=["bengali", "urdu", "emoji"],
)
def test_ucs2_messages_are_split_like_the_api_counts_and_arrive_whole(
    sims, drivers, text
):
    sim = sims()
    driver, _rec = drivers(sim)
    info = pdu.analyze(text)
    assert info.encoding == "UCS-2" and info.segments == 3
    result = driver.send("req_u", TO, text).result(5)
    assert result.outcome == "sent" and len(result.refs) == 3
    assert [p.submit.dcs for p in sim.sent] == [0x08] * 3
    assert all(len(bytes.fromhex(p.hex)) - 1 == p.length for p in sim.sent)
    # No part ends in half a surrogate pair: each decodes cleanly on its own.
    for part in sim.sent:
        assert "\ufffd" not in part.text
    assert oracle_text([p.hex for p in sim.sent]) == text
    assert pdu.join_parts([p.submit for p in sim.sent]) == text


def test_send_returns_at_once_and_queued_sends_go_in_order(sims, drivers):
    sim = sims(radio_delay=0.1)
    driver, rec = drivers(sim)
    started = time.monotonic()
    futures = [driver.send(f"req_{i}", TO, f"message {i}") for i in range(3)]
    assert time.monotonic() - started < 0.05
    assert [f.result(5).outcome for f in futures] == ["sent"] * 3
    assert [p.text for p in sim.sent] == ["message 0", "message 1", "message 2"]
    assert [key for key, _refs in rec.sent] == ["req_0", "req_1", "req_2"]


# -- delivery reports ------------------------------------------------------------------------


def test_reports_for_all_parts_make_one_delivered(sims, drivers):
    sim = sims()
    driver, rec = drivers(sim)
    driver.send("req_d", TO, "x" * 400).result(5)
    wait_for(lambda: rec.status_of("req_d"), what="a status")
    time.sleep(0.3)  # room for a wrong second event
    assert rec.status_of("req_d") == ["delivered"]
    raw = rec.statuses[0][2]
    assert raw["tp_status"] == 0 and len(raw["all_parts"]) == 3
    assert sorted(p["reference"] for p in raw["all_parts"]) == sorted(rec.sent[0][1])
    wait_for(lambda: not sim.stored("SR"), what="reports deleted from SR")


def test_failed_report_makes_the_message_failed_once_with_raw_status(sims, drivers):
    sim = sims()
    sim.set_report(TO, "failed")
    driver, rec = drivers(sim)
    driver.send("req_f", TO, "y" * 300).result(5)
    wait_for(lambda: rec.status_of("req_f"), what="a status")
    time.sleep(0.3)
    assert rec.status_of("req_f") == ["failed"]
    assert rec.statuses[0][2]["tp_status"] == 0x46


def test_temporary_report_is_pending_not_final(sims, drivers):
    sim = sims()
    sim.set_report(TO, "pending")
    driver, rec = drivers(sim)
    driver.send("req_p", TO, "later").result(5)
    wait_for(lambda: rec.status_of("req_p"), what="a status")
    assert rec.status_of("req_p") == ["pending"]
    assert rec.statuses[0][2]["tp_status_hex"] == "0x21"


def test_routed_reports_when_the_modem_refuses_stored_ones(sims, drivers):
    sim = sims(cnmi_ds2=False)
    driver, rec = drivers(sim)
    assert driver.status()["report_mode"] == "routed"
    assert "AT+CNMI=2,1,0,1,0" in sim.commands
    driver.send("req_r", TO, "routed report").result(5)
    wait_for(lambda: rec.status_of("req_r") == ["delivered"], what="delivered via +CDS")


def test_reports_match_on_number_too(sims, drivers):
    sim = sims(first_reference=7)
    driver, rec = drivers(sim)
    sim.set_report("+4915112345678", "none")
    driver.send("req_a", "+4915112345678", "no report for me").result(5)  # mr 7
    sim._next_mr = 7  # the modem reuses MR 7 for another number
    driver.send("req_b", TO, "report for me").result(5)
    wait_for(lambda: rec.status_of("req_b") == ["delivered"], what="req_b delivered")
    assert rec.status_of("req_a") == []


# -- inbound ---------------------------------------------------------------------------------


def test_inbound_sms_is_deleted_from_the_sim_only_after_commit(sims, drivers):
    sim = sims()
    _driver, rec = drivers(sim, auto_commit=False)
    (index,) = sim.inject_sms("+8801711000000", "ami tomake bhalobashi")
    message = wait_for(lambda: rec.inbound and rec.inbound[0], what="inbound")
    assert (message.sender, message.text, message.parts) == (
        "+8801711000000",
        "ami tomake bhalobashi",
        1,
    )
    assert message.received_at.tzinfo is not None
    time.sleep(0.7)  # a sweep passes: the message is neither deleted nor offered twice
    assert index in sim.stored("SM") and len(rec.inbound) == 1
    rec.commits[0]()
    wait_for(lambda: index not in sim.stored("SM"), what="deleted after commit")
    # Read (by +CMTI or by the sweep), then deleted, in that order.
    read = min(
        i for i, c in enumerate(sim.commands) if c in (f"AT+CMGR={index}", "AT+CMGL=4")
    )
    assert sim.commands.index(f"AT+CMGD={index}") > read


def test_concatenated_inbound_arrives_once_in_order(sims, drivers):
    sim = sims()
    _driver, rec = drivers(sim)
    text = "یہ ایک طویل پیغام ہے جو تین حصوں میں آتا ہے۔ " * 4
    indexes = sim.inject_sms("+923001234567", text, reverse=True)
    assert len(indexes) == 3
    message = wait_for(lambda: rec.inbound and rec.inbound[0], what="inbound")
    assert message.text == text and message.parts == 3 and message.complete
    wait_for(lambda: not sim.stored("SM"), what="all parts deleted")
    assert len(rec.inbound) == 1


def test_sweep_finds_messages_that_came_without_cmti(sims, drivers):
    sim = sims()
    sim.inject_sms("+9779800000000", "stored while relaybox was down")
    _driver, rec = drivers(sim)
    sim.inject_sms("+9779800000001", "no +CMTI for this one", notify=False)
    wait_for(lambda: len(rec.inbound) == 2, what="both inbound")
    assert sorted(m.text for m in rec.inbound) == [
        "no +CMTI for this one",
        "stored while relaybox was down",
    ]


def test_uncommitted_inbound_is_offered_again_with_the_same_key(sims, drivers):
    sim = sims()
    _driver, rec = drivers(sim, auto_commit=False, commit_timeout=0.2)
    sim.inject_sms("+447700900123", "commit me")
    wait_for(lambda: len(rec.inbound) >= 2, what="a second offer")
    assert rec.inbound[0].key == rec.inbound[1].key
    rec.commits[-1]()
    wait_for(lambda: not sim.stored("SM"), what="deleted")


def test_inbound_failure_in_the_app_leaves_the_message_on_the_sim(sims, drivers):
    sim = sims()
    calls: list[str] = []

    def broken(message: InboundSms, commit: Callable[[], None]) -> None:
        calls.append(message.text)
        if len(calls) == 1:
            raise RuntimeError("database is locked")
        commit()

    driver = ModemDriver(
        ModemConfig(
            "mx", sim.path, timeouts=FAST, sweep_interval=0.3, health_interval=5
        ),
        on_inbound=broken,
    )
    driver.start()
    try:
        assert driver.wait_ready(5)
        sim.inject_sms("+447700900124", "retry me")
        wait_for(lambda: len(calls) == 2 and not sim.stored("SM"), what="second offer")
    finally:
        driver.stop()


# -- faults ----------------------------------------------------------------------------------


def test_urcs_interleaved_into_replies_are_neither_lost_nor_mixed_in(sims, drivers):
    sim = sims()
    sim.noise = ["^RSSI:15", "^BOOT:12345,0,0,0,6"]
    driver, rec = drivers(sim)
    sim.inject_sms("+447700900001", "first")
    sim.inject_sms(
        "+447700900002", "second", during_next_reply=True
    )  # inside the next reply
    assert (
        driver.send("req_n", TO, "through the noise " * 12).result(5).outcome == "sent"
    )
    wait_for(lambda: len(rec.inbound) == 2, what="both inbound")
    time.sleep(0.6)
    assert sorted(m.text for m in rec.inbound) == ["first", "second"]
    wait_for(lambda: driver.status()["signal"]["rssi"] in (15, 20), what="signal")


def test_replies_split_across_writes_are_reassembled(sims, drivers):
    sim = sims()
    sim.split_writes = True
    driver, rec = drivers(sim)
    result = driver.send("req_s", TO, "split " * 50).result(5)
    assert result.outcome == "sent" and len(result.refs) == 2
    sim.inject_sms("+447700900003", "split reply")
    wait_for(lambda: rec.inbound, what="inbound")
    wait_for(lambda: rec.status_of("req_s") == ["delivered"], what="delivered")


def test_echo_left_on_is_tolerated(sims, drivers):
    sim = sims()
    sim.echo_stuck = True
    driver, rec = drivers(sim)
    assert "ATE0" in sim.commands and sim.echo
    result = driver.send("req_e", TO, "echo " * 40).result(5)
    assert result.outcome == "sent"
    sim.inject_sms("+447700900004", "echo inbound")
    wait_for(lambda: rec.inbound, what="inbound")
    wait_for(lambda: rec.status_of("req_e") == ["delivered"], what="delivered")


def test_modem_that_stops_answering_is_reset_and_queued_sends_survive(sims, drivers):
    sim = sims()
    driver, _rec = drivers(sim)
    sim.hang()
    wait_for(lambda: driver.state != READY, what="driver notices the hang")
    future = driver.send("req_h", TO, "after the hang")
    time.sleep(
        1.0
    )  # the ladder climbs (re-init, CFUN=1,1, reopen) while the modem is dead
    assert not future.done()
    sim.wake()
    assert future.result(5).outcome == "sent"
    assert driver.state == READY and driver.status()["resets"] >= 1


def test_timeout_after_ctrl_z_is_unknown_not_resent_and_a_report_can_prove_delivery(
    sims, drivers
):
    sim = sims(first_reference=9)
    driver, rec = drivers(sim)
    sim.swallow_results(1)
    result = driver.send("req_x", TO, "did it go?").result(5)
    assert result.outcome == "unknown" and result.error_code == "MODEM_UNCONFIRMED"
    assert rec.failed == [("req_x", result)] and rec.sent == []
    assert len(sim.sent) == 1  # it did go out once, and was never resent
    wait_for(
        lambda: rec.status_of("req_x") == ["delivered"], what="report proves delivery"
    )
    assert driver.send("req_y", TO, "next one").result(5).outcome == "sent"
    assert len(sim.sent) == 2


def test_unplug_during_send_is_unknown_and_replug_is_found_again(sims, drivers):
    sim = sims(radio_delay=0.4)
    driver, _rec = drivers(sim)
    future = driver.send("req_u", TO, "cable pulled")
    wait_for(lambda: sim.sent, what="PDU on the air")
    sim.unplug()
    assert future.result(5).outcome == "unknown"
    wait_for(lambda: driver.state == DISCONNECTED, what="disconnected")
    queued = driver.send("req_v", TO, "after replug")
    time.sleep(0.3)
    sim.replug()  # a new pty behind the same by-id style link
    assert queued.result(5).outcome == "sent"
    assert driver.state == READY


def test_send_to_an_absent_modem_fails_offline_by_its_deadline(sims, drivers):
    sim = sims()
    driver, _rec = drivers(sim)
    sim.unplug()
    wait_for(lambda: driver.state == DISCONNECTED, what="disconnected")
    started = time.monotonic()
    result = driver.send("req_o", TO, "nobody home", deadline=0.5).result(3)
    assert 0.4 < time.monotonic() - started < 2.0
    assert result.outcome == "failed" and result.error_code == "MODEM_OFFLINE"
    assert result.resendable


def test_queued_send_can_be_cancelled(sims, drivers):
    sim = sims()
    driver, _rec = drivers(sim)
    sim.unplug()
    wait_for(lambda: driver.state == DISCONNECTED, what="disconnected")
    future = driver.send("req_c", TO, "never mind")
    assert driver.cancel("req_c") and future.cancelled()
    assert not driver.cancel("req_c")


def test_retryable_cms_error_is_retried(sims, drivers):
    sim = sims()
    driver, _rec = drivers(sim)
    sim.fail_sends("+CMS ERROR: 512", count=2)
    result = driver.send("req_t", TO, "retry me").result(5)
    assert result.outcome == "sent"
    assert sum(c.startswith("AT+CMGS") for c in sim.commands) == 3


def test_permanent_cms_error_fails_without_retry(sims, drivers):
    sim = sims()
    driver, _rec = drivers(sim)
    sim.fail_sends("+CMS ERROR: 21")
    result = driver.send("req_z", TO, "rejected").result(5)
    assert (result.outcome, result.error_code, result.error_class, result.cms) == (
        "failed",
        "MODEM_REJECTED",
        PERMANENT,
        21,
    )
    assert not result.resendable
    assert sum(c.startswith("AT+CMGS") for c in sim.commands) == 1
    assert driver.state == READY


def test_configuration_cms_error_parks_the_modem_with_a_reason(sims, drivers):
    sim = sims()
    driver, _rec = drivers(sim)
    sim.fail_sends("+CMS ERROR: 330")
    result = driver.send("req_k", TO, "no smsc").result(5)
    assert result.error_code == "MODEM_CONFIG" and result.error_class == CONFIGURATION
    wait_for(lambda: driver.state == PARKED, what="parked")
    assert "smsc" in driver.status()["reason"].lower()
    later = driver.send("req_l", TO, "while parked").result(1)
    assert later.error_code == "MODEM_CONFIG" and later.resendable
    driver.restart()
    assert driver.wait_ready(5)


def test_sim_without_smsc_parks_unless_configured(sims, drivers):
    sim = sims(smsc="")
    driver, _rec = drivers(sim, ready=False)
    wait_for(lambda: driver.state == PARKED, what="parked")
    assert "smsc" in driver.status()["reason"].lower()
    sim2 = sims(smsc="")
    driver2, _rec2 = drivers(sim2, smsc="+447802000332")
    assert sim2.smsc == "+447802000332"
    assert driver2.send("req_m", TO, "via configured smsc").result(5).outcome == "sent"


def test_half_typed_pdu_left_by_a_crash_is_abandoned_not_sent(sims, drivers):
    sim = sims()
    crashed = ATPort(sim.path)
    crashed.open()
    crashed.command("ATE0")
    crashed.command("AT+CMGF=0")
    crashed.write_raw(b"AT+CMGS=23\r")
    wait_for(lambda: sim._entry is not None, what="SMS entry mode")
    crashed.write_raw(b"0011000B916407281553F8")  # ...and the process died here
    crashed.close()
    driver, _rec = drivers(sim)
    assert sim.sent == [] and sim._entry is None
    assert driver.send("req_after", TO, "clean start").result(5).outcome == "sent"
    assert [p.text for p in sim.sent] == ["clean start"]


def test_radio_off_at_boot_is_switched_on(sims, drivers):
    sim = sims(boot_cfun=4)
    driver, _rec = drivers(sim)
    assert "AT+CFUN=1" in sim.commands and sim.cfun == 1
    assert driver.status()["registered"]


def test_reports_for_messages_sent_before_a_restart_are_matched(sims, drivers):
    sim = sims(first_reference=77)
    sim.set_report(TO, "none")
    first, _rec = drivers(sim)
    refs = first.send("req_old", TO, "sent by the previous process").result(5).refs
    first.stop()
    sim.set_report(TO, "delivered")
    second, rec = drivers(sim)
    second.track("req_old", TO, refs, time.time() - 5)
    sim._next_mr = 77  # the network's report for MR 77, as if it came late
    sim.set_report("+4915112345678", "none")
    second.send("req_other", "+4915112345678", "takes MR 77 to someone else").result(5)
    assert rec.status_of("req_old") == []
    sim._call(lambda: sim._plan_report(77, TO))
    wait_for(
        lambda: rec.status_of("req_old") == ["delivered"], what="old message delivered"
    )


# -- SIM PIN -----------------------------------------------------------------------------------


def test_pin_is_entered_once_and_masked_in_the_log(sims, drivers, caplog):
    caplog.set_level(logging.DEBUG, logger="relaybox.modem")
    sim = sims(pin="4321")
    driver, _rec = drivers(sim, pin="4321")
    assert sim.pin_attempts == ["4321"] and sim.sim_state == "READY"
    driver.send("req_pin", TO, "secret text").result(5)
    log_text = caplog.text
    assert "4321" not in log_text and 'AT+CPIN="****"' in log_text
    assert "secret text" not in log_text and sim.sent[0].hex not in log_text


def test_wrong_pin_is_tried_once_then_the_modem_parks(sims, drivers):
    sim = sims(pin="4321")
    driver, _rec = drivers(sim, ready=False, pin="0000")
    wait_for(lambda: driver.state == PARKED, what="parked")
    assert "pin" in driver.status()["reason"].lower()
    driver.restart()  # an operator restart does not try the rejected PIN again
    time.sleep(0.5)
    assert sim.pin_attempts == ["0000"] and sim.pin_tries == 2
    result = driver.send("req_w", TO, "x").result(1)
    assert result.error_code == "MODEM_CONFIG"


def test_pin_required_but_not_configured_parks(sims, drivers):
    sim = sims(pin="4321")
    driver, _rec = drivers(sim, ready=False)
    wait_for(lambda: driver.state == PARKED, what="parked")
    assert sim.pin_attempts == [] and "pin" in driver.status()["reason"]


def test_puk_locked_sim_parks_and_says_why(sims, drivers):
    sim = sims(pin="4321", puk_locked=True)
    driver, rec = drivers(sim, ready=False, pin="4321")
    wait_for(lambda: driver.state == PARKED, what="parked")
    assert "PUK" in driver.status()["reason"] and sim.pin_attempts == []
    assert rec.health[-1]["state"] == PARKED


# -- health, USSD, parallel modems, scan ---------------------------------------------------------


def test_health_reports_signal_registration_operator_and_sim(sims, drivers):
    sim = sims(csq=(12, 99))
    driver, rec = drivers(sim)
    wait_for(
        lambda: rec.health and rec.health[-1]["signal"]["rssi"] == 12, what="health"
    )
    status = driver.status()
    assert status["signal"] == {"rssi": 12, "dbm": -89, "quality": "workable"}
    assert status["registration"] == "home" and status["operator"] == "Relaybox Sim"
    assert status["sim"] == "READY" and status["imei"] == sim.imei
    sim.creg = 5
    wait_for(lambda: driver.status()["registration"] == "roaming", what="roaming")


def test_ussd_returns_the_networks_answer(sims, drivers):
    sim = sims()
    driver, _rec = drivers(sim)
    sim.set_ussd("*100#", "Balance: 3.00 EUR")
    assert driver.ussd("*100#").text == "Balance: 3.00 EUR"
    sim.set_ussd(
        "*101#",
        "04110430043B0430043D0441003A0032003200320030002C003700360440",
        dcs=72,
        before_ok=True,
    )
    assert driver.ussd("*101#").text == "Баланс:2220,76р"


def test_two_modems_send_in_parallel(sims, drivers):
    one = sims(radio_delay=0.5)
    a = sims(radio_delay=0.5)
    b = sims(radio_delay=0.5)
    single, _ = drivers(one)
    first, _ = drivers(a)
    second, _ = drivers(b)

    def timed(sends: list[tuple[ModemDriver, str]]) -> float:
        started = time.monotonic()
        futures = [d.send(f"req_{i}", TO, text) for i, (d, text) in enumerate(sends)]
        assert all(f.result(10).outcome == "sent" for f in futures)
        return time.monotonic() - started

    alone = timed([(single, f"alone {i}") for i in range(4)])
    together = timed([(first, "a0"), (second, "b0"), (first, "a1"), (second, "b1")])
    assert alone >= 2.0
    assert together < alone * 0.7, (alone, together)


def test_scan_probes_ports_and_explains_a_busy_one(sims, drivers):
    sim = sims()
    (found,) = [c for c in scan(extra=[sim.path]) if c.path == sim.path]
    assert found.responds and any("relaybox" in line for line in found.info)
    _driver, _rec = drivers(sim)
    (busy,) = [c for c in scan(extra=[sim.path]) if c.path == sim.path]
    assert not busy.responds and "ModemManager" in busy.error


def test_second_opener_gets_the_modemmanager_advice(sims):
    sim = sims()
    holder = ATPort(sim.path)
    holder.open()
    try:
        with pytest.raises(PortBusyError, match="systemctl disable --now ModemManager"):
            ATPort(sim.path).open()
    finally:
        holder.close()


# -- small pure pieces -----------------------------------------------------------------------


def test_error_classes():
    assert classify_error("CMS", 512) == RETRYABLE
    assert classify_error("CMS", 21) == PERMANENT
    assert classify_error("CMS", 330) == CONFIGURATION
    assert classify_error("CME", 11) == CONFIGURATION
    assert classify_error("ERROR", None) == RETRYABLE


def test_log_masking():
    assert mask_line('AT+CPIN="1234"') == 'AT+CPIN="****"'
    assert (
        mask_line("0011000B916407281553F80000AA0AE8329BFD4697D9EC37")
        == "<pdu 24 octets>"
    )
    assert mask_line('+CUSD: 0,"Balance: 3.00",15') == "+CUSD: 0,<13 chars>,15"
    assert mask_line("hello there", sensitive=True) == "<11 chars>"
    assert mask_line("+CSQ: 20,99") == "+CSQ: 20,99"


def test_numbers_match_national_and_international_forms():
    assert numbers_match("+46708251358", "46708251358")
    assert numbers_match("+46708251358", "0708251358")
    assert not numbers_match("+46708251358", "+46708251359")


def test_simulator_is_usable_from_two_threads(sims):
    """The simulator's scripting calls are thread-safe (they run on its own thread)."""
    sim = sims()
    errors: list[BaseException] = []

    def inject(n: int) -> None:
        try:
            for i in range(5):
                sim.inject_sms(f"+4477009000{n}{i}", f"hi {n} {i}", notify=False)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=inject, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert not errors and len(sim.stored("SM")) == 10


def test_simulator_command_line_prints_the_pty_path_first():
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "relaybox.channels.modem.simulator",
            "--radio-delay",
            "0",
        ],
        input="sms +447700900999 hello from the console\nquit\n",
        check=True,
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert proc.returncode == 0
    assert proc.stdout.splitlines()[0].startswith("/dev/pts/")


@pytest.mark.skipif(
    shutil.which("gammu") is None, reason="Debian's gammu is not installed"
)
def test_gammu_as_a_second_client_sends_the_reference_pdu_through_the_simulator(
    sims, tmp_path
):
    """The simulator is not just a mirror of relaybox's assumptions: an independent DTE
    (gammu 1.42) sends through it, and the PDU is MODEM.md's cross-checked vector."""
    sim = sims()
    rc = tmp_path / "gammurc"
    rc.write_text(f"[gammu]\ndevice = {sim.path}\nconnection = at\n")
    command = ["gammu", "-c", str(rc), "sendsms", "TEXT", TO, "-text", "hellohello"]
    command += ["-smscnumber", "+447802000332"]
    subprocess.run(command, capture_output=True, timeout=15, check=True)
    (part,) = sim.sent
    assert part.length == 23
    assert part.hex == "079144872000302311000B916407281553F80000FF0AE8329BFD4697D9EC37"
