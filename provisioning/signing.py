"""Roster signing on the technician's machine: the centre's roster keys and signed rosters.

A centre has one roster key directory, made once (``create_roster_keys``) and kept with the
centre CA on the technician's machine::

    roster-signing.key          Ed25519 private key, PKCS#8 PEM, mode 0600: signs rosters.
                                Never leaves this machine.
    roster-signing.pub          its public key (PEM): goes to every gate of the centre.
    roster-transport-master.key 32 random bytes, mode 0600: each room's transport key is
                                derived from it (HKDF-SHA256, see ``room_transport_key``), so
                                only one secret is kept here. Never leaves this machine.
    roster-keys.json            centre id and the signing key's id (for messages).

A gate gets ``roster-signing.pub``, its room's transport key and its own storage key
(``export_device_keys``): it can check and open rosters for its room, and nothing else. A gate
that is stolen exposes its own room's rosters, not the centre's.

Signing is ``sign_roster``: the roster JSON is encrypted for its room (AES-256-GCM, the signed
header as associated data) and the whole file signed (Ed25519). Layout and checks are in
``device.manage.roster_file``, which is also what a gate runs. The same key signs model bundles
(``provisioning.model_signing``) and gate configs (``sign_config``,
``device.manage.signed_config``),
each with its own magic so one can never pass for another.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from device.decide.roster import Roster, RosterError
from device.manage.keyfile import KeyFileError, key_id, read_secret_key, write_secret_key
from device.manage.roster_file import (
    NONCE_BYTES,
    SignedRosterHeader,
    encode_header,
    payload_aad,
    signed_body,
)
from device.manage.signed_layout import public_key_id
from gerbang.files import write_atomic
from gerbang.wire import ID_PATTERN
from provisioning.files import PRIVATE_DIR_MODE, make_dirs

SIGNING_KEY, PUBLIC_KEY, TRANSPORT_MASTER, KEYS_INFO = (
    "roster-signing.key", "roster-signing.pub", "roster-transport-master.key",
    "roster-keys.json")
#: File names in a device's bundle folder (what ``export_device_keys`` writes).
DEVICE_PUBLIC_KEY, DEVICE_TRANSPORT_KEY, DEVICE_STORAGE_KEY = (
    "roster-signing.pub", "roster-transport.key", "storage.key")
SIGNED_SUFFIX = ".signed"


class SigningError(RosterError):
    """Roster keys missing, unsafe or mismatched, or a roster that cannot be signed; says why."""


@dataclass(frozen=True)
class RosterKeys:
    """A centre's loaded roster keys (provisioning side only)."""

    centre: str
    directory: Path
    signing_key: Ed25519PrivateKey
    transport_master: bytes

    @property
    def public_key(self) -> Ed25519PublicKey:
        """The public half, which gates trust."""
        return self.signing_key.public_key()

    @property
    def key_id(self) -> str:
        """Short fingerprint of the signing key, as gates print it."""
        return public_key_id(self.public_key)

    def room_key(self, room: str) -> bytes:
        """The transport key of ``room`` at this centre."""
        return room_transport_key(self.transport_master, self.centre, room)


def _check_id(what: str, value: str) -> str:
    if not isinstance(value, str) or not ID_PATTERN.match(value):
        raise SigningError(f"{what} {value!r} is not a valid id (must match "
                           f"{ID_PATTERN.pattern})")
    return value


def room_transport_key(master: bytes, centre: str, room: str) -> bytes:
    """Derive the 32-byte transport key of one room: HKDF-SHA256(master, info = "gerbang roster
    transport v1" NUL centre NUL room). Deterministic, so nothing per room is stored."""
    info = b"\x00".join([b"gerbang roster transport v1", _check_id("centre", centre).encode(),
                         _check_id("room", room).encode()])
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(master)


def create_roster_keys(keys_dir: Path, centre: str) -> RosterKeys:
    """Make a centre's roster keys in ``keys_dir`` (which must not hold any yet).

    Refuses to replace existing keys: every gate trusts the old public key, and would refuse
    rosters signed by a new one until it gets a new bundle.
    """
    _check_id("centre", centre)
    directory = Path(keys_dir)
    existing = [n for n in (SIGNING_KEY, TRANSPORT_MASTER) if (directory / n).exists()]
    if existing:
        raise SigningError(f"{directory} already holds roster keys ({', '.join(existing)}); "
                           "refusing to replace them (every gate trusts the current ones)")
    make_dirs(directory, PRIVATE_DIR_MODE)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(directory / SIGNING_KEY, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fh.fileno(), 0o600)
        fh.write(pem)
    master = write_secret_key(directory / TRANSPORT_MASTER)
    write_atomic(directory / PUBLIC_KEY, key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    keys = RosterKeys(centre, directory, key, master)
    write_atomic(directory / KEYS_INFO, json.dumps(
        {"centre": centre, "signing_key_id": keys.key_id,
         "created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}, indent=1).encode())
    return keys


def load_roster_keys(keys_dir: Path) -> RosterKeys:
    """Load a centre's roster keys; SigningError naming the file when one is missing, readable
    by others, or not matching the rest."""
    directory = Path(keys_dir)
    info_path, key_path = directory / KEYS_INFO, directory / SIGNING_KEY
    try:
        info = json.loads(info_path.read_text())
        centre = _check_id("centre", info["centre"])
        mode = key_path.stat().st_mode & 0o777
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        master = read_secret_key(directory / TRANSPORT_MASTER, "roster transport master key")
    except FileNotFoundError as exc:
        raise SigningError(f"{directory} is not a roster key directory ({exc.filename} is "
                           "missing); make one with `gerbang-provision roster-key create`"
                           ) from None
    except (KeyError, TypeError, ValueError, KeyFileError) as exc:
        raise SigningError(f"roster keys in {directory}: {exc}") from None
    if mode & 0o077:
        raise SigningError(f"{key_path} is readable by group/others (mode {mode:04o}); run "
                           f"`chmod 600 {key_path}` and consider the key exposed")
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningError(f"{key_path} is not an Ed25519 key")
    keys = RosterKeys(centre, directory, key, master)
    if info.get("signing_key_id") != keys.key_id:
        raise SigningError(f"{key_path} (key id {keys.key_id}) is not the key "
                           f"{info.get('signing_key_id')} recorded in {info_path}")
    return keys


def export_device_keys(keys: RosterKeys, room: str, out_dir: Path) -> dict[str, Path]:
    """Write what one gate of ``room`` needs into its bundle folder ``out_dir``:

    - ``roster-signing.pub``  the centre's public roster key (0644);
    - ``roster-transport.key`` the room's transport key (0600);
    - ``storage.key``         the gate's own key for templates at rest (0600), new and random,
      made only if the folder has none (one folder per device: never share it between gates).

    Exporting again to the same folder is harmless; a folder holding another room's transport
    key is refused (that gate would open no roster).
    """
    out = Path(out_dir)
    make_dirs(out, PRIVATE_DIR_MODE)
    room_key = keys.room_key(room)
    transport = out / DEVICE_TRANSPORT_KEY
    if transport.exists():
        try:
            held = read_secret_key(transport, "roster transport key")
        except KeyFileError as exc:
            raise SigningError(str(exc)) from None
        if held != room_key:
            raise SigningError(f"{transport} already holds another key (id {key_id(held)}), "
                               f"not room {room}'s ({key_id(room_key)}): is {out} this room's "
                               "device folder?")
    else:
        write_secret_key(transport, room_key)
    public = out / DEVICE_PUBLIC_KEY
    write_atomic(public, keys.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    storage = out / DEVICE_STORAGE_KEY
    if not storage.exists():
        write_secret_key(storage)
    return {"public_key": public, "transport_key": transport, "storage_key": storage}


def sign_roster(roster: Roster, keys: RosterKeys, embedder_sha256: str | None = None,
                created: dt.datetime | None = None) -> bytes:
    """A signed roster for ``roster.room``: payload encrypted with the room's transport key,
    header + payload signed with the centre's key (layout in ``device.manage.roster_file``).

    ``embedder_sha256`` is the model manifest's sha256 of the embedder that made the
    templates; the roster's own record of it is used when not given, and the two must agree.
    """
    _check_id("session", roster.session)
    _check_id("room", roster.room)
    embedder = embedder_sha256 or roster.embedder_sha256
    if not embedder:
        raise SigningError(f"roster for session {roster.session} room {roster.room} does not "
                           "say which embedder model made its templates (it predates signing); "
                           "name the model bundle that made it")
    if roster.embedder_sha256 and embedder_sha256 and roster.embedder_sha256 != embedder_sha256:
        raise SigningError(f"roster templates were made with embedder "
                           f"{roster.embedder_sha256[:16]}…, not {embedder_sha256[:16]}…")
    if len({e.template.size for e in roster.entries}) > 1:
        raise SigningError("roster templates have mixed lengths")
    if roster.calibration is not None and roster.calibration.embedder_sha256 != embedder:
        raise SigningError(f"roster calibration was measured with embedder "
                           f"{roster.calibration.embedder_sha256[:16]}…, the templates were "
                           f"made with {embedder[:16]}…: calibrate again with the same bundle")
    room_key = keys.room_key(roster.room)
    nonce = secrets.token_bytes(NONCE_BYTES)
    when = (created or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    header = SignedRosterHeader(
        centre=keys.centre, session=roster.session, room=roster.room, version=roster.version,
        created=when.strftime("%Y-%m-%dT%H:%M:%SZ"), template_dim=roster.template_dim,
        count=len(roster.entries), embedder_sha256=embedder, signer=keys.key_id,
        transport_key=key_id(room_key), nonce=nonce.hex())
    header_bytes = encode_header(header)
    plain = json.dumps({**roster.to_dict(), "embedder_sha256": embedder}).encode()
    payload = AESGCM(room_key).encrypt(nonce, plain, payload_aad(header_bytes))
    body = signed_body(header_bytes, payload)
    return body + keys.signing_key.sign(body)


def signed_path_for(plain_path: Path) -> Path:
    """``R01.roster.json`` → ``R01.roster.signed`` (next to it)."""
    plain_path = Path(plain_path)
    return plain_path.with_suffix(SIGNED_SUFFIX)


def write_signed_roster(path: Path, roster: Roster, keys: RosterKeys,
                        embedder_sha256: str | None = None) -> Path:
    """``sign_roster`` written atomically to ``path`` (0600: encrypted, but still a roster)."""
    write_atomic(Path(path), sign_roster(roster, keys, embedder_sha256), mode=0o600)
    return Path(path)


def sign_config(toml_text: str, keys: RosterKeys, device_id: str, version: int,
                created: dt.datetime | None = None) -> bytes:
    """A signed config for one gate of this centre (layout in ``device.manage.signed_config``): the
    whole ``device.toml`` as given, with the version it gets, signed with the centre's key.

    Only a signed config may change the keys that decide who enters or whom the gate trusts
    (``device.manage.config_keys``); the gate still refuses one that changes a local-only key.
    """
    import hashlib

    from device.manage.signed_config import SignedConfigHeader
    from device.manage.signed_config import encode_header as encode_config_header
    from device.manage.signed_config import signed_body as signed_config_body

    _check_id("device", device_id)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise SigningError(f"config version must be a whole number >= 1, got {version!r}")
    toml_bytes = toml_text.encode("utf-8")
    when = (created or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    header = SignedConfigHeader(centre=keys.centre, device_id=device_id, version=version,
                                created=when.strftime("%Y-%m-%dT%H:%M:%SZ"), signer=keys.key_id,
                                sha256=hashlib.sha256(toml_bytes).hexdigest())
    body = signed_config_body(encode_config_header(header), toml_bytes)
    return body + keys.signing_key.sign(body)
