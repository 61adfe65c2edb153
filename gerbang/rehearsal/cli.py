"""The rehearsal's command line: ``python -m gerbang.rehearsal`` and ``gerbang-demo --scenario
exam-day`` take the same options (:func:`add_options`), run it and print the same result."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from gerbang.logs import setup_logging
from gerbang.rehearsal.run import run_rehearsal

#: The ``--json`` line: the summary's headline figures (``summary.json`` has every one).
JSON_KEYS = ("verdict", "attendance_matches", "lost", "duplicated", "undelivered",
             "proxies", "proxies_admitted", "strangers", "strangers_admitted",
             "photo_attacks", "photo_attacks_admitted", "present", "late", "absent",
             "proctor_admits", "events_stored", "faults", "faults_survived", "latency_ms",
             "peak_ram_mb", "wall_s", "window_s", "transport", "report", "workdir")


def add_options(day: argparse._ActionsContainer) -> None:
    """The rehearsal's own options, on a parser or an argument group (``--faces``, ``--json``
    and ``--workdir`` are the caller's: the demo has them too)."""
    day.add_argument("--rooms", type=int, default=20, help="exam rooms (default 20)")
    day.add_argument("--gates-per-room", type=int, default=2,
                     help="gates (device processes) per room (default 2)")
    day.add_argument("--applicants", type=int, default=None,
                     help="applicants (default: everyone in the faces folder with 4+ photos)")
    day.add_argument("--window-s", type=float, default=None,
                     help="the 30-minute doors-open window compressed into this many seconds "
                          "(default 300)")
    day.add_argument("--no-faults", action="store_true", help="rehearse without faults")
    day.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite",
                     help="the gateway's database (default sqlite)")
    day.add_argument("--postgres", default=os.environ.get(
        "GERBANG_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="with --backend postgresql: a server URL where a fresh database may be created "
             "(and dropped at the end); default $GERBANG_POSTGRES or postgres@127.0.0.1")
    day.add_argument("--camera-fps", type=float, default=None,
                     help="frame rate of each simulated camera (default 1)")
    day.add_argument("--seed", type=int, default=7, help="who does what, and when")
    day.add_argument("--plain-mqtt", action="store_true",
                     help="for debugging only: plain MQTT with the local broker config instead "
                          "of the provisioned centre's mutual TLS (the default)")


def build_parser() -> argparse.ArgumentParser:
    """``python -m gerbang.rehearsal``: the options of ``gerbang-demo --scenario exam-day``."""
    parser = argparse.ArgumentParser(
        prog="python -m gerbang.rehearsal",
        description="Rehearse a whole centre's exam morning on this machine under faults and "
                    "write a report (docs/rehearsal.md); the same as gerbang-demo --scenario "
                    "exam-day.")
    parser.add_argument("--scenario", choices=("exam-day",), default="exam-day",
                        help="the only one here (accepted so that gerbang-demo's command line "
                             "works unchanged)")
    parser.add_argument("--faces", type=Path,
                        help="folder of <person>/<image> photos; people with 4+ photos become "
                             "applicants (default: $GERBANG_DATA/faces/celeba)")
    parser.add_argument("--json", action="store_true", help="print a final JSON summary")
    parser.add_argument("--workdir", type=Path,
                        help="where to keep the run, the report and the enrollment cache")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    add_options(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Rehearse with the parsed options and print the result; exit 0 only when it passes."""
    if args.rooms < 1 or args.gates_per_room < 1:
        raise SystemExit("--rooms and --gates-per-room must be at least 1")
    result = run_rehearsal(args)
    if args.json:
        print(json.dumps({k: result[k] for k in JSON_KEYS}))
    else:
        equal = "equal to" if result["attendance_matches"] else "DIFFERENT from"
        print(f"{result['verdict']}: attendance {equal} the ground truth in every room; "
              f"{result['lost']} lost, {result['duplicated']} duplicated; "
              f"{result['proxies_admitted']}/{result['proxies']} proxies admitted; "
              f"{result['faults_survived']}/{len(result['faults'])} faults survived; "
              f"{result['wall_s'] / 60:.1f} min. Report: {result['report']}")
    return 0 if result["verdict"] == "PASS" else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m gerbang.rehearsal``."""
    args = build_parser().parse_args(argv)
    setup_logging("gerbang-rehearsal", args.verbose)
    return run(args)
