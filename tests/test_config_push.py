"""Versioned config push: the gate takes a newer, valid config with its own identity, swaps it
in atomically and restarts; anything else is refused with the field named and nothing changed.
The last test drives ``gerbang-provision config-push`` through a real Mosquitto."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from device import config_push
from device.commands import CommandError, CommandHandler
from device.config_push import (
    STATE_FILE,
    config_push_handler,
    previous_path,
    reported_config,
)
from gerbang import wire
from provisioning.push import config_sha256

CENTRE, DEVICE = "c1", "c1-r01-a"


def device_toml(data_dir: Path, *, device_id: str = DEVICE, centre: str = CENTRE,
                session: str = "S1", extra: str = "") -> str:
    """A minimal valid device.toml for a replay gate (replay needs no camera or files)."""
    return (f'[gate]\ndevice_id = "{device_id}"\ncentre = "{centre}"\nroom = "R01"\n'
            f'session = "{session}"\ndata_dir = "{data_dir}"\n\n'
            f'[capture]\nsource = "replay"\npath = "{data_dir}/frames"\n{extra}')


class Gate:
    """A gate's config file, data dir and a restart counter, as the service would hold them."""

    def __init__(self, root: Path) -> None:
        self.data_dir = root / "data"
        self.data_dir.mkdir(parents=True)
        self.config_path = root / "etc" / "device.toml"
        self.config_path.parent.mkdir()
        self.original = device_toml(self.data_dir).encode()
        self.config_path.write_bytes(self.original)
        self.restarts = 0

    def restart(self) -> None:
        self.restarts += 1

    def handler(self):
        """A fresh handler each time, as the service builds one per command."""
        return config_push_handler(self.config_path, self.data_dir, self.restart)

    def push(self, version: object, text: object) -> str:
        return self.handler()({"version": version, "config": text})


@pytest.fixture
def gate(tmp_path: Path) -> Gate:
    return Gate(tmp_path)


def test_good_push_swaps_the_file_records_the_state_and_restarts(gate: Gate) -> None:
    assert reported_config(gate.data_dir, gate.config_path) == {
        "version": 0, "sha256": config_sha256(gate.original.decode()), "applied_at": None,
        "local_edit": False}
    new = device_toml(gate.data_dir, session="S2", extra="fps = 5\n")
    detail = gate.push(2, new)
    assert "config v2 applied" in detail and config_sha256(new)[:12] in detail
    assert gate.config_path.read_text() == new
    assert previous_path(gate.config_path).read_bytes() == gate.original
    assert gate.restarts == 1
    state = json.loads((gate.data_dir / STATE_FILE).read_text())
    assert state["version"] == 2 and state["sha256"] == config_sha256(new)
    report = reported_config(gate.data_dir, gate.config_path)
    assert report["version"] == 2 and report["sha256"] == config_sha256(new)
    assert report["applied_at"] == state["applied_at"] and report["local_edit"] is False
    # No temporary files left next to the config or the state.
    assert sorted(p.name for p in gate.config_path.parent.iterdir()) == [
        "device.toml", "device.toml.previous"]
    assert [p.name for p in gate.data_dir.iterdir()] == [STATE_FILE]


def test_redelivered_push_is_acknowledged_again_without_a_second_restart(gate: Gate) -> None:
    new = device_toml(gate.data_dir, session="S2")
    gate.push(2, new)
    assert "already applied" in gate.push(2, new)
    assert gate.restarts == 1
    assert previous_path(gate.config_path).read_bytes() == gate.original


REFUSALS = [
    ("no version", lambda d: {"config": device_toml(d)}, "version"),
    ("version as text", lambda d: {"version": "2", "config": device_toml(d)}, "version"),
    ("version as bool", lambda d: {"version": True, "config": device_toml(d)}, "version"),
    ("version 0", lambda d: {"version": 0, "config": device_toml(d)}, "version"),
    ("no config", lambda d: {"version": 2}, "config"),
    ("config not text", lambda d: {"version": 2, "config": {"gate": {}}}, "config"),
    ("not TOML", lambda d: {"version": 2, "config": "[gate\ndevice_id = "}, "not valid TOML"),
    ("bad field", lambda d: {"version": 2, "config": device_toml(
        d, extra='\n[broker]\nport = "abc"\n')}, "broker.port"),
    ("out of range", lambda d: {"version": 2, "config": device_toml(
        d, extra="\n[gpio]\nrelay_pin = 40\n")}, "gpio.relay_pin"),
    ("unknown key", lambda d: {"version": 2, "config": device_toml(
        d, extra="\n[broker]\nprot = 1884\n")}, "unknown key(s) prot"),
    ("no gate table", lambda d: {"version": 2, "config": '[capture]\npath = "x"\n'}, "gate"),
    ("other device", lambda d: {"version": 2, "config": device_toml(
        d, device_id="c1-r02-a")}, "gate.device_id"),
    ("other centre", lambda d: {"version": 2, "config": device_toml(
        d, centre="c2")}, "gate.centre"),
    ("other data_dir", lambda d: {"version": 2, "config": device_toml(
        d.parent / "elsewhere")}, "gate.data_dir"),
]


@pytest.mark.parametrize("body, field", [(b, f) for _, b, f in REFUSALS],
                         ids=[name for name, _, _ in REFUSALS])
def test_every_refusal_names_the_field_and_changes_nothing(gate: Gate, body, field) -> None:
    with pytest.raises(CommandError, match=re.escape(field)):
        gate.handler()(body(gate.data_dir))
    assert gate.config_path.read_bytes() == gate.original
    assert not previous_path(gate.config_path).exists()
    assert not (gate.data_dir / STATE_FILE).exists()
    assert gate.restarts == 0


def test_version_is_monotonic_across_handlers_because_the_state_is_on_disk(gate: Gate) -> None:
    v5 = device_toml(gate.data_dir, session="S5")
    gate.push(5, v5)
    applied = gate.config_path.read_bytes()
    state = (gate.data_dir / STATE_FILE).read_bytes()
    for version, text in ((4, device_toml(gate.data_dir, session="S4")),
                          (5, device_toml(gate.data_dir, session="S5b"))):
        with pytest.raises(CommandError, match=rf"version: {version} is not newer than the "
                                               "applied config v5"):
            gate.push(version, text)  # a fresh handler each time
        assert gate.config_path.read_bytes() == applied
        assert (gate.data_dir / STATE_FILE).read_bytes() == state
    assert gate.restarts == 1
    gate.push(6, device_toml(gate.data_dir, session="S6"))
    assert reported_config(gate.data_dir)["version"] == 6 and gate.restarts == 2
    assert previous_path(gate.config_path).read_bytes() == applied


def test_unreadable_state_refuses_rather_than_guessing_the_version(gate: Gate) -> None:
    (gate.data_dir / STATE_FILE).write_text("{not json")
    with pytest.raises(CommandError, match="reported state is unreadable"):
        gate.push(9, device_toml(gate.data_dir, session="S9"))
    assert gate.config_path.read_bytes() == gate.original and gate.restarts == 0
    report = reported_config(gate.data_dir, gate.config_path)  # the birth message never fails
    assert report["version"] == 0 and "cannot be read" in report["error"]


def test_hand_edited_config_shows_as_local_edit(gate: Gate) -> None:
    gate.push(2, device_toml(gate.data_dir, session="S2"))
    gate.config_path.write_text(device_toml(gate.data_dir, session="S3"))
    report = reported_config(gate.data_dir, gate.config_path)
    assert report["version"] == 2 and report["local_edit"] is True
    assert reported_config(gate.data_dir)["sha256"] != report["sha256"]


def test_config_kept_when_the_state_cannot_be_recorded(gate: Gate, monkeypatch) -> None:
    real = config_push.write_atomic

    def failing(path: Path, data: bytes, mode: int = 0o644) -> None:
        if path.name == STATE_FILE:
            raise OSError(28, "No space left on device")
        real(path, data, mode)

    monkeypatch.setattr(config_push, "write_atomic", failing)
    with pytest.raises(CommandError, match="old config was put back"):
        gate.push(2, device_toml(gate.data_dir, session="S2"))
    assert gate.config_path.read_bytes() == gate.original and gate.restarts == 0


def test_unwritable_config_folder_is_refused(gate: Gate, monkeypatch) -> None:
    def read_only(path: Path, data: bytes, mode: int = 0o644) -> None:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(config_push, "write_atomic", read_only)
    with pytest.raises(CommandError, match=r"cannot write .*Read-only file system"):
        gate.push(2, device_toml(gate.data_dir, session="S2"))
    assert gate.config_path.read_bytes() == gate.original and gate.restarts == 0


def test_failed_restart_is_reported_with_the_config_written(gate: Gate) -> None:
    def broken() -> None:
        raise RuntimeError("workers did not stop")

    new = device_toml(gate.data_dir, session="S2")
    with pytest.raises(CommandError, match="v2 written but the restart failed"):
        config_push_handler(gate.config_path, gate.data_dir, broken)(
            {"version": 2, "config": new})
    assert gate.config_path.read_text() == new
    assert reported_config(gate.data_dir)["version"] == 2


def test_command_handler_routes_config_and_lists_it(gate: Gate) -> None:
    def handler(apply_config=None) -> CommandHandler:
        return CommandHandler("S1", gate.data_dir, lambda: None, lambda *_: None,
                              apply_config=apply_config)

    body = json.dumps({"command_id": "x1", "version": 2,
                       "config": device_toml(gate.data_dir, session="S2")}).encode()
    result = handler(gate.handler()).handle("config", body)
    assert result.ok and result.command_id == "x1" and "v2 applied" in result.detail
    refused = handler(gate.handler()).handle("config", body.replace(b'"version": 2',
                                                                    b'"version": 1'))
    assert not refused.ok and refused.detail.startswith("version:")
    assert not handler().handle("config", body).ok
    assert "config" in handler().handle("teleport", b"{}").detail


def test_config_push_cli_through_mosquitto(gate: Gate, mosquitto, capsys) -> None:
    """A fake gate (the real CommandHandler and config handler behind a paho client) answers
    the technician's ``config-push``: applied, then refused for a stale version."""
    from provisioning.cli import main as provision

    subscribed = threading.Event()
    device = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=DEVICE, protocol=mqtt.MQTTv5)
    prefix = wire.device_topic(CENTRE, DEVICE, "cmd/")

    def on_message(client: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        result = CommandHandler("S1", gate.data_dir, lambda: None, lambda *_: None,
                                apply_config=gate.handler()).handle(
            msg.topic.removeprefix(prefix), msg.payload)
        client.publish(wire.device_topic(CENTRE, DEVICE, "cmd_ack"), result.to_json(), qos=1)

    device.on_message = on_message
    device.on_subscribe = lambda *_a, **_k: subscribed.set()
    device.connect("127.0.0.1", mosquitto.port)
    device.loop_start()
    try:
        device.subscribe(prefix + "#", qos=1)
        assert subscribed.wait(10)
        new_file = gate.config_path.parent / "new.toml"
        new = device_toml(gate.data_dir, session="S2")
        new_file.write_text(new)

        def push(version: int) -> tuple[int, str]:
            capsys.readouterr()
            code = provision(["config-push", "--config-file", str(new_file), "--version",
                              str(version), "--device", DEVICE, "--broker-port",
                              str(mosquitto.port), "--timeout", "10"])
            return code, capsys.readouterr().out

        code, out = push(3)
        assert code == 0, out
        assert f"desired: {DEVICE} config v3 sha256 {config_sha256(new)}" in out
        assert "applied" in out and "config v3 applied" in out
        assert gate.config_path.read_text() == new and gate.restarts == 1
        assert reported_config(gate.data_dir, gate.config_path)["sha256"] == config_sha256(new)

        code, out = push(2)
        assert code == 1
        assert "REFUSED" in out and "version: 2 is not newer than the applied config v3" in out
        assert gate.config_path.read_text() == new and gate.restarts == 1
    finally:
        device.loop_stop()
        device.disconnect()
    # The technician's own checks stop a file meant for another gate before anything is sent.
    other = gate.config_path.parent / "other.toml"
    other.write_text(device_toml(gate.data_dir, device_id="c1-r02-a"))
    assert provision(["config-push", "--config-file", str(other), "--version", "4",
                      "--device", DEVICE, "--broker-port", str(mosquitto.port)]) == 2
