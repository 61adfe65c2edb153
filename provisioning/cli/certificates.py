"""Who the centre's CA vouches for: ``device add`` and ``device csr-command`` (a gate),
``gateway-cert``, ``technician-cert``, and ``revoke``; each tells the technician what the broker
needs afterwards."""

from __future__ import annotations

import argparse
import logging
import shlex
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from provisioning.cli.centre import centre_folder, load_centre_and_ca

if TYPE_CHECKING:
    from provisioning.bundle import Centre
    from provisioning.pki import CentreCA

log = logging.getLogger("provision")


def _cmd_device_add(args: argparse.Namespace) -> int:
    from provisioning.bundle import add_device, fetch_csr_command
    from provisioning.pki import load_certificate

    centre, ca = load_centre_and_ca(args)
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

    centre = load_centre(centre_folder(args))
    print(csr_shell_command(args.device, centre.centre_id, args.etc_dir))
    return 0


def _cmd_gateway_cert(args: argparse.Namespace) -> int:
    from provisioning.bundle import gateway_broker_toml, issue_gateway_cert
    from provisioning.files import write_file

    centre, ca = load_centre_and_ca(args)
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

    centre, ca = load_centre_and_ca(args)
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

    centre, ca = load_centre_and_ca(args)
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


def add_commands(sub: argparse._SubParsersAction, centre_option: argparse.ArgumentParser) -> None:
    """The ``device``, ``gateway-cert``, ``technician-cert`` and ``revoke`` commands."""
    from provisioning.bundle import DEFAULT_ETC_DIR
    from provisioning.pki import REVOCATION_REASONS

    device = sub.add_parser(
        "device", help="give a gate its certificate (add), or the command to make its key",
        description="A gate proves who it is to the broker with a certificate whose name (CN) "
                    "is its device id. Best: its key is made on the gate itself and only a "
                    "certificate request (CSR) comes back (--csr or --csr-from-host). Otherwise "
                    "the key is made here and travels in the gate's bundle.")
    dsub = device.add_subparsers(dest="device_command", required=True, metavar="ACTION")
    add = dsub.add_parser(
        "add", parents=[centre_option], help="certify a gate (key made on the gate, or here)",
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
        "csr-command", parents=[centre_option],
        help="print the command that makes a gate's key on it",
        description="Prints one command to paste into the Pi's terminal: it makes the gate's "
                    "key in /etc/gerbang/tls (mode 0600, never overwritten) with openssl and "
                    "prints the certificate request. Save that text as DEVICE.csr and run "
                    "`gerbang-provision device add DEVICE --room ROOM --csr DEVICE.csr`.")
    csrcmd.add_argument("device", help="device id, e.g. c01-r01-a")
    csrcmd.add_argument("--etc-dir", default=DEFAULT_ETC_DIR,
                        help=f"the gate's config folder (default {DEFAULT_ETC_DIR})")
    csrcmd.set_defaults(func=_cmd_device_csr_command)

    gateway = sub.add_parser(
        "gateway-cert", parents=[centre_option], help="make the gateway's certificate and key",
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
        "technician-cert", parents=[centre_option],
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
        "revoke", parents=[centre_option],
        help="shut a gate out of the broker (lost, stolen, retired)",
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
