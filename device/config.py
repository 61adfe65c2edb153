"""Device configuration (TOML), validated at start-up with messages that name the bad field.

Example (every key but ``[gate]`` identity has a default)::

    [gate]
    device_id = "c01-r01-a"
    centre = "c01"
    room = "R01"
    session = "S1"
    data_dir = "/var/lib/gerbang"

    [broker]
    host = "gateway.local"
    port = 1883

    [capture]
    source = "replay"
    path = "/srv/faces"
    fps = 5

    [gpio]
    relay_pin = 17
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gerbang import wire
from gerbang.config import BrokerConfig, ConfigError, load_section, read_toml, require

#: The outbox's file name inside the gate's data directory.
OUTBOX_FILE = "outbox.sqlite"

#: The challenge actions a gate can ask for (``device.infer.challenge`` detects each).
ACTIONS = ("blink", "turn_left", "turn_right", "nod")


@dataclass
class QualityConfig:
    """Thresholds of the quality gate (all in ``[quality]`` of the device config)."""

    # Defaults come from genuine-probe acceptance per bucket on the shared celeba set (gate
    # protocol, 3-photo templates; table in docs/verification.md): each limit sits where
    # acceptance falls off a cliff, not where a textbook puts it, so the gate refuses only
    # captures that would likely be refused anyway, with a reason the applicant can act on.

    #: Eye-centre distance in frame pixels. Acceptance holds at 0.90-0.93 down to 12 px and
    #: falls to 0.57 below (the 112-px crop then invents more than half its detail). A door
    #: camera at arm's length gives 60+ px, so this only trips on someone far away.
    min_inter_eye_px: float = 12.0
    #: Head turn (yaw) limit, degrees: acceptance 0.89-0.92 from 35° to 42°, 0.75 at 42-45°
    #: and 0.67 beyond.
    max_yaw_deg: float = 42.0
    #: Nod (pitch) limit, degrees: acceptance 0.91 at 25-30°, 0.58 at 30-40°.
    max_pitch_deg: float = 30.0
    #: Mean luminance (0..255) of the face's central region: below 45 or above 200 acceptance
    #: drops under 0.5 (noise-dominated, or washed-out skin texture).
    min_brightness: float = 45.0
    max_brightness: float = 200.0
    #: Variance of the Laplacian of the central region of the aligned 112×112 grey crop: sharp
    #: faces score in the hundreds; below 50 (motion or focus blur) acceptance falls to 0.43.
    min_sharpness: float = 50.0
    #: A second face at least this fraction of the subject's area counts as another person at
    #: the camera (tailgating, a helper behind the applicant); smaller ones are the queue behind.
    second_face_area_ratio: float = 0.35
    #: Eyes and mouth corners must lie at least this many eye-distances inside the frame: a
    #: frontal face's outline reaches about half an eye-distance beyond its eyes, so closer
    #: than a quarter means part of the face is outside the picture.
    min_edge_margin: float = 0.25

    def __post_init__(self) -> None:
        from gerbang.config import require

        require(0 <= self.min_inter_eye_px <= 500, "min_inter_eye_px", "must be 0..500")
        require(0 < self.max_yaw_deg <= 90, "max_yaw_deg", "must be in (0, 90]")
        require(0 < self.max_pitch_deg <= 90, "max_pitch_deg", "must be in (0, 90]")
        require(0 <= self.min_brightness < self.max_brightness <= 255, "min_brightness",
                "must satisfy 0 <= min_brightness < max_brightness <= 255")
        require(0 <= self.min_sharpness <= 10_000, "min_sharpness", "must be 0..10000")
        require(0 < self.second_face_area_ratio <= 1, "second_face_area_ratio", "must be (0, 1]")
        require(0 <= self.min_edge_margin < 5, "min_edge_margin", "must be in [0, 5)")


@dataclass
class LivenessGateConfig:
    """``[liveness]`` in the device config."""

    #: Off for replayed stills (a photo cannot answer a challenge); on at a real door.
    enabled: bool = False
    #: Ask for an action (blink / turn / nod). Off leaves the passive check only.
    challenge: bool = True
    #: Turns and nods, not blinks, by default: a blink answer cannot be checked in 3-D (a still
    #: head is as flat as a photo; on the shared real clips 11 of 17 detected blinks were
    #: refused as planar) and a replayed video blinks by itself within the timeout; with
    #: several actions a person who cannot do one can pass by another (docs/liveness.md).
    actions: tuple[str, ...] = ("turn_left", "turn_right", "nod")
    timeout_s: float = 4.0
    #: After a turn or nod passes, keep its track this long before the 3-D check: the
    #: challenge passes at the first 15° (median 0.07 s after a real turn starts) while the
    #: movement peaks later (natural turns last 0.75 s out and back, median; nods 0.77 s), and
    #: judged on the first frames real nods looked flat (docs/liveness.md "On real video").
    follow_through_s: float = 0.4
    #: Single-frame passive classifier (needs the model file in the bundle). Off by default: the
    #: shipped fit (gc535 crops) calls 97% of real-video frames attacks and passes the phone
    #: replay (docs/liveness.md "On real video"); turn it on once re-fitted on door video.
    passive: bool = False
    #: 3-D consistency of the challenge's landmark track.
    planarity: bool = True
    #: Failed liveness attempts per card within ``window_s`` before the card is locked here.
    max_failures: int = 3
    window_s: float = 600.0
    #: How long a locked card stays locked at this gate (a proctor admits by hand meanwhile).
    lockout_s: float = 1800.0

    def __post_init__(self) -> None:
        from gerbang.config import require

        self.actions = tuple(self.actions)
        require(set(self.actions) <= set(ACTIONS) and bool(self.actions), "actions",
                f"must be a non-empty subset of {ACTIONS}")
        require(0.5 <= self.timeout_s <= 30, "timeout_s", "must be 0.5..30 seconds")
        require(0 <= self.follow_through_s <= 2, "follow_through_s", "must be 0..2 seconds")
        require(1 <= self.max_failures <= 100, "max_failures", "must be 1..100")
        require(0 < self.window_s <= 86_400, "window_s", "must be > 0 and at most a day")
        require(0 <= self.lockout_s <= 86_400, "lockout_s", "must be 0..86400 seconds")

@dataclass
class GateIdentity:
    """Who this device is and which door it guards."""

    device_id: str
    centre: str
    room: str
    session: str
    data_dir: Path = Path("/var/lib/gerbang")

    def __post_init__(self) -> None:
        for name in ("device_id", "centre", "room", "session"):
            value = getattr(self, name)
            require(bool(wire.ID_PATTERN.match(value)), name,
                    f"{value!r} must be letters, digits, '_', '.', '-' (max 64), "
                    "because it becomes part of MQTT topics")


@dataclass
class CaptureConfig:
    """Which camera back-end to read and how fast."""

    source: str = "replay"
    #: replay: a folder, a .txt playlist or a video file.
    path: Path | None = None
    #: v4l2: the camera device (``/dev/video0``).
    device: str = "/dev/video0"
    width: int = 1280
    height: int = 720
    fps: float = 0.0
    loop: bool = False
    #: Replay only: behave like a camera (frames keep coming at ``fps`` while the gate is busy;
    #: the gate judges the newest and drops the rest). Live cameras always do.
    realtime: bool = False
    #: A live camera returning the same picture this long is reported frozen and reopened.
    freeze_s: float = 5.0

    def __post_init__(self) -> None:
        require(self.source in ("replay", "picamera2", "v4l2"), "source",
                f"{self.source!r} is not a camera back-end (replay, picamera2, v4l2)")
        require(160 <= self.width <= 4096 and 120 <= self.height <= 3072, "width",
                f"frame size {self.width}x{self.height} is out of range")
        require(0.5 <= self.freeze_s <= 120, "freeze_s", "must be 0.5..120 seconds")
        require(self.source != "replay" or self.path is not None, "path",
                "required for source = 'replay' (a folder, a .txt playlist or a video)")
        require(0 <= self.fps <= 120, "fps", f"must be 0..120, got {self.fps}")
        require(self.device.startswith("/dev/") and len(self.device) <= 64, "device",
                f"must be a device node under /dev/, got {self.device!r}")


@dataclass
class ModelConfig:
    """Which model bundle and TFLite runtime to use."""

    bundle_dir: Path | None = None  # None: the bundle shipped inside the package
    threads: int = 2
    runtime: str = "auto"

    def __post_init__(self) -> None:
        require(1 <= self.threads <= 8, "threads", f"must be 1..8, got {self.threads}")
        require(self.runtime in ("auto", "ai-edge-litert", "tflite-runtime"), "runtime",
                f"must be auto, ai-edge-litert or tflite-runtime, got {self.runtime!r}")


@dataclass
class MatchConfig:
    """When a face counts as the applicant."""

    #: False match rate per comparison the gate is tuned for. The threshold comes from the model
    #: bundle's calibration for this FAR (manifest ``calibration``), measured, not guessed.
    #: Without a card (1:N over a room of N) a stranger's false-accept chance is about N × FAR.
    target_far: float = 1e-4
    #: Set only to override the calibrated threshold (its scale depends on the score kind:
    #: cosine, or T-norm when the roster carries a session cohort).
    threshold: float | None = None
    #: True: no card, no entry (1:1 only). False: a face without a card is searched 1:N.
    require_card: bool = False
    #: Average the probe's embedding with its mirror image's (+~0.5 TAR point, +7 ms per frame).
    flip_average: bool = False
    roster: Path | None = None  # default: <data_dir>/roster.json

    def __post_init__(self) -> None:
        require(self.target_far in (1e-2, 1e-3, 1e-4), "target_far",
                f"must be one of the calibrated rates 1e-2, 1e-3, 1e-4, got {self.target_far}")
        # The scale depends on the score kind, known only once the roster and the bundle are
        # loaded: there the override must not be looser than the bundle's calibrated
        # threshold at FAR 1e-2 (check_threshold, called by device.processes.assembly.load_judge).
        # Here
        # only what no score kind allows: a threshold <= 0 admits about half of all strangers.
        require(self.threshold is None or 0 < self.threshold < 20, "threshold",
                f"must be in (0, 20) (and not looser than the model bundle's calibrated "
                f"threshold at FAR 1e-2, checked at start), got {self.threshold}")


#: BCM pins 2 and 3 carry the Pi's fixed 1.8 kΩ pull-ups (I²C); 0 and 1 belong to the HAT
#: EEPROM and 28+ are not on the 40-pin header.
BCM_PINS = range(2, 28)


@dataclass
class SwitchConfig:
    """One switch input (door contact, exit button, override key, tamper switch).

    Every key is required once the table is written, because the defaults differ per switch
    (a reed switch reads high when the door opens; a button to ground reads low when pressed)
    and a half-written table would silently invert one of them.
    """

    pin: int
    #: The resistor holding the line when the switch is open: "up" or "down" (the Pi's own),
    #: or "none" when the board has its own resistor.
    pull: str
    #: The level that means *on*: door open, button pressed, key turned, enclosure open.
    active: str
    #: Ignore changes shorter than this (contact bounce; a reed switch chatters as a door shuts).
    bounce_s: float = 0.05

    def __post_init__(self) -> None:
        require(self.pin in BCM_PINS, "pin", f"BCM pin must be 2..27, got {self.pin}")
        require(self.pull in ("up", "down", "none"), "pull",
                f"must be up, down or none (external resistor), got {self.pull!r}")
        require(self.active in ("high", "low"), "active",
                f"must be high or low (the level meaning on), got {self.active!r}")
        require(self.pin not in (2, 3) or self.pull == "up", "pull",
                f"BCM {self.pin} has a fixed pull-up on the Pi, so pull must be 'up'")
        require(0 <= self.bounce_s <= 1, "bounce_s", f"must be 0..1 seconds, got {self.bounce_s}")


@dataclass
class GpioConfig:
    """The door hardware: BCM pin map, polarities and timings (see ``device/gate``).

    Default wiring: switches to ground with the Pi's pull-ups; a reed door contact that is
    closed while the door is shut (open door reads high) and a tamper switch held closed by
    the enclosure lid (open lid reads high); buttons and key switch read low when on.
    """

    pin_factory: str = "auto"
    relay_pin: int = 17
    #: False for the common active-low relay boards (the relay is energised by a low pin).
    relay_active_high: bool = True
    #: How long a grant, exit button or override key releases the lock.
    relay_pulse_s: float = 3.0
    #: False (fail-secure): the relay is energised only to release the lock, so a stopped
    #: service or a Pi without power leaves the door locked. True (fail-safe, where fire
    #: regulations require it): the relay is energised to *hold* the lock and the pulse
    #: de-energises it, so a stopped service or a Pi without power releases the door.
    fail_safe: bool = False
    #: RGB status LED channels; led_active_high = False for a common-anode LED.
    red_pin: int = 22
    green_pin: int = 27
    blue_pin: int = 23
    led_active_high: bool = True
    buzzer_pin: int = 24
    buzzer_active_high: bool = True
    door_contact: SwitchConfig = field(
        default_factory=lambda: SwitchConfig(5, pull="up", active="high"))
    exit_button: SwitchConfig = field(
        default_factory=lambda: SwitchConfig(6, pull="up", active="low"))
    override_key: SwitchConfig = field(
        default_factory=lambda: SwitchConfig(16, pull="up", active="low"))
    tamper: SwitchConfig = field(
        default_factory=lambda: SwitchConfig(26, pull="up", active="high"))
    #: A door open longer than this raises ``door_held_open``.
    held_open_s: float = 30.0
    #: A door opening this soon after the lock re-locks or the exit button is pressed is still
    #: a permitted one (people push the door as the pulse ends), not ``door_forced``.
    open_grace_s: float = 1.0

    def __post_init__(self) -> None:
        require(self.pin_factory in ("auto", "native", "mock"), "pin_factory",
                f"must be auto, native or mock, got {self.pin_factory!r}")
        outputs = {"relay_pin": self.relay_pin, "red_pin": self.red_pin,
                   "green_pin": self.green_pin, "blue_pin": self.blue_pin,
                   "buzzer_pin": self.buzzer_pin}
        for name, pin in outputs.items():
            require(pin in BCM_PINS, name, f"BCM pin must be 2..27, got {pin}")
        switches = {f"{name}.pin": getattr(self, name).pin
                    for name in ("door_contact", "exit_button", "override_key", "tamper")}
        owner: dict[int, str] = {}
        for name, pin in {**outputs, **switches}.items():
            # Name the first user of the pin and mention the second: either may be the typo.
            require(pin not in owner, owner.get(pin, name),
                    f"BCM {pin} is also {name}; each pin is wired to one thing")
            owner[pin] = name
        require(0.2 <= self.relay_pulse_s <= 30, "relay_pulse_s",
                f"must be 0.2..30 seconds, got {self.relay_pulse_s}")
        require(self.relay_pulse_s < self.held_open_s <= 600, "held_open_s",
                f"must be longer than relay_pulse_s ({self.relay_pulse_s}) and at most 600 "
                f"seconds, got {self.held_open_s}")
        require(0 <= self.open_grace_s <= 10, "open_grace_s",
                f"must be 0..10 seconds, got {self.open_grace_s}")


@dataclass
class KeysConfig:
    """Where the gate's roster keys are (from its provisioning bundle). With all three set, the
    gate takes only signed rosters and keeps templates encrypted (production); unset, it reads
    a plain ``roster.json`` (demo, tests, bench)."""

    #: The centre's roster-signing public key (PEM).
    roster_public_key: Path | None = None
    #: This room's 32-byte roster transport key (rosters are encrypted for their room).
    roster_transport_key: Path | None = None
    #: This device's 32-byte storage key for templates at rest; keep it outside ``data_dir``.
    storage_key: Path | None = None

    def __post_init__(self) -> None:
        given = [self.roster_public_key, self.roster_transport_key, self.storage_key]
        require(all(given) or not any(given), "roster_public_key",
                "set all three of roster_public_key, roster_transport_key, storage_key, "
                "or none")

    @property
    def signed_rosters(self) -> bool:
        """Whether the gate runs on signed, encrypted rosters."""
        return self.storage_key is not None


@dataclass
class ScreenConfig:
    """The applicant screen (``device/screen/server.py``): a page the gate serves to the small
    display at the door, opened there by Chromium in kiosk mode (``chromium --kiosk
    http://127.0.0.1:8081/``)."""

    #: Off by default: a gate without a display needs no web server.
    enabled: bool = False
    #: Loopback only: the page shows applicants' names and the camera picture, which must not
    #: leave the device (the kiosk browser runs on the gate itself).
    host: str = "127.0.0.1"
    port: int = 8081
    #: Camera preview frames per second (0: no preview). At most 5: enough to frame a face, cheap
    #: to encode on the Pi next to the models.
    preview_fps: float = 5.0
    #: How long the accepted screen (with the applicant's name) or a refusal stays up before the
    #: ready screen returns.
    result_hold_s: float = 4.0

    def __post_init__(self) -> None:
        try:
            loopback = self.host == "localhost" or ipaddress.IPv4Address(self.host).is_loopback
        except ValueError:
            loopback = False
        require(loopback, "host",
                f"must be a loopback address (127.0.0.1 or localhost), got {self.host!r}: the "
                "page shows names and the camera, which must not leave the device")
        require(1024 <= self.port <= 65535, "port", f"must be 1024..65535, got {self.port}")
        require(0 <= self.preview_fps <= 5, "preview_fps",
                f"must be 0..5 (0: no preview), got {self.preview_fps}")
        require(1 <= self.result_hold_s <= 30, "result_hold_s",
                f"must be 1..30 seconds, got {self.result_hold_s}")


@dataclass
class DeviceConfig:
    """The whole device configuration."""

    gate: GateIdentity
    capture: CaptureConfig
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    models: ModelConfig = field(default_factory=ModelConfig)
    match: MatchConfig = field(default_factory=MatchConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    gpio: GpioConfig = field(default_factory=GpioConfig)
    liveness: LivenessGateConfig = field(default_factory=LivenessGateConfig)
    keys: KeysConfig = field(default_factory=KeysConfig)
    screen: ScreenConfig = field(default_factory=ScreenConfig)
    #: Seconds between telemetry messages (fps, latencies, outbox depth, temperature, disk).
    telemetry_interval_s: float = 30.0
    #: After a replay ends, how long to wait for the outbox to drain before exiting.
    drain_timeout_s: float = 30.0
    #: The outbox's disk bound in events (about 400 bytes each): 200,000 is about 80 MB,
    #: weeks of a busy gate with no network. At 80 % an ``outbox_near_full`` alarm goes out;
    #: at the bound frames without a face are no longer stored; decisions always are.
    outbox_max_events: int = 200_000
    #: How long events the broker acknowledged stay in the outbox (at most
    #: ``outbox_max_events`` of them), so the gateway can ask for a range again (``resend``)
    #: when it sees a gap. 0 keeps none; at most a week.
    outbox_keep_acked_s: float = 86_400.0

    def __post_init__(self) -> None:
        require(0.2 <= self.telemetry_interval_s <= 3600, "telemetry_interval_s",
                f"must be 0.2..3600 seconds, got {self.telemetry_interval_s}")
        require(0 <= self.drain_timeout_s <= 3600, "drain_timeout_s",
                f"must be 0..3600 seconds, got {self.drain_timeout_s}")
        require(100 <= self.outbox_max_events <= 2_000_000, "outbox_max_events",
                f"must be 100..2000000, got {self.outbox_max_events}")
        require(0 <= self.outbox_keep_acked_s <= 604_800, "outbox_keep_acked_s",
                f"must be 0..604800 seconds (a week), got {self.outbox_keep_acked_s}")

    @property
    def roster_path(self) -> Path:
        """Where the room roster lives."""
        return self.match.roster or self.gate.data_dir / "roster.json"

    @property
    def incoming_dir(self) -> Path:
        """Where signed rosters copied from a provisioning bundle wait to be installed."""
        return self.gate.data_dir / "incoming"

    @property
    def outbox_path(self) -> Path:
        """Where the SQLite outbox lives."""
        return self.gate.data_dir / OUTBOX_FILE


def load_device_config(path: Path) -> DeviceConfig:
    """Read and validate a device TOML file (ConfigError names the field on any problem)."""
    return parse_device_config(read_toml(path))


def parse_device_config(data: dict[str, Any]) -> DeviceConfig:
    """Validate an already-parsed config document."""
    if "gate" not in data:
        raise ConfigError("gate: missing (required table with device_id, centre, room, session)")
    return load_section(DeviceConfig, data)


#: The loosest false-accept rate a threshold override may be set to (``check_threshold``).
LOOSEST_FAR = 1e-2
#: Scores cannot exceed this per kind (a cosine is at most 1), so a threshold above it would
#: refuse everyone: a config error, not a setting.
SCORE_CEILING = {"cosine": 1.0, "tnorm": 20.0}


def check_threshold(threshold: float, score_kind: str, floor: float | None) -> None:
    """Refuse a ``match.threshold`` override that could admit strangers: looser than the model
    bundle's calibrated threshold at FAR 1e-2 (``floor``, for the score kind the roster gives)
    or above what that kind of score can reach. ConfigError names the field."""
    if floor is None:
        raise ConfigError(f"match.threshold: the model bundle has no calibrated {score_kind} "
                          f"threshold at FAR {LOOSEST_FAR:g} to check the override "
                          f"{threshold} against; remove the override (the threshold then "
                          "comes from the calibration) or calibrate the bundle")
    require(threshold >= floor, "match.threshold",
            f"{threshold} is looser than the model bundle's calibrated {score_kind} threshold "
            f"{floor:.4f} at FAR {LOOSEST_FAR:g} (more than 1 stranger in 100 would match); "
            "use target_far instead, or a threshold at least that high")
    ceiling = SCORE_CEILING.get(score_kind, 20.0)
    require(threshold < ceiling, "match.threshold",
            f"{threshold} is above what {score_kind} scores reach ({ceiling:g}): nobody would "
            f"match; is it a threshold for the other score kind?")
