"""The lock relay: released only in timed pulses that end on the relay's own timer."""

from __future__ import annotations

import math
import threading
import time

from gpiozero import OutputDevice


class LockRelay:
    """Releases the door lock for ``pulse_s`` seconds at a time, then locks it again by itself.

    The pulse ends on this object's own timer, so whatever happens to the caller afterwards
    (an exception, a hung loop, a dead thread) the lock re-engages. A ``release()`` during a
    pulse restarts it: the lock is never released for longer than ``pulse_s`` after the last
    request.

    Relay polarity follows the lock type:

    - ``fail_safe=False`` (fail-secure, the default; electric strike or bolt that locks when
      unpowered): the relay is energised only during a pulse. When the service stops, crashes
      to a released pin, or the Pi loses power, the relay drops and the door stays locked.
    - ``fail_safe=True`` (where fire regulations require it; typically a maglock on the
      relay's normally-open contact): the relay is energised to *hold* the lock and a pulse
      de-energises it. When the service stops or the Pi loses power, the relay drops and the
      door is released, and it stays released until the service starts again.

    ``active_high=False`` is for relay boards energised by a low pin; it changes the pin level,
    not the meaning above. One caveat for both: a process killed by SIGKILL leaves the pin as
    it was last driven until something drives it again (the service's restart does, at start).
    """

    def __init__(self, pin: int, pulse_s: float = 3.0, *, active_high: bool = True,
                 fail_safe: bool = False) -> None:
        if pulse_s <= 0:
            raise ValueError(f"pulse_s must be positive, got {pulse_s}")
        self.pulse_s = pulse_s
        self.fail_safe = fail_safe
        # Energised = locked in fail-safe wiring, released in fail-secure: start locked.
        self._relay = OutputDevice(pin, active_high=active_high, initial_value=fail_safe)
        self._mutex = threading.Lock()
        self._timer: threading.Timer | None = None
        # Pulse number: a timer that fires while release() is restarting the pulse must not end
        # the new pulse (cancel() cannot stop a timer that has already started running).
        self._pulse = 0
        self._locked_at = -math.inf  # monotonic time the lock last re-engaged

    def release(self) -> None:
        """Release the lock for ``pulse_s`` seconds from now (restarting any pulse under way)."""
        with self._mutex:
            self._stop_timer()
            self._relay.value = not self.fail_safe
            self._timer = threading.Timer(self.pulse_s, self._end_pulse, args=(self._pulse,))
            self._timer.daemon = True
            self._timer.start()

    def lock(self) -> None:
        """End any pulse now."""
        with self._mutex:
            self._stop_timer()
            self._engage()

    @property
    def released(self) -> bool:
        """Whether the lock is released right now."""
        return bool(self._relay.value) != self.fail_safe

    @property
    def seconds_locked(self) -> float:
        """Seconds since the lock last re-engaged: 0 while released, infinite if never released."""
        with self._mutex:
            return 0.0 if self.released else time.monotonic() - self._locked_at

    def close(self) -> None:
        """De-energise the relay and free the pin: locked if fail-secure, released if fail-safe."""
        with self._mutex:
            self._stop_timer()
            self._relay.off()
            self._relay.close()

    def _stop_timer(self) -> None:
        self._pulse += 1
        if self._timer:
            self._timer.cancel()
            self._timer = None

    def _end_pulse(self, pulse: int) -> None:
        with self._mutex:
            if pulse == self._pulse:
                self._timer = None
                self._engage()

    def _engage(self) -> None:
        if self.released:
            self._relay.value = self.fail_safe
            self._locked_at = time.monotonic()
