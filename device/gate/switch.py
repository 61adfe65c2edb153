"""A switch input: reed door contact, push button, key switch or tamper switch."""

from __future__ import annotations

from collections.abc import Callable

from gpiozero import DigitalInputDevice

from device.gate.pins import rest_mock_pin


class Switch:
    """A contact read as on or off, whatever its wiring.

    ``pull`` is the resistor holding the line while the contact is open (``"up"``, ``"down"``,
    or ``"none"`` for a board's own resistor) and ``active`` the level that means *on* (door
    open, pressed, key turned, enclosure open). gpiozero ties the active level to the pull
    (pull-up means active low); this class allows any pairing, because a reed switch to ground
    that breaks when the door opens reads *high* for "on".

    On gpiozero's MockFactory, where nothing is wired, the switch starts off (door shut,
    nothing pressed), as a healthy installation reads.
    """

    def __init__(self, pin: int, pull: str = "up", active: str = "low",
                 bounce_s: float = 0.05) -> None:
        if pull not in ("up", "down", "none") or active not in ("high", "low"):
            raise ValueError(f"pull must be up/down/none and active high/low, got {pull}/{active}")
        pull_up = {"up": True, "down": False, "none": None}[pull]
        self._device = DigitalInputDevice(
            pin, pull_up=pull_up, active_state=(active == "high") if pull_up is None else None,
            bounce_time=bounce_s or None)
        # gpiozero's "active" is the level opposite the pull; ours may be the pull's own level.
        self._inverted = pull_up is not None and (active == "high") == pull_up
        rest_mock_pin(self._device.pin, high=(active == "low"))
        self.when_activated: Callable[[], None] | None = None
        self.when_deactivated: Callable[[], None] | None = None
        self._device.when_activated = lambda: self._fire(not self._inverted)
        self._device.when_deactivated = lambda: self._fire(self._inverted)

    @property
    def is_active(self) -> bool:
        """Whether the switch is on (door open, pressed, key turned, enclosure open)."""
        return self._device.is_active != self._inverted

    def close(self) -> None:
        """Stop callbacks and free the pin."""
        self.when_activated = self.when_deactivated = None
        self._device.close()

    def _fire(self, on: bool) -> None:
        callback = self.when_activated if on else self.when_deactivated
        if callback:
            callback()
