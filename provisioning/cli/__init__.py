"""``gerbang-provision``: this package only parses and dispatches; each group of commands is a
module. May import provisioning, device, gerbang and gateway's public modules (roster CSV)."""

from __future__ import annotations

import argparse
import logging

from device.decide.roster import RosterError
from device.infer.bundle import ModelBundleError
from device.manage.keyfile import KeyFileError
from gerbang.config import ConfigError
from gerbang.logs import setup_logging
from provisioning.bundle import ProvisionError
from provisioning.cli import (
    broker,
    calibrate,
    centre,
    certificates,
    demo_faces,
    gate_bundle,
    models,
    push,
    rosters,
)
from provisioning.pki import PKIError

log = logging.getLogger("provision")


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
  thresholds from the round's own photos (docs/provisioning.md):
  gerbang-provision calibrate --embeddings R*.photos.npz --source "roster:S1 c01" --out cal.json
  gerbang-provision roster-sign R*.roster.json --keys roster-keys --calibration cal.json

Now and then: gerbang-provision ca status (warns before a certificate or the revocation list
expires); a lost or stolen gate: gerbang-provision revoke c01-r01-a, then restart the broker.""")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # In this order in --help: the centre, its gates, then rosters, models and pushes.
    centre_option = centre.centre_dir_option()
    centre.add_commands(sub, centre_option)
    certificates.add_commands(sub, centre_option)
    broker.add_commands(sub, centre_option)
    gate_bundle.add_commands(sub, centre_option)
    rosters.add_commands(sub)
    calibrate.add_commands(sub)
    models.add_commands(sub)
    demo_faces.add_commands(sub)
    push.add_commands(sub)
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
