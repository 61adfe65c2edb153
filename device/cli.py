"""``gerbang-device``: run the gate service and check its models."""

from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from device.decide.roster import RosterError
from device.infer.bundle import ModelBundleError, load_bundle
from device.manage.keyfile import KeyFileError
from gerbang.config import ConfigError
from gerbang.logs import setup_logging

if TYPE_CHECKING:
    from device.bus import Bus
    from device.config import DeviceConfig

log = logging.getLogger("device")


def _cmd_run(args: argparse.Namespace) -> int:
    from device.config import load_device_config

    config = load_device_config(args.config)
    setup_logging(config.gate.device_id, args.verbose)
    if args.single_process:
        from device.processes.assembly import run_device

        result = run_device(config)
    else:
        from device.processes.supervisor import run_supervised

        result = run_supervised(args.config, verbose=args.verbose)
    if args.json:
        print(json.dumps(result))
    return 2 if "refused_by" in result else 0


def _camera_lost(config: DeviceConfig, bus: Bus, reason: str) -> None:
    """The capture worker's ``camera_lost`` alarm: through the outbox, like every alarm."""
    from device import bus as busmod
    from device.uplink.alarms import open_outbox, record_alarm

    outbox = open_outbox(config)
    try:
        record_alarm(outbox, config.gate, "camera_lost", reason[:300])
    finally:
        outbox.close()
    nudge = busmod.sender(bus, busmod.UPLINK)
    busmod.send_json(nudge, {"op": "outbox"})
    nudge.close()


def _cmd_worker(args: argparse.Namespace) -> int:
    import threading

    from device.bus import Bus, bus_dir
    from device.config import load_device_config
    from device.processes import stop_on_signals, write_result

    config = load_device_config(args.config)
    setup_logging(f"{config.gate.device_id}/{args.name}", args.verbose)
    stop = threading.Event()
    stop_on_signals(stop)
    bus = Bus(bus_dir(config.gate.data_dir))
    if args.name == "gate":
        from device.processes.gate import run_gate

        result = run_gate(config, bus, stop)
    elif args.name == "uplink":
        from device.processes.uplink import run_uplink

        result = run_uplink(config, bus, stop, args.config)
    elif args.name == "checkin":
        from device.processes.checkin import run_checkin

        result = run_checkin(config, bus, stop)
    else:
        from device.capture.cameras import CameraAlarm
        from device.processes.capture import run_capture

        result = run_capture(config.capture, bus, stop, CameraAlarm(
            lambda reason: _camera_lost(config, bus, reason)))
    from device.processes.health import peak_rss_mb

    write_result(bus.directory, args.name, {**result, "peak_rss_mb": peak_rss_mb()})
    return 0


def verify_models(bundle_dir: Path | None) -> int:
    """Check the bundle and print one line per model (raises ModelBundleError on a mismatch)."""
    bundle = load_bundle(bundle_dir)
    for role, sha in bundle.hashes().items():
        print(f"ok  {role:10s} {bundle.entry(role)['file']:32s} sha256 {sha}")
    return 0


def _cmd_verify_models(args: argparse.Namespace) -> int:
    return verify_models(args.bundle)


def _default_faces() -> Path | None:
    root = Path(os.environ.get("GERBANG_DATA", "../shared/data")) / "faces" / "celeba"
    return root if root.is_dir() else None


def _cmd_eval(args: argparse.Namespace) -> int:
    from device.config import QualityConfig
    from device.infer.pipeline import FacePipeline
    from device.tools.evaluation import evaluate, read_groups
    from device.tools.evaluation.text import format_report

    if args.calibrate and not args.enroll:
        raise ConfigError("--calibrate needs --enroll K (thresholds come from the gate protocol)")
    try:
        groups = read_groups(args.groups) if args.groups else None
    except (ValueError, OSError) as exc:
        raise ConfigError(f"--groups: {exc}") from None
    bundle = load_bundle(args.bundle)
    calibration = (read_calibration(args.calibration) if args.calibration
                   else bundle.manifest.get("calibration"))
    pipeline = FacePipeline.from_bundle(bundle, threads=args.threads)
    pipeline.flip_average = args.flip
    try:
        report = evaluate(pipeline, args.folders, QualityConfig(), enroll=args.enroll,
                          limit_people=args.limit_people, show_progress=not args.json,
                          calibration=calibration, groups=groups)
    except ValueError as exc:  # pooled sets with one name, a groups file that matches nobody
        raise ConfigError(str(exc)) from None
    if args.calibration and report["shipped"]["available"]:
        report["shipped"]["calibration"]["source"] = str(args.calibration)
    if args.calibrate:
        write_calibration(bundle.directory, report, args.folders)
    if args.json:
        print(json.dumps(report))
    else:
        print(format_report(report))
    return 0


def read_calibration(path: Path) -> dict:
    """A calibration to evaluate instead of the bundle's: a manifest.json (its ``calibration``)
    or a JSON object in that format (``thresholds`` per score kind and FAR, ``protocol``...)."""
    try:
        document = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--calibration {path}: {exc}") from None
    calibration = document.get("calibration", document) if isinstance(document, dict) else None
    if not isinstance(calibration, dict) or not isinstance(calibration.get("thresholds"), dict):
        raise ConfigError(f"--calibration {path}: no `thresholds` (score kind → FAR → threshold)")
    return calibration


def write_calibration(bundle_dir: Path, report: dict, folders: list[Path]) -> None:
    """Record the measured thresholds (per score kind and FAR) in the bundle's manifest."""
    import datetime

    from gerbang.files import write_atomic

    manifest_path = bundle_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    thresholds, tars = {}, {}
    for kind, rep in report["by_score"].items():
        supported = {far: r for far, r in rep["tar_at_far"].items() if r["supported"]}
        thresholds[kind] = {far: round(r["threshold"], 4) for far, r in supported.items()}
        tars[kind] = {far: round(r["tar"], 4) for far, r in supported.items()}
    manifest["calibration"] = {
        "date": datetime.date.today().isoformat(),
        "dataset": f"{'+'.join(f.name for f in folders)} ({report['people']} people, "
                   f"{report['images']} images)",
        "protocol": f"gate: templates from {report['enroll']} photos (flip-averaged), probes "
                    "the rest through the default quality gate",
        "fta": round(report["fta"], 4), "thresholds": thresholds, "tar": tars,
    }
    # Atomic: a gate or test reading the manifest meanwhile sees the old or the new one whole.
    write_atomic(manifest_path, (json.dumps(manifest, indent=2) + "\n").encode())
    log.info("calibration written to %s: %s", manifest_path, thresholds)


def _cmd_bench(args: argparse.Namespace) -> int:
    from device.tools.bench import run_bench, service_peak_rss_mb

    faces = args.faces or _default_faces()
    if faces is None:
        raise ConfigError("no face images: pass --faces DIR (or set GERBANG_DATA)")
    result = run_bench(load_bundle(args.bundle), faces, images=args.images,
                       runtime=args.runtime)
    if args.service_rss:
        result.update(service_peak_rss_mb(faces))
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


def _default_pad() -> Path:
    return Path(os.environ.get("GERBANG_DATA", "../shared/data")) / "pad" / "gc535"


def _cmd_pad_eval(args: argparse.Namespace) -> int:
    from device.infer.liveness import LivenessConfig, PassiveLiveness
    from device.infer.pipeline import FacePipeline
    from device.tools.pad_eval import (
        _images,
        default_check,
        evaluate_sequences,
        evaluate_stills,
        gc535_test_split,
    )

    bundle = load_bundle(args.bundle)
    pipeline = FacePipeline.from_bundle(bundle, threads=args.threads)
    passive = PassiveLiveness.from_json(bundle=bundle, threads=args.threads)
    show = not args.json
    if args.video:
        from device.tools.video_clips import DEFAULT_LABELS, load_labels
        from device.tools.video_eval import evaluate_videos
        from device.tools.video_report import format_video

        if not args.video.is_dir():
            raise FileNotFoundError(f"no video folder at {args.video}")
        check = default_check(passive, LivenessConfig(passive=not args.no_passive))
        result = evaluate_videos(args.video, pipeline, passive, check,
                                 load_labels(args.labels or DEFAULT_LABELS), args.max_frames,
                                 args.clip, args.mirror, show_progress=show)
        print(json.dumps(result) if args.json else format_video(result))
        return 0
    if args.faces:
        photos = [sorted(p for p in person.iterdir() if p.is_file())[0]
                  for person in sorted(args.faces.iterdir()) if person.is_dir()]
        photos = photos[: args.limit] if args.limit else photos
        config = LivenessConfig(passive=not args.no_passive)
        result = evaluate_sequences(pipeline, default_check(passive, config), photos,
                                    fps=args.fps, seed=args.seed, show_progress=show)
    else:
        if args.live and args.spoof:
            live = _images(args.live)
            subdirs = [d for d in sorted(args.spoof.iterdir()) if d.is_dir()]
            spoof = ({d.name: _images(d) for d in subdirs} if subdirs
                     else {"attack": _images(args.spoof)})
            source = {"live": str(args.live), "spoof": str(args.spoof)}
        elif args.live or args.spoof:
            raise ConfigError("give both --live DIR and --spoof DIR (or neither)")
        else:
            root = _default_pad()
            if not (root / "live").is_dir():
                raise ConfigError(f"no PAD data at {root}: pass --live DIR --spoof DIR")
            live, attacks = gc535_test_split(root, passive.record)
            spoof = {"recapture": attacks}
            source = {"gc535_test_split": str(root)}
        live, spoof = (live[: args.limit], {k: v[: args.limit] for k, v in spoof.items()}) \
            if args.limit else (live, spoof)
        result = {**evaluate_stills(pipeline, passive, live, spoof, show_progress=show),
                  "source": source}
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


def _cmd_selftest(args: argparse.Namespace) -> int:
    from device.tools.selftest import SelftestOptions, as_json, format_table, passed, run_selftest

    gateway_url = None if args.gateway_url in ("off", "none", "") else args.gateway_url
    options = SelftestOptions(gateway_url=gateway_url, timeout_s=args.timeout,
                              gpio_step_s=args.step)
    config, results = run_selftest(args.config, options)
    print(as_json(config, results) if args.json else format_table(args.config, config, results))
    return 0 if passed(results) else 1


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog="gerbang-device",
        description="Gerbang gate device: verifies faces at an exam-room door and reports "
                    "check-ins to the centre gateway over MQTT.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the gate service in the foreground",
                         description="Run the gate: capture, verify, open the door, report. "
                                     "Stops at SIGTERM/Ctrl-C, or when a replay source ends.")
    run.add_argument("--config", type=Path, required=True, help="device TOML config file")
    run.add_argument("--json", action="store_true", help="print the run's counters as JSON")
    run.add_argument("--single-process", action="store_true",
                     help="run capture, check-in, gate and uplink as threads of one process "
                          "(development; the default is four supervised processes)")
    run.set_defaults(func=_cmd_run)
    worker = sub.add_parser("worker", help="one of the gate's processes (started by `run`)",
                            description="Runs one worker of the gate service; `run` starts "
                                        "and supervises all four. For debugging one worker.")
    worker.add_argument("name", choices=["gate", "uplink", "checkin", "capture"])
    worker.add_argument("--config", type=Path, required=True, help="device TOML config file")
    worker.set_defaults(func=_cmd_worker)
    selftest = sub.add_parser(
        "selftest", help="check this gate after installing it: a pass/fail table",
        description="Checks, one line each: the config; the clock (against the gateway's, "
                    "else NTP); free disk; the gate's certificate; a real connection to the "
                    "broker with it; the models against their sha256; the camera gives frames; "
                    "every GPIO output toggled and every input read (watch the relay click, the "
                    "LED go red, green, blue, and listen for the buzzer); the roster keys and "
                    "roster. Stop the service first (sudo systemctl stop gerbang-device): the "
                    "camera and the pins have one user at a time. Exit code 0 only when no "
                    "check failed.",
        epilog="Example: sudo -u gerbang /opt/gerbang/venv/bin/gerbang-device selftest "
               "--config /etc/gerbang/device.toml")
    selftest.add_argument("--config", type=Path, required=True, help="device TOML config file")
    selftest.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    selftest.add_argument("--gateway-url", default="auto", metavar="URL",
                          help="read the reference clock from this gateway URL (default: "
                               "http://<broker host>:8080/healthz; 'off' to use NTP's status only)")
    selftest.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                          help="per network or camera step (default 5)")
    selftest.add_argument("--step", type=float, default=0.4, metavar="SECONDS",
                          help="how long each GPIO output stays on (default 0.4)")
    selftest.set_defaults(func=_cmd_selftest)

    verify = sub.add_parser("verify-models", help="check the model bundle's sha256 sums",
                            description="Check every model file against manifest.json.")
    verify.add_argument("--bundle", type=Path, default=None,
                        help="bundle directory (default: the one shipped in the package)")
    verify.set_defaults(func=_cmd_verify_models)

    ev = sub.add_parser(
        "eval", help="measure verification accuracy on a folder of <person>/<image>",
        description="Run this device's pipeline on every photo and report AUC, EER and TAR at "
                    "FAR 1e-2/1e-3/1e-4 with thresholds re-fitted on the set, and TAR and FAR "
                    "(95%% intervals) at the thresholds the bundle ships with. Default protocol: "
                    "every image against every other. --enroll K: the gate protocol (templates "
                    "from K photos, the rest are probes through the quality gate; refusals "
                    "reported as FTA); the shipped calibration used K = 3. Several folders are "
                    "pooled as one population, person ids <set>/<person>.")
    ev.add_argument("folders", type=Path, nargs="+", metavar="folder",
                    help="folder of <person>/<image> photos (several: pooled)")
    ev.add_argument("--enroll", type=int, default=None, metavar="K",
                    help="gate protocol with K enrollment photos per person")
    ev.add_argument("--groups", type=Path, default=None, metavar="FILE",
                    help="CSV (person,<attribute>...) or TOML ([people] person = label): "
                         "report per group and between groups; people not in it: 'unlabelled'")
    ev.add_argument("--calibration", type=Path, default=None, metavar="FILE",
                    help="judge at this calibration's thresholds (a manifest.json or its "
                         "`calibration` object) instead of the bundle's: check before shipping")
    ev.add_argument("--json", action="store_true", help="one JSON object instead of text")
    ev.add_argument("--limit-people", type=int, default=None,
                    help="use only the first N people (of each pooled folder)")
    ev.add_argument("--threads", type=int, default=2)
    ev.add_argument("--flip", action="store_true",
                    help="flip-average probes too (match.flip_average)")
    ev.add_argument("--calibrate", action="store_true",
                    help="write the measured thresholds into the bundle's manifest.json")
    ev.add_argument("--bundle", type=Path, default=None, help="model bundle directory")
    ev.set_defaults(func=_cmd_eval)

    bench = sub.add_parser(
        "bench", help="time every pipeline stage (p50/p95) at 1 and 2 threads",
        description="Speed benchmark on real face images; prints JSON. Run it on the Pi "
                    "itself for Pi figures.")
    bench.add_argument("--faces", type=Path, default=None,
                       help="folder of face images (default $GERBANG_DATA/faces/celeba)")
    bench.add_argument("--images", type=int, default=200, help="how many images to time")
    bench.add_argument("--runtime", default="auto",
                       choices=("auto", "ai-edge-litert", "tflite-runtime"))
    bench.add_argument("--service-rss", action="store_true",
                       help="also run the real device service and report its peak RSS")
    bench.add_argument("--json", action="store_true", help="compact JSON on one line")
    bench.add_argument("--bundle", type=Path, default=None, help="model bundle directory")
    bench.set_defaults(func=_cmd_bench)

    pad = sub.add_parser(
        "pad-eval", help="measure liveness: APCER / BPCER (ISO/IEC 30107-3)",
        description="Stills (default: the held-out gc535 test split; or --live DIR --spoof "
                    "DIR, a spoof folder's sub-folders being attack species): the passive "
                    "classifier alone, APCER and BPCER at the shipped threshold. --faces DIR: "
                    "the whole liveness step (random challenge, 3-D check, passive) on photo "
                    "attacks synthesized from one photo per person (still, moved, bent), "
                    "APCER per attack. --video DIR: real clips (bona_fide/, attack/) "
                    "labelled in device/tools/video_labels.toml, frame by frame through the "
                    "gate's liveness step: passive BPCER per frame, each labelled action "
                    "detected or not, the 3-D verdict on turns, the gate's decision, false "
                    "actions per minute (docs/liveness.md, \"On real video\").")
    pad.add_argument("--live", type=Path, help="folder of bona fide face images")
    pad.add_argument("--spoof", type=Path, help="folder of attack images (sub-folder = type)")
    pad.add_argument("--faces", type=Path, help="<person>/<image> folder to synthesize "
                                                "photo-attack sequences from")
    pad.add_argument("--video", type=Path, help="folder of real clips (bona_fide/, attack/): "
                                                "the whole liveness step frame by frame")
    pad.add_argument("--labels", type=Path, default=None,
                     help="--video: label file (default device/tools/video_labels.toml)")
    pad.add_argument("--clip", action="append", default=None,
                     help="--video: only clips whose path contains this (repeatable)")
    pad.add_argument("--max-frames", type=int, default=None,
                     help="--video: only the first N frames of each clip")
    pad.add_argument("--mirror", action="store_true",
                     help="--video: read the clips as mirrored views (a labelled turn to the "
                          "person's left is asked as turn_right)")
    pad.add_argument("--limit", type=int, default=None, help="at most N images/photos each")
    pad.add_argument("--fps", type=float, default=15.0, help="camera rate for sequences")
    pad.add_argument("--seed", type=int, default=0)
    pad.add_argument("--no-passive", action="store_true",
                     help="sequences, --video: judge without the passive classifier (--video "
                          "still scores every frame)")
    pad.add_argument("--threads", type=int, default=2)
    pad.add_argument("--json", action="store_true", help="one JSON object on one line")
    pad.add_argument("--bundle", type=Path, default=None, help="model bundle directory")
    pad.set_defaults(func=_cmd_pad_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; expected failures print one clear line and exit 2, never a traceback."""
    # A crash inside native code (TFLite, OpenCV) must leave a stack in the journal.
    faulthandler.enable()
    args = build_parser().parse_args(argv)
    setup_logging("gerbang-device", args.verbose)
    try:
        return args.func(args)
    except (ConfigError, ModelBundleError, RosterError, KeyFileError, FileNotFoundError) as exc:
        log.error("cannot start: %s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
