"""Config problems stop start-up with a message naming the field."""

from __future__ import annotations

import subprocess
import sys

import pytest

from device.config import parse_device_config
from gerbang.config import ConfigError

GOOD = {
    "gate": {"device_id": "c1-r01-a", "centre": "c1", "room": "R01", "session": "S1"},
    "capture": {"source": "replay", "path": "/tmp"},
}


def with_(section: str, **values) -> dict:
    data = {k: dict(v) for k, v in GOOD.items()}
    data.setdefault(section, {}).update(values)
    return data


def test_good_config_gets_defaults():
    config = parse_device_config(GOOD)
    assert config.broker.port == 1883
    assert config.gpio.relay_pulse_s == 3.0
    assert config.roster_path.name == "roster.json"


@pytest.mark.parametrize(("data", "field"), [
    ({"capture": GOOD["capture"]}, "gate"),
    ({"gate": {"centre": "c1", "room": "R01", "session": "S1"}, "capture": GOOD["capture"]},
     "device_id"),
    (with_("broker", port="abc"), "broker.port"),
    (with_("broker", port=70000), "broker.port"),
    (with_("broker", protocol=4), "broker.protocol"),
    (with_("gate", room="R 01"), "gate.room"),
    (with_("gpio", relay_pin=40), "gpio.relay_pin"),
    (with_("gpio", green_pin=17), "gpio.relay_pin"),
    (with_("gpio", relay_pulse_s=120), "gpio.relay_pulse_s"),
    (with_("match", target_far=0.5), "match.target_far"),
    (with_("quality", max_yaw_deg=120), "quality.max_yaw_deg"),
    (with_("capture", source="webcam"), "capture.source"),
    (with_("capture", source="v4l2", width=50), "capture.width"),
    (with_("models", threads="two"), "models.threads"),
    (with_("broker", colour="blue"), "colour"),
])
def test_bad_field_is_named(data, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        parse_device_config(data)


def test_service_refuses_to_start_with_one_clear_line(tmp_path):
    config = tmp_path / "device.toml"
    config.write_text('[gate]\ndevice_id = "d1"\ncentre = "c1"\nroom = "R01"\n\n'
                      '[capture]\npath = "/tmp"\n')
    proc = subprocess.run([sys.executable, "-m", "device.cli", "run", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "gate.session: missing" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_shipped_example_configs_are_valid():
    from pathlib import Path

    from device.config import load_device_config
    from gateway.config import load_gateway_config

    examples = Path(__file__).resolve().parent.parent / "examples"
    assert load_device_config(examples / "device.toml").gate.room == "R01"
    assert load_gateway_config(examples / "gateway.toml").gateway.http_port == 8080
