"""Room rosters and their keys: ``roster`` (enroll from photos), ``roster-sign``, ``roster-key
create`` / ``export``, and ``cohort`` (the session-wide score cohort)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger("provision")


def _cmd_roster(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from device.decide.roster import save_roster
    from device.infer.bundle import calibrated_threshold, load_bundle
    from device.infer.pipeline import FacePipeline
    from provisioning.enroll import build_roster, face_folders
    from provisioning.signing import load_roster_keys, signed_path_for, write_signed_roster

    keys = load_roster_keys(args.keys) if args.keys else None  # fail before the slow part
    calibration, reference = None, None
    if args.calibration:
        from provisioning.calibrate import load_calibration

        calibration, reference = load_calibration(args.calibration)
    if args.signed_out and not keys:
        log.error("--signed-out needs --keys (the centre's roster key folder)")
        return 2
    applicants = {a: photos[: args.photos] for a, photos in face_folders(args.photos_dir).items()}
    names: dict[str, str] = {}
    no_photos: list[str] = []
    if args.csv:
        # The session roster (the same CSV the gateway imports) says who sits in this room and
        # their names (shown on the applicant screen when admitted).
        from gateway.roster_import import parse_roster_csv

        parsed = parse_roster_csv(args.csv.read_bytes(), args.session)
        if not parsed.ok:
            for error in parsed.errors[:50]:
                print(f"{args.csv}:{error['line']}: {error['field'] or '-'}: {error['error']}",
                      file=sys.stderr)
            log.error("roster CSV %s has %d error(s); nothing enrolled", args.csv,
                      len(parsed.errors))
            return 2
        in_room = {e["applicant_id"]: e["name"] for e in parsed.entries if e["room"] == args.room}
        names = in_room
        no_photos = sorted(a for a in in_room if a not in applicants)
        applicants = {a: photos for a, photos in applicants.items() if a in in_room}
    if not applicants:
        log.error("no <applicant>/<photo> folders with images under %s%s", args.photos_dir,
                  f" for room {args.room} of {args.csv}" if args.csv else "")
        return 2
    bundle = load_bundle(args.bundle)
    pipeline = FacePipeline.from_bundle(bundle, threads=args.threads)
    roster, report = build_roster(pipeline, applicants, args.session, args.room, args.version,
                                  names=names,
                                  duplicate_threshold=calibrated_threshold(bundle, "cosine", 1e-4),
                                  keep_photos=args.embeddings_out is not None)
    report.failed.extend(no_photos)
    roster = replace(roster, embedder_sha256=bundle.hashes()["embedder"])
    guard_report = None
    if calibration is not None:
        from provisioning.cli.calibrate import with_calibration

        roster, guard_report = with_calibration(
            roster, calibration, reference, calibrated_threshold(bundle, "cosine", 1e-4))
    if args.embeddings_out:
        from provisioning.calibrate import save_photo_embeddings

        save_photo_embeddings(args.embeddings_out, report.photo_embeddings,
                              bundle.hashes()["embedder"])
    save_roster(roster, args.out)
    signed = None
    if keys:
        signed = write_signed_roster(args.signed_out or signed_path_for(args.out), roster, keys)
    for applicant, photo, why in report.rejected_photos:
        print(f"photo rejected  {applicant:>16s}  {Path(photo).name}: {why}", file=sys.stderr)
    for applicant in report.failed:
        why = ("no photo folder" if applicant in no_photos else "no usable photo")
        print(f"NOT ENROLLED    {applicant:>16s}  {why}: ask for new photos", file=sys.stderr)
    for first, second, score in report.duplicates:
        print(f"SAME FACE?      {first} and {second} (similarity {score:.3f}): check both "
              "registrations before the exam", file=sys.stderr)
    print(json.dumps({"roster": str(args.out), "signed": str(signed) if signed else None,
                      "session": args.session, "room": args.room,
                      "enrolled": len(report.enrolled), "failed": len(report.failed),
                      "rejected_photos": len(report.rejected_photos),
                      "duplicates": report.duplicates,
                      "calibration": None if roster.calibration is None else {
                          "source": roster.calibration.source, "room_check": guard_report}}))
    return 0 if not (report.failed or report.duplicates) else 1


def _cmd_cohort(args: argparse.Namespace) -> int:
    from dataclasses import replace

    import numpy as np

    from device.decide.roster import load_roster, save_roster
    from device.infer.match import MIN_COHORT

    rosters = {path: load_roster(path) for path in args.rosters}
    sessions = {r.session for r in rosters.values()}
    if len(sessions) != 1:
        log.error("rosters belong to different sessions %s; a cohort is one session", sessions)
        return 2
    cohort = np.stack([e.template for r in rosters.values() for e in r.entries])
    if len(cohort) < MIN_COHORT:
        log.warning("only %d applicants in the session: below %d the gates keep plain cosine "
                    "scores (cohort statistics would be too noisy)", len(cohort), MIN_COHORT)
    keys = None
    if args.keys:
        from provisioning.signing import load_roster_keys, signed_path_for, write_signed_roster

        keys = load_roster_keys(args.keys)
        unknown = [str(p) for p, r in rosters.items() if not r.embedder_sha256]
        if unknown:  # check before any file changes
            log.error("%s do not record which embedder made their templates; run cohort "
                      "without --keys, then `roster-sign --bundle DIR`", ", ".join(unknown))
            return 2
    signed = []
    for path, roster in rosters.items():
        updated = replace(roster, cohort=cohort, version=roster.version + 1)
        save_roster(updated, path)
        if keys:
            signed.append(str(write_signed_roster(signed_path_for(path), updated, keys)))
    print(json.dumps({"session": sessions.pop(), "cohort": len(cohort),
                      "rosters": [str(p) for p in rosters], "signed": signed}))
    return 0


def _cmd_roster_sign(args: argparse.Namespace) -> int:
    from device.decide.roster import load_roster
    from device.infer.bundle import calibrated_threshold, load_bundle
    from provisioning.signing import load_roster_keys, signed_path_for, write_signed_roster

    keys = load_roster_keys(args.keys)
    bundle = load_bundle(args.bundle)
    embedder = bundle.hashes()["embedder"] if args.bundle else None
    calibration, reference = None, None
    if args.calibration:
        from provisioning.calibrate import load_calibration

        calibration, reference = load_calibration(args.calibration)
    rosters = {path: load_roster(path) for path in args.rosters}
    checks: dict[Path, dict] = {}
    if calibration is not None:  # every roster checked before any file changes
        from dataclasses import replace

        from device.decide.roster import save_roster
        from provisioning.cli.calibrate import with_calibration

        for path, roster in rosters.items():
            if embedder and not roster.embedder_sha256:
                roster = replace(roster, embedder_sha256=embedder)
            updated, checks[path] = with_calibration(
                roster, calibration, reference, calibrated_threshold(bundle, "cosine", 1e-4))
            if updated.calibration != roster.calibration:
                # A gate keeps the highest version it has seen: new thresholds, new version.
                updated = replace(updated, version=roster.version + 1)
            rosters[path] = updated
        for path, roster in rosters.items():
            save_roster(roster, path)
    written = []
    for path, roster in rosters.items():
        out = write_signed_roster(signed_path_for(path), roster, keys, embedder)
        written.append({"roster": str(path), "signed": str(out), "session": roster.session,
                        "room": roster.room, "version": roster.version,
                        "applicants": len(roster.entries),
                        "calibration": None if roster.calibration is None
                        else roster.calibration.source,
                        "room_check": checks.get(path)})
    print(json.dumps({"centre": keys.centre, "signing_key_id": keys.key_id,
                      "signed": written}))
    return 0


def _cmd_roster_key_create(args: argparse.Namespace) -> int:
    from provisioning.signing import create_roster_keys

    keys = create_roster_keys(args.keys, args.centre)
    print(json.dumps({"centre": keys.centre, "keys": str(keys.directory),
                      "signing_key_id": keys.key_id}))
    print(f"Roster keys for centre {keys.centre} are in {keys.directory}. Back this folder up "
          "offline: without it no new roster can be signed for the gates that trust key "
          f"{keys.key_id}.", file=sys.stderr)
    return 0


def _cmd_roster_key_export(args: argparse.Namespace) -> int:
    from provisioning.signing import export_device_keys, load_roster_keys

    keys = load_roster_keys(args.keys)
    files = export_device_keys(keys, args.room, args.out)
    print(json.dumps({"centre": keys.centre, "room": args.room, "signing_key_id": keys.key_id,
                      **{name: str(path) for name, path in files.items()}}))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """The ``roster``, ``roster-sign``, ``roster-key`` and ``cohort`` commands."""
    roster = sub.add_parser(
        "roster", help="enroll applicants from their photos into a room roster",
        description="Build a room roster: one template per applicant from their registration "
                    "photos, made with the gates' own models so the door can compare. Photos "
                    "that cannot be used are listed with the reason; applicants with no usable "
                    "photo are NOT enrolled (exit code 1) and need new photos.")
    roster.add_argument("--csv", type=Path,
                        help="the session roster CSV (as imported by the gateway: no_peserta/"
                             "applicant_id, nama/name, ruang/room, kursi/seat): enroll only "
                             "this room's applicants, with their names; applicants of the room "
                             "without photos are listed as NOT ENROLLED")
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
    roster.add_argument("--keys", type=Path, metavar="DIR",
                        help="the centre's roster key folder (from `roster-key create`): also "
                             "write the signed, encrypted roster for the gates")
    roster.add_argument("--signed-out", type=Path, metavar="FILE",
                        help="where to write the signed roster (default: next to --out, ending "
                             "in .signed, e.g. R01.roster.signed)")
    roster.add_argument("--calibration", type=Path, metavar="FILE",
                        help="calibration file from `calibrate`: the room's gates use its "
                             "thresholds (checked against the room's own pairs: a room whose "
                             "faces are more alike gets a stricter room guard)")
    roster.add_argument("--embeddings-out", type=Path, metavar="FILE",
                        help="also keep each photo's embedding (e.g. R01.photos.npz, mode "
                             "0600) for `calibrate --embeddings`; stays on this machine, never "
                             "on a gate")
    roster.set_defaults(func=_cmd_roster)

    sign = sub.add_parser(
        "roster-sign", help="sign room rosters for the gates (after editing or `cohort`)",
        description="Make the signed, encrypted copy of each roster file that the gates accept: "
                    "R01.roster.json becomes R01.roster.signed next to it. The gates check the "
                    "signature, the centre, session and room, and that the templates were made "
                    "with the model they run; the names and templates inside can be read only by "
                    "the gates of that room. The plain .json files stay on this machine: never "
                    "copy them to a gate.")
    sign.add_argument("rosters", type=Path, nargs="+", help="roster files (.json) to sign")
    sign.add_argument("--keys", type=Path, metavar="DIR", required=True,
                      help="the centre's roster key folder (from `roster-key create`)")
    sign.add_argument("--bundle", type=Path,
                      help="model bundle that made the templates, for rosters made before "
                           "rosters recorded it (default: the model recorded in the roster)")
    sign.add_argument("--calibration", type=Path, metavar="FILE",
                      help="calibration file from `calibrate`: written into each roster (and "
                           "its .json, version + 1) with the room check / room guard, then "
                           "signed")
    sign.set_defaults(func=_cmd_roster_sign)

    rkey = sub.add_parser(
        "roster-key", help="make the centre's roster keys, and export a gate's share of them",
        description="Roster keys protect the applicant lists: the centre's signing key proves a "
                    "roster comes from you, and each room's transport key keeps the names and "
                    "templates unreadable on the way to the gates. Make them once per centre "
                    "(`create`), then give every gate its share (`export`). The key folder "
                    "stays on this machine, with mode 0700; back it up offline.")
    ksub = rkey.add_subparsers(dest="roster_key_command", required=True, metavar="ACTION")
    kcreate = ksub.add_parser(
        "create", help="make a centre's roster keys (once per centre)",
        description="Writes roster-signing.key (the secret that signs rosters), "
                    "roster-signing.pub (what gates trust), roster-transport-master.key (the "
                    "secret each room's key is made from) and roster-keys.json into the folder. "
                    "Refuses to overwrite existing keys: gates trust the current ones, and "
                    "would refuse rosters signed with new ones until they get new keys.")
    kcreate.add_argument("--centre", required=True, help="centre id, e.g. c01")
    kcreate.add_argument("--keys", type=Path, metavar="DIR", required=True,
                         help="folder to create the keys in, e.g. keys/c01")
    kcreate.set_defaults(func=_cmd_roster_key_create)
    kexport = ksub.add_parser(
        "export", help="write one gate's roster keys into its bundle folder",
        description="Writes into the gate's folder: roster-signing.pub (to check rosters), "
                    "roster-transport.key (opens rosters for its room only) and storage.key "
                    "(the gate's own key for the templates it keeps; made once, never "
                    "replaced). Use one folder per gate. On the Pi the key files go to "
                    "/etc/gerbang/keys/, owner the gerbang user, mode 0600.")
    kexport.add_argument("--keys", type=Path, metavar="DIR", required=True,
                         help="the centre's roster key folder")
    kexport.add_argument("--room", required=True, help="room the gate guards, e.g. R01")
    kexport.add_argument("--out", type=Path, required=True, metavar="DIR",
                         help="the gate's bundle folder, e.g. bundles/c01-r01-a")
    kexport.set_defaults(func=_cmd_roster_key_export)

    cohort = sub.add_parser(
        "cohort", help="give a session's room rosters the session-wide score cohort",
        description="Adds every applicant template of the session (all rooms given) to each "
                    "room roster as its cohort, and bumps each roster's version. Gates then "
                    "normalise scores against it (T-norm), which is stricter on faces that "
                    "resemble many people. Needs at least 100 applicants in the session.")
    cohort.add_argument("rosters", type=Path, nargs="+", help="the session's room roster files")
    cohort.add_argument("--keys", type=Path, metavar="DIR",
                        help="the centre's roster key folder: also write each roster's signed "
                             "copy (.signed), since the version changed")
    cohort.set_defaults(func=_cmd_cohort)
