"""Dashboard and JSON API over a real store; the live stream pushes new check-ins."""

from __future__ import annotations

import json
import threading
import time

import httpx
import uvicorn

from gateway.web import create_app
from gerbang import wire
from gerbang.broker import free_port


def event(seq, room="R01", outcome="accepted", applicant="A1"):
    return wire.CheckinEvent(
        event_id=wire.new_event_id(), device_id="c1-r01-a", centre="c1", room=room,
        session="S1", seq=seq, ts=wire.utc_now_iso(), outcome=outcome,
        applicant_id=applicant if outcome == "accepted" else None,
        reason=None if outcome == "accepted" else "no_match", score=0.6)


def test_rooms_count_distinct_applicants_and_duplicates_change_nothing(store):
    first = event(0)
    assert store.insert_events([first, event(1, applicant="A2"), event(2, outcome="refused"),
                                event(3, room="R02")]) == 4
    assert store.insert_events([first]) == 0  # a redelivery
    assert store.insert_events([event(4)]) == 1  # A1 again (a second pass through the door)
    rooms = {r["room"]: r for r in store.room_summary()}
    assert rooms["R01"]["present"] == 2 and rooms["R01"]["refused"] == 1
    assert rooms["R02"]["present"] == 1


def test_dashboard_embeds_data_and_stream_pushes_updates(store):
    store.insert_events([event(0)])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(store, poll_s=0.1), port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        page = httpx.get(f"{base}/").text
        initial = json.loads(page.split('type="application/json">')[1].split("</script>")[0])
        assert initial["rooms"][0]["present"] == 1
        assert httpx.get(f"{base}/api/rooms").json()[0]["room"] == "R01"
        assert "/api/rooms" in httpx.get(f"{base}/openapi.json").json()["paths"]
        updates = []
        with httpx.stream("GET", f"{base}/api/stream", timeout=10) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    updates.append(json.loads(line[6:]))
                    if len(updates) == 1:
                        store.insert_events([event(1, applicant="A2")])
                    else:
                        break
        assert updates[0]["rooms"][0]["present"] == 1
        assert updates[1]["rooms"][0]["present"] == 2
        assert updates[1]["recent"][0]["applicant_id"] == "A2"
    finally:
        server.should_exit = True
        thread.join(timeout=5)


def test_migrations_are_recorded_and_idempotent(store):
    from gateway.store import MIGRATIONS

    assert store.schema_version == MIGRATIONS[-1][0]
    store._migrate()  # a second gateway worker starting: nothing to do, nothing breaks
    assert store.schema_version == MIGRATIONS[-1][0]
    store.record_status("c1-r01-a", "c1", {"state": "online", "firmware": "0.1.0"})
    store.record_status("c1-r01-a", "c1", {"state": "offline"})
    assert [(d["device_id"], d["state"]) for d in store.devices()] == [("c1-r01-a", "offline")]
