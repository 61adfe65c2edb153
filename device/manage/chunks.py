"""Resumable chunked uploads over commands: a large signed file sent as several ``cmd/…``
messages, each acknowledged with the offset the gate wants next.

Used by the ``models`` and ``roster`` commands. A chunk body is ``{"sha256", "size",
"offset", "chunk_b64"}``. Parts are kept on disk (fsync per chunk), so an upload survives a
restart or a lost connection, and the sender always resumes where the gate says: a resent
chunk is acknowledged again, one past what the gate holds is refused, and both name the next
offset. The whole file is checked against its sha256 before anyone parses it.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_NEXT_OFFSET = re.compile(r"next offset (\d+)")


def receive_chunk(upload_dir: Path, body: dict[str, Any], max_bytes: int,
                  space_factor: int = 1, what: str = "upload") -> tuple[bytes | None, str]:
    """Store one chunk: (the whole file once complete, else None; the acknowledgement text,
    which names the next offset while incomplete). ``what`` names the upload in messages.

    Parts live in ``upload_dir/<sha256>.part``; a new upload (another sha256) discards any
    other unfinished one there. CommandError says what is wrong with a bad chunk.
    """
    from device.uplink.commands import CommandError

    sha, size, offset = body.get("sha256"), body.get("size"), body.get("offset")
    encoded = body.get("chunk_b64")
    if not isinstance(sha, str) or not _SHA256.match(sha):
        raise CommandError(f"sha256: required, 64 lowercase hex (the whole {what}'s sha256)")
    if type(size) is not int or not 0 < size <= max_bytes:
        raise CommandError(f"size: required, the {what}'s length in bytes (1..{max_bytes})")
    if type(offset) is not int or offset < 0:
        raise CommandError("offset: required, a whole number >= 0")
    if not isinstance(encoded, str):
        raise CommandError("chunk_b64: required, this chunk in base64")
    try:
        chunk = base64.b64decode(encoded, validate=True)
    except ValueError:
        raise CommandError("chunk_b64: not valid base64") from None
    part = Path(upload_dir) / f"{sha}.part"
    part.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    for other in part.parent.glob("*.part"):
        if other != part:
            other.unlink()
            log.info("discarded unfinished %s %s", what, other.name)
    have = part.stat().st_size if part.exists() else 0
    if have == 0:
        free = shutil.disk_usage(part.parent).free
        if free < space_factor * size:
            raise CommandError(f"size: {size // 2**20} MB needs {space_factor * size // 2**20} "
                               f"MB free in {part.parent}, there are {free // 2**20} MB")
    if offset > have:
        raise CommandError(f"offset: {offset}, but this gate holds {have} bytes of {what} "
                           f"{sha[:12]}…; next offset {have}")
    if offset + len(chunk) > size:
        raise CommandError(f"chunk_b64: runs to byte {offset + len(chunk)}, past size {size}")
    if offset + len(chunk) > have:
        with open(part, "ab") as fh:
            fh.write(chunk[have - offset:])
            fh.flush()
            os.fsync(fh.fileno())
        have = offset + len(chunk)
    elif chunk:
        return None, (f"already have {have} of {size} bytes of {what} {sha[:12]}…; "
                      f"next offset {have}")
    if have < size:
        return None, f"received {have} of {size} bytes of {what} {sha[:12]}…; next offset {have}"
    blob = part.read_bytes()
    part.unlink()
    actual = hashlib.sha256(blob).hexdigest()
    if actual != sha:
        raise CommandError(f"sha256: the {size} bytes received hash to {actual[:16]}…, not the "
                           f"declared {sha[:16]}…: a chunk was damaged or mixed up; send the "
                           f"{what} again from offset 0")
    return blob, f"received all {size} bytes of {what} {sha[:12]}…"


def next_offset(detail: str) -> int | None:
    """The offset a chunk acknowledgement asks for next; None when the ack is the final result
    (installed or refused)."""
    match = _NEXT_OFFSET.search(detail or "")
    return int(match.group(1)) if match else None


def chunk_body(blob: bytes, offset: int, chunk_bytes: int) -> dict[str, Any]:
    """The command body carrying the chunk of ``blob`` that starts at ``offset``."""
    return {"sha256": hashlib.sha256(blob).hexdigest(), "size": len(blob), "offset": offset,
            "chunk_b64": base64.b64encode(blob[offset:offset + chunk_bytes]).decode()}


def push_in_chunks(send: Callable[[dict[str, Any]], dict[str, Any]], blob: bytes,
                   chunk_bytes: int, extra: dict[str, Any] | None = None,
                   start_offset: int = 0, max_retries: int = 5) -> dict[str, Any]:
    """Send ``blob`` to one gate chunk by chunk and return the final acknowledgement.

    ``send(body)`` publishes one command and returns its ``cmd_ack`` (as a dict). Each ack
    names the next offset, so the sender resumes where the gate is, whatever it thought.
    """
    offset, retries = start_offset, 0
    while True:
        ack = send({**chunk_body(blob, offset, chunk_bytes), **(extra or {})})
        wanted = next_offset(ack.get("detail", ""))
        if wanted is None:
            return ack
        if not ack.get("ok"):
            retries += 1
            if retries > max_retries:
                return ack
        offset = wanted
