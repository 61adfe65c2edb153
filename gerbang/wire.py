"""The wire contract between gate devices and the gateway: MQTT topics and message schemas.

Both ends import this module, so a change to the contract is one change in one place. Every
payload is a JSON object carrying ``schema`` (the contract version below); a receiver refuses a
version it does not know instead of guessing. Topic layout (MQTT 5, QoS as listed)::

    gerbang/v1/{centre}/{device}/status      dev→gw  QoS1 retained  birth / LWT "offline"
    gerbang/v1/{centre}/{device}/events      dev→gw  QoS1            check-in events
    gerbang/v1/{centre}/{device}/alarms      dev→gw  QoS1            door forced/held, tamper, ...
    gerbang/v1/{centre}/{device}/telemetry   dev→gw  QoS0            fps, latencies, outbox depth
    gerbang/v1/{centre}/{device}/cmd/{name}  gw→dev  QoS1            commands
    gerbang/v1/{centre}/{device}/cmd_ack     dev→gw  QoS1            command results

Events are delivered at least once; the gateway stores them by ``event_id`` so the effect is
exactly once. ``seq`` increases by one per message (events and alarms share it) in each of a
device's outbox *streams*: ``stream`` names the outbox (a new one starts at seq 0 when a gate's
data directory is replaced), and the birth and telemetry carry the outbox position
(:data:`OUTBOX_FIELDS`), so the gateway sees gaps, including at the end of a stream.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

SCHEMA_VERSION = 1
TOPIC_ROOT = "gerbang/v1"

#: Identifiers used inside topics: no wildcards, separators or spaces, bounded length.
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

OUTCOMES = ("accepted", "refused", "no_face")
#: Why a check-in was refused (``reason``); ``None`` for accepted. The quality-gate reasons tell
#: the applicant what to fix; ``duplicate_identity`` means the face matched another roster
#: entry better than the card's owner (a possible proxy, flagged for the proctor).
QUALITY_REASONS = ("multiple_faces", "face_cut_off", "face_too_small", "off_frontal",
                   "too_dark", "overexposed", "blurred")
#: Liveness refusals: ``spoof_suspected`` (the passive classifier or the 3-D check judged the
#: face a photo or screen), ``challenge_timeout`` (the asked action never came),
#: ``challenge_failed`` (another action, or another face, answered), ``card_locked`` (too many
#: failed liveness attempts with this card at this gate: a proctor must see the applicant).
LIVENESS_REASONS = ("spoof_suspected", "challenge_timeout", "challenge_failed", "card_locked")
REASONS = ("no_match", "no_face", "not_on_roster", "bad_frame", "no_card",
           "duplicate_identity", *LIVENESS_REASONS, *QUALITY_REASONS)
#: ``1:1`` when a card was read and only its owner's template was compared; ``1:N`` otherwise.
MODES = ("1:1", "1:N")

MAX_PAYLOAD_BYTES = 16 * 1024  # an event is ~400 bytes; anything far larger is hostile or broken


class WireError(ValueError):
    """A payload or topic that does not follow the contract; the message names the field."""


def _check_id(name: str, value: str) -> str:
    if not isinstance(value, str) or not ID_PATTERN.match(value):
        raise WireError(f"{name} must match {ID_PATTERN.pattern!r}, got {value!r}")
    return value


def device_topic(centre: str, device: str, leaf: str) -> str:
    """Topic of one device's stream ``leaf`` (``events``, ``status``, ``cmd/unlock`` ...)."""
    return f"{TOPIC_ROOT}/{_check_id('centre', centre)}/{_check_id('device', device)}/{leaf}"


def events_topic(centre: str, device: str) -> str:
    """Where a device publishes its check-in events."""
    return device_topic(centre, device, "events")


def alarms_topic(centre: str, device: str) -> str:
    """Where a device publishes door and enclosure alarms."""
    return device_topic(centre, device, "alarms")


def telemetry_topic(centre: str, device: str) -> str:
    """Where a device publishes its periodic health figures (QoS 0: the next one replaces it)."""
    return device_topic(centre, device, "telemetry")


def status_topic(centre: str, device: str) -> str:
    """Retained birth message / last-will of one device."""
    return device_topic(centre, device, "status")


#: Every leaf a device publishes under its own topic (the broker's ACL allows exactly these).
DEVICE_PUBLISH_LEAVES = ("status", "events", "alarms", "telemetry", "cmd_ack")


def subscription(centre: str = "+", leaf: str = "#") -> str:
    """Topic filter a gateway subscribes to (all devices of ``centre`` by default)."""
    return f"{TOPIC_ROOT}/{centre}/+/{leaf}"


@dataclass(frozen=True)
class TopicParts:
    """The identity a topic claims: which centre, which device, which stream."""

    centre: str
    device: str
    leaf: str


def parse_topic(topic: str) -> TopicParts:
    """Split a Gerbang topic; raises WireError for anything outside the contract."""
    parts = topic.split("/")
    if len(parts) < 5 or "/".join(parts[:2]) != TOPIC_ROOT:
        raise WireError(f"topic {topic!r} is not under {TOPIC_ROOT}/{{centre}}/{{device}}/")
    centre, device = parts[2], parts[3]
    _check_id("topic centre", centre)
    _check_id("topic device", device)
    return TopicParts(centre=centre, device=device, leaf="/".join(parts[4:]))


def utc_now_iso() -> str:
    """Current UTC time as ISO 8601 with milliseconds and a ``Z``, the contract's time format."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_event_id() -> str:
    """A globally unique event id (UUID4 hex): the gateway's idempotency key."""
    return uuid.uuid4().hex


@dataclass(frozen=True)
class CheckinEvent:
    """One decision at a gate: who (if anyone) was admitted or refused, and how sure.

    ``score`` is the cosine similarity of the best roster match (biometric-adjacent: the gateway
    may purge it after a retention period). ``frame_ref`` names the replayed image in rehearsals
    and demos so results can be checked against ground truth; a live camera leaves it empty.
    """

    event_id: str
    device_id: str
    centre: str
    room: str
    session: str
    seq: int
    ts: str
    outcome: str
    reason: str | None = None
    applicant_id: str | None = None
    score: float | None = None
    latency_ms: float | None = None
    frame_ref: str | None = None
    #: Applicant id read from the participant card's QR, if one was shown.
    card_id: str | None = None
    mode: str | None = None
    #: The outbox stream ``seq`` counts in (:data:`STREAM_PATTERN`); None from gates older than
    #: streams, which the gateway tracks as the stream ``""``.
    stream: str | None = None
    kind: str = "checkin"
    schema: int = field(default=SCHEMA_VERSION)

    def to_json(self) -> bytes:
        """Compact UTF-8 JSON, the bytes that go on the wire (``stream`` left out when None,
        so a gate without one sends exactly what older gateways accept)."""
        body = asdict(self)
        if body["stream"] is None:
            del body["stream"]
        return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


#: An outbox stream id: 16 lowercase hex characters, drawn at random when the outbox is created.
STREAM_PATTERN = re.compile(r"^[0-9a-f]{16}$")


def _check_stream(value: Any) -> None:
    if value is not None and (not isinstance(value, str) or not STREAM_PATTERN.match(value)):
        raise WireError("stream: expected 16 lowercase hex characters")


# field name -> (accepted types, required)
_EVENT_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "schema": ((int,), True),
    "kind": ((str,), True),
    "event_id": ((str,), True),
    "device_id": ((str,), True),
    "centre": ((str,), True),
    "room": ((str,), True),
    "session": ((str,), True),
    "seq": ((int,), True),
    "ts": ((str,), True),
    "outcome": ((str,), True),
    "reason": ((str, type(None)), False),
    "applicant_id": ((str, type(None)), False),
    "score": ((float, int, type(None)), False),
    "latency_ms": ((float, int, type(None)), False),
    "frame_ref": ((str, type(None)), False),
    "card_id": ((str, type(None)), False),
    "mode": ((str, type(None)), False),
    "stream": ((str, type(None)), False),
}
_EVENT_ID = re.compile(r"^[0-9a-f]{32}$")
_MAX_TEXT = 256
#: Longest ``detail`` of an alarm (and of any other free text field) the gateway accepts.
MAX_TEXT_CHARS = _MAX_TEXT


def parse_event(payload: bytes | str) -> CheckinEvent:
    """Validate a check-in payload and return it as a CheckinEvent.

    Raises WireError naming the first bad field. Strict on purpose: anything a device would not
    send (unknown schema, wrong types, huge strings, unknown fields) is refused rather than stored.
    """
    if isinstance(payload, bytes | bytearray):
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise WireError(f"payload is {len(payload)} bytes, limit {MAX_PAYLOAD_BYTES}")
        try:
            payload = payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise WireError(f"payload is not UTF-8: {exc}") from None
    try:
        data = json.loads(payload)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise WireError(f"payload is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise WireError(f"payload must be a JSON object, got {type(data).__name__}")
    schema = data.get("schema")
    if schema != SCHEMA_VERSION:
        raise WireError(
            f"schema: unsupported version {schema!r} (this end speaks {SCHEMA_VERSION})")
    unknown = sorted(set(data) - set(_EVENT_FIELDS))
    if unknown:
        raise WireError(f"unknown field(s): {', '.join(unknown[:5])}")
    for name, (types, required) in _EVENT_FIELDS.items():
        if name not in data:
            if required:
                raise WireError(f"{name}: missing")
            continue
        value = data[name]
        # bool is an int subclass in Python; a true/false seq or score is a broken sender.
        if isinstance(value, bool) or not isinstance(value, types):
            raise WireError(f"{name}: expected {'/'.join(t.__name__ for t in types)}, "
                            f"got {type(value).__name__}")
        if isinstance(value, str) and len(value) > _MAX_TEXT:
            raise WireError(f"{name}: longer than {_MAX_TEXT} characters")
        if isinstance(value, float) and not math.isfinite(value):
            raise WireError(f"{name}: not a finite number")
    if data["kind"] != "checkin":
        raise WireError(f"kind: expected 'checkin', got {data['kind']!r}")
    if not _EVENT_ID.match(data["event_id"]):
        raise WireError("event_id: expected 32 lowercase hex characters")
    for name in ("device_id", "centre", "room", "session"):
        _check_id(name, data[name])
    if data["seq"] < 0:
        raise WireError("seq: must be >= 0")
    if data["outcome"] not in OUTCOMES:
        raise WireError(f"outcome: expected one of {OUTCOMES}, got {data['outcome']!r}")
    if data.get("reason") is not None and data["reason"] not in REASONS:
        raise WireError(f"reason: expected one of {REASONS}, got {data['reason']!r}")
    if data.get("mode") is not None and data["mode"] not in MODES:
        raise WireError(f"mode: expected one of {MODES}, got {data['mode']!r}")
    if data.get("card_id") is not None:
        _check_id("card_id", data["card_id"])
    _check_stream(data.get("stream"))
    if data["outcome"] == "accepted" and not data.get("applicant_id"):
        raise WireError("applicant_id: required when outcome is 'accepted'")
    try:
        datetime.fromisoformat(data["ts"].replace("Z", "+00:00"))
    except ValueError:
        raise WireError(f"ts: not an ISO 8601 time: {data['ts']!r}") from None
    return CheckinEvent(**data)


def status_payload(online: bool, **details: Any) -> bytes:
    """Birth (``online``) or last-will (``offline``) message for the retained status topic."""
    body = {"schema": SCHEMA_VERSION, "state": "online" if online else "offline",
            "ts": utc_now_iso(), **details}
    return json.dumps(body, separators=(",", ":")).encode()


#: What a gate reports on its ``alarms`` topic. ``door_forced``: the door contact opened with no
#: grant, exit request or override; ``door_held_open``: open longer than allowed; ``tamper``: the
#: enclosure switch; ``manual_override``: the proctor key was turned; ``outbox_near_full``: the
#: device's event store is close to its disk bound; ``camera_lost``: no frames;
#: ``card_locked``: repeated failed liveness with one card (``detail`` names the card);
#: ``config_refused``: the gate refused a pushed config (an unsigned change of a key that decides
#: who enters, a local key, a signature that does not verify, a bad value, an old version):
#: a broken tool, or someone holding a commanding identity trying to weaken the gate.
#: Alarms share the device's ``seq`` with its events (one outbox), so a gap means a loss.
ALARM_KINDS = ("door_forced", "door_held_open", "tamper", "manual_override", "exit_request",
               "outbox_near_full", "camera_lost", "card_locked", "config_refused")


@dataclass(frozen=True)
class AlarmEvent:
    """A door/enclosure/health alarm from a gate; stored once by ``alarm_id``."""

    alarm_id: str
    device_id: str
    centre: str
    seq: int
    ts: str
    alarm: str
    detail: str | None = None
    #: The outbox stream ``seq`` counts in (shared with the device's events); see CheckinEvent.
    stream: str | None = None
    kind: str = "alarm"
    schema: int = field(default=SCHEMA_VERSION)

    def to_json(self) -> bytes:
        """Compact UTF-8 JSON, the bytes that go on the wire (``stream`` left out when None)."""
        body = asdict(self)
        if body["stream"] is None:
            del body["stream"]
        return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


def parse_alarm(payload: bytes | str) -> AlarmEvent:
    """Validate an alarm payload; raises WireError naming the first bad field."""
    if isinstance(payload, bytes | bytearray):
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise WireError(f"payload is {len(payload)} bytes, limit {MAX_PAYLOAD_BYTES}")
        payload = payload.decode("utf-8", errors="strict")
    try:
        data = json.loads(payload)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise WireError(f"payload is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise WireError("alarm payload must be a JSON object")
    if data.get("schema") != SCHEMA_VERSION:
        raise WireError(f"schema: unsupported version {data.get('schema')!r}")
    allowed = {"schema", "kind", "alarm_id", "device_id", "centre", "seq", "ts", "alarm",
               "detail", "stream"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise WireError(f"unknown field(s): {', '.join(unknown[:5])}")
    for name in ("kind", "alarm_id", "device_id", "centre", "ts", "alarm"):
        if not isinstance(data.get(name), str):
            raise WireError(f"{name}: missing or not a string")
    seq = data.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise WireError("seq: missing or not an integer >= 0")
    if data["kind"] != "alarm":
        raise WireError(f"kind: expected 'alarm', got {data['kind']!r}")
    if not _EVENT_ID.match(data["alarm_id"]):
        raise WireError("alarm_id: expected 32 lowercase hex characters")
    _check_id("device_id", data["device_id"])
    _check_id("centre", data["centre"])
    if data["alarm"] not in ALARM_KINDS:
        raise WireError(f"alarm: expected one of {ALARM_KINDS}, got {data['alarm']!r}")
    detail = data.get("detail")
    if detail is not None and (not isinstance(detail, str) or len(detail) > _MAX_TEXT):
        raise WireError(f"detail: expected a string of at most {_MAX_TEXT} characters")
    _check_stream(data.get("stream"))
    try:
        datetime.fromisoformat(data["ts"].replace("Z", "+00:00"))
    except ValueError:
        raise WireError(f"ts: not an ISO 8601 time: {data['ts']!r}") from None
    return AlarmEvent(**data)


# ---- status (birth / last will) and telemetry -----------------------------------------------
#
# Both are free-form enough to evolve, but the gateway renders them on every page, so they are
# checked as strictly as events: a known set of fields with types and bounds, a size limit, and
# anything else refused (kept as a reject, never shown). ``parse_status`` / ``parse_telemetry``
# return plain dicts of exactly the accepted fields.

#: The outbox position a gate reports in its birth message and every telemetry message:
#: ``stream`` (its outbox's id), ``first_seq`` (the first seq of that stream: 0, or where an
#: outbox older than streams was when it got its id), ``next_seq`` (the seq the next message will
#: get) and ``acked_below`` (every seq below this has been acknowledged by the broker, so it
#: must reach the gateway: a missing one is a loss, also at the end of the stream).
OUTBOX_FIELDS = ("stream", "first_seq", "next_seq", "acked_below")

MAX_STATUS_BYTES = 8 * 1024
MAX_TELEMETRY_BYTES = 8 * 1024
_MAX_NUMBER = 1e12  # no health figure is larger; bounds what a page has to lay out


def _number(where: str, value: Any, *, integer: bool = False, optional: bool = True) -> Any:
    if value is None and optional:
        return None
    kinds: tuple[type, ...] = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise WireError(f"{where}: expected {'an integer' if integer else 'a number'}, "
                        f"got {type(value).__name__}")
    if not math.isfinite(value) or abs(value) > _MAX_NUMBER:
        raise WireError(f"{where}: out of range")
    return value


def _short_text(where: str, value: Any, limit: int = 64, optional: bool = True) -> Any:
    if value is None and optional:
        return None
    if not isinstance(value, str) or len(value) > limit or "\x00" in value:
        raise WireError(f"{where}: expected a string of at most {limit} characters")
    return value


def _iso_time(where: str, value: Any) -> str:
    if not isinstance(value, str) or len(value) > 40:
        raise WireError(f"{where}: expected an ISO 8601 time string")
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise WireError(f"{where}: not an ISO 8601 time: {value[:40]!r}") from None
    return value


def _object(where: str, payload: bytes | str, limit: int) -> dict[str, Any]:
    if isinstance(payload, str):
        payload = payload.encode("utf-8", errors="replace")
    if len(payload) > limit:
        raise WireError(f"{where} payload is {len(payload)} bytes, limit {limit}")
    try:
        data = json.loads(payload or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise WireError(f"{where} payload is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise WireError(f"{where} payload must be a JSON object")
    if data.get("schema", SCHEMA_VERSION) != SCHEMA_VERSION:
        raise WireError(f"schema: unsupported version {data.get('schema')!r}")
    return data


def _unknown(where: str, data: dict[str, Any], known: set[str]) -> None:
    unknown = sorted(set(data) - known)
    if unknown:
        raise WireError(f"{where}: unknown field(s): {', '.join(str(u)[:40] for u in unknown[:5])}")


def parse_outbox(where: str, value: Any) -> dict[str, Any] | None:
    """The ``outbox`` block of a birth or telemetry message (see :data:`OUTBOX_FIELDS`)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise WireError(f"{where}: expected an object")
    _unknown(where, value, set(OUTBOX_FIELDS))
    stream = value.get("stream")
    if not isinstance(stream, str) or not STREAM_PATTERN.match(stream):
        raise WireError(f"{where}.stream: expected 16 lowercase hex characters")
    out: dict[str, Any] = {"stream": stream}
    for name in ("first_seq", "next_seq", "acked_below"):
        number = _number(f"{where}.{name}", value.get(name), integer=True, optional=False)
        if number < 0:
            raise WireError(f"{where}.{name}: must be >= 0")
        out[name] = number
    if not out["first_seq"] <= out["acked_below"] <= out["next_seq"]:
        raise WireError(f"{where}: expected first_seq <= acked_below <= next_seq")
    return out


def _flat_map(where: str, value: Any, *, integer: bool, limit: int = 32) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > limit:
        raise WireError(f"{where}: expected an object of at most {limit} entries")
    out = {}
    for key, item in value.items():
        _short_text(f"{where} key", key, 40, optional=False)
        out[key] = _number(f"{where}.{key}", item, integer=integer)
    return out


#: Fields of a status message: the retained birth (``state`` online) and the last will /
#: clean stop (``state`` offline). ``models`` maps model names to sha256s; ``config`` is the
#: reported config (device.manage.config_push); ``calibration`` the match threshold in use
#: and where it comes from (:data:`CALIBRATION_FIELDS`).
STATUS_FIELDS = ("schema", "state", "ts", "device_id", "room", "session", "firmware",
                 "processes", "models", "roster_version", "config", "outbox", "calibration")
#: ``calibration`` of a status message: ``source`` (``roster:…``, ``model bundle (…)``,
#: ``match.threshold override``), ``score_kind`` (cosine / tnorm), ``far`` (the target FAR, null
#: for an override) and ``threshold``.
CALIBRATION_FIELDS = ("source", "score_kind", "far", "threshold")
SCORE_KINDS = ("cosine", "tnorm")


def parse_calibration(where: str, value: Any) -> dict[str, Any]:
    """The ``calibration`` block of a status message (see :data:`CALIBRATION_FIELDS`)."""
    if not isinstance(value, dict):
        raise WireError(f"{where}: expected an object")
    _unknown(where, value, set(CALIBRATION_FIELDS))
    kind = value.get("score_kind")
    if kind not in SCORE_KINDS:
        raise WireError(f"{where}.score_kind: expected one of {', '.join(SCORE_KINDS)}")
    far = _number(f"{where}.far", value.get("far"))
    if far is not None and not 0 < far < 1:
        raise WireError(f"{where}.far: expected a rate in (0, 1)")
    threshold = _number(f"{where}.threshold", value.get("threshold"), optional=False)
    return {"source": _short_text(f"{where}.source", value.get("source"), 200, optional=False),
            "score_kind": kind, "far": far, "threshold": threshold}
_CONFIG_FIELDS = {"version", "sha256", "applied_at", "local_edit", "error", "signed"}


def parse_status(payload: bytes | str) -> dict[str, Any]:
    """Validate a status message; returns its accepted fields. Raises WireError naming the
    first bad field. An empty payload is the broker clearing the retained message: state
    ``cleared``."""
    if payload in (b"", ""):
        return {"schema": SCHEMA_VERSION, "state": "cleared"}
    data = _object("status", payload, MAX_STATUS_BYTES)
    _unknown("status", data, set(STATUS_FIELDS))
    if data.get("state") not in ("online", "offline"):
        state = str(data.get("state"))[:20]
        raise WireError(f"state: expected 'online' or 'offline', got {state!r}")
    out: dict[str, Any] = {"schema": SCHEMA_VERSION, "state": data["state"]}
    if "ts" in data:
        out["ts"] = _iso_time("ts", data["ts"])
    for name in ("device_id", "room", "session"):
        if data.get(name) is not None:
            out[name] = _check_id(name, data[name])
    for name in ("firmware", "processes"):
        if data.get(name) is not None:
            out[name] = _short_text(name, data[name])
    if data.get("models") is not None:
        models = data["models"]
        if not isinstance(models, dict) or len(models) > 16:
            raise WireError("models: expected an object of at most 16 entries")
        for key, digest in models.items():
            _short_text("models key", key, 40, optional=False)
            if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise WireError(f"models.{key[:40]}: expected a sha256 (64 hex characters)")
        out["models"] = dict(models)
    if data.get("roster_version") is not None:
        out["roster_version"] = _number("roster_version", data["roster_version"], integer=True)
    if data.get("config") is not None:
        config = data["config"]
        if not isinstance(config, dict):
            raise WireError("config: expected an object")
        _unknown("config", config, _CONFIG_FIELDS)
        checked: dict[str, Any] = {}
        if config.get("version") is not None:
            checked["version"] = _number("config.version", config["version"], integer=True)
        if config.get("sha256") is not None:
            if not isinstance(config["sha256"], str) or not re.fullmatch(
                    r"[0-9a-f]{64}", config["sha256"]):
                raise WireError("config.sha256: expected 64 hex characters")
            checked["sha256"] = config["sha256"]
        if config.get("applied_at") is not None:
            checked["applied_at"] = _iso_time("config.applied_at", config["applied_at"])
        for flag in ("local_edit", "signed"):
            if config.get(flag) is not None:
                if not isinstance(config[flag], bool):
                    raise WireError(f"config.{flag}: expected true or false")
                checked[flag] = config[flag]
        if config.get("error") is not None:
            checked["error"] = _short_text("config.error", config["error"], _MAX_TEXT)
        out["config"] = checked
    if data.get("outbox") is not None:
        out["outbox"] = parse_outbox("outbox", data["outbox"])
    if data.get("calibration") is not None:
        out["calibration"] = parse_calibration("calibration", data["calibration"])
    return out


#: Fields of a telemetry message (every ``telemetry_interval_s``, QoS 0).
TELEMETRY_FIELDS = ("schema", "ts", "uptime_s", "fps", "decisions", "latency_p50_ms",
                    "latency_p95_ms", "stage_p50_ms", "checkin_ready", "outbox_depth",
                    "peak_rss_mb", "cpu_temp_c", "disk_free_mb", "outbox")


def parse_telemetry(payload: bytes | str) -> dict[str, Any]:
    """Validate a telemetry message; returns its accepted fields (WireError names the first
    bad one)."""
    data = _object("telemetry", payload, MAX_TELEMETRY_BYTES)
    _unknown("telemetry", data, set(TELEMETRY_FIELDS))
    out: dict[str, Any] = {"schema": SCHEMA_VERSION}
    if "ts" in data:
        out["ts"] = _iso_time("ts", data["ts"])
    for name in ("uptime_s", "fps", "latency_p50_ms", "latency_p95_ms", "peak_rss_mb",
                 "cpu_temp_c"):
        if name in data:
            out[name] = _number(name, data[name])
    for name in ("outbox_depth", "disk_free_mb"):
        if name in data:
            out[name] = _number(name, data[name], integer=True)
    if "checkin_ready" in data:
        if not isinstance(data["checkin_ready"], bool):
            raise WireError("checkin_ready: expected true or false")
        out["checkin_ready"] = data["checkin_ready"]
    if "decisions" in data:
        out["decisions"] = _flat_map("decisions", data["decisions"], integer=True)
    if "stage_p50_ms" in data:
        out["stage_p50_ms"] = _flat_map("stage_p50_ms", data["stage_p50_ms"], integer=False)
    if data.get("outbox") is not None:
        out["outbox"] = parse_outbox("outbox", data["outbox"])
    return out


# ---- commands the gateway sends ---------------------------------------------------------------

#: ``cmd/resend``: ``{"stream": S, "from_seq": A, "to_seq": B}`` asks a gate to publish again
#: the messages A..B (inclusive) of its outbox stream S that it still keeps (acknowledged ones
#: are kept for ``outbox_keep_acked_s``); the gateway sends it for a gap that persists. At most
#: this many seqs per request, so one command never makes a gate re-send its whole history.
RESEND_MAX_SPAN = 10_000
