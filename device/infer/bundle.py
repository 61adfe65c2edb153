"""The model bundle: the .tflite files plus ``manifest.json`` describing and fingerprinting them.

A device verifies every file's sha256 before loading anything and refuses to start on a mismatch:
a half-copied or tampered model must never decide who enters an exam room.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_BUNDLE_DIR = Path(__file__).parent / "models"


class ModelBundleError(RuntimeError):
    """The bundle is missing, unreadable, or a file does not match its manifest."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks (models are several MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelBundle:
    """A verified bundle: its directory and parsed manifest."""

    directory: Path
    manifest: dict[str, Any]

    def entry(self, role: str) -> dict[str, Any]:
        """Manifest entry of the model playing ``role`` (``detector``, ``embedder`` ...)."""
        try:
            return self.manifest["models"][role]
        except KeyError:
            raise ModelBundleError(
                f"manifest in {self.directory} has no model for role {role!r}") from None

    def path(self, role: str) -> Path:
        """Path of the model file playing ``role``."""
        return self.directory / self.entry(role)["file"]

    def hashes(self) -> dict[str, str]:
        """Role → sha256, as reported in the device's birth message."""
        return {role: m["sha256"] for role, m in self.manifest["models"].items()}


def load_bundle(directory: Path | None = None) -> ModelBundle:
    """Read the manifest in ``directory`` and check every listed file's sha256.

    Raises ModelBundleError naming the first file that is missing or altered.
    """
    directory = Path(directory) if directory else DEFAULT_BUNDLE_DIR
    manifest_path = directory / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise ModelBundleError(
            f"model manifest {manifest_path} is missing; build the bundle with "
            "`python provisioning/build_models.py`") from None
    except json.JSONDecodeError as exc:
        raise ModelBundleError(f"model manifest {manifest_path} is not valid JSON: {exc}") from None
    models = manifest.get("models")
    if not isinstance(models, dict) or not models:
        raise ModelBundleError(f"model manifest {manifest_path} lists no models")
    # ``artefacts`` are files fitted on top of the models (the passive liveness classifier):
    # pinned the same way, so an altered classifier stops the device like an altered model.
    for role, entry in [*models.items(), *manifest.get("artefacts", {}).items()]:
        path = directory / entry["file"]
        if not path.is_file():
            raise ModelBundleError(f"model file {path} ({role}) is missing")
        actual = sha256_file(path)
        if actual != entry["sha256"]:
            raise ModelBundleError(
                f"model file {path} ({role}) does not match its manifest: sha256 {actual[:16]}… "
                f"expected {entry['sha256'][:16]}…; refusing to start with an altered model")
    return ModelBundle(directory=directory, manifest=manifest)


def pin_artefact(directory: Path, role: str, file: Path, **details: Any) -> dict[str, Any]:
    """Record ``file`` (inside ``directory``) under ``artefacts`` in the bundle's manifest with
    its sha256 (used by ``provisioning/train_pad.py`` after fitting)."""
    from gerbang.files import write_atomic

    manifest_path = Path(directory) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    entry = {"file": Path(file).name, "sha256": sha256_file(file),
             "bytes": Path(file).stat().st_size, **details}
    manifest.setdefault("artefacts", {})[role] = entry
    write_atomic(manifest_path, (json.dumps(manifest, indent=2) + "\n").encode())
    return entry


def calibrated_threshold(bundle: ModelBundle, score_kind: str, far: float) -> float:
    """The threshold the bundle's calibration measured for ``score_kind`` at ``far``.

    Raises ModelBundleError when the bundle was never calibrated for it, naming the fix.
    """
    from device.infer.metrics import far_key

    try:
        return float(bundle.manifest["calibration"]["thresholds"][score_kind][far_key(far)])
    except (KeyError, TypeError):
        raise ModelBundleError(
            f"model bundle {bundle.directory} has no calibrated {score_kind} threshold for FAR "
            f"{far:g}; run `gerbang-device eval DIR --enroll 3 --calibrate` or set "
            "match.threshold") from None
