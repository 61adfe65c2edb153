"""The supervisor: what ``gerbang-device run`` is. Starts the four workers and keeps them up.

- A worker that dies (crash, kill -9, OOM) is started again: the gate controller at once
  (it drives the relay locked first thing), the others after a short back-off that grows while
  they keep dying and resets once one has run a while.
- A gate controller or uplink whose main loop stops beating for ``HUNG_AFTER_S`` (deadlock,
  SIGSTOP, a driver call that never returns) is killed and restarted the same way.
- A worker that refuses to start (exit code 2: bad config, altered models, no roster) stops the
  whole service with its message: restarting would refuse again, and systemd's own restart
  policy (with its rate limit) is the right place for that loop.
- systemd hears from the supervisor only: READY once the check-in loop reports ready, and the
  watchdog is petted only while the check-in loop's progress advances (a hung inference stops
  the pets, and systemd restarts the service).
- A replay source that ends ends the service: capture exits, the check-in judges the last
  frame and exits, the outbox drains, then the uplink and the gate stop.
- If the supervisor itself dies, its workers get SIGTERM from the kernel (PR_SET_PDEATHSIG), so
  the next start never finds two gate controllers.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from device import bus as busmod
from device.bus import Bus, bus_dir
from device.config import DeviceConfig, load_device_config
from device.processes import WORKERS, result_path
from device.uplink.outbox import Outbox
from gerbang.sdnotify import SystemdNotifier
from gerbang.stopping import stop_processes

log = logging.getLogger(__name__)

#: Exit code of a worker that refused to start (the CLI's "cannot start" code).
REFUSED = 2
#: Back-off before restarting a worker that died: doubles per recent death, up to the cap.
BACKOFF_S, BACKOFF_MAX_S = 0.25, 10.0
#: A worker that ran this long is healthy again: its back-off starts over.
HEALTHY_AFTER_S = 30.0
#: How long a worker gets to stop after SIGTERM before SIGKILL.
STOP_TIMEOUT_S = 10.0
#: A gate controller or uplink silent this long (its main loop beats every 0.2-0.5 s) is hung:
#: it is killed and restarted like a crashed one. The check-in is watched by systemd's
#: watchdog instead (progress, not just life), and the capture by its camera checks.
HUNG_AFTER_S = 30.0
#: Before its first heartbeat a worker is still starting (imports, opening pins): on a busy
#: machine that alone can take tens of seconds, which is not a hang.
START_GRACE_S = 120.0
#: Between a restart request (config pushed) and the restart.
RESTART_GRACE_S = 1.0
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the supervisor dies (Linux only)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


@dataclass
class Worker:
    """One worker process and its restart history."""

    name: str
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    deaths: int = 0
    restart_at: float | None = None
    starts: int = 0


class Supervisor:
    """Runs the workers of one gate from its config file."""

    def __init__(self, config_path: Path, verbose: bool = False) -> None:
        self.config_path = Path(config_path)
        self.config: DeviceConfig = load_device_config(self.config_path)
        self.verbose = verbose
        self.bus = Bus(bus_dir(self.config.gate.data_dir))
        self.workers = {name: Worker(name) for name in WORKERS}
        self.systemd = SystemdNotifier()
        self.ready = False
        self.source_ended = False
        self.refused: tuple[str, int] | None = None
        self._progress_at: float | None = None
        self._heard: dict[str, float] = {}  # worker -> monotonic time of its last heartbeat

    # workers -----------------------------------------------------------------------------
    def _spawn(self, worker: Worker) -> None:
        cmd = [sys.executable, "-m", "device.cli", *(["--verbose"] if self.verbose else []),
               "worker", worker.name, "--config", str(self.config_path)]
        env = {k: v for k, v in os.environ.items()
               if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        path = result_path(self.bus.directory, worker.name)
        path.unlink(missing_ok=True)
        worker.process = subprocess.Popen(cmd, env=env, preexec_fn=_die_with_parent)
        worker.started_at = time.monotonic()
        worker.restart_at = None
        worker.starts += 1
        if worker.starts > 1:
            log.warning("%s worker restarted (pid %d, start %d)", worker.name,
                        worker.process.pid, worker.starts)

    def _stop_worker(self, worker: Worker) -> None:
        if stop_processes([worker.process], STOP_TIMEOUT_S):
            log.error("%s worker did not stop in %.0fs; killed it", worker.name, STOP_TIMEOUT_S)

    def _check_worker(self, worker: Worker) -> None:
        proc = worker.process
        if proc is None:
            if worker.restart_at is not None and time.monotonic() >= worker.restart_at:
                self._spawn(worker)
            return
        code = proc.poll()
        if code is None:
            if time.monotonic() - worker.started_at > HEALTHY_AFTER_S:
                worker.deaths = 0
            return
        worker.process = None
        if code == 0 and worker.name == "capture":
            log.info("capture worker finished: the replay has ended")
            return  # a camera never ends; a replay does, once
        if code == 0 and worker.name == "checkin":
            # The check-in exits 0 only when the capture said its source ended (or when told
            # to stop): the run is over once the outbox drains.
            self.source_ended = True
            return
        if code == REFUSED:
            self.refused = (worker.name, code)
            log.error("%s worker refused to start (see its message above); stopping the gate",
                      worker.name)
            return
        how = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
        worker.deaths += 1
        delay = 0.0 if worker.name == "gate" else min(BACKOFF_S * 2 ** (worker.deaths - 1),
                                                      BACKOFF_MAX_S)
        log.error("%s worker %s; restarting in %.2fs", worker.name, how, delay)
        worker.restart_at = time.monotonic() + delay
        if delay == 0.0:
            self._spawn(worker)

    # status from the check-in --------------------------------------------------------------
    def _read_status(self, sock: zmq.Socket) -> None:
        message = busmod.recv_json(sock, 100)
        if message is None:
            return
        if message.get("ready") and not self.ready:
            self.ready = True
            ident = self.config.gate
            self.systemd.ready(f"gate {ident.device_id} room {ident.room}: "
                               f"roster v{message.get('roster_version')}")
            log.info("gate %s ready: all workers up", ident.device_id)
        progress = message.get("progress_at")
        if progress is not None and progress != self._progress_at:
            self._progress_at = progress
            self.systemd.pet()

    def _read_heartbeats(self, beats: dict[str, zmq.Socket]) -> None:
        for name, sock in beats.items():
            if busmod.recv_json(sock, 0) is not None:
                self._heard[name] = time.monotonic()

    def _kill_hung(self, name: str) -> None:
        worker = self.workers[name]
        proc = worker.process
        if proc is None or proc.poll() is not None:
            return
        heard = self._heard.get(name, 0.0)
        if heard < worker.started_at:  # not heard from since it (re)started
            silent, limit = time.monotonic() - worker.started_at, START_GRACE_S
        else:
            silent, limit = time.monotonic() - heard, HUNG_AFTER_S
        if silent > limit:
            log.error("%s worker hung (no heartbeat for %.0fs); killing it", name, silent)
            proc.kill()
            proc.wait()

    def _restart_all(self, why: str) -> None:
        log.warning("restarting all workers: %s", why)
        for name in reversed(WORKERS):  # camera first, gate controller last
            self._stop_worker(self.workers[name])
        try:
            self.config = load_device_config(self.config_path)
        except Exception as exc:  # the pushed config was validated; this is belt and braces
            log.error("config %s no longer loads (%s); keeping the running one",
                      self.config_path, exc)
        self.ready = False
        for name in WORKERS:
            worker = self.workers[name]
            worker.deaths = 0
            self._spawn(worker)

    # the service -------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> dict[str, Any]:
        """Run until ``stop``, a refusal, or the end of a replay; returns the run's counters."""
        status = busmod.newest_wins_subscriber(self.bus, busmod.CHECKIN_STATUS)
        control = self.bus.bind(zmq.PULL, busmod.SUPERVISOR)
        beats = {"gate": busmod.newest_wins_subscriber(self.bus, busmod.GATE_STATUS),
                 "uplink": busmod.newest_wins_subscriber(self.bus, busmod.UPLINK_STATUS)}
        for name in WORKERS:
            self._spawn(self.workers[name])
        restart: tuple[float, str] | None = None
        try:
            while not stop.is_set() and self.refused is None:
                self._read_status(status)
                request = busmod.recv_json(control, 0)
                if request is not None and request.get("op") == "restart":
                    # A moment's grace: the uplink that asked still has to acknowledge the
                    # command that asked (on cmd_ack) before it is stopped.
                    restart = (time.monotonic() + RESTART_GRACE_S,
                               str(request.get("why", "requested")))
                if restart is not None and time.monotonic() >= restart[0]:
                    self._restart_all(restart[1])
                    restart = None
                self._read_heartbeats(beats)
                for name in beats:
                    self._kill_hung(name)
                for worker in self.workers.values():
                    self._check_worker(worker)
                if self.source_ended:
                    self._drain()
                    break
        finally:
            self.systemd.stopping()
            for name in ("capture", "checkin", "uplink", "gate"):
                self._stop_worker(self.workers[name])
            for sock in (status, control, *beats.values()):
                sock.close()
        return self._summary()

    def _drain(self) -> None:
        timeout = self.config.drain_timeout_s
        log.info("replay finished; waiting up to %.0fs for the outbox to drain", timeout)
        outbox = Outbox(self.config.outbox_path)
        try:
            deadline = time.monotonic() + timeout
            while outbox.depth() and time.monotonic() < deadline:
                self._check_worker(self.workers["uplink"])
                time.sleep(0.1)
            if outbox.depth():
                log.warning("%d events still in the outbox; they will be sent on next start",
                            outbox.depth())
        finally:
            outbox.close()

    def _summary(self) -> dict[str, Any]:
        result: dict[str, Any] = {}
        peaks: dict[str, float] = {}
        for name in ("checkin", "uplink", "gate", "capture"):
            path = result_path(self.bus.directory, name)
            if path.exists():
                counters = json.loads(path.read_text())
                if counters.get("peak_rss_mb") is not None:
                    peaks[name] = counters["peak_rss_mb"]
                result.update({k: v for k, v in counters.items() if k not in result})
        # peak_rss_mb stays the check-in's (models, roster: what grows with a room); the
        # whole gate is the sum, an upper bound since the workers share library pages.
        result["peak_rss_mb_by_worker"] = peaks
        result["peak_rss_mb_all_workers"] = round(sum(peaks.values()), 1)
        result["restarts"] = {name: max(w.starts - 1, 0) for name, w in self.workers.items()}
        if self.refused is not None:
            result["refused_by"] = self.refused[0]
        return result


def run_supervised(config_path: Path, stop: threading.Event | None = None,
                   verbose: bool = False) -> dict[str, Any]:
    """Run the gate as four supervised processes until stopped (SIGTERM) or a replay ends."""
    from device.processes import stop_on_signals

    stop = stop or threading.Event()
    stop_on_signals(stop)
    supervisor = Supervisor(config_path, verbose)
    result = supervisor.run(stop)
    log.info("stopped: %s", result)
    return result
