"""Thresholds carried in the signed roster (issue 17): strict parsing, covered by the signature,
used by the gate in preference to the model bundle's, never taken from a plain roster."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from gpiozero import Device
from gpiozero.pins.mock import MockFactory

from device.capture import Frame
from device.capture.replay import read_image
from device.config import parse_device_config
from device.decide.calibration import CalibrationError, RoomGuard, calibration_from_dict
from device.decide.checkin import CheckinLoop
from device.decide.roster import Roster, RosterEntry, RosterError, roster_from_dict, save_roster
from device.gate.door import DoorSignal
from device.infer.bundle import calibrated_threshold, load_bundle
from device.manage.keyfile import read_secret_key
from device.manage.roster_file import (
    TAMPERED,
    RosterRefused,
    load_roster_public_key,
    payload_aad,
    verify_signed_roster,
)
from device.manage.signed_layout import split_signed
from device.processes.assembly import choose_threshold, load_judge
from device.uplink.outbox import Outbox
from provisioning.signing import create_roster_keys, export_device_keys, sign_roster

EMBEDDER = "ab" * 32


def block(**over):
    data = {"source": "roster:CASN-2026 centre c01", "created": "2026-12-04T10:00:00Z",
            "embedder_sha256": EMBEDDER, "people": 300, "impostor_pairs": 800000,
            "genuine_pairs": 900,
            "thresholds": {"cosine": {"1e-3": 0.52, "1e-4": 0.61},
                           "tnorm": {"1e-3": 3.4, "1e-4": 4.2}},
            "threshold_upper_ci": {"cosine": {"1e-3": 0.53, "1e-4": 0.64},
                                   "tnorm": {"1e-3": 3.5, "1e-4": 4.5}},
            "expected_tar": {"cosine": {"1e-3": 0.95, "1e-4": 0.91},
                             "tnorm": {"1e-3": 0.96, "1e-4": 0.93}}}
    data.update(over)
    return data


def roster_with(calibration=None, templates=None, embedder=EMBEDDER, version=1):
    rng = np.random.default_rng(3)
    if templates is None:
        templates = rng.standard_normal((3, 128)).astype(np.float32)
        templates /= np.linalg.norm(templates, axis=1, keepdims=True)
    entries = tuple(RosterEntry(f"A{i}", "", t) for i, t in enumerate(templates))
    parsed = None if calibration is None else calibration_from_dict(calibration)
    return Roster("S1", "R01", version, entries, embedder_sha256=embedder, calibration=parsed)


def test_calibration_round_trips_through_the_roster_payload():
    roster = roster_with(block(room_guard={"cosine": 0.7, "reason": "heavy tail"}))
    again = roster_from_dict(json.loads(json.dumps(roster.to_dict())))
    assert again.calibration == roster.calibration
    assert again.calibration.threshold("cosine", 1e-4) == 0.61
    assert again.calibration.guarded("cosine", 1e-4)[0] == 0.7  # the stricter of the two
    assert again.calibration.guarded("tnorm", 1e-4)[0] == 4.2  # no tnorm guard


@pytest.mark.parametrize("change, field", [
    ({"source": ""}, "calibration.source"),
    ({"created": "yesterday"}, "calibration.created"),
    ({"people": 1}, "calibration.people"),
    ({"impostor_pairs": "many"}, "calibration.impostor_pairs"),
    ({"thresholds": {"cosine": {"1e-5": 0.6}}}, "calibration.thresholds.cosine.1e-5"),
    ({"thresholds": {"euclid": {"1e-3": 0.6}}}, "calibration.thresholds.euclid"),
    ({"thresholds": {"cosine": {"1e-3": 1.5}}}, "calibration.thresholds.cosine.1e-3"),
    ({"thresholds": {"cosine": {"1e-3": float("nan")}}}, "calibration.thresholds.cosine.1e-3"),
    ({"expected_tar": {"cosine": {"1e-3": 0.9}}}, "calibration.expected_tar"),
    ({"room_guard": {"cosine": 0.7}}, "calibration.room_guard.reason"),
    ({"surprise": 1}, "calibration.surprise"),
])
def test_a_bad_calibration_is_refused_naming_the_field(change, field):
    with pytest.raises(RosterError, match=field.replace(".", r"\.")):
        roster_from_dict({**roster_with().to_dict(), "calibration": block(**change)})


def test_a_calibration_of_another_embedder_is_refused():
    with pytest.raises(RosterError, match=r"calibration\.embedder_sha256.*calibrate again"):
        roster_from_dict({**roster_with().to_dict(),
                          "calibration": block(embedder_sha256="cd" * 32)})
    with pytest.raises(CalibrationError):
        calibration_from_dict(block(), embedder_sha256="cd" * 32)


# --- signed: the signature covers the thresholds ---------------------------------------------

@pytest.fixture(scope="module")
def centre(tmp_path_factory):
    return create_roster_keys(tmp_path_factory.mktemp("keys") / "c01", "c01")


@pytest.fixture
def gate_keys(tmp_path, centre):
    files = export_device_keys(centre, "R01", tmp_path / "bundle")
    return files, {"public_key": load_roster_public_key(files["public_key"]),
                   "transport_key": read_secret_key(files["transport_key"]),
                   "centre": "c01", "session": "S1", "room": "R01"}


def test_a_signed_roster_carries_its_calibration(centre, gate_keys):
    _, expect = gate_keys
    blob = sign_roster(roster_with(block()), centre)
    verified = verify_signed_roster(blob, embedder_sha256=EMBEDDER, **expect)
    assert verified.roster.calibration.thresholds["cosine"]["1e-4"] == 0.61


def test_changed_thresholds_in_a_signed_roster_are_refused(centre, gate_keys):
    """Re-encrypting an edited payload with the room key (which a gate holds) is not enough:
    the signature covers the ciphertext, so the gate refuses it as tampered."""
    _, expect = gate_keys
    blob = sign_roster(roster_with(block()), centre)
    body, header_bytes, payload, signature = split_signed(blob, blob[:24])
    header = json.loads(header_bytes)
    aes = AESGCM(centre.room_key("R01"))
    nonce = bytes.fromhex(header["nonce"])
    plain = json.loads(aes.decrypt(nonce, payload, payload_aad(header_bytes)))
    plain["calibration"]["thresholds"]["cosine"]["1e-4"] = 0.30  # looser: admits strangers
    forged = aes.encrypt(nonce, json.dumps(plain).encode(), payload_aad(header_bytes))
    blob2 = body[: len(body) - len(payload)] + forged + signature
    with pytest.raises(RosterRefused) as info:
        verify_signed_roster(blob2, embedder_sha256=EMBEDDER, **expect)
    assert info.value.reason == TAMPERED
    where = len(body) - len(payload) + len(payload) // 2  # one byte of the ciphertext
    flipped = blob[:where] + bytes([blob[where] ^ 1]) + blob[where + 1:]
    with pytest.raises(RosterRefused) as info:
        verify_signed_roster(flipped, embedder_sha256=EMBEDDER, **expect)
    assert info.value.reason == TAMPERED


# --- the gate uses it ------------------------------------------------------------------------

def gate_config(tmp_path, files=None, **match):
    section = {"gate": {"device_id": "c01-r01-a", "centre": "c01", "room": "R01",
                        "session": "S1", "data_dir": str(tmp_path / "data")},
               "capture": {"path": str(tmp_path)}, "models": {"threads": 1},
               "gpio": {"pin_factory": "mock"}, "match": match}
    if files:
        section["keys"] = {"roster_public_key": str(files["public_key"]),
                           "roster_transport_key": str(files["transport_key"]),
                           "storage_key": str(files["storage_key"])}
    return parse_device_config(section)


def test_threshold_order_override_then_roster_then_bundle(tmp_path):
    bundle = load_bundle()
    embedder = bundle.hashes()["embedder"]
    plain = roster_with(embedder=embedder)
    calibrated = roster_with(block(embedder_sha256=embedder), embedder=embedder)
    config = gate_config(tmp_path, target_far=1e-4)
    shipped = calibrated_threshold(bundle, "cosine", 1e-4)
    assert choose_threshold(config, bundle, plain).threshold == shipped
    assert choose_threshold(config, bundle, plain).source.startswith("model bundle (celeba")
    choice = choose_threshold(config, bundle, calibrated)
    assert (choice.threshold, choice.source, choice.far) == (
        0.61, "roster:CASN-2026 centre c01", 1e-4)
    assert choose_threshold(gate_config(tmp_path, target_far=1e-3), bundle,
                            calibrated).threshold == 0.52
    guarded = replace(calibrated, calibration=calibrated.calibration.with_guard(
        RoomGuard(0.66, None, "room R01: 4 pairs above 0.61, 1 allowed")))
    choice = choose_threshold(config, bundle, guarded)
    assert choice.threshold == 0.66 and "room guard" in choice.source
    override = choose_threshold(gate_config(tmp_path, threshold=0.55), bundle, calibrated)
    assert (override.threshold, override.source) == (0.55, "match.threshold override")


def test_a_roster_threshold_looser_than_the_bundles_floor_is_refused(tmp_path):
    """Signed or not, no roster may take the gate below the bundle's FAR 1e-2 threshold."""
    bundle = load_bundle()
    embedder = bundle.hashes()["embedder"]
    floor = calibrated_threshold(bundle, "cosine", 1e-2)
    loose = block(embedder_sha256=embedder,
                  thresholds={"cosine": {"1e-3": floor - 0.05, "1e-4": -0.9},
                              "tnorm": {"1e-3": 3.4, "1e-4": 4.2}})
    roster = roster_with(loose, embedder=embedder)
    with pytest.raises(RosterError, match=r"cosine threshold -0\.9000 for FAR 0\.0001 is looser"):
        choose_threshold(gate_config(tmp_path, target_far=1e-4), bundle, roster)
    with pytest.raises(RosterError, match="looser than the model bundle's"):
        choose_threshold(gate_config(tmp_path, target_far=1e-3), bundle, roster)
    # at the floor itself it is allowed (calibrate --allow-looser down to FAR 1e-2)
    at_floor = block(embedder_sha256=embedder,
                     thresholds={"cosine": {"1e-3": floor, "1e-4": 0.61},
                                 "tnorm": {"1e-3": 3.4, "1e-4": 4.2}})
    assert choose_threshold(gate_config(tmp_path, target_far=1e-3), bundle,
                            roster_with(at_floor, embedder=embedder)).threshold == floor


def test_a_plain_roster_brings_no_thresholds(tmp_path, caplog):
    """Plain rosters are the demo's and development's (a gate with [keys] reads only signed
    ones): whatever calibration one carries is dropped with a warning."""
    embedder = load_bundle().hashes()["embedder"]
    roster = roster_with(block(embedder_sha256=embedder), embedder=embedder)
    (tmp_path / "data").mkdir()
    save_roster(roster, tmp_path / "data" / "roster.json")
    config = gate_config(tmp_path)
    with caplog.at_level(logging.INFO):
        judge = load_judge(config)
    assert judge.roster.calibration is None
    assert judge.threshold == calibrated_threshold(judge.bundle, "cosine", 1e-4)
    assert "ignored: a gate takes thresholds only from a signed roster" in caplog.text
    assert "from model bundle (celeba" in caplog.text


@pytest.mark.faces
def test_a_gate_started_with_a_signed_calibrated_roster_judges_by_it(tmp_path, centre,
                                                                    gate_keys, faces_root,
                                                                    pipeline, caplog):
    """An enrolled face whose score lies between the shipped threshold and the roster's:
    admitted by a gate on the shipped calibration, refused by one on the roster's."""
    from provisioning.enroll import template_from_photos

    files, _ = gate_keys
    photos = sorted(sorted((faces_root / "orl").iterdir())[0].iterdir())
    template, _ = template_from_photos(pipeline, photos[:3])
    probe = read_image(photos[5])
    score = float(template @ pipeline.read(probe).embedding)
    bundle = load_bundle()
    shipped = calibrated_threshold(bundle, "cosine", 1e-4)
    assert score > shipped + 0.02  # the same person, comfortably above the shipped threshold
    embedder = bundle.hashes()["embedder"]
    strict = round(score + 0.01, 4)
    cal = block(embedder_sha256=embedder, thresholds={"cosine": {"1e-4": strict}},
                threshold_upper_ci={"cosine": {"1e-4": strict + 0.01}},
                expected_tar={"cosine": {"1e-4": 0.9}})
    Device.pin_factory = MockFactory()
    door = DoorSignal(17, 27, 22, pulse_s=0.2)
    try:
        outcomes = []
        for version, calibration in ((1, None), (2, cal)):
            incoming = tmp_path / "data" / "incoming"
            incoming.mkdir(parents=True, exist_ok=True)
            roster = roster_with(calibration, templates=template[None, :], embedder=embedder,
                                 version=version)
            (incoming / "R01.roster.signed").write_bytes(sign_roster(roster, centre))
            config = gate_config(tmp_path, files, target_far=1e-4)
            with caplog.at_level(logging.INFO):
                judge = load_judge(config)
            loop = CheckinLoop(judge.pipeline, judge.roster, judge.policy(config),
                               config.quality, door, Outbox(tmp_path / f"o{version}.sqlite"),
                               config.gate)
            decision = loop.decide(Frame(image=probe, ts=time.time(), index=0))
            outcomes.append((judge.threshold, loop._matching[3], decision.outcome))
        assert outcomes == [(shipped, shipped, "accepted"), (strict, strict, "refused")]
        assert (f"match threshold {strict:.4f} for cosine scores (FAR 0.0001), from "
                "roster:CASN-2026 centre c01") in caplog.text
    finally:
        door.close()
        Device.pin_factory.reset()


# --- the birth message says which calibration a gate runs on ---------------------------------

def test_status_carries_the_calibration_strictly():
    from gerbang import wire

    good = {"state": "online", "calibration": {"source": "roster:CASN-2026 centre c01",
                                               "score_kind": "tnorm", "far": 1e-4,
                                               "threshold": 4.2}}
    assert wire.parse_status(json.dumps(good))["calibration"] == good["calibration"]
    override = {"source": "match.threshold override", "score_kind": "cosine", "far": None,
                "threshold": 0.55}
    assert wire.parse_status(json.dumps({"state": "online", "calibration": override}))[
        "calibration"]["far"] is None
    for bad, field in ((dict(good["calibration"], score_kind="l2"), "calibration.score_kind"),
                       (dict(good["calibration"], far=2), "calibration.far"),
                       (dict(good["calibration"], threshold="x"), "calibration.threshold"),
                       (dict(good["calibration"], source="s" * 300), "calibration.source"),
                       (dict(good["calibration"], extra=1), "calibration: unknown")):
        with pytest.raises(wire.WireError, match=field.replace(".", r"\.")):
            wire.parse_status(json.dumps({"state": "online", "calibration": bad}))


def test_a_pushed_roster_with_another_calibration_gets_its_threshold(tmp_path):
    bundle = load_bundle()
    embedder = bundle.hashes()["embedder"]
    config = gate_config(tmp_path, target_far=1e-3)
    from device.processes.assembly import Judge

    first = roster_with(embedder=embedder)
    judge = Judge(bundle, lambda: None, None, first, None, 0.0, None)  # type: ignore[arg-type]
    loop = CheckinLoop(None, first, judge.policy(config), config.quality,  # type: ignore[arg-type]
                       None, Outbox(tmp_path / "o.sqlite"), config.gate)  # type: ignore[arg-type]
    shipped = calibrated_threshold(bundle, "cosine", 1e-3)
    assert loop._matching[3] == shipped and loop.calibration["source"].startswith("model bundle")
    loop.use_roster(roster_with(block(embedder_sha256=embedder), embedder=embedder, version=2))
    assert loop._matching[3] == 0.52
    assert loop.calibration == {"source": "roster:CASN-2026 centre c01", "score_kind": "cosine",
                                "far": 1e-3, "threshold": 0.52}
