"""Signed model bundle updates: signed on the technician's side, verified, unpacked beside the
current bundle, self-checked, switched, confirmed by the next start or rolled back; and pushed
to a running gate over a real Mosquitto with the ``models`` command.

The shipped bundle (device/infer/models) is only read: every test works on copies."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import shutil
import threading
import uuid

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from test_commands import CENTRE, DEVICE, wait_until

from device.config import parse_device_config
from device.decide.roster import Roster, RosterEntry
from device.infer.bundle import DEFAULT_BUNDLE_DIR, ModelBundleError, load_bundle
from device.manage.models import (
    CHUNK_BYTES,
    MAGIC,
    MAX_PENDING_STARTS,
    BundleFile,
    ModelBundleHeader,
    ModelUpdateRefused,
    bundle_for_start,
    command_body,
    encode_header,
    install_model_archive,
    models_root,
    push_handler,
    push_model_bundle,
    read_state,
    signed_body,
    verify_model_archive,
)
from device.processes.assembly import run_device
from device.uplink.commands import CommandHandler
from gerbang import wire
from provisioning.cli import main as provision_main
from provisioning.model_signing import sign_model_bundle
from provisioning.signing import create_roster_keys, export_device_keys, sign_roster


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return create_roster_keys(tmp_path_factory.mktemp("centre") / "roster-keys", CENTRE)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A copy of the shipped bundle, labelled version 1.0.0 whatever the shipped version is (the
    version arithmetic below stays fixed): the gates' base bundle in these tests."""
    target = tmp_path_factory.mktemp("base") / "models"
    shutil.copytree(DEFAULT_BUNDLE_DIR, target)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["bundle_version"] = "1.0.0"
    (target / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return target


@pytest.fixture(scope="module")
def signed(keys, base):
    """Signed archives of the base bundle by version (signed once per module)."""
    cache: dict[str, bytes] = {}

    def get(version):
        if version not in cache:
            cache[version] = sign_model_bundle(base, keys, version=version)
        return cache[version]

    return get


def install(blob, data, keys, base, **options):
    return install_model_archive(blob, data_dir=data, public_key=keys.public_key, base_dir=base,
                                 calibration_far=1e-3, **options)


def gate_config(tmp_path, keys, base, data, **sections):
    return parse_device_config(gate_doc(tmp_path, keys, base, data, **sections))


def as_toml(doc: dict) -> str:
    """A config document of tables of plain values as TOML (for the command-line tests)."""
    lines = []
    for table, values in doc.items():
        lines.append(f"[{table}]")
        for key, value in values.items():
            text = str(value).lower() if isinstance(value, bool) else (
                json.dumps(value) if isinstance(value, str) else repr(value))
            lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"


def gate_doc(tmp_path, keys, base, data, **sections):
    key_dir = tmp_path / "gate-keys"
    export_device_keys(keys, "R01", key_dir)
    frames = tmp_path / "frames"
    if not frames.exists():
        frames.mkdir()
        cv2.imwrite(str(frames / "black.png"), np.zeros((240, 320, 3), np.uint8))
    doc = {"gate": {"device_id": DEVICE, "centre": CENTRE, "room": "R01", "session": "S1",
                    "data_dir": str(data)},
           "capture": {"path": str(frames), "fps": 4.0, "loop": True},
           "models": {"threads": 1, "bundle_dir": str(base)}, "gpio": {"pin_factory": "mock"},
           "keys": {"roster_public_key": str(key_dir / "roster-signing.pub"),
                    "roster_transport_key": str(key_dir / "roster-transport.key"),
                    "storage_key": str(key_dir / "storage.key")}}
    for name, values in sections.items():
        doc[name] = {**doc.get(name, {}), **values}
    return doc


def broken_copy(base, tmp_path, role, data):
    """A copy of the bundle whose ``role`` model file is ``data`` and whose manifest pins it:
    signed, every hash right, and still broken."""
    target = tmp_path / f"broken-{role}"
    shutil.copytree(base, target)
    manifest = json.loads((target / "manifest.json").read_text())
    entry = manifest["models"][role]
    (target / entry["file"]).write_bytes(data)
    entry["sha256"], entry["bytes"] = hashlib.sha256(data).hexdigest(), len(data)
    (target / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return target


def file_offsets(blob):
    """Where each file's bytes sit inside a signed archive: {path: (start, end)}."""
    start = len(MAGIC) + 4
    header_len = int.from_bytes(blob[len(MAGIC):start], "big")
    header = json.loads(blob[start:start + header_len])
    offsets, at = {}, start + header_len
    for f in header["files"]:
        offsets[f["path"]] = (at, at + f["bytes"])
        at += f["bytes"]
    return start, start + header_len, offsets


# --------------------------------------------------------------------------------------------
# sign → verify → install → switch


def test_signed_bundle_installs_beside_the_current_one_and_keeps_the_previous(
        tmp_path, keys, base, signed):
    data = tmp_path / "gate"
    config = gate_config(tmp_path, keys, base, data)
    first = install(signed("1.0.1"), data, keys, base)
    state = read_state(data)
    assert state.current["version"] == "1.0.1" and state.previous is None  # None: the base
    assert state.pending == {"starts": 0, "since": state.pending["since"]}
    assert first.directory == models_root(data) / state.current["dir"]
    assert load_bundle(first.directory).manifest["bundle_version"] == "1.0.1"
    assert "previous 1.0.0" in first.detail and "until the service restarts" in first.detail

    bundle, confirm = bundle_for_start(config)  # the next start uses it ...
    assert bundle.directory == first.directory and read_state(data).pending["starts"] == 1
    confirm()  # ... and confirms it once ready
    assert read_state(data).pending is None

    again = install(signed("1.0.1"), data, keys, base)  # a redelivered command changes nothing
    assert "already installed" in again.detail
    second = install(signed("1.0.2"), data, keys, base)
    state = read_state(data)
    assert (state.current["version"], state.previous["version"]) == ("1.0.2", "1.0.1")
    assert first.directory.is_dir() and second.directory.is_dir()
    third = install(signed("1.0.3"), data, keys, base)
    state = read_state(data)
    # Pending 1.0.3 never ran, 1.0.2 neither: the one to fall back to is still 1.0.1.
    assert (state.current["version"], state.previous["version"]) == ("1.0.3", "1.0.1")
    assert not second.directory.exists() and first.directory.is_dir()
    assert third.directory.is_dir()
    assert sorted(p.name for p in models_root(data).iterdir()) == sorted(
        [first.directory.name, third.directory.name, "state.json"])


def test_models_sign_command_checks_then_signs(tmp_path, keys, base, capsys):
    out = tmp_path / "models-1.2.0.models.signed"
    code = provision_main(["models", "sign", "--keys", str(keys.directory), "--bundle", str(base),
                           "--out", str(out), "--version", "1.2.0", "--threads", "1"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["bundle_version"] == "1.2.0" and printed["bytes"] == out.stat().st_size
    assert "models load and run" in printed["self_check"]
    verified = verify_model_archive(out.read_bytes(), keys.public_key)
    assert json.loads(verified.contents["manifest.json"])["bundle_version"] == "1.2.0"
    assert json.loads((base / "manifest.json").read_text())["bundle_version"] == "1.0.0"

    damaged = tmp_path / "damaged"
    shutil.copytree(base, damaged)
    (damaged / "yunet_320.tflite").write_bytes(b"not a model")
    code = provision_main(["models", "sign", "--keys", str(keys.directory), "--bundle",
                           str(damaged), "--out", str(tmp_path / "x.models.signed")])
    assert code == 2 and not (tmp_path / "x.models.signed").exists()
    assert "yunet_320.tflite" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# refusals: tampered, wrong key, old version, broken after signing


def test_every_flipped_byte_is_refused_naming_the_altered_part(tmp_path, keys):
    """Every byte of a (small) signed archive flipped in turn: each is refused, and the refusal
    names the file, the header or the signature it hit."""
    folder = tmp_path / "tiny"
    (folder / "LICENSES").mkdir(parents=True)
    files = {"det.bin": b"D" * 40, "emb.bin": b"E" * 50, "LICENSES/MIT.txt": b"licence"}
    for name, content in files.items():
        (folder / name).write_bytes(content)
    manifest = {"bundle_version": "2.0.0", "models": {
        role: {"file": name, "sha256": hashlib.sha256(files[name]).hexdigest()}
        for role, name in (("detector", "det.bin"), ("embedder", "emb.bin"))}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    blob = sign_model_bundle(folder, keys)
    assert verify_model_archive(blob, keys.public_key).header.bundle_version == "2.0.0"
    header_start, header_end, offsets = file_offsets(blob)
    for i in range(len(blob)):
        altered = bytearray(blob)
        altered[i] ^= 0x01
        with pytest.raises(ModelUpdateRefused) as refused:
            verify_model_archive(bytes(altered), keys.public_key)
        reason, text = refused.value.reason, str(refused.value)
        if i < len(MAGIC):
            assert reason == "malformed", (i, text)
        elif i < header_start:
            assert reason == "tampered" and "header" in text and "length" in text, (i, text)
        elif i < header_end:
            assert reason in ("tampered", "wrong_key") and "header" in text, (i, text)
        elif i >= len(blob) - 64:
            assert reason == "tampered" and "signature" in text, (i, text)
        else:
            (name,) = [p for p, (a, b) in offsets.items() if a <= i < b]
            assert reason == "tampered" and f"file {name}" in text, (i, text)


def test_tampered_real_bundle_is_refused_naming_the_file_and_nothing_changes(
        tmp_path, keys, base, signed):
    data = tmp_path / "gate"
    blob = signed("1.0.1")
    header_start, _, offsets = file_offsets(blob)
    start, end = offsets["sface_dr.tflite"]
    altered = bytearray(blob)
    altered[(start + end) // 2] ^= 0x01
    with pytest.raises(ModelUpdateRefused, match=r"\(tampered\).*file sface_dr\.tflite"):
        install(bytes(altered), data, keys, base)
    altered = bytearray(blob)
    altered[blob.index(b'"created"', header_start) + 12] ^= 0x01  # a digit of the date
    with pytest.raises(ModelUpdateRefused, match=r"\(tampered\).*header"):
        install(bytes(altered), data, keys, base)
    assert not models_root(data).exists()  # nothing written for a refused bundle


def test_bundle_signed_by_another_key_or_a_roster_is_refused(tmp_path, keys, base):
    other = create_roster_keys(tmp_path / "other-centre", "c2")
    folder = tmp_path / "models"
    shutil.copytree(base, folder)
    with pytest.raises(ModelUpdateRefused, match=r"\(wrong_key\).*trusts only key"):
        verify_model_archive(sign_model_bundle(folder, other, version="9.0.0"),
                             keys.public_key)
    # Same key, other kind of document: a signed roster is never read as a model bundle.
    roster = sign_roster(Roster("S1", "R01", 1, (), embedder_sha256="0" * 64), keys)
    with pytest.raises(ModelUpdateRefused, match=r"\(malformed\)"):
        verify_model_archive(roster, keys.public_key)


def test_signed_archive_whose_header_lies_is_refused_naming_the_file(tmp_path, keys, base):
    """What a faulty signing tool could make: signed, yet not what the header says."""

    def signed_archive(version, files):
        header = ModelBundleHeader(version, "2026-11-28T00:00:00Z", CENTRE, keys.key_id,
                                   tuple(BundleFile(p, sha, len(data))
                                         for p, (data, sha) in files.items()))
        body = signed_body(encode_header(header), [data for data, _ in files.values()])
        return body + keys.signing_key.sign(body)

    manifest = b'{"bundle_version": "1.0.0", "models": {}}'
    right = hashlib.sha256(manifest).hexdigest()
    with pytest.raises(ModelUpdateRefused, match=r"\(hash_mismatch\): hash mismatch of file "
                                                 r"manifest\.json"):
        verify_model_archive(signed_archive("7.0.0", {"manifest.json": (manifest, "0" * 64)}),
                             keys.public_key)
    with pytest.raises(ModelUpdateRefused, match=r"\(inconsistent\).*manifest.json says "
                                                 r"version '1.0.0'"):
        install(signed_archive("7.0.0", {"manifest.json": (manifest, right)}),
                tmp_path / "gate", keys, base)


def test_older_or_same_version_is_refused_unless_forced(tmp_path, keys, base, signed):
    data = tmp_path / "gate"
    for version in ("1.0.0", "0.9.9"):  # the base bundle is 1.0.0
        with pytest.raises(ModelUpdateRefused, match=r"\(old_version\).*not newer"):
            install(signed(version), data, keys, base)
    forced = install(signed("0.9.9"), data, keys, base, force=True)  # a deliberate downgrade
    assert read_state(data).current["version"] == "0.9.9" and forced.directory.is_dir()


def test_signed_but_broken_bundle_fails_its_self_check_and_the_gate_keeps_its_models(
        tmp_path, keys, base):
    data = tmp_path / "gate"
    detector = (base / "yunet_320.tflite").read_bytes()
    garbage = broken_copy(base, tmp_path, "detector", detector[: len(detector) // 3])
    with pytest.raises(ModelUpdateRefused) as refused:
        install(sign_model_bundle(garbage, keys, version="1.1.0"), data, keys, base)
    assert refused.value.reason == "self_check_failed"
    assert "detector model yunet_320.tflite does not load" in str(refused.value)
    assert "rolled back: the gate keeps 1.0.0" in str(refused.value)

    embedder = (base / "sface_dr.tflite").read_bytes()
    truncated = sign_model_bundle(broken_copy(base, tmp_path, "embedder",
                                              embedder[: len(embedder) // 2]), keys,
                                  version="1.1.0")
    with pytest.raises(ModelUpdateRefused, match=r"\(embedder_changed\).*Re-enroll"):
        install(truncated, data, keys, base)
    with pytest.raises(ModelUpdateRefused, match=r"\(self_check_failed\).*embedder model "
                                                 r"sface_dr\.tflite does not load"):
        install(truncated, data, keys, base, force=True)
    root = models_root(data)
    assert read_state(data).current is None  # still the base bundle
    assert not [p for p in root.iterdir() if p.is_dir()]  # no staging left behind


# --------------------------------------------------------------------------------------------
# pending: confirmed by a start, or rolled back


def test_a_pending_bundle_that_never_starts_is_rolled_back(tmp_path, keys, base, signed,
                                                           caplog):
    data = tmp_path / "gate"
    config = gate_config(tmp_path, keys, base, data)
    installed = install(signed("1.0.1"), data, keys, base)
    for attempt in range(1, MAX_PENDING_STARTS + 1):  # the service crashes before "ready"
        bundle, _confirm = bundle_for_start(config)
        assert bundle.directory == installed.directory
        assert read_state(data).pending["starts"] == attempt
    caplog.set_level(logging.ERROR)
    bundle, confirm = bundle_for_start(config)  # the next start gives up on it
    assert bundle.directory == base
    state = read_state(data)
    assert state.current is None and state.pending is None
    assert state.rolled_back["version"] == "1.0.1"
    assert f"in {MAX_PENDING_STARTS} starts" in state.rolled_back["reason"]
    assert not installed.directory.exists()
    assert "rolled back" in caplog.text
    confirm()  # nothing pending: does nothing
    assert read_state(data).current is None


def test_a_pending_bundle_that_fails_to_load_at_start_is_rolled_back_at_once(
        tmp_path, keys, base, signed):
    data = tmp_path / "gate"
    config = gate_config(tmp_path, keys, base, data)
    good = install(signed("1.0.1"), data, keys, base)
    bundle_for_start(config)[1]()  # started and confirmed: 1.0.1 is now the known-good one
    pending = install(signed("1.0.2"), data, keys, base)
    model = pending.directory / "yunet_320.tflite"  # damaged on the SD card after install
    model.write_bytes(model.read_bytes()[:-100])
    bundle, _ = bundle_for_start(config)
    assert bundle.directory == good.directory  # back to 1.0.1, in the same start
    state = read_state(data)
    assert state.current["version"] == "1.0.1" and state.pending is None
    assert "failed to load at start" in state.rolled_back["reason"]
    assert "yunet_320.tflite" in state.rolled_back["reason"]
    # A confirmed bundle that is damaged is not silently replaced: the gate refuses to start.
    model = good.directory / "sface_dr.tflite"
    model.write_bytes(model.read_bytes()[:-100])
    with pytest.raises(ModelBundleError, match=r"sface_dr\.tflite"):
        bundle_for_start(config)


def test_a_bundle_copied_into_incoming_is_installed_at_start(tmp_path, keys, base, signed):
    data = tmp_path / "gate"
    config = gate_config(tmp_path, keys, base, data)
    (data / "incoming").mkdir(parents=True)
    waiting = data / "incoming" / "models-1.0.4.models.signed"
    waiting.write_bytes(signed("1.0.4"))
    bundle, confirm = bundle_for_start(config)
    assert bundle.manifest["bundle_version"] == "1.0.4" and not waiting.exists()
    confirm()
    assert read_state(data).pending is None


# --------------------------------------------------------------------------------------------
# the models command


def test_models_command_refusals_need_no_gate(tmp_path, keys, base):
    handler = CommandHandler("S1", tmp_path, lambda: None, lambda kind, detail: None)
    refused = handler.handle("models", b'{"bundle_b64": "AAAA"}')
    assert not refused.ok and "takes no pushed model bundles" in refused.detail
    no_keys = parse_device_config({
        "gate": {"device_id": DEVICE, "centre": CENTRE, "room": "R01", "session": "S1",
                 "data_dir": str(tmp_path / "gate")}, "capture": {"path": str(tmp_path)}})
    handler.install_models = push_handler(no_keys)
    assert "no [keys] roster_public_key" in handler.handle("models", b"{}").detail
    handler.install_models = push_handler(gate_config(tmp_path, keys, base, tmp_path / "g2"))
    for body, field in (({}, "bundle_b64: required"), ({"bundle_b64": "%%"}, "not valid base64"),
                        ({"force": "yes", "bundle_b64": ""}, "force:"),
                        ({"chunk_b64": "", "sha256": "x"}, "sha256:"),
                        ({"chunk_b64": "", "sha256": "a" * 64, "size": 10 ** 9}, "size:")):
        result = handler.handle("models", json.dumps(body).encode())
        assert not result.ok and field in result.detail, (body, result)


@pytest.fixture
def signed_gate(tmp_path, mosquitto, keys, base):
    """A gate on signed rosters running as a service, and a way to send it commands."""
    data = tmp_path / "gate"
    (data / "incoming").mkdir(parents=True)
    embedder = load_bundle(base).hashes()["embedder"]
    roster = Roster("S1", "R01", 1, (RosterEntry("A1", "", np.eye(128, dtype=np.float32)[0]),),
                    embedder_sha256=embedder)
    (data / "incoming" / "R01.roster.signed").write_bytes(sign_roster(roster, keys))
    config = gate_config(tmp_path, keys, base, data, broker={"port": mosquitto.port},
                         liveness={"enabled": True, "challenge": False})
    acks: dict[str, dict] = {}
    births: list[dict] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)

    def on_message(c, u, msg):
        body = json.loads(msg.payload)
        if msg.topic.endswith("cmd_ack"):
            acks[body["command_id"]] = body
        elif body.get("state") == "online":
            births.append(body)

    client.on_message = on_message
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    client.subscribe([(wire.device_topic(CENTRE, DEVICE, "cmd_ack"), 1),
                      (wire.device_topic(CENTRE, DEVICE, "status"), 1)])
    running: list[tuple[threading.Event, threading.Thread]] = []

    def start():
        stop = threading.Event()
        thread = threading.Thread(target=run_device, args=(config, stop), daemon=True)
        before = len(births)
        thread.start()
        running.append((stop, thread))
        wait_until(lambda: len(births) > before, 60, "the gate's birth message")

    def stop_gate():
        stop, thread = running.pop()
        stop.set()
        thread.join(timeout=30)
        assert not thread.is_alive()

    def send(body):
        command_id = uuid.uuid4().hex
        payload = json.dumps({**body, "command_id": command_id}).encode()
        client.publish(wire.device_topic(CENTRE, DEVICE, "cmd/models"), payload,
                       qos=1).wait_for_publish(30)
        wait_until(lambda: command_id in acks, 60, "the models command's ack")
        return acks[command_id]

    start()
    yield send, start, stop_gate, data, births
    while running:
        stop_gate()
    client.loop_stop()
    client.disconnect()


def test_models_pushed_over_mqtt_in_resumable_chunks_are_used_after_a_restart(
        signed_gate, signed, base):
    send, start, stop_gate, data, births = signed_gate
    blob = signed("1.0.1")
    # Whole, in one message (15.6 MB of base64), with one byte of the embedder flipped.
    _, _, offsets = file_offsets(blob)
    altered = bytearray(blob)
    altered[sum(offsets["sface_dr.tflite"]) // 2] ^= 0x01
    refused = send({"bundle_b64": base64.b64encode(bytes(altered)).decode()})
    assert not refused["ok"]
    assert "(tampered)" in refused["detail"] and "sface_dr.tflite" in refused["detail"]

    old = send({"bundle_b64": base64.b64encode(signed("1.0.0")).decode()})
    assert not old["ok"] and "(old_version)" in old["detail"]

    # In chunks, acknowledged one by one; the gate says where to continue.
    first = send(command_body(blob, 0))
    assert first["ok"] and f"next offset {CHUNK_BYTES}" in first["detail"]
    resent = send(command_body(blob, 0))  # a lost ack makes the sender repeat itself
    assert resent["ok"] and "already have" in resent["detail"]
    ahead = send(command_body(blob, 2 * CHUNK_BYTES))  # a sender that lost track
    assert not ahead["ok"] and f"next offset {CHUNK_BYTES}" in ahead["detail"]
    acks = []
    final = push_model_bundle(lambda body: acks.append(send(body)) or acks[-1], blob,
                              start_offset=CHUNK_BYTES)
    assert final["ok"], final
    assert "model bundle 1.0.1 installed" in final["detail"]
    assert "until the service restarts" in final["detail"]
    assert len(acks) == -(-len(blob) // CHUNK_BYTES) - 1  # one ack per remaining chunk
    assert read_state(data).pending["starts"] == 0
    assert not list((models_root(data) / "upload").iterdir())
    again = send(command_body(blob, len(blob) - len(blob) % CHUNK_BYTES))
    assert again["ok"] and "already installed" in again["detail"]

    stop_gate()  # the service restarts with the new bundle and confirms it once ready
    start()
    wait_until(lambda: read_state(data).pending is None, 30, "the new bundle confirmed")
    assert read_state(data).current["version"] == "1.0.1"
    assert births[-1]["models"] == load_bundle(base).hashes()  # same models, newer bundle


# --------------------------------------------------------------------------------------------
# issue 14 (low): no model roll-back by deleting state.json


def test_deleting_the_install_state_does_not_roll_the_models_back(tmp_path, keys, base, signed,
                                                                 capfd):
    """1.0.1 ran (confirmed); state.json is deleted: the gate would start with the base 1.0.0.
    It refuses instead (exit 2 from ``gerbang-device run``), saying what happened and what the
    technician does; copying the signed bundle into incoming/ brings it back."""
    from device.cli import main

    data = tmp_path / "gate"
    config = gate_config(tmp_path, keys, base, data)
    install(signed("1.0.1"), data, keys, base)
    bundle, confirm = bundle_for_start(config)
    confirm()
    (models_root(data) / "state.json").unlink()
    with pytest.raises(ModelBundleError) as refused:
        bundle_for_start(config)
    message = str(refused.value)
    assert "roll-back refused" in message and "ran model bundle 1.0.1" in message
    assert "base bundle (1.0.0" in message and "incoming" in message
    # The command line: one clear line, exit 2 (the supervisor's "refused to start").
    toml = tmp_path / "device.toml"
    toml.write_text(as_toml(gate_doc(tmp_path, keys, base, data)))
    capfd.readouterr()
    assert main(["run", "--single-process", "--config", str(toml)]) == 2
    assert "model bundle roll-back refused" in capfd.readouterr().err
    # What the message says to do: the signed bundle (same or newer) into incoming/, restart.
    (data / "incoming").mkdir(exist_ok=True)
    (data / "incoming" / "again.models.signed").write_bytes(signed("1.0.1"))
    bundle, confirm = bundle_for_start(config)
    assert bundle.manifest["bundle_version"] == "1.0.1"


def test_a_signed_forced_downgrade_lowers_the_mark(tmp_path, keys, base, signed):
    data = tmp_path / "gate"
    config = gate_config(tmp_path, keys, base, data)
    install(signed("1.0.2"), data, keys, base)
    bundle_for_start(config)[1]()
    install(signed("1.0.1"), data, keys, base, force=True)  # deliberate, signed
    bundle, confirm = bundle_for_start(config)
    assert bundle.manifest["bundle_version"] == "1.0.1"
    confirm()
    (models_root(data) / "state.json").unlink()  # the base 1.0.0 is still older than 1.0.1
    with pytest.raises(ModelBundleError, match=r"ran model bundle 1\.0\.1"):
        bundle_for_start(config)
