"""Admission (issue 14, High-3): a gate's certificate topic can only claim what its
assignment, the room's roster, the session's hours and the clock allow. Off-assignment events
are stored (ingest count = published) and alerted, and count nowhere; the same events delayed
by an outage are admitted. Real Mosquitto, real Ingest, both store back-ends.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion
from waiting import wait_until

from gateway.attendance import session_attendance
from gateway.auth import add_user
from gateway.ingest import Ingest
from gateway.web import create_app
from gerbang import wire
from gerbang.config import BrokerConfig

try:
    from gateway.assignments import assign
except ImportError:  # the base commit has no assignments: kept so these tests can show it
    assign = None  # type: ignore[assignment]

CENTRE, GATE = "c1", "c1-r01-a"
PASSWORD = "correct-horse-battery"
NOW = datetime.now(UTC)


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def session(session_id: str, opens: timedelta, closes: timedelta) -> dict[str, Any]:
    """A session of centre c1 whose doors open/close at NOW + the given offsets."""
    return {"session_id": session_id, "centre": CENTRE, "name": session_id,
            "doors_open": iso(NOW + opens), "starts_at": iso(NOW + opens),
            "doors_close": iso(NOW + closes)}


def prepare(store) -> None:
    """S1 open since 2 h (doors close in 30 min), S0 closed yesterday, S2 closed an hour ago;
    gate c1-r01-a assigned to room R01 for any open session of c1."""
    store.upsert_session(session("S1", timedelta(hours=-2), timedelta(minutes=30)))
    store.upsert_session(session("S0", timedelta(hours=-26), timedelta(hours=-25)))
    store.upsert_session(session("S2", timedelta(hours=-3), timedelta(hours=-1)))
    store.replace_roster("S1", [
        {"applicant_id": a, "name": f"Peserta {a}", "room": "R01"} for a in
        ("A0001", "A0002", "A0003", "A0004")] + [
        {"applicant_id": "B0001", "name": "Peserta B0001", "room": "R02"}])
    store.replace_roster("S0", [{"applicant_id": "A0002", "name": "Peserta", "room": "R01"}])
    store.replace_roster("S2", [{"applicant_id": "A0005", "name": "Peserta", "room": "R01"}])
    if assign is not None:
        assign(store, GATE, CENTRE, "R01", None, "test")


def start_ingest(store, port: int, **kwargs: Any) -> Ingest:
    try:
        ingest = Ingest(store, BrokerConfig(port=port), **kwargs)
    except TypeError:  # the base commit's Ingest has no clock
        ingest = Ingest(store, BrokerConfig(port=port))
    ingest.start()
    assert ingest.connected.wait(10)
    return ingest


class Gate:
    """A gate's MQTT identity: publishes on its own topics only (what its certificate may)."""

    def __init__(self, port: int, device: str = GATE) -> None:
        self.device = device
        self.seq = 0
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device,
                                  protocol=mqtt.MQTTv5)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def status(self, online: bool) -> None:
        self.client.publish(wire.status_topic(CENTRE, self.device),
                            wire.status_payload(online, device_id=self.device), qos=1,
                            retain=True).wait_for_publish(5)

    def event(self, ts: datetime, applicant: str, room: str = "R01",
              session_id: str = "S1") -> str:
        event = wire.CheckinEvent(
            event_id=wire.new_event_id(), device_id=self.device, centre=CENTRE, room=room,
            session=session_id, seq=self.seq, ts=iso(ts), outcome="accepted",
            applicant_id=applicant, score=0.7, latency_ms=40.0)
        self.seq += 1
        self.client.publish(wire.events_topic(CENTRE, self.device), event.to_json(),
                            qos=1).wait_for_publish(5)
        return event.event_id

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def present(store, session_id: str = "S1") -> list[str]:
    att = session_attendance(store, session_id)
    return sorted(a["applicant_id"] for a in att["applicants"]
                  if a["status"] in ("present", "late", "wrong_room"))


def refused_alerts(store) -> dict[str, dict[str, Any]]:
    from gateway.alerts import current_alerts

    return {a.get("reason"): a for a in current_alerts(store) if a["kind"] == "event_refused"}


def test_off_assignment_events_are_kept_alerted_and_never_counted(store, mosquitto):
    prepare(store)
    # The gateway's clock runs two hours behind at first: the gate's birth and the ingest's
    # connection then date from two hours ago, so "1 h old while it has been online" can be
    # tested without waiting an hour. Everything else is real time.
    shift = [-7200.0]
    ingest = start_ingest(store, mosquitto.port, clock=lambda: time.time() + shift[0])
    gate = Gate(mosquitto.port)
    try:
        gate.status(online=True)
        wait_until(lambda: store.devices(), 10, "the gate's birth")
        shift[0] = 0.0
        published = [
            gate.event(NOW, "A0001"),                                  # counts
            gate.event(NOW, "B0001", room="R02"),                      # another room
            gate.event(NOW, "Z9999"),                                  # not on R01's roster
            gate.event(NOW, "A0002", session_id="S0"),                 # session not open
            gate.event(NOW + timedelta(hours=1), "A0002"),             # ts 1 h in the future
            gate.event(NOW - timedelta(hours=1), "A0003"),             # 1 h old, gate online
        ]
        wait_until(lambda: store.counts()["events"] == len(published), 10, "every event")
        assert ingest.stats.received == ingest.stats.stored == len(published)
        assert present(store) == ["A0001"], "only the event within the gate's assignment counts"
        assert present(store, "S0") == []
        summary = {(r["session"], r["room"]): r["present"] for r in store.room_summary()}
        assert summary == {("S1", "R01"): 1, ("S1", "R02"): 0, ("S0", "R01"): 0}
        board = create_app(store)  # the public board counts admitted events only too
        assert {r["room"]: r["present"] for r in TestClient(board).get(
            "/api/public/sessions/S1").json()["rooms"]} == {"R01": 1, "R02": 0}
        verdicts = {e["applicant_id"] + "/" + e["session"] + "/" + e["room"]: e["admission"]
                    for e in store.events()}
        assert verdicts == {
            "A0001/S1/R01": None, "B0001/S1/R02": "off_assignment_room",
            "Z9999/S1/R01": "not_on_room_roster", "A0002/S0/R01": "session_not_open",
            "A0002/S1/R01": "ts_in_future", "A0003/S1/R01": "ts_stale"}
        add_user(store, "viewer1", PASSWORD, "viewer")
        viewer = TestClient(board)
        viewer.headers["Authorization"] = "Bearer " + viewer.post("/api/login", json={
            "username": "viewer1", "password": PASSWORD}).json()["token"]
        room_page = viewer.get("/sessions/S1/rooms/R01").text  # the evidence, on the page
        assert "Not counted in this room" in room_page
        for code in ("not_on_room_roster", "ts_in_future", "ts_stale"):
            assert code in room_page
        assert "off_assignment_room" in viewer.get("/sessions/S1").text
        assert {e["admission"] for e in viewer.get("/api/sessions/S1/refused").json()} == {
            "off_assignment_room", "not_on_room_roster", "ts_in_future", "ts_stale"}
        alerts = refused_alerts(store)
        assert set(alerts) == {"off_assignment_room", "not_on_room_roster", "session_not_open",
                               "ts_in_future", "ts_stale"}
        assert all(a["device_id"] == GATE and a["severity"] == "high" for a in alerts.values())
        assert ingest.stats.refused == 5

        # The same kind of event, delayed by an outage, is admitted. The gate was offline
        # (last will / clean stop) and is back: its backlog is an hour old.
        gate.status(online=False)
        gate.status(online=True)
        gate.event(NOW - timedelta(hours=1), "A0002")
        gate.event(NOW - timedelta(hours=1, minutes=1), "A0005", session_id="S2")  # doors
        wait_until(lambda: store.counts()["events"] == 8, 10, "the gate's backlog")  # closed since
        # The gateway was down (restarted) while the gate published: its queue is old too.
        ingest.stop()
        gate.event(NOW - timedelta(hours=1), "A0004")
        ingest = start_ingest(store, mosquitto.port)
        wait_until(lambda: store.counts()["events"] == 9, 10, "the gateway's queued event")
        assert present(store) == ["A0001", "A0002", "A0004"]
        assert present(store, "S2") == ["A0005"]
    finally:
        gate.close()
        ingest.stop()


def test_a_birth_earlier_in_the_batch_counts_for_the_events_after_it(store):
    """Within one batch, messages are judged in the order the broker delivered them."""
    prepare(store)
    shift = [-7200.0]
    ingest = Ingest(store, BrokerConfig(port=1), clock=lambda: time.time() + shift[0])
    ingest.connected_since = time.time() - 7200  # connected for two hours
    ingest.admission.refresh(force=True)  # what the writer thread does first

    def msg(leaf: str, payload: bytes) -> mqtt.MQTTMessage:
        m = mqtt.MQTTMessage(mid=1, topic=wire.device_topic(CENTRE, GATE, leaf).encode())
        m.payload, m.qos, m.timestamp = payload, 0, time.monotonic()
        return m

    def old_event(applicant: str) -> mqtt.MQTTMessage:
        return msg("events", wire.CheckinEvent(
            event_id=wire.new_event_id(), device_id=GATE, centre=CENTRE, room="R01",
            session="S1", seq=0, ts=iso(NOW - timedelta(hours=1)), outcome="accepted",
            applicant_id=applicant).to_json())

    birth = msg("status", wire.status_payload(True, device_id=GATE))
    ingest._commit([birth])  # online since two hours ago (the gateway's clock)
    shift[0] = 0.0
    ingest._commit([old_event("A0003")])
    ingest._commit([msg("status", wire.status_payload(False)), birth, old_event("A0004")])
    verdicts = {e["applicant_id"]: e["admission"] for e in store.events()}
    assert verdicts == {"A0003": "ts_stale", "A0004": None}


def test_config_verdicts_in_order():
    from gateway.admission import Assignment, Snapshot, config_verdict, epoch

    snap = Snapshot(
        assignments={"g1": Assignment("c1", "R01", "S1"), "g2": Assignment("c2", "R01", None)},
        sessions={"S1": ("c1", epoch("2026-12-01T06:30:00+07:00"),
                         epoch("2026-12-01T08:00:00+07:00")),
                  "S9": ("c9", epoch("2026-12-01T06:30:00+07:00"),
                         epoch("2026-12-01T08:00:00+07:00"))},
        roster=frozenset({("S1", "R01", "A1")}))
    during, late = epoch("2026-12-01T07:00:00+07:00"), epoch("2026-12-01T08:01:59+07:00")

    def verdict(device="g1", centre="c1", room="R01", session_id="S1", ts=during,
                applicant="A1", outcome="accepted"):
        return config_verdict(snap, 120, device, centre, room, session_id, ts, outcome,
                              applicant)

    assert verdict() is None
    assert verdict(ts=late) is None  # after doors close, within the skew
    assert verdict(ts=late + 2) == "session_not_open"
    assert verdict(device="nobody") == "unassigned_device"
    assert verdict(centre="c2") == "unassigned_device"  # assigned in another centre
    assert verdict(room="R02") == "off_assignment_room"
    assert verdict(session_id="S2") == "off_assignment_session"
    assert verdict(device="g2", centre="c2", session_id="S9") == "off_assignment_session"
    assert verdict(device="g2", centre="c2", session_id="S1") == "off_assignment_session"
    assert verdict(applicant="A2") == "not_on_room_roster"
    assert verdict(applicant=None, outcome="refused") is None  # only admissions need a roster


def test_changing_an_assignment_a_roster_or_a_session_reevaluates_refused_events(
        store, mosquitto):
    """Configuration refusals are not final: fixed config admits the events (audited)."""
    store.upsert_session(session("S1", timedelta(minutes=-30), timedelta(minutes=30)))
    store.replace_roster("S1", [{"applicant_id": "A0001", "name": "Siti", "room": "R01"}])
    add_user(store, "manager1", PASSWORD, "manager")
    web = TestClient(create_app(store))
    web.headers["Authorization"] = "Bearer " + web.post("/api/login", json={
        "username": "manager1", "password": PASSWORD}).json()["token"]
    ingest = start_ingest(store, mosquitto.port)
    gate = Gate(mosquitto.port)
    try:
        gate.event(NOW, "A0001")                          # gate not assigned yet
        gate.event(NOW, "A0002")                          # not on the roster yet
        gate.event(NOW - timedelta(minutes=45), "A0001")  # before doors open (as scheduled)
        wait_until(lambda: store.counts()["events"] == 3, 10, "the events")
        assert sorted(e["admission"] for e in store.events()) == ["unassigned_device"] * 3
        assert web.put(f"/api/devices/{GATE}/assignment",
                       json={"centre": CENTRE, "room": "R01", "session": "S1"}).status_code == 200
        assert web.get("/api/assignments").json()[0]["room"] == "R01"
        wait_until(lambda: sorted(str(e["admission"]) for e in store.events()) == [
            "None", "not_on_room_roster", "session_not_open"], 15, "the assignment applied")
        response = web.post("/api/sessions/S1/roster", headers={"Content-Type": "text/csv"},
                            content="no_peserta,nama,ruang\nA0001,Siti,R01\nA0002,Budi,R01\n")
        assert response.status_code == 200
        body = {k: v for k, v in session("S1", timedelta(hours=-1), timedelta(minutes=30)
                                         ).items() if k != "session_id"}
        assert web.put("/api/sessions/S1", json=body).status_code == 200
        wait_until(lambda: all(e["admission"] is None for e in store.events()), 15,
                   "the roster and the session applied")
        assert present(store) == ["A0001", "A0002"]
        audit = web.get("/api/audit").json()
        assert [(a["username"], a["target"]) for a in audit
                if a["action"] == "assignment_put"] == [("manager1", GATE)]
        reevaluated = [a for a in audit if a["action"] == "admission_reevaluated"]
        assert reevaluated and all(a["username"].startswith("gateway:") for a in reevaluated)
        assert sum(json.loads(a["detail"]).get("admitted", 0) for a in reevaluated) == 3
        assert web.put("/api/devices/bad device/assignment",
                       json={"centre": CENTRE, "room": "R01"}).status_code in (404, 422)
        viewer_denied = TestClient(create_app(store)).put(
            f"/api/devices/{GATE}/assignment", json={"centre": CENTRE, "room": "R01"})
        assert viewer_denied.status_code == 401
    finally:
        gate.close()
        ingest.stop()


def test_assign_from_the_cli_and_from_a_provisioning_centre_folder(tmp_path):
    """``gerbang-gateway assign``: one gate, every gate of the centre folder
    ``gerbang-provision`` made, or a CSV; each assignment audited as cli:<os user>."""
    import getpass

    from gateway.store import open_store
    from provisioning.bundle import add_device, create_centre
    from provisioning.pki import load_centre_ca

    centre = create_centre(tmp_path / "centre", "c1", ["broker.local"])
    ca = load_centre_ca(centre.ca_dir)
    add_device(centre, ca, "c1-r01-a", "R01")
    add_device(centre, ca, "c1-r02-a", "R02")
    db = tmp_path / "gw.sqlite"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gateway.cli", "assign", "--db", str(db),
                               *args], capture_output=True, text=True, timeout=60)

    done = cli("--from", str(tmp_path / "centre"))
    assert done.returncode == 0, done.stderr
    store = open_store(db)
    assert [(a["device_id"], a["centre"], a["room"], a["session"]) for a in
            store.assignments()] == [("c1-r01-a", "c1", "R01", None),
                                     ("c1-r02-a", "c1", "R02", None)]
    (tmp_path / "gates.csv").write_text("gate;ruang;sesi\nc1-r03-a;R03;S1\n")
    assert cli("--from", str(tmp_path / "gates.csv"), "--centre", "c1").returncode == 0
    assert cli("c1-r01-a", "--centre", "c1", "--room", "R09").returncode == 0
    bad = cli("--from", str(tmp_path / "gates.csv"))  # no centre anywhere
    assert bad.returncode == 2 and "centre" in bad.stderr
    rooms = {a["device_id"]: (a["room"], a["session"]) for a in store.assignments()}
    assert rooms == {"c1-r01-a": ("R09", None), "c1-r02-a": ("R02", None),
                     "c1-r03-a": ("R03", "S1")}
    audit = [(a["username"], a["action"], a["target"]) for a in store.audit_log()]
    me = f"cli:{getpass.getuser()}"
    assert audit.count((me, "assignment_put", "c1-r01-a")) == 2
    assert (me, "assignment_put", "c1-r03-a") in audit


@pytest.mark.parametrize("skew, ok", [(120, True), (4, False), (901, False)])
def test_clock_skew_is_bounded(skew, ok):
    from gateway.config import load_gateway_config
    from gerbang.config import ConfigError

    if ok:
        assert load_gateway_config(None, {"gateway": {"clock_skew_s": skew}}).gateway \
            .clock_skew_s == skew
        assert load_gateway_config(None).gateway.clock_skew_s == 120
    else:
        with pytest.raises(ConfigError, match="clock_skew_s"):
            load_gateway_config(None, {"gateway": {"clock_skew_s": skew}})


def test_every_worker_of_a_share_group_sees_every_birth(tmp_path, mosquitto):
    """Events are split between the workers of a share group, births are not: the worker that
    judges a gate's backlog must have seen the birth before it (the clock rule)."""
    from gateway.store import SqliteStore

    db = tmp_path / "gw.sqlite"
    workers = [Ingest(SqliteStore(db), BrokerConfig(port=mosquitto.port), client_id=f"gw-{n}",
                      share_group="workers") for n in (1, 2)]
    for worker in workers:
        worker.start()
        assert worker.connected.wait(10)
    gate = Gate(mosquitto.port)
    try:
        gate.status(online=True)
        wait_until(lambda: all(GATE in w._online_since for w in workers), 10,
                   "the birth at both workers")
        for n in range(20):
            gate.event(NOW, f"A{n:04d}")
        wait_until(lambda: sum(w.stats.received for w in workers) == 20, 10, "the events")
        assert all(w.stats.received > 0 for w in workers), "the events are still shared"
    finally:
        gate.close()
        for worker in workers:
            worker.stop()
