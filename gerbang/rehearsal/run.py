"""``gerbang-demo --scenario exam-day``: a whole centre's exam morning rehearsed on one machine.

A centre of R rooms × G gates runs as the real processes: one Mosquitto, one gateway (SQLite or
PostgreSQL), and one device service per gate. Every applicant walks up to a gate as real face
photos with their participant card's QR, over a doors-open window compressed into
``--window-s`` seconds, and the morning's mix is played out: applicants on the roster, people at
the wrong room's door, people on no roster, proxies (*joki*) with someone else's card, photo
attacks, faces the camera cannot see well, late arrivals. Faults are injected on a schedule: the
broker restarted, the gateway killed with -9, one gate's network cut, one gate's process killed,
one gate's power cut. At the end the gateway's own attendance is compared with the ground truth
room by room, every gate's outbox counters with the stored events, and a report is written for
the centre manager (``report.md`` with PNG plots in the work directory).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from gerbang.broker import MosquittoBroker, free_port
from gerbang.files import write_atomic
from gerbang.progress import progress
from gerbang.rehearsal.doors import GATE_WENT_DOWN, Morning, run_door
from gerbang.rehearsal.enrollment import enroll_cached
from gerbang.rehearsal.faults import CuttableLink, Fault, plan_faults, run_faults
from gerbang.rehearsal.fleet import (
    FEED,
    CameraWatch,
    GateRig,
    GatewayRunner,
    api,
    create_pg_database,
    drop_pg_database,
    login,
    wait_for,
    write_gateway_config,
)
from gerbang.rehearsal.frames import cut_column
from gerbang.rehearsal.resources import children_of, sample_loop, summarise_resources
from gerbang.rehearsal.scenario import (
    CENTRE,
    DEFAULT_CAMERA_FPS,
    DEFAULT_WINDOW_S,
    GATE_KEEPALIVE_S,
    LATE_FRACTION,
    MAX_GENUINE_TRIES,
    POOR_CAPTURES,
    REAL_BOOT_S,
    REAL_WINDOW_S,
    RESTART_SEC,
    SESSION,
    Applicant,
    DoorVisit,
    Plan,
    applicant_id_for,
    choose_people,
    make_plan,
)
from gerbang.rehearsal.transport import (
    BROKER_NAME,
    CentreBroker,
    CentreTLS,
    probe_anonymous,
    provision_centre,
    transport_summary,
)
from gerbang.simulation import Visit as ScoredVisit
from gerbang.simulation import default_faces_dir, prepare_gateway, score, write_device_config

log = logging.getLogger("rehearsal")


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


def _stored(store: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return store.events(), store.alarms(limit=1_000_000)


def run_rehearsal(args: argparse.Namespace) -> dict[str, Any]:
    """Rehearse an exam morning end to end; returns the summary (also in ``summary.json``)."""
    from device.decide.roster import Roster, RosterEntry, save_roster
    from device.infer.bundle import load_bundle
    from device.infer.match import MIN_COHORT
    from device.infer.pipeline import FacePipeline
    from gateway.auth import add_user
    from gateway.store import open_store
    from provisioning.enroll import face_folders

    began = time.monotonic()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="gerbang-rehearsal-")).resolve()
    run_dir = workdir / "run"
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a new morning; the enrollment cache beside it is kept
    logs_dir = run_dir / "logs"
    logs_dir.mkdir(parents=True)
    handler = logging.FileHandler(workdir / "rehearsal.log", mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                                           "%Y-%m-%dT%H:%M:%S"))
    logging.getLogger().addHandler(handler)
    window_s = float(args.window_s or DEFAULT_WINDOW_S)
    late_s = window_s * LATE_FRACTION
    camera_fps = float(args.camera_fps or DEFAULT_CAMERA_FPS)
    faces = args.faces or default_faces_dir()
    if faces is None or not Path(faces).is_dir():
        raise SystemExit("exam-day rehearsal: no face folder; pass --faces DIR (<person>/<image>,"
                         " people with 4+ photos become applicants) or set GERBANG_DATA")
    if not (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()):
        raise SystemExit("exam-day rehearsal needs Mosquitto (apt-get install mosquitto): its "
                         "broker is restarted as one of the faults")
    plain = bool(getattr(args, "plain_mqtt", False))
    log.info("exam-day rehearsal: %d rooms × %d gates, doors open %.0f s (= %.0f min, %.1f× "
             "compressed), late arrivals %.0f s, faults %s, %s, %s; work dir %s", args.rooms,
             args.gates_per_room, window_s, REAL_WINDOW_S / 60, REAL_WINDOW_S / window_s,
             late_s, "off" if args.no_faults else "on", args.backend,
             "PLAIN MQTT (--plain-mqtt, debugging only)" if plain else "mutual TLS", workdir)

    # --- applicants, enrollment, plan
    people = face_folders(Path(faces), min_images=2)
    chosen, outsiders = choose_people(people, args.applicants, args.seed)
    bundle = load_bundle()
    embedder = bundle.hashes()["embedder"]
    pipeline = FacePipeline.from_bundle(bundle, threads=2)
    templates, problems = enroll_cached(pipeline, embedder, chosen, workdir / "enrollment")
    not_enrolled = sorted(p for p in chosen if p not in templates)
    for person in not_enrolled:
        log.warning("enrollment: %s has no usable photo (%s); left off the rosters", person,
                    "; ".join(f"{Path(ph).name}: {why}" for ph, why in problems.get(person, [])))
    applicants = {applicant_id_for(p): Applicant(applicant_id_for(p), p, chosen[p])
                  for p in chosen if p in templates}
    plan = make_plan(applicants, outsiders, args.rooms, args.gates_per_room, window_s, args.seed,
                     cut_at=lambda photo: cut_column(pipeline, photo))
    pipeline = None  # the models' memory goes back before the gates load theirs
    faults = [] if args.no_faults else plan_faults(plan, window_s)
    rooms_of = {aid: a.room for aid, a in applicants.items()}

    rosters_dir = run_dir / "rosters"
    roster_paths = []
    for room in plan.rooms:
        entries = tuple(RosterEntry(aid, f"Peserta {aid}", templates[a.person])
                        for aid, a in sorted(applicants.items()) if a.room == room)
        path = rosters_dir / f"{room}.json"
        save_roster(Roster(SESSION, room, 1, entries, embedder_sha256=embedder), path)
        roster_paths.append(path)
    cohort = len(applicants) >= MIN_COHORT
    if cohort:  # the technician's own command: session-wide T-norm cohort in every room
        subprocess.run([sys.executable, "-m", "provisioning.cli", "cohort",
                        *map(str, roster_paths)], check=True, capture_output=True)
    log.info("%d applicants enrolled in %d rooms (%s), %d people on no roster; %d "
             "arrivals planned", len(applicants), len(plan.rooms),
             "T-norm scores with the session cohort" if cohort else "plain cosine scores",
             len(plan.outsiders), len(plan.visits))

    # --- the centre: broker, gateway, gates
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # The folder holding this gerbang package first: every process runs the same code.
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    tls: CentreTLS | None = None
    broker: MosquittoBroker
    if plain:
        broker = MosquittoBroker(run_dir / "broker")
    else:
        tls = provision_centre(run_dir, [g for room in plan.rooms for g in plan.gates[room]],
                               free_port())
        log.info("centre provisioned in %.2f s: CA %s (SHA-256 %s…), %d client certificates "
                 "(%d gates + the gateway), broker config %s", tls.provision_s, tls.ca_subject,
                 tls.ca_sha256[:23], len(tls.clients), len(tls.clients) - 1,
                 tls.broker.config_path)
        broker = CentreBroker(tls.broker)
    cut_gate = next((f.target for f in faults if f.kind == "network_cut"), None)
    link = CuttableLink(broker.port).start() if cut_gate else None
    pg_admin = None
    if args.backend == "postgresql":
        pg_admin = args.postgres
        db = create_pg_database(pg_admin)
    else:
        db = str(run_dir / "gateway" / "gateway.sqlite")
        Path(db).parent.mkdir(parents=True, exist_ok=True)
    wib = timezone(timedelta(hours=7))
    provisional = datetime.now(wib).replace(microsecond=0) + timedelta(hours=1)
    _, manager_password = prepare_gateway(
        db, {room: sorted(aid for aid, a in applicants.items() if a.room == room)
             for room in plan.rooms}, session=SESSION, centre=CENTRE,
        name="Exam-day rehearsal", doors_open=provisional,
        starts_at=provisional + timedelta(seconds=window_s),
        doors_close=provisional + timedelta(seconds=window_s + late_s),
        gates={g: room for room in plan.rooms for g in plan.gates[room]})
    proctor_password = os.urandom(9).hex()
    add_user(open_store(db), "proctor1", proctor_password, "proctor")
    http_port = free_port()
    base_url = f"http://127.0.0.1:{http_port}"
    gateway_config = run_dir / "gateway" / "gateway.toml"
    gateway_config.parent.mkdir(exist_ok=True)
    write_gateway_config(gateway_config, db, http_port, broker.port,
                          tls.broker_section("gateway") if tls else None)
    gateway = GatewayRunner(gateway_config, logs_dir / "gateway.log", base_url)
    rigs: dict[str, GateRig] = {}
    for room in plan.rooms:
        for device_id in plan.gates[room]:
            rig = GateRig(device_id, room, run_dir / "gates", logs_dir)
            rig.prepare()
            (rig.dir / "roster.json").write_bytes((rosters_dir / f"{room}.json").read_bytes())
            (rig.dir / "roster.json").chmod(0o600)
            port = link.port if (link and device_id == cut_gate) else broker.port
            write_device_config(rig.config, room, rig.dir, port, 5, camera_fps,
                                 device_id=device_id, centre=CENTRE, session=SESSION,
                                 capture={"path": rig.camera / FEED, "loop": True,
                                          "realtime": True},
                                 broker={"keepalive_s": GATE_KEEPALIVE_S,
                                         **(tls.broker_section(device_id) if tls else {})})
            rigs[device_id] = rig
    watch = CameraWatch()
    for rig in rigs.values():
        watch.watch(rig)
    watch.start()
    samples: list[dict[str, Any]] = []
    morning: Morning | None = None
    threads: list[threading.Thread] = []
    timings: dict[str, float] = {}
    try:
        broker.start()
        if tls is not None:
            tls.refuses_anonymous, tls.negotiated = probe_anonymous(broker.port, tls.ca_file)
            if not tls.refuses_anonymous:
                raise RuntimeError(f"the broker ({tls.broker.config_path}) accepted a client "
                                   "without a certificate")
        gateway.start(env)
        for rig in rigs.values():
            rig.start(env)
        waiting = list(rigs.values())
        for rig in progress(waiting, label="gates starting"):
            if not rig.up.wait(max(60.0, 4.0 * len(rigs))):
                tail = rig.log_path.read_text(errors="replace")[-1500:]
                raise RuntimeError(f"gate {rig.device_id} did not start; its log ends:\n{tail}")
        manager_token = login(base_url, "manager", manager_password)
        proctor_token = login(base_url, "proctor1", proctor_password)
        timings["setup_s"] = time.monotonic() - began
        log.info("centre up in %.0f s: %d gates, gateway at %s (manager / %s), broker on port "
                 "%d%s", timings["setup_s"], len(rigs), base_url, manager_password, broker.port,
                 f", {cut_gate} through a cuttable link on port {link.port}" if link else "")

        # --- doors open
        morning = Morning(rigs, base_url, proctor_token, rooms_of, window_s, camera_fps,
                          args.seed)
        wall0 = datetime.now(wib)
        morning.t0 = time.monotonic()
        api(base_url, "PUT", f"/api/sessions/{SESSION}", manager_token, {
            "centre": CENTRE, "name": "Exam-day rehearsal",
            "doors_open": wall0.isoformat(timespec="milliseconds"),
            "starts_at": (wall0 + timedelta(seconds=window_s)).isoformat(timespec="milliseconds"),
            "doors_close": (wall0 + timedelta(seconds=window_s + late_s)).isoformat(
                timespec="milliseconds")})
        log.info("doors open at %s (%s WIB); the exam starts at T+%.0fs, doors close at "
                 "T+%.0fs", wall0.astimezone().strftime("%H:%M:%S"), wall0.strftime("%H:%M:%S"),
                 window_s, window_s + late_s)

        def processes() -> list[tuple[str, int]]:
            # A gate is its supervisor and four workers: their usage adds up under the gate.
            found = [(gate, pid) for gate, rig in rigs.items()
                     if rig.process is not None and rig.process.poll() is None
                     for pid in (rig.process.pid, *rig.workers().values())]
            if gateway.process is not None and gateway.process.poll() is None:
                # the ingest process and its children (the web process, ingest workers)
                found += [("gateway", pid) for pid in (gateway.process.pid,
                                                       *children_of(gateway.process.pid))]
            if broker.process is not None and broker.process.poll() is None:
                found.append(("mosquitto", broker.process.pid))
            found.append(("rehearsal", os.getpid()))
            return found

        threads.append(threading.Thread(
            target=sample_loop, args=(morning, processes, samples),
            kwargs={"total_s": window_s + late_s}, name="sampler", daemon=True))
        if faults:
            threads.append(threading.Thread(
                target=run_faults, args=(morning, faults, broker, gateway, link, env, samples),
                name="faults", daemon=True))
        by_gate: dict[str, list[DoorVisit]] = defaultdict(list)
        for visit in plan.visits:
            by_gate[visit.gate].append(visit)
        doors = [threading.Thread(target=run_door, args=(morning, visits), name=f"door-{gate}",
                                  daemon=True) for gate, visits in sorted(by_gate.items())]
        for thread in threads + doors:
            thread.start()

        # --- doors close, everything delivered
        morning.wait_until(window_s + late_s)
        log.info("doors closed at T+%.0fs; waiting for the last applicants and faults",
                 morning.rel())
        for thread in doors + threads[1:]:
            thread.join(timeout=max(5.0, morning.t0 + window_s + late_s + 240 - time.monotonic()))
        unfinished = [v for v in plan.visits if not v.done.is_set()]
        if unfinished:
            log.error("%d arrivals did not finish: %s", len(unfinished),
                      ", ".join(f"{v.person}@{v.gate}" for v in unfinished[:10]))
        store = open_store(db)
        settle_started = time.monotonic()

        def settled() -> bool:
            events, alarms = _stored(store)
            return all(r["depth"] == 0 and r["lost"] == 0
                       for r in delivery_check(rigs, events, alarms))

        if not wait_for(settled, 180, threading.Event()):
            log.error("not every check-in reached the gateway within 180 s of doors closing")
        timings["settle_s"] = time.monotonic() - settle_started
        timings["morning_s"] = morning.rel()
        attendance = api(base_url, "GET", f"/api/sessions/{SESSION}/attendance", manager_token,
                          timeout=90.0)
        for rig in rigs.values():
            rig.decisions()  # the last log lines, for the logged-vs-stored count
        events, alarms = _stored(store)
        delivery = delivery_check(rigs, events, alarms)
    finally:
        if morning is not None:
            morning.stop.set()
        for thread in threads:
            thread.join(timeout=10)
        for rig in rigs.values():
            if rig.process is not None and rig.process.poll() is None:
                rig.process.terminate()
        for rig in rigs.values():
            rig.stop()
        gateway.stop()
        if link is not None:
            link.close()
        broker.stop()
        if tls is not None:  # the throwaway centre's keys do not outlive the run
            log.info("deleted %d private keys of the rehearsal centre",
                     tls.delete_private_keys())
        watch.close()
        if pg_admin:
            try:
                drop_pg_database(pg_admin, db)
            except Exception:
                log.exception("could not drop the rehearsal database %s", db)
        logging.getLogger().removeHandler(handler)
        handler.close()
    timings["wall_s"] = time.monotonic() - began
    if tls is not None:
        timings["provision_s"] = tls.provision_s
    transport = transport_summary(tls, broker)
    result = analyse(plan, faults, samples, events, delivery, attendance, window_s, late_s,
                     {"rooms": args.rooms, "gates_per_room": args.gates_per_room,
                      "applicants": len(applicants), "not_enrolled": len(not_enrolled),
                      "outsiders": len(plan.outsiders), "backend": args.backend,
                      "cohort": cohort, "camera_fps": camera_fps, "faults": not args.no_faults,
                      "faces": str(faces), "seed": args.seed, "broker_errors":
                      broker.log_errors(), "transport": transport}, timings)
    result["transport"] = transport
    result["report"] = str(write_report(result, workdir))
    result["workdir"] = str(workdir)
    write_atomic(workdir / "summary.json", json.dumps(result, indent=2, default=str).encode())
    return result


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


GREEN, RED, BLUE, GREY, ORANGE, BLACK = ((60, 160, 60), (60, 60, 210), (200, 110, 30),
                                         (150, 150, 150), (120, 200, 250), (30, 30, 30))
FONT = cv2.FONT_HERSHEY_SIMPLEX


def _nice_step(span: float, ticks: int = 6) -> float:
    raw = max(span, 1e-9) / ticks
    magnitude = 10 ** np.floor(np.log10(raw))
    return float(next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw))


def _frame(image: np.ndarray, rect: tuple[int, int, int, int], xmax: float, ymax: float,
           xlabel: str, ylabel: str) -> None:
    """Axes with ticks around ``rect`` = (left, top, right, bottom) in pixels."""
    left, top, right, bottom = rect
    cv2.rectangle(image, (left, top), (right, bottom), GREY, 1)
    for value in np.arange(0, ymax + 1e-9, _nice_step(ymax, 5)):
        y = int(bottom - (bottom - top) * value / ymax)
        cv2.line(image, (left - 4, y), (right, y), (225, 225, 225), 1)
        cv2.putText(image, f"{value:g}", (4, y + 4), FONT, 0.4, BLACK, 1, cv2.LINE_AA)
    for value in np.arange(0, xmax + 1e-9, _nice_step(xmax, 10)):
        x = int(left + (right - left) * value / xmax)
        cv2.line(image, (x, bottom), (x, bottom + 4), BLACK, 1)
        cv2.putText(image, f"{value:g}", (x - 10, bottom + 18), FONT, 0.4, BLACK, 1, cv2.LINE_AA)
    cv2.putText(image, xlabel, ((left + right) // 2 - 80, bottom + 40), FONT, 0.45, BLACK, 1,
                cv2.LINE_AA)
    cv2.putText(image, ylabel, (left, top - 8), FONT, 0.45, BLACK, 1, cv2.LINE_AA)


def plot_morning(result: dict[str, Any], path: Path) -> None:
    """Admissions and refusals per interval, outbox backlog, fault spans, start and close."""
    width, height = 1200, 470
    image = np.full((height, width, 3), 255, np.uint8)
    rect = (60, 70, width - 70, height - 70)
    left, top, right, bottom = rect
    t_end = max([result["window_s"] + result["late_s"]]
                + [s["t"] for s in result["samples"]]) * 1.02
    buckets = 60
    width_s = t_end / buckets
    admitted = np.histogram(result["admissions"], bins=buckets, range=(0, t_end))[0]
    refused = np.histogram(result["refusal_times"], bins=buckets, range=(0, t_end))[0]
    ymax = max(4, int(max(admitted.max(initial=0), refused.max(initial=0)) * 1.2) + 1)
    _frame(image, rect, t_end, ymax, "seconds after doors open",
           f"per {width_s:.0f} s: admitted (green), refused (red); blue: check-ins waiting in "
           "gate outboxes (right axis)")

    def x_of(t: float) -> int:
        return int(left + (right - left) * t / t_end)

    for n, fault in enumerate(result["fault_rows"]):
        start = fault["started_s"] or fault["at_s"]
        end = fault["recovered_s"] or fault["ended_s"] or start + fault["duration_s"]
        overlay = image.copy()
        cv2.rectangle(overlay, (x_of(start), top + 1), (max(x_of(end), x_of(start) + 3),
                                                        bottom - 1), ORANGE, -1)
        cv2.addWeighted(overlay, 0.45, image, 0.55, 0, image)
        cv2.putText(image, fault["kind"].replace("_", " "), (x_of(start) + 2,
                                                             top + 14 + 14 * (n % 3)),
                    FONT, 0.4, BLACK, 1, cv2.LINE_AA)
    bar = max(2, (right - left) // buckets // 2 - 1)
    for i in range(buckets):
        x = x_of(i * width_s)
        for count, colour, dx in ((admitted[i], GREEN, 0), (refused[i], RED, bar + 1)):
            if count:
                y = int(bottom - (bottom - top) * count / ymax)
                cv2.rectangle(image, (x + dx, y), (x + dx + bar, bottom - 1), colour, -1)
    outbox = [(s["t"], s["outbox_total"]) for s in result["samples"]]
    omax = max(4, max((v for _, v in outbox), default=0) * 1.2)
    points = np.array([(x_of(t), int(bottom - (bottom - top) * v / omax)) for t, v in outbox],
                      np.int32)
    if len(points) > 1:
        cv2.polylines(image, [points], False, BLUE, 2, cv2.LINE_AA)
    cv2.putText(image, f"{omax:.0f}", (right + 6, top + 4), FONT, 0.4, BLUE, 1, cv2.LINE_AA)
    cv2.putText(image, "0", (right + 6, bottom), FONT, 0.4, BLUE, 1, cv2.LINE_AA)
    for t, label in ((result["window_s"], "exam starts"),
                     (result["window_s"] + result["late_s"], "doors close")):
        cv2.line(image, (x_of(t), top), (x_of(t), bottom), BLACK, 2)
        cv2.putText(image, label, (x_of(t) + 4, bottom - 8), FONT, 0.45, BLACK, 1, cv2.LINE_AA)
    cv2.putText(image, "The morning: check-ins, faults (shaded) and delivery backlog", (left, 28),
                FONT, 0.6, BLACK, 1, cv2.LINE_AA)
    cv2.imwrite(str(path), image)


def plot_latency(result: dict[str, Any], path: Path) -> None:
    """Per gate: p95 bar, p50 dot, max tick (milliseconds from camera frame to decision)."""
    rows = [r for r in result["latency"] if r["n"]]
    width = max(700, 60 + 26 * len(rows) + 40)
    height = 420
    image = np.full((height, width, 3), 255, np.uint8)
    rect = (60, 60, width - 30, height - 80)
    left, top, right, bottom = rect
    ymax = max([50.0] + [r["max"] for r in rows]) * 1.1
    _frame(image, rect, 1, ymax, "", "ms, per gate: p95 (bar), p50 (dot), max (red tick)")
    cv2.rectangle(image, (0, bottom + 1), (width, bottom + 30), (255, 255, 255), -1)
    step = (right - left) / max(1, len(rows))
    for i, r in enumerate(rows):
        x = int(left + step * (i + 0.5))

        def y_of(v: float) -> int:
            return int(bottom - (bottom - top) * v / ymax)

        cv2.rectangle(image, (x - 8, y_of(r["p95"])), (x + 8, bottom - 1), (235, 200, 160), -1)
        cv2.circle(image, (x, y_of(r["p50"])), 4, BLUE, -1, cv2.LINE_AA)
        cv2.line(image, (x - 8, y_of(r["max"])), (x + 8, y_of(r["max"])), RED, 2)
        label = r["gate"].split("-", 1)[-1]
        cv2.putText(image, label[:6], (x - 11, bottom + 14 + 12 * (i % 2)), FONT, 0.33, BLACK,
                    1, cv2.LINE_AA)
    cv2.putText(image, "Check-in latency per gate (camera frame to recorded decision)",
                (left, 28), FONT, 0.6, BLACK, 1, cv2.LINE_AA)
    cv2.imwrite(str(path), image)


def plot_resources(result: dict[str, Any], path: Path) -> None:
    """Total resident memory, total CPU and the load average over the morning."""
    width, height = 1200, 520
    image = np.full((height, width, 3), 255, np.uint8)
    samples = result["samples"]
    t_end = max([1.0] + [s["t"] for s in samples]) * 1.02
    panels = [((60, 60, width - 40, 250), "rss_total_mb", 1 / 1024,
               "GB memory (PSS), all processes", BLUE),
              ((60, 300, width - 40, height - 60), "cpu_total", 1.0,
               "CPU % of all processes (200 = both cores); grey: load average x 100", RED)]
    for rect, key, scale, label, colour in panels:
        values = [s[key] * scale for s in samples]
        ymax = max([1.0] + values + ([s["load"] * 100 for s in samples]
                                     if key == "cpu_total" else [])) * 1.1
        _frame(image, rect, t_end, ymax, "seconds after doors open" if key == "cpu_total"
               else "", label)

        def pts(vals: list[float], rect: tuple[int, int, int, int] = rect,
                ymax: float = ymax) -> np.ndarray:
            left, top, right, bottom = rect
            return np.array([(int(left + (right - left) * s["t"] / t_end),
                              int(bottom - (bottom - top) * v / ymax))
                             for s, v in zip(samples, vals, strict=True)], np.int32)

        if len(samples) > 1:
            if key == "cpu_total":
                cv2.polylines(image, [pts([s["load"] * 100 for s in samples])], False, GREY, 2,
                              cv2.LINE_AA)
            cv2.polylines(image, [pts(values)], False, colour, 2, cv2.LINE_AA)
    cv2.putText(image, "Resources on this machine during the morning", (60, 30), FONT, 0.6,
                BLACK, 1, cv2.LINE_AA)
    cv2.imwrite(str(path), image)


def transport_rows(t: dict[str, Any]) -> list[str]:
    """The report's Broker and Transport rows of the setup table."""
    if t["mode"] == "plain":
        return ["| Broker | Mosquitto with the project's local config "
                f"(`gerbang/conf/mosquitto-local.conf`) on {t['listener']} |",
                "| Transport | **plain MQTT** on loopback (`--plain-mqtt`, for debugging only): "
                "no TLS, no client certificates, no ACL |"]
    checks = ", ".join(what for what, on in (("`require_certificate`", t["require_certificate"]),
                                             ("CRL", t["crl"])) if on)
    return [
        f"| Broker | Mosquitto with the centre's generated config (`{t['broker_config']}`, "
        f"from `provisioning/broker_config.py`): one TLS listener on {t['listener']} "
        f"(TLS ≥ 1.2, {checks}), client identity = certificate CN, a role per device "
        "(dynamic-security plugin: publishes and subscriptions checked); "
        "the broker-restart fault starts it again from the same config |",
        f"| Transport | **mutual TLS** ({t['negotiated'] or 'TLS'}): centre CA `{t['ca_subject']}`"
        f", SHA-256 fingerprint `{t['ca_sha256']}`; **{t['client_certificates']} client "
        f"certificates** ({t['gate_certificates']} gates, each from a CSR made with its key in "
        f"the gate's folder, and the gateway), provisioned in {t['provision_s']:.1f} s; every "
        f"client checks the broker's certificate for `{t['server_name']}`. The broker knew "
        f"{t['clients_authenticated']} of {t['client_certificates']} clients by their "
        "certificate; a client without one was "
        + ("refused" if t["refuses_without_certificate"] else "**ACCEPTED**") + " |",
    ]


def _clock(t: float, compression: float) -> str:
    """A rehearsal time as the clock of a real morning whose doors open at 06:30."""
    real = datetime(2026, 12, 1, 6, 30) + timedelta(seconds=t * compression)
    return real.strftime("%H:%M")


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


def write_report(result: dict[str, Any], workdir: Path) -> Path:
    """``report.md`` (and its plots) for the centre manager: the verdict first."""
    plots = workdir / "plots"
    plots.mkdir(exist_ok=True)
    plot_morning(result, plots / "morning.png")
    plot_latency(result, plots / "latency.png")
    plot_resources(result, plots / "resources.png")
    setup = result["setup"]
    k = setup["compression"]
    rooms = result["rooms"]
    faults = result["fault_rows"]
    out: list[str] = []
    add = out.append
    add(f"# Exam-day rehearsal: {result['verdict']}\n")
    if result["verdict"] == "PASS":
        add(f"**PASS.** Attendance at the gateway equals the ground truth in all {len(rooms)} "
            f"rooms ({setup['applicants']} applicants: {result['present']} present of whom "
            f"{result['late']} late, {result['absent']} absent). "
            f"{result['lost']} check-ins lost, {result['duplicated']} duplicated. "
            f"{result['proxies'] - result['proxies_admitted']} of {result['proxies']} proxies "
            f"refused; nobody on no roster got in. "
            + (f"{result['faults_survived']} of {len(faults)} faults injected and survived."
               if faults else "No faults injected (--no-faults).") + "\n")
    else:
        add("**FAIL.** " + "; ".join(result["failures"]) + ".\n")
    add(f"Rehearsed {datetime.now().strftime('%Y-%m-%d %H:%M')} on this machine in "
        f"{result['wall_s'] / 60:.1f} minutes: {len(rooms)} rooms × {setup['gates_per_room']} "
        f"gates, {setup['applicants']} applicants, doors open for {result['window_s']:.0f} s "
        f"standing for 30 minutes ({k:.1f}× faster than real time); late arrivals until doors "
        f"closed {result['late_s']:.0f} s after the start. Times below are seconds after doors "
        f"opened, with the clock of a real morning whose doors open at 06:30 and exam starts at "
        f"07:00.\n")
    add("| | |\n|---|---|")
    add(f"| Gates | {setup['gates']} device-service processes (one per gate), "
        f"camera at {setup['camera_fps']:g} frame/s |")
    add(f"| Gateway | one process, {setup['backend']} |")
    for row in transport_rows(setup["transport"]):
        add(row)
    add(f"| Rosters | {setup['applicants']} applicants enrolled from 3 photos each"
        + (f" ({setup['not_enrolled']} left off: no usable photo)" if setup["not_enrolled"]
           else "") + ", "
        + ("session-wide T-norm cohort (`gerbang-provision cohort`)" if setup["cohort"]
           else "plain cosine scores (fewer than 100 applicants: no cohort)") + " |")
    add(f"| Faces | `{setup['faces']}`; {setup['outsiders']} other people play proxies and "
        "people on no roster |")
    arrivals = setup["arrivals"]
    add("\n**The morning's mix**\n")
    add("| who | how many | what they do |\n|---|---|---|")
    add(f"| on the roster, on time | {arrivals.get('on_time', 0)} | card and face at a gate of "
        f"their room; up to {MAX_GENUINE_TRIES} tries, then the proctor checks the KTP |")
    add(f"| … of whom the camera cannot see well at first | {len(result['poor_capture_rows'])} | "
        "a dark, blurred or cut-off frame first, then a good one |")
    add(f"| at the wrong room first | {arrivals.get('wrong_room', 0)} | their card at another "
        "room's gate, then their own room |")
    add(f"| late | {arrivals.get('late', 0)} | arrive after the exam started |")
    add(f"| no-shows | {setup['no_shows']} | never come |")
    add(f"| proxies (*joki*) | {result['proxies']} | someone else with an applicant's card "
        "(that applicant stays home); tries twice |")
    add(f"| people on no roster | {result['strangers']} | with another session's card, or none "
        "(1:N search) |")
    add(f"| photo attacks | {result['photo_attacks']} | an applicant's own enrollment photo shown "
        "with their card after they went in (see Notes: liveness) |")

    add("\n## Attendance per room\n")
    add("Ground truth is what happened at the doors (who went in, when); the gateway column is "
        "its own derivation (`GET /api/sessions/{id}/attendance`, logged in as the manager) "
        "after the doors closed.\n")
    add("| Room | Expected | Present truth / gateway | Late truth / gateway | "
        "Absent truth / gateway | Proctor admits | Refused attempts | Wrong-room attempts | "
        "Duplicate identity | Equal |\n|---|---|---|---|---|---|---|---|---|---|")
    for r in rooms:
        add(f"| {r['room']} | {r['expected']} | {r['truth_present']} / {r['gateway_present']} | "
            f"{r['truth_late']} / {r['gateway_late']} | {r['truth_absent']} / "
            f"{r['gateway_absent']} | {r['proctor_admits']} | {r['refused']} | "
            f"{r['wrong_room_attempts']} | {r['duplicate_identity']} | "
            f"{'yes' if r['match'] else '**NO**'} |")
    if result["mismatches"]:
        add("\n**Applicants whose status differs**\n")
        add("| Applicant | Room | Truth | Gateway | Admitted by |\n|---|---|---|---|---|")
        for m in result["mismatches"]:
            add(f"| {m['applicant_id']} | {m['room']} | {m['truth']} | {m['gateway']} | "
                f"{m['admitted_by'] or '–'} |")

    add("\n## Proxies, photo attacks and people on no roster\n")

    def table(rows: list[dict[str, Any]], who: str, extra: str | None = None,
              admitted_means: str = "**YES**") -> None:
        if not rows:
            add("None in this rehearsal.\n")
            return
        head = f"| T+ s (clock) | Gate | {who} | Card shown |" + (f" {extra} |" if extra else "")
        add(head + " What the gate decided | Admitted |")
        add("|" + "---|" * (head.count("|") + 1))
        for r in rows:
            cells = [f"{r['at_s']:.0f} ({_clock(r['at_s'], k)})", r["gate"], r["person"],
                     r["card"] or "none"]
            if extra:
                cells.append(str(r.get(extra.lower().replace(" ", "_"), "")))
            cells += ["; ".join(r["outcomes"]) or "–", admitted_means if r["admitted"] else "no"]
            add("| " + " | ".join(cells) + " |")
        add("")

    add(f"### Proxies: {result['proxies'] - result['proxies_admitted']} of {result['proxies']} "
        "refused\n")
    add("A different person holding an applicant's card. The gate compares the face with that "
        "card's template (1:1) and with the whole room (`duplicate_identity` when it matches "
        "someone else better).\n")
    table(result["proxy_rows"], "Person (not on any roster)", "Victim")
    add(f"### People on no roster: {result['strangers'] - result['strangers_admitted']} of "
        f"{result['strangers']} refused\n")
    table(result["stranger_rows"], "Person")
    add(f"### Photo attacks: {result['photo_attacks_admitted']} of {result['photo_attacks']} "
        "admitted, as expected with liveness off\n")
    add("The gates here replay still photos, so their liveness step is off (a still cannot "
        "blink or turn). A photo attack is therefore shown as the applicant's own enrollment "
        "photo with their card, after the applicant went in; with liveness off the gate "
        "admits it, and attendance is unchanged because the applicant is already present. "
        "**This rehearsal does not measure liveness.** At a real door `[liveness] enabled = "
        "true` asks for a random action; its resistance to photo attacks is measured by "
        "`gerbang-device pad-eval` (docs/liveness.md).\n")
    table(result["photo_attack_rows"], "Photo of", "Target",
          admitted_means="yes (liveness off)")
    add("### At the wrong room's door\n")
    table(result["wrong_room_rows"], "Person", "Own room")
    add("### Faces the camera could not see well\n")
    if result["poor_capture_rows"]:
        add("| T+ s | Gate | Applicant's face | Capture | First frame | Then |\n"
            "|---|---|---|---|---|---|")
        for r in result["poor_capture_rows"]:
            add(f"| {r['at_s']:.0f} | {r['gate']} | {r['person']} | {r['capture']} | "
                f"{r['first']} | {r['then']} |")
        add("")
    else:
        add("None in this rehearsal.\n")
    add(f"### Admitted by a proctor: {len(result['proctor_rows'])}\n")
    add(f"Genuine applicants the gate refused {MAX_GENUINE_TRIES} times; the proctor checked "
        "their KTP and admitted them on the dashboard (`manual_admit`, audited).\n")
    if result["proctor_rows"]:
        add("| Applicant | Gate | Attempts | What the gate decided |\n|---|---|---|---|")
        for r in result["proctor_rows"]:
            add(f"| {r['applicant_id']} | {r['gate']} | {r['attempts']} | "
                f"{'; '.join(r['outcomes'])} |")
        add("")
    d = result["decisions"]
    add("### Every identity decision against the truth\n")
    add(f"{d['true_accepts']} genuine accepted, {d['false_rejects']} genuine refused (they "
        f"tried again), {d['true_rejects']} impostors or wrong-room cards refused, "
        f"**{d['false_accepts']} false accepts**; {d['no_event']} frames gave no decision (no "
        f"face found, or the gate went down while judging: {d['gate_went_down']}) and the "
        "person stepped up again. Poor captures and photo attacks are in their own tables "
        "above.\n")

    lat = result["latency_ms"]
    add("## Check-in latency per gate\n")
    add(f"From the camera frame to the decision committed in the gate's outbox, over "
        f"{lat['n']} decisions: p50 {_ms(lat['p50'])} ms, p95 {_ms(lat['p95'])} ms, max "
        f"{_ms(lat['max'])} ms (all {setup['gates']} gates share this 2-core machine with the "
        "gateway and the broker; a Pi has its gate to itself).\n")
    add("![latency per gate](plots/latency.png)\n")
    add("| Gate | Decisions | p50 ms | p95 ms | max ms |\n|---|---|---|---|---|")
    for r in result["latency"]:
        add(f"| {r['gate']} | {r['n']} | {_ms(r['p50'])} | {_ms(r['p95'])} | {_ms(r['max'])} |")

    add("\n## Delivery: lost and duplicated check-ins\n")
    add(f"**{result['lost']} lost, {result['duplicated']} duplicated, {result['undelivered']} "
        "still waiting in a gate.** Every gate numbers its check-ins (and alarms) 0, 1, 2, … in "
        "its outbox (`seq`); each number must be stored at the gateway exactly once. 'Logged' "
        "counts the decisions the gate wrote in its log (a gate killed between committing and "
        "logging has more stored than logged, never fewer).\n")
    add("| Gate | Appended | Acked | Stored | Lost | Duplicated | Left in outbox | Logged | "
        "Process starts |\n|---|---|---|---|---|---|---|---|---|")
    for r in result["delivery"]:
        add(f"| {r['gate']} | {r['appended']} | {r['acked']} | {r['stored']} | {r['lost']} | "
            f"{r['duplicated'] + r['unknown']} | {r['depth']} | {r['logged']} | {r['starts']} |")

    add("\n## Faults\n")
    if faults:
        add(f"{result['faults_survived']} of {len(faults)} survived: each component came back "
            "by itself, and the checks above include everything that happened during them.\n")
        add("| T+ s (clock) | Fault | Target | Came back after | What happened | Survived |\n"
            "|---|---|---|---|---|---|")
        for f in faults:
            start = f["started_s"] if f["started_s"] is not None else f["at_s"]
            back = (f"{f['recovered_s'] - start:.1f} s" if f["recovered_s"] is not None
                    else "**not**")
            add(f"| {start:.0f} ({_clock(start, k)}) | {f['title']} | {f['target']} | {back} | "
                f"{f['detail']} | {'yes' if f['survived'] else '**NO**'} |")
    else:
        add("None injected (`--no-faults`).")
    if setup["broker_errors"]:
        add("\nMosquitto logged errors: " + "; ".join(f"`{e}`" for e in setup["broker_errors"]))
    add("\n![the morning](plots/morning.png)\n")

    res = result["resources"]
    add("## Resources\n")
    load = res["load"]
    add(f"Peak memory (PSS: shared pages counted once) of all processes together: "
        f"**{res['peak_total_rss_mb'] / 1024:.1f} GB**; mean CPU "
        f"{res['mean_total_cpu_pct']:.0f} % (200 % = both cores). Load average "
        f"during the morning {load.get('min', 0):.1f}–{load.get('max', 0):.1f} (mean "
        f"{load.get('mean', 0):.1f}); this machine is shared, so other work counts in it.\n")
    add("![resources](plots/resources.png)\n")
    rows = res["per_process"]
    gates = [r for r in rows if r["process"].startswith(CENTRE + "-")]
    others = [r for r in rows if r not in gates]
    add("| Process | Peak PSS MB | Mean CPU % | Peak CPU % | CPU s | Processes (a restart "
        "adds one) |\n|---|---|---|---|---|---|")
    for r in others:
        add(f"| {r['process']} | {r['peak_rss_mb']:.0f} | {r['mean_cpu_pct']:.1f} | "
            f"{r['peak_cpu_pct']:.0f} | {r['cpu_s']:.0f} | {r['pids']} |")
    if gates:
        rss = [r["peak_rss_mb"] for r in gates]
        add(f"| gates (each, median / max of {len(gates)}) | {np.median(rss):.0f} / "
            f"{max(rss):.0f} | {np.median([r['mean_cpu_pct'] for r in gates]):.1f} / "
            f"{max(r['mean_cpu_pct'] for r in gates):.1f} | "
            f"{max(r['peak_cpu_pct'] for r in gates):.0f} | "
            f"{sum(r['cpu_s'] for r in gates):.0f} (all) | "
            f"{sum(r['pids'] for r in gates)} |")
        add("\n<details><summary>Every gate</summary>\n")
        add("| Gate | Peak PSS MB | Mean CPU % | Peak CPU % | CPU s | Processes |\n"
            "|---|---|---|---|---|---|")
        for r in gates:
            add(f"| {r['process']} | {r['peak_rss_mb']:.0f} | {r['mean_cpu_pct']:.1f} | "
                f"{r['peak_cpu_pct']:.0f} | {r['cpu_s']:.0f} | {r['pids']} |")
        add("\n</details>")
    t = result["timings"]
    add(f"\nWall time {t.get('wall_s', 0):.0f} s: setting up (enrollment, rosters, starting "
        f"every process) {t.get('setup_s', 0):.0f} s, the morning {t.get('morning_s', 0):.0f} s"
        f" (of which waiting for the last deliveries {t.get('settle_s', 0):.0f} s), then "
        "stopping and this report.\n")

    add("## Notes and limits\n")
    add(f"- **Time is compressed {k:.1f}×.** The 5-minute network cut lasts "
        f"{300 / k:.0f} s, a Pi's boot {max(RESTART_SEC + 1, REAL_BOOT_S / k):.0f} s; "
        f"systemd's 2 s restart delay is not compressed. The gates' MQTT keep-alive is "
        f"{GATE_KEEPALIVE_S} s here (30 s at a centre) so that the cut is long enough for both "
        "ends to notice it, as they would in 5 minutes.")
    add("- **Liveness is off** (the gates replay stills); photo attacks are shown but not "
        "defended here. Liveness is measured by `gerbang-device pad-eval` (docs/liveness.md).")
    if setup["transport"]["mode"] == "plain":
        add("- **MQTT is plain, on loopback** (`--plain-mqtt`, for debugging only), with the "
            "project's local Mosquitto config: no TLS, no client certificates, no ACL. Without "
            "the flag the rehearsal provisions the centre and runs everything over mutual TLS.")
    else:
        add("- **Mutual TLS as at a centre, on one machine.** The centre was provisioned for "
            "this run with the project's own code (`provisioning/pki.py`, "
            "`provisioning/broker_config.py`): a new CA, the broker's certificate, the "
            "gateway's, and one per gate whose key was made in the gate's own folder (at a "
            "centre: on the Pi, `gerbang-provision device add --csr-from-host`). Every process "
            "runs on loopback; the broker is reached at 127.0.0.1 and its certificate checked "
            f"for `{BROKER_NAME}`. The private keys were deleted when the run ended.")
    add("- The network cut is a relay between that gate and the broker that stops moving bytes "
        "and refuses new connections; a power cut is `kill -9` (the machine's page cache "
        "survives it, a Pi's would not: the outbox's fsync on every commit is tested on its own "
        "in tests/test_outbox.py).")
    add("- Each gate's camera is a replayed feed: an empty hallway at "
        f"{setup['camera_fps']:g} frame/s, and a person's frame when they step up. The "
        "applicant reads the gate's decision from its log, as they would read its screen; "
        "every figure above comes from the gateway, the outboxes and the stored events.")
    add("\n## Files\n")
    add("- `summary.json`: every figure in this report; `rehearsal.log`: the run's log")
    add("- `run/logs/`: each gate's, the gateway's log; `run/broker/mosquitto.log`")
    if setup["transport"]["mode"] != "plain":
        add("- `run/broker/`: the generated `mosquitto.conf` and `dynamic-security.json` (the "
            "broker's rules) it ran, `certs/`; "
            "`run/centre/`: the centre CA's certificate, CRL and every certificate it issued; "
            "`run/gateway/tls/`, `run/gates/<gate>/tls/`: each client's certificate and CSR "
            "(the private keys were deleted at the end of the run)")
    add("- `run/gates/<gate>/`: config, roster, outbox, camera frames; `run/rosters/`: room "
        "rosters (biometric templates: delete them with the work directory)")
    add("- `enrollment/templates.json`: the enrollment cache (templates, mode 0600) that makes "
        "a re-run with the same `--workdir` start faster")
    path = workdir / "report.md"
    path.write_text("\n".join(out) + "\n")
    return path
