"""Issue 14, accounts and the web tier's smaller holes: a password reset or a disabled account
ends every login at once (against the real gateway process and its CLI), proctors act only on
their rooms, a reason must be one, the login form refuses cross-site posts, a 422 never echoes
the input, and no page loads Swagger UI from a CDN."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import httpx
import pytest
from fastapi.testclient import TestClient
from gatewayproc import ENV, PASSWORD, Gateway, login

from gateway.auth import add_user
from gateway.web import create_app
from gerbang import wire

NEW_PASSWORD = "another-horse-battery"
SESSION = {"centre": "c1", "name": "SKD", "doors_open": "2026-12-01T06:30:00+07:00",
           "starts_at": "2099-12-01T07:30:00+07:00", "doors_close": "2099-12-01T08:00:00+07:00"}
ROSTER = "no_peserta,nama,ruang\nA1,Siti,R01\nB1,Budi,R02\n"
#: Refused wherever a reason is required: blanks, invisible characters, punctuation only.
NOT_REASONS = ["   ", "\u200b\u200b\u200b\u200b", "\u00a0\u00a0\u00a0", "...", " - ! ",
               "\u200bok\u200b", "\u2060\ufeff\u200d\u200c"]


def cli(gw: Gateway, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", "user", *args, "--db",
                           str(gw.db)], input=stdin, capture_output=True, text=True, env=ENV,
                          timeout=60)


@pytest.fixture
def gateway(tmp_path, mosquitto):
    gw = Gateway(tmp_path, mosquitto.port).start()
    yield gw
    gw.stop()


def me(gw: Gateway, token: str) -> int:
    return httpx.get(f"{gw.base}/api/me", headers={"Authorization": f"Bearer {token}"}
                     ).status_code


def test_a_password_reset_ends_every_earlier_login(gateway):
    gw = gateway
    old = login(gw.base, "proctor1", PASSWORD).json()["token"]
    manager = login(gw.base, "manager1", PASSWORD).json()["token"]
    assert me(gw, old) == 200
    done = cli(gw, "proctor1", "--role", "proctor", "--password-stdin", stdin=NEW_PASSWORD + "\n")
    assert done.returncode == 0, done.stderr
    assert me(gw, old) == 401, "a token from before the reset still works"
    assert login(gw.base, "proctor1", PASSWORD, "127.0.0.2").status_code == 401
    fresh = login(gw.base, "proctor1", NEW_PASSWORD, "127.0.0.2").json()["token"]
    # a reset through the API ends the logins too
    reset = httpx.post(f"{gw.base}/api/users", headers={"Authorization": f"Bearer {manager}"},
                       json={"username": "proctor1", "password": PASSWORD, "role": "proctor"})
    assert reset.status_code == 201, reset.text
    assert me(gw, fresh) == 401


def test_a_disabled_account_is_locked_out_at_once_and_can_be_enabled(gateway):
    gw = gateway
    token = login(gw.base, "proctor1", PASSWORD).json()["token"]
    refused = cli(gw, "proctor1", "--disable", "--reason", "\u200b  \u200b")
    assert refused.returncode == 2 and "reason" in refused.stderr
    assert me(gw, token) == 200
    done = cli(gw, "proctor1", "--disable", "--reason", "left the centre at 09:10")
    assert done.returncode == 0, done.stderr
    assert me(gw, token) == 401, "a disabled account's token still works"
    again = login(gw.base, "proctor1", PASSWORD)
    assert again.status_code == 403 and "disabled" in again.json()["detail"]
    assert cli(gw, "proctor1", "--enable", "--reason", "back from the break").returncode == 0
    token = login(gw.base, "proctor1", PASSWORD).json()["token"]
    # and through the API (managers only), audited with the reason
    manager = {"Authorization": f"Bearer {login(gw.base, 'manager1', PASSWORD).json()['token']}"}
    proctor = {"Authorization": f"Bearer {token}"}
    assert httpx.post(f"{gw.base}/api/users/manager1/disable", headers=proctor,
                      json={"reason": "taking over"}).status_code == 403
    assert httpx.post(f"{gw.base}/api/users/proctor1/disable", headers=manager,
                      json={"reason": " . "}).status_code == 422
    assert httpx.post(f"{gw.base}/api/users/proctor1/disable", headers=manager,
                      json={"reason": "lost laptop"}).status_code == 200
    assert me(gw, token) == 401
    assert httpx.post(f"{gw.base}/api/users/manager1/disable", headers=manager,
                      json={"reason": "by mistake"}).status_code == 409
    users = {u["username"]: u for u in httpx.get(f"{gw.base}/api/users",
                                                  headers=manager).json()}
    assert users["proctor1"]["disabled_at"] is not None
    assert httpx.post(f"{gw.base}/api/users/proctor1/enable", headers=manager,
                      json={"reason": "laptop found"}).status_code == 200
    assert login(gw.base, "proctor1", PASSWORD).status_code == 200
    audit = httpx.get(f"{gw.base}/api/audit", headers=manager).json()
    changes = [(a["username"], a["action"], json.loads(a["detail"])["reason"]) for a in audit
               if a["action"] in ("user_disable", "user_enable")]
    assert [c[1:] for c in changes] == [
        ("user_disable", "left the centre at 09:10"), ("user_enable", "back from the break"),
        ("user_disable", "lost laptop"), ("user_enable", "laptop found")]
    assert changes[0][0].startswith("cli:") and changes[2][0] == "manager1"


# ---- in-process, over both store back-ends ---------------------------------------------------

@pytest.fixture
def app(store):
    add_user(store, "manager1", PASSWORD, "manager")
    add_user(store, "viewer1", PASSWORD, "viewer")
    add_user(store, "proctor-r01", PASSWORD, "proctor", [("*", "R01")])
    add_user(store, "proctor-s2", PASSWORD, "proctor", [("S2", "R02")])
    store.upsert_session({"session_id": "S1", **SESSION})
    store.replace_roster("S1", [{"applicant_id": "A1", "name": "Siti", "room": "R01"},
                                {"applicant_id": "B1", "name": "Budi", "room": "R02"}])
    for room in ("R01", "R02"):
        device = f"c1-{room.lower()}-a"
        store.record_status(device, "c1", {"state": "online", "room": room, "session": "S1"})
        store.insert_events([wire.CheckinEvent(
            event_id=wire.new_event_id(), device_id=device, centre="c1", room=room,
            session="S1", seq=0, ts="2026-12-01T00:10:00.000Z", outcome="refused",
            reason="spoof_suspected", card_id="A1" if room == "R01" else "B1")])
    return create_app(store, commander=lambda *a: None), store


def client(app, username=None):
    c = TestClient(app)
    if username:
        r = c.post("/api/login", json={"username": username, "password": PASSWORD})
        assert r.status_code == 200, r.text
        c.headers["Authorization"] = f"Bearer {r.json()['token']}"
    return c


def test_proctors_act_only_on_their_rooms(app):
    app, _ = app
    r01, s2, manager = client(app, "proctor-r01"), client(app, "proctor-s2"), client(app,
                                                                                   "manager1")
    action = {"action": "manual_admit", "reason": "KTP checked by hand"}
    assert r01.post("/api/sessions/S1/applicants/A1/actions", json=action).status_code == 201
    outside = r01.post("/api/sessions/S1/applicants/B1/actions", json=action)
    assert outside.status_code == 403 and "rooms" in outside.json()["detail"]
    # a scope for another session does not reach this one
    assert s2.post("/api/sessions/S1/applicants/B1/actions", json=action).status_code == 403
    assert manager.post("/api/sessions/S1/applicants/B1/actions", json=action).status_code == 201
    unlock = {"reason": "wheelchair user"}
    assert r01.post("/api/devices/c1-r01-a/unlock", json=unlock).status_code == 202
    assert r01.post("/api/devices/c1-r02-a/unlock", json=unlock).status_code == 403
    alerts = {a["room"]: a["key"] for a in r01.get("/api/alerts").json()
              if a["kind"] == "spoof_suspected"}
    assert r01.post(f"/api/alerts/{alerts['R01']}/ack").status_code == 200
    assert r01.post(f"/api/alerts/{alerts['R02']}/ack").status_code == 403
    assert manager.post(f"/api/alerts/{alerts['R02']}/ack").status_code == 200
    # reading is not scoped
    assert len(r01.get("/api/sessions/S1/attendance").json()["applicants"]) == 2
    # a manager sets the scope; a new proctor must be given one
    assert manager.put("/api/users/proctor-s2/rooms", json={"rooms": ["S1/R02"]}
                       ).status_code == 200
    assert s2.post("/api/sessions/S1/applicants/B1/actions", json=action).status_code == 201
    missing = manager.post("/api/users", json={"username": "p3", "password": PASSWORD,
                                               "role": "proctor"})
    assert missing.status_code == 422 and "rooms" in missing.text
    assert manager.post("/api/users", json={"username": "p3", "password": PASSWORD,
                                            "role": "proctor", "rooms": ["R01", "S9/*"]}
                        ).status_code == 201
    assert {u["username"]: u["rooms"] for u in manager.get("/api/users").json()}["p3"] == [
        "R01", "S9/*"]
    assert manager.put("/api/users/p3/rooms", json={"rooms": ["R 01"]}).status_code == 422


def test_cli_requires_rooms_for_a_new_proctor(tmp_path):
    db = str(tmp_path / "gw.sqlite")

    def user(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gateway.cli", "user", *args, "--db", db,
                               "--password-stdin"], input=PASSWORD + "\n", capture_output=True,
                              text=True, env=ENV, timeout=60)

    refused = user("p1", "--role", "proctor")
    assert refused.returncode == 2 and "--rooms" in refused.stderr
    assert user("p1", "--role", "proctor", "--rooms", "R01,S1/R02").returncode == 0
    from gateway.store import open_store

    assert open_store(db).user_rooms("p1") == [("*", "R01"), ("S1", "R02")]
    assert user("p1", "--rooms", "*").returncode == 0
    assert open_store(db).user_rooms("p1") == [("*", "*")]


@pytest.mark.parametrize("reason", NOT_REASONS)
def test_a_reason_must_have_letters_or_digits(app, reason):
    app, store = app
    manager = client(app, "manager1")
    for method, path, body in (
            ("POST", "/api/sessions/S1/applicants/A1/actions",
             {"action": "manual_admit", "reason": reason}),
            ("POST", "/api/devices/c1-r01-a/unlock", {"reason": reason}),
            ("POST", "/api/users/viewer1/disable", {"reason": reason})):
        response = manager.request(method, path, json=body)
        assert response.status_code == 422, (path, reason, response.status_code)
        assert "reason" in response.text
    assert store.overrides("S1") == []


def test_the_login_form_refuses_a_cross_site_post(app):
    app, _ = app
    fields = {"username": "manager1", "password": PASSWORD, "next": "/"}
    # another site's form: no token of ours (its cookie is SameSite=Strict, never sent)
    forged = TestClient(app).post("/login", data=fields, follow_redirects=False)
    assert forged.status_code == 403 and "gerbang_session" not in forged.headers.get(
        "set-cookie", "")
    browser = TestClient(app)
    form = browser.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
    # a token, but the browser says the post came from elsewhere
    elsewhere = browser.post("/login", data={**fields, "csrf": csrf}, follow_redirects=False,
                             headers={"Origin": "http://evil.example"})
    assert elsewhere.status_code == 403
    assert httpx.Cookies(browser.cookies).get("gerbang_session") is None
    # the refusal came with a fresh form (and token), as a person would see it
    csrf = re.search(r'name="csrf" value="([^"]+)"', elsewhere.text).group(1)
    ok = browser.post("/login", data={**fields, "csrf": csrf}, follow_redirects=False)
    assert ok.status_code == 303 and "gerbang_session=" in ok.headers["set-cookie"]
    assert TestClient(app).post("/api/login", json={"username": "manager1",
                                                    "password": PASSWORD},
                                headers={"Origin": "http://evil.example"}).status_code == 403


def test_a_422_does_not_echo_what_was_sent(app):
    app, _ = app
    manager = client(app, "manager1")
    secret = "SECRET-pa55word-" + "x" * 300
    for method, path, body in (
            ("POST", "/api/login", {"username": "manager1", "password": secret}),
            ("POST", "/api/users", {"username": "u1", "password": secret, "role": "boss"}),
            ("PUT", "/api/sessions/S3", {**SESSION, "doors_open": secret[:40]}),
            ("POST", "/api/sessions/S1/applicants/A1/actions",
             {"action": secret[:40], "reason": "KTP checked"})):
        response = manager.request(method, path, json=body)
        assert response.status_code == 422, path
        assert "SECRET" not in response.text, (path, response.text)
        assert response.json()["detail"][0]["loc"]  # still says which field


def test_no_swagger_or_redoc_page_only_the_openapi_document(app):
    app, _ = app
    anonymous = TestClient(app)
    assert anonymous.get("/docs").status_code == 404
    assert anonymous.get("/redoc").status_code == 404
    assert anonymous.get("/docs/oauth2-redirect").status_code == 404
    assert anonymous.get("/openapi.json").json()["info"]["title"] == "Gerbang gateway"
    page = client(app, "viewer1").get("/").text
    assert "cdn" not in page.lower() and 'href="/docs"' not in page
