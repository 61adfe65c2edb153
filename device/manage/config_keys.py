"""Who may change which device config key, remotely.

Every key of ``device.toml`` is in exactly one class (``tests/test_config_keys.py`` fails when
a field is added to a config dataclass without being classified here):

``harmless``
    An unsigned ``config`` push may change it. Only keys that cannot change who enters, whom
    the gate trusts, or which messages reach the gateway; each is bounded at load. Kept small.
``signed``
    Only through a config file signed with the centre's roster-signing key
    (``gerbang-provision config-push --keys DIR``; ``device.manage.signed_config``), like rosters
    and model bundles: matching, liveness, quality, the broker address, the door hardware, the
    room and session, the camera, the models, the outbox bounds.
``local``
    Never remotely, signed or not: the gate's identity and data folder (bound to its
    certificate, its broker ACL and where the outbox lives) and every file that holds or
    names a secret or a trust anchor (``[keys]``, the broker's TLS files and name, the MQTT
    credentials). Changed on the gate by the technician (re-provisioning).

A push is judged on the *effective* configs (defaults applied, ``device.config``): writing a
default value out, or reordering the file, is not a change.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

HARMLESS, SIGNED, LOCAL = "harmless", "signed", "local"

#: The harmless keys, each with why it is harmless.
HARMLESS_KEYS: dict[str, str] = {
    "telemetry_interval_s": "how often health figures are reported (bounded 0.2..3600 s); "
                            "events, alarms and the birth message do not depend on it",
    "drain_timeout_s": "how long a finished replay waits for the outbox before exiting "
                       "(bounded); a live camera never ends",
    "models.threads": "CPU threads for inference (1..8): speed, not scores",
    "screen.result_hold_s": "how long the result stays on the applicant screen (1..30 s)",
    "screen.preview_fps": "camera preview rate on the applicant screen (0..5)",
    "capture.freeze_s": "when an unchanging camera picture is reported (camera_lost) and "
                        "reopened (0.5..120 s): timing of an alarm, not a decision",
}

#: The keys no push may change (see the module docstring).
LOCAL_KEYS: dict[str, str] = {
    "gate.device_id": "bound to the gate's certificate (CN) and broker ACL",
    "gate.centre": "bound to the gate's certificate and broker ACL",
    "gate.data_dir": "the outbox, the stored templates and the config state live there",
    "keys.roster_public_key": "the trust anchor for rosters, model bundles and signed configs",
    "keys.roster_transport_key": "the room's key for rosters",
    "keys.storage_key": "the key of the templates at rest",
    "broker.ca_file": "the only issuer trusted for the broker (turns TLS on)",
    "broker.cert_file": "the gate's own certificate",
    "broker.key_file": "the gate's private key",
    "broker.tls_server_name": "the name the broker's certificate must carry",
    "broker.username": "MQTT credentials",
    "broker.password": "MQTT credentials",
}

_SWITCH_FIELDS = ("pin", "pull", "active", "bounce_s")
_SIGNED_KEYS: tuple[str, ...] = (
    "outbox_max_events", "outbox_keep_acked_s",
    "gate.room", "gate.session",
    "capture.source", "capture.path", "capture.device", "capture.width", "capture.height",
    "capture.fps", "capture.loop", "capture.realtime",
    "broker.host", "broker.port", "broker.protocol", "broker.keepalive_s",
    "models.bundle_dir", "models.runtime",
    "match.target_far", "match.threshold", "match.require_card", "match.flip_average",
    "match.roster",
    "quality.min_inter_eye_px", "quality.max_yaw_deg", "quality.max_pitch_deg",
    "quality.min_brightness", "quality.max_brightness", "quality.min_sharpness",
    "quality.second_face_area_ratio", "quality.min_edge_margin",
    "gpio.pin_factory", "gpio.relay_pin", "gpio.relay_active_high", "gpio.relay_pulse_s",
    "gpio.fail_safe", "gpio.red_pin", "gpio.green_pin", "gpio.blue_pin",
    "gpio.led_active_high", "gpio.buzzer_pin", "gpio.buzzer_active_high",
    *(f"gpio.{switch}.{name}" for switch in ("door_contact", "exit_button", "override_key",
                                             "tamper") for name in _SWITCH_FIELDS),
    "gpio.held_open_s", "gpio.open_grace_s",
    "liveness.enabled", "liveness.challenge", "liveness.actions", "liveness.timeout_s",
    "liveness.passive", "liveness.planarity", "liveness.max_failures", "liveness.window_s",
    "liveness.lockout_s", "liveness.follow_through_s",
    "screen.enabled", "screen.host", "screen.port",
)

#: Every config key (dotted path from the top of device.toml) → its class.
CLASSIFICATION: dict[str, str] = {
    **{key: HARMLESS for key in HARMLESS_KEYS},
    **{key: SIGNED for key in _SIGNED_KEYS},
    **{key: LOCAL for key in LOCAL_KEYS},
}


def leaf_values(config: Any, prefix: str = "") -> dict[str, Any]:
    """Every leaf value of a config dataclass tree by dotted key (``gpio.tamper.pin``), in
    field order; paths as strings, so two configs compare by value."""
    out: dict[str, Any] = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        key = f"{prefix}{field.name}"
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            out.update(leaf_values(value, key + "."))
        else:
            out[key] = str(value) if isinstance(value, Path) else value
    return out


def changed_keys(old: Any, new: Any) -> list[str]:
    """Dotted keys whose effective value differs between two DeviceConfigs, in field order."""
    before, after = leaf_values(old), leaf_values(new)
    return [key for key in after if before.get(key) != after[key]]


def classify(key: str) -> str:
    """The class of a dotted key; an unclassified key counts as ``local`` (never remote)."""
    return CLASSIFICATION.get(key, LOCAL)
