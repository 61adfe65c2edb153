"""``gerbang-provision``: the technician's tool (centre PKI, broker config, gate bundles and
installs, rosters and roster keys, models, demo faces)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from device.decide.roster import RosterError
from device.infer.bundle import ModelBundleError
from device.manage.keyfile import KeyFileError
from gerbang.config import ConfigError
from gerbang.logs import setup_logging
from provisioning.bundle import ProvisionError
from provisioning.pki import PKIError

if TYPE_CHECKING:
    from gerbang.config import BrokerConfig
    from provisioning.bundle import Centre
    from provisioning.pki import CentreCA

log = logging.getLogger("provision")

BUILD_SCRIPT = Path(__file__).resolve().parent.parent / "build_models.py"


def _cmd_roster(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from device.decide.roster import save_roster
    from device.infer.bundle import calibrated_threshold, load_bundle
    from device.infer.pipeline import FacePipeline
    from provisioning.enroll import build_roster, face_folders
    from provisioning.signing import load_roster_keys, signed_path_for, write_signed_roster

    keys = load_roster_keys(args.keys) if args.keys else None  # fail before the slow part
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
                                  duplicate_threshold=calibrated_threshold(bundle, "cosine", 1e-4))
    report.failed.extend(no_photos)
    roster = replace(roster, embedder_sha256=bundle.hashes()["embedder"])
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
                      "duplicates": report.duplicates}))
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
    from device.infer.bundle import load_bundle
    from provisioning.signing import load_roster_keys, signed_path_for, write_signed_roster

    keys = load_roster_keys(args.keys)
    embedder = load_bundle(args.bundle).hashes()["embedder"] if args.bundle else None
    written = []
    for path in args.rosters:
        roster = load_roster(path)
        out = write_signed_roster(signed_path_for(path), roster, keys, embedder)
        written.append({"roster": str(path), "signed": str(out), "session": roster.session,
                        "room": roster.room, "version": roster.version,
                        "applicants": len(roster.entries)})
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


def _cmd_models_verify(args: argparse.Namespace) -> int:
    from device.cli import verify_models

    return verify_models(args.bundle)


def _cmd_models_build(args: argparse.Namespace) -> int:
    return subprocess.call([sys.executable, str(BUILD_SCRIPT), *args.build_args])


def _cmd_models_sign(args: argparse.Namespace) -> int:
    from device.infer.bundle import DEFAULT_BUNDLE_DIR, calibrated_threshold, load_bundle
    from device.manage.model_update import SelfCheckFailed, self_check
    from provisioning.model_signing import write_signed_model_bundle
    from provisioning.signing import load_roster_keys

    keys = load_roster_keys(args.keys)
    bundle_dir = args.bundle or DEFAULT_BUNDLE_DIR
    try:  # what every gate will run before switching: refuse to sign what they would refuse
        checked = self_check(bundle_dir, threads=args.threads)
    except SelfCheckFailed as exc:
        log.error("not signed: %s fails the gates' self-check: %s", bundle_dir, exc)
        return 2
    bundle = load_bundle(bundle_dir)
    for kind in ("cosine", "tnorm"):  # gates without match.threshold need every rate they allow
        for far in (1e-2, 1e-3, 1e-4):
            calibrated_threshold(bundle, kind, far)  # ModelBundleError names what is missing
    signed = write_signed_model_bundle(args.out, keys, bundle_dir, args.version)
    print(json.dumps({"signed": str(signed.path), "bundle_version": signed.bundle_version,
                      "bytes": signed.size, "sha256": signed.sha256,
                      "files": len(signed.files), "embedder_sha256": signed.embedder_sha256,
                      "centre": keys.centre, "signing_key_id": signed.signer,
                      "self_check": checked}))
    print(f"Signed model bundle {signed.bundle_version} ({signed.size / 1e6:.1f} MB) for the "
          f"gates of centre {keys.centre}: push it to each gate (`models` command), or copy it "
          "into the gate's /var/lib/gerbang/incoming/ (name ending in .models.signed) and "
          "restart the gate service.", file=sys.stderr)
    return 0


def _cmd_demo_faces(args: argparse.Namespace) -> int:
    from device.infer.bundle import load_bundle
    from device.infer.pipeline import FacePipeline
    from provisioning.demo_faces import build_demo_faces

    out = build_demo_faces(args.out, FacePipeline.from_bundle(load_bundle(), threads=2))
    print(out)
    return 0


# ---------------------------------------------------------------------------------------------
# centre PKI, broker, device bundles (the `ca`, `device`, `gateway-cert`, `revoke`,
# `broker-config`, `bundle` and `install` commands)


def _centre_dir(args: argparse.Namespace) -> Path:
    return Path(args.centre_dir)


def _ca_passphrase(prompt: str, *, confirm: bool = False) -> bytes:
    """The CA key's passphrase from $GERBANG_CA_PASSPHRASE, else asked on the terminal."""
    import getpass

    from provisioning.bundle import ProvisionError

    if os.environ.get("GERBANG_CA_PASSPHRASE"):
        return os.environ["GERBANG_CA_PASSPHRASE"].encode()
    if not sys.stdin.isatty():
        raise ProvisionError("the CA key is passphrase-protected: set GERBANG_CA_PASSPHRASE or "
                             "run this in a terminal")
    first = getpass.getpass(prompt)
    if confirm and getpass.getpass("Again: ") != first:
        raise ProvisionError("the two passphrases differ; nothing was created")
    if not first:
        raise ProvisionError("empty passphrase")
    return first.encode()


def _load_centre_and_ca(args: argparse.Namespace) -> tuple[Centre, CentreCA]:
    """The centre folder and its CA (asking for the CA passphrase when the key has one)."""
    from provisioning import pki
    from provisioning.bundle import check_ca_matches, load_centre

    centre = load_centre(_centre_dir(args))
    key = centre.ca_dir / pki.CA_KEY
    passphrase = None
    if key.exists() and b"ENCRYPTED" in key.read_bytes()[:64]:
        passphrase = _ca_passphrase(f"Passphrase of {key}: ")
    return centre, check_ca_matches(centre, pki.load_centre_ca(centre.ca_dir, passphrase))


def _cmd_ca_create(args: argparse.Namespace) -> int:
    from provisioning.bundle import create_centre

    passphrase = (_ca_passphrase("New passphrase for the CA key: ", confirm=True)
                  if args.passphrase else None)
    centre = create_centre(_centre_dir(args), args.centre, args.broker_host, args.broker_port,
                           roster_keys_dir=args.roster_keys, passphrase=passphrase)
    print(f"Centre {centre.centre_id} created in {centre.directory}:")
    print(f"  CA                {centre.ca_dir}/ca.pem (key ca.key, mode 0600"
          f"{', passphrase-protected' if passphrase else ''})")
    print(f"  broker cert       {centre.broker_cert_dir}/broker.pem for "
          f"{', '.join(centre.broker_hosts)} (port {centre.broker_port})")
    print(f"  roster keys       {centre.roster_keys_dir}")
    print("Back this folder up offline now: it is the only copy of the keys every gate of the "
          "centre trusts.")
    print("Next: `gerbang-provision device add DEVICE --room ROOM` for each gate, "
          "`gerbang-provision gateway-cert`, `gerbang-provision technician-cert NAME`, "
          "`gerbang-provision broker-config --out DIR`.")
    return 0


def _cmd_ca_status(args: argparse.Namespace) -> int:
    import datetime as dt

    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    from provisioning import pki
    from provisioning.bundle import load_device

    centre, ca = _load_centre_and_ca(args)
    now = dt.datetime.now(dt.UTC)
    revoked = {e["serial"]: e for e in json.loads(ca.revoked_path.read_text())["revoked"]}
    crl = x509.load_pem_x509_crl(ca.crl_path.read_bytes())
    rooms = {d: load_device(centre, d).room for d in centre.device_ids()}
    rows = []
    for cert in pki.issued_certificates(ca):
        serial = f"{cert.serial_number:x}"
        cn = pki.common_name_of(cert)
        end = cert.not_valid_after_utc
        if serial in revoked:
            state = f"revoked {revoked[serial]['revoked_at'][:10]}"
            if revoked[serial].get("reason"):
                state += f" ({revoked[serial]['reason']})"
        elif end <= now:
            state = "EXPIRED"
        else:
            state = "valid"
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        kind = ("broker" if ExtendedKeyUsageOID.SERVER_AUTH in usage else
                {"gateway": "gateway", "technician": "tech", "device": "gate"}.get(
                    pki.identity_kind(cn), "other"))
        rows.append({"name": cn, "kind": kind, "room": rooms.get(cn), "serial": serial,
                     "valid_until": f"{end:%Y-%m-%d}", "days_left": (end - now).days,
                     "state": state})
    warnings = pki.ca_expiry_warnings(ca, args.warn_days)
    next_update = crl.next_update_utc
    if args.json:
        print(json.dumps({
            "centre": centre.centre_id, "ca_valid_until": f"{ca.cert.not_valid_after_utc:%Y-%m-%d}",
            "crl_next_update": f"{next_update:%Y-%m-%d}" if next_update else None,
            "revoked": len(revoked), "certificates": rows, "warnings": warnings}))
        return 1 if warnings else 0
    print(f"Centre {centre.centre_id} ({centre.directory})")
    print(f"  CA valid until {ca.cert.not_valid_after_utc:%Y-%m-%d} "
          f"({(ca.cert.not_valid_after_utc - now).days} days left)")
    if next_update:
        print(f"  CRL next update due {next_update:%Y-%m-%d} ({(next_update - now).days} days); "
              f"{len(revoked)} certificate(s) revoked")
    print(f"  broker reached as {', '.join(centre.broker_hosts)} port {centre.broker_port}")
    print(f"\n  {'name':24s} {'kind':8s} {'room':8s} {'serial':12s} {'valid until':11s} state")
    for row in rows:
        print(f"  {row['name']:24s} {row['kind']:8s} {row['room'] or '-':8s} "
              f"{row['serial'][:12]:12s} {row['valid_until']:11s} {row['state']}")
    print()
    if warnings:
        print(f"WARNINGS (within {args.warn_days} days):")
        for line in warnings:
            print(f"  {line}")
        return 1
    print(f"OK: nothing expires within {args.warn_days} days and the CRL is current.")
    return 0


def _cmd_ca_refresh_crl(args: argparse.Namespace) -> int:
    from cryptography import x509

    from provisioning import pki
    from provisioning.bundle import sync_crl

    centre, ca = _load_centre_and_ca(args)
    path = pki.refresh_crl(ca)
    copied = sync_crl(centre, ca)
    crl = x509.load_pem_x509_crl(path.read_bytes())
    print(f"CRL re-signed: {path}, next update due {crl.next_update_utc:%Y-%m-%d}")
    if copied:
        print(f"copied to {copied}")
    print("Copy crl.pem to the broker host and restart the broker (sudo systemctl restart "
          "mosquitto) before the old CRL's next update, or the broker refuses every client.")
    return 0


def _cmd_device_add(args: argparse.Namespace) -> int:
    from provisioning.bundle import add_device, fetch_csr_command
    from provisioning.pki import load_certificate

    centre, ca = _load_centre_and_ca(args)
    csr: Path | bytes | None = args.csr
    if args.csr_from_host:
        command = fetch_csr_command(args.csr_from_host, args.device, centre.centre_id,
                                    args.etc_dir)
        if args.dry_run:
            print(shlex.join(command))
            return 0
        done = subprocess.run(command, capture_output=True, check=False)
        if done.returncode != 0:
            log.error("making the key on %s failed (ssh exit %d): %s", args.csr_from_host,
                      done.returncode, done.stderr.decode(errors="replace").strip()[-500:])
            return 2
        csr = done.stdout
    elif args.dry_run:
        log.error("--dry-run only applies to --csr-from-host")
        return 2
    record = add_device(centre, ca, args.device, args.room, csr=csr, replace=args.replace)
    cert = load_certificate(record.cert_path)
    print(f"{record.device_id} (room {record.room}): certificate serial {record.serial:x}, valid "
          f"until {cert.not_valid_after_utc:%Y-%m-%d}")
    print("  key: " + ("made on the gate itself; it never left it" if record.key_on_device
                       else f"made here, {record.key_path} (goes to the gate in its bundle)"))
    if args.replace:
        print("  the previous certificate is revoked")
    _print_broker_sync(centre, ca, f"gate {record.device_id}")
    print(f"Next: gerbang-provision bundle {record.device_id} --session SESSION")
    return 0


def _print_broker_sync(centre: Centre, ca: CentreCA, who: str) -> None:
    """Tell the technician what the broker needs now that ``who`` changed: the broker folder's
    rules (and CRL) were rewritten by the library call; the broker reads them at start only."""
    from provisioning.bundle import load_centre, sync_broker

    synced = sync_broker(load_centre(centre.directory), ca)  # idempotent: reports the state
    if synced.rules is None:
        print(f"  the broker's rules are not updated for {who}: {synced.problem}; then restart "
              "the broker (sudo systemctl restart mosquitto)")
        return
    print(f"  broker rules updated: {synced.rules} (and certs/crl.pem)")
    print(f"  copy them to the broker host if it is another machine (INSTALL.txt), then restart "
          f"the broker (sudo systemctl restart mosquitto): it reads who may connect at start "
          f"only, so until then {who} is refused or keeps its old rights")


def _cmd_device_csr_command(args: argparse.Namespace) -> int:
    from provisioning.bundle import csr_shell_command, load_centre

    centre = load_centre(_centre_dir(args))
    print(csr_shell_command(args.device, centre.centre_id, args.etc_dir))
    return 0


def _cmd_gateway_cert(args: argparse.Namespace) -> int:
    from provisioning.bundle import gateway_broker_toml, issue_gateway_cert
    from provisioning.files import write_file

    centre, ca = _load_centre_and_ca(args)
    made = issue_gateway_cert(centre, ca, replace=args.replace, workers=args.workers)
    snippet = gateway_broker_toml(centre, args.etc_dir, args.workers)
    write_file(centre.gateway_dir / "broker.toml", snippet)
    for issued in made:
        print(f"Gateway certificate (CN {issued.common_name}) valid until "
              f"{issued.cert.not_valid_after_utc:%Y-%m-%d}: {issued.cert_path}, "
              f"{issued.key_path} (0600)")
    names = ", ".join(f"{pki_name}.pem/.key" for pki_name in _gateway_names(args.workers))
    print(f"In {centre.gateway_dir}: {names}, ca.pem. One identity per ingest process: the "
          "broker takes the client id from the certificate.")
    print(f"On the gateway host copy them to {args.etc_dir.rstrip('/')}/tls/ (keys owned by the "
          "gerbang user, mode 0600) and put this in gateway.toml "
          f"(also in {centre.gateway_dir / 'broker.toml'}):\n")
    print(snippet)
    _print_broker_sync(centre, ca, "the gateway")
    return 0


def _gateway_names(workers: int) -> list[str]:
    from provisioning import pki

    return [pki.gateway_worker_identity(n) for n in range(1, workers + 1)]


def _cmd_technician_cert(args: argparse.Namespace) -> int:
    from provisioning.bundle import issue_technician_cert, technician_broker_toml
    from provisioning.files import write_file

    centre, ca = _load_centre_and_ca(args)
    issued = issue_technician_cert(centre, ca, args.name, replace=args.replace)
    snippet = technician_broker_toml(centre, issued)
    write_file(centre.technicians_dir / f"{issued.common_name}.broker.toml", snippet)
    tls = centre.technicians_dir
    print(f"Technician certificate (CN {issued.common_name}) valid until "
          f"{issued.cert.not_valid_after_utc:%Y-%m-%d}: {issued.cert_path}, {issued.key_path} "
          "(0600; made here, keep it on this laptop)")
    print(f"Its [broker] table (also in {tls / (issued.common_name + '.broker.toml')}):\n")
    print(snippet)
    print("roster-push and config-push with it:\n  --broker-host "
          f"{centre.broker_hosts[0]} --broker-port {centre.broker_port} --ca-file "
          f"{tls / 'ca.pem'} --cert-file {issued.cert_path} --key-file {issued.key_path}")
    _print_broker_sync(centre, ca, f"technician {issued.common_name}")
    return 0


def _cmd_revoke(args: argparse.Namespace) -> int:
    from provisioning.bundle import revoke_device

    centre, ca = _load_centre_and_ca(args)
    serials = revoke_device(centre, ca, args.device, args.reason)
    print(f"Revoked {args.device}: serial {', '.join(f'{s:x}' for s in serials)} "
          f"({args.reason}); CRL re-signed: {ca.crl_path}")
    if centre.broker_config_dir:
        print(f"  copied to {centre.broker_config_dir / 'certs' / 'crl.pem'}")
    _print_broker_sync(centre, ca, f"gate {args.device}")
    print("Now restart the broker (sudo systemctl restart mosquitto) after copying crl.pem and "
          "dynamic-security.json to it: the broker reads them at start, and a connection "
          "already open stays open until the restart.")
    return 0


def _cmd_broker_config(args: argparse.Namespace) -> int:
    from provisioning.bundle import replace_server_cert, write_broker_config

    centre, ca = _load_centre_and_ca(args)
    if args.broker_host:
        centre, _ = replace_server_cert(centre, ca, args.broker_host)
        print(f"New broker certificate for {', '.join(args.broker_host)} (the old one is "
              "revoked): make the gates' bundles again if the first name changed.")
    centre, files = write_broker_config(
        centre, ca, args.out, install_dir=args.install_dir, bind_address=args.bind,
        run_as_user=args.user, persistence_dir=args.persistence_dir,
        share_groups=args.share_group or None, plugin_path=args.dynsec_plugin)
    from provisioning import pki

    known = pki.broker_identities(ca)
    print(f"Broker config for centre {centre.centre_id} in {files.directory}:")
    print(f"  {files.config_path.name} (TLS listener on port {centre.broker_port}, client "
          "certificates required, identity from the certificate), certs/")
    print(f"  {files.dynsec_path.name}: who may do what ({len(known.devices)} gate(s), "
          f"{', '.join(known.gateways) or 'no gateway yet'}, "
          f"{', '.join(known.technicians) or 'no technician yet'}; gateway share groups: "
          f"{', '.join(['gerbang-ingest', *centre.broker_share_groups])}); read by the "
          f"dynamic-security plugin {files.plugin_path}")
    if files.install_dir:
        print(f"  INSTALL.txt: how to put it in {files.install_dir} on the broker host")
    else:
        print(f"  run it here: mosquitto -c {files.config_path.resolve()}")
    print("Restart the broker after installing it: it reads the rules at start only.")
    return 0


def _cmd_bundle(args: argparse.Namespace) -> int:
    from provisioning.bundle import (
        BundleOptions,
        default_archive_path,
        load_centre,
        write_bundle,
        write_bundle_archive,
    )

    centre = load_centre(_centre_dir(args))
    options = BundleOptions(
        session=args.session, etc_dir=args.etc_dir, data_dir=args.data_dir, camera=args.camera,
        replay_path=args.replay_path, pin_map=args.pins, pin_factory=args.pin_factory,
        broker_host=args.broker_host, rosters=tuple(args.roster),
        liveness=None if args.liveness is None else args.liveness == "on",
        model_threads=args.model_threads)
    folder = write_bundle(centre, args.device, options)
    print(f"Bundle of {args.device} (session {args.session}) in {folder}:")
    print("  device.toml, tls/, keys/, WIRING.txt, install.sh"
          + (f", incoming/ ({len(args.roster)} signed roster(s))" if args.roster else ""))
    if args.tar is not None:
        out = Path(args.tar) if args.tar else default_archive_path(folder)
        write_bundle_archive(folder, out)
        print(f"  archive: {out} (mode 0600: it holds the gate's keys)")
    print(f"Next: gerbang-provision install {args.device} --host pi@ADDRESS, or copy the "
          "folder to the Pi and run `sudo sh install.sh` in it.")
    return 0


def _cmd_install(args: argparse.Namespace) -> int:
    from provisioning.bundle import (
        bundle_info,
        default_archive_path,
        install_commands,
        install_local,
        load_centre,
        load_device,
        write_bundle_archive,
    )

    centre = load_centre(_centre_dir(args))
    folder = load_device(centre, args.device).folder
    info = bundle_info(folder)
    if args.root:
        if args.dry_run:
            print(shlex.join(["env", f"DESTDIR={args.root}", "sh",
                              str(folder / "install.sh")]))
            return 0
        done = install_local(folder, args.root)
        sys.stdout.write(done.stdout)
        sys.stderr.write(done.stderr)
        return 0 if done.returncode == 0 else 1
    archive = write_bundle_archive(folder, default_archive_path(folder))
    commands = install_commands(archive, args.device, args.host, etc_dir=info["etc_dir"],
                                selftest=args.selftest, restart=args.restart, venv=args.venv)
    if args.dry_run:
        print(f"# bundle archive written: {archive}")
        for command in commands:
            print(shlex.join(command))
        return 0
    for number, command in enumerate(commands, 1):
        print(f"[{number}/{len(commands)}] {shlex.join(command)}", file=sys.stderr)
        code = subprocess.call(command)
        if code != 0:
            selftest = "gerbang-device selftest" in command[-1]
            log.error("step %d of %d failed (exit code %d): %s", number, len(commands), code,
                      "the self-test found a problem (its table is above); the gate service is "
                      "stopped until you fix it and run `sudo systemctl start gerbang-device`"
                      if selftest else shlex.join(command))
            return 1
    print(f"{args.device} installed on {args.host}")
    return 0


def _add_pki_commands(sub: argparse._SubParsersAction) -> None:
    """The centre PKI, broker and device bundle commands (issue 7)."""
    from provisioning.bundle import CAMERAS, DEFAULT_DATA_DIR, DEFAULT_ETC_DIR, DEFAULT_VENV
    from provisioning.pki import REVOCATION_REASONS

    centre = argparse.ArgumentParser(add_help=False)
    centre.add_argument(
        "--centre-dir", metavar="DIR", default=os.environ.get("GERBANG_CENTRE_DIR", "."),
        help="the centre's provisioning folder (default: $GERBANG_CENTRE_DIR, else the current "
             "folder)")

    ca = sub.add_parser(
        "ca", help="create the centre (CA, broker certificate, roster keys); check expiry",
        description="Every exam centre has its own certificate authority (CA). It vouches for "
                    "the broker, the gateway and every gate; the broker lets in only what it "
                    "signed and has not revoked. Its key stays on this laptop.")
    casub = ca.add_subparsers(dest="ca_command", required=True, metavar="ACTION")
    create = casub.add_parser(
        "create", parents=[centre], help="make a new centre folder (once per centre)",
        description="Makes the centre folder: the CA (ca/ca.key stays here, mode 0600), the "
                    "broker's certificate for every name and address the gates use to reach it, "
                    "and the roster keys. Refuses a folder that already holds a centre. Back the "
                    "folder up offline afterwards: losing it means new certificates for every "
                    "gate.",
        epilog="Example: gerbang-provision ca create --centre c01 --centre-dir centres/c01 "
               "--broker-host broker.c01.lan --broker-host 10.0.0.2")
    create.add_argument("--centre", required=True, help="centre id, e.g. c01")
    create.add_argument("--broker-host", action="append", required=True, metavar="NAME",
                        help="a DNS name or IP address of the broker (repeat for each; the "
                             "gates use the first)")
    create.add_argument("--broker-port", type=int, default=8883,
                        help="the broker's TLS port (default 8883)")
    create.add_argument("--roster-keys", type=Path, metavar="DIR",
                        help="use roster keys made earlier with `roster-key create` instead of "
                             "making new ones in <centre-dir>/roster-keys")
    create.add_argument("--passphrase", action="store_true",
                        help="protect the CA key with a passphrase (asked now and at every "
                             "signing; or set GERBANG_CA_PASSPHRASE)")
    create.set_defaults(func=_cmd_ca_create)
    status = casub.add_parser(
        "status", parents=[centre], help="list certificates and warn before anything expires",
        description="Lists every certificate the CA issued (valid, revoked, expired) and warns "
                    "about the CA, the CRL and certificates expiring soon. Exit code 1 when "
                    "there is a warning, so it can run from cron. A stale CRL makes the broker "
                    "refuse EVERY client: run `ca refresh-crl` before its next update.")
    status.add_argument("--warn-days", type=int, default=30,
                        help="warn this many days ahead (default 30)")
    status.add_argument("--json", action="store_true", help="one JSON object")
    status.set_defaults(func=_cmd_ca_status)
    refresh = casub.add_parser(
        "refresh-crl", parents=[centre], help="re-sign the revocation list (every 180 days)",
        description="Re-signs crl.pem with a new next-update date (180 days) and copies it into "
                    "the broker folder; then copy it to the broker host and restart Mosquitto.")
    refresh.set_defaults(func=_cmd_ca_refresh_crl)

    device = sub.add_parser(
        "device", help="give a gate its certificate (add), or the command to make its key",
        description="A gate proves who it is to the broker with a certificate whose name (CN) "
                    "is its device id. Best: its key is made on the gate itself and only a "
                    "certificate request (CSR) comes back (--csr or --csr-from-host). Otherwise "
                    "the key is made here and travels in the gate's bundle.")
    dsub = device.add_subparsers(dest="device_command", required=True, metavar="ACTION")
    add = dsub.add_parser(
        "add", parents=[centre], help="certify a gate (key made on the gate, or here)",
        description="Signs the gate's certificate and records its room. With --csr FILE or "
                    "--csr-from-host pi@ADDRESS the key was made on the gate and never leaves "
                    "it; with neither, the key is made here (mode 0600) and goes in the bundle. "
                    "A gate that already has a certificate needs --replace (the old one is "
                    "revoked; restart the broker).",
        epilog="Examples: gerbang-provision device add c01-r01-a --room R01; "
               "gerbang-provision device add c01-r02-a --room R02 --csr-from-host "
               "pi@10.0.0.22")
    add.add_argument("device", help="device id, e.g. c01-r01-a (centre-room-door)")
    add.add_argument("--room", required=True, help="room the gate guards, e.g. R01")
    how = add.add_mutually_exclusive_group()
    how.add_argument("--csr", type=Path, metavar="FILE",
                     help="the gate's certificate request (from `device csr-command`)")
    how.add_argument("--csr-from-host", metavar="USER@HOST",
                     help="make the key on the Pi over SSH and fetch its request")
    add.add_argument("--etc-dir", default=DEFAULT_ETC_DIR,
                     help=f"the gate's config folder, for --csr-from-host (default "
                          f"{DEFAULT_ETC_DIR})")
    add.add_argument("--replace", action="store_true",
                     help="revoke the gate's current certificate and issue a new one")
    add.add_argument("--dry-run", action="store_true",
                     help="with --csr-from-host: print the ssh command, run nothing")
    add.set_defaults(func=_cmd_device_add)
    csrcmd = dsub.add_parser(
        "csr-command", parents=[centre], help="print the command that makes a gate's key on it",
        description="Prints one command to paste into the Pi's terminal: it makes the gate's "
                    "key in /etc/gerbang/tls (mode 0600, never overwritten) with openssl and "
                    "prints the certificate request. Save that text as DEVICE.csr and run "
                    "`gerbang-provision device add DEVICE --room ROOM --csr DEVICE.csr`.")
    csrcmd.add_argument("device", help="device id, e.g. c01-r01-a")
    csrcmd.add_argument("--etc-dir", default=DEFAULT_ETC_DIR,
                        help=f"the gate's config folder (default {DEFAULT_ETC_DIR})")
    csrcmd.set_defaults(func=_cmd_device_csr_command)

    gateway = sub.add_parser(
        "gateway-cert", parents=[centre], help="make the gateway's certificate and key",
        description="Writes gateway/gateway.pem, gateway.key (0600) and ca.pem into the centre "
                    "folder and prints the [broker] table for gateway.toml. The gateway reads "
                    "every gate's messages and sends commands; guard its key like the CA's.")
    gateway.add_argument("--etc-dir", default=DEFAULT_ETC_DIR,
                         help="where the files will be on the gateway host (default "
                              f"{DEFAULT_ETC_DIR}; they go in its tls/ folder)")
    gateway.add_argument("--replace", action="store_true",
                         help="revoke the current gateway certificate(s) and make new ones")
    gateway.add_argument("--workers", type=int, default=1, metavar="N",
                         help="ingest processes the gateway runs ([gateway] ingest_workers, "
                              "default 1): also make gateway-2.pem/.key … gateway-N, one "
                              "identity per process (existing ones are kept)")
    gateway.set_defaults(func=_cmd_gateway_cert)

    tech = sub.add_parser(
        "technician-cert", parents=[centre],
        help="make a technician's certificate for roster-push and config-push",
        description="Makes technicians/tech-NAME.pem and tech-NAME.key (0600, made here; keep "
                    "it on this laptop) and prints its [broker] table and the push options. "
                    "The broker lets a technician send roster, config, models and ping "
                    "commands and read the gates' answers, nothing else. Never push with the "
                    "gateway's certificate: the broker takes the client id from the "
                    "certificate, so the push would take over the running gateway's session "
                    "and lose check-ins.",
        epilog="Example: gerbang-provision technician-cert budi")
    tech.add_argument("name", help="the technician's short name (letters, digits, '-', '_', '.')")
    tech.add_argument("--replace", action="store_true",
                      help="revoke the technician's current certificate and make a new one")
    tech.set_defaults(func=_cmd_technician_cert)

    revoke = sub.add_parser(
        "revoke", parents=[centre], help="shut a gate out of the broker (lost, stolen, retired)",
        description="Revokes the gate's certificate and re-signs the revocation list (crl.pem, "
                    "also copied into the broker folder). The broker refuses the gate once it "
                    "is restarted with the new crl.pem; until then a connection already open "
                    "stays open. A revoked gate needs `device add --replace` to come back.")
    revoke.add_argument("device", help="device id, e.g. c01-r01-a")
    revoke.add_argument("--reason", default="cessation_of_operation",
                        choices=sorted(REVOCATION_REASONS),
                        help="why (default cessation_of_operation; key_compromise for a stolen "
                             "gate)")
    revoke.set_defaults(func=_cmd_revoke)

    broker = sub.add_parser(
        "broker-config", parents=[centre], help="write the Mosquitto config, ACL and certificates",
        description="Writes a folder for the centre's Mosquitto: mosquitto.conf (one TLS "
                    "listener, client certificates required, the certificate name is the "
                    "username and client id, anonymous access off, messages over 16 MiB "
                    "refused), dynamic-security.json (read by Mosquitto's dynamic-security "
                    "plugin: each gate only its own topics, the gateway's ingest filters, the "
                    "technicians' commands; every subscription checked), and certs/ (ca.pem, "
                    "crl.pem, broker.pem, broker.key). With --install-dir the paths are those "
                    "on the broker host and INSTALL.txt says how to put it there. Later "
                    "`device add`, `revoke`, `gateway-cert` and `technician-cert` rewrite "
                    "dynamic-security.json and crl.pem in this folder; restart the broker then.",
        epilog="Example: gerbang-provision broker-config --out broker-c01 --install-dir "
               "/etc/mosquitto/gerbang")
    broker.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="folder to write")
    broker.add_argument("--install-dir", type=Path, metavar="DIR",
                        help="where the folder will live on the broker host (default: where "
                             "it is written, for a broker on this machine)")
    broker.add_argument("--bind", metavar="ADDRESS",
                        help="listen on this address only (default: every interface)")
    broker.add_argument("--user", metavar="ACCOUNT",
                        help="account Mosquitto switches to when started as root (default: "
                             "mosquitto)")
    broker.add_argument("--persistence-dir", type=Path, metavar="DIR",
                        help="where Mosquitto keeps queued messages (default /var/lib/mosquitto "
                             "with --install-dir, else <out>/data)")
    broker.add_argument("--broker-host", action="append", metavar="NAME",
                        help="make a new broker certificate for these names and addresses "
                             "(repeat for each; the old certificate is revoked)")
    broker.add_argument("--share-group", action="append", metavar="NAME",
                        help="a gateway share group ([gateway] share_group) the broker admits "
                             "besides gerbang-ingest (repeat for each; default: the groups "
                             "given before). The broker refuses any other subscription")
    broker.add_argument("--dynsec-plugin", type=Path, metavar="PATH",
                        help="Mosquitto's dynamic-security plugin on the broker host (default: "
                             "found here, e.g. /usr/lib/x86_64-linux-gnu/"
                             "mosquitto_dynamic_security.so)")
    broker.set_defaults(func=_cmd_broker_config)

    bundle = sub.add_parser(
        "bundle", parents=[centre], help="assemble everything one gate needs (folder, .tar.gz)",
        description="Fills the gate's folder devices/DEVICE/ with device.toml (ids, broker and "
                    "TLS paths, camera, pin map, [keys]), its certificate and the CA, its roster "
                    "keys, WIRING.txt for the electrician and install.sh. Everything is checked "
                    "first: the generated device.toml is validated as the gate will, and every "
                    "--roster must be signed by this centre for the gate's room and session.",
        epilog="Example: gerbang-provision bundle c01-r01-a --session S1 --roster "
               "R01.roster.signed --tar")
    bundle.add_argument("device", help="device id, e.g. c01-r01-a")
    bundle.add_argument("--session", required=True, help="exam session the gate serves, e.g. S1")
    bundle.add_argument("--roster", type=Path, action="append", default=[], metavar="FILE",
                        help="signed roster (.roster.signed) to install at first start "
                             "(repeatable; it can also be pushed from the gateway later)")
    bundle.add_argument("--camera", choices=CAMERAS, default="picamera2",
                        help="picamera2 (Pi camera, default), v4l2 (USB), replay (tests)")
    bundle.add_argument("--replay-path", metavar="PATH",
                        help="with --camera replay: the folder/playlist/video on the gate")
    bundle.add_argument("--pins", type=Path, metavar="FILE",
                        help="TOML file with the door's [gpio] table (default: standard wiring, "
                             "see WIRING.txt)")
    bundle.add_argument("--pin-factory", choices=("auto", "native", "mock"), default="auto",
                        help="auto (default): real pins on a Pi; mock: no pins (tests)")
    bundle.add_argument("--broker-host", metavar="NAME",
                        help="how this gate reaches the broker, when not the centre's first "
                             "name (the certificate is still checked against that)")
    bundle.add_argument("--liveness", choices=("on", "off"),
                        help="liveness step (default: on, off for --camera replay)")
    bundle.add_argument("--model-threads", type=int, default=2,
                        help="CPU threads for the face models (default 2)")
    bundle.add_argument("--etc-dir", default=DEFAULT_ETC_DIR,
                        help=f"config folder on the gate (default {DEFAULT_ETC_DIR})")
    bundle.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                        help=f"data folder on the gate (default {DEFAULT_DATA_DIR})")
    bundle.add_argument("--tar", nargs="?", const="", metavar="FILE",
                        help="also write a .tar.gz (default devices/DEVICE.tar.gz)")
    bundle.set_defaults(func=_cmd_bundle)

    install = sub.add_parser(
        "install", parents=[centre], help="copy a gate's bundle onto its Pi over SSH",
        description="Copies the bundle to the Pi (scp) and runs its install.sh there with sudo "
                    "(ssh): files under /etc/gerbang and /var/lib/gerbang, keys mode 0600, owned "
                    "by the gerbang user. --root DIR installs into a folder instead (a mounted "
                    "SD card). --dry-run prints the exact commands without running them.",
        epilog="Example: gerbang-provision install c01-r01-a --host pi@10.0.0.21 --selftest "
               "--restart")
    install.add_argument("device", help="device id, e.g. c01-r01-a")
    where = install.add_mutually_exclusive_group(required=True)
    where.add_argument("--host", metavar="USER@HOST", help="the Pi, as ssh knows it")
    where.add_argument("--root", type=Path, metavar="DIR",
                       help="install under this folder instead (a mounted SD card's root "
                            "file system)")
    install.add_argument("--dry-run", action="store_true",
                         help="print the commands, run nothing")
    install.add_argument("--selftest", action="store_true",
                         help="then run `gerbang-device selftest` on the Pi (service stopped)")
    install.add_argument("--restart", action="store_true",
                         help="then restart the gerbang-device service")
    install.add_argument("--venv", default=DEFAULT_VENV,
                         help=f"Gerbang's virtualenv on the Pi (default {DEFAULT_VENV})")
    install.set_defaults(func=_cmd_install)


def _cmd_roster_push(args: argparse.Namespace) -> int:
    from provisioning.push import push_roster

    broker = _push_broker(args)
    results = push_roster(broker, args.centre, args.device, args.signed_roster.read_bytes(),
                          timeout_s=args.timeout)
    for r in results:
        state = {True: "ok", False: "REFUSED", None: "NOT CONFIRMED"}[r.ok]
        print(f"{r.device_id:24s} {state:14s} {r.detail}")
    return 0 if all(r.ok for r in results) else 1


def _toml_keys(table: dict, prefix: str = "") -> list[str]:
    """Dotted keys a TOML document sets (``gpio.tamper.pin``), in file order."""
    keys = []
    for name, value in table.items():
        key = f"{prefix}{name}"
        keys.extend(_toml_keys(value, key + ".") if isinstance(value, dict) else [key])
    return keys


def _cmd_config_push(args: argparse.Namespace) -> int:
    import base64
    import tomllib

    from device.manage.config_keys import LOCAL, SIGNED, classify
    from provisioning.push import config_sha256, push_command, push_config

    if args.version < 1:
        raise ConfigError(f"--version: must be >= 1, got {args.version}")
    try:
        text = args.config_file.read_text("utf-8")
        document = tomllib.loads(text)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{args.config_file}: not UTF-8 text ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{args.config_file}: not valid TOML ({exc})") from None
    gate = document.get("gate")
    if not isinstance(gate, dict):
        raise ConfigError(f"{args.config_file}: gate: missing (the gate's [gate] table)")
    # One device.toml names one gate; the gate would refuse another's, so stop here instead.
    if gate.get("device_id") != args.device:
        raise ConfigError(f"{args.config_file}: gate.device_id is {gate.get('device_id')!r}, "
                          f"not {args.device!r}: each gate gets its own config file")
    centre = gate.get("centre")
    if not isinstance(centre, str) or args.centre not in (None, centre):
        raise ConfigError(f"{args.config_file}: gate.centre is {centre!r}"
                          + (f", not {args.centre!r}" if args.centre else ""))
    keys = None
    if args.keys:
        from provisioning.signing import load_roster_keys, sign_config

        keys = load_roster_keys(args.keys)  # RosterError (one line, exit 2) if unusable
        if keys.centre != centre:
            raise ConfigError(f"--keys {args.keys} are centre {keys.centre}'s, the file is for "
                              f"centre {centre}")
    broker = _push_broker(args)
    print(f"desired: {args.device} config v{args.version} sha256 {config_sha256(text)}"
          + (f", signed by key {keys.key_id}" if keys else ", unsigned"))
    set_keys = _toml_keys(document)
    local = [k for k in set_keys if classify(k) == LOCAL]
    protected = [k for k in set_keys if classify(k) == SIGNED]
    if local:
        print(f"note: local-only keys ({', '.join(local)}) must equal what the gate runs; no "
              "push can change them (re-provision the gate for that)")
    if protected and not keys:
        print(f"note: unsigned: the gate refuses this unless these keys are unchanged from what "
              f"it runs: {', '.join(protected)}; to change any of them, sign the push with "
              "--keys DIR (the centre's roster key folder)")
    try:
        if keys:
            blob = sign_config(text, keys, args.device, args.version)
            (r,) = push_command(
                broker, centre, [args.device], "config",
                {"signed_config_b64": base64.b64encode(blob).decode()}, args.timeout,
                offline_hint="it applies the config when it reconnects, unless a newer "
                             "version reaches it first")
        else:
            r = push_config(broker, centre, args.device, text, args.version,
                            timeout_s=args.timeout)
    except OSError as exc:  # refused connection, unknown host, no subscription confirmed
        raise RuntimeError(f"broker {args.broker_host}:{args.broker_port}: {exc}") from None
    state = {True: "applied", False: "REFUSED", None: "NOT CONFIRMED"}[r.ok]
    print(f"{r.device_id:24s} {state:14s} {r.detail}")
    return 0 if r.ok else 1


def _push_broker(args: argparse.Namespace) -> BrokerConfig:
    """The push's broker, refused (exit 2, the reason) for a certificate that is not a
    technician's before anything is printed or sent."""
    from gerbang.config import BrokerConfig
    from provisioning.push import check_push_identity

    broker = BrokerConfig(host=args.broker_host, port=args.broker_port, ca_file=args.ca_file,
                          cert_file=args.cert_file, key_file=args.key_file)
    check_push_identity(broker)
    return broker


def _add_push_broker_args(parser: argparse.ArgumentParser) -> None:
    """How a push command reaches the centre's broker (as a technician: their certificate) and
    how long it waits for the gates' acknowledgements."""
    parser.add_argument("--broker-host", default="127.0.0.1")
    parser.add_argument("--broker-port", type=int, default=8883)
    parser.add_argument("--ca-file", type=Path, help="centre CA (turns TLS on)")
    parser.add_argument("--cert-file", type=Path,
                        help="your technician certificate (technicians/tech-NAME.pem from "
                             "`technician-cert`); the gateway's is refused")
    parser.add_argument("--key-file", type=Path, help="its key (technicians/tech-NAME.key)")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds to wait for the acknowledgements (default 30)")


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface; help texts are written for the technician on site."""
    parser = argparse.ArgumentParser(
        prog="gerbang-provision",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Gerbang technician tool: set up a centre (certificates, broker, gates), "
                    "enroll applicants into room rosters and sign them for the gates, check "
                    "and build the face-model bundle.\n\n"
                    "`gerbang-provision COMMAND --help` explains each command.",
        epilog="""A new centre, once (run in the centre's folder, or pass --centre-dir DIR):
  gerbang-provision ca create --centre c01 --broker-host broker.c01.lan --broker-host 10.0.0.2
  gerbang-provision gateway-cert [--workers 2]
  gerbang-provision technician-cert budi     (your identity for roster-push / config-push)
  gerbang-provision broker-config --out broker-c01 --install-dir /etc/mosquitto/gerbang

Each gate (docs/provisioning.md walks through it):
  gerbang-provision device add c01-r01-a --room R01 --csr-from-host pi@10.0.0.21
  gerbang-provision bundle c01-r01-a --session S1 --roster R01.roster.signed
  gerbang-provision install c01-r01-a --host pi@10.0.0.21 --selftest --restart

Before each exam session:
  gerbang-provision roster --photos-dir photos/R01 --session S1 --room R01 \\
      --out R01.roster.json --keys roster-keys
  (writes R01.roster.signed too: the signed, encrypted copy the room's gates accept)

Now and then: gerbang-provision ca status (warns before a certificate or the revocation list
expires); a lost or stolen gate: gerbang-provision revoke c01-r01-a, then restart the broker.""")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_pki_commands(sub)

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

    models = sub.add_parser("models", help="check, rebuild or sign the face-model bundle",
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
    msign = msub.add_parser(
        "sign", help="sign a model bundle so the gates will install it",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Packs every file of the model bundle folder (models, manifest.json, liveness
classifier, NOTICE, LICENSES/) into one file, signed with the centre's roster-signing
key, which every gate of the centre already trusts. Before signing, the bundle is
checked the way a gate will check it: every file against manifest.json, every model
loaded and run once, calibrated thresholds present. A bundle that fails is not signed.

A gate installs the signed file only if the signature is this centre's, every file is
intact, and the version is newer than the one it runs. It keeps its previous models,
and goes back to them if the new ones fail its own check or if the gate service does
not start with them.""",
        epilog="""\
Example:
  gerbang-provision models sign --keys roster-keys --bundle models-1.1.0 \\
      --out models-1.1.0.models.signed

Then, on each gate: copy the file into /var/lib/gerbang/incoming/ and run
`sudo systemctl restart gerbang-device`, or send it over MQTT as the gate's `models`
command. The gate keeps its old models until the service restarts; the journal then
says "model bundle 1.1.0 confirmed", or why it rolled back.""")
    msign.add_argument("--keys", type=Path, metavar="DIR", required=True,
                       help="the centre's roster key folder (from `roster-key create` or "
                            "`ca create`): the same key signs rosters and model bundles")
    msign.add_argument("--bundle", type=Path, metavar="DIR",
                       help="the model bundle folder (holds manifest.json; default: the bundle "
                            "shipped with this Gerbang version)")
    msign.add_argument("--out", type=Path, metavar="FILE", required=True,
                       help="signed file to write; name it NAME.models.signed so a gate picks "
                            "it up from its incoming/ folder")
    msign.add_argument("--version", metavar="X.Y.Z",
                       help="version the gates see (default: bundle_version in manifest.json); "
                            "must be higher than what the gates run, e.g. 1.0.1 after 1.0.0. "
                            "Written into the signed copy of manifest.json only; the folder "
                            "is not changed")
    msign.add_argument("--threads", type=int, default=2,
                       help="CPU threads for the check before signing (default 2)")
    msign.set_defaults(func=_cmd_models_sign)

    faces = sub.add_parser(
        "demo-faces", help="build a small demo face set from an npm package's photos",
        description="For demos on a machine without face data: crops every face in the group "
                    "photos of the npm package @vladmandic/face-api into <person>/<image>.")
    faces.add_argument("--out", type=Path, required=True, help="folder to write")
    faces.set_defaults(func=_cmd_demo_faces)
    push = sub.add_parser(
        "roster-push", help="send a signed roster to a room's gates and confirm each one",
        description="Publish a signed roster (.roster.signed) to each named gate over MQTT and "
                    "wait for every gate's acknowledgement. Each gate checks the signature, "
                    "centre, session, room, model and version before using it; a refusal is "
                    "printed with its reason. A gate that is offline gets the roster when it "
                    "reconnects and is listed as NOT CONFIRMED. Use your technician "
                    "certificate (`technician-cert`); the gateway's is refused, since the push "
                    "would take over the running gateway's session. Exit code 0 only when "
                    "every gate confirmed.")
    push.add_argument("signed_roster", type=Path, help="the .roster.signed file")
    push.add_argument("--centre", required=True, help="centre id, e.g. c01")
    push.add_argument("--device", action="append", required=True,
                      help="a gate id of the room (repeat for each gate)")
    _add_push_broker_args(push)
    push.set_defaults(func=_cmd_roster_push)

    cpush = sub.add_parser(
        "config-push", help="send a gate a new version of its device.toml and confirm it",
        description="Publish a gate's whole device.toml, with a version number, over MQTT and "
                    "wait for the gate's acknowledgement. The version and the file's sha256 "
                    "are the desired config (printed first); the gate answers `applied` once "
                    "it has swapped the file in and restarted its workers with it (its reported "
                    "config, also in its status message), or REFUSED with the reason: a version "
                    "not newer than the one it runs, a file that is not TOML or not a valid "
                    "config (the field is named), an unsigned change of a key that decides who "
                    "enters or whom the gate trusts (thresholds, liveness, quality, broker, pin "
                    "map, room, session, camera, models: sign it with --keys), or a changed "
                    "local-only key (device_id, centre, data_dir, [keys], the broker's TLS "
                    "files: re-provision for those). Without --keys only the harmless keys may "
                    "change (telemetry_interval_s, drain_timeout_s, models.threads, "
                    "screen.result_hold_s, screen.preview_fps, capture.freeze_s); the keys the "
                    "file sets that would need signing are printed before sending. A gate that "
                    "is offline gets the config when it reconnects and is listed as NOT "
                    "CONFIRMED. Use your technician certificate (`technician-cert`), never the "
                    "gateway's. Exit code 0 only when the gate applied it.",
        epilog="Example: gerbang-provision config-push --config-file devices/c01-r01-a/"
               "device.toml --version 2 --device c01-r01-a --keys roster-keys "
               "--broker-host broker.c01.lan --ca-file technicians/ca.pem --cert-file "
               "technicians/tech-budi.pem --key-file technicians/tech-budi.key")
    cpush.add_argument("--config-file", type=Path, required=True,
                       help="the gate's whole new device.toml (its [gate] device_id must be "
                            "--device)")
    cpush.add_argument("--version", type=int, required=True,
                       help="config version; must be higher than the one the gate reports")
    cpush.add_argument("--device", required=True, help="the gate id, e.g. c01-r01-a")
    cpush.add_argument("--centre", help="centre id (default: [gate] centre of the file)")
    cpush.add_argument("--keys", type=Path,
                       help="the centre's roster key folder: sign the config with it (needed "
                            "to change any key but the harmless ones)")
    _add_push_broker_args(cpush)
    cpush.set_defaults(func=_cmd_config_push)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; expected failures print one clear line and exit 2."""
    args = build_parser().parse_args(argv)
    setup_logging("gerbang-provision", args.verbose)
    try:
        return args.func(args)
    except (ModelBundleError, RosterError, KeyFileError, FileNotFoundError, RuntimeError,
            PKIError, ProvisionError, ConfigError) as exc:
        log.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
