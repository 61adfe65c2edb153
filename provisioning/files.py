"""Files and folders the technician's tool writes, with explicit modes whatever the umask.

A technician's laptop may run with ``umask 000`` (some desktop sessions, a ``sudo -E`` shell, a
CI runner): ``Path.write_text`` and ``Path.mkdir`` would then make world-writable files and
folders, and anyone on the machine could edit a broker config or swap a certificate before it
is copied to the broker or a gate. Everything under ``provisioning/`` writes through these two
functions (or ``pki.write_private_key`` for keys), so no file or folder it makes is writable by
group or others, and keys are 0600.
"""

from __future__ import annotations

import os
from pathlib import Path

from gerbang.files import write_atomic

#: Folders that hold nothing secret (broker folder, certificates, a gate's bundle).
DIR_MODE = 0o755
#: Folders that hold keys (the CA, the gateway's and technicians' folders).
PRIVATE_DIR_MODE = 0o700
FILE_MODE = 0o644


def make_dirs(path: Path, mode: int = DIR_MODE) -> Path:
    """``mkdir -p path``, each folder it creates set to exactly ``mode`` (not ``mode & ~umask``).

    Folders that already exist are left as they are: they are the technician's.
    """
    path = Path(path)
    missing = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, mode)
        except FileExistsError:  # made by someone else meanwhile: theirs
            continue
        os.chmod(folder, mode)  # mkdir's mode is filtered by the umask; chmod's is not
    return path


def write_file(path: Path, data: str | bytes, mode: int = FILE_MODE,
               dir_mode: int = DIR_MODE) -> Path:
    """Write ``data`` atomically with exactly ``mode``, making missing parents with ``dir_mode``."""
    path = Path(path)
    make_dirs(path.parent, dir_mode)
    write_atomic(path, data.encode() if isinstance(data, str) else data, mode=mode)
    return path
