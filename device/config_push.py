"""Versioned configuration pushed from the gateway (the ``config`` command).

The technician (``gerbang-provision config-push``) sends a gate its *whole* ``device.toml`` with
a version number: ``{"version": N, "config": "<TOML text>"}``. That pair is the **desired**
config. The gate checks it completely before touching anything, then swaps the file in one
rename, records what it now runs and restarts its workers with it. What it runs is the
**reported** config, ``{"version", "sha256", "applied_at"}``: acknowledged on ``cmd_ack`` and
repeated in the gate's retained birth message, so the gateway can tell a gate that has the
desired config from one that is behind, offline, or edited by hand.

Refused, with a message naming the field, and with nothing on disk changed:

* ``version`` missing, not an integer ≥ 1, or not newer than the reported version (a delayed or
  replayed push must never roll a gate back);
* ``config`` missing, not TOML, or not a valid device config (the same loader the service uses
  at start, so the message is the one ``gerbang-device run`` would print);
* a change of ``gate.device_id`` or ``gate.centre``: the gate's certificate (CN = device id,
  OU = centre) and the broker's ACL are bound to them, so a changed value would lock the gate
  out of its own topics; re-provision instead;
* a change of ``gate.data_dir``: the outbox, the stored templates and this module's state live
  there, so moving it would strand unsent events and forget the reported version.

On disk::

    <config_path>             the config the service starts with (replaced atomically)
    <config_path>.previous    the config before the last push (to go back by hand)
    <data_dir>/config_state.json
                              the reported state, written atomically after the config file

MQTT delivers commands at least once, so the push of the version and content already applied is
acknowledged again as applied, without a second restart.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from device.commands import CommandError
from device.config import parse_device_config
from gerbang import wire
from gerbang.config import ConfigError
from gerbang.files import write_atomic

log = logging.getLogger(__name__)

STATE_FILE = "config_state.json"
#: A device.toml is a few kilobytes; anything far larger is not one.
MAX_CONFIG_CHARS = 64 * 1024
#: ``[gate]`` keys a push may not change (see the module docstring for why).
PINNED_GATE_KEYS = ("device_id", "centre")

# Commands run one at a time on the uplink's command thread; the lock makes that a guarantee
# even if the service ever builds a second handler, since the state it protects is on disk.
_LOCK = threading.Lock()


class ConfigStateError(RuntimeError):
    """``config_state.json`` exists but cannot be read as the reported state."""


def previous_path(config_path: Path) -> Path:
    """Where the config before the last push is kept (``device.toml.previous``)."""
    return config_path.with_name(config_path.name + ".previous")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_state(data_dir: Path) -> dict[str, Any] | None:
    """The reported state recorded by the last push, or None if the gate never took one.

    Raises ConfigStateError when the file is there but unreadable: treating it as "never
    pushed" would let a stale push through.
    """
    path = data_dir / STATE_FILE
    try:
        state = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigStateError(f"{path} cannot be read ({exc})") from None
    version = state.get("version") if isinstance(state, dict) else None
    if (isinstance(version, bool) or not isinstance(version, int)
            or not isinstance(state.get("sha256"), str)):
        raise ConfigStateError(f"{path} does not hold a version and a sha256")
    return state


def reported_config(data_dir: Path, config_path: Path | None = None) -> dict[str, Any]:
    """The reported config for the gate's birth message; never raises.

    ``{"version": N, "sha256": …, "applied_at": …}`` as recorded by the last push, or version 0
    and ``applied_at`` None when the gate never took one. With ``config_path``, ``sha256`` is
    that of the file on disk now and ``local_edit`` says whether it differs from what was last
    pushed (edited by hand on the Pi, or a power cut between writing the file and the state);
    without it, ``sha256`` is the recorded one (None if never pushed).
    """
    try:
        state = read_state(data_dir)
        error = None
    except ConfigStateError as exc:
        state, error = None, str(exc)
        log.warning("config state: %s", exc)
    report: dict[str, Any] = {
        "version": state["version"] if state else 0,
        "sha256": state["sha256"] if state else None,
        "applied_at": state.get("applied_at") if state else None}
    if config_path is not None:
        try:
            actual = _sha256(config_path.read_bytes())
        except OSError:
            actual = None
        report["local_edit"] = state is not None and actual != state["sha256"]
        report["sha256"] = actual
    if error:
        report["error"] = error
    return report


def _version(body: dict[str, Any]) -> int:
    version = body.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise CommandError("version: required, an integer (the config version, newer than the "
                           "one the gate reports)")
    if version < 1:
        raise CommandError(f"version: must be >= 1, got {version}")
    return version


def _config_text(body: dict[str, Any]) -> str:
    text = body.get("config")
    if not isinstance(text, str) or not text.strip():
        raise CommandError("config: required, the gate's whole device.toml as text")
    if len(text) > MAX_CONFIG_CHARS:
        raise CommandError(f"config: longer than {MAX_CONFIG_CHARS} characters")
    return text


def _pinned_gate(config_path: Path) -> dict[str, Any]:
    """The running config's ``[gate]`` table, read raw (only the pinned keys are compared)."""
    try:
        gate = tomllib.loads(config_path.read_text("utf-8")).get("gate")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CommandError(f"config: this gate's own config {config_path} cannot be read to "
                           f"compare its identity ({exc})") from None
    if not isinstance(gate, dict):
        raise CommandError(f"config: this gate's own config {config_path} has no [gate] table")
    return gate


def config_push_handler(config_path: Path, data_dir: Path,
                        restart: Callable[[], None]) -> Callable[[dict[str, Any]], str]:
    """The ``config`` command: ``{"version": N, "config": "<TOML>"}`` → check, swap, restart.

    ``config_path`` is the file the service was started with, ``data_dir`` the running
    ``[gate] data_dir`` (where the reported state is kept). ``restart`` is called once the new
    file and state are on disk; it must only *ask* for the restart and return, because the
    acknowledgement is published after this handler returns, on the thread that called it.
    Returns the ``cmd_ack`` detail; refusals are CommandErrors naming the field.
    """
    config_path = Path(config_path)
    data_dir = Path(data_dir)

    def handle(body: dict[str, Any]) -> str:
        version = _version(body)
        text = _config_text(body)
        new_bytes = text.encode("utf-8")
        new_sha = _sha256(new_bytes)
        with _LOCK:
            try:
                state = read_state(data_dir)
            except ConfigStateError as exc:
                raise CommandError(f"config: the gate's reported state is unreadable, so the "
                                   f"version cannot be checked: {exc}") from None
            reported = state["version"] if state else 0
            if state and version == reported and new_sha == state["sha256"]:
                return f"config v{version} already applied (sha256 {new_sha[:12]}); nothing " \
                       "changed"
            if version <= reported:
                raise CommandError(f"version: {version} is not newer than the applied config "
                                   f"v{reported}")
            try:
                data = tomllib.loads(text)
            except tomllib.TOMLDecodeError as exc:
                raise CommandError(f"config: not valid TOML ({exc})") from None
            try:
                new = parse_device_config(data)
            except ConfigError as exc:
                raise CommandError(f"config: {exc}") from None
            current = _pinned_gate(config_path)
            for key in PINNED_GATE_KEYS:
                if getattr(new.gate, key) != current.get(key):
                    raise CommandError(
                        f"config: gate.{key}: {getattr(new.gate, key)!r} differs from this "
                        f"gate's {current.get(key)!r}; it is bound to the gate's certificate "
                        "and broker ACL, so change it by re-provisioning the gate")
            if new.gate.data_dir.resolve() != data_dir.resolve():
                raise CommandError(
                    f"config: gate.data_dir: {str(new.gate.data_dir)!r} differs from this "
                    f"gate's {str(data_dir)!r}; the outbox, templates and config state live "
                    "there, so change it by re-provisioning the gate")
            _swap(config_path, data_dir, new_bytes, version, new_sha)
        log.info("config v%d applied (sha256 %s); restarting the workers", version, new_sha[:12])
        try:
            restart()
        except Exception as exc:
            log.exception("config v%d written, restart failed", version)
            raise CommandError(f"config: v{version} written but the restart failed "
                               f"({type(exc).__name__}: {exc}); it applies at the next start "
                               "of the service") from None
        return f"config v{version} applied (sha256 {new_sha[:12]}); restarting to use it"

    return handle


def _swap(config_path: Path, data_dir: Path, new_bytes: bytes, version: int, sha: str) -> None:
    """Keep the old file as ``.previous``, rename the new one in, then record the state.

    The config file goes first: after a power cut between the two writes the gate runs the new
    (fully checked) file and still reports the old version, so the same push is accepted again
    and ``local_edit`` shows the mismatch meanwhile. If the state cannot be written the old
    file is put back, so a refusal always means "nothing changed".
    """
    try:
        old_bytes = config_path.read_bytes()
        mode = config_path.stat().st_mode & 0o777
    except OSError as exc:
        raise CommandError(f"config: cannot read this gate's config {config_path} "
                           f"({exc.strerror or exc})") from None
    try:
        write_atomic(previous_path(config_path), old_bytes, mode)
        write_atomic(config_path, new_bytes, mode)
    except OSError as exc:
        raise CommandError(f"config: cannot write {config_path} ({exc.strerror or exc}); the "
                           "service user needs write access to its folder") from None
    state = {"schema": wire.SCHEMA_VERSION, "version": version, "sha256": sha,
             "applied_at": wire.utc_now_iso()}
    try:
        write_atomic(data_dir / STATE_FILE,
                     json.dumps(state, separators=(",", ":")).encode(), 0o600)
    except OSError as exc:
        write_atomic(config_path, old_bytes, mode)
        raise CommandError(f"config: cannot record the applied version in "
                           f"{data_dir / STATE_FILE} ({exc.strerror or exc}); the old config "
                           "was put back") from None
