"""A gate provisioned with roster keys runs on signed rosters only: it installs the signed roster
from its bundle, admits the enrolled face, takes a newer roster pushed over MQTT, refuses a
tampered one with a reason, and leaves no template bytes or names in plaintext on its disk or in
its logs."""

from __future__ import annotations

import base64
import json
import logging
import shutil
import threading

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from waiting import wait_until

from device.capture.replay import read_image
from device.config import parse_device_config
from device.decide.roster import Roster, RosterEntry
from device.infer.bundle import load_bundle
from device.processes.assembly import run_device
from gerbang import wire
from provisioning.signing import create_roster_keys, export_device_keys, sign_roster

CENTRE, DEVICE = "c1", "c1-r01-a"
NAME = "Siti Rahayu Testname"


@pytest.mark.faces
def test_signed_roster_gate_end_to_end(tmp_path, mosquitto, faces_root, pipeline, caplog,
                                      capsys):
    person = sorted((faces_root / "orl").iterdir())[0]
    photos = sorted(person.iterdir())
    template = pipeline.read(read_image(photos[0])).embedding
    embedder = load_bundle().hashes()["embedder"]
    keys = create_roster_keys(tmp_path / "centre-keys", CENTRE)
    bundle_dir = tmp_path / "bundle"
    export_device_keys(keys, "R01", bundle_dir)
    data = tmp_path / "gate"
    (data / "incoming").mkdir(parents=True)
    roster_v1 = Roster("S1", "R01", 1, (RosterEntry("A1", NAME, template),),
                       embedder_sha256=embedder)
    (data / "incoming" / "R01.roster.signed").write_bytes(sign_roster(roster_v1, keys))
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(3):
        shutil.copy(photos[5], frames / f"{i:02d}.pgm")
    config = parse_device_config({
        "gate": {"device_id": DEVICE, "centre": CENTRE, "room": "R01", "session": "S1",
                 "data_dir": str(data)},
        "broker": {"port": mosquitto.port},
        "capture": {"path": str(frames), "fps": 2.0, "loop": True},
        "models": {"threads": 1}, "gpio": {"pin_factory": "mock"},
        "keys": {"roster_public_key": str(bundle_dir / "roster-signing.pub"),
                 "roster_transport_key": str(bundle_dir / "roster-transport.key"),
                 "storage_key": str(bundle_dir / "storage.key")}})
    acks, events = [], []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)

    def on_message(c, u, msg):
        body = json.loads(msg.payload)
        (acks if msg.topic.endswith("cmd_ack") else events).append(body)

    client.on_message = on_message
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    client.subscribe([(wire.device_topic(CENTRE, DEVICE, "cmd_ack"), 1),
                      (wire.events_topic(CENTRE, DEVICE), 1)])
    stop = threading.Event()
    caplog.set_level(logging.DEBUG)
    thread = threading.Thread(target=run_device, args=(config, stop), daemon=True)
    thread.start()
    try:
        wait_until(lambda: any(e["outcome"] == "accepted" for e in events), 60,
                   "the enrolled face admitted from the signed roster")
        assert not (data / "incoming" / "R01.roster.signed").exists()

        def push(blob):
            before = len(acks)
            body = json.dumps({"roster_b64": base64.b64encode(blob).decode()})
            client.publish(wire.device_topic(CENTRE, DEVICE, "cmd/roster"), body,
                           qos=1).wait_for_publish(5)
            wait_until(lambda: len(acks) > before, 20, "the roster ack")
            return acks[-1]

        roster_v2 = Roster("S1", "R01", 2, (RosterEntry("A2", NAME, template),),
                           embedder_sha256=embedder)
        good = sign_roster(roster_v2, keys)
        tampered = bytearray(good)
        tampered[len(tampered) // 2] ^= 1
        refused = push(bytes(tampered))
        assert not refused["ok"] and "tampered" in refused["detail"]
        # The technician's command: push to the room's gates and confirm each acknowledgement.
        from provisioning.cli import main as provision

        signed = tmp_path / "R01-v2.roster.signed"
        signed.write_bytes(good)
        capsys.readouterr()
        assert provision(["roster-push", str(signed), "--centre", CENTRE, "--device", DEVICE,
                          "--device", "c1-r01-b", "--broker-port", str(mosquitto.port),
                          "--timeout", "5"]) == 1  # the second gate is not there
        out = capsys.readouterr().out
        assert f"{DEVICE}" in out and "roster v2 installed" in out
        assert "c1-r01-b" in out and "NOT CONFIRMED" in out
        assert "old_version" in push(sign_roster(roster_v1, keys))["detail"]
        wait_until(lambda: any(e.get("applicant_id") == "A2" for e in events), 30,
                   "a check-in matched against the pushed roster")
    finally:
        stop.set()
        thread.join(timeout=30)
        client.loop_stop()
        client.disconnect()
    # Nothing readable at rest: no name, and not the raw bytes of the template, anywhere.
    needles = [NAME.encode(), template.astype("float32").tobytes()[:64]]
    for path in data.rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            assert not any(n in blob for n in needles), path
    assert NAME not in caplog.text
