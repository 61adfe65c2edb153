"""Signed model bundle updates on the gate: verify, unpack, self-check, switch, roll back.

A new model bundle (the ``.tflite`` files, ``manifest.json``, the liveness classifier, licences)
reaches a gate as one signed archive, made on the technician's laptop with ``gerbang-provision
models sign`` and signed with the centre's roster-signing key (the key every gate already trusts
through ``[keys] roster_public_key``). It arrives over MQTT (the ``models`` command, whole or in
resumable chunks) or as a file ``<data_dir>/incoming/*.models.signed`` picked up at start.

Archive layout (bytes)::

    b"gerbang-model-bundle/1\\n"      magic: format and version; also keeps these signatures
                                      apart from signed rosters (same key, other magic)
    header length                     4 bytes, big-endian
    header                            UTF-8 JSON, sorted keys: format, bundle_version, created,
                                      centre, signer (key id), files [{path, sha256, bytes}]
    file contents                     every file of the header's list, in that order, back to
                                      back (lengths from the header)
    signature                         64 bytes: Ed25519 over everything above

A gate refuses an archive with ``ModelUpdateRefused.reason`` one of: ``malformed`` (layout),
``tampered`` (the signature does not match; the message names the altered file, or the header),
``wrong_key`` (signed by another key), ``inconsistent`` (signed, but the header does not
describe the contents), ``hash_mismatch`` (signed, but file X's bytes are not its listed sha256),
``old_version`` (not newer than the installed bundle, unless forced), ``embedder_changed`` (the
new embedder could not compare the installed roster's templates, unless forced), ``no_space``,
``self_check_failed``.

On the gate (``<data_dir>/models/``)::

    <version>-<sha256[:12]>/    one unpacked bundle per install: the current one and the one
                                before it are kept, older ones deleted
    state.json                  which is current, which is previous, whether current is still
                                pending (written atomically: this file IS the switch)
    upload/<sha256>.part        a chunked upload in progress (resumable)

Install: verify → unpack into a staging folder → self-check it in a child process (a model that
crashes the TFLite runtime must not take the gate down) → rename → write ``state.json`` with the
new bundle current, the old one previous, and ``pending``. The running service keeps the models
it started with; the new bundle is used from the next start of the service. That start counts
itself in ``pending.starts`` before loading, self-checks the bundle in process, and confirms it
(clears ``pending``) once the service is ready. A bundle that fails to load at start is rolled
back at once; one that never reaches ready (crash, watchdog kill) is rolled back by the
``MAX_PENDING_STARTS``-th start. Rolling back makes the previous bundle current again.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from device.infer.bundle import DEFAULT_BUNDLE_DIR, ModelBundle, ModelBundleError, load_bundle
from device.manage import chunks, signed_layout
from device.manage.signed_layout import (
    LayoutError,
    SignatureMismatch,
    check_signature,
    public_key_id,
    split_signed,
)
from gerbang.files import write_atomic

if TYPE_CHECKING:
    import numpy as np

    from device.config import DeviceConfig

log = logging.getLogger(__name__)

MAGIC = b"gerbang-model-bundle/1\n"
HEADER_FORMAT = 1
SIGNATURE_BYTES = signed_layout.SIGNATURE_BYTES
_LENGTH = signed_layout.LENGTH
#: The header lists a dozen files; anything this big is not ours (and is not parsed).
MAX_HEADER_BYTES = signed_layout.MAX_HEADER_BYTES
#: Largest archive a gate accepts (today's bundle is about 11.7 MB): it is verified in memory.
MAX_ARCHIVE_BYTES = 64 * 1024 * 1024
#: Chunk size the sender uses (raw bytes; about 5.6 MB once in base64 and JSON), well under the
#: 16 MB command limit.
CHUNK_BYTES = 4 * 1024 * 1024
#: A pending bundle gets this many starts to reach "ready" before it is rolled back.
MAX_PENDING_STARTS = 3
#: The isolated self-check (loads and runs every model once) must finish within this.
SELF_CHECK_TIMEOUT_S = 180.0
#: Free space needed in the data directory, in multiples of the archive size (upload part,
#: staging copy, the bundle kept as previous).
SPACE_FACTOR = 3

MODELS_DIR, STATE_FILE, UPLOAD_DIR = "models", "state.json", "upload"
INCOMING_SUFFIX = ".models.signed"

# Reasons a gate refuses a model bundle (``ModelUpdateRefused.reason``).
MALFORMED = "malformed"
TAMPERED = "tampered"
WRONG_KEY = "wrong_key"
INCONSISTENT = "inconsistent"
HASH_MISMATCH = "hash_mismatch"
OLD_VERSION = "old_version"
EMBEDDER_CHANGED = "embedder_changed"
NO_SPACE = "no_space"
SELF_CHECK_FAILED = "self_check_failed"

_VERSION = re.compile(r"^\d{1,6}(\.\d{1,6}){0,3}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_PART = r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}"
#: A file inside a bundle: one name, or one folder and a name (``LICENSES/MIT-YuNet.txt``). No
#: leading dot, so never ``..``, and never absolute.
_BUNDLE_PATH = re.compile(rf"^(?:{_PART}/)?{_PART}$")


class ModelUpdateError(ModelBundleError):
    """Something about model updates on this gate is wrong (state file, keys); says what. A
    ModelBundleError, so the gate's command line reports it in one line and exits 2."""


class ModelUpdateRefused(ModelUpdateError):
    """A model bundle this gate will not install; ``reason`` is a short code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"model bundle refused ({reason}): {message}")
        self.reason = reason


class SelfCheckFailed(RuntimeError):
    """An unpacked bundle does not load or does not compute sane outputs; says which model."""


# ---------------------------------------------------------------------------------------------
# archive format


@dataclass(frozen=True)
class BundleFile:
    """One file of a signed bundle, as the header lists it."""

    path: str
    sha256: str
    bytes: int


@dataclass(frozen=True)
class ModelBundleHeader:
    """The signed description of a model bundle archive."""

    bundle_version: str
    created: str  # ISO 8601 UTC, when provisioning signed it
    centre: str  # the centre whose key signed it (informational: the key is what binds)
    signer: str  # public_key_id of the signing key
    files: tuple[BundleFile, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON form, with the format number."""
        return {"format": HEADER_FORMAT, "bundle_version": self.bundle_version,
                "created": self.created, "centre": self.centre, "signer": self.signer,
                "files": [{"path": f.path, "sha256": f.sha256, "bytes": f.bytes}
                          for f in self.files]}

    @classmethod
    def from_dict(cls, data: Any) -> ModelBundleHeader:
        """Parse a header; ValueError naming the field on any problem."""
        if not isinstance(data, dict):
            raise ValueError("header is not a JSON object")
        if data.get("format") != HEADER_FORMAT:
            raise ValueError(f"header format {data.get('format')!r}, expected {HEADER_FORMAT}")
        for name in ("bundle_version", "created", "centre", "signer"):
            if not isinstance(data.get(name), str):
                raise ValueError(f"header field {name} must be a string, got "
                                 f"{data.get(name)!r}")
        check_version(data["bundle_version"])
        entries = data.get("files")
        if not isinstance(entries, list) or not entries:
            raise ValueError("header field files must be a non-empty list")
        files, seen = [], set()
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise ValueError(f"files[{i}] is not an object")
            path, sha, size = entry.get("path"), entry.get("sha256"), entry.get("bytes")
            if not isinstance(path, str) or not _BUNDLE_PATH.match(path):
                raise ValueError(f"files[{i}].path {path!r} is not a plain relative file name")
            if path in seen:
                raise ValueError(f"files[{i}].path {path!r} is listed twice")
            if not isinstance(sha, str) or not _SHA256.match(sha):
                raise ValueError(f"files[{i}].sha256 for {path} is not 64 lowercase hex")
            if type(size) is not int or size < 0:
                raise ValueError(f"files[{i}].bytes for {path} must be a whole number >= 0")
            seen.add(path)
            files.append(BundleFile(path, sha, size))
        if "manifest.json" not in seen:
            raise ValueError("files does not include manifest.json")
        return cls(data["bundle_version"], data["created"], data["centre"], data["signer"],
                   tuple(files))


@dataclass(frozen=True)
class VerifiedModelArchive:
    """An archive whose signature and file hashes checked out; contents by path."""

    header: ModelBundleHeader
    contents: dict[str, bytes]
    sha256: str  # of the whole archive: names the upload and the install folder

    def manifest(self) -> dict[str, Any]:
        """The bundle's manifest.json, parsed; ModelUpdateRefused if it is not JSON."""
        try:
            manifest = json.loads(self.contents["manifest.json"])
        except (ValueError, UnicodeDecodeError) as exc:
            raise ModelUpdateRefused(INCONSISTENT, f"manifest.json is not JSON: {exc}") from None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("models"), dict):
            raise ModelUpdateRefused(INCONSISTENT, "manifest.json lists no models")
        return manifest


def is_bundle_path(path: str) -> bool:
    """Whether ``path`` may name a file inside a bundle: plain names (letters, digits, ``.``,
    ``_``, ``-``, not starting with a dot), at most one folder deep, never absolute."""
    return bool(_BUNDLE_PATH.match(path))


def check_version(version: str) -> tuple[int, ...]:
    """A bundle version as a comparable tuple (``1.0.2`` → (1, 0, 2)); ValueError otherwise."""
    if not isinstance(version, str) or not _VERSION.match(version):
        raise ValueError(f"bundle version {version!r} must be 1 to 4 dot-separated numbers, "
                         "e.g. 1.0.2")
    return tuple(int(part) for part in version.split("."))


def encode_header(header: ModelBundleHeader) -> bytes:
    """The header's bytes as signed (compact JSON, sorted keys)."""
    return json.dumps(header.to_dict(), sort_keys=True, separators=(",", ":")).encode()


def signed_body(header_bytes: bytes, contents: list[bytes]) -> bytes:
    """Everything the signature covers: magic, header length, header, file contents."""
    return b"".join([MAGIC, _LENGTH.pack(len(header_bytes)), header_bytes, *contents])


def _split(blob: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    """(body, header bytes, file data, signature) by the layout alone; nothing is trusted yet
    (``device.manage.signed_layout``)."""
    try:
        return split_signed(blob, MAGIC)
    except LayoutError as exc:
        hint = ("; make one with `gerbang-provision models sign`"
                if not blob.startswith(MAGIC) else "")
        raise ModelUpdateRefused(exc.kind, f"not a usable signed Gerbang model bundle: "
                                 f"{exc}{hint}") from None


def _slices(files: tuple[BundleFile, ...], data: bytes) -> dict[str, bytes] | None:
    """The file contents cut from ``data`` by the header's lengths; None if they do not add up."""
    if sum(f.bytes for f in files) != len(data):
        return None
    out, offset = {}, 0
    for f in files:
        out[f.path] = data[offset:offset + f.bytes]
        offset += f.bytes
    return out


def _locate_damage(header_bytes: bytes, data: bytes) -> str:
    """Which part of an archive whose signature failed was altered, read without trusting it
    (only to word the refusal: the signature alone decides)."""
    try:
        header = ModelBundleHeader.from_dict(json.loads(header_bytes))
    except ValueError:  # includes JSON and UTF-8 errors
        return "the header or its length was altered (it no longer reads as a bundle header)"
    contents = _slices(header.files, data)
    if contents is None:
        return "the header's file list or file lengths were altered (they no longer add up)"
    for f in header.files:
        if hashlib.sha256(contents[f.path]).hexdigest() != f.sha256:
            return (f"file {f.path} was altered: its bytes no longer match the sha256 the "
                    "header lists (or that sha256 was altered)")
    return ("the header or the signature was altered (every file still matches the sha256 "
            "the header lists)")


def verify_model_archive(blob: bytes, public_key: Ed25519PublicKey) -> VerifiedModelArchive:
    """Check an archive's layout, its signature (before anything is parsed), its header, and
    every file's sha256; ModelUpdateRefused naming what failed."""
    blob = bytes(blob)
    if len(blob) > MAX_ARCHIVE_BYTES:
        raise ModelUpdateRefused(MALFORMED, f"archive is {len(blob)} bytes, more than the "
                                 f"{MAX_ARCHIVE_BYTES} a gate accepts")
    body, header_bytes, data, signature = _split(blob)
    try:
        check_signature(public_key, body, header_bytes, signature)
    except SignatureMismatch as exc:
        if exc.kind == WRONG_KEY:
            raise ModelUpdateRefused(WRONG_KEY, f"signed by key {exc.claimed}, but this gate "
                                     f"trusts only key {exc.ours}: a bundle signed with another "
                                     "centre's key (or one whose header was altered)") from None
        raise ModelUpdateRefused(TAMPERED, f"the signature does not match the contents: "
                                 f"{_locate_damage(header_bytes, data)}; get a fresh copy "
                                 "from provisioning") from None
    try:
        header = ModelBundleHeader.from_dict(json.loads(header_bytes))
    except ValueError as exc:
        raise ModelUpdateRefused(MALFORMED, f"signed header is unreadable: {exc}") from None
    ours = public_key_id(public_key)
    if header.signer != ours:
        raise ModelUpdateRefused(INCONSISTENT, f"header names signer {header.signer} but key "
                                 f"{ours} signed it")
    contents = _slices(header.files, data)
    if contents is None:
        raise ModelUpdateRefused(INCONSISTENT, f"the header's files add up to "
                                 f"{sum(f.bytes for f in header.files)} bytes, the archive "
                                 f"carries {len(data)}")
    for f in header.files:
        actual = hashlib.sha256(contents[f.path]).hexdigest()
        if actual != f.sha256:
            raise ModelUpdateRefused(HASH_MISMATCH, f"hash mismatch of file {f.path}: sha256 "
                                     f"{actual[:16]}…, the signed header lists {f.sha256[:16]}…")
    return VerifiedModelArchive(header, contents, hashlib.sha256(blob).hexdigest())


# ---------------------------------------------------------------------------------------------
# install state (<data_dir>/models/state.json)


@dataclass
class InstallState:
    """What ``state.json`` says. An entry is None for the base bundle (``[models] bundle_dir``,
    or the one shipped in the package), else ``{"dir", "version", "sha256", "installed"}``."""

    current: dict[str, Any] | None = None
    previous: dict[str, Any] | None = None
    #: ``{"starts": n, "since": ts}`` while the current bundle has not yet started the service.
    pending: dict[str, Any] | None = None
    #: The last rollback: ``{"version", "reason", "at"}``.
    rolled_back: dict[str, Any] | None = None

    def to_json(self) -> bytes:
        """The file's bytes."""
        return (json.dumps({"format": 1, "current": self.current, "previous": self.previous,
                            "pending": self.pending, "rolled_back": self.rolled_back},
                           indent=1) + "\n").encode()


def models_root(data_dir: Path) -> Path:
    """Where installed bundles and their state live."""
    return Path(data_dir) / MODELS_DIR


def read_state(data_dir: Path) -> InstallState:
    """The install state (empty when nothing was ever installed); ModelUpdateError naming the
    file when it is unreadable."""
    path = models_root(data_dir) / STATE_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return InstallState()
    except (OSError, ValueError) as exc:
        raise ModelUpdateError(f"model install state {path} is unreadable ({exc}); delete it "
                               "to run the configured (shipped) model bundle again") from None
    if not isinstance(data, dict) or data.get("format") != 1:
        raise ModelUpdateError(f"model install state {path} is not a format 1 state file; "
                               "delete it to run the configured (shipped) model bundle again")
    for name in ("current", "previous", "pending", "rolled_back"):
        if data.get(name) is not None and not isinstance(data[name], dict):
            raise ModelUpdateError(f"model install state {path}: {name} must be an object")
    for name in ("current", "previous"):
        entry = data.get(name)
        if entry is not None and not (isinstance(entry.get("dir"), str)
                                      and _BUNDLE_PATH.match(entry["dir"]) and "/" not in
                                      entry["dir"]):
            raise ModelUpdateError(f"model install state {path}: {name}.dir is not a folder "
                                   "name")
    return InstallState(data.get("current"), data.get("previous"), data.get("pending"),
                        data.get("rolled_back"))


def write_state(data_dir: Path, state: InstallState) -> None:
    """Replace ``state.json`` atomically (fsync, rename): the switch between bundles."""
    write_atomic(models_root(data_dir) / STATE_FILE, state.to_json())


def _bundle_version(directory: Path) -> str | None:
    version = _read_manifest(directory).get("bundle_version")
    return version if isinstance(version, str) else None


def models_high_water(data_dir: Path) -> str | None:
    """The newest model bundle version that ran on this gate (an installed update, confirmed),
    or the version of a signed downgrade installed with force; kept in the outbox database so
    deleting ``state.json`` cannot roll the gate back."""
    from device.config import OUTBOX_FILE
    from device.uplink.outbox import MODELS_HIGH_WATER, Outbox

    path = Path(data_dir) / OUTBOX_FILE
    if not path.exists():  # no outbox yet: nothing ran here (reading must not create it)
        return None
    outbox = Outbox(path)
    try:
        return outbox.high_water(MODELS_HIGH_WATER)
    finally:
        outbox.close()


def record_models_high_water(data_dir: Path, version: str, lower: bool = False) -> None:
    """Raise the models high-water mark to ``version`` (``lower``: set it even when lower, for
    a signed bundle installed with force, a deliberate downgrade)."""
    from device.config import OUTBOX_FILE
    from device.uplink.outbox import MODELS_HIGH_WATER, Outbox

    outbox = Outbox(Path(data_dir) / OUTBOX_FILE)
    try:
        held = outbox.high_water(MODELS_HIGH_WATER)
        try:
            higher = held is None or check_version(version) > check_version(held)
        except ValueError:
            higher = True  # an unreadable mark is replaced by a readable one
        if higher or (lower and held != version):
            outbox.set_high_water(MODELS_HIGH_WATER, version)
    finally:
        outbox.close()


def base_bundle_dir(config: DeviceConfig) -> Path:
    """The bundle the gate runs when nothing is installed: ``[models] bundle_dir`` or the
    package's own."""
    return Path(config.models.bundle_dir) if config.models.bundle_dir else DEFAULT_BUNDLE_DIR


def entry_dir(data_dir: Path, entry: dict[str, Any] | None, base_dir: Path) -> Path:
    """The folder of a state entry (None = the base bundle)."""
    return base_dir if entry is None else models_root(data_dir) / entry["dir"]


def active_bundle_dir(config: DeviceConfig) -> Path:
    """The bundle the next start of the service will use (for the self-test and diagnostics)."""
    state = read_state(config.gate.data_dir)
    return entry_dir(config.gate.data_dir, state.current, base_bundle_dir(config))


def _read_manifest(directory: Path) -> dict[str, Any]:
    try:
        return json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}


def _describe(entry: dict[str, Any] | None, base_dir: Path) -> str:
    if entry is None:
        version = _read_manifest(base_dir).get("bundle_version", "?")
        return f"{version} (base bundle {base_dir})"
    return f"{entry['version']} ({entry['dir']})"


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------------------------
# self-check


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
    command = [sys.executable, "-m", "device.manage.model_update", "self-check", str(directory),
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


# ---------------------------------------------------------------------------------------------
# install


@dataclass(frozen=True)
class InstallResult:
    """What an install did, for the command's acknowledgement and the log."""

    version: str
    directory: Path
    replaced: str  # description of the bundle that was current before
    detail: str


def _write_tree(target: Path, contents: dict[str, bytes]) -> None:
    """Write every file under ``target`` (0644), fsynced, then fsync the folders."""
    target.mkdir(mode=0o755, parents=True)
    folders = {target}
    for path, data in contents.items():
        dest = target / path
        if dest.parent != target:
            dest.parent.mkdir(mode=0o755, exist_ok=True)
            folders.add(dest.parent)
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    for folder in folders:
        _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _prune(data_dir: Path, state: InstallState) -> None:
    """Delete installed bundles that are neither current nor previous, and stale staging."""
    keep = {e["dir"] for e in (state.current, state.previous) if e is not None}
    root = models_root(data_dir)
    for child in root.iterdir() if root.is_dir() else []:
        if child.is_dir() and not child.is_symlink() and child.name != UPLOAD_DIR \
                and child.name not in keep:
            shutil.rmtree(child, ignore_errors=True)
            log.info("removed old model bundle folder %s", child)


def install_model_archive(blob: bytes, *, data_dir: Path, public_key: Ed25519PublicKey,
                          base_dir: Path, force: bool = False, threads: int = 1,
                          runtime: str = "auto", calibration_far: float | None = None,
                          check: Callable[..., str] = self_check_isolated) -> InstallResult:
    """Verify a signed model bundle, unpack it next to the current one, self-check it, and make
    it current (pending until the service starts with it). ModelUpdateRefused says why not;
    nothing changes on a refusal.

    ``force`` accepts a version that is not newer than the installed one (a deliberate
    downgrade) and an embedder that differs from the installed one.
    """
    data_dir = Path(data_dir)
    verified = verify_model_archive(blob, public_key)
    header = verified.header
    state = read_state(data_dir)
    current_dir = entry_dir(data_dir, state.current, base_dir)
    installed = _describe(state.current, base_dir)
    if state.current is not None and state.current.get("sha256") == verified.sha256:
        return InstallResult(header.bundle_version, current_dir, installed,
                             f"model bundle {header.bundle_version} is already installed "
                             f"({state.current['dir']}); nothing changed")
    manifest = verified.manifest()
    if manifest.get("bundle_version") != header.bundle_version:
        raise ModelUpdateRefused(INCONSISTENT, f"manifest.json says version "
                                 f"{manifest.get('bundle_version')!r}, the signed header "
                                 f"{header.bundle_version!r}")
    current_manifest = _read_manifest(current_dir)
    current_version = current_manifest.get("bundle_version", "0")
    try:
        older = check_version(header.bundle_version) <= check_version(current_version)
    except ValueError:
        older = False  # an installed version we cannot read never blocks an update
    if older and not force:
        raise ModelUpdateRefused(OLD_VERSION, f"version {header.bundle_version} is not newer "
                                 f"than the installed {installed}; send it with force to "
                                 "downgrade on purpose")
    new_embedder = manifest["models"].get("embedder", {}).get("sha256")
    old_embedder = current_manifest.get("models", {}).get("embedder", {}).get("sha256")
    embedder_changed = bool(old_embedder) and new_embedder != old_embedder
    if embedder_changed and not force:
        raise ModelUpdateRefused(EMBEDDER_CHANGED, f"the new embedder (sha256 "
                                 f"{str(new_embedder)[:16]}…) differs from the installed one "
                                 f"({old_embedder[:16]}…): this gate's roster templates could "
                                 "not be compared. Re-enroll the rosters with the new bundle, "
                                 "send it with force, restart, then push the new rosters")
    root = models_root(data_dir)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    free = shutil.disk_usage(root).free
    if free < SPACE_FACTOR * len(blob):
        raise ModelUpdateRefused(NO_SPACE, f"{free // 2**20} MB free in {root}, a "
                                 f"{len(blob) // 2**20} MB bundle needs "
                                 f"{SPACE_FACTOR * len(blob) // 2**20} MB")
    name = f"{header.bundle_version}-{verified.sha256[:12]}"
    staging = root / f".staging-{name}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        _write_tree(staging, verified.contents)
        try:
            summary = check(staging, threads=threads, runtime=runtime,
                            calibration_far=calibration_far)
        except SelfCheckFailed as exc:
            raise ModelUpdateRefused(SELF_CHECK_FAILED, f"{exc}; rolled back: the gate keeps "
                                     f"{installed}") from None
        final = root / name
        if final.exists():
            shutil.rmtree(final)
        os.rename(staging, final)
        _fsync_dir(root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    entry = {"dir": name, "version": header.bundle_version, "sha256": verified.sha256,
             "installed": _now()}
    # While a bundle is pending it never ran: the one to fall back to stays the last one that did.
    previous = state.previous if state.pending else state.current
    new_state = InstallState(current=entry, previous=previous,
                             pending={"starts": 0, "since": _now()},
                             rolled_back=state.rolled_back)
    write_state(data_dir, new_state)
    _prune(data_dir, new_state)
    if older:  # forced: the signed downgrade is what the gate may now run
        record_models_high_water(data_dir, header.bundle_version, lower=True)
    warning = (" WARNING: the embedder changed (forced): push rosters enrolled with the new "
               "bundle after the restart." if embedder_changed else "")
    detail = (f"model bundle {header.bundle_version} installed in {final} and self-checked "
              f"({summary}); previous {_describe(previous, base_dir)} kept. The gate runs "
              f"{installed} until the service restarts, which confirms "
              f"{header.bundle_version} (or rolls back if it does not start).{warning}")
    log.info("%s", detail)
    return InstallResult(header.bundle_version, final, installed, detail)


def install_for_config(config: DeviceConfig, blob: bytes, force: bool = False) -> InstallResult:
    """``install_model_archive`` with this gate's key, data folder, base bundle, runtime and
    calibration needs taken from its config."""
    from device.decide.roster import RosterError
    from device.manage.roster_file import load_roster_public_key

    if config.keys.roster_public_key is None:
        raise ModelUpdateError("this gate has no [keys] roster_public_key, so it cannot check "
                               "a signed model bundle")
    try:
        public_key = load_roster_public_key(config.keys.roster_public_key)
    except RosterError as exc:
        raise ModelUpdateError(str(exc)) from None
    return install_model_archive(
        blob, data_dir=config.gate.data_dir, public_key=public_key,
        base_dir=base_bundle_dir(config), force=force, threads=config.models.threads,
        runtime=config.models.runtime,
        calibration_far=config.match.target_far if config.match.threshold is None else None)


# ---------------------------------------------------------------------------------------------
# at service start


def rollback(data_dir: Path, state: InstallState, reason: str, base_dir: Path) -> InstallState:
    """Make the previous bundle current again, delete the failed one, and record why."""
    failed = state.current
    new_state = InstallState(current=state.previous, previous=None, pending=None,
                             rolled_back={"version": failed["version"] if failed else None,
                                          "dir": failed["dir"] if failed else None,
                                          "reason": reason, "at": _now()})
    write_state(data_dir, new_state)
    _prune(data_dir, new_state)
    log.error("model bundle %s rolled back to %s: %s", _describe(failed, base_dir),
              _describe(new_state.current, base_dir), reason)
    return new_state


def install_incoming(config: DeviceConfig) -> list[str]:
    """Install ``<data_dir>/incoming/*.models.signed`` (copied from a USB stick or a
    provisioning bundle); each file is removed once tried. Returns one line per file."""
    incoming = config.incoming_dir
    files = sorted(incoming.glob(f"*{INCOMING_SUFFIX}")) if incoming.is_dir() else []
    if not files:
        return []
    if config.keys.roster_public_key is None:
        log.error("model bundles waiting in %s cannot be checked: this gate has no [keys] "
                  "roster_public_key; they stay there", incoming)
        return []
    lines = []
    for path in files:
        blob = path.read_bytes()
        path.unlink()  # verified or refused, never tried twice (the log says which)
        try:
            lines.append(f"{path.name}: {install_for_config(config, blob).detail}")
        except ModelUpdateError as exc:
            log.error("%s: %s", path.name, exc)
            lines.append(f"{path.name}: {exc}")
    return lines


def _check_high_water(data_dir: Path, state: InstallState, directory: Path) -> None:
    """Refuse to start with a bundle older than the newest one that ran here (ModelUpdateError,
    so the service exits 2): ``state.json`` was deleted or replaced, which would otherwise
    roll the gate back to the base bundle (or an older install) in silence."""
    high_water = models_high_water(data_dir)
    version = (state.current or {}).get("version") or _bundle_version(directory)
    if high_water is None or version is None:
        return
    try:
        older = check_version(version) < check_version(high_water)
    except ValueError:
        return  # an unreadable version is the bundle loader's to refuse
    if older:
        what = "the base bundle" if state.current is None else f"installed bundle {version}"
        raise ModelUpdateError(
            f"model bundle roll-back refused: this gate ran model bundle {high_water}, but "
            f"would now start with {what} ({version}, {directory}) because "
            f"{models_root(data_dir) / STATE_FILE} is missing or names an older bundle (deleted "
            f"or replaced). Technician: copy the signed bundle {high_water} or newer "
            f"(`gerbang-provision models sign`) into {Path(data_dir) / 'incoming'} as "
            f"*{INCOMING_SUFFIX} and restart the service; to go back to an older bundle on "
            "purpose, send it to a running gate with force (the `models` command, \"force\": "
            "true), which is signed and lowers the mark")


def bundle_for_start(config: DeviceConfig) -> tuple[ModelBundle, Callable[[], None]]:
    """The verified model bundle the service starts with, and the callable to run once the
    service is ready (it confirms a pending bundle; otherwise does nothing).

    A pending bundle counts this start first (so a crash counts too), is rolled back when it
    already had ``MAX_PENDING_STARTS`` starts, or when it fails to load or run now. A bundle
    that is not pending is loaded as before: an altered one stops the gate
    (ModelBundleError), it is not silently replaced.
    """
    data_dir = config.gate.data_dir
    base_dir = base_bundle_dir(config)
    install_incoming(config)
    state = read_state(data_dir)
    if state.current is not None and state.pending is not None:
        starts = state.pending.get("starts", 0)
        if type(starts) is not int:  # unreadable count: treat the bundle as out of chances
            starts = MAX_PENDING_STARTS
        if starts >= MAX_PENDING_STARTS:
            state = rollback(data_dir, state, f"the service did not become ready with it in "
                             f"{starts} starts (crash, hang or refusal at start)", base_dir)
        else:
            state.pending = {**state.pending, "starts": starts + 1}
            write_state(data_dir, state)
            try:
                self_check(entry_dir(data_dir, state.current, base_dir),
                           threads=config.models.threads, runtime=config.models.runtime,
                           calibration_far=(config.match.target_far
                                            if config.match.threshold is None else None))
            except SelfCheckFailed as exc:
                state = rollback(data_dir, state, f"it failed to load at start: {exc}",
                                 base_dir)
    directory = entry_dir(data_dir, state.current, base_dir)
    _check_high_water(data_dir, state, directory)
    bundle = load_bundle(directory)
    if state.current is not None and state.pending is None:
        record_models_high_water(data_dir, state.current["version"])
    if state.current is not None:
        log.info("model bundle %s from %s%s", state.current["version"], directory,
                 " (pending: confirmed once the service is ready)" if state.pending else "")
    if state.current is None or state.pending is None:
        return bundle, lambda: None
    confirmed_dir = state.current["dir"]

    def confirm() -> None:
        now = read_state(data_dir)
        if now.current is not None and now.current["dir"] == confirmed_dir and now.pending:
            now.pending = None
            write_state(data_dir, now)
            record_models_high_water(data_dir, now.current["version"])
            log.info("model bundle %s confirmed: the service started with it",
                     now.current["version"])

    return bundle, confirm


# ---------------------------------------------------------------------------------------------
# the `models` command (device side) and its sender


def _upload_part(data_dir: Path, sha256: str) -> Path:
    return models_root(data_dir) / UPLOAD_DIR / f"{sha256}.part"


def receive_chunk(data_dir: Path, body: dict[str, Any]) -> tuple[bytes | None, str]:
    """Store one chunk of a chunked bundle upload (see :mod:`device.manage.chunks`); the parts live
    in
    ``<data_dir>/models/upload/``."""
    blob, detail = chunks.receive_chunk(models_root(data_dir) / UPLOAD_DIR, body,
                                        MAX_ARCHIVE_BYTES, SPACE_FACTOR, "upload")
    return blob, "" if blob is not None else detail


def push_handler(config: DeviceConfig) -> Callable[[dict[str, Any]], str]:
    """The ``models`` command: ``{"bundle_b64": …}`` or a chunk ``{"sha256", "size",
    "offset", "chunk_b64"}``, optionally ``"force": true``; installs once the archive is
    whole. Refusals are CommandErrors whose text starts with the reason."""
    from device.uplink.commands import CommandError

    data_dir = config.gate.data_dir

    def handle(body: dict[str, Any]) -> str:
        if config.keys.roster_public_key is None:
            raise CommandError("models: this gate has no [keys] roster_public_key, so it "
                               "cannot check a signed model bundle")
        force = body.get("force", False)
        if not isinstance(force, bool):
            raise CommandError("force: must be true or false")
        try:
            if "bundle_b64" in body:
                encoded = body["bundle_b64"]
                if not isinstance(encoded, str):
                    raise CommandError("bundle_b64: the signed model bundle in base64")
                try:
                    blob = base64.b64decode(encoded, validate=True)
                except ValueError:
                    raise CommandError("bundle_b64: not valid base64") from None
            elif "chunk_b64" in body:
                current = read_state(data_dir).current
                if current is not None and current.get("sha256") == body.get("sha256"):
                    # A chunk redelivered after the install (MQTT delivers at least once).
                    return (f"model bundle {current['version']} is already installed "
                            f"({current['dir']}); nothing changed")
                complete, progress = receive_chunk(data_dir, body)
                if complete is None:
                    return progress
                blob = complete
            else:
                raise CommandError("bundle_b64: required (the signed model bundle in base64), "
                                   "or sha256, size, offset and chunk_b64 for one sent in "
                                   "chunks")
            return install_for_config(config, blob, force).detail
        except ModelUpdateError as exc:
            raise CommandError(str(exc)) from None

    return handle


next_offset = chunks.next_offset


def command_body(blob: bytes, offset: int, chunk_bytes: int = CHUNK_BYTES,
                 force: bool = False) -> dict[str, Any]:
    """The ``models`` command body carrying the chunk of ``blob`` that starts at ``offset``."""
    return {**chunks.chunk_body(blob, offset, chunk_bytes), "force": force}


def push_model_bundle(send: Callable[[dict[str, Any]], dict[str, Any]], blob: bytes,
                      chunk_bytes: int = CHUNK_BYTES, force: bool = False,
                      start_offset: int = 0, max_retries: int = 5) -> dict[str, Any]:
    """Send a signed bundle to one gate in chunks and return the final acknowledgement
    (``send(body)`` publishes one ``cmd/models`` and returns its ``cmd_ack`` as a dict)."""
    return chunks.push_in_chunks(send, blob, chunk_bytes, {"force": force}, start_offset,
                                 max_retries)


# ---------------------------------------------------------------------------------------------
# `python -m device.manage.model_update self-check DIR` (the isolated self-check's child process)


def main(argv: list[str] | None = None) -> int:
    """Run the self-check of one unpacked bundle; prints one JSON line {ok, detail}."""
    parser = argparse.ArgumentParser(
        prog="python -m device.manage.model_update",
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
    sys.exit(main())
