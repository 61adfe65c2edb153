"""What the check-in loop needs from a door, and the minimal door (relay + two LEDs)."""

from __future__ import annotations

from typing import Protocol

from gpiozero import LED

from device.gate.lock import LockRelay


class Door(Protocol):
    """A door the check-in loop can open or refuse: :class:`device.gate.gate.Gate` on the full
    hardware, :class:`DoorSignal` on the minimal one."""

    def grant(self) -> None:
        """Release the lock for one pulse and show acceptance."""

    def refuse(self) -> None:
        """Show refusal; the door stays locked."""


class DoorSignal:
    """The minimal door: a lock relay pulse plus green and red LEDs (no contacts, no buzzer).

    For gates wired without switches and for check-in tests; the service drives the full
    :class:`~device.gate.gate.Gate`. The relay re-locks on its own timer (see LockRelay).
    """

    def __init__(self, relay_pin: int, green_pin: int, red_pin: int, pulse_s: float = 3.0,
                 relay_active_high: bool = True) -> None:
        self.lock = LockRelay(relay_pin, pulse_s, active_high=relay_active_high)
        self.green = LED(green_pin)
        self.red = LED(red_pin)
        self.pulse_s = pulse_s

    def grant(self) -> None:
        """Unlock for ``pulse_s`` seconds and show green for as long."""
        self.red.off()
        self.lock.release()
        self.green.on()  # now, not when the blink thread first runs
        self.green.blink(on_time=self.pulse_s, off_time=0, n=1)  # off again after the pulse

    def refuse(self) -> None:
        """Flash red (three blinks); the door stays locked."""
        self.green.off()
        self.red.blink(on_time=0.2, off_time=0.2, n=3)

    @property
    def unlocked(self) -> bool:
        """Whether the lock relay is released right now."""
        return self.lock.released

    def close(self) -> None:
        """Lock and release the pins."""
        self.lock.close()
        self.green.close()
        self.red.close()
