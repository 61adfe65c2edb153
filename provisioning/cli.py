"""``gerbang-provision``: the technician's tool (models, rosters, demo faces)."""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path

from device.infer.bundle import ModelBundleError
from device.roster import RosterError
from gerbang.logs import setup_logging

log = logging.getLogger("provision")

BUILD_SCRIPT = Path(__file__).with_name("build_models.py")


def _cmd_roster(args: argparse.Namespace) -> int:
    from device.infer.bundle import calibrated_threshold, load_bundle
    from device.infer.pipeline import FacePipeline
    from device.roster import save_roster
    from provisioning.enroll import build_roster, face_folders

    applicants = {a: photos[: args.photos] for a, photos in face_folders(args.photos_dir).items()}
    if not applicants:
        log.error("no <applicant>/<photo> folders with images under %s", args.photos_dir)
        return 2
    bundle = load_bundle(args.bundle)
    pipeline = FacePipeline.from_bundle(bundle, threads=args.threads)
    roster, report = build_roster(pipeline, applicants, args.session, args.room, args.version,
                                  duplicate_threshold=calibrated_threshold(bundle, "cosine", 1e-4))
    save_roster(roster, args.out)
    for applicant, photo, why in report.rejected_photos:
        print(f"photo rejected  {applicant:>16s}  {Path(photo).name}: {why}", file=sys.stderr)
    for applicant in report.failed:
        print(f"NOT ENROLLED    {applicant:>16s}  no usable photo: ask for new photos",
              file=sys.stderr)
    for first, second, score in report.duplicates:
        print(f"SAME FACE?      {first} and {second} (similarity {score:.3f}): check both "
              "registrations before the exam", file=sys.stderr)
    print(json.dumps({"roster": str(args.out), "session": args.session, "room": args.room,
                      "enrolled": len(report.enrolled), "failed": len(report.failed),
                      "rejected_photos": len(report.rejected_photos),
                      "duplicates": report.duplicates}))
    return 0 if not (report.failed or report.duplicates) else 1


def _cmd_cohort(args: argparse.Namespace) -> int:
    from dataclasses import replace

    import numpy as np

    from device.infer.match import MIN_COHORT
    from device.roster import load_roster, save_roster

    rosters = {path: load_roster(path) for path in args.rosters}
    sessions = {r.session for r in rosters.values()}
    if len(sessions) != 1:
        log.error("rosters belong to different sessions %s; a cohort is one session", sessions)
        return 2
    cohort = np.stack([e.template for r in rosters.values() for e in r.entries])
    if len(cohort) < MIN_COHORT:
        log.warning("only %d applicants in the session: below %d the gates keep plain cosine "
                    "scores (cohort statistics would be too noisy)", len(cohort), MIN_COHORT)
    for path, roster in rosters.items():
        save_roster(replace(roster, cohort=cohort, version=roster.version + 1), path)
    print(json.dumps({"session": sessions.pop(), "cohort": len(cohort),
                      "rosters": [str(p) for p in rosters]}))
    return 0


def _cmd_models_verify(args: argparse.Namespace) -> int:
    from device.cli import verify_models

    return verify_models(args.bundle)


def _cmd_models_build(args: argparse.Namespace) -> int:
    return subprocess.call([sys.executable, str(BUILD_SCRIPT), *args.build_args])


def _cmd_demo_faces(args: argparse.Namespace) -> int:
    from device.infer.bundle import load_bundle
    from device.infer.pipeline import FacePipeline
    from provisioning.demo_faces import build_demo_faces

    out = build_demo_faces(args.out, FacePipeline.from_bundle(load_bundle(), threads=2))
    print(out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface; help texts are written for the technician on site."""
    parser = argparse.ArgumentParser(
        prog="gerbang-provision",
        description="Gerbang technician tool: check and build the face-model bundle, and enroll "
                    "applicants into room rosters for the gates.",
        epilog="Typical use before an exam session: `gerbang-provision roster --photos-dir "
               "photos/R01 --session S1 --room R01 --out R01.roster.json`, then copy the roster "
               "to the room's gates as <data_dir>/roster.json.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    roster = sub.add_parser(
        "roster", help="enroll applicants from their photos into a room roster",
        description="Build a room roster: one template per applicant from their registration "
                    "photos, made with the gates' own models so the door can compare. Photos "
                    "that cannot be used are listed with the reason; applicants with no usable "
                    "photo are NOT enrolled (exit code 1) and need new photos.")
    roster.add_argument("--photos-dir", type=Path, required=True,
                        help="folder with one sub-folder per applicant id holding their photos")
    roster.add_argument("--session", required=True, help="exam session id, e.g. S1")
    roster.add_argument("--room", required=True, help="room id, e.g. R01")
    roster.add_argument("--out", type=Path, required=True, help="roster file to write (mode 0600)")
    roster.add_argument("--photos", type=int, default=3,
                        help="photos per applicant to use (default 3, as CASN registration)")
    roster.add_argument("--version", type=int, default=1,
                        help="roster version; a gate keeps the highest it has seen")
    roster.add_argument("--bundle", type=Path, help="model bundle dir (default: shipped one)")
    roster.add_argument("--threads", type=int, default=2, help="CPU threads for the models")
    roster.set_defaults(func=_cmd_roster)

    cohort = sub.add_parser(
        "cohort", help="give a session's room rosters the session-wide score cohort",
        description="Adds every applicant template of the session (all rooms given) to each "
                    "room roster as its cohort, and bumps each roster's version. Gates then "
                    "normalise scores against it (T-norm), which is stricter on faces that "
                    "resemble many people. Needs at least 100 applicants in the session.")
    cohort.add_argument("rosters", type=Path, nargs="+", help="the session's room roster files")
    cohort.set_defaults(func=_cmd_cohort)

    models = sub.add_parser("models", help="check or rebuild the face-model bundle",
                            description="The model bundle is what the gates run; every file is "
                                        "pinned by sha256 in manifest.json.")
    msub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    verify = msub.add_parser("verify", help="check every model file against manifest.json")
    verify.add_argument("--bundle", type=Path, help="bundle dir (default: shipped one)")
    verify.set_defaults(func=_cmd_models_verify)
    build = msub.add_parser(
        "build", help="rebuild the bundle from pinned registry packages (needs TensorFlow)",
        description="Runs provisioning/build_models.py; arguments after `build` are passed on "
                    "(see `gerbang-provision models build -- --help`).")
    build.add_argument("build_args", nargs=argparse.REMAINDER)
    build.set_defaults(func=_cmd_models_build)

    faces = sub.add_parser(
        "demo-faces", help="build a small demo face set from an npm package's photos",
        description="For demos on a machine without face data: crops every face in the group "
                    "photos of the npm package @vladmandic/face-api into <person>/<image>.")
    faces.add_argument("--out", type=Path, required=True, help="folder to write")
    faces.set_defaults(func=_cmd_demo_faces)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; expected failures print one clear line and exit 2."""
    args = build_parser().parse_args(argv)
    setup_logging("gerbang-provision", args.verbose)
    try:
        return args.func(args)
    except (ModelBundleError, RosterError, FileNotFoundError, RuntimeError) as exc:
        log.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
