"""``gerbang-demo --scenario exam-day`` (or ``python -m gerbang.rehearsal``): a whole centre's
exam morning rehearsed on one machine.

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

:func:`run_rehearsal` puts the morning together from the package's parts, in the order they
happen: :mod:`.scenario` (who does what, when), :mod:`.enrollment` (the rosters),
:mod:`.transport` (the centre's mutual TLS), :mod:`.fleet` (broker, gateway and gate processes,
their cameras), :mod:`.frames` (what a camera sees), :mod:`.doors` (the applicants),
:mod:`.faults`, :mod:`.resources` (CPU and memory), :mod:`.truth` (the verdict), and
:mod:`.report` with :mod:`.plots`.
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
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from gerbang.broker import MosquittoBroker, free_port
from gerbang.files import write_atomic
from gerbang.progress import progress
from gerbang.rehearsal.doors import Morning, run_door
from gerbang.rehearsal.enrollment import enroll_cached
from gerbang.rehearsal.faults import CuttableLink, plan_faults, run_faults
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
from gerbang.rehearsal.report import write_report
from gerbang.rehearsal.resources import children_of, sample_loop
from gerbang.rehearsal.scenario import (
    CENTRE,
    DEFAULT_CAMERA_FPS,
    DEFAULT_WINDOW_S,
    GATE_KEEPALIVE_S,
    LATE_FRACTION,
    REAL_WINDOW_S,
    SESSION,
    Applicant,
    DoorVisit,
    applicant_id_for,
    choose_people,
    make_plan,
)
from gerbang.rehearsal.transport import (
    CentreBroker,
    CentreTLS,
    probe_anonymous,
    provision_centre,
    transport_summary,
)
from gerbang.rehearsal.truth import analyse, delivery_check
from gerbang.simulation import default_faces_dir, prepare_gateway, write_device_config

log = logging.getLogger("rehearsal")


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
        morning.t0, morning.wall0 = time.monotonic(), wall0
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
