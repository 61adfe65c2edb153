"""Which bundle is current on a gate: ``<data_dir>/models/state.json`` (this file IS the switch),
the bundle folders, and the version high-water mark kept in the outbox."""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from device.infer.bundle import DEFAULT_BUNDLE_DIR
from device.manage.models.archive import (
    BUNDLE_PATH,
    MODELS_DIR,
    STATE_FILE,
    ModelUpdateError,
    check_version,
)
from gerbang.files import write_atomic

if TYPE_CHECKING:

    from device.config import DeviceConfig

log = logging.getLogger(__name__)

@dataclass
class InstallState:
    """What ``state.json`` says. An entry is None for the base bundle (``[models] bundle_dir``,
    or the one shipped in the package), else ``{"dir", "version", "sha256", "installed"}``."""

    current: dict[str, Any] | None = None
    previous: dict[str, Any] | None = None
    #: ``{"starts": n, "since": ts}`` while the current bundle has not yet started the service.
    pending: dict[str, Any] | None = None
    #: The last rollback: ``{"version", "reason", "at"}``.
    rolled_back: dict[str, Any] | None = None

    def to_json(self) -> bytes:
        """The file's bytes."""
        return (json.dumps({"format": 1, "current": self.current, "previous": self.previous,
                            "pending": self.pending, "rolled_back": self.rolled_back},
                           indent=1) + "\n").encode()


def models_root(data_dir: Path) -> Path:
    """Where installed bundles and their state live."""
    return Path(data_dir) / MODELS_DIR


def read_state(data_dir: Path) -> InstallState:
    """The install state (empty when nothing was ever installed); ModelUpdateError naming the
    file when it is unreadable."""
    path = models_root(data_dir) / STATE_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return InstallState()
    except (OSError, ValueError) as exc:
        raise ModelUpdateError(f"model install state {path} is unreadable ({exc}); delete it "
                               "to run the configured (shipped) model bundle again") from None
    if not isinstance(data, dict) or data.get("format") != 1:
        raise ModelUpdateError(f"model install state {path} is not a format 1 state file; "
                               "delete it to run the configured (shipped) model bundle again")
    for name in ("current", "previous", "pending", "rolled_back"):
        if data.get(name) is not None and not isinstance(data[name], dict):
            raise ModelUpdateError(f"model install state {path}: {name} must be an object")
    for name in ("current", "previous"):
        entry = data.get(name)
        if entry is not None and not (isinstance(entry.get("dir"), str)
                                      and BUNDLE_PATH.match(entry["dir"]) and "/" not in
                                      entry["dir"]):
            raise ModelUpdateError(f"model install state {path}: {name}.dir is not a folder "
                                   "name")
    return InstallState(data.get("current"), data.get("previous"), data.get("pending"),
                        data.get("rolled_back"))


def write_state(data_dir: Path, state: InstallState) -> None:
    """Replace ``state.json`` atomically (fsync, rename): the switch between bundles."""
    write_atomic(models_root(data_dir) / STATE_FILE, state.to_json())


def manifest_version(directory: Path) -> str | None:
    version = read_manifest(directory).get("bundle_version")
    return version if isinstance(version, str) else None


def models_high_water(data_dir: Path) -> str | None:
    """The newest model bundle version that ran on this gate (an installed update, confirmed),
    or the version of a signed downgrade installed with force; kept in the outbox database so
    deleting ``state.json`` cannot roll the gate back."""
    from device.config import OUTBOX_FILE
    from device.uplink.outbox import MODELS_HIGH_WATER, Outbox

    path = Path(data_dir) / OUTBOX_FILE
    if not path.exists():  # no outbox yet: nothing ran here (reading must not create it)
        return None
    outbox = Outbox(path)
    try:
        return outbox.high_water(MODELS_HIGH_WATER)
    finally:
        outbox.close()


def record_models_high_water(data_dir: Path, version: str, lower: bool = False) -> None:
    """Raise the models high-water mark to ``version`` (``lower``: set it even when lower, for
    a signed bundle installed with force, a deliberate downgrade)."""
    from device.config import OUTBOX_FILE
    from device.uplink.outbox import MODELS_HIGH_WATER, Outbox

    outbox = Outbox(Path(data_dir) / OUTBOX_FILE)
    try:
        held = outbox.high_water(MODELS_HIGH_WATER)
        try:
            higher = held is None or check_version(version) > check_version(held)
        except ValueError:
            higher = True  # an unreadable mark is replaced by a readable one
        if higher or (lower and held != version):
            outbox.set_high_water(MODELS_HIGH_WATER, version)
    finally:
        outbox.close()


def base_bundle_dir(config: DeviceConfig) -> Path:
    """The bundle the gate runs when nothing is installed: ``[models] bundle_dir`` or the
    package's own."""
    return Path(config.models.bundle_dir) if config.models.bundle_dir else DEFAULT_BUNDLE_DIR


def entry_dir(data_dir: Path, entry: dict[str, Any] | None, base_dir: Path) -> Path:
    """The folder of a state entry (None = the base bundle)."""
    return base_dir if entry is None else models_root(data_dir) / entry["dir"]


def active_bundle_dir(config: DeviceConfig) -> Path:
    """The bundle the next start of the service will use (for the self-test and diagnostics)."""
    state = read_state(config.gate.data_dir)
    return entry_dir(config.gate.data_dir, state.current, base_bundle_dir(config))


def read_manifest(directory: Path) -> dict[str, Any]:
    try:
        return json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}


def describe_entry(entry: dict[str, Any] | None, base_dir: Path) -> str:
    if entry is None:
        version = read_manifest(base_dir).get("bundle_version", "?")
        return f"{version} (base bundle {base_dir})"
    return f"{entry['version']} ({entry['dir']})"


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
