"""Signed rosters (Ed25519 + room-encrypted payload) and templates encrypted at rest.

Synthetic templates (random unit vectors) and made-up names: no face data needed.
"""

from __future__ import annotations

import base64
import json
import logging
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from device.decide.roster import Roster, RosterEntry, save_roster
from device.manage.keyfile import KeyFileError, read_secret_key, write_secret_key
from device.manage.roster_file import (
    INCONSISTENT,
    MAGIC,
    MALFORMED,
    MODEL_MISMATCH,
    OLD_VERSION,
    SIGNATURE_BYTES,
    TAMPERED,
    WRONG_CENTRE,
    WRONG_KEY,
    WRONG_ROOM,
    WRONG_SESSION,
    WRONG_TRANSPORT_KEY,
    RosterRefused,
    load_roster_public_key,
    open_signed_roster,
    verify_signed_roster,
)
from device.manage.template_store import (
    TemplateStoreError,
    install_signed_roster,
    load_templates,
    save_templates,
    store_path,
    stored_sessions,
    wipe,
)
from provisioning.signing import (
    SigningError,
    create_roster_keys,
    export_device_keys,
    load_roster_keys,
    sign_roster,
)

EMBEDDER = "ab" * 32
OTHER_EMBEDDER = "cd" * 32
NAMES = ["Siti Rahmawati Testname", "Budi Santoso Fakeperson", "Ayu Lestari Notreal"]


def make_roster(session="S1", room="R01", version=1, n=3, dim=128, seed=7) -> Roster:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    entries = tuple(RosterEntry(f"A-{i:04d}", NAMES[i % len(NAMES)] + (f" {i}" if i >= 3 else ""),
                                vectors[i]) for i in range(n))
    return Roster(session, room, version, entries, embedder_sha256=EMBEDDER)


@pytest.fixture(scope="module")
def centre(tmp_path_factory):
    return create_roster_keys(tmp_path_factory.mktemp("keys") / "c01", "c01")


@pytest.fixture(scope="module")
def other_centre(tmp_path_factory):
    return create_roster_keys(tmp_path_factory.mktemp("keys") / "c02", "c02")


@pytest.fixture
def gate(tmp_path, centre):
    """A gate of room R01 at centre c01: its exported keys and an empty data dir."""
    files = export_device_keys(centre, "R01", tmp_path / "bundle")
    return {"public_key": load_roster_public_key(files["public_key"]),
            "transport_key": read_secret_key(files["transport_key"]),
            "storage_key": read_secret_key(files["storage_key"]),
            "data_dir": tmp_path / "data", "files": files}


def expect(gate, **override):
    args = {"public_key": gate["public_key"], "transport_key": gate["transport_key"],
            "centre": "c01", "session": "S1", "room": "R01", "embedder_sha256": EMBEDDER}
    return {**args, **override}


def refused(blob, gate, **override) -> RosterRefused:
    with pytest.raises(RosterRefused) as info:
        verify_signed_roster(blob, **expect(gate, **override))
    return info.value


def flip(blob: bytes, index: int) -> bytes:
    out = bytearray(blob)
    out[index] ^= 0x01
    return bytes(out)


def header_span(blob: bytes) -> tuple[int, int]:
    start = len(MAGIC) + 4
    return start, start + int.from_bytes(blob[len(MAGIC):start], "big")


# --- signing and verification ----------------------------------------------------------------

def test_sign_then_verify_gives_back_the_roster(centre, gate):
    roster = make_roster()
    verified = verify_signed_roster(sign_roster(roster, centre), **expect(gate))
    assert verified.header.signer == centre.key_id
    assert (verified.header.count, verified.header.template_dim) == (3, 128)
    assert verified.header.embedder_sha256 == EMBEDDER
    got = verified.roster
    assert (got.session, got.room, got.version) == ("S1", "R01", 1)
    assert [e.applicant_id for e in got.entries] == [e.applicant_id for e in roster.entries]
    assert [e.name for e in got.entries] == [e.name for e in roster.entries]
    for a, b in zip(got.entries, roster.entries, strict=True):
        np.testing.assert_array_equal(a.template, b.template)


def test_signed_roster_holds_no_name_or_template_in_the_clear(centre):
    roster = make_roster()
    blob = sign_roster(roster, centre)
    for entry in roster.entries:
        assert entry.name.encode() not in blob
        assert entry.applicant_id.encode() not in blob  # ids are in the encrypted payload too
        raw = entry.template.astype("<f4").tobytes()
        assert raw[:16] not in blob
        assert base64.b64encode(raw)[:16] not in blob


@pytest.mark.parametrize("where", ["header", "payload", "signature"])
def test_one_flipped_byte_is_refused_as_tampered(centre, gate, where):
    blob = sign_roster(make_roster(), centre)
    start, end = header_span(blob)
    index = {"header": blob.index(b'"room":"R01"', start) + len('"room":"R0'),
             "payload": end + 40,
             "signature": len(blob) - SIGNATURE_BYTES + 5}[where]
    error = refused(flip(blob, index), gate)
    assert error.reason == TAMPERED
    assert "altered" in str(error)


def test_every_single_byte_change_anywhere_is_refused(centre, gate):
    blob = sign_roster(make_roster(n=2, dim=16), centre)
    reasons = set()
    for index in range(len(blob)):
        with pytest.raises(RosterRefused) as info:
            verify_signed_roster(flip(blob, index), **expect(gate))
        reasons.add(info.value.reason)
    # The magic gives "malformed", a changed length or byte "tampered", and a changed signer
    # id in the header "wrong_key" (it then claims another signer): never accepted.
    assert reasons <= {MALFORMED, TAMPERED, WRONG_KEY}
    assert TAMPERED in reasons


def test_truncated_or_plain_roster_is_refused(centre, gate):
    blob = sign_roster(make_roster(), centre)
    assert refused(blob[:-1], gate).reason == TAMPERED
    assert refused(blob[:30], gate).reason in (MALFORMED, TAMPERED)
    plain = json.dumps(make_roster().to_dict()).encode()
    error = refused(plain, gate)
    assert error.reason == MALFORMED and "roster-sign" in str(error)


def test_roster_signed_by_another_key_is_refused(other_centre, gate):
    # Another centre's key signing a roster for the same session and room.
    error = refused(sign_roster(make_roster(), replace(other_centre, centre="c01")), gate)
    assert error.reason == WRONG_KEY
    assert other_centre.key_id in str(error) and "another centre" in str(error)


@pytest.mark.parametrize(("field", "value", "reason"), [
    ("room", "R02", WRONG_ROOM), ("session", "S2", WRONG_SESSION),
    ("centre", "c02", WRONG_CENTRE)])
def test_roster_for_another_room_session_or_centre_is_refused(centre, gate, field, value,
                                                              reason):
    blob = sign_roster(make_roster(), centre)
    error = refused(blob, gate, **{field: value})
    assert error.reason == reason
    assert f"this gate is {field} '{value}'" in str(error)


def test_roster_for_another_room_sent_to_this_gate_is_refused(centre, gate):
    error = refused(sign_roster(make_roster(room="R02"), centre), gate)
    assert error.reason == WRONG_ROOM and "'R02'" in str(error)


def test_embedder_mismatch_is_refused(centre, gate):
    blob = sign_roster(make_roster(), centre)
    error = refused(blob, gate, embedder_sha256=OTHER_EMBEDDER)
    assert error.reason == MODEL_MISMATCH
    assert "embedder" in str(error) and EMBEDDER[:16] in str(error)


def test_older_version_is_refused(centre, gate):
    blob = sign_roster(make_roster(version=2), centre)
    assert verify_signed_roster(blob, **expect(gate), min_version=2).roster.version == 2
    assert refused(blob, gate, min_version=3).reason == OLD_VERSION


def test_wrong_room_transport_key_is_refused(centre, gate):
    blob = sign_roster(make_roster(), centre)
    error = refused(blob, gate, transport_key=centre.room_key("R02"))
    assert error.reason == WRONG_TRANSPORT_KEY and "roster-key export" in str(error)


def test_signing_needs_the_embedder_and_agreeing_facts(centre):
    with pytest.raises(SigningError, match="embedder"):
        sign_roster(replace(make_roster(), embedder_sha256=None), centre)
    with pytest.raises(SigningError, match="made with embedder"):
        sign_roster(make_roster(), centre, embedder_sha256=OTHER_EMBEDDER)
    # A roster signed with the embedder given explicitly (old roster without the record).
    blob = sign_roster(replace(make_roster(), embedder_sha256=None), centre, EMBEDDER)
    opened = open_signed_roster(blob, public_key=centre.public_key,
                                transport_key=centre.room_key("R01"))
    assert opened.roster.embedder_sha256 == EMBEDDER


def test_payload_contradicting_its_header_is_refused(centre, gate, monkeypatch):
    # A provisioning bug, not an attack (the signature holds): still never used.
    roster = make_roster()
    real_to_dict = Roster.to_dict
    monkeypatch.setattr(Roster, "to_dict", lambda self: {**real_to_dict(self), "version": 9})
    blob = sign_roster(roster, centre)
    monkeypatch.undo()
    assert refused(blob, gate).reason == INCONSISTENT


def test_roster_keys_reload_and_refuse_to_be_replaced(centre, tmp_path):
    again = load_roster_keys(centre.directory)
    assert (again.centre, again.key_id) == ("c01", centre.key_id)
    assert again.room_key("R01") == centre.room_key("R01") != centre.room_key("R02")
    with pytest.raises(SigningError, match="refusing to replace"):
        create_roster_keys(centre.directory, "c01")
    with pytest.raises(SigningError, match="roster-key create"):
        load_roster_keys(tmp_path / "nothing-here")


def test_export_refuses_a_folder_of_another_room(centre, gate):
    folder = gate["files"]["transport_key"].parent
    storage = gate["files"]["storage_key"].read_bytes()
    export_device_keys(centre, "R01", folder)  # again: harmless, storage key kept
    assert gate["files"]["storage_key"].read_bytes() == storage
    with pytest.raises(SigningError, match="another key"):
        export_device_keys(centre, "R02", folder)


# --- templates at rest -----------------------------------------------------------------------

def test_encrypted_store_round_trip_mode_and_no_plaintext(centre, gate, caplog):
    caplog.set_level(logging.DEBUG)
    roster = make_roster(n=5)
    blob = sign_roster(roster, centre)
    incoming = gate["data_dir"] / "incoming.roster.signed"  # as received, kept in the data dir
    incoming.parent.mkdir(parents=True)
    incoming.write_bytes(blob)
    installed = install_signed_roster(blob, data_dir=gate["data_dir"],
                                      storage_key=gate["storage_key"],
                                      **expect(gate))
    path = store_path(gate["data_dir"], "S1", "R01")
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert oct(path.parent.stat().st_mode & 0o777) == "0o700"
    loaded = load_templates(gate["data_dir"], "S1", "R01", gate["storage_key"])
    assert loaded.version == installed.version == 1
    assert loaded.embedder_sha256 == EMBEDDER
    assert [e.name for e in loaded.entries] == [e.name for e in roster.entries]
    np.testing.assert_array_equal(np.stack([e.template for e in loaded.entries]),
                                  np.stack([e.template for e in roster.entries]))

    # grep the whole data dir, and the logs, for template bytes and names
    files = [p for p in gate["data_dir"].rglob("*") if p.is_file()]
    assert path in files and incoming in files
    needles = []
    for entry in roster.entries:
        raw = entry.template.astype("<f4").tobytes()
        longest_word = max(entry.name.split(), key=len)  # 7+ bytes: no chance match
        needles += [raw, raw[:16], base64.b64encode(raw)[:24], entry.name.encode(),
                    longest_word.encode()]
    for file in files:
        data = file.read_bytes()
        for needle in needles:
            assert needle not in data, f"{needle[:12]!r} found in {file}"
    logged = caplog.text
    for entry in roster.entries:
        assert entry.name not in logged and max(entry.name.split(), key=len) not in logged
    assert "installed roster v1" in logged


def test_store_header_names_session_and_room_and_binds_them(gate):
    save_templates(gate["data_dir"], make_roster(), gate["storage_key"])
    path = store_path(gate["data_dir"], "S1", "R01")
    data = path.read_bytes()
    assert b'"session":"S1"' in data and b'"room":"R01"' in data
    # Moved into another session's folder: refused by the header check.
    other = store_path(gate["data_dir"], "S2", "R01")
    other.parent.mkdir(parents=True)
    other.write_bytes(data)
    with pytest.raises(TemplateStoreError, match="copied or renamed"):
        load_templates(gate["data_dir"], "S2", "R01", gate["storage_key"])
    # Header edited to match the new place: the associated data no longer matches.
    other.write_bytes(data.replace(b'"session":"S1"', b'"session":"S2"'))
    with pytest.raises(TemplateStoreError, match="altered or damaged"):
        load_templates(gate["data_dir"], "S2", "R01", gate["storage_key"])
    # One byte changed in the ciphertext.
    path.write_bytes(flip(data, len(data) - 20))
    with pytest.raises(TemplateStoreError, match="altered or damaged"):
        load_templates(gate["data_dir"], "S1", "R01", gate["storage_key"])


def test_wrong_storage_key_is_a_clear_error(gate, tmp_path):
    save_templates(gate["data_dir"], make_roster(), gate["storage_key"])
    other = write_secret_key(tmp_path / "other.key")
    with pytest.raises(TemplateStoreError, match=r"encrypted with storage key \w+, but this gate"):
        load_templates(gate["data_dir"], "S1", "R01", other)
    with pytest.raises(TemplateStoreError, match="no templates for session S1 room R02"):
        load_templates(gate["data_dir"], "S1", "R02", gate["storage_key"])


def test_key_files_are_checked(tmp_path):
    path = tmp_path / "storage.key"
    write_secret_key(path)
    assert len(read_secret_key(path)) == 32
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        write_secret_key(path)
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match="readable by group/others"):
        read_secret_key(path, "storage key")
    short = tmp_path / "short.key"
    short.write_bytes(b"0" * 31)
    short.chmod(0o600)
    with pytest.raises(KeyFileError, match="holds 31 bytes"):
        read_secret_key(short)
    with pytest.raises(KeyFileError, match="does not exist"):
        read_secret_key(tmp_path / "missing.key", "storage key")


def test_install_refuses_a_roll_back_and_accepts_a_newer_version(centre, gate):
    store = {"data_dir": gate["data_dir"], "storage_key": gate["storage_key"], **expect(gate)}
    install_signed_roster(sign_roster(make_roster(version=2), centre), **store)
    with pytest.raises(RosterRefused) as info:
        install_signed_roster(sign_roster(make_roster(version=1), centre), **store)
    assert info.value.reason == OLD_VERSION
    install_signed_roster(sign_roster(make_roster(version=3, n=4), centre), **store)
    roster = load_templates(gate["data_dir"], "S1", "R01", gate["storage_key"])
    assert (roster.version, len(roster.entries)) == (3, 4)
    # A refused roster changes nothing on disk.
    with pytest.raises(RosterRefused):
        install_signed_roster(flip(sign_roster(make_roster(version=4), centre), 60), **store)
    assert load_templates(gate["data_dir"], "S1", "R01", gate["storage_key"]).version == 3


def test_wipe_removes_the_session_and_only_it(gate):
    for session in ("S1", "S2"):
        save_templates(gate["data_dir"], make_roster(session=session), gate["storage_key"])
    leftover = store_path(gate["data_dir"], "S1", "R01").parent / ".R01.tpl.tmp123"
    leftover.write_bytes(b"interrupted write")
    assert stored_sessions(gate["data_dir"]) == ["S1", "S2"]
    assert wipe(gate["data_dir"], "S1") == 2
    assert not store_path(gate["data_dir"], "S1", "R01").parent.exists()
    assert stored_sessions(gate["data_dir"]) == ["S2"]
    assert load_templates(gate["data_dir"], "S2", "R01", gate["storage_key"]).session == "S2"
    assert wipe(gate["data_dir"], "S1") == 0  # nothing left: not an error
    with pytest.raises(TemplateStoreError, match="no templates"):
        load_templates(gate["data_dir"], "S1", "R01", gate["storage_key"])


def test_wipe_does_not_follow_symlinks(gate, tmp_path):
    outside = tmp_path / "not-ours.txt"
    outside.write_text("keep me")
    save_templates(gate["data_dir"], make_roster(), gate["storage_key"])
    (store_path(gate["data_dir"], "S1", "R01").parent / "link").symlink_to(outside)
    assert wipe(gate["data_dir"], "S1") == 2
    assert outside.read_text() == "keep me"


def test_session_and_room_must_be_plain_ids(gate):
    with pytest.raises(TemplateStoreError, match="not a valid id"):
        store_path(gate["data_dir"], "../etc", "R01")
    with pytest.raises(TemplateStoreError, match="not a valid id"):
        wipe(gate["data_dir"], "..")


# --- the technician's commands ---------------------------------------------------------------

def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "provisioning.cli", *args],
                          capture_output=True, text=True, timeout=60)


def test_cli_roster_keys_sign_and_gate_accepts(tmp_path):
    keys, device = tmp_path / "keys" / "c01", tmp_path / "bundles" / "c01-r01-a"
    made = run_cli("roster-key", "create", "--centre", "c01", "--keys", str(keys))
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["centre"] == "c01"
    assert "Back this folder up" in made.stderr
    again = run_cli("roster-key", "create", "--centre", "c01", "--keys", str(keys))
    assert again.returncode == 2 and "refusing to replace" in again.stderr
    exported = run_cli("roster-key", "export", "--keys", str(keys), "--room", "R01",
                       "--out", str(device))
    assert exported.returncode == 0, exported.stderr
    for name in ("roster-transport.key", "storage.key"):
        assert oct((device / name).stat().st_mode & 0o777) == "0o600"

    plain = tmp_path / "R01.roster.json"
    save_roster(make_roster(), plain)
    signed = run_cli("roster-sign", "--keys", str(keys), str(plain))
    assert signed.returncode == 0, signed.stderr
    out = tmp_path / "R01.roster.signed"
    assert json.loads(signed.stdout)["signed"][0]["signed"] == str(out)
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    verified = verify_signed_roster(
        out.read_bytes(), public_key=load_roster_public_key(device / "roster-signing.pub"),
        transport_key=read_secret_key(device / "roster-transport.key"), centre="c01",
        session="S1", room="R01", embedder_sha256=EMBEDDER)
    assert len(verified.roster.entries) == 3


def test_cli_cohort_re_signs_and_old_rosters_need_a_bundle(tmp_path):
    keys = tmp_path / "keys"
    assert run_cli("roster-key", "create", "--centre", "c01", "--keys", str(keys)).returncode == 0
    plain = tmp_path / "R01.roster.json"
    save_roster(replace(make_roster(), embedder_sha256=None), plain)
    unsigned = run_cli("roster-sign", "--keys", str(keys), str(plain))
    assert unsigned.returncode == 2 and "which embedder" in unsigned.stderr
    save_roster(make_roster(n=4), plain)
    cohort = run_cli("cohort", str(plain), "--keys", str(keys))
    assert cohort.returncode == 0, cohort.stderr
    blob = (tmp_path / "R01.roster.signed").read_bytes()
    keys_loaded = load_roster_keys(keys)
    opened = open_signed_roster(blob, public_key=keys_loaded.public_key,
                                transport_key=keys_loaded.room_key("R01"))
    assert opened.header.version == 2 and opened.roster.cohort is not None


def test_cli_help_reads_like_a_manual():
    for command in (["--help"], ["roster", "--help"], ["roster-sign", "--help"],
                    ["roster-key", "--help"], ["roster-key", "create", "--help"],
                    ["roster-key", "export", "--help"]):
        proc = run_cli(*command)
        assert proc.returncode == 0 and len(proc.stdout) > 300, command


def test_missing_key_dir_is_one_clear_line(tmp_path):
    proc = run_cli("roster-sign", "--keys", str(tmp_path / "nope"), str(tmp_path / "x.json"))
    assert proc.returncode == 2
    assert "not a roster key directory" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.faces
def test_cli_roster_with_keys_writes_a_signed_roster_the_gate_accepts(tmp_path, faces_root):
    from device.infer.bundle import load_bundle

    photos = tmp_path / "photos"
    for person in ("s1", "s2"):
        (photos / f"A-{person}").mkdir(parents=True)
        for photo in sorted((faces_root / "orl" / person).iterdir())[:2]:
            (photos / f"A-{person}" / photo.name).write_bytes(photo.read_bytes())
    keys, device = tmp_path / "keys", tmp_path / "device"
    assert run_cli("roster-key", "create", "--centre", "c01", "--keys", str(keys)).returncode == 0
    assert run_cli("roster-key", "export", "--keys", str(keys), "--room", "R01",
                   "--out", str(device)).returncode == 0
    out = tmp_path / "R01.roster.json"
    proc = subprocess.run([sys.executable, "-m", "provisioning.cli", "roster", "--photos-dir",
                           str(photos), "--session", "S1", "--room", "R01", "--out", str(out),
                           "--keys", str(keys)], capture_output=True, text=True, timeout=120)
    summary = json.loads(proc.stdout)
    assert summary["signed"] == str(tmp_path / "R01.roster.signed")
    embedder = load_bundle().hashes()["embedder"]
    assert json.loads(out.read_text())["embedder_sha256"] == embedder  # the working copy too
    verified = verify_signed_roster(
        (tmp_path / "R01.roster.signed").read_bytes(),
        public_key=load_roster_public_key(device / "roster-signing.pub"),
        transport_key=read_secret_key(device / "roster-transport.key"), centre="c01",
        session="S1", room="R01", embedder_sha256=embedder)
    assert verified.header.count == summary["enrolled"] >= 1
    assert verified.header.template_dim == 128


def test_cli_roster_from_the_session_csv_enrolls_the_rooms_applicants_with_names(tmp_path,
                                                                                faces_root):
    photos = tmp_path / "photos"
    for person in ("s1", "s2", "s3"):
        (photos / f"A-{person}").mkdir(parents=True)
        for photo in sorted((faces_root / "orl" / person).iterdir())[:2]:
            (photos / f"A-{person}" / photo.name).write_bytes(photo.read_bytes())
    csv = tmp_path / "sesi1.csv"
    csv.write_text("no_peserta;nama;ruang;kursi\nA-s1;Siti Rahayu;R01;01\n"
                   "A-s2;Budi Santoso;R02;01\nA-s9;Dewi Lestari;R01;02\n")
    out = tmp_path / "R01.roster.json"
    proc = subprocess.run([sys.executable, "-m", "provisioning.cli", "roster", "--photos-dir",
                           str(photos), "--csv", str(csv), "--session", "S1", "--room", "R01",
                           "--out", str(out)], capture_output=True, text=True, timeout=120)
    summary = json.loads(proc.stdout)
    # A-s1 is R01's and enrolled with the name; A-s2 belongs to R02, A-s3 to no room;
    # A-s9 is R01's but has no photos: reported, and the exit code says so.
    assert (summary["enrolled"], summary["failed"], proc.returncode) == (1, 1, 1)
    assert "A-s9" in proc.stderr and "no photo folder" in proc.stderr
    entries = json.loads(out.read_text())["entries"]
    assert [(e["applicant_id"], e["name"]) for e in entries] == [("A-s1", "Siti Rahayu")]
    bad = tmp_path / "bad.csv"
    bad.write_text("no_peserta,nama,ruang\nA-s1,,R01\n")
    proc = subprocess.run([sys.executable, "-m", "provisioning.cli", "roster", "--photos-dir",
                           str(photos), "--csv", str(bad), "--session", "S1", "--room", "R01",
                           "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "bad.csv:2: name: empty" in proc.stderr


# --- issue 14 (low): no roster roll-back after deleting or damaging the stored file ----------

def roster_source(tmp_path, gate):
    """The gate's real roster source (what the check-in runs), with its data folder."""
    from device.config import parse_device_config
    from device.infer.bundle import load_bundle
    from device.manage.roster_source import RosterSource

    files = gate["files"]
    config = parse_device_config({
        "gate": {"device_id": "c01-r01-a", "centre": "c01", "room": "R01", "session": "S1",
                 "data_dir": str(gate["data_dir"])},
        "capture": {"path": str(tmp_path)},
        "keys": {"roster_public_key": str(files["public_key"]),
                 "roster_transport_key": str(files["transport_key"]),
                 "storage_key": str(files["storage_key"])}})
    bundle = load_bundle()
    return RosterSource(config, bundle), bundle.hashes()["embedder"]


@pytest.mark.parametrize("damage", ["deleted", "corrupted"])
def test_an_older_roster_is_refused_after_the_stored_file_is_lost(centre, gate, tmp_path,
                                                                   damage):
    from device.uplink.commands import CommandError

    source, embedder = roster_source(tmp_path, gate)
    install = source.push_handler(lambda roster: None)

    def push(version: int) -> str:
        blob = sign_roster(replace(make_roster(version=version), embedder_sha256=embedder),
                           centre)
        return install({"roster_b64": base64.b64encode(blob).decode()})

    assert "roster v3 installed" in push(3)
    path = store_path(gate["data_dir"], "S1", "R01")
    if damage == "deleted":
        path.unlink()
    else:
        path.write_bytes(flip(path.read_bytes(), len(path.read_bytes()) - 10))
    with pytest.raises(CommandError, match=r"roster refused \(old_version\).*older than the "
                                           "version 3"):
        push(2)
    assert "roster v3 installed" in push(3)  # the same version again is fine
    assert "roster v4 installed" in push(4)


def test_a_stored_roster_older_than_the_mark_stops_the_start(centre, gate, tmp_path):
    """The template file replaced by an older (valid, encrypted) copy, e.g. from a backup."""
    source, embedder = roster_source(tmp_path, gate)
    source.install(sign_roster(replace(make_roster(version=2), embedder_sha256=embedder),
                               centre))
    path = store_path(gate["data_dir"], "S1", "R01")
    older_copy = path.read_bytes()
    source.install(sign_roster(replace(make_roster(version=5), embedder_sha256=embedder),
                               centre))
    assert source.load().version == 5
    path.write_bytes(older_copy)
    with pytest.raises(RosterRefused) as info:
        source.load()
    assert info.value.reason == OLD_VERSION
    assert "v2, but this gate already installed v5" in str(info.value)
