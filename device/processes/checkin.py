"""The check-in process: judges frames from the capture process, records every decision,
then asks the gate process to open; serves the gateway commands that need the roster."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import zmq

from device import bus as busmod
from device.bus import Bus
from device.capture.bus import BusFrameSource
from device.capture.cameras import is_paced
from device.config import DeviceConfig
from device.decide.checkin import CheckinLoop
from device.gate.remote import RemoteDoor
from device.manage import template_store
from device.processes.assembly import load_judge, open_screen, watch_uplink
from device.processes.health import peak_rss_mb
from device.uplink.alarms import open_outbox
from device.uplink.commands import CommandHandler

log = logging.getLogger(__name__)

#: How often the check-in publishes its status (the supervisor's watchdog and the uplink's
#: telemetry read the latest).
STATUS_EVERY_S = 0.5


class UplinkState:
    """Whether the uplink process says the broker is connected (for the applicant screen)."""

    def __init__(self, bus: Bus, stop: threading.Event) -> None:
        self.connected = False
        self._sock = busmod.newest_wins_subscriber(bus, busmod.UPLINK_STATUS)
        self._stop = stop
        threading.Thread(target=self._follow, name="uplink-state", daemon=True).start()

    def _follow(self) -> None:
        silent_since = time.monotonic()
        while not self._stop.is_set():
            message = busmod.recv_json(self._sock, 500)
            if message is not None:
                self.connected, silent_since = bool(message.get("connected")), time.monotonic()
            elif time.monotonic() - silent_since > 3.0:
                self.connected = False  # the uplink process itself is gone


class StatusPublisher:
    """What the uplink (telemetry, birth) and the supervisor (watchdog) need from check-in."""

    def __init__(self, bus: Bus, fields: dict[str, Any]) -> None:
        self._sock = busmod.newest_wins_publisher(bus, busmod.CHECKIN_STATUS)
        self.fields = fields
        self.loop: CheckinLoop | None = None
        self.started = time.monotonic()
        self.progress_at: float | None = None

    def progressed(self) -> None:
        """Called after each frame: the watchdog's proof that the pipeline advances (only a
        timestamp: the heartbeat thread publishes it)."""
        self.progress_at = time.monotonic()

    def publish(self) -> None:
        loop = self.loop
        latencies = sorted(loop.latencies_ms) if loop else []
        elapsed = max(time.monotonic() - self.started, 1e-6)
        status = {**self.fields, "progress_at": self.progress_at,
                  "frames": loop.frames if loop else 0,
                  "fps": round(loop.frames / elapsed, 2) if loop else 0.0,
                  "decisions": dict(loop.counts) if loop else {},
                  "latency_p50_ms": latencies[len(latencies) // 2] if latencies else None,
                  "latency_p95_ms": latencies[int(len(latencies) * 0.95)] if latencies else None,
                  "stage_p50_ms": loop.stage_p50_ms() if loop else {},
                  "roster_version": loop.roster.version if loop else None,
                  "calibration": loop.calibration if loop else None,
                  "checkin_peak_rss_mb": peak_rss_mb()}
        busmod.send_json(self._sock, status)

    def heartbeat(self, stop: threading.Event) -> None:
        """Publish every STATUS_EVERY_S from a thread of its own (from then on the only user of
        the socket: ZeroMQ sockets are not thread-safe)."""

        def beat() -> None:
            while not stop.wait(STATUS_EVERY_S):
                self.publish()

        threading.Thread(target=beat, name="checkin-status", daemon=True).start()


def serve_commands(bus: Bus, handler: CommandHandler, stop: threading.Event) -> None:
    """Answer the uplink's forwarded commands (``[name, payload]`` → the result's JSON)."""
    sock = bus.bind(zmq.REP, busmod.COMMANDS)

    def serve() -> None:
        while not stop.is_set():
            if not sock.poll(200):
                continue
            name, payload = sock.recv_multipart()
            sock.send(handler.handle(name.decode(errors="replace"), payload).to_json())

    threading.Thread(target=serve, name="commands", daemon=True).start()


def run_checkin(config: DeviceConfig, bus: Bus, stop: threading.Event) -> dict[str, Any]:
    """Load models and roster, then judge frames until the source ends or ``stop``."""
    ident = config.gate
    judge = load_judge(config)
    rosters, bundle = judge.rosters, judge.bundle

    door = RemoteDoor(bus)
    outbox = open_outbox(config)
    nudge = busmod.sender(bus, busmod.UPLINK)
    screen = open_screen(config.screen)
    if screen is not None:
        watch_uplink(UplinkState(bus, stop), screen, stop)  # type: ignore[arg-type]
    status = StatusPublisher(bus, {"ready": False, "models": bundle.hashes()})
    loop = CheckinLoop(judge.pipeline, judge.roster,
                       judge.policy(config),
                       config.quality, door, outbox, ident,
                       on_recorded=lambda: busmod.send_json(nudge, {"op": "outbox"}),
                       liveness=judge.liveness, screen=screen)
    status.loop = loop
    # Only the roster command needs this process (it swaps the roster the loop judges
    # against); the uplink process runs the others itself.
    handler = CommandHandler(ident.session, ident.data_dir, door.grant, loop.record_alarm,
                             rosters.push_handler(loop.use_roster), None,
                             wipe_templates=template_store.wipe_handler(ident.data_dir))
    serve_commands(bus, handler, stop)
    source = BusFrameSource(bus, is_paced(config.capture), stop)
    judge.confirm_models()
    status.fields["ready"] = True
    status.publish()
    status.heartbeat(stop)
    try:
        loop.run(source, should_stop=stop.is_set, progressed=status.progressed)
    finally:
        source.close()
        if screen is not None:
            screen.close()
        door.close()
        nudge.close()
        outbox.close()
    return {**loop.counts, "frames": loop.frames, "door_unsent": door.unsent,
            "peak_rss_mb": peak_rss_mb()}
