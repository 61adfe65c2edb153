"""Signing a model bundle on the technician's machine, for gates to install (``models sign``).

The archive format and every check a gate makes are in ``device.manage.models``. The bundle is
signed with the centre's roster-signing key (``provisioning.signing``): every gate of the centre
already trusts its public half, so no new key has to reach the gates. The signature cannot be
mistaken for a roster's: the archive starts with its own magic, which the signature covers.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from device.infer.bundle import DEFAULT_BUNDLE_DIR, ModelBundleError, load_bundle
from device.manage.models import (
    BundleFile,
    ModelBundleHeader,
    check_version,
    encode_header,
    is_bundle_path,
    signed_body,
    verify_model_archive,
)
from gerbang.files import write_atomic
from provisioning.signing import RosterKeys, SigningError


@dataclass(frozen=True)
class SignedModelBundle:
    """What ``write_signed_model_bundle`` wrote."""

    path: Path
    bundle_version: str
    sha256: str  # of the whole archive (the gate names its install folder after it)
    size: int
    files: tuple[BundleFile, ...]
    signer: str
    embedder_sha256: str


def bundle_files(bundle_dir: Path) -> dict[str, Path]:
    """Every file of a bundle folder by its path inside the bundle, sorted: the models,
    ``manifest.json``, the liveness classifier, ``NOTICE`` and ``LICENSES/``. Hidden files
    (``.name``, e.g. a half-written temporary file) are left out; a symbolic link, a deeper
    folder or an odd file name is refused (the gate accepts none of them)."""
    root = Path(bundle_dir)
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if any(part.startswith(".") or part == "__pycache__" for part in rel.split("/")):
            continue
        if path.is_symlink():
            raise SigningError(f"{path} is a symbolic link; copy the real file into the bundle")
        if path.is_dir():
            continue
        if not path.is_file() or not is_bundle_path(rel):
            raise SigningError(f"{path}: a bundle holds only plain files named with letters, "
                               "digits, '.', '_' and '-', at most one folder deep")
        found[rel] = path
    return found


def sign_model_bundle(bundle_dir: Path, keys: RosterKeys, *, version: str | None = None,
                      created: dt.datetime | None = None) -> bytes:
    """The signed archive of the bundle in ``bundle_dir`` (layout in
    ``device.manage.models``).

    The bundle must match its own manifest (``load_bundle``). ``version`` (default: the
    manifest's ``bundle_version``) is written into the archive's copy of ``manifest.json``, so
    the signed header and the manifest a gate unpacks always agree; the folder is not changed.
    """
    bundle_dir = Path(bundle_dir)
    bundle = load_bundle(bundle_dir)  # ModelBundleError names a file that does not match
    manifest = dict(bundle.manifest)
    version = version or manifest.get("bundle_version")
    if not version:
        raise SigningError(f"{bundle_dir / 'manifest.json'} has no bundle_version; give one "
                           "with --version")
    try:
        check_version(version)
    except ValueError as exc:
        raise SigningError(str(exc)) from None
    paths = bundle_files(bundle_dir)
    contents = {rel: path.read_bytes() for rel, path in paths.items()}
    if manifest.get("bundle_version") != version:
        manifest["bundle_version"] = version
        contents["manifest.json"] = (json.dumps(manifest, indent=2) + "\n").encode()
    files = tuple(BundleFile(rel, hashlib.sha256(data).hexdigest(), len(data))
                  for rel, data in contents.items())
    when = (created or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    header = ModelBundleHeader(bundle_version=version,
                               created=when.strftime("%Y-%m-%dT%H:%M:%SZ"),
                               centre=keys.centre, signer=keys.key_id, files=files)
    body = signed_body(encode_header(header), [contents[f.path] for f in files])
    return body + keys.signing_key.sign(body)


def write_signed_model_bundle(out: Path, keys: RosterKeys, bundle_dir: Path | None = None,
                              version: str | None = None) -> SignedModelBundle:
    """``sign_model_bundle`` written atomically to ``out`` (0644: models are not secret)."""
    bundle_dir = Path(bundle_dir) if bundle_dir else DEFAULT_BUNDLE_DIR
    out = Path(out)
    if out.resolve().is_relative_to(bundle_dir.resolve()):
        raise SigningError(f"--out {out} is inside the bundle folder {bundle_dir}; write the "
                           "signed bundle somewhere else")
    blob = sign_model_bundle(bundle_dir, keys, version=version)
    verified = verify_model_archive(blob, keys.public_key)  # what a gate will check first
    write_atomic(out, blob)
    manifest = json.loads(verified.contents["manifest.json"])
    try:
        embedder = manifest["models"]["embedder"]["sha256"]
    except KeyError:
        raise ModelBundleError(f"{bundle_dir / 'manifest.json'} has no embedder") from None
    return SignedModelBundle(out, verified.header.bundle_version, verified.sha256, len(blob),
                             verified.header.files, keys.key_id, embedder)
