"""What happened against what should have: ground truth, delivery, every figure, the verdict.

The ground truth is what happened at the doors (who went in, when). :func:`analyse` compares
the gateway's own attendance with it room by room, each gate's outbox with the stored events
(:func:`delivery_check`: none lost, none duplicated), and every identity decision with who
was really in front of the camera. PASS only when attendance is equal in every room, nothing was
lost, duplicated or left undelivered, no proxy and nobody on no roster got in, every fault was
recovered from, and every genuine applicant got in (by the gate or the proctor).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import numpy as np

from gerbang.rehearsal.doors import GATE_WENT_DOWN
from gerbang.rehearsal.faults import Fault
from gerbang.rehearsal.fleet import GateRig
from gerbang.rehearsal.resources import summarise_resources
from gerbang.rehearsal.scenario import (
    GATE_KEEPALIVE_S,
    POOR_CAPTURES,
    REAL_WINDOW_S,
    DoorVisit,
    Plan,
    applicant_id_for,
)
from gerbang.simulation import Visit as ScoredVisit
from gerbang.simulation import score


def delivery_check(rigs: dict[str, GateRig], events: list[dict[str, Any]],
                   alarms: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per gate: what its outbox appended and acknowledged against what the gateway stored.

    ``seq`` is gapless per gate and shared by events and alarms, so every seq below the
    outbox's next seq must be stored exactly once: a missing one is lost, a second row with
    the same seq (another event id) is a duplicate.
    """
    stored: dict[str, Counter[int]] = defaultdict(Counter)
    for row in [*events, *alarms]:
        stored[row["device_id"]][int(row["seq"])] += 1
    rows = []
    for gate, rig in sorted(rigs.items()):
        outbox = rig.read_outbox() or {"appended": 0, "acked": 0, "depth": 0}
        seqs = stored.get(gate, Counter())
        lost = [s for s in range(outbox["appended"]) if s not in seqs]
        rows.append({"gate": gate, "appended": outbox["appended"], "acked": outbox["acked"],
                     "depth": outbox["depth"], "stored": sum(seqs.values()),
                     "lost": len(lost), "lost_seqs": lost[:20],
                     "duplicated": sum(n - 1 for n in seqs.values() if n > 1),
                     "unknown": sum(1 for s in seqs if s >= outbox["appended"]),
                     "logged": len(rig.logged_seqs),
                     "logged_not_stored": len(rig.logged_seqs - set(seqs)),
                     "starts": len(rig.starts)})
    return rows


def _percentiles(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "p50": None, "p95": None, "max": None}
    arr = np.asarray(values, dtype=float)
    return {"n": len(values), "p50": round(float(np.percentile(arr, 50)), 1),
            "p95": round(float(np.percentile(arr, 95)), 1), "max": round(float(arr.max()), 1)}


def truth_status(plan: Plan, window_s: float) -> dict[str, str]:
    """What attendance should say for each roster applicant, from what happened at the doors:
    present (in by the start), late (in after it), absent (never came, or their proxy was
    turned away)."""
    status = dict.fromkeys(plan.applicants, "absent")
    for visit in plan.visits:
        if visit.genuine and visit.admitted_at is not None and visit.applicant_id:
            status[visit.applicant_id] = "present" if visit.admitted_at <= window_s else "late"
    return status


def analyse(plan: Plan, faults: list[Fault], samples: list[dict[str, Any]],
            events: list[dict[str, Any]], delivery: list[dict[str, Any]],
            attendance: dict[str, Any], window_s: float, late_s: float,
            setup: dict[str, Any], timings: dict[str, float]) -> dict[str, Any]:
    """Compare the gateway with the ground truth and gather every figure of the report."""
    truth = truth_status(plan, window_s)
    gateway = {a["applicant_id"]: a for a in attendance["applicants"]}
    mismatches = []
    for aid, expected in sorted(truth.items()):
        got = gateway.get(aid, {}).get("status", "missing")
        if got != expected:
            mismatches.append({"applicant_id": aid, "room": plan.applicants[aid].room,
                               "truth": expected, "gateway": got,
                               "admitted_by": gateway.get(aid, {}).get("admitted_by")})
    gw_rooms = {r["room"]: r for r in attendance["rooms"]}
    proctor_by_room = Counter(plan.applicants[v.applicant_id or ""].room for v in plan.visits
                              if v.admitted_by == "proctor")
    rooms = []
    for room in plan.rooms:
        ids = [aid for aid, a in plan.applicants.items() if a.room == room]
        t = Counter(truth[aid] for aid in ids)
        g = gw_rooms.get(room, {})
        rooms.append({
            "room": room, "expected": len(ids),
            "truth_present": t["present"] + t["late"], "gateway_present": g.get("present", 0),
            "truth_late": t["late"], "gateway_late": g.get("late", 0),
            "truth_absent": t["absent"], "gateway_absent": g.get("absent", 0),
            "awaiting": g.get("awaiting", 0), "refused": g.get("refused", 0),
            "wrong_room_attempts": g.get("wrong_room", 0),
            "duplicate_identity": g.get("duplicate_identity", 0),
            "proctor_admits": proctor_by_room[room],
            "match": not any(m["room"] == room for m in mismatches)})

    # Every stored event, matched to the frame the rehearsal showed (frame refs are unique).
    shown = {a.frame_ref: (v, a) for v in plan.visits for a in v.shown if a.frame_ref}
    stored_by_ref: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        if event.get("frame_ref") in shown:
            stored_by_ref[event["frame_ref"]].append(event)

    def stored_outcomes(visit: DoorVisit) -> list[str]:
        found = []
        for attempt in visit.shown:
            for event in stored_by_ref.get(attempt.frame_ref or "", []):
                found.append(event["outcome"] + (f" ({event['reason']})" if event["reason"]
                                                 else ""))
            if not stored_by_ref.get(attempt.frame_ref or ""):
                found.append("no event (" + (attempt.note or "no face found") + ")")
        return found

    def admitted(visit: DoorVisit) -> bool:
        return any(e["outcome"] == "accepted" for a in visit.shown
                   for e in stored_by_ref.get(a.frame_ref or "", []))

    def row(visit: DoorVisit, **extra: Any) -> dict[str, Any]:
        return {"at_s": round(visit.started_at if visit.started_at is not None else visit.at_s,
                              1), "gate": visit.gate, "person": visit.person,
                "card": next((a.card for a in visit.attempts), None),
                "outcomes": stored_outcomes(visit), "admitted": admitted(visit), **extra}

    proxies = [row(v, victim=v.applicant_id) for v in plan.visits if v.kind == "proxy"]
    strangers = [row(v) for v in plan.visits if v.kind == "stranger"]
    attacks = [row(v, target=v.applicant_id) for v in plan.visits if v.kind == "photo_attack"]
    wrong_room = [row(v, own_room=plan.applicants[v.applicant_id or ""].room)
                  for v in plan.visits if v.kind == "wrong_room"]
    poor = []
    for v in plan.visits:
        if v.poor_capture:
            first = v.shown[0] if v.shown else None
            first_events = stored_by_ref.get(first.frame_ref or "", []) if first else []
            poor.append({**row(v), "capture": v.poor_capture,
                         "first": (first_events[0]["reason"] or first_events[0]["outcome"])
                         if first_events else "no face found (no event)",
                         "then": v.admitted_by or "not admitted"})
    proctor = [{"applicant_id": v.applicant_id, "gate": v.gate, "at_s": round(v.admitted_at or 0,
                                                                              1),
                "attempts": len(v.shown), "outcomes": stored_outcomes(v)}
               for v in plan.visits if v.admitted_by == "proctor"]
    genuine_unadmitted = [v.applicant_id for v in plan.visits
                          if v.genuine and v.admitted_at is None]

    # Decisions against the truth, with the demo's scorer (identity decisions only: captures
    # the camera could not see well and photo attacks are reported on their own).
    room_of_gate = {gate: room for room, gates in plan.gates.items() for gate in gates}
    scored_truth = {}
    for visit in plan.visits:
        if visit.kind == "photo_attack":
            continue
        for attempt in visit.shown:
            if attempt.frame_ref is None or attempt.capture in POOR_CAPTURES:
                continue
            face_id = applicant_id_for(attempt.face_of)
            own = visit.genuine and attempt.card == face_id  # their own card at their room
            room = room_of_gate[visit.gate]
            scored_truth[f"{room}/{attempt.frame_ref}"] = ScoredVisit(
                room, attempt.photo, face_id if face_id in plan.applicants else attempt.face_of,
                own, attempt.card)
    decisions = {k: v for k, v in score(scored_truth, events).items()
                 if k not in ("proxy_attempts", "proxies_refused")}
    decisions["no_event"] = sum(1 for key in scored_truth
                                if not stored_by_ref.get(key.split("/", 1)[1]))
    decisions["gate_went_down"] = sum(a.note == GATE_WENT_DOWN for v in plan.visits
                                      for a in v.shown)

    latency = []
    for gate in sorted({r["gate"] for r in delivery}):
        values = [float(e["latency_ms"]) for e in events if e["device_id"] == gate
                  and e["outcome"] != "no_face" and e.get("latency_ms") is not None]
        latency.append({"gate": gate, **_percentiles(values)})
    all_latency = _percentiles([float(e["latency_ms"]) for e in events
                                if e["outcome"] != "no_face" and e.get("latency_ms") is not None])

    lost = sum(r["lost"] for r in delivery)
    duplicated = sum(r["duplicated"] + r["unknown"] for r in delivery)
    undelivered = sum(r["depth"] for r in delivery)
    proxies_admitted = sum(p["admitted"] for p in proxies)
    strangers_admitted = sum(s["admitted"] for s in strangers)
    for fault in faults:
        if fault.survived and (lost or duplicated):
            fault.detail += "; but check-ins were lost or duplicated (see delivery)"
    resources = summarise_resources(samples)
    failures = []
    if mismatches:
        failures.append(f"attendance differs from the ground truth for {len(mismatches)} "
                        f"applicants in {len({m['room'] for m in mismatches})} rooms")
    if lost or duplicated or undelivered:
        failures.append(f"{lost} check-ins lost, {duplicated} duplicated, {undelivered} still "
                        "in gate outboxes")
    if proxies_admitted:
        failures.append(f"{proxies_admitted} of {len(proxies)} proxies were admitted")
    if strangers_admitted:
        failures.append(f"{strangers_admitted} people on no roster were admitted")
    for fault in faults:
        if not fault.survived:
            failures.append(f"fault not recovered: {fault.title} ({fault.target})")
    if genuine_unadmitted:
        failures.append(f"{len(genuine_unadmitted)} applicants could not get in at all")
    by_kind = Counter(v.kind for v in plan.visits)
    return {
        "verdict": "PASS" if not failures else "FAIL", "failures": failures,
        "attendance_matches": not mismatches, "lost": lost, "duplicated": duplicated,
        "undelivered": undelivered, "proxies": len(proxies),
        "proxies_admitted": proxies_admitted, "strangers": len(strangers),
        "strangers_admitted": strangers_admitted, "photo_attacks": len(attacks),
        "photo_attacks_admitted": sum(a["admitted"] for a in attacks),
        "present": sum(s in ("present", "late") for s in truth.values()),
        "late": sum(s == "late" for s in truth.values()),
        "absent": sum(s == "absent" for s in truth.values()),
        "proctor_admits": len(proctor), "events_stored": len(events),
        "faults": [f.kind for f in faults],
        "faults_survived": sum(bool(f.survived) for f in faults),
        "latency_ms": all_latency, "peak_ram_mb": resources["peak_total_rss_mb"],
        "wall_s": round(timings.get("wall_s", 0), 1), "window_s": window_s, "late_s": late_s,
        "setup": {**setup, "gates": len(delivery), "arrivals": by_kind,
                  "no_shows": len(plan.no_shows), "compression": REAL_WINDOW_S / window_s,
                  "keepalive_s": GATE_KEEPALIVE_S},
        "timings": {k: round(v, 1) for k, v in timings.items()},
        "rooms": rooms, "mismatches": mismatches, "proxy_rows": proxies,
        "stranger_rows": strangers, "photo_attack_rows": attacks, "wrong_room_rows": wrong_room,
        "poor_capture_rows": poor, "proctor_rows": proctor, "decisions": decisions,
        "latency": latency, "delivery": delivery,
        "fault_rows": [vars(f) for f in faults], "resources": resources,
        "samples": [{k: s[k] for k in ("t", "load", "rss_total_mb", "cpu_total", "admitted")}
                    | {"outbox_total": sum(s["outbox"].values())} for s in samples],
        "admissions": sorted(round(v.admitted_at, 1) for v in plan.visits
                             if v.genuine and v.admitted_at is not None),
        "refusal_times": sorted(round(a.shown_at, 1) for v in plan.visits for a in v.shown
                                if a.outcome == "refused" and a.shown_at is not None),
    }
