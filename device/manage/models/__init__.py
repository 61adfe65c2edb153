"""Signed model bundle updates on the gate: verify, unpack, self-check, switch, roll back.

Modules, in dependency order: ``archive`` (layout and verification) → ``state`` (which bundle
is current) → ``selfcheck`` → ``install`` (install, and the choice at each start) → ``push``
(the ``models`` command). Imports infer, uplink (outbox, commands) and gerbang; OpenCV and
TFLite only inside the self-check, so the uplink process that receives a bundle stays light.

A new model bundle (the ``.tflite`` files, ``manifest.json``, the liveness classifier, licences)
reaches a gate as one signed archive, made on the technician's laptop with ``gerbang-provision
models sign`` and signed with the centre's roster-signing key (the key every gate already trusts
through ``[keys] roster_public_key``). It arrives over MQTT (the ``models`` command, whole or in
resumable chunks) or as a file ``<data_dir>/incoming/*.models.signed`` picked up at start.

Archive layout (bytes)::

    b"gerbang-model-bundle/1\\n"      magic: format and version; also keeps these signatures
                                      apart from signed rosters (same key, other magic)
    header length                     4 bytes, big-endian
    header                            UTF-8 JSON, sorted keys: format, bundle_version, created,
                                      centre, signer (key id), files [{path, sha256, bytes}]
    file contents                     every file of the header's list, in that order, back to
                                      back (lengths from the header)
    signature                         64 bytes: Ed25519 over everything above

A gate refuses an archive with ``ModelUpdateRefused.reason`` one of: ``malformed`` (layout),
``tampered`` (the signature does not match; the message names the altered file, or the header),
``wrong_key`` (signed by another key), ``inconsistent`` (signed, but the header does not
describe the contents), ``hash_mismatch`` (signed, but file X's bytes are not its listed sha256),
``old_version`` (not newer than the installed bundle, unless forced), ``embedder_changed`` (the
new embedder could not compare the installed roster's templates, unless forced), ``no_space``,
``self_check_failed``.

On the gate (``<data_dir>/models/``)::

    <version>-<sha256[:12]>/    one unpacked bundle per install: the current one and the one
                                before it are kept, older ones deleted
    state.json                  which is current, which is previous, whether current is still
                                pending (written atomically: this file IS the switch)
    upload/<sha256>.part        a chunked upload in progress (resumable)

Install: verify → unpack into a staging folder → self-check it in a child process (a model that
crashes the TFLite runtime must not take the gate down) → rename → write ``state.json`` with the
new bundle current, the old one previous, and ``pending``. The running service keeps the models
it started with; the new bundle is used from the next start of the service. That start counts
itself in ``pending.starts`` before loading, self-checks the bundle in process, and confirms it
(clears ``pending``) once the service is ready. A bundle that fails to load at start is rolled
back at once; one that never reaches ready (crash, watchdog kill) is rolled back by the
``MAX_PENDING_STARTS``-th start. Rolling back makes the previous bundle current again.
"""

from __future__ import annotations

from device.manage.models.archive import (
    BUNDLE_PATH,
    CHUNK_BYTES,
    EMBEDDER_CHANGED,
    HASH_MISMATCH,
    HEADER_FORMAT,
    INCOMING_SUFFIX,
    INCONSISTENT,
    MAGIC,
    MALFORMED,
    MAX_ARCHIVE_BYTES,
    MAX_HEADER_BYTES,
    MAX_PENDING_STARTS,
    MODELS_DIR,
    NO_SPACE,
    OLD_VERSION,
    SELF_CHECK_FAILED,
    SIGNATURE_BYTES,
    SPACE_FACTOR,
    STATE_FILE,
    TAMPERED,
    UPLOAD_DIR,
    WRONG_KEY,
    BundleFile,
    ModelBundleHeader,
    ModelUpdateError,
    ModelUpdateRefused,
    VerifiedModelArchive,
    check_version,
    encode_header,
    is_bundle_path,
    signed_body,
    verify_model_archive,
)
from device.manage.models.install import (
    InstallResult,
    bundle_for_start,
    install_for_config,
    install_incoming,
    install_model_archive,
    rollback,
)
from device.manage.models.push import command_body, push_handler, push_model_bundle, receive_chunk
from device.manage.models.selfcheck import (
    SELF_CHECK_TIMEOUT_S,
    SelfCheckFailed,
    render_test_scene,
    self_check,
    self_check_isolated,
)
from device.manage.models.state import (
    InstallState,
    active_bundle_dir,
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

__all__ = [
    "BUNDLE_PATH",
    "CHUNK_BYTES",
    "EMBEDDER_CHANGED",
    "HASH_MISMATCH",
    "HEADER_FORMAT",
    "INCOMING_SUFFIX",
    "INCONSISTENT",
    "MAGIC",
    "MALFORMED",
    "MAX_ARCHIVE_BYTES",
    "MAX_HEADER_BYTES",
    "MAX_PENDING_STARTS",
    "MODELS_DIR",
    "NO_SPACE",
    "OLD_VERSION",
    "SELF_CHECK_FAILED",
    "SELF_CHECK_TIMEOUT_S",
    "SIGNATURE_BYTES",
    "SPACE_FACTOR",
    "STATE_FILE",
    "TAMPERED",
    "UPLOAD_DIR",
    "WRONG_KEY",
    "BundleFile",
    "InstallResult",
    "InstallState",
    "ModelBundleHeader",
    "ModelUpdateError",
    "ModelUpdateRefused",
    "SelfCheckFailed",
    "VerifiedModelArchive",
    "active_bundle_dir",
    "base_bundle_dir",
    "bundle_for_start",
    "check_version",
    "command_body",
    "describe_entry",
    "encode_header",
    "entry_dir",
    "install_for_config",
    "install_incoming",
    "install_model_archive",
    "is_bundle_path",
    "manifest_version",
    "models_high_water",
    "models_root",
    "now_iso",
    "push_handler",
    "push_model_bundle",
    "read_manifest",
    "read_state",
    "receive_chunk",
    "record_models_high_water",
    "render_test_scene",
    "rollback",
    "self_check",
    "self_check_isolated",
    "signed_body",
    "verify_model_archive",
    "write_state",
]
