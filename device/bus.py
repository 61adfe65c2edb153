"""The device's message bus: ZeroMQ ``ipc://`` sockets between its processes, and their messages.

A gate runs four worker processes (see :mod:`device.processes`), and data flows one way:

====================  ===========  =====================  =============================
socket                pattern      from → to              carries
====================  ===========  =====================  =============================
``frames``            PUB/SUB      capture → check-in     frames, newest wins (CONFLATE)
``credits``           PUSH/PULL    check-in → capture     "send frame n" (paced replay)
``door``              PUSH/PULL    check-in, uplink →     grant / refuse / show
                                   gate
``uplink``            PUSH/PULL    check-in, gate →       "the outbox has a new event"
                                   uplink
``commands``          REQ/REP      uplink → check-in      gateway commands needing the
                                                          roster or models; the result
``checkin-status``    PUB/SUB      check-in → uplink,     progress, counters, models and
                                   supervisor             roster in use
``uplink-status``     PUB/SUB      uplink → check-in,     broker connected or not (also
                                   supervisor             the uplink's heartbeat)
``supervisor``        PUSH/PULL    uplink → supervisor    "restart the workers" (config
                                                          pushed)
``gate-status``       PUB/SUB      gate → supervisor      heartbeat of the gate controller
====================  ===========  =====================  =============================

Decisions never travel on the bus: the check-in process commits each one to the SQLite outbox
(fsync) before it asks the gate process to open, so a process dying between two messages loses
a door opening at worst, never a record. Every message is one ZeroMQ frame (CONFLATE does not
support multipart messages): a JSON object, or for frames a JSON header then the pixels.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import zmq

FRAMES = "frames"
CREDITS = "credits"
DOOR = "door"
UPLINK = "uplink"
COMMANDS = "commands"
CHECKIN_STATUS = "checkin-status"
UPLINK_STATUS = "uplink-status"
SUPERVISOR = "supervisor"
GATE_STATUS = "gate-status"

#: A grant older than this when the gate process reads it is dropped, not acted on: it was
#: queued while the gate process restarted, and the applicant it was for has moved on; opening
#: the door now would open it for whoever stands there (fail-secure).
GRANT_STALE_S = 2.0



def bus_dir(data_dir: Path) -> Path:
    """Where this gate's sockets live: systemd's ``RuntimeDirectory`` (``/run/gerbang``) when
    set, else a private directory in /tmp named after the data directory.

    Not in the data directory itself: ipc:// paths must stay under the kernel's 107-byte
    limit for Unix socket names, and sockets do not belong on the SD card's data partition.
    """
    runtime = os.environ.get("RUNTIME_DIRECTORY")
    if runtime:
        base = Path(runtime.split(":")[0])
    else:
        key = hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:12]
        base = Path(tempfile.gettempdir()) / f"gerbang-{key}"
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    return base


class Bus:
    """The addresses of one gate's sockets, and a ZeroMQ context to make them with."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.context = zmq.Context.instance()

    def address(self, name: str) -> str:
        """``ipc://…/name`` for one of the socket names of this module."""
        return f"ipc://{self.directory / name}"

    def bind(self, kind: int, name: str, **options: Any) -> zmq.Socket:
        """A socket of ``kind`` bound to ``name`` (the receiving or publishing end)."""
        sock = self._socket(kind, options)
        path = self.directory / name
        if path.exists():  # left by a killed process: a new bind would fail with EADDRINUSE
            path.unlink()
        sock.bind(self.address(name))
        return sock

    def connect(self, kind: int, name: str, **options: Any) -> zmq.Socket:
        """A socket of ``kind`` connected to ``name`` (works before the other end binds)."""
        sock = self._socket(kind, options)
        sock.connect(self.address(name))
        return sock

    def _socket(self, kind: int, options: dict[str, Any]) -> zmq.Socket:
        sock = self.context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)  # a stopping process never hangs on unsent messages
        for option, value in options.items():
            sock.setsockopt(getattr(zmq, option), value)
        if kind == zmq.SUB:
            sock.setsockopt(zmq.SUBSCRIBE, b"")
        return sock


def newest_wins_publisher(bus: Bus, name: str) -> zmq.Socket:
    """A PUB socket that keeps only the latest message for each subscriber."""
    return bus.bind(zmq.PUB, name, CONFLATE=1, SNDHWM=1)


def newest_wins_subscriber(bus: Bus, name: str) -> zmq.Socket:
    """A SUB socket that holds only the latest message received (older ones are replaced)."""
    return bus.connect(zmq.SUB, name, CONFLATE=1, RCVHWM=1)


def sender(bus: Bus, name: str) -> zmq.Socket:
    """A PUSH socket to ``name`` that never queues for a peer that is not there: a message for
    a process that is restarting is refused at once (see :func:`send_json`), not delivered
    late."""
    return bus.connect(zmq.PUSH, name, IMMEDIATE=1, SNDHWM=100)


def send_json(sock: zmq.Socket, message: dict[str, Any]) -> bool:
    """Send without blocking; False when no peer can take it now."""
    try:
        sock.send(json.dumps(message, separators=(",", ":")).encode(), zmq.NOBLOCK)
        return True
    except zmq.Again:
        return False


def recv_json(sock: zmq.Socket, timeout_ms: int) -> dict[str, Any] | None:
    """The next message within ``timeout_ms``, or None. A message that is not a JSON object
    is dropped (only this device's own processes can reach these sockets)."""
    if not sock.poll(timeout_ms):
        return None
    try:
        message = json.loads(sock.recv(zmq.NOBLOCK))
    except (zmq.Again, ValueError):
        return None
    return message if isinstance(message, dict) else None
