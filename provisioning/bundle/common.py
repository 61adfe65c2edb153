"""What every part of the centre folder shares: the error a provisioning step raises, the id
check, private file writes, TOML values, and where Gerbang lives on the gate.

Why one module: the centre, its certificates, the broker folder and the gate bundle all name
ids that become MQTT topics and write files that may hold keys, the same way.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path
from typing import Any

from device.config import SwitchConfig
from gerbang.wire import ID_PATTERN
from provisioning.files import write_file

DEFAULT_ETC_DIR = "/etc/gerbang"
DEFAULT_DATA_DIR = "/var/lib/gerbang"
DEFAULT_VENV = "/opt/gerbang/venv"
SERVICE_USER = "gerbang"


class ProvisionError(ValueError):
    """A provisioning step that cannot be done as asked; the message says why and what to do."""


def check_id(what: str, value: str) -> str:
    """``value`` if it is a valid id (it becomes part of MQTT topics), else ProvisionError."""
    if not isinstance(value, str) or not ID_PATTERN.match(value):
        raise ProvisionError(f"{what} {value!r} is not a valid id (letters, digits, '_', '.', "
                             "'-', at most 64; it becomes part of MQTT topics)")
    return value


def now_iso() -> str:
    """Now, UTC, as ``2024-01-31T08:00:00Z``."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_json(path: Path, data: dict[str, Any], mode: int = 0o644) -> None:
    """Write ``data`` as indented JSON with ``mode`` (atomically, like every file here)."""
    write_file(path, json.dumps(data, indent=1) + "\n", mode)


def copy_file(src: Path, dst: Path, mode: int) -> Path:
    """Copy ``src`` to ``dst`` atomically with ``mode`` (a key is never briefly world-readable)."""
    return write_file(dst, Path(src).read_bytes(), mode)


def toml_value(value: Any) -> str:
    """One TOML value (strings as JSON strings, which are valid TOML basic strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, SwitchConfig):
        return ("{ " + ", ".join(f"{f.name} = {toml_value(getattr(value, f.name))}"
                                 for f in dataclasses.fields(value)) + " }")
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)
