"""Which config keys a push may change (issue 14, High-4): every key classified, a signed config
format that refuses any altered byte, and bounds on every value, the match threshold against the
model bundle's calibration."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import numpy as np
import pytest

from device.config import DeviceConfig, check_threshold, parse_device_config
from device.manage.config_keys import (
    CLASSIFICATION,
    HARMLESS,
    HARMLESS_KEYS,
    LOCAL,
    LOCAL_KEYS,
    SIGNED,
    changed_keys,
)
from device.manage.roster_file import load_roster_public_key
from device.manage.signed_config import (
    INCONSISTENT,
    MAGIC,
    MALFORMED,
    TAMPERED,
    WRONG_CENTRE,
    WRONG_DEVICE,
    WRONG_KEY,
    ConfigRefused,
    verify_signed_config,
)
from gerbang.config import ConfigError
from provisioning.signing import create_roster_keys, export_device_keys, sign_config

CENTRE, DEVICE = "c1", "c1-r01-a"


def config_keys_of(cls: type, prefix: str = "") -> list[str]:
    """Every leaf key of a config dataclass, from its type annotations (not from an instance:
    a field whose default is None but whose type is a table still counts as its leaves)."""
    hints = typing.get_type_hints(cls)
    keys = []
    for field in dataclasses.fields(cls):
        tp = hints[field.name]
        if dataclasses.is_dataclass(tp):
            keys.extend(config_keys_of(tp, f"{prefix}{field.name}."))
        else:
            keys.append(f"{prefix}{field.name}")
    return keys


def minimal(data_dir: Path, extra: dict | None = None) -> dict:
    return {"gate": {"device_id": DEVICE, "centre": CENTRE, "room": "R01", "session": "S1",
                     "data_dir": str(data_dir)},
            "capture": {"path": str(data_dir / "frames")}, **(extra or {})}


def test_every_config_key_is_classified_exactly_once():
    """Adding a field to any config dataclass without deciding who may change it fails here."""
    keys = config_keys_of(DeviceConfig)
    assert len(keys) == len(set(keys))
    assert set(keys) - set(CLASSIFICATION) == set(), "unclassified config keys"
    assert set(CLASSIFICATION) - set(keys) == set(), "classified keys that do not exist"
    assert set(HARMLESS_KEYS) & set(LOCAL_KEYS) == set()
    assert {CLASSIFICATION[k] for k in HARMLESS_KEYS} == {HARMLESS}
    assert {CLASSIFICATION[k] for k in LOCAL_KEYS} == {LOCAL}


def test_the_harmless_set_is_small_and_holds_nothing_that_decides_entry_or_trust():
    assert len(HARMLESS_KEYS) <= 8
    for prefix in ("match.", "liveness.", "quality.", "broker.", "gpio.", "keys.", "gate."):
        assert not [k for k in HARMLESS_KEYS if k.startswith(prefix)], prefix
    for key in ("match.threshold", "match.target_far", "liveness.enabled", "broker.host",
                "broker.port", "gpio.relay_pin", "gate.room", "gate.session", "capture.source",
                "models.bundle_dir", "outbox_max_events", "outbox_keep_acked_s"):
        assert CLASSIFICATION[key] == SIGNED, key
    for key in ("gate.device_id", "gate.centre", "gate.data_dir", "keys.roster_public_key",
                "broker.ca_file", "broker.cert_file", "broker.key_file",
                "broker.tls_server_name"):
        assert CLASSIFICATION[key] == LOCAL, key


def test_changes_are_judged_on_effective_values(tmp_path):
    base = parse_device_config(minimal(tmp_path))
    explicit_default = parse_device_config(minimal(tmp_path, {"match": {"target_far": 1e-4},
                                                              "telemetry_interval_s": 30}))
    assert changed_keys(base, explicit_default) == []
    changed = parse_device_config(minimal(tmp_path, {"gpio": {"tamper": {
        "pin": 25, "pull": "up", "active": "high"}}, "telemetry_interval_s": 5}))
    assert changed_keys(base, changed) == ["gpio.tamper.pin", "telemetry_interval_s"]


BOUNDS = [
    ({"match": {"threshold": -9.9}}, "match.threshold"),
    ({"match": {"threshold": 0.0}}, "match.threshold"),
    ({"telemetry_interval_s": 0.01}, "telemetry_interval_s"),
    ({"telemetry_interval_s": 86_400}, "telemetry_interval_s"),
    ({"drain_timeout_s": -1}, "drain_timeout_s"),
    ({"outbox_max_events": 10**9}, "outbox_max_events"),
    ({"outbox_keep_acked_s": -1}, "outbox_keep_acked_s"),
    ({"outbox_keep_acked_s": 10**7}, "outbox_keep_acked_s"),
    ({"liveness": {"max_failures": 10**6}}, "liveness.max_failures"),
    ({"liveness": {"lockout_s": 10**9}}, "liveness.lockout_s"),
    ({"liveness": {"window_s": 10**9}}, "liveness.window_s"),
    ({"quality": {"min_sharpness": 1e9}}, "quality.min_sharpness"),
    ({"quality": {"min_inter_eye_px": 1e6}}, "quality.min_inter_eye_px"),
    ({"capture": {"path": "/x", "device": "/etc/shadow"}}, "capture.device"),
]


@pytest.mark.parametrize("extra, field", BOUNDS, ids=[f for _, f in BOUNDS])
def test_every_value_is_bounded_at_load(tmp_path, extra, field):
    data = minimal(tmp_path)
    for table, values in extra.items():
        if isinstance(values, dict):
            data[table] = {**data.get(table, {}), **values}
        else:
            data[table] = values
    with pytest.raises(ConfigError, match="^" + re.escape(field) + ":"):
        parse_device_config(data)


def test_threshold_override_is_checked_against_the_bundle_calibration():
    from device.infer.bundle import calibrated_threshold, load_bundle

    bundle = load_bundle()
    for kind in ("cosine", "tnorm"):
        floor = calibrated_threshold(bundle, kind, 1e-2)
        check_threshold(floor, kind, floor)  # exactly FAR 1e-2: allowed
        with pytest.raises(ConfigError, match=r"^match\.threshold: .* looser than"):
            check_threshold(floor - 0.01, kind, floor)
    with pytest.raises(ConfigError, match=r"^match\.threshold: .* above what cosine"):
        check_threshold(2.5, "cosine", calibrated_threshold(bundle, "cosine", 1e-2))
    with pytest.raises(ConfigError, match=r"^match\.threshold: the model bundle has no"):
        check_threshold(0.5, "cosine", None)


def test_a_gate_with_a_loose_threshold_refuses_to_start(tmp_path, capfd):
    """``gerbang-device run --single-process`` with match.threshold looser than the bundle's
    FAR 1e-2: exit 2, the field named, before any pin or network is touched."""
    from device.cli import main
    from device.decide.roster import Roster, RosterEntry, save_roster

    data = tmp_path / "gate"
    save_roster(Roster("S1", "R01", 1, (RosterEntry("A1", "", np.eye(128, dtype=np.float32)[0]),)),
                data / "roster.json")
    (tmp_path / "frames").mkdir()
    config = tmp_path / "device.toml"
    config.write_text(f'[gate]\ndevice_id = "{DEVICE}"\ncentre = "{CENTRE}"\nroom = "R01"\n'
                      f'session = "S1"\ndata_dir = "{data}"\n[capture]\npath = '
                      f'"{tmp_path / "frames"}"\n[models]\nthreads = 1\n[match]\n'
                      'threshold = 0.2\n[gpio]\npin_factory = "mock"\n')
    assert main(["run", "--single-process", "--config", str(config)]) == 2
    assert "cannot start: match.threshold: 0.2 is looser than" in capfd.readouterr().err
    assert not (data / "outbox.sqlite").exists()  # refused before the outbox was opened


def test_a_pushed_roster_that_changes_the_score_kind_gets_that_kinds_threshold(tmp_path):
    from device.config import GateIdentity, QualityConfig
    from device.decide.checkin import CheckinLoop, MatchPolicy
    from device.decide.roster import Roster, RosterEntry
    from device.uplink.outbox import Outbox

    rng = np.random.default_rng(1)
    unit = rng.standard_normal((150, 128)).astype(np.float32)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    plain = Roster("S1", "R01", 1, (RosterEntry("A1", "", unit[0]),))
    with_cohort = Roster("S1", "R01", 2, (RosterEntry("A1", "", unit[0]),), cohort=unit[1:])
    assert (plain.gallery().score_kind, with_cohort.gallery().score_kind) == ("cosine", "tnorm")
    thresholds = {"cosine": 0.5, "tnorm": 3.7}
    loop = CheckinLoop(None, plain, MatchPolicy(0.5, score_kind="cosine",  # type: ignore[arg-type]
                                                threshold_for=thresholds.__getitem__),
                       QualityConfig(), None, Outbox(tmp_path / "o.sqlite"),  # type: ignore[arg-type]
                       GateIdentity(DEVICE, CENTRE, "R01", "S1", tmp_path))
    assert loop._matching[3] == 0.5
    loop.use_roster(with_cohort)
    assert loop._matching[3] == 3.7 and loop.policy.score_kind == "tnorm"


# --- the signed config format ----------------------------------------------------------------

@pytest.fixture(scope="module")
def centre(tmp_path_factory):
    return create_roster_keys(tmp_path_factory.mktemp("keys") / "c1", CENTRE)


@pytest.fixture(scope="module")
def public_key(centre, tmp_path_factory):
    files = export_device_keys(centre, "R01", tmp_path_factory.mktemp("bundle"))
    return load_roster_public_key(files["public_key"])


TOML = '[gate]\ndevice_id = "c1-r01-a"\n[match]\nthreshold = 0.45\n'


def verify(blob, public_key, **over):
    return verify_signed_config(blob, public_key=public_key,
                                **{"centre": CENTRE, "device_id": DEVICE, **over})


def test_signed_config_round_trip(centre, public_key):
    blob = sign_config(TOML, centre, DEVICE, 7)
    assert blob.startswith(MAGIC)
    header, toml_bytes = verify(blob, public_key)
    assert toml_bytes.decode() == TOML
    assert (header.version, header.device_id, header.centre, header.signer) == (
        7, DEVICE, CENTRE, centre.key_id)


def test_every_single_byte_change_of_a_signed_config_is_refused(centre, public_key):
    blob = sign_config(TOML, centre, DEVICE, 3)
    reasons = set()
    for index in range(len(blob)):
        altered = bytearray(blob)
        altered[index] ^= 0x01
        with pytest.raises(ConfigRefused) as info:
            verify(bytes(altered), public_key)
        reasons.add(info.value.reason)
    assert reasons <= {MALFORMED, TAMPERED, WRONG_KEY}
    with pytest.raises(ConfigRefused) as info:
        verify(blob[:-1], public_key)
    assert info.value.reason in (TAMPERED, MALFORMED)


def test_signed_config_for_another_gate_centre_or_key_is_refused(centre, public_key,
                                                                 tmp_path):
    blob = sign_config(TOML, centre, DEVICE, 3)
    with pytest.raises(ConfigRefused) as info:
        verify(blob, public_key, device_id="c1-r02-a")
    assert info.value.reason == WRONG_DEVICE
    with pytest.raises(ConfigRefused) as info:
        verify(blob, public_key, centre="c2")
    assert info.value.reason == WRONG_CENTRE
    other = create_roster_keys(tmp_path / "other", CENTRE)
    with pytest.raises(ConfigRefused) as info:
        verify(sign_config(TOML, other, DEVICE, 3), public_key)
    assert info.value.reason == WRONG_KEY
    # A roster or model signature cannot pass for a config: the magic differs.
    with pytest.raises(ConfigRefused) as info:
        verify(b"gerbang-signed-roster/1\n" + blob[len(MAGIC):], public_key)
    assert info.value.reason == MALFORMED
    assert INCONSISTENT  # the header/TOML mismatch is covered by the signature (one flip above)
