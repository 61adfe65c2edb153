"""The gate as separate processes over ZeroMQ: capture, check-in, gate controller, uplink.

Each runs as ``gerbang-device worker NAME --config FILE`` under the supervisor
(:mod:`device.processes.supervisor`, what ``gerbang-device run`` starts), which restarts any
that dies. Why processes: a crash or hang in the camera driver or inference cannot stop the
door re-locking or the outbox draining, and each can be killed and restarted alone without
losing a recorded decision (see :mod:`device.bus` for what flows where). May import every
device package but tools and cli; the gate, uplink and capture workers load no OpenCV or TFLite.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from pathlib import Path
from typing import Any

from gerbang.files import write_atomic

log = logging.getLogger(__name__)

#: Worker names, in start order: the door is locked before anything else starts, the uplink
#: drains old events while the models load, and the camera starts last.
WORKERS = ("gate", "uplink", "checkin", "capture")


def workers_of(supervisor_pid: int) -> dict[str, int]:
    """``{worker name: pid}`` of a supervisor's live workers, read from /proc (Linux): for
    tests, the rehearsal and a technician's scripts that must find one worker to inspect."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile, or not ours to read
        if ppid == supervisor_pid and b"worker" in argv[:-1]:
            found[argv[argv.index(b"worker") + 1].decode()] = int(entry.name)
    return found


def stop_on_signals(stop: threading.Event) -> None:
    """Set ``stop`` on SIGTERM and SIGINT (only possible from the main thread)."""
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())


def result_path(bus_directory: Path, worker: str) -> Path:
    """Where a worker leaves its counters when it stops cleanly."""
    return Path(bus_directory) / f"{worker}.result.json"


def write_result(bus_directory: Path, worker: str, result: dict[str, Any]) -> None:
    """Leave the worker's counters for the supervisor's summary."""
    write_atomic(result_path(bus_directory, worker), json.dumps(result).encode())
