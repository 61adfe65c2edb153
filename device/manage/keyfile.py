"""Secret key files the gate reads: 32 random bytes, owner-only, checked before use.

Two keys on a gate are such files: the storage key (templates at rest, one per device) and the
room's roster transport key (opens the signed rosters sent to this room). Both come with the
device bundle. A key file readable by anyone but its owner is refused, as the CA key is, so a
wrong ``install -m`` shows up at start rather than after a leak.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

KEY_BYTES = 32  # AES-256


class KeyFileError(ValueError):
    """A key file that is missing, the wrong size, or readable by others; the message says which."""


def key_id(key: bytes) -> str:
    """A short public fingerprint of a secret key (16 hex), safe to log and to put in headers.

    It tells "encrypted with another key" apart from "altered": a hash of 32 random bytes says
    nothing about them.
    """
    return hashlib.sha256(b"gerbang key id\x00" + key).hexdigest()[:16]


def read_secret_key(path: Path, what: str = "key") -> bytes:
    """Read a 32-byte key file; KeyFileError naming ``what`` and the path on any problem."""
    path = Path(path)
    try:
        mode = path.stat().st_mode & 0o777
        data = path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"{what} file {path} does not exist (it comes with the device "
                           "bundle)") from None
    except OSError as exc:
        raise KeyFileError(f"{what} file {path}: {exc.strerror}") from None
    if mode & 0o077:
        raise KeyFileError(f"{what} file {path} is readable by group/others (mode {mode:04o}); "
                           f"run `chmod 600 {path}` and check who else could have read it")
    if len(data) != KEY_BYTES:
        raise KeyFileError(f"{what} file {path} holds {len(data)} bytes; a key file holds "
                           f"exactly {KEY_BYTES} (was it copied as text or cut short?)")
    return data


def write_secret_key(path: Path, key: bytes | None = None) -> bytes:
    """Create ``path`` (mode 0600 from the first byte) holding ``key`` or 32 new random bytes.

    Refuses to overwrite an existing file: replacing a key makes everything encrypted with the
    old one unreadable.
    """
    key = secrets.token_bytes(KEY_BYTES) if key is None else key
    if len(key) != KEY_BYTES:
        raise KeyFileError(f"a key is {KEY_BYTES} bytes, got {len(key)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path} already exists; refusing to overwrite a key") from None
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fh.fileno(), 0o600)
        fh.write(key)
        fh.flush()
        os.fsync(fh.fileno())
    return key
