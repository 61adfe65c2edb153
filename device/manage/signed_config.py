"""Signed device configs: how a config that decides who enters reaches a gate.

A ``device.toml`` that changes a ``signed`` key (``device.manage.config_keys``: thresholds,
liveness, quality, broker address, pin map, room, session, camera, models, outbox bounds) is
accepted only signed with the centre's roster-signing key (the key every gate already trusts
through ``[keys] roster_public_key``), made by ``gerbang-provision config-push --keys DIR``.

File layout (bytes; ``device.manage.signed_layout``)::

    b"gerbang-signed-config/1\\n"     magic: format and version; keeps these signatures apart
                                      from rosters and model bundles (same key, other magic)
    header length                     4 bytes, big-endian
    header                            UTF-8 JSON, sorted keys: format, centre, device_id,
                                      version, created, signer (key id), sha256 (of the TOML)
    TOML                              the gate's whole device.toml, UTF-8
    signature                         64 bytes: Ed25519 over everything above

A gate refuses with ``ConfigRefused.reason`` one of ``malformed``, ``tampered``, ``wrong_key``,
``inconsistent`` (signed, but the header does not describe the TOML), ``wrong_centre``,
``wrong_device`` (signed for another gate: a config is per gate). Nothing but the magic is read
before the signature is checked.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from device.manage import signed_layout
from device.manage.signed_layout import (
    LayoutError,
    SignatureMismatch,
    check_signature,
    public_key_id,
    split_signed,
)

MAGIC = b"gerbang-signed-config/1\n"
HEADER_FORMAT = 1
SIGNATURE_BYTES = signed_layout.SIGNATURE_BYTES
_LENGTH = signed_layout.LENGTH
#: A device.toml is a few kilobytes (``device.manage.config_push.MAX_CONFIG_CHARS``).
MAX_SIGNED_CONFIG_BYTES = 256 * 1024

MALFORMED, TAMPERED, WRONG_KEY, INCONSISTENT = "malformed", "tampered", "wrong_key", "inconsistent"
WRONG_CENTRE, WRONG_DEVICE = "wrong_centre", "wrong_device"


class ConfigRefused(ValueError):
    """A signed config this gate will not use; ``reason`` is a short code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"signed config refused ({reason}): {message}")
        self.reason = reason


@dataclass(frozen=True)
class SignedConfigHeader:
    """The signed description of one gate's config."""

    centre: str
    device_id: str
    version: int
    created: str  # ISO 8601 UTC, when provisioning signed it
    signer: str  # public_key_id of the signing key
    sha256: str  # of the TOML bytes

    def to_dict(self) -> dict[str, object]:
        """JSON form, with the format number."""
        return {"format": HEADER_FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, data: object) -> SignedConfigHeader:
        """Parse a header; ValueError naming the field on any problem."""
        if not isinstance(data, dict):
            raise ValueError("header is not a JSON object")
        if data.get("format") != HEADER_FORMAT:
            raise ValueError(f"header format {data.get('format')!r}, expected {HEADER_FORMAT}")
        values: dict[str, object] = {}
        for field in fields(cls):
            value = data.get(field.name)
            expected = int if field.type == "int" else str  # annotations are strings here
            if type(value) is not expected:
                raise ValueError(f"header field {field.name} must be {expected.__name__}, "
                                 f"got {value!r}")
            values[field.name] = value
        if values["version"] < 1:  # type: ignore[operator]
            raise ValueError("header field version must be >= 1")
        return cls(**values)  # type: ignore[arg-type]


def encode_header(header: SignedConfigHeader) -> bytes:
    """The header's bytes as signed (compact JSON, sorted keys)."""
    return json.dumps(header.to_dict(), sort_keys=True, separators=(",", ":")).encode()


def signed_body(header_bytes: bytes, toml_bytes: bytes) -> bytes:
    """Everything the signature covers: magic, header length, header, TOML."""
    return MAGIC + _LENGTH.pack(len(header_bytes)) + header_bytes + toml_bytes


def verify_signed_config(blob: bytes, *, public_key: Ed25519PublicKey, centre: str,
                         device_id: str) -> tuple[SignedConfigHeader, bytes]:
    """(header, TOML bytes) of a signed config meant for this gate; ConfigRefused otherwise."""
    blob = bytes(blob)
    if len(blob) > MAX_SIGNED_CONFIG_BYTES:
        raise ConfigRefused(MALFORMED, f"{len(blob)} bytes, more than the "
                            f"{MAX_SIGNED_CONFIG_BYTES} a gate accepts")
    try:
        body, header_bytes, toml_bytes, signature = split_signed(blob, MAGIC)
    except LayoutError as exc:
        raise ConfigRefused(exc.kind, f"not a usable signed Gerbang config: {exc}") from None
    try:
        check_signature(public_key, body, header_bytes, signature)
    except SignatureMismatch as exc:
        if exc.kind == WRONG_KEY:
            raise ConfigRefused(WRONG_KEY, f"signed by key {exc.claimed}, but this gate trusts "
                                f"only key {exc.ours}") from None
        raise ConfigRefused(TAMPERED, "the signature does not match the contents: altered or "
                            "damaged after signing (one changed byte is enough)") from None
    try:
        header = SignedConfigHeader.from_dict(json.loads(header_bytes))
    except ValueError as exc:  # includes JSON and UTF-8 errors
        raise ConfigRefused(MALFORMED, f"signed header is unreadable: {exc}") from None
    ours = public_key_id(public_key)
    if header.signer != ours:
        raise ConfigRefused(INCONSISTENT, f"header names signer {header.signer} but key {ours} "
                            "signed it")
    if hashlib.sha256(toml_bytes).hexdigest() != header.sha256:
        raise ConfigRefused(INCONSISTENT, "the TOML does not match the sha256 in the header")
    if header.centre != centre:
        raise ConfigRefused(WRONG_CENTRE, f"signed for centre {header.centre!r}, this gate is "
                            f"centre {centre!r}")
    if header.device_id != device_id:
        raise ConfigRefused(WRONG_DEVICE, f"signed for gate {header.device_id!r}, this gate is "
                            f"{device_id!r}: each gate gets its own signed config")
    return header, toml_bytes
