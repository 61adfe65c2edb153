"""``calibrate``: thresholds from the applicants' own registration photos (issue 17), and the
step of ``roster`` / ``roster-sign --calibration`` that puts them (with the room guard) into a
room roster."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from device.decide.calibration import Calibration
    from device.decide.roster import Roster

log = logging.getLogger("provision")


def with_calibration(roster: Roster, calibration: Calibration,
                     reference: dict[str, Any] | None,
                     duplicate_threshold: float | None) -> tuple[Roster, dict[str, Any]]:
    """``roster`` carrying ``calibration``, with a room guard when the room's own impostor tail
    is heavier than the calibration population's (``reference``, from the calibration file;
    warned, naming the room)."""
    from provisioning.calibrate import CalibrationRefused
    from provisioning.calibration_check import room_guard

    if roster.embedder_sha256 and roster.embedder_sha256 != calibration.embedder_sha256:
        raise CalibrationRefused(
            f"calibration {calibration.source} was measured with embedder "
            f"{calibration.embedder_sha256[:16]}…, roster {roster.room}'s templates with "
            f"{roster.embedder_sha256[:16]}…: calibrate with the same model bundle")
    guard, report = room_guard(roster, calibration.with_guard(None), reference,
                               duplicate_threshold)
    if "skipped" in report:
        log.warning("room %s not checked against the calibration: %s", roster.room,
                    report["skipped"])
    if guard is not None:
        stricter = ", ".join(f"{k} {getattr(guard, k):.4f}" for k in ("cosine", "tnorm")
                             if getattr(guard, k) is not None)
        log.warning("ROOM GUARD %s: its own applicants' faces are more alike than the "
                    "calibration promised (%s); its gates will use at least %s",
                    roster.room, guard.reason, stricter)
    return replace(roster, calibration=calibration.with_guard(guard)), report


def _embed(folders: list[Path], bundle_dir: Path | None, threads: int,
           ) -> tuple[dict[str, np.ndarray], str]:
    """Photo embeddings of every applicant folder under ``folders``, with the bundle's models."""
    import numpy as np

    from device.infer.bundle import load_bundle
    from device.infer.pipeline import FacePipeline
    from gerbang.progress import progress
    from provisioning.enroll import embed_photos, face_folders

    applicants: dict[str, list[Path]] = {}
    for folder in folders:
        for applicant, photos in face_folders(folder).items():
            if applicant in applicants:
                raise RuntimeError(f"applicant {applicant} has photo folders in two places")
            applicants[applicant] = photos
    bundle = load_bundle(bundle_dir)
    pipeline = FacePipeline.from_bundle(bundle, threads=threads)
    people = {}
    for applicant, photos in progress(list(applicants.items()), label="embedding photos"):
        vectors, _ = embed_photos(pipeline, photos)
        if vectors:
            people[applicant] = np.stack(vectors).astype(np.float32)
    return people, bundle.hashes()["embedder"]


def _load_people(args: argparse.Namespace) -> tuple[dict[str, np.ndarray], str]:
    from provisioning.calibrate import CalibrationRefused, load_photo_embeddings

    people: dict[str, np.ndarray] = {}
    embedders = set()
    for path in args.embeddings or []:
        found, embedder = load_photo_embeddings(path)
        clash = sorted(set(found) & set(people))
        if clash:
            raise CalibrationRefused(f"{path}: applicant {clash[0]} is in two embedding files")
        people.update(found)
        embedders.add(embedder)
    if args.photos_dir:
        found, embedder = _embed(args.photos_dir, args.bundle, args.threads)
        people.update(found)
        embedders.add(embedder)
    if len(embedders) != 1:
        raise CalibrationRefused("give --photos-dir or --embeddings (made with one model "
                                 f"bundle; found {len(embedders)} embedders)")
    return people, embedders.pop()


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from device.infer.bundle import load_bundle
    from provisioning.calibrate import (
        build_calibration,
        duplicate_pairs,
        pair_scores,
        refuse_looser,
        save_calibration,
        save_photo_embeddings,
        template_pair_reference,
    )
    from provisioning.calibration_check import measure_at

    bundle = load_bundle(args.bundle)
    shipped = bundle.manifest.get("calibration", {}).get("thresholds", {})
    people, embedder = _load_people(args)
    if embedder != bundle.hashes()["embedder"]:
        log.error("the embeddings were made with embedder %s…, the bundle %s runs %s…",
                  embedder[:16], bundle.directory, bundle.hashes()["embedder"][:16])
        return 2
    if args.embeddings_out:
        save_photo_embeddings(args.embeddings_out, people, embedder)
    test_people = None
    if args.split_half:
        ids = sorted(people)
        test_people = {a: people[a] for a in ids[1::2]}
        people = {a: people[a] for a in ids[0::2]}
    elif args.test_dir:
        test_people, _ = _embed([args.test_dir], args.bundle, args.threads)
        overlap = sorted(set(test_people) & set(people))
        if overlap:
            log.warning("%d test people share an id with the calibration people (e.g. %s): "
                        "the test is not on disjoint people", len(overlap), overlap[0])
    duplicates = duplicate_pairs(people, float(shipped.get("cosine", {}).get("1e-4", 1.0)),
                                 args.photos)
    for first, second, score in duplicates:
        print(f"SAME FACE?      {first} and {second} (similarity {score:.3f}): "
              f"{'kept (--include-flagged)' if args.include_flagged else 'left out of'} the "
              "impostor pairs", file=sys.stderr)
    excluded = [] if args.include_flagged else [(a, b) for a, b, _ in duplicates]
    scores = pair_scores(people, args.photos, exclude=excluded)
    calibration, report = build_calibration(scores, args.source, embedder)
    report["looser_than_shipped"] = refuse_looser(calibration, shipped,
                                                  args.allow_looser or not args.out)
    for kind, per_far in report["thresholds"].items():
        for key, fit in per_far.items():
            if not fit["supported"]:
                print(f"{kind:6s} FAR {key}: not fitted ({fit['reason']})", file=sys.stderr)
                continue
            print(f"{kind:6s} FAR {key}: threshold {fit['threshold']:.4f} (95% upper bound "
                  f"{fit['upper_ci_95']:.4f}, shipped {shipped.get(kind, {}).get(key, '-')}), "
                  f"{fit['impostors_above']} of {report['impostor_pairs']} impostor pairs "
                  f"above; expected TAR {fit['expected_tar']:.4f} {fit['tar_ci_95']}",
                  file=sys.stderr)
    result: dict[str, Any] = {"calibration": calibration.to_dict(), "report": report}
    if args.out:
        # flagged pairs always left out here: the room check leaves them out too
        reference = template_pair_reference(people, args.photos,
                                            [(a, b) for a, b, _ in duplicates])
        if reference is None:
            log.warning("too few applicants for the room check (%d template pairs; 5,000 "
                        "needed): rooms signed with this calibration get no room guard",
                        len(people) * (len(people) - 1) // 2)
        save_calibration(calibration, report, args.out, reference)
        result["out"] = str(args.out)
    if test_people is not None:
        test, lines = measure_at(calibration, test_people, args.photos)
        result["test"] = test
        for line in lines:
            print(("held-out " + line), file=sys.stderr)
    print(json.dumps(result))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """The ``calibrate`` command."""
    cal = sub.add_parser(
        "calibrate", help="thresholds from the applicants' own photos, for the signed rosters",
        description="Measure the match thresholds on the round's (or centre's) own "
                    "registration photos: every applicant's photos against every other "
                    "applicant's template (pairs the duplicate check flags left out) give the "
                    "impostor scores, each applicant's held-out photo against their own "
                    "template the genuine ones; per target FAR (1e-2, 1e-3, 1e-4) the threshold "
                    "with its 95%% upper confidence bound and the expected TAR, for cosine and "
                    "T-norm scores (cohort: the same applicants). Writes a calibration file "
                    "that `roster --calibration` / `roster-sign --calibration` put into the "
                    "signed rosters; refuses thresholds looser than the model bundle's unless "
                    "--allow-looser. docs/provisioning.md, \"Thresholds from the round's own "
                    "photos\".")
    cal.add_argument("--photos-dir", type=Path, action="append",
                     help="folder with one sub-folder of photos per applicant id (repeat for "
                          "several rooms)")
    cal.add_argument("--embeddings", type=Path, nargs="+", metavar="FILE",
                     help="photo-embedding files written by `roster --embeddings-out` (no "
                          "photos read again)")
    cal.add_argument("--source", required=True,
                     help="what the calibration was measured on, e.g. \"roster:CASN-2026 "
                          "centre c01\" (the gate logs it)")
    cal.add_argument("--out", type=Path, metavar="FILE",
                     help="calibration file to write, e.g. calibration.json (without it: only "
                          "the report)")
    cal.add_argument("--photos", type=int, default=3,
                     help="photos per template (default 3, as `roster`); with more photos the "
                          "others are probes, with as many or fewer each is held out in turn")
    cal.add_argument("--allow-looser", action="store_true",
                     help="write thresholds even where they are looser than the model bundle's")
    cal.add_argument("--include-flagged", action="store_true",
                     help="keep the pairs the duplicate check flags (a human checked them: "
                          "different people). Leaving them out removes the most similar "
                          "strangers, which makes the thresholds a little looser")
    cal.add_argument("--embeddings-out", type=Path, metavar="FILE",
                     help="also keep the photo embeddings computed from --photos-dir (mode "
                          "0600; the technician's machine only)")
    cal.add_argument("--test-dir", type=Path, metavar="DIR",
                     help="measure FAR and TAR at the new thresholds on these other people "
                          "(gate protocol); a MISMATCH line when the target lies outside the "
                          "measured interval")
    cal.add_argument("--split-half", action="store_true",
                     help="calibrate on every other applicant (sorted ids) and measure on the "
                          "rest (disjoint people)")
    cal.add_argument("--bundle", type=Path, help="model bundle dir (default: shipped one)")
    cal.add_argument("--threads", type=int, default=2, help="CPU threads for the models")
    cal.set_defaults(func=_cmd_calibrate)
