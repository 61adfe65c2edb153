"""The door hardware on gpiozero MockFactory pins, driven and read the way the wiring would.

Default wiring (GpioConfig): relay 17; RGB LED 22/27/23; buzzer 24; door reed switch 5 and
tamper switch 26 to ground (closed = low when shut, high when opened); exit button 6 and
override key 16 to ground (low when pressed/turned). Timers are short so the file runs fast.
"""

from __future__ import annotations

import math
import threading
import time

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory

from device.config import GpioConfig, parse_device_config
from device.gate.gate import Gate
from device.gate.status import BLUE, GREEN, OFF, RED, WHITE, YELLOW
from device.gate.switch import Switch
from gerbang.config import ConfigError

PULSE = 0.2
HELD_OPEN = 0.35
GRACE = 0.3
SLACK = 0.15  # how late a timer may fire on a loaded machine (never early)
RELAY, RED_PIN, GREEN_PIN, BLUE_PIN, BUZZER = 17, 22, 27, 23, 24
CONTACT, EXIT, OVERRIDE, TAMPER = 5, 6, 16, 26


@pytest.fixture
def mock_pins():
    Device.pin_factory = MockFactory()
    yield Device.pin_factory
    Device.pin_factory.reset()


@pytest.fixture
def events():
    """What the gate reported, in order."""
    return []


@pytest.fixture
def make_gate(mock_pins, events):
    """Build gates with fast timings, reporting to ``events``."""
    gates = []

    def make(**overrides):
        config = GpioConfig(**{"relay_pulse_s": PULSE, "held_open_s": HELD_OPEN,
                               "open_grace_s": GRACE, **overrides})
        gates.append(Gate(config, on_event=events.append))
        return gates[-1]

    yield make
    for gate in gates:
        gate.close()


@pytest.fixture
def gate(make_gate):
    return make_gate()


def pin(n):
    return Device.pin_factory.pin(n)


def open_door():
    pin(CONTACT).drive_high()  # the magnet leaves the reed switch: contact breaks, pull-up wins


def shut_door():
    pin(CONTACT).drive_low()


def press(n):
    pin(n).drive_low()
    pin(n).drive_high()


def kinds(events):
    return [e.kind for e in events]


def periods(mock_pin, level):
    """How long the pin stayed at ``level`` each time since its history was last cleared
    (a period still under way counts as infinite)."""
    states = mock_pin.states
    return [states[i + 1].timestamp if i + 1 < len(states) else math.inf
            for i, s in enumerate(states) if s.state is level]


def wait_until(condition, timeout=2.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def colour():
    return (int(pin(RED_PIN).state), int(pin(GREEN_PIN).state), int(pin(BLUE_PIN).state))


def colours_seen(duration):
    seen = set()
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        seen.add(colour())
        time.sleep(0.005)
    return seen


# --- lock relay -------------------------------------------------------------------------------

@pytest.mark.parametrize("fail_safe", [False, True], ids=["fail_secure", "fail_safe"])
@pytest.mark.parametrize("active_high", [True, False], ids=["active_high", "active_low"])
def test_lock_releases_for_one_pulse_then_relocks_by_itself(make_gate, fail_safe, active_high):
    gate = make_gate(fail_safe=fail_safe, relay_active_high=active_high)
    # Fail-secure: energised releases. Fail-safe: energised holds the lock, so a pulse drops it.
    released = active_high != fail_safe
    relay = pin(RELAY)
    assert relay.state is not released and not gate.unlocked
    relay.clear_states()
    gate.grant()
    assert relay.state is released and gate.unlocked
    wait_until(lambda: relay.state is not released)
    assert not gate.unlocked
    (held,) = periods(relay, released)
    assert PULSE - 0.01 <= held <= PULSE + SLACK


@pytest.mark.parametrize("fail_safe", [False, True], ids=["fail_secure", "fail_safe"])
def test_stopping_leaves_relay_de_energised(make_gate, fail_safe):
    """Stopped service = dropped relay: locked when fail-secure, released when fail-safe."""
    gate = make_gate(fail_safe=fail_safe)
    relay = pin(RELAY)
    assert relay.state is fail_safe  # at rest: energised only to hold a fail-safe lock
    gate.grant()
    gate.close()
    assert relay.state is False


def test_relocks_on_its_own_timer_while_the_caller_hangs(gate):
    hung = threading.Event()

    def checkin_loop():
        gate.grant()
        hung.wait()  # the loop that asked for the pulse never comes back

    caller = threading.Thread(target=checkin_loop, daemon=True)
    caller.start()
    wait_until(lambda: gate.unlocked)
    wait_until(lambda: not gate.unlocked, timeout=PULSE + SLACK + 0.05)
    assert caller.is_alive()
    hung.set()


def test_repeated_grants_extend_from_the_last_one_only(gate):
    relay = pin(RELAY)
    relay.clear_states()
    first = time.monotonic()
    for _ in range(5):
        last = time.monotonic()
        gate.grant()
        time.sleep(PULSE / 2)
    wait_until(lambda: not gate.unlocked)
    (held,) = periods(relay, True)  # one continuous release, no gap between grants
    expected = last - first + PULSE
    assert expected - 0.02 <= held <= expected + SLACK


def test_refusal_and_status_never_touch_the_lock(gate):
    relay = pin(RELAY)
    relay.clear_states()
    gate.refuse()
    for state in ("look_at_camera", "offline", "ready", "refused"):
        gate.show(state)
    time.sleep(0.3)
    assert periods(relay, True) == [] and not gate.unlocked


# --- door contact, exit button, override key, tamper ------------------------------------------

def test_gate_starts_locked_ready_and_quiet(gate, events):
    assert not gate.unlocked and not gate.door_open
    assert colour() == BLUE and pin(BUZZER).state is False
    time.sleep(HELD_OPEN + 0.1)
    assert events == []


def test_opening_while_locked_is_forced(gate, events):
    open_door()
    assert kinds(events) == ["door_forced"] and events[0].is_alarm
    shut_door()
    assert kinds(events) == ["door_forced", "alarm_cleared"]
    assert events[1].details["alarm"] == "door_forced" and not events[1].is_alarm
    assert events[0].ts <= events[1].ts


def test_granted_opening_raises_nothing(gate, events):
    gate.grant()
    open_door()
    time.sleep(0.1)
    shut_door()
    time.sleep(HELD_OPEN + 0.1)  # the held-open timer of that opening must be gone
    assert events == []


def test_opening_as_the_pulse_ends_is_allowed_but_not_after_the_grace(gate, events):
    gate.grant()
    wait_until(lambda: not gate.unlocked)
    open_door()  # pushed just as the lock re-engaged
    shut_door()
    assert events == []
    time.sleep(GRACE + 0.1)
    open_door()
    assert kinds(events) == ["door_forced"]


def test_exit_button_releases_the_lock_and_excuses_the_opening(gate, events):
    press(EXIT)
    assert kinds(events) == ["exit_request"] and gate.unlocked
    open_door()
    shut_door()
    assert kinds(events) == ["exit_request"]
    wait_until(lambda: not gate.unlocked, timeout=PULSE + SLACK)


def test_door_held_open_alarm_then_cleared(gate, events):
    gate.grant()
    open_door()
    time.sleep(HELD_OPEN - 0.15)
    assert events == []  # not yet
    wait_until(lambda: events, timeout=0.15 + SLACK)
    assert kinds(events) == ["door_held_open"] and events[0].is_alarm
    assert events[0].details["open_s"] == HELD_OPEN
    shut_door()
    assert kinds(events) == ["door_held_open", "alarm_cleared"]
    assert events[1].details["alarm"] == "door_held_open"
    assert events[1].details["open_s"] >= HELD_OPEN


def test_override_key_opens_and_is_recorded(gate, events):
    pin(OVERRIDE).drive_low()  # proctor turns the key
    assert kinds(events) == ["manual_override"] and gate.unlocked
    assert events[0].details == {"source": "key"} and not events[0].is_alarm
    open_door()
    shut_door()
    pin(OVERRIDE).drive_high()
    assert kinds(events) == ["manual_override"]
    wait_until(lambda: not gate.unlocked, timeout=PULSE + SLACK)


def test_tamper_alarm_then_cleared(gate, events):
    pin(TAMPER).drive_high()  # enclosure lid lifted off its switch
    assert kinds(events) == ["tamper"] and events[0].is_alarm
    pin(TAMPER).drive_low()
    assert kinds(events) == ["tamper", "alarm_cleared"]
    assert events[1].details == {"alarm": "tamper"}
    assert not gate.unlocked


def test_a_failing_event_callback_does_not_break_the_door(mock_pins):
    def broken(event):
        raise RuntimeError("uplink down")

    gate = Gate(GpioConfig(relay_pulse_s=PULSE, held_open_s=HELD_OPEN), on_event=broken)
    try:
        open_door()  # door_forced reaches the broken callback
        press(EXIT)
        assert gate.unlocked
        wait_until(lambda: not gate.unlocked, timeout=PULSE + SLACK)
    finally:
        gate.close()


@pytest.mark.parametrize(("pull", "active", "on_level"), [
    ("up", "low", False), ("up", "high", True), ("down", "high", True),
    ("down", "low", False), ("none", "high", True), ("none", "low", False)])
def test_switch_is_on_at_its_active_level_whatever_the_pull(mock_pins, pull, active, on_level):
    switch = Switch(CONTACT, pull, active)
    calls = []
    switch.when_activated = lambda: calls.append("on")
    switch.when_deactivated = lambda: calls.append("off")
    try:
        assert not switch.is_active  # unwired mock pins rest off
        drive = {True: pin(CONTACT).drive_high, False: pin(CONTACT).drive_low}
        drive[on_level]()
        assert switch.is_active and calls == ["on"]
        drive[not on_level]()
        assert not switch.is_active and calls == ["on", "off"]
    finally:
        switch.close()


# --- status light and buzzer ------------------------------------------------------------------

@pytest.mark.parametrize(("state", "colours", "beeps", "watch_s", "rests_after_s"), [
    ("ready", {BLUE}, (), 0.3, None),
    ("look_at_camera", {WHITE, OFF}, (), 0.35, None),
    ("challenge", {WHITE, OFF}, (0.08, 0.08), 0.5, None),
    ("accepted", {GREEN}, (0.15,), 0.3, None),
    ("refused", {RED, OFF}, (0.2, 0.2, 0.2), 1.1, 1.2),
    ("offline", {YELLOW, OFF}, (), 1.2, None),
])
def test_status_pattern(gate, state, colours, beeps, watch_s, rests_after_s):
    pin(BUZZER).clear_states()
    shown = time.monotonic()
    gate.show(state)
    assert colour() == max(colours)  # the on-colour shows at once, before any blink phase
    assert colours_seen(watch_s) == colours
    heard = periods(pin(BUZZER), True)
    assert len(heard) == len(beeps)
    for got, want in zip(heard, beeps, strict=True):
        assert want - 0.02 <= got <= want + 0.1
    if rests_after_s:
        wait_until(lambda: colour() == BLUE, timeout=1.0)
        assert rests_after_s - 0.02 <= time.monotonic() - shown <= rests_after_s + SLACK


def test_grant_shows_green_for_the_pulse_then_the_resting_state(gate):
    gate.show("offline")
    gate.grant()
    assert colour() == GREEN
    wait_until(lambda: not gate.unlocked)
    wait_until(lambda: colour() == YELLOW, timeout=0.1)  # green lasted the pulse, no longer


def test_repeating_look_at_camera_keeps_blinking(gate):
    """A loop showing it every frame must not restart the blink (which would look steady)."""
    seen = set()
    deadline = time.monotonic() + 0.45
    while time.monotonic() < deadline:
        gate.show("look_at_camera")
        seen |= colours_seen(0.03)
    assert seen == {WHITE, OFF}


def test_unknown_state_is_refused(gate):
    with pytest.raises(ValueError, match="look_at_camera"):
        gate.show("welcome")


# --- pin map validation -----------------------------------------------------------------------

GOOD = {"gate": {"device_id": "c1-r01-a", "centre": "c1", "room": "R01", "session": "S1"},
        "capture": {"source": "replay", "path": "/tmp"}}


def with_gpio(**gpio):
    return {**GOOD, "gpio": gpio}


@pytest.mark.parametrize(("gpio", "field"), [
    ({"blue_pin": 1}, "gpio.blue_pin"),
    ({"buzzer_pin": 28}, "gpio.buzzer_pin"),
    ({"door_contact": {"pin": 40, "pull": "up", "active": "high"}}, "gpio.door_contact.pin"),
    ({"exit_button": {"pin": 6, "pull": "sideways", "active": "low"}}, "gpio.exit_button.pull"),
    ({"override_key": {"pin": 16, "pull": "up", "active": "on"}}, "gpio.override_key.active"),
    ({"override_key": {"pin": 16, "pull": "up"}}, "gpio.override_key.active"),
    ({"exit_button": {"pin": 2, "pull": "none", "active": "low"}}, "gpio.exit_button.pull"),
    ({"tamper": {"pin": 26, "pull": "up", "active": "high", "bounce_s": 5}},
     "gpio.tamper.bounce_s"),
    ({"door_contact": 5}, "gpio.door_contact"),
    ({"relay_pulse_s": 0.05}, "gpio.relay_pulse_s"),
    ({"relay_pulse_s": 5.0, "held_open_s": 4.0}, "gpio.held_open_s"),
    ({"open_grace_s": -1}, "gpio.open_grace_s"),
    ({"fail_safe": "yes"}, "gpio.fail_safe"),
    ({"led_active_high": 0}, "gpio.led_active_high"),
])
def test_bad_pin_map_is_refused_naming_the_field(gpio, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.") + ":"):
        parse_device_config(with_gpio(**gpio))


@pytest.mark.parametrize(("gpio", "first", "second"), [
    ({"tamper": {"pin": 17, "pull": "up", "active": "high"}}, "relay_pin", "tamper.pin"),
    ({"exit_button": {"pin": 5, "pull": "up", "active": "low"}},
     "door_contact.pin", "exit_button.pin"),
    ({"buzzer_pin": 27}, "green_pin", "buzzer_pin"),
])
def test_pin_used_twice_names_both_uses(gpio, first, second):
    with pytest.raises(ConfigError) as err:
        parse_device_config(with_gpio(**gpio))
    assert str(err.value).startswith(f"gpio.{first}: ") and second in str(err.value)


def test_switch_table_from_toml_keeps_its_wiring(mock_pins):
    config = parse_device_config(with_gpio(
        relay_active_high=False, fail_safe=True,
        door_contact={"pin": 12, "pull": "down", "active": "low"})).gpio
    gate = Gate(config)
    try:
        assert pin(RELAY).state is False  # active-low board, energised to hold a fail-safe lock
        pin(12).drive_low()  # this contact pulls down and reads low when the door opens
        assert gate.door_open
    finally:
        gate.close()
