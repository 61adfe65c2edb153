"""The signed model-bundle archive: its byte layout, its header, and how a gate verifies one
(every refusal reason the package docstring lists is raised here)."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from device.infer.bundle import ModelBundleError
from device.manage import signed_layout
from device.manage.signed_layout import (
    LayoutError,
    SignatureMismatch,
    check_signature,
    public_key_id,
    split_signed,
)

if TYPE_CHECKING:

    pass

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
BUNDLE_PATH = re.compile(rf"^(?:{_PART}/)?{_PART}$")


class ModelUpdateError(ModelBundleError):
    """Something about model updates on this gate is wrong (state file, keys); says what. A
    ModelBundleError, so the gate's command line reports it in one line and exits 2."""


class ModelUpdateRefused(ModelUpdateError):
    """A model bundle this gate will not install; ``reason`` is a short code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"model bundle refused ({reason}): {message}")
        self.reason = reason




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
            if not isinstance(path, str) or not BUNDLE_PATH.match(path):
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
    return bool(BUNDLE_PATH.match(path))


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
