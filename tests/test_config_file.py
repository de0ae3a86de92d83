"""config.example.toml documents every setting and loads as a valid configuration."""
from __future__ import annotations

import re
from pathlib import Path

from relaybox.config import Config, load_config

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"


def test_example_documents_every_setting():
    text = EXAMPLE.read_text()
    documented = set(re.findall(r"^#?\s*\[?\[?([a-z_]+)(?:\.[a-z_]+)?]?]?\s*(?:=|$|#)", text, re.M))
    missing = [name for name in Config.model_fields if name not in documented]
    assert missing == [], f"config.example.toml does not document: {missing}"


def test_example_loads_and_matches_the_defaults(tmp_path):
    cfg = load_config(str(EXAMPLE), data_dir=str(tmp_path))
    defaults = load_config(data_dir=str(tmp_path))
    assert cfg.model_dump() == defaults.model_dump()


def test_environment_beats_file_and_flag_beats_environment(tmp_path, monkeypatch):
    f = tmp_path / "c.toml"
    f.write_text("port = 7000\nsandbox = true\n")
    assert load_config(str(f)).port == 7000
    monkeypatch.setenv("RELAYBOX_PORT", "7100")
    assert load_config(str(f)).port == 7100
    assert load_config(str(f), port=7200).port == 7200
    assert load_config(str(f)).sandbox is True


def test_environment_tables_are_json_and_merge_with_the_file(tmp_path, monkeypatch):
    f = tmp_path / "c.toml"
    f.write_text("[pacing.android]\nper_hour = 100\n")
    monkeypatch.setenv("relaybox_pacing", '{"modem": {"per_minute": 5}}')  # any case
    monkeypatch.setenv("RELAYBOX_WEBHOOK_RETRY_SCHEDULE", "[0, 5, 300]")
    monkeypatch.setenv("RELAYBOX_NOT_A_SETTING", "x")  # ignored
    cfg = load_config(str(f), data_dir=str(tmp_path))
    assert cfg.pacing["android"].per_hour == 100 and cfg.pacing["modem"].per_minute == 5
    assert cfg.webhook_retry_schedule == [0, 5, 300]


def test_bad_environment_values_name_the_setting(tmp_path, monkeypatch):
    import pytest

    from relaybox.config import ConfigError

    monkeypatch.setenv("RELAYBOX_PACING", "{not json")
    with pytest.raises(ConfigError, match="'pacing'.*RELAYBOX_PACING"):
        load_config(data_dir=str(tmp_path))
    monkeypatch.delenv("RELAYBOX_PACING")
    monkeypatch.setenv("RELAYBOX_SANDBOX", "maybe")
    with pytest.raises(ConfigError, match="'sandbox'"):
        load_config(data_dir=str(tmp_path))
