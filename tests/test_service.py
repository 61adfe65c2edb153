"""The real device and gateway processes against a real Mosquitto, end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta

import cv2
import numpy as np
import pytest

from device.decide.roster import Roster, RosterEntry, save_roster
from gerbang.broker import free_port

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def get_json(url, token=None):
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"}
                                     if token else {})
    with urllib.request.urlopen(request, timeout=5) as r:
        return json.load(r)


class GatewayApi:
    """The running gateway's API, logged in as a viewer."""

    def __init__(self, base: str, token: str) -> None:
        self.base, self.token = base, token

    def get(self, path: str):
        return get_json(self.base + path, self.token)


def wait_http(url, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return get_json(url)
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{url} never answered")


@pytest.fixture
def gateway_proc(tmp_path, mosquitto):
    from gateway.auth import add_user
    from gateway.store import open_store

    store = open_store(tmp_path / "gw.sqlite")
    add_user(store, "viewer1", "viewer-password", "viewer")
    # The gate's session is open and the gate assigned to its room: its events count.
    now = datetime.now(UTC)
    store.upsert_session({"session_id": "S1", "centre": "c1", "name": "S1",
                          "doors_open": (now - timedelta(hours=1)).isoformat(),
                          "starts_at": (now + timedelta(hours=1)).isoformat(),
                          "doors_close": (now + timedelta(hours=2)).isoformat()})
    store.put_assignment("c1-r01-a", "c1", "R01", "S1", "test")
    port = free_port()
    log = open(tmp_path / "gateway.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "run", "--db", str(tmp_path / "gw.sqlite"),
         "--http-port", str(port), "--broker-port", str(mosquitto.port)],
        stdout=log, stderr=log, env=ENV)
    base = f"http://127.0.0.1:{port}"
    wait_http(f"{base}/healthz")
    login = urllib.request.Request(
        f"{base}/api/login", data=json.dumps({"username": "viewer1",
                                              "password": "viewer-password"}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(login, timeout=5) as r:
        token = json.load(r)["token"]
    yield GatewayApi(base, token)
    proc.terminate()
    proc.wait(timeout=15)
    log.close()


def write_device_config(tmp_path, broker_port, frames, roster_entries=()):
    data = tmp_path / "gate"
    save_roster(Roster("S1", "R01", 1, tuple(roster_entries)), data / "roster.json")
    config = tmp_path / "device.toml"
    config.write_text(f"""
[gate]
device_id = "c1-r01-a"
centre = "c1"
room = "R01"
session = "S1"
data_dir = "{data}"
[broker]
port = {broker_port}
[capture]
path = "{frames}"
[models]
threads = 1
[gpio]
pin_factory = "mock"
""")
    return config


def test_frames_without_faces_and_broken_files_are_reported_not_fatal(tmp_path, mosquitto,
                                                                      gateway_proc):
    frames = tmp_path / "frames"
    frames.mkdir()
    cv2.imwrite(str(frames / "01-black.png"), np.zeros((480, 640, 3), np.uint8))
    (frames / "02-broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    noise = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    cv2.imwrite(str(frames / "03-noise.png"), noise)
    entry = RosterEntry("A1", "", np.eye(128, dtype=np.float32)[0])
    config = write_device_config(tmp_path, mosquitto.port, frames, [entry])
    proc = subprocess.run([sys.executable, "-m", "device.cli", "run", "--config", str(config),
                           "--json"], capture_output=True, text=True, timeout=120, env=ENV)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result.pop("peak_rss_mb") > 50
    # Nothing crashed: no worker of the service needed a restart for a bad frame.
    assert result["restarts"] == {"gate": 0, "uplink": 0, "checkin": 0, "capture": 0}
    counters = {k: result[k] for k in ("accepted", "refused", "no_face", "published",
                                       "outbox_depth")}
    assert counters == {"accepted": 0, "refused": 0, "no_face": 2, "published": 2,
                        "outbox_depth": 0}
    assert "cannot decode" in proc.stderr and "02-broken.jpg" in proc.stderr
    deadline = time.monotonic() + 10
    while gateway_proc.get("/api/stats")["events"] < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    events = gateway_proc.get("/api/events")
    assert sorted(e["outcome"] for e in events) == ["no_face", "no_face"]
    assert [d["state"] for d in gateway_proc.get("/api/devices")] == ["offline"]


@pytest.mark.faces
def test_enrolled_face_opens_stranger_does_not(tmp_path, mosquitto, gateway_proc, faces_root,
                                               pipeline):
    from device.capture.replay import read_image
    from provisioning.enroll import template_from_photos

    people = sorted(p for p in (faces_root / "orl").iterdir() if p.is_dir())[:3]
    entries = []
    for person in people[:2]:
        template, _ = template_from_photos(pipeline, sorted(person.iterdir())[:1])
        entries.append(RosterEntry(person.name, "", template))
    frames = tmp_path / "frames"
    frames.mkdir()
    shown = [sorted(people[0].iterdir())[5], sorted(people[1].iterdir())[6],
             sorted(people[2].iterdir())[0]]
    for n, src in enumerate(shown):
        cv2.imwrite(str(frames / f"{n}.png"), read_image(src))
    config = write_device_config(tmp_path, mosquitto.port, frames, entries)
    from gateway.store import open_store

    open_store(tmp_path / "gw.sqlite").replace_roster("S1", [
        {"applicant_id": p.name, "name": p.name, "room": "R01"} for p in people[:2]])
    proc = subprocess.run([sys.executable, "-m", "device.cli", "run", "--config", str(config),
                           "--json"], capture_output=True, text=True, timeout=120, env=ENV)
    assert proc.returncode == 0, proc.stderr
    deadline = time.monotonic() + 10
    while gateway_proc.get("/api/stats")["events"] < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    by_frame = {e["seq"]: e for e in gateway_proc.get("/api/events")}
    assert by_frame[0]["outcome"] == "accepted" and by_frame[0]["applicant_id"] == people[0].name
    assert by_frame[1]["outcome"] == "accepted" and by_frame[1]["applicant_id"] == people[1].name
    assert by_frame[2]["outcome"] == "refused" and by_frame[2]["reason"] == "no_match"
    # (a roster imported moments before: the running ingest applies it within ~2 s)
    deadline = time.monotonic() + 10
    while gateway_proc.get("/api/rooms")[0]["present"] < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    rooms = gateway_proc.get("/api/rooms")
    assert rooms == [{"session": "S1", "room": "R01", "present": 2, "accepted_events": 2,
                      "refused": 1, "no_face": 0, "not_admitted": 0,
                      "last_checkin": by_frame[1]["ts"], "gates": 1}]


def test_an_outbox_at_its_bound_alarms_once_and_drops_only_frames_without_a_face(tmp_path):
    """No broker for a long time: at 80 % of ``outbox_max_events`` one ``outbox_near_full``
    alarm is queued for the gateway; at the bound, frames without a face are no longer kept."""
    from device.uplink.outbox import Outbox

    frames = tmp_path / "frames"
    frames.mkdir()
    blank = np.zeros((48, 64, 3), np.uint8)
    for i in range(130):
        cv2.imwrite(str(frames / f"{i:03d}.png"), blank)
    config = write_device_config(tmp_path, free_port(), frames)  # nobody listens there
    config.write_text("outbox_max_events = 100\ndrain_timeout_s = 1.0\n" + config.read_text())
    proc = subprocess.run([sys.executable, "-m", "device.cli", "run", "--config", str(config),
                           "--json"], capture_output=True, text=True, timeout=180, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["no_face"] == 99  # the 100th row is the alarm
    rows = Outbox(tmp_path / "gate" / "outbox.sqlite").pending(limit=1000)
    alarms = [json.loads(r.payload) for r in rows if r.topic.endswith("/alarms")]
    assert len(rows) == 100 and len(alarms) == 1
    assert alarms[0]["alarm"] == "outbox_near_full" and "80 of 100" in alarms[0]["detail"]
    assert "frame without a face not kept" in proc.stderr
