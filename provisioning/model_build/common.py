"""What every build step shares: the progress log and SHA-256 digests."""

from __future__ import annotations

import hashlib
from pathlib import Path


def log(message: str) -> None:
    """Print one progress line at once, so long steps show where the build is."""
    print(f"[build_models] {message}", flush=True)


def sha256_file(path: Path) -> str:
    """Return the hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    """Return the hex SHA-256 of a byte string."""
    return hashlib.sha256(data).hexdigest()
