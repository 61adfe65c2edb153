"""The centre folder and its CA: ``ca create``, ``ca status``, ``ca refresh-crl``; and, for every
command that works on the centre, the ``--centre-dir`` option and opening the folder with its CA
(asking for the CA key's passphrase when it has one)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from provisioning.bundle import Centre
    from provisioning.pki import CentreCA


def centre_dir_option() -> argparse.ArgumentParser:
    """The parent parser of every centre command: ``--centre-dir`` (read from the environment
    when the parser is built)."""
    centre_option = argparse.ArgumentParser(add_help=False)
    centre_option.add_argument(
        "--centre-dir", metavar="DIR", default=os.environ.get("GERBANG_CENTRE_DIR", "."),
        help="the centre's provisioning folder (default: $GERBANG_CENTRE_DIR, else the current "
             "folder)")
    return centre_option


def centre_folder(args: argparse.Namespace) -> Path:
    """The centre folder ``--centre-dir`` names."""
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


def load_centre_and_ca(args: argparse.Namespace) -> tuple[Centre, CentreCA]:
    """The centre folder and its CA (asking for the CA passphrase when the key has one)."""
    from provisioning import pki
    from provisioning.bundle import check_ca_matches, load_centre

    centre = load_centre(centre_folder(args))
    key = centre.ca_dir / pki.CA_KEY
    passphrase = None
    if key.exists() and b"ENCRYPTED" in key.read_bytes()[:64]:
        passphrase = _ca_passphrase(f"Passphrase of {key}: ")
    return centre, check_ca_matches(centre, pki.load_centre_ca(centre.ca_dir, passphrase))


def _cmd_ca_create(args: argparse.Namespace) -> int:
    from provisioning.bundle import create_centre

    passphrase = (_ca_passphrase("New passphrase for the CA key: ", confirm=True)
                  if args.passphrase else None)
    centre = create_centre(centre_folder(args), args.centre, args.broker_host, args.broker_port,
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

    centre, ca = load_centre_and_ca(args)
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

    centre, ca = load_centre_and_ca(args)
    path = pki.refresh_crl(ca)
    copied = sync_crl(centre, ca)
    crl = x509.load_pem_x509_crl(path.read_bytes())
    print(f"CRL re-signed: {path}, next update due {crl.next_update_utc:%Y-%m-%d}")
    if copied:
        print(f"copied to {copied}")
    print("Copy crl.pem to the broker host and restart the broker (sudo systemctl restart "
          "mosquitto) before the old CRL's next update, or the broker refuses every client.")
    return 0


def add_commands(sub: argparse._SubParsersAction, centre_option: argparse.ArgumentParser) -> None:
    """The ``ca`` command: create the centre, check expiry, re-sign the CRL."""

    ca = sub.add_parser(
        "ca", help="create the centre (CA, broker certificate, roster keys); check expiry",
        description="Every exam centre has its own certificate authority (CA). It vouches for "
                    "the broker, the gateway and every gate; the broker lets in only what it "
                    "signed and has not revoked. Its key stays on this laptop.")
    casub = ca.add_subparsers(dest="ca_command", required=True, metavar="ACTION")
    create = casub.add_parser(
        "create", parents=[centre_option], help="make a new centre folder (once per centre)",
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
        "status", parents=[centre_option],
        help="list certificates and warn before anything expires",
        description="Lists every certificate the CA issued (valid, revoked, expired) and warns "
                    "about the CA, the CRL and certificates expiring soon. Exit code 1 when "
                    "there is a warning, so it can run from cron. A stale CRL makes the broker "
                    "refuse EVERY client: run `ca refresh-crl` before its next update.")
    status.add_argument("--warn-days", type=int, default=30,
                        help="warn this many days ahead (default 30)")
    status.add_argument("--json", action="store_true", help="one JSON object")
    status.set_defaults(func=_cmd_ca_status)
    refresh = casub.add_parser(
        "refresh-crl", parents=[centre_option], help="re-sign the revocation list (every 180 days)",
        description="Re-signs crl.pem with a new next-update date (180 days) and copies it into "
                    "the broker folder; then copy it to the broker host and restart Mosquitto.")
    refresh.set_defaults(func=_cmd_ca_refresh_crl)
