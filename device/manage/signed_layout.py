"""The layout Gerbang's signed files share (signed rosters, signed model bundles)::

    magic (format and version) | header length (4 bytes, big-endian) | header | content | signature

Splitting is done by the layout alone, before anything is trusted: the header length is
unauthenticated here and only used to slice. Each format keeps its own magic, so a signature
over one kind of file can never be replayed as another.
"""

from __future__ import annotations

import hashlib
import json
import struct

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

LENGTH = struct.Struct(">I")
SIGNATURE_BYTES = 64  # Ed25519
MAX_HEADER_BYTES = 64 * 1024  # headers are small; anything bigger is not ours


class LayoutError(ValueError):
    """Not this layout: ``kind`` is ``malformed`` (wrong magic, cut short) or ``tampered``
    (a header length that cannot be right)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def split_signed(blob: bytes, magic: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    """(signed body, header bytes, content, signature) of ``blob``; LayoutError otherwise."""
    if not blob.startswith(magic):
        raise LayoutError("malformed", f"it does not start with {magic!r}")
    start = len(magic) + LENGTH.size
    if len(blob) < start + SIGNATURE_BYTES:
        raise LayoutError("malformed", f"it is cut short ({len(blob)} bytes)")
    (header_len,) = LENGTH.unpack_from(blob, len(magic))
    if header_len > MAX_HEADER_BYTES or start + header_len > len(blob) - SIGNATURE_BYTES:
        # A changed length byte lands here; the signature would not have matched either.
        raise LayoutError("tampered", f"the header length ({header_len}) does not fit the "
                                      f"{len(blob)} bytes: altered or cut short")
    body, signature = blob[:-SIGNATURE_BYTES], blob[-SIGNATURE_BYTES:]
    return body, blob[start:start + header_len], body[start + header_len:], signature


class SignatureMismatch(ValueError):
    """The signature does not hold: ``kind`` is ``wrong_key`` when the header claims another
    signer than the trusted key (``claimed``, ``ours``: key ids), else ``tampered``."""

    def __init__(self, kind: str, claimed: str | None, ours: str) -> None:
        super().__init__(kind)
        self.kind, self.claimed, self.ours = kind, claimed, ours


def public_key_id(public_key: Ed25519PublicKey) -> str:
    """Short fingerprint (16 hex) of a signing public key, as printed and in headers."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def check_signature(public_key: Ed25519PublicKey, body: bytes, header_bytes: bytes,
                    signature: bytes) -> None:
    """Return when ``signature`` over ``body`` is the trusted key's; SignatureMismatch otherwise.

    The signer a header claims is read without trusting it, only to tell "another centre's
    key" from "altered" in the refusal: the signature alone decides.
    """
    try:
        public_key.verify(signature, body)
    except InvalidSignature:
        ours = public_key_id(public_key)
        claimed = _claimed_signer(header_bytes)
        kind = "wrong_key" if claimed is not None and claimed != ours else "tampered"
        raise SignatureMismatch(kind, claimed, ours) from None


def _claimed_signer(header_bytes: bytes) -> str | None:
    try:
        signer = json.loads(header_bytes).get("signer")
    except (ValueError, AttributeError):
        return None
    return signer if isinstance(signer, str) else None
