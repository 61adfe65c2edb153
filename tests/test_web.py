"""Gateway API and pages over a real store: logins and roles, proctor actions, exports, the
public board, alerts, and the live stream."""

from __future__ import annotations

import json
import re
import threading
import time

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from gateway.auth import add_user
from gateway.web import create_app
from gerbang import wire
from gerbang.broker import free_port

PASSWORD = "correct-horse-battery"
SESSION = {"centre": "c1", "name": "SKD sesi 1", "doors_open": "2026-12-01T06:30:00+07:00",
           "starts_at": "2099-12-01T07:30:00+07:00", "doors_close": "2099-12-01T08:00:00+07:00"}
ROSTER_CSV = "no_peserta,nama,ruang,kursi\nA1,Siti Rahayu,R01,01\nA2,Budi Santoso,R01,02\n" \
             "B1,Ni Made Ayu,R02,01\n"


def event(seq, room="R01", outcome="accepted", applicant="A1", reason=None, card=None):
    return wire.CheckinEvent(
        event_id=wire.new_event_id(), device_id=f"c1-{room.lower()}-a", centre="c1",
        room=room, session="S1", seq=seq, ts="2026-12-01T00:10:00.000Z", outcome=outcome,
        applicant_id=applicant if outcome == "accepted" else None, card_id=card,
        reason=reason if outcome != "accepted" else None, score=0.6, latency_ms=45.0)


@pytest.fixture
def users(store):
    for name, role in (("manager1", "manager"), ("proctor1", "proctor"),
                       ("viewer1", "viewer"), ("tech1", "technician")):
        add_user(store, name, PASSWORD, role)
    return store


def client_for(app, username=None):
    client = TestClient(app)
    if username:
        response = client.post("/api/login", json={"username": username, "password": PASSWORD})
        assert response.status_code == 200, response.text
        client.headers["Authorization"] = f"Bearer {response.json()['token']}"
    return client


def form_login(client, username, password, next_path="/"):
    """Log in through the page's form as a browser does: GET the form (its double-submit
    token comes as a cookie and a hidden field), then POST it."""
    form = client.get(f"/login?next={next_path}")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
    return client.post("/login", data={"username": username, "password": password,
                                       "next": next_path, "csrf": csrf},
                       follow_redirects=False)


@pytest.fixture
def setup(users):
    commands = []
    app = create_app(users, commander=lambda *a: commands.append(a))
    manager = client_for(app, "manager1")
    assert manager.put("/api/sessions/S1", json=SESSION).status_code == 200
    response = manager.post("/api/sessions/S1/roster", content=ROSTER_CSV,
                            headers={"Content-Type": "text/csv"})
    assert response.json() == {"imported": 3, "errors": []}
    return app, users, manager, commands


def test_logins_and_roles(setup):
    app, store, manager, _ = setup
    anonymous = client_for(app)
    assert anonymous.get("/api/sessions").status_code == 401
    assert anonymous.post("/api/login", json={"username": "manager1",
                                              "password": "wrong-password!"}).status_code == 401
    assert anonymous.post("/api/login", json={"username": "nobody",
                                              "password": PASSWORD}).status_code == 401
    viewer = client_for(app, "viewer1")
    assert viewer.get("/api/sessions").json()[0]["session_id"] == "S1"
    denied = viewer.post("/api/sessions/S1/applicants/A1/actions",
                         json={"action": "manual_admit", "reason": "checked KTP"})
    assert denied.status_code == 403 and "proctor" in denied.json()["detail"]
    assert viewer.put("/api/sessions/S2", json=SESSION).status_code == 403
    assert client_for(app, "proctor1").get("/api/audit").status_code == 403
    # Only the token's hash is stored; a page login sets an HttpOnly cookie.
    token = manager.headers["Authorization"][7:]
    assert token not in json.dumps(store._execute("SELECT * FROM auth_tokens"))
    page_login = form_login(client_for(app), "viewer1", PASSWORD)
    assert page_login.status_code == 303
    assert "httponly" in page_login.headers["set-cookie"].lower()
    assert client_for(app).get("/", follow_redirects=False).headers["location"].startswith(
        "/login")
    # A user name the account rules refuse is a 422 naming the field (found by schemathesis).
    bad = manager.post("/api/users", json={"username": "-", "password": PASSWORD,
                                           "role": "viewer"})
    assert bad.status_code == 422 and "username" in bad.json()["detail"]
    manager.post("/api/logout")
    assert client_for(app).get("/api/me", headers={
        "Authorization": f"Bearer {token}"}).status_code == 401


def test_proctor_actions_are_recorded_with_who_and_why_and_audited(setup):
    app, store, manager, _ = setup
    store.insert_events([event(0, outcome="refused", reason="no_match", card="A2")])
    proctor = client_for(app, "proctor1")
    response = proctor.post("/api/sessions/S1/applicants/A2/actions",
                            json={"action": "manual_admit", "reason": "KTP 3174 checked"})
    assert response.status_code == 201
    assert proctor.post("/api/sessions/S1/applicants/ZZ/actions",
                        json={"action": "manual_admit", "reason": "x y z"}).status_code == 404
    bad = proctor.post("/api/sessions/S1/applicants/A2/actions",
                       json={"action": "teleport", "reason": "because"})
    assert bad.status_code == 422 and "manual_admit" in json.dumps(bad.json())
    assert proctor.post("/api/sessions/S1/applicants/A2/actions",
                        json={"action": "mark_absent", "reason": ""}).status_code == 422
    people = {a["applicant_id"]: a for a in
              proctor.get("/api/sessions/S1/attendance").json()["applicants"]}
    assert people["A2"]["status"] == "present"
    assert people["A2"]["override"]["username"] == "proctor1"
    audit = manager.get("/api/audit").json()
    assert [(a["username"], a["action"], a["target"]) for a in audit
            if a["action"] == "manual_admit"] == [("proctor1", "manual_admit", "S1/A2")]
    assert json.loads(next(a for a in audit if a["action"] == "manual_admit")["detail"]) == {
        "reason": "KTP 3174 checked"}
    assert {"session_put", "roster_import", "login"} <= {a["action"] for a in audit}


def test_bad_roster_upload_changes_nothing_and_names_lines(setup):
    _, store, manager, _ = setup
    response = manager.post("/api/sessions/S1/roster",
                            content="no_peserta,nama,ruang\nA9,Dewi,R01\nA9,Dewi,R01\n",
                            headers={"Content-Type": "text/csv"})
    assert response.status_code == 422
    assert response.json()["errors"][0]["line"] == 3
    assert len(store.roster("S1")) == 3
    assert manager.post("/api/sessions/NOPE/roster", content=ROSTER_CSV).status_code == 404
    bad_time = manager.put("/api/sessions/S2", json={**SESSION, "starts_at": "07:30"})
    assert bad_time.status_code == 422 and "starts_at" in json.dumps(bad_time.json())


def test_exports_and_public_board(setup):
    app, store, manager, _ = setup
    store.insert_events([event(0), event(1, room="R02", applicant="B1")])
    viewer = client_for(app, "viewer1")
    csv_text = viewer.get("/api/sessions/S1/export.csv").text
    lines = csv_text.strip().splitlines()
    assert lines[0].startswith("session_id,room,seat,applicant_id,name,status")
    assert len(lines) == 4 and "A1,Siti Rahayu,present" in csv_text
    assert len(viewer.get("/api/sessions/S1/export.csv?room=R02").text.strip().splitlines()) == 2
    pdf = viewer.get("/api/sessions/S1/export.pdf")
    assert pdf.headers["content-type"] == "application/pdf" and pdf.content[:5] == b"%PDF-"
    assert len(pdf.content) > 1000
    board = client_for(app).get("/api/public/sessions/S1").json()  # no login needed
    assert {r["room"]: (r["present"], r["expected"]) for r in board["rooms"]} == {
        "R01": (1, 2), "R02": (1, 1)}
    page = client_for(app).get("/board/S1").text
    for identity in ("Siti", "A1", "c1-r01-a"):
        assert identity not in json.dumps(board) and identity not in page
    audit_csv = manager.get("/api/audit.csv").text
    assert "export_pdf" in audit_csv and "export_csv" in audit_csv


def test_alerts_acknowledgement_and_remote_unlock(setup):
    app, store, _manager, commands = setup
    store.insert_events([event(0, outcome="refused", reason="spoof_suspected", card="A1")])
    store.record_status("c1-r01-a", "c1", {"state": "offline", "ts": "2026-12-01T00:11:00Z"})
    store.record_alarms([wire.AlarmEvent(alarm_id=wire.new_event_id(), device_id="c1-r01-a", seq=1,
                                         centre="c1", ts="2026-12-01T00:12:00.000Z",
                                         alarm="door_forced")])
    proctor = client_for(app, "proctor1")
    alerts = proctor.get("/api/alerts").json()
    assert {a["kind"] for a in alerts} == {"spoof_suspected", "device_offline", "door_forced"}
    key = next(a["key"] for a in alerts if a["kind"] == "door_forced")
    assert client_for(app, "viewer1").post(f"/api/alerts/{key}/ack").status_code == 403
    assert proctor.post(f"/api/alerts/{key}/ack", json={"note": "door was ajar"}).json()[
        "acknowledged"]
    acked = {a["kind"]: a["acknowledged"] for a in proctor.get("/api/alerts").json()}
    assert acked["door_forced"]["username"] == "proctor1" and acked["device_offline"] is None
    assert proctor.post("/api/alerts/nope/ack").status_code == 404
    # remote unlock: technicians may, viewers may not; the command goes to the gate's topic
    assert client_for(app, "viewer1").post("/api/devices/c1-r01-a/unlock",
                                           json={"reason": "wheelchair"}).status_code == 403
    tech = client_for(app, "tech1")
    assert tech.post("/api/devices/c1-r01-a/unlock",
                     json={"reason": "wheelchair user"}).status_code == 202
    assert commands[0][:3] == ("c1", "c1-r01-a", "unlock")
    assert commands[0][3]["by"] == "tech1"
    assert tech.post("/api/devices/ghost/unlock", json={"reason": "x y z"}).status_code == 404


def test_pages_render_for_each_role(setup):
    app, store, _, _ = setup
    store.insert_events([event(0)])
    viewer = client_for(app, "viewer1")
    for path in ("/", "/sessions/S1", "/sessions/S1/rooms/R01", "/devices", "/alerts"):
        response = viewer.get(path)
        assert response.status_code == 200, path
        assert 'data-live="/live/' in response.text
    room = viewer.get("/sessions/S1/rooms/R01").text
    assert "Siti Rahayu" in room and "action-form" not in room  # viewers get no action panel
    assert "07:10:00" in room and "WIB" in room  # 00:10 UTC on the centre's clock
    store.record_status("c1-r01-a", "c1", {"state": "online", "firmware": "0.2.0",
                                            "calibration": {"source": "roster:CASN-2026 c1",
                                                            "score_kind": "cosine",
                                                            "far": 1e-4, "threshold": 0.5812}})
    devices = viewer.get("/devices").text
    assert 'class="spark"' in devices and "45 / 45 ms" in devices  # latency per gate, plotted
    assert "roster:CASN-2026 c1" in devices and "cosine ≥ 0.5812 (FAR 0.0001)" in devices
    assert "action-form" in client_for(app, "proctor1").get("/sessions/S1/rooms/R01").text
    assert viewer.get("/sessions/NOPE").status_code == 404
    assert client_for(app).get("/live/room?session=S1&room=R01").status_code == 401


def test_migrations_are_recorded_and_idempotent(store):
    from gateway.store import MIGRATIONS

    assert store.schema_version == MIGRATIONS[-1][0]
    store._migrate()  # a second gateway worker starting: nothing to do, nothing breaks
    assert store.schema_version == MIGRATIONS[-1][0]
    store.record_status("c1-r01-a", "c1", {"state": "online", "firmware": "0.1.0"})
    store.record_status("c1-r01-a", "c1", {"state": "offline"})
    store.record_telemetry("c1-r01-a", "c1", {"fps": 12.5, "outbox_depth": 0})
    (device,) = store.devices()
    assert (device["state"], device["telemetry"]["fps"]) == ("offline", 12.5)


def test_live_stream_pushes_updates(users):
    users.upsert_session({"session_id": "S1", **SESSION})
    users.replace_roster("S1", [{"applicant_id": "A1", "name": "Siti", "room": "R01"},
                                {"applicant_id": "A2", "name": "Budi", "room": "R01"}])
    users.insert_events([event(0)])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(users, poll_s=0.1), port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        token = httpx.post(f"{base}/api/login", json={"username": "viewer1",
                                                      "password": PASSWORD}).json()["token"]
        headers = {"Authorization": f"Bearer {token}"}
        updates = []
        with httpx.stream("GET", f"{base}/api/stream", headers=headers, timeout=10) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    updates.append(json.loads(line[6:]))
                    if len(updates) == 1:
                        users.insert_events([event(1, applicant="A2")])
                    else:
                        break
        present = [u["sessions"][0]["rooms"][0]["present"] for u in updates]
        assert present == [1, 2]
        assert updates[1]["recent"][0]["applicant_id"] == "A2"
        fragments = []
        with httpx.stream("GET", f"{base}/live/room?session=S1&room=R01", headers=headers,
                          timeout=10) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    fragments.append(json.loads(line[6:])["html"])
                    break
        assert 'id="room-present">2<' in fragments[0]
    finally:
        server.should_exit = True
        thread.join(timeout=5)
