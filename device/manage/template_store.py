"""The gate's templates at rest: one encrypted file per session and room, wiped at session close.

A gate keeps the roster it checks faces against in ``<data_dir>/templates/<session>/<room>.tpl``
(directories 0700, file 0600, written atomically). The file is::

    b"gerbang-templates/1\\n"   magic
    header length              4 bytes, big-endian
    header                     UTF-8 JSON: format, session, room, version, written (UTC),
                               key_id (fingerprint of the storage key), nonce (hex)
    ciphertext                 AES-256-GCM(storage key, nonce, roster JSON,
                               associated data = magic + header length + header)

The header is readable so a technician can see what a file is for without the key; it holds no
name and no template. Because it is the associated data, editing it (renaming a session's file
into another session, changing the version) makes the file fail to decrypt, and ``load_templates``
also checks that the header names the session and room asked for.

The storage key is a 32-byte file from the device bundle, one per device, kept outside the data
directory (e.g. ``/etc/gerbang/keys/storage.key``): a copy of the data directory (a backup, a
support bundle, a log collection) holds nothing readable. It does not protect against someone
who takes the whole SD card, which holds the key too; a Pi has no secure element.

``wipe`` overwrites each file of a session with random bytes, fsyncs and unlinks it. On an SD
card or SSD the flash controller may keep the old blocks, so the overwrite is a best effort; the
encryption is what makes leftover blocks unreadable.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import secrets
import struct
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from device.decide.roster import Roster, RosterError, roster_from_dict
from device.manage.keyfile import KEY_BYTES, key_id
from device.manage.roster_file import verify_signed_roster
from gerbang.files import write_atomic
from gerbang.wire import ID_PATTERN

log = logging.getLogger(__name__)

STORE_MAGIC = b"gerbang-templates/1\n"
STORE_FORMAT = 1
TEMPLATES_DIR = "templates"
SUFFIX = ".tpl"
NONCE_BYTES = 12
_LENGTH = struct.Struct(">I")
MAX_HEADER_BYTES = 64 * 1024


class TemplateStoreError(RosterError):
    """A template file that cannot be written, found, opened or trusted; the message says why."""


def _check_id(what: str, value: str) -> str:
    # Session and room become path components: refuse anything that is not a plain id.
    if not isinstance(value, str) or not ID_PATTERN.match(value):
        raise TemplateStoreError(f"{what} {value!r} is not a valid id "
                                 f"(must match {ID_PATTERN.pattern})")
    return value


def _check_key(storage_key: bytes) -> bytes:
    if not isinstance(storage_key, bytes) or len(storage_key) != KEY_BYTES:
        raise TemplateStoreError(f"the storage key must be {KEY_BYTES} bytes (read it with "
                                 "device.manage.keyfile.read_secret_key)")
    return storage_key


def session_dir(data_dir: Path, session: str) -> Path:
    """``<data_dir>/templates/<session>``: everything ``wipe(data_dir, session)`` removes."""
    return Path(data_dir) / TEMPLATES_DIR / _check_id("session", session)


def store_path(data_dir: Path, session: str, room: str) -> Path:
    """Where the templates of ``session`` and ``room`` live on this gate."""
    return session_dir(data_dir, session) / f"{_check_id('room', room)}{SUFFIX}"


def _private_dirs(data_dir: Path, session: str) -> Path:
    """Create ``templates/`` and ``templates/<session>/`` owner-only (0700)."""
    folder = session_dir(data_dir, session)
    for path in (folder.parent, folder):
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path, 0o700)
    return folder


def _aad(header_bytes: bytes) -> bytes:
    return STORE_MAGIC + _LENGTH.pack(len(header_bytes)) + header_bytes


def save_templates(data_dir: Path, roster: Roster, storage_key: bytes) -> Path:
    """Encrypt ``roster`` with the storage key and write it atomically, mode 0600.

    Replaces the session and room's previous file in one rename; no plaintext is ever written.
    Returns the file's path.
    """
    _check_key(storage_key)
    path = store_path(data_dir, roster.session, roster.room)
    _private_dirs(data_dir, roster.session)
    nonce = secrets.token_bytes(NONCE_BYTES)  # random per write: never reused with this key
    header = {"format": STORE_FORMAT, "session": roster.session, "room": roster.room,
              "version": roster.version, "key_id": key_id(storage_key), "nonce": nonce.hex(),
              "written": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
    header_bytes = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    plain = json.dumps(roster.to_dict()).encode()
    sealed = AESGCM(storage_key).encrypt(nonce, plain, _aad(header_bytes))
    write_atomic(path, _aad(header_bytes) + sealed, mode=0o600)
    return path


def read_store_header(path: Path) -> dict[str, Any]:
    """The readable header of a template file (session, room, version …), NOT authenticated:
    for listings and messages only; ``load_templates`` is what checks it."""
    try:
        blob = Path(path).read_bytes()
    except FileNotFoundError:
        raise TemplateStoreError(f"template file {path} does not exist") from None
    return _split(path, blob)[0]


def _split(path: Path, blob: bytes) -> tuple[dict[str, Any], bytes, bytes]:
    start = len(STORE_MAGIC) + _LENGTH.size
    if not blob.startswith(STORE_MAGIC) or len(blob) < start:
        raise TemplateStoreError(f"{path} is not a Gerbang template file")
    (header_len,) = _LENGTH.unpack_from(blob, len(STORE_MAGIC))
    if header_len > MAX_HEADER_BYTES or start + header_len > len(blob):
        raise TemplateStoreError(f"{path} is damaged or altered (header length {header_len})")
    header_bytes = blob[start:start + header_len]
    try:
        header = json.loads(header_bytes)
        if not isinstance(header, dict):
            raise ValueError("not an object")
    except ValueError:
        raise TemplateStoreError(f"{path} is damaged or altered (unreadable header)") from None
    return header, header_bytes, blob[start + header_len:]


def load_templates(data_dir: Path, session: str, room: str, storage_key: bytes) -> Roster:
    """Decrypt the templates of ``session`` and ``room``; TemplateStoreError saying why not.

    Refuses a file whose header names another session or room (a file copied or renamed into
    the wrong place), one encrypted with another key (wrong key file, or a replaced bundle) and
    one altered in any byte.
    """
    _check_key(storage_key)
    path = store_path(data_dir, session, room)
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise TemplateStoreError(f"no templates for session {session} room {room} on this gate "
                                 f"({path} does not exist): install the signed roster") from None
    header, header_bytes, sealed = _split(path, blob)
    if header.get("format") != STORE_FORMAT:
        raise TemplateStoreError(f"{path} has format {header.get('format')!r}, this firmware "
                                 f"reads {STORE_FORMAT}")
    if (header.get("session"), header.get("room")) != (session, room):
        raise TemplateStoreError(f"{path} holds session {header.get('session')!r} room "
                                 f"{header.get('room')!r}, not session {session!r} room "
                                 f"{room!r}: it was copied or renamed into the wrong place")
    ours = key_id(storage_key)
    if header.get("key_id") != ours:
        raise TemplateStoreError(f"{path} was encrypted with storage key {header.get('key_id')}, "
                                 f"but this gate's storage key is {ours}: wrong key file, or "
                                 "the device bundle was replaced; install the signed roster "
                                 "again")
    try:
        nonce = bytes.fromhex(str(header.get("nonce")))
        plain = AESGCM(storage_key).decrypt(nonce, sealed, _aad(header_bytes))
    except (ValueError, InvalidTag):
        raise TemplateStoreError(f"{path} does not decrypt with this gate's storage key: the "
                                 "file was altered or damaged; install the signed roster "
                                 "again") from None
    try:
        roster = roster_from_dict(json.loads(plain))
    except (ValueError, RosterError) as exc:
        raise TemplateStoreError(f"{path}: decrypted, but {exc}") from None
    if (roster.session, roster.room, roster.version) != (session, room, header.get("version")):
        raise TemplateStoreError(f"{path}: contents do not match its header")
    return roster


def stored_sessions(data_dir: Path) -> list[str]:
    """Sessions that have a template folder on this gate (e.g. to wipe all but the current)."""
    root = Path(data_dir) / TEMPLATES_DIR
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and ID_PATTERN.match(p.name))


def _overwrite_and_unlink(path: Path) -> None:
    """Overwrite a regular file with random bytes, fsync, unlink. A symlink is only unlinked,
    never followed (wipe must not overwrite whatever it points at)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
    except OSError:  # a symlink (ELOOP), or gone already
        path.unlink(missing_ok=True)
        return
    try:
        size = os.fstat(fd).st_size
        written = 0
        while written < size:
            written += os.write(fd, secrets.token_bytes(min(1 << 20, size - written)))
        os.fsync(fd)
    finally:
        os.close(fd)
    path.unlink()


def wipe(data_dir: Path, session: str) -> int:
    """Remove every template file of ``session`` on this gate (at session close, or on the
    ``wipe`` command): each is overwritten with random bytes, fsynced and unlinked, then the
    session's folder is removed. Returns how many files were removed (0 if none were there)."""
    folder = session_dir(data_dir, session)
    if folder.is_symlink():
        folder.unlink()
        return 0
    if not folder.is_dir():
        return 0
    removed = 0
    for path in sorted(folder.iterdir()):  # includes leftovers of interrupted atomic writes
        if path.is_dir() and not path.is_symlink():
            raise TemplateStoreError(f"unexpected folder {path} in the template store; "
                                     "remove it by hand")
        _overwrite_and_unlink(path)
        removed += 1
    folder.rmdir()
    fd = os.open(folder.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # make the unlinks durable before reporting the wipe done
    finally:
        os.close(fd)
    log.info("wiped session %s: %d template file(s) removed", session, removed)
    return removed


def install_signed_roster(blob: bytes, *, data_dir: Path, storage_key: bytes,
                          public_key: Ed25519PublicKey, transport_key: bytes, centre: str,
                          session: str, room: str, embedder_sha256: str,
                          min_version: int | None = None) -> Roster:
    """Verify a signed roster as received (MQTT or bundle) and keep it in the encrypted store.

    Every check of ``device.manage.roster_file.verify_signed_roster`` applies, with the version of
    the roster already stored as the minimum (no roll-back), or ``min_version`` when higher: the
    version high-water mark the gate keeps apart from this file (``device.manage.roster_source``),
    so deleting or damaging the file does not open a roll-back either. A stored file that can no
    longer be opened (replaced key, damage) does not block a verified roster from replacing it.
    Raises RosterRefused or TemplateStoreError; on success returns the roster now in use.
    """
    _check_key(storage_key)
    current: int | None = None
    if store_path(data_dir, session, room).exists():
        try:
            current = load_templates(data_dir, session, room, storage_key).version
        except TemplateStoreError as exc:
            log.warning("replacing an unreadable template file: %s", exc)
    floors = [v for v in (current, min_version) if v is not None]
    verified = verify_signed_roster(
        blob, public_key=public_key, transport_key=transport_key, centre=centre,
        session=session, room=room, embedder_sha256=embedder_sha256,
        min_version=max(floors) if floors else None)
    roster = replace(verified.roster, embedder_sha256=verified.header.embedder_sha256)
    save_templates(data_dir, roster, storage_key)
    log.info("installed roster v%d for session %s room %s: %d applicants (signed by %s, %s)",
             roster.version, session, room, len(roster.entries), verified.header.signer,
             verified.header.created)
    return roster


def wipe_handler(data_dir: Path) -> Callable[[str | None], int]:
    """What the ``session_close`` and ``wipe`` commands run: wipe one session's templates, or
    every session's when given None; returns how many files were removed."""
    def wipe_templates(session: str | None) -> int:
        sessions = [session] if session is not None else stored_sessions(data_dir)
        return sum(wipe(data_dir, s) for s in sessions)
    return wipe_templates
