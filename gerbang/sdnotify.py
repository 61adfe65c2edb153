"""systemd notification (``sd_notify``) without a dependency: READY, WATCHDOG pets, STATUS.

With ``Type=notify`` and ``WatchdogSec=`` in the unit, systemd restarts a service that stops
petting. Gerbang pets only from the place that proves progress (the check-in loop after each
frame), so a hung camera or a stuck interpreter is restarted, not just a dead process.
Outside systemd (no ``NOTIFY_SOCKET``) every call is a no-op.
"""

from __future__ import annotations

import os
import socket
import time


class SystemdNotifier:
    """Sends datagrams to ``$NOTIFY_SOCKET``; pets are rate-limited to half the watchdog."""

    def __init__(self) -> None:
        self.address = os.environ.get("NOTIFY_SOCKET")
        if self.address and self.address.startswith("@"):
            self.address = "\0" + self.address[1:]  # abstract namespace socket
        usec = os.environ.get("WATCHDOG_USEC")
        self.pet_interval = int(usec) / 2e6 if usec and usec.isdigit() else None
        self._last_pet = 0.0

    @property
    def active(self) -> bool:
        """Whether systemd is listening."""
        return bool(self.address)

    def notify(self, state: str) -> None:
        """Send one notification line (e.g. ``READY=1``, ``STATUS=...``)."""
        if not self.address:
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(self.address)
            sock.sendall(state.encode())

    def ready(self, status: str = "") -> None:
        """Start-up finished: models verified, roster loaded, pins claimed."""
        self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def pet(self) -> None:
        """Progress was made; tell the watchdog (at most twice per watchdog period)."""
        if self.pet_interval is None:
            return
        now = time.monotonic()
        if now - self._last_pet >= self.pet_interval:
            self._last_pet = now
            self.notify("WATCHDOG=1")

    def stopping(self) -> None:
        """Shutdown started (so systemd does not count the exit as a crash)."""
        self.notify("STOPPING=1")
