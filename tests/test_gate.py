"""Door signal on gpiozero MockFactory pins, read back the way the wiring would see them."""

from __future__ import annotations

import time

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory

from device.gate.door import DoorSignal


@pytest.fixture
def door():
    Device.pin_factory = MockFactory()
    signal = DoorSignal(relay_pin=17, green_pin=27, red_pin=22, pulse_s=0.5)
    yield signal
    signal.close()
    Device.pin_factory.reset()


def pin(n):
    return Device.pin_factory.pin(n)


def test_grant_pulses_relay_then_relocks_by_itself(door):
    assert pin(17).state is False
    door.grant()
    assert pin(17).state is True and pin(27).state is True
    time.sleep(0.2)
    assert door.unlocked
    time.sleep(1.0)  # generous: a loaded CI machine may run the timer late, never early
    assert pin(17).state is False and not door.unlocked
    assert pin(27).state is False


def test_refusal_never_energises_the_relay(door):
    door.refuse()
    seen = set()
    deadline = time.monotonic() + 1.3
    while time.monotonic() < deadline:
        seen.add(pin(17).state)
        time.sleep(0.01)
    assert seen == {False}
    assert pin(22).state is False  # red blinked three times and stopped


def test_grant_during_pulse_extends_rather_than_cuts_it(door):
    door.grant()
    time.sleep(0.3)
    started_second = time.monotonic()
    door.grant()
    time.sleep(0.3)  # 0.6 s after the first grant: past its pulse, within the second one
    if time.monotonic() - started_second < 0.5:  # only meaningful if we woke in time
        assert door.unlocked
    time.sleep(1.0)
    assert not door.unlocked


def test_active_low_relay(door):
    low = DoorSignal(relay_pin=5, green_pin=6, red_pin=13, pulse_s=0.5, relay_active_high=False)
    try:
        assert pin(5).state is True  # idle high = relay off for an active-low board
        low.grant()
        assert pin(5).state is False
    finally:
        low.close()
