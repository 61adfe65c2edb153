"""The door signal: a timed lock-relay pulse plus green/red status LEDs."""

from __future__ import annotations

import threading

from gpiozero import LED, OutputDevice


class DoorSignal:
    """Opens the door for ``pulse_s`` on a grant and shows the result on the LEDs.

    The relay is switched off by its own timer, so whatever happens to the caller afterwards the
    lock re-engages (fail-secure). Showing a refusal never touches the relay.
    """

    def __init__(self, relay_pin: int, green_pin: int, red_pin: int, pulse_s: float = 3.0,
                 relay_active_high: bool = True) -> None:
        self.relay = OutputDevice(relay_pin, active_high=relay_active_high, initial_value=False)
        self.green = LED(green_pin)
        self.red = LED(red_pin)
        self.pulse_s = pulse_s
        self._lock = threading.Lock()  # one pulse at a time: a grant during a pulse extends it
        self._timer: threading.Timer | None = None

    def grant(self) -> None:
        """Unlock for ``pulse_s`` seconds and show green."""
        with self._lock:
            if self._timer:
                self._timer.cancel()
            self.red.off()
            self.relay.on()
            self.green.on()
            self._timer = threading.Timer(self.pulse_s, self._relock)
            self._timer.daemon = True
            self._timer.start()

    def refuse(self) -> None:
        """Flash red (three blinks); the door stays locked."""
        self.green.off()
        self.red.blink(on_time=0.2, off_time=0.2, n=3)

    def _relock(self) -> None:
        with self._lock:
            self.relay.off()
            self.green.off()
            self._timer = None

    @property
    def unlocked(self) -> bool:
        """Whether the lock relay is energised right now."""
        return bool(self.relay.value)

    def close(self) -> None:
        """Lock and release the pins."""
        with self._lock:
            if self._timer:
                self._timer.cancel()
        self.relay.off()
        for dev in (self.relay, self.green, self.red):
            dev.close()
