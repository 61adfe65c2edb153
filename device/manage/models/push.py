"""The ``models`` command: a bundle pushed over MQTT, whole or in resumable chunks (device side),
and the sender the technician's tool uses."""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from device.manage import chunks
from device.manage.models.archive import (
    CHUNK_BYTES,
    MAX_ARCHIVE_BYTES,
    SPACE_FACTOR,
    UPLOAD_DIR,
    ModelUpdateError,
)
from device.manage.models.install import install_for_config
from device.manage.models.state import models_root, read_state

if TYPE_CHECKING:

    from device.config import DeviceConfig

log = logging.getLogger(__name__)

def _upload_part(data_dir: Path, sha256: str) -> Path:
    return models_root(data_dir) / UPLOAD_DIR / f"{sha256}.part"


def receive_chunk(data_dir: Path, body: dict[str, Any]) -> tuple[bytes | None, str]:
    """Store one chunk of a chunked bundle upload (see :mod:`device.manage.chunks`); the parts live
    in ``<data_dir>/models/upload/``."""
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
