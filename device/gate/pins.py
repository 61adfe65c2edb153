"""Choosing gpiozero's pin factory: real pins on a Pi, MockFactory everywhere else."""

from __future__ import annotations

import logging
from pathlib import Path

from gpiozero import Device, Pin

log = logging.getLogger(__name__)


def on_raspberry_pi() -> bool:
    """True when the device tree says this is a Raspberry Pi."""
    try:
        return "raspberry pi" in Path("/proc/device-tree/model").read_text().lower()
    except OSError:
        return False


def use_pin_factory(kind: str = "auto") -> str:
    """Set gpiozero's default pin factory; returns the name chosen.

    ``auto`` means the Pi's own pins when on a Pi, otherwise MockFactory (with a warning, so a
    Pi that fails to detect itself is noticed rather than silently never opening the door).
    """
    if kind == "auto":
        kind = "native" if on_raspberry_pi() else "mock"
        if kind == "mock":
            log.warning("not a Raspberry Pi: GPIO uses gpiozero MockFactory (no real pins)")
    if kind == "mock":
        from gpiozero.pins.mock import MockFactory

        Device.pin_factory = MockFactory()
    elif kind != "native":
        raise ValueError(f"gpio.pin_factory must be auto, native or mock, got {kind!r}")
    return kind


def rest_mock_pin(pin: Pin, high: bool) -> None:
    """Drive an input pin to its resting level when it is a MockFactory pin (no-op otherwise).

    Mock pins have no wiring, so they float to whatever the pull gives; a demo gate would then
    start with its door contact and tamper switch reading "open" and raise alarms at once.
    """
    from gpiozero.pins.mock import MockPin

    if isinstance(pin, MockPin):
        if high:
            pin.drive_high()
        else:
            pin.drive_low()
