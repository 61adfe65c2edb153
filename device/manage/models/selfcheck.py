"""The self-check of an unpacked bundle: every model loads and runs once, in process or in a
child process (``python -m device.manage.models.selfcheck self-check DIR``) so a model that
crashes the runtime cannot take the gate down. OpenCV and TFLite load only when it runs."""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from device.infer.bundle import ModelBundleError, load_bundle

#: The isolated self-check (loads and runs every model once) must finish within this.
SELF_CHECK_TIMEOUT_S = 180.0

if TYPE_CHECKING:
    import numpy as np


log = logging.getLogger(__name__)

class SelfCheckFailed(RuntimeError):
    """An unpacked bundle does not load or does not compute sane outputs; says which model."""




def render_test_scene() -> np.ndarray:
    """A drawn 640×480 BGR scene with a face-like shape, made in code (no photo ships with the
    package). YuNet need not find a face in it: it only has to be a real picture to compute on."""
    import cv2
    import numpy as np

    yy, xx = np.mgrid[0:480, 0:640]
    image = np.stack([(xx * 255 / 639), (yy * 255 / 479), np.full_like(xx, 128.0)], axis=-1)
    image = image.astype(np.uint8)
    cv2.ellipse(image, (320, 240), (90, 120), 0, 0, 360, (140, 170, 210), -1)
    for x in (285, 355):
        cv2.ellipse(image, (x, 205), (16, 8), 0, 0, 360, (255, 255, 255), -1)
        cv2.circle(image, (x, 205), 6, (40, 30, 20), -1)
    cv2.line(image, (320, 210), (312, 262), (100, 120, 160), 3)
    cv2.ellipse(image, (320, 295), (34, 12), 0, 0, 180, (60, 60, 150), -1)
    return image


def _expected_shape(entry: dict[str, Any], name: str) -> list[int] | None:
    for output in entry.get("output", []):
        if output.get("name") == name:
            return list(output.get("shape", [])) or None
    return None


def self_check(directory: Path, *, threads: int = 1, runtime: str = "auto",
               calibration_far: float | None = None) -> str:
    """Load an unpacked bundle and run each of its models once; SelfCheckFailed naming the
    model and what is wrong, else a one-line summary.

    Checks: every file matches the manifest (``load_bundle``); every model listed loads in the
    TFLite runtime; the detector's twelve outputs have the manifest's shapes, are finite, and
    its probabilities lie in 0..1; FaceMesh gives 468 finite points; the embedder gives finite
    unit vectors of the same length that differ for different crops; the liveness classifier
    (when the bundle carries one) loads for this embedder; and with ``calibration_far`` (a gate
    that takes its threshold from the bundle) calibrated thresholds exist for cosine and T-norm
    scores at that FAR. It cannot prove accuracy: no face photo ships with the gate, and a
    drawn face is not one YuNet has to find. Measuring accuracy (``gerbang-device eval``) is
    the job of whoever signs a bundle.
    """
    import numpy as np

    from device.infer.bundle import calibrated_threshold
    from device.infer.detect import Face
    from device.infer.pipeline import FacePipeline
    from device.infer.runtime import load_interpreter

    started = time.monotonic()
    try:
        bundle = load_bundle(directory)
    except ModelBundleError as exc:
        raise SelfCheckFailed(str(exc)) from None
    for role in bundle.manifest["models"]:
        try:
            load_interpreter(bundle.path(role), threads, runtime)
        except Exception as exc:
            raise SelfCheckFailed(f"{role} model {bundle.entry(role)['file']} does not load: "
                                  f"{exc}") from None
    try:
        pipeline = FacePipeline.from_bundle(bundle, threads, runtime)
    except Exception as exc:
        raise SelfCheckFailed(f"the face pipeline cannot be built from this bundle: "
                              f"{type(exc).__name__}: {exc}") from None
    image = render_test_scene()

    detector = pipeline.detector
    try:
        detector.detect(image)
    except Exception as exc:
        raise SelfCheckFailed(f"detector failed on the test image: {type(exc).__name__}: "
                              f"{exc}") from None
    detector_entry = bundle.entry("detector")
    for (kind, stride), index in detector.outputs.items():
        name = f"{kind}_{stride}"
        values = detector.interpreter.get_tensor(index)
        expected = _expected_shape(detector_entry, name)
        if expected is not None and list(values.shape) != expected:
            raise SelfCheckFailed(f"detector output {name} has shape {list(values.shape)}, the "
                                  f"manifest says {expected}")
        if not np.all(np.isfinite(values)):
            raise SelfCheckFailed(f"detector output {name} is not finite (NaN or inf)")
        if kind in ("cls", "obj") and (values.min() < -1e-4 or values.max() > 1 + 1e-4):
            raise SelfCheckFailed(f"detector output {name} is a probability but spans "
                                  f"{values.min():.3g}..{values.max():.3g}")

    if pipeline.refiner is not None:
        landmarks = np.array([[285, 205], [355, 205], [318, 255], [292, 295], [348, 295]],
                             dtype=np.float64)
        try:
            mesh = pipeline.refiner.refine(image, Face((230.0, 120.0, 180.0, 240.0), landmarks,
                                                       1.0))
        except Exception as exc:
            raise SelfCheckFailed(f"face_mesh model failed: {type(exc).__name__}: "
                                  f"{exc}") from None
        if mesh.points.shape != (468, 3) or not np.all(np.isfinite(mesh.points)):
            raise SelfCheckFailed(f"face_mesh gave {mesh.points.shape} points or non-finite "
                                  "ones, expected 468 finite (x, y, z)")

    import cv2

    crops = [cv2.resize(image[110:370, 220:420], (112, 112)),
             cv2.resize(image[0:240, 0:320], (112, 112))]
    try:
        vectors = [pipeline.embedder.embed(crop) for crop in crops]
    except Exception as exc:
        raise SelfCheckFailed(f"embedder failed: {type(exc).__name__}: {exc}") from None
    dim = vectors[0].size
    for vector in vectors:
        if vector.size != dim or dim < 16:
            raise SelfCheckFailed(f"embedder gave vectors of length {vector.size}, expected a "
                                  "fixed length of at least 16")
        if not np.all(np.isfinite(vector)):
            raise SelfCheckFailed("embedder output is not finite (NaN or inf)")
        norm = float(np.linalg.norm(vector))
        if abs(norm - 1.0) > 1e-3:
            raise SelfCheckFailed(f"embedder output is not a unit vector (length {norm:.4f})")
    if float(np.dot(vectors[0], vectors[1])) > 0.99999:
        raise SelfCheckFailed("embedder gives the same vector for two different crops")

    extra = []
    pad = bundle.manifest.get("artefacts", {}).get("pad_passive")
    if pad is not None:
        from device.infer.liveness import PassiveLiveness

        try:
            PassiveLiveness.from_json(bundle.directory / pad["file"], bundle=bundle,
                                      threads=threads, runtime=runtime)
        except Exception as exc:
            raise SelfCheckFailed(f"liveness classifier {pad['file']} does not load: "
                                  f"{exc}") from None
        extra.append("liveness classifier loads")
    if calibration_far is not None:
        for kind in ("cosine", "tnorm"):
            try:
                calibrated_threshold(bundle, kind, calibration_far)
            except ModelBundleError as exc:
                raise SelfCheckFailed(f"{exc} (this gate takes its threshold from the "
                                      "bundle)") from None
        extra.append(f"calibrated at FAR {calibration_far:g}")
    return (f"{len(bundle.hashes())} models load and run (detector outputs finite, embedder "
            f"{dim}-D unit vectors){''.join(', ' + e for e in extra)}; "
            f"{(time.monotonic() - started) * 1000:.0f} ms")


def self_check_isolated(directory: Path, *, threads: int = 1, runtime: str = "auto",
                        calibration_far: float | None = None,
                        timeout_s: float = SELF_CHECK_TIMEOUT_S) -> str:
    """``self_check`` in a child process, so a model that crashes or hangs the TFLite runtime
    fails the check instead of taking the gate service down."""
    command = [sys.executable, "-m", "device.manage.models.selfcheck", "self-check", str(directory),
               "--threads", str(threads), "--runtime", runtime]
    if calibration_far is not None:
        command += ["--calibration-far", repr(calibration_far)]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s,
                              check=False)
    except subprocess.TimeoutExpired:
        raise SelfCheckFailed(f"the models did not finish loading and running within "
                              f"{timeout_s:.0f} s") from None
    lines = proc.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1]) if lines else None
    except ValueError:
        result = None
    if proc.returncode < 0 or not isinstance(result, dict):
        tail = " ".join(proc.stderr.strip().splitlines()[-2:])[-300:]
        how = (f"was killed by signal {-proc.returncode}" if proc.returncode < 0
               else f"exited with code {proc.returncode}")
        raise SelfCheckFailed(f"the self-check process {how} while running the models"
                              + (f" ({tail})" if tail else ""))
    if not result.get("ok"):
        raise SelfCheckFailed(str(result.get("detail")))
    return str(result.get("detail"))





def main(argv: list[str] | None = None) -> int:
    """Run the self-check of one unpacked bundle; prints one JSON line {ok, detail}."""
    parser = argparse.ArgumentParser(
        prog="python -m device.manage.models.selfcheck",
        description="Self-check an unpacked model bundle the way a gate does before switching "
                    "to it: every file against the manifest, every model loads and runs once.")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("self-check", help="load and run every model of a bundle folder")
    check.add_argument("directory", type=Path, help="the bundle folder (holds manifest.json)")
    check.add_argument("--threads", type=int, default=1)
    check.add_argument("--runtime", default="auto")
    check.add_argument("--calibration-far", type=float, default=None,
                       help="also require calibrated thresholds at this FAR")
    args = parser.parse_args(argv)
    try:
        detail = self_check(args.directory, threads=args.threads, runtime=args.runtime,
                            calibration_far=args.calibration_far)
    except SelfCheckFailed as exc:
        print(json.dumps({"ok": False, "detail": str(exc)}))
        return 1
    print(json.dumps({"ok": True, "detail": detail}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
