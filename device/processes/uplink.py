"""The uplink process: drains the outbox to the broker, runs the gateway's commands, sends
telemetry and the retained birth message (models and roster as the check-in reports them)."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import zmq

from device import bus as busmod
from device.bus import Bus
from device.config import DeviceConfig
from device.gate.remote import RemoteDoor
from device.manage import models, template_store
from device.manage.config_push import reported_config
from device.processes.health import cpu_temperature_c, peak_rss_mb
from device.uplink.alarms import open_outbox, record_alarm
from device.uplink.commands import CommandHandler, CommandResult
from device.uplink.publisher import Uplink
from gerbang import __version__

log = logging.getLogger(__name__)

#: A forwarded command the check-in process has not answered in this time is reported failed
#: (the gateway may send it again; every command is idempotent or versioned).
FORWARD_TIMEOUT_S = 30.0
#: Commands that change what the check-in loop judges against run in the check-in process.
FORWARDED = frozenset({"roster"})


class CheckinFollower:
    """The latest status the check-in process published (None until it has)."""

    def __init__(self, bus: Bus, stop: threading.Event) -> None:
        self.latest: dict[str, Any] | None = None
        self.on_change: list[Any] = []
        self._sock = busmod.newest_wins_subscriber(bus, busmod.CHECKIN_STATUS)
        self._stop = stop
        threading.Thread(target=self._follow, name="checkin-status", daemon=True).start()

    def _follow(self) -> None:
        while not self._stop.is_set():
            message = busmod.recv_json(self._sock, 500)
            if message is None:
                continue
            before, self.latest = self.latest, message
            key = ("models", "roster_version", "calibration", "ready")
            if before is None or any(before.get(k) != message.get(k) for k in key):
                for callback in self.on_change:
                    callback(message)


class CommandForwarder:
    """Sends a command to the check-in process and waits for its result."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._sock = self._connect()

    def _connect(self) -> zmq.Socket:
        return self.bus.connect(zmq.REQ, busmod.COMMANDS)

    def forward(self, name: str, payload: bytes) -> CommandResult:
        self._sock.send_multipart([name.encode(), payload])
        if self._sock.poll(int(FORWARD_TIMEOUT_S * 1000)):
            return CommandResult.from_json(name, self._sock.recv())
        self._sock.close()  # a REQ socket without its reply cannot send again
        self._sock = self._connect()
        return CommandResult(name[:40], False, "check-in process did not answer (it may be "
                             "restarting); send the command again")


def run_uplink(config: DeviceConfig, bus: Bus, stop: threading.Event,
               config_path: Path | None = None) -> dict[str, Any]:
    """Publish the outbox and serve commands until ``stop``; returns counters. A pushed
    config replaces ``config_path`` (none: config pushes are refused)."""
    ident = config.gate
    outbox = open_outbox(config)
    if outbox.depth():
        log.info("outbox holds %d unsent events; sending them first", outbox.depth())
    door = RemoteDoor(bus)
    supervisor = busmod.sender(bus, busmod.SUPERVISOR)
    forwarder = CommandForwarder(bus)
    checkin = CheckinFollower(bus, stop)
    started = time.monotonic()

    def request_restart(why: str) -> None:
        if not busmod.send_json(supervisor, {"op": "restart", "why": why}):
            log.error("cannot reach the supervisor to restart (%s)", why)

    def apply_config(body: dict[str, Any]) -> str:
        from device.manage.config_push import config_push_handler

        if config_path is None:
            from device.uplink.commands import CommandError

            raise CommandError("config: this gate was not started from a config file")
        handle = config_push_handler(config_path, ident.data_dir,
                                     lambda: request_restart("config pushed"))
        return handle(body)

    local = CommandHandler(ident.session, ident.data_dir, door.grant,
                           lambda kind, detail: record_alarm(outbox, ident, kind, detail),
                           None, models.push_handler(config), apply_config,
                           resend=lambda body: uplink.resend(body),
                           wipe_templates=template_store.wipe_handler(ident.data_dir))

    def command(name: str, payload: bytes) -> CommandResult:
        if name in FORWARDED:
            return forwarder.forward(name, payload)
        return local.handle(name, payload)

    def telemetry() -> dict[str, Any]:
        status = checkin.latest or {}
        disk = shutil.disk_usage(ident.data_dir)
        return {"uptime_s": round(time.monotonic() - started),
                "fps": status.get("fps", 0.0), "decisions": status.get("decisions", {}),
                "latency_p50_ms": status.get("latency_p50_ms"),
                "latency_p95_ms": status.get("latency_p95_ms"),
                "stage_p50_ms": status.get("stage_p50_ms", {}),
                "checkin_ready": bool(status.get("ready")),
                "outbox_depth": outbox.depth(),
                "peak_rss_mb": round(max(status.get("checkin_peak_rss_mb") or 0.0,
                                         peak_rss_mb() or 0.0), 1),
                "cpu_temp_c": cpu_temperature_c(), "disk_free_mb": disk.free // 2**20}

    birth: dict[str, Any] = {"device_id": ident.device_id, "room": ident.room,
                             "session": ident.session, "firmware": __version__,
                             "processes": "split",
                             # desired config is what the gateway pushed; this is what runs
                             "config": reported_config(ident.data_dir, config_path)}
    uplink = Uplink(outbox, config.broker, ident.centre, ident.device_id, birth=birth,
                    on_command=command, telemetry=telemetry,
                    telemetry_interval_s=config.telemetry_interval_s)

    def checkin_changed(status: dict[str, Any]) -> None:
        uplink.update_birth({**birth, "models": status.get("models"),
                             "roster_version": status.get("roster_version"),
                             "calibration": status.get("calibration")})

    checkin.on_change.append(checkin_changed)
    uplink.start()
    nudges = bus.bind(zmq.PULL, busmod.UPLINK)
    state = busmod.newest_wins_publisher(bus, busmod.UPLINK_STATUS)
    next_state = 0.0
    try:
        while not stop.is_set():
            if busmod.recv_json(nudges, 200) is not None:
                uplink.notify()
            if time.monotonic() >= next_state:
                busmod.send_json(state, {"connected": uplink.connected})
                next_state = time.monotonic() + 0.5
    finally:
        uplink.stop()
        for sock in (nudges, state, supervisor):
            sock.close()
        door.close()
        depth = outbox.depth()
        outbox.close()
    return {"published": uplink.published, "outbox_depth": depth}
