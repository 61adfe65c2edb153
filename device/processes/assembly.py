"""Assembling and running the device service from a validated config."""

from __future__ import annotations

import logging
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from device.capture import FrameSource
from device.capture.cameras import CameraAlarm, is_paced, open_camera
from device.capture.newest import NewestFrameSource
from device.config import (
    LOOSEST_FAR,
    CaptureConfig,
    DeviceConfig,
    ScreenConfig,
    check_threshold,
)
from device.decide.checkin import CheckinLoop, MatchPolicy
from device.decide.liveness_policy import LivenessGate
from device.decide.roster import Roster, RosterError
from device.gate.gate import Gate, GateEvent
from device.gate.pins import use_pin_factory
from device.infer.bundle import ModelBundle, ModelBundleError, calibrated_threshold
from device.infer.liveness import (
    DEFAULT_PASSIVE_MODEL,
    LivenessCheck,
    LivenessConfig,
    PassiveLiveness,
)
from device.infer.pipeline import FacePipeline
from device.manage import models, template_store
from device.manage.roster_source import RosterSource
from device.processes.health import cpu_temperature_c, peak_rss_mb
from device.screen.server import Screen
from device.uplink.alarms import open_outbox
from device.uplink.commands import CommandHandler, CommandResult
from device.uplink.publisher import Uplink
from gerbang import __version__, wire
from gerbang.sdnotify import SystemdNotifier

log = logging.getLogger(__name__)


def open_source(capture: CaptureConfig, alarm: CameraAlarm | None = None) -> FrameSource:
    """The frame source the config names (live cameras are opened lazily by ``frames()``).

    A live camera keeps running while the gate thinks: judge the newest frame, drop the rest,
    so decisions never lag behind a queue (device.capture.newest). Paced replays (one
    presentation per still) are read in order. ``alarm`` hears the camera's faults and frames.
    """
    camera = open_camera(capture, alarm)
    return camera if is_paced(capture) else NewestFrameSource(camera)


def _liveness_gate(config: DeviceConfig, bundle: ModelBundle) -> LivenessGate | None:
    """The liveness step as configured (None when off), its models loaded and checked."""
    cfg = config.liveness
    if not cfg.enabled:
        log.info("liveness off (config [liveness] enabled = false)")
        return None
    # The classifier of the bundle in use (an installed update carries its own), pinned in its
    # manifest; the package's copy only for a bundle that lists none.
    pad = bundle.manifest.get("artefacts", {}).get("pad_passive")
    pad_path = bundle.directory / pad["file"] if pad else DEFAULT_PASSIVE_MODEL
    passive = PassiveLiveness.from_json(pad_path, bundle=bundle, threads=config.models.threads,
                                        runtime=config.models.runtime) if cfg.passive else None
    check = LivenessCheck(LivenessConfig(passive=cfg.passive, planarity=cfg.planarity), passive)
    log.info("liveness on: challenge %s (%s, %.1fs), passive %s, 3-D %s; %d failures in %.0fs "
             "lock a card for %.0fs", cfg.challenge, "/".join(cfg.actions), cfg.timeout_s,
             cfg.passive, cfg.planarity, cfg.max_failures, cfg.window_s, cfg.lockout_s)
    return LivenessGate(cfg, check)


#: The uplink must be down this long before the screen says so (a reconnect takes a moment).
OFFLINE_AFTER_S = 3.0


def open_screen(config: ScreenConfig) -> Screen | None:
    """The applicant screen as configured; None when off, or when its port cannot be had (the
    door works without a display, so that is logged, not fatal)."""
    if not config.enabled:
        return None
    try:
        return Screen(config.host, config.port, preview_fps=config.preview_fps,
                      result_hold_s=config.result_hold_s)
    except OSError as exc:
        log.error("applicant screen cannot listen on %s:%d (%s); running without it",
                  config.host, config.port, exc)
        return None


def watch_uplink(uplink: Uplink, screen: Screen, stop: threading.Event) -> threading.Thread:
    """Keep the screen's resting state at ``offline`` while the broker is unreachable for more
    than :data:`OFFLINE_AFTER_S`, ``ready`` otherwise, until ``stop`` is set."""

    def watch() -> None:
        shown, down_since = "ready", None
        while not stop.wait(0.5):
            if uplink.connected:
                down_since, state = None, "ready"
            else:
                down_since = down_since or time.monotonic()
                state = "offline" if time.monotonic() - down_since >= OFFLINE_AFTER_S else shown
            if state != shown:
                screen.show(state)
                shown = state

    thread = threading.Thread(target=watch, name="screen-uplink", daemon=True)
    thread.start()
    return thread


@dataclass
class Judge:
    """Everything the check-in needs to judge a face, loaded and checked at start."""

    bundle: ModelBundle
    #: Run once the service is ready: confirms a pending model update (else does nothing).
    confirm_models: Callable[[], None]
    rosters: RosterSource
    roster: Roster
    pipeline: FacePipeline
    threshold: float
    liveness: LivenessGate | None
    #: Where ``threshold`` comes from (override, roster calibration or model bundle).
    choice: ThresholdChoice | None = None

    def policy(self, config: DeviceConfig) -> MatchPolicy:
        """The match policy: this threshold for the roster's score kind, re-derived (and
        checked) for every roster put in use (a pushed roster may change the score kind or
        carry another calibration)."""
        return MatchPolicy(
            self.threshold, config.match.require_card,
            score_kind=self.roster.gallery().score_kind,
            roster_threshold=lambda roster: choose_threshold(config, self.bundle,
                                                             roster).report())


@dataclass(frozen=True)
class ThresholdChoice:
    """The gate's match threshold and where it comes from (logged at start, and reported)."""

    threshold: float
    score_kind: str
    #: ``match.threshold override``, the roster calibration's source (``roster:…``, with
    #: ``+ room guard`` when the room's guard is the stricter), or ``model bundle``.
    source: str
    far: float | None  # the target FAR it was calibrated for (None for an override)

    def report(self) -> tuple[float, dict[str, Any]]:
        """(threshold, the ``calibration`` block of the birth message, gerbang.wire)."""
        return self.threshold, {"source": self.source[:200], "score_kind": self.score_kind,
                                "far": self.far, "threshold": self.threshold}

    def describe(self) -> str:
        """One line for the log."""
        far = "override, no FAR" if self.far is None else f"FAR {self.far:g}"
        return (f"threshold {self.threshold:.4f} for {self.score_kind} scores ({far}), from "
                f"{self.source}")


def choose_threshold(config: DeviceConfig, bundle: ModelBundle, roster: Roster,
                     announce: bool = False) -> ThresholdChoice:
    """The threshold for ``roster``'s scores, in this order: the ``match.threshold`` override
    (checked against the bundle's calibration); else the calibration the signed roster carries
    at ``match.target_far`` for its score kind, or its room guard when that is stricter; else the
    model bundle's calibration. ``announce`` logs the choice in one line."""
    kind = roster.gallery().score_kind
    far = config.match.target_far
    if config.match.threshold is not None:
        choice = ThresholdChoice(threshold_for(config, bundle, kind), kind,
                                 "match.threshold override", None)
    else:
        guarded = roster.calibration.guarded(kind, far) if roster.calibration else None
        if guarded is not None:
            check_roster_threshold(bundle, kind, far, guarded[0], guarded[1])
            choice = ThresholdChoice(guarded[0], kind, guarded[1], far)
        else:
            if roster.calibration is not None:
                log.warning("roster calibration %s has no %s threshold for FAR %g; using the "
                            "model bundle's", roster.calibration.source, kind, far)
            dataset = bundle.manifest.get("calibration", {}).get("dataset", "?")
            choice = ThresholdChoice(calibrated_threshold(bundle, kind, far), kind,
                                     f"model bundle ({dataset})", far)
    if announce:
        log.info("match %s", choice.describe())
    return choice


def check_roster_threshold(bundle: ModelBundle, kind: str, far: float, threshold: float,
                           source: str) -> None:
    """Refuse a roster's threshold looser than the bundle's at FAR 1e-2, the same floor as a
    ``match.threshold`` override: `calibrate --allow-looser` may go below the shipped threshold
    for the target FAR, but not to where more than 1 stranger in 100 matches, whoever signed
    it (a mistyped or hostile calibration must not open the door). RosterError names it."""
    try:
        floor = calibrated_threshold(bundle, kind, LOOSEST_FAR)
    except ModelBundleError:
        return  # a bundle without calibration has no floor to hold the roster to
    if threshold < floor:
        raise RosterError(
            f"roster calibration {source}: the {kind} threshold {threshold:.4f} for FAR {far:g} "
            f"is looser than the model bundle's {floor:.4f} at FAR {LOOSEST_FAR:g} (more than 1 "
            "stranger in 100 would match); re-run gerbang-provision calibrate and re-sign")


def threshold_for(config: DeviceConfig, bundle: ModelBundle, score_kind: str) -> float:
    """The bundle's match threshold for ``score_kind`` scores: its calibration at
    ``target_far``, or the ``match.threshold`` override once checked against the calibration
    (never looser than FAR 1e-2: ConfigError naming the field). A roster's own calibration is
    applied by :func:`choose_threshold`."""
    override = config.match.threshold
    if override is None:
        return calibrated_threshold(bundle, score_kind, config.match.target_far)
    try:
        floor: float | None = calibrated_threshold(bundle, score_kind, LOOSEST_FAR)
    except ModelBundleError:
        floor = None
    check_threshold(override, score_kind, floor)
    return override


def load_judge(config: DeviceConfig) -> Judge:
    """Models (verified), roster and threshold: the checks that can refuse to start, first.

    The installed model update if there is one (a pending one is confirmed once ready, or
    rolled back), else [models] bundle_dir / the shipped bundle; every sha256 is verified.
    """
    ident = config.gate
    bundle, confirm_models = models.bundle_for_start(config)
    rosters = RosterSource(config, bundle)
    roster = rosters.load()
    if (roster.session, roster.room) != (ident.session, ident.room):
        log.warning("roster is for session %s room %s but this gate is session %s room %s",
                    roster.session, roster.room, ident.session, ident.room)
    pipeline = FacePipeline.from_bundle(bundle, config.models.threads, config.models.runtime)
    pipeline.flip_average = config.match.flip_average
    choice = choose_threshold(config, bundle, roster)
    log.info("models verified and loaded (%s); roster v%d with %d applicants",
             ", ".join(f"{k}={v[:12]}" for k, v in bundle.hashes().items()),
             roster.version, len(roster.entries))
    log.info("match %s", choice.describe())
    return Judge(bundle, confirm_models, rosters, roster, pipeline, choice.threshold,
                 _liveness_gate(config, bundle), choice)


def run_device(config: DeviceConfig, stop: threading.Event | None = None) -> dict[str, Any]:
    """Run the gate until the frame source ends (replay) or ``stop`` is set / SIGTERM arrives.

    Start-up order puts the checks that can refuse to start first (models, roster), before any
    pin or network is touched. Returns the run's counters.
    """
    stop = stop or threading.Event()
    ident = config.gate
    judge = load_judge(config)
    bundle, confirm_models, rosters, roster = (judge.bundle, judge.confirm_models,
                                               judge.rosters, judge.roster)
    pipeline = judge.pipeline
    liveness = judge.liveness
    use_pin_factory(config.gpio.pin_factory)
    loop_ref: list[CheckinLoop] = []

    def on_gate_event(event: GateEvent) -> None:
        # Door alarms and manual openings go to the gateway through the same durable outbox.
        if loop_ref and event.kind in wire.ALARM_KINDS:
            detail = ", ".join(f"{k}={v}" for k, v in sorted(event.details.items())) or None
            loop_ref[0].record_alarm(event.kind, detail)

    door = Gate(config.gpio, on_event=on_gate_event)
    outbox = open_outbox(config)
    if outbox.depth():
        log.info("outbox holds %d unsent events from before; sending them first", outbox.depth())
    started = time.monotonic()

    def command(name: str, payload: bytes) -> CommandResult:
        if not loop_ref:
            return CommandResult(name, False, "gate is still starting")
        return CommandHandler(ident.session, ident.data_dir, door.grant,
                              loop_ref[0].record_alarm,
                              rosters.push_handler(loop_ref[0].use_roster),
                              models.push_handler(config),
                              resend=uplink.resend,
                              wipe_templates=template_store.wipe_handler(ident.data_dir),
                              ).handle(name, payload)

    def telemetry() -> dict[str, Any]:
        loop = loop_ref[0] if loop_ref else None
        latencies = sorted(loop.latencies_ms) if loop else []
        disk = shutil.disk_usage(ident.data_dir)
        return {"uptime_s": round(time.monotonic() - started),
                "fps": round(loop.frames / max(time.monotonic() - started, 1e-6), 2)
                if loop else 0.0,
                "decisions": dict(loop.counts) if loop else {},
                "latency_p50_ms": latencies[len(latencies) // 2] if latencies else None,
                "latency_p95_ms": latencies[int(len(latencies) * 0.95)] if latencies else None,
                "stage_p50_ms": loop.stage_p50_ms() if loop else {},
                "outbox_depth": outbox.depth(), "peak_rss_mb": round(peak_rss_mb() or 0.0, 1),
                "cpu_temp_c": cpu_temperature_c(), "disk_free_mb": disk.free // 2**20}

    uplink = Uplink(outbox, config.broker, ident.centre, ident.device_id, birth={
        "device_id": ident.device_id, "room": ident.room, "session": ident.session,
        "firmware": __version__, "models": bundle.hashes(), "roster_version": roster.version,
        "calibration": judge.choice.report()[1] if judge.choice else None},
        on_command=command, telemetry=telemetry,
        telemetry_interval_s=config.telemetry_interval_s)
    uplink.start()
    screen = open_screen(config.screen)
    screen_stop = threading.Event()
    if screen is not None:
        watch_uplink(uplink, screen, screen_stop)

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())

    loop = CheckinLoop(pipeline, roster, judge.policy(config),
                       config.quality, door, outbox, ident, on_recorded=uplink.notify,
                       liveness=liveness, screen=screen)
    loop_ref.append(loop)
    # The same one-alarm-per-outage rule as the supervised capture worker.
    source = open_source(config.capture, CameraAlarm(
        lambda reason: loop.record_alarm("camera_lost", reason[:300])))
    request_stop = getattr(source, "request_stop", None)
    if request_stop is not None:
        # A camera that never delivers a frame would keep the loop waiting past SIGTERM.
        threading.Thread(target=lambda: (stop.wait(), request_stop()), name="camera-stop",
                         daemon=True).start()
    systemd = SystemdNotifier()
    confirm_models()
    systemd.ready(f"gate {ident.device_id} room {ident.room}: {len(roster.entries)} applicants")
    try:
        loop.run(source, should_stop=stop.is_set, progressed=systemd.pet)
        if not stop.is_set():
            log.info("frame source ended; waiting up to %.0fs for the outbox to drain",
                     config.drain_timeout_s)
            if not uplink.drain(config.drain_timeout_s):
                log.warning("%d events still in the outbox; they will be sent on next start",
                            outbox.depth())
    finally:
        systemd.stopping()
        source.close()
        screen_stop.set()
        if screen is not None:
            screen.close()
        uplink.stop()
        door.close()
        result = {**loop.counts, "published": uplink.published, "outbox_depth": outbox.depth(),
                  "peak_rss_mb": peak_rss_mb()}
        outbox.close()
    log.info("stopped: %s", result)
    return result
