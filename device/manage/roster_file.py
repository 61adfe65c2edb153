"""Signed rosters: what travels from the technician's machine to a gate, and how a gate checks it.

A roster leaves provisioning signed with the centre's roster-signing key (Ed25519) and with its
payload encrypted for the room (AES-256-GCM with the room's transport key). A gate holds only
the public half of the signing key and its own room's transport key: it can check a roster and
open one meant for its room, but it can neither make nor alter one.

File layout (bytes)::

    b"gerbang-signed-roster/1\\n"     magic: format and version (also separates these
                                      signatures from any other thing the key might sign)
    header length                     4 bytes, big-endian
    header                            UTF-8 JSON, see SignedRosterHeader (no names, no templates)
    payload                           AES-256-GCM(room transport key, nonce from the header,
                                      roster JSON (device.decide.roster), associated data = magic +
                                      header length + header)
    signature                         64 bytes: Ed25519 over everything above

A gate checks, in this order, and refuses with a ``RosterRefused`` whose ``reason`` is one of
the codes below: the layout (``malformed``), the signature over every byte but the signature
itself (``tampered``, or ``wrong_key`` when the header names another signer), the centre,
session and room against its own config (``wrong_centre`` / ``wrong_session`` / ``wrong_room``),
the embedder model that made the templates against the one it runs (``model_mismatch``), the
version against the roster it already holds (``old_version``: never roll back), and only then
opens the payload (``wrong_transport_key``) and checks it says what the header says
(``inconsistent``). Nothing is parsed before the signature is checked except the magic.

Why encrypt a payload that TLS already protects on the wire: a roster also sits on the
technician's laptop and USB stick, in the gateway's Mosquitto persistence file while a gate is
offline, and in the gate's data directory before it is installed. Encrypted, none of those
copies holds a readable name or template.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from device.decide.roster import Roster, RosterError, roster_from_dict
from device.manage import signed_layout
from device.manage.keyfile import KEY_BYTES, key_id
from device.manage.signed_layout import (
    LayoutError,
    SignatureMismatch,
    check_signature,
    public_key_id,
    split_signed,
)

MAGIC = b"gerbang-signed-roster/1\n"
SIGNATURE_BYTES = signed_layout.SIGNATURE_BYTES
NONCE_BYTES = 12
HEADER_FORMAT = 1
PAYLOAD_CIPHER = "AES-256-GCM"
_LENGTH = signed_layout.LENGTH
#: Headers are small; anything bigger is not ours (and is not parsed).
MAX_HEADER_BYTES = signed_layout.MAX_HEADER_BYTES

# Reasons a gate refuses a roster (``RosterRefused.reason``), for logs and command replies.
MALFORMED = "malformed"
TAMPERED = "tampered"
WRONG_KEY = "wrong_key"
WRONG_CENTRE = "wrong_centre"
WRONG_SESSION = "wrong_session"
WRONG_ROOM = "wrong_room"
MODEL_MISMATCH = "model_mismatch"
OLD_VERSION = "old_version"
WRONG_TRANSPORT_KEY = "wrong_transport_key"
INCONSISTENT = "inconsistent"


class RosterRefused(RosterError):
    """A signed roster this gate will not use; ``reason`` is a short code, the message says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"roster refused ({reason}): {message}")
        self.reason = reason


@dataclass(frozen=True)
class SignedRosterHeader:
    """The signed, readable part of a roster: what it is for, never who is in it."""

    centre: str
    session: str
    room: str
    version: int
    created: str  # ISO 8601 UTC, when provisioning signed it
    template_dim: int
    count: int
    embedder_sha256: str  # the embedder model (model manifest sha256) that made the templates
    signer: str  # public_key_id of the signing key
    transport_key: str  # keyfile.key_id of the room transport key the payload is encrypted with
    nonce: str  # hex, 12 bytes, AES-GCM nonce of the payload

    def to_dict(self) -> dict[str, Any]:
        """JSON form, with the format number and cipher name."""
        return {"format": HEADER_FORMAT, "cipher": PAYLOAD_CIPHER, **asdict(self)}

    @classmethod
    def from_dict(cls, data: Any) -> SignedRosterHeader:
        """Parse a header; ValueError naming the field on any problem."""
        if not isinstance(data, dict):
            raise ValueError("header is not a JSON object")
        if data.get("format") != HEADER_FORMAT:
            raise ValueError(f"header format {data.get('format')!r}, expected {HEADER_FORMAT}")
        if data.get("cipher") != PAYLOAD_CIPHER:
            raise ValueError(f"payload cipher {data.get('cipher')!r}, expected {PAYLOAD_CIPHER}")
        values: dict[str, Any] = {}
        for field in fields(cls):
            value = data.get(field.name)
            expected = int if field.type == "int" else str  # annotations are strings here
            if type(value) is not expected:
                raise ValueError(f"header field {field.name} must be {expected.__name__}, "
                                 f"got {value!r}")
            values[field.name] = value
        return cls(**values)


@dataclass(frozen=True)
class VerifiedRoster:
    """A roster whose signature, header and payload all checked out."""

    header: SignedRosterHeader
    roster: Roster


def load_roster_public_key(path: Path) -> Ed25519PublicKey:
    """Read the centre's roster-signing public key (PEM); RosterError naming the file."""
    path = Path(path)
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except FileNotFoundError:
        raise RosterError(f"roster-signing public key {path} does not exist (it comes with the "
                          "device bundle)") from None
    except ValueError as exc:
        raise RosterError(f"{path} is not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise RosterError(f"{path} holds a {type(key).__name__}, not an Ed25519 "
                          "roster-signing key")
    return key


def encode_header(header: SignedRosterHeader) -> bytes:
    """The header's bytes as signed (compact JSON, sorted keys)."""
    return json.dumps(header.to_dict(), sort_keys=True, separators=(",", ":")).encode()


def signed_body(header_bytes: bytes, payload: bytes) -> bytes:
    """Everything the signature covers: magic, header length, header, payload."""
    return MAGIC + _LENGTH.pack(len(header_bytes)) + header_bytes + payload


def payload_aad(header_bytes: bytes) -> bytes:
    """Associated data of the payload's encryption: binds the ciphertext to its header."""
    return MAGIC + _LENGTH.pack(len(header_bytes)) + header_bytes


def _split(blob: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    """(body, header bytes, payload, signature) by the layout alone; RosterRefused if it is not
    one (``device.manage.signed_layout``)."""
    try:
        return split_signed(blob, MAGIC)
    except LayoutError as exc:
        hint = ("; a plain roster.json must be signed first with `gerbang-provision roster-sign`"
                if not blob.startswith(MAGIC) else "")
        raise RosterRefused(exc.kind, f"not a usable signed Gerbang roster: {exc}{hint}") from None


def _authenticate(blob: bytes, public_key: Ed25519PublicKey,
                  ) -> tuple[SignedRosterHeader, bytes, bytes]:
    """Check the signature, then parse the header: (header, header bytes, payload)."""
    body, header_bytes, payload, signature = _split(bytes(blob))
    try:
        check_signature(public_key, body, header_bytes, signature)
    except SignatureMismatch as exc:
        if exc.kind == WRONG_KEY:
            raise RosterRefused(WRONG_KEY, f"signed by key {exc.claimed}, but this gate trusts "
                                f"only key {exc.ours}: a roster signed with another centre's "
                                "key (or an altered one)") from None
        raise RosterRefused(TAMPERED, "the signature does not match the contents: the file was "
                            "altered or damaged after it was signed (one changed byte is "
                            "enough); get a fresh copy from provisioning") from None
    try:
        header = SignedRosterHeader.from_dict(json.loads(header_bytes))
    except ValueError as exc:  # includes JSON and UTF-8 errors
        raise RosterRefused(MALFORMED, f"signed header is unreadable: {exc}") from None
    ours = public_key_id(public_key)
    if header.signer != ours:
        raise RosterRefused(INCONSISTENT, f"header names signer {header.signer} but key {ours} "
                            "signed it")
    return header, header_bytes, payload


def _open_payload(header: SignedRosterHeader, header_bytes: bytes, payload: bytes,
                  transport_key: bytes) -> Roster:
    """Decrypt and parse the payload, and check it is what the signed header describes."""
    if len(transport_key) != KEY_BYTES:
        raise RosterRefused(WRONG_TRANSPORT_KEY, f"transport key is {len(transport_key)} bytes, "
                            f"expected {KEY_BYTES}")
    if header.transport_key != key_id(transport_key):
        raise RosterRefused(WRONG_TRANSPORT_KEY, f"payload is encrypted with room key "
                            f"{header.transport_key}, this gate holds {key_id(transport_key)}: "
                            f"its roster-transport.key is not room {header.room}'s (export it "
                            "again with `gerbang-provision roster-key export`)")
    try:
        nonce = bytes.fromhex(header.nonce)
        plain = AESGCM(transport_key).decrypt(nonce, payload, payload_aad(header_bytes))
    except (ValueError, InvalidTag):
        raise RosterRefused(WRONG_TRANSPORT_KEY, "payload does not decrypt with this gate's "
                            "room key") from None
    try:
        roster = roster_from_dict(json.loads(plain))
    except (ValueError, RosterError) as exc:
        # RosterError messages name fields and entry numbers, never names or template bytes.
        raise RosterRefused(INCONSISTENT, f"payload is not a valid roster: {exc}") from None
    facts = {"session": (roster.session, header.session), "room": (roster.room, header.room),
             "version": (roster.version, header.version),
             "count": (len(roster.entries), header.count),
             "template_dim": (roster.template_dim, header.template_dim)}
    if roster.embedder_sha256 is not None:
        facts["embedder_sha256"] = (roster.embedder_sha256, header.embedder_sha256)
    for name, (inside, signed) in facts.items():
        if inside != signed:
            raise RosterRefused(INCONSISTENT, f"payload {name} {inside!r} differs from the "
                                f"signed header's {signed!r}")
    if roster.embedder_sha256 is None:
        roster = replace(roster, embedder_sha256=header.embedder_sha256)
    return roster


def open_signed_roster(blob: bytes, *, public_key: Ed25519PublicKey,
                       transport_key: bytes) -> VerifiedRoster:
    """Check the signature and open the payload, with no expectations about the gate.

    For provisioning (re-signing after adding a cohort) and diagnostics; a gate uses
    ``verify_signed_roster``, which also checks the roster is meant for it.
    """
    header, header_bytes, payload = _authenticate(blob, public_key)
    return VerifiedRoster(header, _open_payload(header, header_bytes, payload, transport_key))


def verify_signed_roster(blob: bytes, *, public_key: Ed25519PublicKey, transport_key: bytes,
                         centre: str, session: str, room: str, embedder_sha256: str,
                         min_version: int | None = None) -> VerifiedRoster:
    """Everything a gate checks before it uses a roster; RosterRefused with the reason otherwise.

    ``centre``, ``session``, ``room`` are the gate's own (its config), ``embedder_sha256`` the
    embedder of the model bundle it runs, ``min_version`` the version of the roster it already
    holds (equal is accepted: the same roster installed twice).
    """
    header, header_bytes, payload = _authenticate(blob, public_key)
    for what, code, signed, ours in (("centre", WRONG_CENTRE, header.centre, centre),
                                     ("session", WRONG_SESSION, header.session, session),
                                     ("room", WRONG_ROOM, header.room, room)):
        if signed != ours:
            raise RosterRefused(code, f"roster is for {what} {signed!r}, this gate is {what} "
                                f"{ours!r}")
    if header.embedder_sha256 != embedder_sha256:
        raise RosterRefused(MODEL_MISMATCH, f"templates were made with embedder model sha256 "
                            f"{header.embedder_sha256[:16]}…, this gate runs "
                            f"{embedder_sha256[:16]}…: enroll again with the gate's model "
                            "bundle, or update the gate's models first")
    if min_version is not None and header.version < min_version:
        raise RosterRefused(OLD_VERSION, f"roster version {header.version} is older than the "
                            f"version {min_version} this gate already holds")
    return VerifiedRoster(header, _open_payload(header, header_bytes, payload, transport_key))

