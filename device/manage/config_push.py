"""Versioned configuration pushed from the gateway (the ``config`` command).

The technician (``gerbang-provision config-push``) sends a gate its *whole* ``device.toml`` with
a version number, in one of two forms:

* **signed** ``{"signed_config_b64": …}``: the file signed with the centre's roster-signing key
  for this gate (``device.manage.signed_config``; the version is the signed header's). It may change
  every key but the local-only ones.
* **unsigned** ``{"version": N, "config": "<TOML text>"}``: it may change only the *harmless*
  keys (``device.manage.config_keys.HARMLESS_KEYS``: telemetry interval, drain timeout, inference
  threads, screen timings, camera freeze time). A gate without ``[keys]`` takes only these.

Which keys differ is decided on the *effective* configs (defaults applied), so writing a default
out is not a change. That pair (version, file) is the **desired** config. The gate checks it
completely before touching anything, then swaps the file in one rename, records what it now
runs and restarts its workers with it. What it runs is the **reported** config, ``{"version",
"sha256", "applied_at", "signed"}``: acknowledged on ``cmd_ack`` and repeated in the gate's
retained birth message, so the gateway can tell a gate that has the desired config from one
that is behind, offline, or edited by hand.

Refused, with a message naming the field, and with nothing on disk changed:

* ``version`` missing, not an integer ≥ 1, or not newer than the reported version (a delayed or
  replayed push must never roll a gate back);
* ``config`` missing, not TOML, or not a valid device config (the same loader the service uses
  at start, so the message is the one ``gerbang-device run`` would print; every value is
  bounded there);
* a signed config that does not verify, or is for another centre or gate;
* an unsigned config that changes a signed key (the refusal names the first one and says how
  to sign the push);
* any change of a local-only key (``device.manage.config_keys.LOCAL_KEYS``): ``gate.device_id`` and
  ``gate.centre`` (the gate's certificate and the broker's ACL are bound to them),
  ``gate.data_dir`` (the outbox, the templates and this module's state live there), ``[keys]``
  and the broker's TLS files and credentials (whom the gate trusts); re-provision instead.

On disk::

    <config_path>             the config the service starts with (replaced atomically)
    <config_path>.previous    the config before the last push (to go back by hand)
    <data_dir>/config_state.json
                              the reported state, written atomically after the config file

MQTT delivers commands at least once, so the push of the version and content already applied is
acknowledged again as applied, without a second restart.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import threading
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from device.config import DeviceConfig, load_device_config, parse_device_config
from device.manage.config_keys import (
    HARMLESS_KEYS,
    LOCAL,
    LOCAL_KEYS,
    SIGNED,
    changed_keys,
    classify,
)
from device.uplink.commands import CommandError
from gerbang import wire
from gerbang.config import ConfigError
from gerbang.files import write_atomic

log = logging.getLogger(__name__)

STATE_FILE = "config_state.json"
#: A device.toml is a few kilobytes; anything far larger is not one.
MAX_CONFIG_CHARS = 64 * 1024
#: How a technician signs a push (named in refusals).
SIGN_HINT = ("`gerbang-provision config-push --keys DIR` (signed with the centre's roster "
             "key)")

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
        "applied_at": state.get("applied_at") if state else None,
        "signed": bool(state.get("signed", False)) if state else False}
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


def _current_config(config_path: Path) -> DeviceConfig:
    """The gate's own config file as the service would load it (what a push is compared with,
    and where the key that checks a signed push is named)."""
    try:
        return load_device_config(config_path)
    except ConfigError as exc:
        raise CommandError(f"config: this gate's own config {config_path} does not load "
                           f"({exc}), so a push cannot be compared with it; fix it on the "
                           "gate") from None


def _signed_text(body: dict[str, Any], current: DeviceConfig) -> tuple[int, str]:
    """(version, TOML text) of a signed push, verified against this gate's key and identity."""
    from device.decide.roster import RosterError
    from device.manage.roster_file import load_roster_public_key
    from device.manage.signed_config import ConfigRefused, verify_signed_config

    encoded = body.get("signed_config_b64")
    if not isinstance(encoded, str):
        raise CommandError("signed_config_b64: the signed config in base64")
    if current.keys.roster_public_key is None:
        raise CommandError("signed_config_b64: this gate has no [keys] roster_public_key to "
                           "check a signed config; it takes unsigned changes of harmless keys "
                           f"only ({', '.join(HARMLESS_KEYS)})")
    try:
        blob = base64.b64decode(encoded, validate=True)
    except (ValueError, binascii.Error):
        raise CommandError("signed_config_b64: not valid base64") from None
    try:
        public_key = load_roster_public_key(current.keys.roster_public_key)
        header, toml_bytes = verify_signed_config(
            blob, public_key=public_key, centre=current.gate.centre,
            device_id=current.gate.device_id)
    except (RosterError, ConfigRefused) as exc:
        raise CommandError(f"config: {exc}") from None
    try:
        text = toml_bytes.decode("utf-8")
    except UnicodeDecodeError:
        raise CommandError("config: the signed config is not UTF-8 text") from None
    if len(text) > MAX_CONFIG_CHARS:
        raise CommandError(f"config: longer than {MAX_CONFIG_CHARS} characters")
    return header.version, text


def check_changes(current: DeviceConfig, new: DeviceConfig, signed: bool) -> list[str]:
    """The keys the push changes; CommandError naming the first one it may not change."""
    changed = changed_keys(current, new)
    for key in changed:
        if classify(key) == LOCAL:
            raise CommandError(
                f"config: {key}: differs from this gate's, and it is local only "
                f"({LOCAL_KEYS.get(key, 'not classified')}): no push may change it, signed or "
                "not; change it on the gate by re-provisioning it")
    if not signed:
        protected = [key for key in changed if classify(key) == SIGNED]
        if protected:
            more = f" (also {', '.join(protected[1:4])}{' …' if len(protected) > 4 else ''})" \
                if len(protected) > 1 else ""
            raise CommandError(
                f"config: {protected[0]}: decides who enters or whom the gate trusts, so an "
                f"unsigned push may not change it{more}; send it signed with {SIGN_HINT}. "
                f"Unsigned pushes may change only: {', '.join(HARMLESS_KEYS)}")
    return changed


def config_push_handler(config_path: Path, data_dir: Path,
                        restart: Callable[[], None]) -> Callable[[dict[str, Any]], str]:
    """The ``config`` command: ``{"signed_config_b64": …}`` or ``{"version": N, "config":
    "<TOML>"}`` → check, swap, restart.

    ``config_path`` is the file the service was started with (what a push is compared with;
    its ``[keys] roster_public_key`` checks a signed one), ``data_dir`` the running ``[gate]
    data_dir`` (where the reported state is kept). ``restart`` is called once the new file and
    state are on disk; it must only *ask* for the restart and return, because the
    acknowledgement is published after this handler returns, on the thread that called it.
    Returns the ``cmd_ack`` detail; refusals are CommandErrors naming the field.
    """
    config_path = Path(config_path)
    data_dir = Path(data_dir)

    def handle(body: dict[str, Any]) -> str:
        # Pushes are rare, deliberate acts of a technician; a refused one is either a broken
        # tool or someone with a commanding identity trying to weaken the gate, and a proctor
        # cannot tell which from here: every refusal is also a config_refused alarm.
        try:
            return apply(body)
        except CommandError as exc:
            exc.alarm = exc.alarm or "config_refused"
            raise

    def apply(body: dict[str, Any]) -> str:
        signed = "signed_config_b64" in body
        current: DeviceConfig | None = None
        if signed:
            current = _current_config(config_path)
            version, text = _signed_text(body, current)
        else:
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
            current = current or _current_config(config_path)
            changed = check_changes(current, new, signed)
            if new.gate.data_dir.resolve() != data_dir.resolve():
                raise CommandError(
                    f"config: gate.data_dir: {str(new.gate.data_dir)!r} differs from this "
                    f"gate's {str(data_dir)!r}; the outbox, templates and config state live "
                    "there, so change it by re-provisioning the gate")
            _swap(config_path, data_dir, new_bytes, version, new_sha, signed)
        kind = "signed" if signed else "unsigned"
        log.info("config v%d (%s) applied (sha256 %s), changing %s; restarting the workers",
                 version, kind, new_sha[:12], ", ".join(changed) or "nothing effective")
        try:
            restart()
        except Exception as exc:
            log.exception("config v%d written, restart failed", version)
            raise CommandError(f"config: v{version} written but the restart failed "
                               f"({type(exc).__name__}: {exc}); it applies at the next start "
                               "of the service") from None
        return (f"config v{version} applied ({kind}, sha256 {new_sha[:12]}); restarting to use "
                "it")

    return handle


def _swap(config_path: Path, data_dir: Path, new_bytes: bytes, version: int, sha: str,
          signed: bool = False) -> None:
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
             "applied_at": wire.utc_now_iso(), "signed": signed}
    try:
        write_atomic(data_dir / STATE_FILE,
                     json.dumps(state, separators=(",", ":")).encode(), 0o600)
    except OSError as exc:
        write_atomic(config_path, old_bytes, mode)
        raise CommandError(f"config: cannot record the applied version in "
                           f"{data_dir / STATE_FILE} ({exc.strerror or exc}); the old config "
                           "was put back") from None
