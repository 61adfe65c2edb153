"""Commands and telemetry between a running gate service and the gateway, through a real
Mosquitto: every command is acknowledged, bad ones with a reason naming the field, and the
service stays up."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from waiting import wait_until

from device.config import parse_device_config
from device.decide.roster import Roster, RosterEntry, save_roster
from device.manage.template_store import save_templates, stored_sessions
from device.processes.assembly import run_device
from device.uplink.commands import CommandHandler
from gateway.ingest import Ingest
from gateway.store import open_store
from gerbang import wire
from gerbang.config import BrokerConfig

CENTRE, DEVICE = "c1", "c1-r01-a"


@pytest.fixture
def running_gate(tmp_path, mosquitto):
    frames = tmp_path / "frames"
    frames.mkdir()
    cv2.imwrite(str(frames / "black.png"), np.zeros((240, 320, 3), np.uint8))
    data = tmp_path / "gate"
    save_roster(Roster("S1", "R01", 1, (RosterEntry("A1", "", np.eye(128,
                                                                       dtype=np.float32)[0]),)),
                data / "roster.json")
    config = parse_device_config({
        "gate": {"device_id": DEVICE, "centre": CENTRE, "room": "R01", "session": "S1",
                 "data_dir": str(data)},
        "broker": {"port": mosquitto.port},
        "capture": {"path": str(frames), "fps": 4.0, "loop": True},
        "models": {"threads": 1}, "gpio": {"pin_factory": "mock"},
        "telemetry_interval_s": 0.5})
    store = open_store(tmp_path / "gw.sqlite")
    ingest = Ingest(store, BrokerConfig(port=mosquitto.port))
    ingest.start()
    assert ingest.connected.wait(10)
    stop = threading.Event()
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(run_device(config, stop)),
                              daemon=True)
    thread.start()
    acks: list[dict] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_message = lambda c, u, msg: acks.append(json.loads(msg.payload))
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    client.subscribe(wire.device_topic(CENTRE, DEVICE, "cmd_ack"), qos=1)
    wait_until(lambda: any(d["state"] == "online" for d in store.devices()), 30,
               "the gate's birth message")

    def send(name, payload):
        before = len(acks)
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        client.publish(wire.device_topic(CENTRE, DEVICE, f"cmd/{name}"), body,
                       qos=1).wait_for_publish(5)
        wait_until(lambda: len(acks) > before, 10, f"the ack of {name}")
        return acks[-1]

    yield send, store, data, thread
    client.loop_stop()
    client.disconnect()
    stop.set()
    thread.join(timeout=30)
    ingest.stop()
    assert not thread.is_alive()


def test_commands_are_acknowledged_and_bad_ones_name_the_field(running_gate):
    send, store, _data, thread = running_gate
    ping = send("ping", {"command_id": "c-1"})
    assert (ping["ok"], ping["detail"], ping["command_id"]) == (True, "pong", "c-1")
    missing = send("unlock", {"by": "proctor1"})
    assert not missing["ok"] and missing["detail"].startswith("reason:")
    assert "unknown" in send("teleport", {})["detail"]
    assert send("ping", b"{not json")["detail"].startswith("payload: not JSON")
    assert "schema" in send("ping", {"schema": 9})["detail"]
    unlocked = send("unlock", {"reason": "wheelchair user", "by": "proctor1"})
    assert unlocked["ok"], unlocked
    wait_until(lambda: store.alarms(), 10, "the remote unlock recorded at the gateway")
    (alarm,) = store.alarms()
    assert alarm["alarm"] == "manual_override" and "proctor1" in alarm["detail"]
    assert thread.is_alive()  # nothing above took the gate down


def test_session_close_wipes_the_sessions_templates(running_gate):
    send, _, data, _ = running_gate
    key = bytes(range(32))
    save_templates(data, Roster("S1", "R01", 1, (RosterEntry(
        "A1", "Siti", np.eye(128, dtype=np.float32)[0]),)), key)
    save_templates(data, Roster("S2", "R01", 1, ()), key)
    assert stored_sessions(data) == ["S1", "S2"]
    closed = send("session_close", {"session": "S1"})
    assert closed["ok"] and "1 template file" in closed["detail"]
    assert stored_sessions(data) == ["S2"]
    assert not send("session_close", {"session": "../etc"})["ok"]
    assert send("wipe", {})["ok"] and stored_sessions(data) == []


def test_telemetry_reaches_the_gateway(running_gate):
    _, store, _, _ = running_gate
    wait_until(lambda: store.devices() and store.devices()[0]["telemetry"].get("fps"), 15,
               "telemetry with a frame rate")
    telemetry = store.devices()[0]["telemetry"]
    assert telemetry["outbox_depth"] >= 0 and telemetry["disk_free_mb"] > 0
    assert {"latency_p50_ms", "uptime_s", "decisions", "cpu_temp_c"} <= set(telemetry)
    wait_until(lambda: "detect" in store.devices()[0]["telemetry"].get("stage_p50_ms", {}), 15,
               "per-stage inference times in the telemetry")


def test_command_handler_never_raises():
    def broken_grant():
        raise RuntimeError("relay driver gone")

    handler = CommandHandler("S1", Path("/nonexistent"), broken_grant,
                             lambda kind, detail: None)
    result = handler.handle("unlock", json.dumps({"reason": "test", "by": "p1"}).encode())
    assert not result.ok and "RuntimeError" in result.detail
    assert not handler.handle("x" * 5000, b"{}").ok
    assert not handler.handle("ping", b"x" * 100_000).ok


def test_the_gates_birth_and_telemetry_pass_the_gateways_validators(running_gate, mosquitto):
    """What ``run --single-process`` really publishes is what ``wire.parse_status`` and
    ``wire.parse_telemetry`` accept, outbox position included (fresh in every telemetry)."""
    send, _store, _data, _ = running_gate
    seen: dict[str, list[bytes]] = {"status": [], "telemetry": []}
    watcher = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    watcher.on_message = lambda c, u, msg: seen[msg.topic.rsplit("/", 1)[1]].append(msg.payload)
    watcher.connect("127.0.0.1", mosquitto.port)
    watcher.loop_start()
    try:
        watcher.subscribe([(wire.status_topic(CENTRE, DEVICE), 1),
                           (wire.telemetry_topic(CENTRE, DEVICE), 0)])
        wait_until(lambda: seen["status"] and len(seen["telemetry"]) >= 2, 15,
                   "the retained birth and two telemetry messages")
        birth = wire.parse_status(seen["status"][-1])
        assert birth["state"] == "online" and birth["outbox"]["first_seq"] == 0
        assert set(birth) >= {"device_id", "room", "session", "models", "roster_version"}
        assert birth["calibration"]["source"].startswith(("model bundle", "match.threshold"))
        assert send("unlock", {"reason": "test", "by": "p1"})["ok"]  # one alarm: seq moves
        before = len(seen["telemetry"])
        wait_until(lambda: len(seen["telemetry"]) > before + 1, 10, "fresh telemetry")
        last = wire.parse_telemetry(seen["telemetry"][-1])
        assert last["outbox"]["stream"] == birth["outbox"]["stream"]
        assert last["outbox"]["next_seq"] >= 1 and {"fps", "decisions"} <= set(last)
    finally:
        watcher.loop_stop()
        watcher.disconnect()
