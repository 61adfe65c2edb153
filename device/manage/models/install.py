"""Installing a verified bundle (unpack, self-check, switch) and, at each service start, which
bundle to load: the pending one counted and confirmed, or rolled back."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from device.infer.bundle import ModelBundle, load_bundle
from device.manage.models.archive import (
    EMBEDDER_CHANGED,
    INCOMING_SUFFIX,
    INCONSISTENT,
    MAX_PENDING_STARTS,
    NO_SPACE,
    OLD_VERSION,
    SELF_CHECK_FAILED,
    SPACE_FACTOR,
    STATE_FILE,
    UPLOAD_DIR,
    ModelUpdateError,
    ModelUpdateRefused,
    check_version,
    verify_model_archive,
)
from device.manage.models.selfcheck import SelfCheckFailed, self_check, self_check_isolated
from device.manage.models.state import (
    InstallState,
    base_bundle_dir,
    describe_entry,
    entry_dir,
    manifest_version,
    models_high_water,
    models_root,
    now_iso,
    read_manifest,
    read_state,
    record_models_high_water,
    write_state,
)

if TYPE_CHECKING:

    from device.config import DeviceConfig

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class InstallResult:
    """What an install did, for the command's acknowledgement and the log."""

    version: str
    directory: Path
    replaced: str  # description of the bundle that was current before
    detail: str


def _write_tree(target: Path, contents: dict[str, bytes]) -> None:
    """Write every file under ``target`` (0644), fsynced, then fsync the folders."""
    target.mkdir(mode=0o755, parents=True)
    folders = {target}
    for path, data in contents.items():
        dest = target / path
        if dest.parent != target:
            dest.parent.mkdir(mode=0o755, exist_ok=True)
            folders.add(dest.parent)
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    for folder in folders:
        _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _prune(data_dir: Path, state: InstallState) -> None:
    """Delete installed bundles that are neither current nor previous, and stale staging."""
    keep = {e["dir"] for e in (state.current, state.previous) if e is not None}
    root = models_root(data_dir)
    for child in root.iterdir() if root.is_dir() else []:
        if child.is_dir() and not child.is_symlink() and child.name != UPLOAD_DIR \
                and child.name not in keep:
            shutil.rmtree(child, ignore_errors=True)
            log.info("removed old model bundle folder %s", child)


def install_model_archive(blob: bytes, *, data_dir: Path, public_key: Ed25519PublicKey,
                          base_dir: Path, force: bool = False, threads: int = 1,
                          runtime: str = "auto", calibration_far: float | None = None,
                          check: Callable[..., str] = self_check_isolated) -> InstallResult:
    """Verify a signed model bundle, unpack it next to the current one, self-check it, and make
    it current (pending until the service starts with it). ModelUpdateRefused says why not;
    nothing changes on a refusal.

    ``force`` accepts a version that is not newer than the installed one (a deliberate
    downgrade) and an embedder that differs from the installed one.
    """
    data_dir = Path(data_dir)
    verified = verify_model_archive(blob, public_key)
    header = verified.header
    state = read_state(data_dir)
    current_dir = entry_dir(data_dir, state.current, base_dir)
    installed = describe_entry(state.current, base_dir)
    if state.current is not None and state.current.get("sha256") == verified.sha256:
        return InstallResult(header.bundle_version, current_dir, installed,
                             f"model bundle {header.bundle_version} is already installed "
                             f"({state.current['dir']}); nothing changed")
    manifest = verified.manifest()
    if manifest.get("bundle_version") != header.bundle_version:
        raise ModelUpdateRefused(INCONSISTENT, f"manifest.json says version "
                                 f"{manifest.get('bundle_version')!r}, the signed header "
                                 f"{header.bundle_version!r}")
    current_manifest = read_manifest(current_dir)
    current_version = current_manifest.get("bundle_version", "0")
    try:
        older = check_version(header.bundle_version) <= check_version(current_version)
    except ValueError:
        older = False  # an installed version we cannot read never blocks an update
    if older and not force:
        raise ModelUpdateRefused(OLD_VERSION, f"version {header.bundle_version} is not newer "
                                 f"than the installed {installed}; send it with force to "
                                 "downgrade on purpose")
    new_embedder = manifest["models"].get("embedder", {}).get("sha256")
    old_embedder = current_manifest.get("models", {}).get("embedder", {}).get("sha256")
    embedder_changed = bool(old_embedder) and new_embedder != old_embedder
    if embedder_changed and not force:
        raise ModelUpdateRefused(EMBEDDER_CHANGED, f"the new embedder (sha256 "
                                 f"{str(new_embedder)[:16]}…) differs from the installed one "
                                 f"({old_embedder[:16]}…): this gate's roster templates could "
                                 "not be compared. Re-enroll the rosters with the new bundle, "
                                 "send it with force, restart, then push the new rosters")
    root = models_root(data_dir)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    free = shutil.disk_usage(root).free
    if free < SPACE_FACTOR * len(blob):
        raise ModelUpdateRefused(NO_SPACE, f"{free // 2**20} MB free in {root}, a "
                                 f"{len(blob) // 2**20} MB bundle needs "
                                 f"{SPACE_FACTOR * len(blob) // 2**20} MB")
    name = f"{header.bundle_version}-{verified.sha256[:12]}"
    staging = root / f".staging-{name}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        _write_tree(staging, verified.contents)
        try:
            summary = check(staging, threads=threads, runtime=runtime,
                            calibration_far=calibration_far)
        except SelfCheckFailed as exc:
            raise ModelUpdateRefused(SELF_CHECK_FAILED, f"{exc}; rolled back: the gate keeps "
                                     f"{installed}") from None
        final = root / name
        if final.exists():
            shutil.rmtree(final)
        os.rename(staging, final)
        _fsync_dir(root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    entry = {"dir": name, "version": header.bundle_version, "sha256": verified.sha256,
             "installed": now_iso()}
    # While a bundle is pending it never ran: the one to fall back to stays the last one that did.
    previous = state.previous if state.pending else state.current
    new_state = InstallState(current=entry, previous=previous,
                             pending={"starts": 0, "since": now_iso()},
                             rolled_back=state.rolled_back)
    write_state(data_dir, new_state)
    _prune(data_dir, new_state)
    if older:  # forced: the signed downgrade is what the gate may now run
        record_models_high_water(data_dir, header.bundle_version, lower=True)
    warning = (" WARNING: the embedder changed (forced): push rosters enrolled with the new "
               "bundle after the restart." if embedder_changed else "")
    detail = (f"model bundle {header.bundle_version} installed in {final} and self-checked "
              f"({summary}); previous {describe_entry(previous, base_dir)} kept. The gate runs "
              f"{installed} until the service restarts, which confirms "
              f"{header.bundle_version} (or rolls back if it does not start).{warning}")
    log.info("%s", detail)
    return InstallResult(header.bundle_version, final, installed, detail)


def install_for_config(config: DeviceConfig, blob: bytes, force: bool = False) -> InstallResult:
    """``install_model_archive`` with this gate's key, data folder, base bundle, runtime and
    calibration needs taken from its config."""
    from device.decide.roster import RosterError
    from device.manage.roster_file import load_roster_public_key

    if config.keys.roster_public_key is None:
        raise ModelUpdateError("this gate has no [keys] roster_public_key, so it cannot check "
                               "a signed model bundle")
    try:
        public_key = load_roster_public_key(config.keys.roster_public_key)
    except RosterError as exc:
        raise ModelUpdateError(str(exc)) from None
    return install_model_archive(
        blob, data_dir=config.gate.data_dir, public_key=public_key,
        base_dir=base_bundle_dir(config), force=force, threads=config.models.threads,
        runtime=config.models.runtime,
        calibration_far=config.match.target_far if config.match.threshold is None else None)




def rollback(data_dir: Path, state: InstallState, reason: str, base_dir: Path) -> InstallState:
    """Make the previous bundle current again, delete the failed one, and record why."""
    failed = state.current
    new_state = InstallState(current=state.previous, previous=None, pending=None,
                             rolled_back={"version": failed["version"] if failed else None,
                                          "dir": failed["dir"] if failed else None,
                                          "reason": reason, "at": now_iso()})
    write_state(data_dir, new_state)
    _prune(data_dir, new_state)
    log.error("model bundle %s rolled back to %s: %s", describe_entry(failed, base_dir),
              describe_entry(new_state.current, base_dir), reason)
    return new_state


def install_incoming(config: DeviceConfig) -> list[str]:
    """Install ``<data_dir>/incoming/*.models.signed`` (copied from a USB stick or a
    provisioning bundle); each file is removed once tried. Returns one line per file."""
    incoming = config.incoming_dir
    files = sorted(incoming.glob(f"*{INCOMING_SUFFIX}")) if incoming.is_dir() else []
    if not files:
        return []
    if config.keys.roster_public_key is None:
        log.error("model bundles waiting in %s cannot be checked: this gate has no [keys] "
                  "roster_public_key; they stay there", incoming)
        return []
    lines = []
    for path in files:
        blob = path.read_bytes()
        path.unlink()  # verified or refused, never tried twice (the log says which)
        try:
            lines.append(f"{path.name}: {install_for_config(config, blob).detail}")
        except ModelUpdateError as exc:
            log.error("%s: %s", path.name, exc)
            lines.append(f"{path.name}: {exc}")
    return lines


def _check_high_water(data_dir: Path, state: InstallState, directory: Path) -> None:
    """Refuse to start with a bundle older than the newest one that ran here (ModelUpdateError,
    so the service exits 2): ``state.json`` was deleted or replaced, which would otherwise
    roll the gate back to the base bundle (or an older install) in silence."""
    high_water = models_high_water(data_dir)
    version = (state.current or {}).get("version") or manifest_version(directory)
    if high_water is None or version is None:
        return
    try:
        older = check_version(version) < check_version(high_water)
    except ValueError:
        return  # an unreadable version is the bundle loader's to refuse
    if older:
        what = "the base bundle" if state.current is None else f"installed bundle {version}"
        raise ModelUpdateError(
            f"model bundle roll-back refused: this gate ran model bundle {high_water}, but "
            f"would now start with {what} ({version}, {directory}) because "
            f"{models_root(data_dir) / STATE_FILE} is missing or names an older bundle (deleted "
            f"or replaced). Technician: copy the signed bundle {high_water} or newer "
            f"(`gerbang-provision models sign`) into {Path(data_dir) / 'incoming'} as "
            f"*{INCOMING_SUFFIX} and restart the service; to go back to an older bundle on "
            "purpose, send it to a running gate with force (the `models` command, \"force\": "
            "true), which is signed and lowers the mark")


def bundle_for_start(config: DeviceConfig) -> tuple[ModelBundle, Callable[[], None]]:
    """The verified model bundle the service starts with, and the callable to run once the
    service is ready (it confirms a pending bundle; otherwise does nothing).

    A pending bundle counts this start first (so a crash counts too), is rolled back when it
    already had ``MAX_PENDING_STARTS`` starts, or when it fails to load or run now. A bundle
    that is not pending is loaded as before: an altered one stops the gate
    (ModelBundleError), it is not silently replaced.
    """
    data_dir = config.gate.data_dir
    base_dir = base_bundle_dir(config)
    install_incoming(config)
    state = read_state(data_dir)
    if state.current is not None and state.pending is not None:
        starts = state.pending.get("starts", 0)
        if type(starts) is not int:  # unreadable count: treat the bundle as out of chances
            starts = MAX_PENDING_STARTS
        if starts >= MAX_PENDING_STARTS:
            state = rollback(data_dir, state, f"the service did not become ready with it in "
                             f"{starts} starts (crash, hang or refusal at start)", base_dir)
        else:
            state.pending = {**state.pending, "starts": starts + 1}
            write_state(data_dir, state)
            try:
                self_check(entry_dir(data_dir, state.current, base_dir),
                           threads=config.models.threads, runtime=config.models.runtime,
                           calibration_far=(config.match.target_far
                                            if config.match.threshold is None else None))
            except SelfCheckFailed as exc:
                state = rollback(data_dir, state, f"it failed to load at start: {exc}",
                                 base_dir)
    directory = entry_dir(data_dir, state.current, base_dir)
    _check_high_water(data_dir, state, directory)
    bundle = load_bundle(directory)
    if state.current is not None and state.pending is None:
        record_models_high_water(data_dir, state.current["version"])
    if state.current is not None:
        log.info("model bundle %s from %s%s", state.current["version"], directory,
                 " (pending: confirmed once the service is ready)" if state.pending else "")
    if state.current is None or state.pending is None:
        return bundle, lambda: None
    confirmed_dir = state.current["dir"]

    def confirm() -> None:
        now = read_state(data_dir)
        if now.current is not None and now.current["dir"] == confirmed_dir and now.pending:
            now.pending = None
            write_state(data_dir, now)
            record_models_high_water(data_dir, now.current["version"])
            log.info("model bundle %s confirmed: the service started with it",
                     now.current["version"])

    return bundle, confirm
