"""``gerbang-device``: run the gate service and check its models."""

from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import sys
from pathlib import Path

from device.infer.bundle import ModelBundleError, load_bundle
from device.roster import RosterError
from gerbang.config import ConfigError
from gerbang.logs import setup_logging

log = logging.getLogger("device")


def _cmd_run(args: argparse.Namespace) -> int:
    from device.config import load_device_config
    from device.service import run_device

    config = load_device_config(args.config)
    setup_logging(config.gate.device_id, args.verbose)
    result = run_device(config)
    if args.json:
        print(json.dumps(result))
    return 0


def verify_models(bundle_dir: Path | None) -> int:
    """Check the bundle and print one line per model (raises ModelBundleError on a mismatch)."""
    bundle = load_bundle(bundle_dir)
    for role, sha in bundle.hashes().items():
        print(f"ok  {role:10s} {bundle.entry(role)['file']:32s} sha256 {sha}")
    return 0


def _cmd_verify_models(args: argparse.Namespace) -> int:
    return verify_models(args.bundle)


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
    run.set_defaults(func=_cmd_run)
    verify = sub.add_parser("verify-models", help="check the model bundle's sha256 sums",
                            description="Check every model file against manifest.json.")
    verify.add_argument("--bundle", type=Path, default=None,
                        help="bundle directory (default: the one shipped in the package)")
    verify.set_defaults(func=_cmd_verify_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; expected failures print one clear line and exit 2, never a traceback."""
    # A crash inside native code (TFLite, OpenCV) must leave a stack in the journal.
    faulthandler.enable()
    args = build_parser().parse_args(argv)
    setup_logging("gerbang-device", args.verbose)
    try:
        return args.func(args)
    except (ConfigError, ModelBundleError, RosterError, FileNotFoundError) as exc:
        log.error("cannot start: %s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
