"""What a broken or hostile gate can do to the pages (issue 14, Medium): telemetry or status
the pages cannot render, junk that pushes a door alarm off the alert list, rejects that slow
every page down. Real Mosquitto, real Ingest, real pages.
"""

from __future__ import annotations

import json
import statistics
import time

import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion
from waiting import wait_until

from gateway.auth import add_user
from gateway.ingest import Ingest
from gateway.web import create_app
from gerbang import wire
from gerbang.config import BrokerConfig

CENTRE, GATE = "c1", "c1-r01-a"
PASSWORD = "correct-horse-battery"
SESSION = {"session_id": "S1", "centre": CENTRE, "name": "SKD sesi 1",
           "doors_open": "2026-12-01T06:30:00+07:00", "starts_at": "2099-12-01T07:30:00+07:00",
           "doors_close": "2099-12-01T08:00:00+07:00"}
PAGES = ("/", "/devices", "/alerts", "/sessions/S1", "/sessions/S1/rooms/R01")
APIS = ("/api/overview", "/api/alerts", "/api/devices", "/api/sessions/S1/attendance",
        "/api/stats", "/api/rooms", "/api/events")


def viewer(store) -> TestClient:
    add_user(store, "viewer1", PASSWORD, "viewer")
    client = TestClient(create_app(store))
    token = client.post("/api/login", json={"username": "viewer1",
                                            "password": PASSWORD}).json()["token"]
    client.headers["Authorization"] = f"Bearer {token}"
    return client


def publisher(port: int, client_id: str = GATE) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


@pytest.fixture
def gateway(store, mosquitto):
    store.upsert_session(SESSION)
    store.replace_roster("S1", [{"applicant_id": "A1", "name": "Siti", "room": "R01"}])
    ingest = Ingest(store, BrokerConfig(port=mosquitto.port))
    ingest.start()
    assert ingest.connected.wait(10)
    yield store, ingest
    ingest.stop()


def test_telemetry_over_4kb_and_a_numeric_status_ts_are_refused_and_pages_render(
        gateway, mosquitto):
    store, ingest = gateway
    gate = publisher(mosquitto.port)
    try:
        for topic, body in (
                (wire.status_topic(CENTRE, GATE), {"schema": 1, "state": "online", "ts": 12345}),
                (wire.telemetry_topic(CENTRE, GATE), {"fps": 12.0, "note": "x" * 5000}),
                (wire.telemetry_topic(CENTRE, "c1-r02-a"), {"fps": 12.0, "outbox_depth": 3,
                                                            "uptime_s": "a" * 4500})):
            gate.publish(topic, json.dumps(body), qos=1).wait_for_publish(5)
        wait_until(lambda: ingest.messages == 3, 10, "the three messages handled")
    finally:
        gate.loop_stop()
        gate.disconnect()
    client = viewer(store)
    for path in (*PAGES, *APIS):
        assert client.get(path).status_code == 200, path
    assert store.devices() == []  # nothing stored that wire.parse_* did not accept
    assert ingest.stats.rejected == 3
    kinds = {a["detail"].split(": ", 1)[1].split(" (")[0] for a in client.get(
        "/api/alerts").json() if a["kind"] == "rejected_message"}
    assert kinds == {"ts", "telemetry", "uptime_s"}


def test_hostile_rows_already_in_the_store_never_break_a_page(store):
    """Rows an older gateway stored (truncated telemetry, a number for a time, odd types)
    are shown as what the wire contract still accepts: every page and API answers 200."""
    store.upsert_session(SESSION)
    store.replace_roster("S1", [{"applicant_id": "A1", "name": "Siti", "room": "R01"}])
    truncated = json.dumps({"fps": 12.0, "stage_p50_ms": {f"s{i}": 1.0 for i in range(400)}})
    for device, status, telemetry in (
            ("c1-r01-a", '{"schema": 1, "state": "online", "ts": 12345}', truncated[:4000]),
            ("c1-r02-a", '{"state": "offline", "ts": 1e308, "models": [1, 2], "room": 7}',
             '{"fps": "fast", "outbox_depth": {"a": 1}, "decisions": [1]}'),
            ("c1-r03-a", "not json at all", '["a list"]'),
            ("c1-r04-a", '{"state": "offline", "ts": "not a time", "firmware": {"x": 1}}',
             '{"outbox": {"stream": 5}, "checkin_ready": "yes"}')):
        store._executemany(
            "INSERT INTO devices (device_id, centre, state, last_seen, status, telemetry, "
            "telemetry_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(device, CENTRE, "offline" if "offline" in status else "online", time.time(),
              status, telemetry, time.time())])
    client = viewer(store)
    for path in (*PAGES, *APIS):
        response = client.get(path)
        assert response.status_code == 200, (path, response.text[:300])
    devices = {d["device_id"]: d for d in client.get("/api/devices").json()}
    assert devices["c1-r01-a"]["status"].get("ts") is None  # the number is not a time
    assert devices["c1-r02-a"]["telemetry"].get("fps") is None
    assert devices["c1-r03-a"]["status"] == {"invalid": True}


def test_a_door_forced_stays_first_on_the_alerts_after_300_junk_messages(gateway, mosquitto):
    store, ingest = gateway
    gate = publisher(mosquitto.port)
    try:
        alarm = wire.AlarmEvent(alarm_id=wire.new_event_id(), device_id=GATE, centre=CENTRE,
                                seq=0, ts=wire.utc_now_iso(), alarm="door_forced",
                                detail="contact open")
        gate.publish(wire.alarms_topic(CENTRE, GATE), alarm.to_json(), qos=1).wait_for_publish(5)
        infos = [gate.publish(wire.events_topic(CENTRE, GATE), b"{junk %d" % n, qos=1)
                 for n in range(300)]
        for info in infos:
            info.wait_for_publish(10)
        wait_until(lambda: ingest.stats.rejected == 300, 20, "300 junk messages refused")
    finally:
        gate.loop_stop()
        gate.disconnect()
    client = viewer(store)
    alerts = client.get("/api/alerts").json()
    assert alerts[0]["kind"] == "door_forced", [a["kind"] for a in alerts[:5]]
    assert 'door forced' in client.get("/alerts").text
    junk = [a for a in alerts if a["kind"] == "rejected_message"]
    assert len(junk) == 1 and junk[0]["detail"].startswith("300 message(s)")
    assert store.counts()["rejected"] == 300
    assert len(store.rejects()) <= 2  # a sample, not a row per junk message


def test_status_and_telemetry_writes_are_rate_limited_per_gate(gateway, mosquitto):
    """A gate flooding its status and telemetry gets at most one write of each per second;
    the latest message is the one kept."""
    store, _ = gateway
    writes = []
    record_status, record_telemetry = store.record_status, store.record_telemetry
    store.record_status = lambda *a: (writes.append("status"), record_status(*a))
    store.record_telemetry = lambda *a: (writes.append("telemetry"), record_telemetry(*a))
    gate = publisher(mosquitto.port)
    started = time.monotonic()
    try:
        infos = []
        for n in range(400):
            infos.append(gate.publish(wire.telemetry_topic(CENTRE, GATE), json.dumps(
                {"schema": 1, "fps": float(n)}), qos=1))
            infos.append(gate.publish(wire.status_topic(CENTRE, GATE), wire.status_payload(
                True, firmware=f"0.{n}"), qos=1))
        for info in infos:
            info.wait_for_publish(10)
        wait_until(lambda: store.devices() and store.devices()[0]["telemetry"].get("fps")
                   == 399.0 and store.devices()[0]["status"].get("firmware") == "0.399", 10,
                   "the latest status and telemetry stored")
        # A change of state is not held back: the offline alert must not wait.
        gate.publish(wire.status_topic(CENTRE, GATE), wire.status_payload(False),
                     qos=1).wait_for_publish(5)
        wait_until(lambda: store.devices()[0]["state"] == "offline", 0.5, "offline at once")
    finally:
        gate.loop_stop()
        gate.disconnect()
    elapsed = time.monotonic() - started
    for kind in ("status", "telemetry"):
        assert writes.count(kind) <= elapsed + 2, (kind, writes.count(kind), elapsed)


@pytest.mark.slow
def test_pages_stay_fast_with_50k_rejected_messages(tmp_path, mosquitto):
    """50,000 junk messages through the real ingest: the alerts page (and the overview) take
    about what they take on an empty store (before: 1.5 s at 50 k, growing linearly)."""
    from gateway.store import open_store

    store = open_store(tmp_path / "gw.sqlite")
    store.upsert_session(SESSION)
    client = viewer(store)

    def timing(path: str) -> float:
        runs = []
        for _ in range(7):
            began = time.perf_counter()
            assert client.get(path).status_code == 200
            runs.append(time.perf_counter() - began)
        return statistics.median(runs)

    empty = {path: timing(path) for path in ("/alerts", "/", "/api/alerts")}
    ingest = Ingest(store, BrokerConfig(port=mosquitto.port))
    ingest.start()
    assert ingest.connected.wait(10)
    gate = publisher(mosquitto.port)
    try:
        total = 50_000
        for _ in range(0, total, 5000):
            infos = [gate.publish(wire.events_topic(CENTRE, GATE), b"{junk", qos=1)
                     for _n in range(5000)]
            for info in infos:
                info.wait_for_publish(60)
        wait_until(lambda: ingest.stats.rejected == total, 180, "50,000 junk messages refused")
    finally:
        gate.loop_stop()
        gate.disconnect()
        ingest.stop()
    assert store.counts()["rejected"] == total
    full = {path: timing(path) for path in empty}
    for path in empty:
        # a fixed small multiple of the empty store's time (plus 20 ms for timer noise)
        assert full[path] <= 3 * empty[path] + 0.02, (path, empty[path], full[path])
    print(f"\npage times, empty store vs 50k rejects (s): "
          f"{ {p: (round(empty[p], 4), round(full[p], 4)) for p in empty} }")
