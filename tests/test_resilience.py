"""Issue 5's resilience bars against a real Mosquitto and the real gateway ingest:

- the broker unreachable while 1,000 check-ins happen: all arrive, in ``seq`` order, none twice
  (``GERBANG_OFFLINE_S`` sets the outage; the bar's 10 minutes is ``GERBANG_OFFLINE_S=600``);
- the device service killed with -9 in the middle of a stream of check-ins and started again
  (what systemd's ``Restart=always`` does): no decision lost or duplicated at the gateway.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from waiting import wait_until

from device.decide.roster import Roster, RosterEntry, save_roster
from device.uplink.outbox import Outbox
from device.uplink.publisher import Uplink
from gateway.ingest import Ingest
from gerbang import wire
from gerbang.config import BrokerConfig

CENTRE, DEVICE = "c1", "c1-r01-a"
OFFLINE_S = float(os.environ.get("GERBANG_OFFLINE_S", "8"))


@pytest.fixture
def gateway(store, mosquitto):
    ingest = Ingest(store, BrokerConfig(port=mosquitto.port))
    ingest.start()
    assert ingest.connected.wait(10)
    yield store, ingest
    ingest.stop()


@pytest.mark.slow
def test_a_thousand_checkins_while_the_broker_is_away_arrive_in_order_once(
        tmp_path, mosquitto, gateway):
    store, _ = gateway
    outbox = Outbox(tmp_path / "outbox.sqlite")
    uplink = Uplink(outbox, BrokerConfig(port=mosquitto.port), CENTRE, DEVICE)
    uplink.start()
    wait_until(lambda: uplink.connected, 10, "the gate to connect")
    mosquitto.stop()  # the centre's network or broker goes away
    total = 1000
    started = time.monotonic()
    for n in range(total):
        def build(seq, n=n):
            event = wire.CheckinEvent(
                event_id=wire.new_event_id(), device_id=DEVICE, centre=CENTRE, room="R01",
                session="S1", seq=seq, ts=wire.utc_now_iso(), outcome="accepted",
                applicant_id=f"A{n:04d}", score=0.7, latency_ms=40.0)
            return wire.events_topic(CENTRE, DEVICE), event.to_json()

        outbox.append(build)
        uplink.notify()
        # spread the check-ins over the outage, like a queue at the door
        time.sleep(max(0.0, started + OFFLINE_S * (n + 1) / total - time.monotonic()))
    assert outbox.depth() == total and uplink.published == 0
    mosquitto.start()
    assert uplink.drain(timeout=120), f"{outbox.depth()} events still in the outbox"
    wait_until(lambda: store.counts()["events"] >= total, 60, "every event at the gateway")
    time.sleep(0.5)
    rows = store._execute("SELECT seq, received_at FROM events ORDER BY received_at, seq")
    assert len(rows) == total
    assert [r["seq"] for r in rows] == list(range(total))  # arrival order is seq order
    uplink.stop()


def _device_config(tmp_path, port, frames, roster_entries):
    data = tmp_path / "gate"
    save_roster(Roster("S1", "R01", 1, tuple(roster_entries)), data / "roster.json")
    config = tmp_path / "device.toml"
    config.write_text(f"""
[gate]
device_id = "{DEVICE}"
centre = "{CENTRE}"
room = "R01"
session = "S1"
data_dir = "{data}"
[broker]
port = {port}
[capture]
path = "{frames}"
fps = 8.0
loop = true
[models]
threads = 1
[gpio]
pin_factory = "mock"
""")
    return config, data


@pytest.mark.slow
@pytest.mark.faces
def test_device_killed_mid_stream_loses_and_duplicates_nothing(tmp_path, mosquitto, gateway,
                                                              faces_root, pipeline):
    from device.capture.replay import read_image

    store, _ = gateway
    people = sorted(p for p in (faces_root / "orl").iterdir() if p.is_dir())[:2]
    entries, frames = [], tmp_path / "frames"
    frames.mkdir()
    for i, person in enumerate(people):
        photos = sorted(person.iterdir())
        entries.append(RosterEntry(person.name, "", pipeline.read(read_image(photos[0])).embedding))
        shutil.copy(photos[5], frames / f"{i:02d}-{person.name}.pgm")
    config, data = _device_config(tmp_path, mosquitto.port, frames, entries)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "device.cli", "run", "--config", str(config), "--json"]
    log = open(tmp_path / "device.log", "ab")
    kills = 0
    try:
        for _ in range(3):  # run, kill -9 mid-stream, restart (what systemd does)
            proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env)
            before = store.counts()["events"]
            wait_until(lambda b=before: store.counts()["events"] >= b + 5, 60,
                       "check-ins flowing before the kill")
            time.sleep(0.37)  # somewhere inside a frame's decide/record/publish
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            kills += 1
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env)
        wait_until(lambda: store.counts()["events"] >= 40, 90, "the stream after restarts")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    outbox = Outbox(data / "outbox.sqlite")
    recorded = outbox.counters()["appended"]
    # A stop leaves unacknowledged events in the outbox for the next start: send them the way
    # the next start would.
    uplink = Uplink(outbox, BrokerConfig(port=mosquitto.port), CENTRE, DEVICE)
    uplink.start()
    assert uplink.drain(timeout=30)
    uplink.stop()
    wait_until(lambda: store.counts()["events"] >= recorded, 30, "the last events")
    rows = store.events()
    seqs = sorted(r["seq"] for r in rows)
    # Every decision the gate recorded reached the gateway exactly once: seq 0..n-1, no gaps.
    assert kills == 3 and seqs == list(range(recorded)), (len(seqs), recorded)
    assert len({r["event_id"] for r in rows}) == recorded
    accepted = [r for r in rows if r["outcome"] == "accepted"]
    assert accepted and {r["applicant_id"] for r in accepted} == {p.name for p in people}
