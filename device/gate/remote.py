"""The door as seen from another process: grant/refuse/show sent to the gate process."""

from __future__ import annotations

import logging
import time

from device import bus as busmod
from device.bus import Bus

log = logging.getLogger(__name__)


class RemoteDoor:
    """A :class:`~device.gate.door.Door` whose lock and lights live in the gate process.

    Sending never blocks the check-in loop. If the gate process is not there (restarting), the
    message is refused at once and logged: the decision is already recorded, the door stays
    locked, and the applicant presents again. The gate process re-locks on its own timer, so
    nothing sent here can hold the door open.
    """

    def __init__(self, bus: Bus) -> None:
        self._sock = busmod.sender(bus, busmod.DOOR)
        self.unsent = 0

    def _send(self, op: str, **fields: object) -> None:
        if not busmod.send_json(self._sock, {"op": op, "sent": time.monotonic(), **fields}):
            self.unsent += 1
            log.error("gate process not reachable: %s not sent (door stays locked)", op)

    def grant(self) -> None:
        """Ask the gate process to release the lock for one pulse."""
        self._send("grant")

    def refuse(self) -> None:
        """Ask the gate process to show refusal."""
        self._send("refuse")

    def show(self, state: str) -> None:
        """Ask the gate process to show ``state`` on the status light."""
        self._send("show", state=state)

    def close(self) -> None:
        """Close the socket."""
        self._sock.close()
