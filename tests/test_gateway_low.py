"""Issue 14's low findings on the gateway side, each against the real thing: an event id reused
with other content, formulas in CSV exports, the audit of the audit download and of the CLI,
the ``--mqtt-protocol`` help."""

from __future__ import annotations

import csv
import getpass
import io
import json
import subprocess
import sys

import paho.mqtt.client as mqtt
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
SESSION = {"centre": CENTRE, "name": "SKD sesi 1", "doors_open": "2026-12-01T06:30:00+07:00",
           "starts_at": "2026-12-01T07:30:00+07:00", "doors_close": "2026-12-01T08:00:00+07:00"}


def logged_in(app, username: str) -> TestClient:
    client = TestClient(app)
    token = client.post("/api/login", json={"username": username,
                                            "password": PASSWORD}).json()["token"]
    client.headers["Authorization"] = f"Bearer {token}"
    return client


def test_an_event_id_sent_again_with_other_content_is_alerted_and_the_first_kept(
        store, mosquitto):
    ingest = Ingest(store, BrokerConfig(port=mosquitto.port))
    ingest.start()
    assert ingest.connected.wait(10)
    gate = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=GATE, protocol=mqtt.MQTTv5)
    gate.connect("127.0.0.1", mosquitto.port)
    gate.loop_start()
    first = wire.CheckinEvent(event_id=wire.new_event_id(), device_id=GATE, centre=CENTRE,
                              room="R01", session="S1", seq=0, ts=wire.utc_now_iso(),
                              outcome="accepted", applicant_id="A1", score=0.7, latency_ms=40.0)
    forged = wire.CheckinEvent(**{**first.__dict__, "applicant_id": "A2", "score": 0.9})
    try:
        for event in (first, first, forged):  # a redelivery, then the same id reused
            gate.publish(wire.events_topic(CENTRE, GATE), event.to_json(),
                         qos=1).wait_for_publish(5)
        wait_until(lambda: ingest.messages == 3, 10, "the three messages handled")
    finally:
        gate.loop_stop()
        gate.disconnect()
        ingest.stop()
    (stored,) = store.events()
    assert stored["applicant_id"] == "A1"  # the stored event stands
    from gateway.alerts import current_alerts

    conflicts = [a for a in current_alerts(store) if a["kind"] == "event_id_conflict"]
    assert len(conflicts) == 1, "the redelivery is not a conflict; the reused id is"
    assert first.event_id in conflicts[0]["detail"] and conflicts[0]["device_id"] == GATE
    assert "applicant_id" in conflicts[0]["detail"] and conflicts[0]["severity"] == "high"


def test_csv_exports_do_not_carry_formulas(store):
    add_user(store, "manager1", PASSWORD, "manager")
    app = create_app(store)
    manager = logged_in(app, "manager1")
    assert manager.put("/api/sessions/S1", json=SESSION).status_code == 200
    roster = ('no_peserta,nama,ruang\nA1,"=HYPERLINK(""http://evil/"",""x"")",R01\n'
              "A2,@SUM(1+1),R01\nA3,-2+3,R01\nA4,+cmd|' /C calc'!A0,R01\nA5,Siti,R01\n")
    assert manager.post("/api/sessions/S1/roster", content=roster,
                        headers={"Content-Type": "text/csv"}).status_code == 200
    assert manager.post("/api/sessions/S1/applicants/A5/actions", json={
        "action": "manual_admit", "reason": "=1+1 checked KTP"}).status_code == 201
    assert TestClient(app).post("/api/login", json={"username": "=2+3",
                                                    "password": PASSWORD}).status_code == 401
    rows = list(csv.DictReader(io.StringIO(manager.get("/api/sessions/S1/export.csv").text)))
    names = {r["applicant_id"]: r["name"] for r in rows}
    assert names == {"A1": "'=HYPERLINK(\"http://evil/\",\"x\")", "A2": "'@SUM(1+1)",
                     "A3": "'-2+3", "A4": "'+cmd|' /C calc'!A0", "A5": "Siti"}
    assert next(r for r in rows if r["applicant_id"] == "A5")["override_reason"] == \
        "'=1+1 checked KTP"
    audit = list(csv.DictReader(io.StringIO(manager.get("/api/audit.csv").text)))
    assert "'=2+3" in {r["username"] for r in audit}
    for row in rows + audit:
        for value in row.values():
            assert not (value or "").startswith(("=", "+", "-", "@", "\t", "\r")), value


def test_the_audit_download_is_itself_audited(store):
    add_user(store, "manager1", PASSWORD, "manager")
    manager = logged_in(create_app(store), "manager1")
    assert manager.get("/api/audit.csv").status_code == 200
    audit = manager.get("/api/audit").json()
    assert [(a["username"], a["action"]) for a in audit if a["action"] == "export_audit_csv"] \
        == [("manager1", "export_audit_csv")]


def test_the_cli_session_roster_and_purge_are_audited(tmp_path):
    from gateway.store import open_store

    db = tmp_path / "gw.sqlite"
    (tmp_path / "roster.csv").write_text("no_peserta,nama,ruang\nA1,Siti,R01\n")

    def cli(*args: str) -> None:
        done = subprocess.run([sys.executable, "-m", "gateway.cli", *args, "--db", str(db)],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr

    cli("session", "S1", "--centre", CENTRE, "--name", "SKD sesi 1",
        "--doors-open", SESSION["doors_open"], "--starts-at", SESSION["starts_at"],
        "--doors-close", SESSION["doors_close"])
    cli("roster", "S1", str(tmp_path / "roster.csv"))
    cli("purge", "--days", "30")
    audit = [(a["username"], a["action"], a["target"]) for a in open_store(db).audit_log()]
    me = f"cli:{getpass.getuser()}"
    assert audit == [(me, "session_put", "S1"), (me, "roster_import", "S1"),
                     (me, "retention_purge", None)]
    detail = json.loads(open_store(db).audit_log()[1]["detail"])
    assert detail["entries"] == 1


def test_mqtt_protocol_help_names_the_real_default():
    from gerbang.config import BrokerConfig

    done = subprocess.run([sys.executable, "-m", "gateway.cli", "run", "--help"],
                          capture_output=True, text=True, timeout=60)
    text = " ".join(done.stdout.split())
    assert BrokerConfig().protocol == 5
    assert "5 = MQTT 5 (the default" in text and "3.1.1 (the gateway's default)" not in text
