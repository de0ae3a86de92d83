"""``relaybox doctor``: what it checks and what it tells you to fix (real files, real pty)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYBOX_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "relaybox.cli", *args], env=env or _env(),
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "data"
    res = _run("init", "--data-dir", str(d), "--json")
    assert res.returncode == 0, res.stderr
    return d


def _checks(*args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, dict]]:
    res = _run("doctor", "--json", *args, env=env)
    out = json.loads(res.stdout)
    return res.returncode, {c["name"]: c for c in out["checks"]}


def test_doctor_passes_on_a_fresh_install(data_dir):
    res = _run("doctor", "--data-dir", str(data_dir))
    assert res.returncode == 0, res.stdout
    assert "[ok  ] database:" in res.stdout and "journal_mode=wal" in res.stdout
    # The page cache is bounded per connection (one per thread).
    assert "page cache 4 MB a connection" in res.stdout, res.stdout
    for name in ("config", "data_dir", "secret", "database", "queue", "serial", "clock"):
        assert f"] {name}:" in res.stdout


def test_doctor_reads_and_names_the_config_file_given_with_config(data_dir, tmp_path):
    conf = tmp_path / "relaybox.toml"
    conf.write_text(f'data_dir = "{data_dir}"\n')
    code, checks = _checks("--config", str(conf))
    assert code == 0, checks
    assert str(conf) in checks["config"]["detail"] and str(data_dir) in checks["data_dir"]["detail"]


def test_doctor_says_to_run_init_when_nothing_is_there(tmp_path):
    code, checks = _checks("--data-dir", str(tmp_path / "nowhere"))
    assert code == 1
    assert checks["data_dir"]["status"] == "fail" and "relaybox init" in checks["data_dir"]["fix"]


def test_doctor_flags_open_permissions_with_the_command_to_fix_them(data_dir):
    os.chmod(data_dir / "secret", 0o644)
    os.chmod(data_dir, 0o777)
    code, checks = _checks("--data-dir", str(data_dir))
    assert code == 1
    assert checks["secret"]["status"] == "fail" and "chmod 600" in checks["secret"]["fix"]
    assert checks["data_dir"]["status"] == "fail" and "chmod 750" in checks["data_dir"]["fix"]
    res = _run("doctor", "--data-dir", str(data_dir))
    assert "fix: chmod 600" in res.stdout and "failed" in res.stdout.splitlines()[-1]


def test_doctor_checks_modem_ports_exist_and_are_accessible(data_dir, tmp_path):
    master, slave = os.openpty()
    try:
        port = os.ttyname(slave)
        cfg = tmp_path / "config.toml"
        cfg.write_text(f'[[modem]]\nname = "present"\nport = "{port}"\n\n'
                       '[[modem]]\nname = "gone"\nport = "/dev/ttyUSB-relaybox-test-missing"\n')
        code, checks = _checks("--data-dir", str(data_dir), "--config", str(cfg))
        assert code == 1
        assert checks["modem:present"]["status"] == "ok"
        assert checks["modem:gone"]["status"] == "fail"
        assert "does not exist" in checks["modem:gone"]["detail"]
    finally:
        os.close(master)
        os.close(slave)


def test_doctor_reports_an_unreachable_queue_and_a_broken_database(data_dir):
    env = _env()
    env["RELAYBOX_QUEUE"] = "redis://127.0.0.1:1/0"
    code, checks = _checks("--data-dir", str(data_dir), env=env)
    assert code == 1 and checks["queue"]["status"] == "fail"
    assert "redis-server" in checks["queue"]["fix"]

    (data_dir / "relaybox.db").unlink()
    for extra in ("relaybox.db-wal", "relaybox.db-shm"):
        (data_dir / extra).unlink(missing_ok=True)
    (data_dir / "relaybox.db").write_bytes(b"")
    code, checks = _checks("--data-dir", str(data_dir))
    assert code == 1 and "schema missing" in checks["database"]["detail"]


def test_doctor_exits_2_on_a_bad_setting_and_names_it(tmp_path):
    env = _env()
    env["RELAYBOX_PORT"] = "not-a-port"
    res = _run("doctor", "--data-dir", str(tmp_path), env=env)
    assert res.returncode == 2
    assert "port" in res.stdout and "FAIL" in res.stdout
