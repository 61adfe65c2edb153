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

from device.manage import config_push
from device.manage.config_push import (
    STATE_FILE,
    config_push_handler,
    previous_path,
    reported_config,
)
from device.uplink.commands import CommandError, CommandHandler
from gerbang import wire
from provisioning.push import config_sha256

CENTRE, DEVICE = "c1", "c1-r01-a"


def device_toml(data_dir: Path, *, device_id: str = DEVICE, centre: str = CENTRE,
                session: str = "S1", extra: str = "", telemetry: float = 30.0) -> str:
    """A minimal valid device.toml for a replay gate (replay needs no camera or files).
    ``telemetry`` (the interval, a harmless key) varies a config an unsigned push may send."""
    return (f'telemetry_interval_s = {telemetry}\n'
            f'[gate]\ndevice_id = "{device_id}"\ncentre = "{centre}"\nroom = "R01"\n'
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
        "local_edit": False, "signed": False}
    new = device_toml(gate.data_dir, telemetry=5.0, extra="freeze_s = 8\n")
    detail = gate.push(2, new)
    assert "config v2 applied (unsigned" in detail and config_sha256(new)[:12] in detail
    assert gate.config_path.read_text() == new
    assert previous_path(gate.config_path).read_bytes() == gate.original
    assert gate.restarts == 1
    state = json.loads((gate.data_dir / STATE_FILE).read_text())
    assert state["version"] == 2 and state["sha256"] == config_sha256(new)
    report = reported_config(gate.data_dir, gate.config_path)
    assert report["version"] == 2 and report["sha256"] == config_sha256(new)
    assert report["applied_at"] == state["applied_at"] and report["local_edit"] is False
    assert report["signed"] is False and state["signed"] is False
    # No temporary files left next to the config or the state.
    assert sorted(p.name for p in gate.config_path.parent.iterdir()) == [
        "device.toml", "device.toml.previous"]
    assert [p.name for p in gate.data_dir.iterdir()] == [STATE_FILE]


def test_redelivered_push_is_acknowledged_again_without_a_second_restart(gate: Gate) -> None:
    new = device_toml(gate.data_dir, telemetry=2.0)
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
    v5 = device_toml(gate.data_dir, telemetry=5.0)
    gate.push(5, v5)
    applied = gate.config_path.read_bytes()
    state = (gate.data_dir / STATE_FILE).read_bytes()
    for version, text in ((4, device_toml(gate.data_dir, telemetry=4.0)),
                          (5, device_toml(gate.data_dir, telemetry=5.5))):
        with pytest.raises(CommandError, match=rf"version: {version} is not newer than the "
                                               "applied config v5"):
            gate.push(version, text)  # a fresh handler each time
        assert gate.config_path.read_bytes() == applied
        assert (gate.data_dir / STATE_FILE).read_bytes() == state
    assert gate.restarts == 1
    gate.push(6, device_toml(gate.data_dir, telemetry=6.0))
    assert reported_config(gate.data_dir)["version"] == 6 and gate.restarts == 2
    assert previous_path(gate.config_path).read_bytes() == applied


def test_unreadable_state_refuses_rather_than_guessing_the_version(gate: Gate) -> None:
    (gate.data_dir / STATE_FILE).write_text("{not json")
    with pytest.raises(CommandError, match="reported state is unreadable"):
        gate.push(9, device_toml(gate.data_dir, telemetry=9.0))
    assert gate.config_path.read_bytes() == gate.original and gate.restarts == 0
    report = reported_config(gate.data_dir, gate.config_path)  # the birth message never fails
    assert report["version"] == 0 and "cannot be read" in report["error"]


def test_hand_edited_config_shows_as_local_edit(gate: Gate) -> None:
    gate.push(2, device_toml(gate.data_dir, telemetry=2.0))
    gate.config_path.write_text(device_toml(gate.data_dir, telemetry=3.0))
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
        gate.push(2, device_toml(gate.data_dir, telemetry=2.0))
    assert gate.config_path.read_bytes() == gate.original and gate.restarts == 0


def test_unwritable_config_folder_is_refused(gate: Gate, monkeypatch) -> None:
    def read_only(path: Path, data: bytes, mode: int = 0o644) -> None:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(config_push, "write_atomic", read_only)
    with pytest.raises(CommandError, match=r"cannot write .*Read-only file system"):
        gate.push(2, device_toml(gate.data_dir, telemetry=2.0))
    assert gate.config_path.read_bytes() == gate.original and gate.restarts == 0


def test_failed_restart_is_reported_with_the_config_written(gate: Gate) -> None:
    def broken() -> None:
        raise RuntimeError("workers did not stop")

    new = device_toml(gate.data_dir, telemetry=2.0)
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
                       "config": device_toml(gate.data_dir, telemetry=2.0)}).encode()
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
        new = device_toml(gate.data_dir, telemetry=2.0)
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


# --- issue 14, High-4: a push cannot switch security off ---------------------------------------

class SecureGate:
    """A production-like gate: mutual TLS to the broker, [keys], liveness on; its real uplink
    and command handler (``device.uplink.publisher.Uplink``, ``CommandHandler``,
    ``config_push_handler``)
    connected to a real Mosquitto (plain, on loopback: the broker is not what is tested)."""

    def __init__(self, root: Path, port: int) -> None:
        from device.config import GateIdentity
        from device.uplink.alarms import record_alarm
        from device.uplink.outbox import Outbox
        from device.uplink.publisher import Uplink
        from gerbang.config import BrokerConfig
        from provisioning import pki
        from provisioning.signing import create_roster_keys, export_device_keys

        self.root = root
        self.data_dir = root / "data"
        self.data_dir.mkdir(parents=True)
        ca = pki.create_centre_ca(CENTRE, root / "ca")
        pki.issue_client_cert(ca, DEVICE, root / "tls")
        self.centre_keys = create_roster_keys(root / "centre-keys", CENTRE)
        export_device_keys(self.centre_keys, "R01", root / "keys")
        self.config_path = root / "etc" / "device.toml"
        self.config_path.parent.mkdir()
        self.original = self.toml().encode()
        self.config_path.write_bytes(self.original)
        self.restarts = 0
        self.outbox = Outbox(self.data_dir / "outbox.sqlite")
        apply = config_push_handler(self.config_path, self.data_dir, self.restart)

        identity = GateIdentity(DEVICE, CENTRE, "R01", "S1", self.data_dir)

        def command(name: str, payload: bytes):
            # Alarms go through the outbox, as on a real gate (device.processes.uplink).
            return CommandHandler("S1", self.data_dir, lambda: None,
                                  lambda kind, detail: record_alarm(self.outbox, identity, kind,
                                                                    detail),
                                  apply_config=apply).handle(name, payload)

        self.uplink = Uplink(self.outbox, BrokerConfig(port=port), CENTRE, DEVICE,
                             on_command=command)
        self.uplink.start()

    def restart(self) -> None:
        self.restarts += 1

    def toml(self, *, broker: str | None = None, liveness: str = "enabled = true\n",
             match: str = "", keys: bool = True) -> str:
        """The gate's device.toml; each argument replaces one table."""
        root = self.root
        broker = broker if broker is not None else (
            f'host = "broker.c1.lan"\nport = 8883\nca_file = "{root}/ca/ca.pem"\n'
            f'cert_file = "{root}/tls/{DEVICE}.pem"\nkey_file = "{root}/tls/{DEVICE}.key"\n')
        text = (f'[gate]\ndevice_id = "{DEVICE}"\ncentre = "{CENTRE}"\nroom = "R01"\n'
                f'session = "S1"\ndata_dir = "{self.data_dir}"\n\n[broker]\n{broker}\n'
                f'[capture]\nsource = "replay"\npath = "{self.data_dir}/frames"\n\n'
                f'[liveness]\n{liveness}\n[match]\n{match}\n')
        if keys:
            text += (f'[keys]\nroster_public_key = "{root}/keys/roster-signing.pub"\n'
                     f'roster_transport_key = "{root}/keys/roster-transport.key"\n'
                     f'storage_key = "{root}/keys/storage.key"\n')
        return text

    def close(self) -> None:
        self.uplink.stop()
        self.outbox.close()


class Technician:
    """Whoever holds an identity that may publish commands (the issue's attacker had the
    gateway's): publishes ``cmd/config`` and reads ``cmd_ack``."""

    def __init__(self, port: int) -> None:
        self.acks: list[dict] = []
        subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = lambda c, u, msg: self.acks.append(json.loads(msg.payload))
        self.client.on_subscribe = lambda *_a, **_k: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(wire.device_topic(CENTRE, DEVICE, "cmd_ack"), qos=1)
        assert subscribed.wait(10)

    def send(self, name: str, body: dict, timeout: float = 10) -> dict:
        import time

        before = len(self.acks)
        self.client.publish(wire.device_topic(CENTRE, DEVICE, f"cmd/{name}"), json.dumps(body),
                            qos=1).wait_for_publish(5)
        deadline = time.monotonic() + timeout
        while len(self.acks) == before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.acks) > before, f"no ack of {name}"
        return self.acks[-1]

    def reach(self) -> None:
        """Ping until the gate answers (its subscription is in place)."""
        for _ in range(40):
            try:
                self.send("ping", {}, timeout=0.5)
                return
            except AssertionError:
                continue
        raise AssertionError("the gate never answered a ping")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def secure(tmp_path, mosquitto):
    gate = SecureGate(tmp_path, mosquitto.port)
    tech = Technician(mosquitto.port)
    tech.reach()
    yield gate, tech
    tech.close()
    gate.close()


HOSTILE = {
    # The issue's four pushes, unsigned, with the identity allowed to publish commands.
    "threshold -9.9 (admit anyone)": (dict(match="threshold = -9.9\n"), "match.threshold"),
    "liveness off": (dict(liveness="enabled = false\n"), "liveness.enabled"),
    "TLS off, another broker": (dict(broker='host = "10.6.6.6"\nport = 1883\n'),
                                "broker.ca_file"),
    "[keys] removed": (dict(keys=False), "keys.roster_public_key"),
    # ... and a threshold inside every static bound: still a key only a signed push changes.
    "threshold 0.2 (in range)": (dict(match="threshold = 0.2\n"), "match.threshold"),
}


@pytest.mark.parametrize("change, field", list(HOSTILE.values()), ids=list(HOSTILE))
def test_hostile_unsigned_push_is_refused_naming_the_field(secure, change, field):
    gate, tech = secure
    ack = tech.send("config", {"version": 2, "config": gate.toml(**change)})
    assert ack["ok"] is False, f"the gate accepted it: {ack['detail']}"
    assert ack["detail"].startswith(f"config: {field}:") or f"{field}:" in ack["detail"], ack
    assert gate.config_path.read_bytes() == gate.original  # the file on disk unchanged
    assert not (gate.data_dir / STATE_FILE).exists() and gate.restarts == 0
    assert reported_config(gate.data_dir, gate.config_path)["version"] == 0


def test_hostile_pushes_raise_an_alarm_and_lose_nothing_at_the_gateway(tmp_path, mosquitto):
    """The issue's bar: the hostile pushes, with a real gateway ingest on the same broker while
    the gate keeps sending check-ins: every check-in stored (ingest count = published), every
    hostile push refused *and* alerted (``config_refused``, a safety alert, listed first)."""
    import time

    from gateway.alerts import current_alerts
    from gateway.ingest import Ingest
    from gateway.store import open_store
    from gerbang.config import BrokerConfig

    store = open_store(tmp_path / "gw.sqlite")
    ingest = Ingest(store, BrokerConfig(port=mosquitto.port))
    ingest.start()
    assert ingest.connected.wait(10)
    gate = SecureGate(tmp_path / "gate", mosquitto.port)
    tech = Technician(mosquitto.port)
    published = 0

    def checkin(seq: int) -> tuple[str, bytes]:
        event = wire.CheckinEvent(
            event_id=wire.new_event_id(), device_id=DEVICE, centre=CENTRE, room="R01",
            session="S1", seq=seq, ts=wire.utc_now_iso(), outcome="accepted",
            applicant_id=f"A{seq:04d}", score=0.7, latency_ms=40.0, stream=gate.outbox.stream)
        return wire.events_topic(CENTRE, DEVICE), event.to_json()

    try:
        tech.reach()
        for change, field in HOSTILE.values():
            for _ in range(20):
                gate.outbox.append(checkin)
                published += 1
            gate.uplink.notify()
            ack = tech.send("config", {"version": 2, "config": gate.toml(**change)})
            assert ack["ok"] is False and f"{field}:" in ack["detail"], ack
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (
                len(store.events()) < published
                or len(store.alarms(kinds=["config_refused"])) < len(HOSTILE)):
            time.sleep(0.1)
    finally:
        tech.close()
        gate.close()
        ingest.stop()
    assert len(store.events()) == published == 100  # nothing lost around the refusals
    alarms = store.alarms(kinds=["config_refused"])
    assert len(alarms) == len(HOSTILE)
    # one alarm per push, each naming the field its push tried to change
    assert all(any(f"{field}:" in a["detail"] for a in alarms) for _, field in HOSTILE.values())
    assert gate.config_path.read_bytes() == gate.original and gate.restarts == 0
    alerts = [a for a in current_alerts(store) if a["acknowledged"] is None]
    refused = [a for a in alerts if a["kind"] == "config_refused"]
    assert len(refused) == len(HOSTILE) and all(a["severity"] == "high" for a in refused)
    # Safety first: nothing but safety alerts before the last config_refused.
    from gateway.alerts import SAFETY

    last = max(alerts.index(a) for a in refused)
    assert all(a["kind"] in SAFETY for a in alerts[:last + 1])


def test_signed_push_changes_protected_keys_but_never_local_ones(secure):
    import base64

    from provisioning.signing import sign_config

    gate, tech = secure

    def signed(text: str, version: int, device: str = DEVICE) -> dict:
        blob = sign_config(text, gate.centre_keys, device, version)
        return {"signed_config_b64": base64.b64encode(blob).decode()}

    unsigned_hint = tech.send("config", {"version": 2, "config": gate.toml(
        match="threshold = 0.45\n")})
    assert "gerbang-provision config-push --keys DIR" in unsigned_hint["detail"]

    new = gate.toml(match="threshold = 0.45\n", liveness="enabled = true\ntimeout_s = 6.0\n")
    ack = tech.send("config", signed(new, 2))
    assert ack["ok"], ack
    assert "config v2 applied (signed" in ack["detail"]
    assert gate.config_path.read_text() == new and gate.restarts == 1
    report = reported_config(gate.data_dir, gate.config_path)
    assert (report["version"], report["signed"], report["local_edit"]) == (2, True, False)
    assert wire.parse_status(wire.status_payload(True, config=report))["config"]["signed"]

    # A harmless unsigned change on top keeps the signed values (it may not touch them).
    harmless = new.replace("[gate]", "telemetry_interval_s = 10.0\n[gate]")
    ack = tech.send("config", {"version": 3, "config": harmless})
    assert ack["ok"], ack
    assert reported_config(gate.data_dir)["signed"] is False
    applied = gate.config_path.read_bytes()
    # Signed or not, local-only keys stay: [keys], the TLS files, the identity.
    for text, field in ((gate.toml(keys=False), "keys.roster_public_key"),
                        (gate.toml(broker='host = "10.6.6.6"\nport = 1883\n'),
                         "broker.ca_file")):
        ack = tech.send("config", signed(text, 4))
        assert not ack["ok"] and f"config: {field}:" in ack["detail"], ack
        assert "local only" in ack["detail"]
    # Altered in one byte, signed for another gate, replayed (older version): refused.
    blob = bytearray(base64.b64decode(signed(new, 5)["signed_config_b64"]))
    blob[len(blob) // 2] ^= 1
    ack = tech.send("config", {"signed_config_b64": base64.b64encode(bytes(blob)).decode()})
    assert not ack["ok"] and "tampered" in ack["detail"]
    ack = tech.send("config", signed(new, 5, device="c1-r02-a"))
    assert not ack["ok"] and "wrong_device" in ack["detail"]
    ack = tech.send("config", signed(new, 2))
    assert not ack["ok"] and ack["detail"].startswith("version: 2 is not newer")
    assert gate.config_path.read_bytes() == applied and gate.restarts == 2


def test_a_gate_without_keys_takes_only_unsigned_harmless_changes(gate: Gate) -> None:
    import base64

    from provisioning.signing import create_roster_keys, sign_config

    keys = create_roster_keys(gate.config_path.parent / "k", CENTRE)
    blob = sign_config(device_toml(gate.data_dir, session="S2"), keys, DEVICE, 2)
    with pytest.raises(CommandError, match=r"no \[keys\] roster_public_key"):
        gate.handler()({"signed_config_b64": base64.b64encode(blob).decode()})
    with pytest.raises(CommandError, match=r"config: gate\.session: decides who enters"):
        gate.push(2, device_toml(gate.data_dir, session="S2"))
    assert gate.config_path.read_bytes() == gate.original
    assert "v2 applied" in gate.push(2, device_toml(gate.data_dir, telemetry=12.0))


def test_config_push_cli_says_what_needs_signing_and_signs_with_keys(secure, mosquitto,
                                                                     capsys):
    from provisioning.cli import main as provision

    gate, _ = secure
    new_file = gate.root / "new.toml"
    new = gate.toml(match="threshold = 0.45\n")
    new_file.write_text(new)
    args = ["config-push", "--config-file", str(new_file), "--device", DEVICE,
            "--broker-port", str(mosquitto.port), "--timeout", "10"]
    assert provision([*args, "--version", "2"]) == 1
    out = capsys.readouterr().out
    assert ", unsigned" in out and "note: unsigned" in out and "match.threshold" in out
    assert "REFUSED" in out and "config: match.threshold:" in out
    assert gate.config_path.read_bytes() == gate.original
    assert provision([*args, "--version", "2", "--keys",
                      str(gate.centre_keys.directory)]) == 0
    out = capsys.readouterr().out
    assert f"signed by key {gate.centre_keys.key_id}" in out and "applied" in out, out
    assert gate.config_path.read_text() == new
