"""Attendance derived from events, roster and proctor actions; roster CSV import; retention."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from gateway.attendance import derive, public_board, session_attendance, totals
from gateway.roster_import import parse_roster_csv
from gerbang import wire

SESSION = {"session_id": "S1", "centre": "c1", "name": "SKD sesi 1",
           "doors_open": "2026-12-01T06:30:00+07:00", "starts_at": "2026-12-01T07:30:00+07:00",
           "doors_close": "2026-12-01T08:00:00+07:00"}
BEFORE, AFTER = "2026-12-01T00:10:00.000Z", "2026-12-01T00:40:00.000Z"  # 07:10 / 07:40 WIB
DURING = datetime(2026, 12, 1, 0, 45, tzinfo=UTC)  # doors still open
CLOSED = datetime(2026, 12, 1, 1, 30, tzinfo=UTC)

ROSTER = [{"applicant_id": f"A{i}", "name": f"Peserta {i}", "room": "R01", "seat": f"{i:02d}"}
          for i in range(1, 6)] + [
          {"applicant_id": "B1", "name": "Peserta B1", "room": "R02", "seat": "01"},
          {"applicant_id": "B2", "name": "Peserta B2", "room": "R02", "seat": "02"}]


def event(seq, ts, outcome, applicant=None, reason=None, card=None, room="R01", device=None):
    return wire.CheckinEvent(
        event_id=wire.new_event_id(), device_id=device or f"c1-{room.lower()}-a", centre="c1",
        room=room, session="S1", seq=seq, ts=ts, outcome=outcome, reason=reason,
        applicant_id=applicant, card_id=card, score=0.7, latency_ms=40.0)


def override(action, applicant, ts="2026-12-01T00:41:00.000Z"):
    return {"ts": ts, "session_id": "S1", "room": "R01", "applicant_id": applicant,
            "device_id": None, "action": action, "reason": "checked KTP", "username": "pak_budi"}


def scenario(store):
    store.upsert_session(SESSION)
    store.replace_roster("S1", ROSTER)
    events = [
        event(0, BEFORE, "accepted", "A1"),                        # on time
        event(1, AFTER, "accepted", "A2"),                         # late
        event(2, BEFORE, "refused", reason="no_match", card="A3"),  # twice refused, then admitted
        event(3, BEFORE, "refused", reason="no_match", card="A3"),  # by a proctor
        event(4, BEFORE, "refused", reason="spoof_suspected", card="A5"),
        event(5, BEFORE, "accepted", "B1"),                        # R02 applicant at R01's door
        event(6, BEFORE, "no_face", reason="no_face"),
        event(0, BEFORE, "refused", reason="not_on_roster", card="A4", room="R02"),  # wrong door
    ]
    store.insert_events(events)
    store.insert_events(events[:3])  # redeliveries change nothing
    store.add_override(override("manual_admit", "A3"))
    store.add_override(override("mark_absent", "A4"))
    store.add_override(override("manual_admit", "A5"))
    store.add_override(override("reopen", "A5", ts="2026-12-01T00:42:00.000Z"))


def test_attendance_is_derived_from_events_and_proctor_actions(store):
    scenario(store)
    att = session_attendance(store, "S1", now=DURING)
    people = {a["applicant_id"]: a for a in att["applicants"]}
    assert {k: people[k]["status"] for k in people} == {
        "A1": "present", "A2": "late", "A3": "late", "A4": "absent", "A5": "awaiting",
        "B1": "wrong_room", "B2": "awaiting"}
    assert people["A3"]["admitted_by"] == "proctor:pak_budi" and people["A3"]["refused"] == 2
    assert people["A3"]["override"]["reason"] == "checked KTP"
    assert people["A5"]["override"] is None  # reopened: the gates' record stands again
    assert people["A5"]["flags"] == ["spoof_suspected"]
    rooms = {r["room"]: r for r in att["rooms"]}
    r01, r02 = rooms["R01"], rooms["R02"]
    assert (r01["expected"], r01["present"], r01["late"], r01["absent"], r01["awaiting"]) == \
        (5, 3, 2, 1, 1)  # A3's manual admit came after the start: late
    assert r01["refused"] == 3 and r01["spoof_suspected"] == 1 and r01["wrong_room"] == 1
    assert r01["manual_overrides"] == 4 and r01["gates"] == ["c1-r01-a"]
    # B1 was admitted (at R01's door): counted present in their roster room, flagged.
    assert (r02["expected"], r02["present"], r02["awaiting"]) == (2, 1, 1)
    assert r02["wrong_room"] == 1  # A4's card at R02's door
    assert totals(att["rooms"])["present"] == 4


def test_after_doors_close_not_admitted_means_absent(store):
    scenario(store)
    att = session_attendance(store, "S1", now=CLOSED)
    assert att["doors_closed"]
    statuses = {a["applicant_id"]: a["status"] for a in att["applicants"]}
    assert statuses["A5"] == statuses["B2"] == "absent"
    assert {r["room"]: r["absent"] for r in att["rooms"]} == {"R01": 2, "R02": 1}


def test_public_board_carries_no_identities(store):
    scenario(store)
    board = public_board(session_attendance(store, "S1", now=DURING))
    text = repr(board)
    for secret in ("A1", "B1", "Peserta", "c1-r01-a", "pak_budi", "0.7"):
        assert secret not in text
    assert {r["room"]: r["present"] for r in board["rooms"]} == {"R01": 3, "R02": 1}


def test_derive_is_pure_and_unknown_session_is_none(store):
    assert session_attendance(store, "nope") is None
    att = derive(SESSION, ROSTER, [], [], now=DURING)
    assert all(a["status"] == "awaiting" for a in att["applicants"])


def test_roster_csv_with_indonesian_headers_bom_and_semicolons():
    data = ("\ufeffNo Peserta;Nama;Ruang;Kursi;Sesi\n"
            "2024001;Siti Rahayu;R01;01;S1\n"
            "2024002;Budi Santoso;R01;02;S1\n\n"
            "2024003;Ni Made Ayu;R02;01;S1\n").encode()
    result = parse_roster_csv(data, "S1")
    assert result.ok, result.errors
    assert [e["applicant_id"] for e in result.entries] == ["2024001", "2024002", "2024003"]
    assert result.entries[2] == {"applicant_id": "2024003", "name": "Ni Made Ayu",
                                 "room": "R02", "seat": "01"}


def test_roster_csv_reports_every_bad_row_by_line():
    data = ("applicant_id,name,room,seat,session\n"
            "A1,Siti,R01,01,S1\n"
            "A1,Siti again,R01,02,S1\n"      # duplicate id
            "A2,,R01,03,S1\n"                # empty name
            "A3,Budi,R 01,04,S1\n"           # room with a space
            "A4,Ayu,R01,01,S1\n"             # seat taken
            "A5,Dewi,R01,05,S2\n")           # other session
    result = parse_roster_csv(data, "S1")
    assert not result.ok
    assert [(e["line"], e["field"]) for e in result.errors] == [
        (3, "applicant_id"), (4, "name"), (5, "room"), (6, "seat"), (7, "session")]
    missing = parse_roster_csv("nama,kursi\nSiti,01\n", "S1")
    assert missing.errors[0]["field"] == "applicant_id" and "no column" in \
        missing.errors[0]["error"]
    assert not parse_roster_csv(b"\xff\xfe\x00bad", "S1").ok


def test_roster_replacement_is_all_or_nothing(store):
    store.upsert_session(SESSION)
    store.replace_roster("S1", ROSTER)
    assert len(store.roster("S1")) == 7 and len(store.roster("S1", "R02")) == 2
    store.replace_roster("S1", ROSTER[:2])
    assert [r["applicant_id"] for r in store.roster("S1")] == ["A1", "A2"]


def test_retention_blanks_scores_but_keeps_attendance(store):
    scenario(store)
    assert store.purge_biometric(older_than_s=3600) == 0  # nothing that old yet
    assert store.purge_biometric(older_than_s=-1) == 8
    assert all(e["score"] is None and e["frame_ref"] is None for e in store.events())
    att = session_attendance(store, "S1", now=DURING)
    assert totals(att["rooms"])["present"] == 4


def test_retention_loop_blanks_old_scores_while_the_gateway_runs(store):
    import threading

    from gateway.cli import _retention_loop

    scenario(store)
    stop = threading.Event()
    # A cut-off in the future stands in for "these events are older than the period".
    thread = threading.Thread(target=_retention_loop, args=(store, -1.0, stop, 0.05))
    thread.start()
    try:
        deadline = time.monotonic() + 5
        while any(e["score"] is not None for e in store.events()):
            assert time.monotonic() < deadline, "retention never ran"
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(timeout=5)
    assert not thread.is_alive()
