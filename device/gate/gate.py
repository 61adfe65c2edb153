"""The whole door: lock relay, door contact, exit button, override key, tamper switch, status.

Alarms and events leave through one callback receiving a :class:`GateEvent`:

==================  =====  =============================================================
kind                alarm  when
==================  =====  =============================================================
``door_forced``     yes    the door opened while locked, with no exit-button press and no
                           pulse ending within ``open_grace_s``
``door_held_open``  yes    the door stayed open ``held_open_s``
``tamper``          yes    the enclosure was opened (details ``at_start`` if it already was)
``alarm_cleared``   no     door shut after ``door_forced``/``door_held_open``, or enclosure
                           closed after ``tamper`` (details: ``alarm``, and ``open_s``)
``exit_request``    no     the inside exit button released the lock for one pulse
``manual_override`` no     the proctor's key released the lock for one pulse (who and why
                           are recorded later from the dashboard)
==================  =====  =============================================================
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from device.config import GpioConfig, SwitchConfig
from device.gate.lock import LockRelay
from device.gate.status import StatusIndicator
from device.gate.switch import Switch

log = logging.getLogger(__name__)

ALARMS = frozenset({"door_forced", "door_held_open", "tamper"})


@dataclass(frozen=True)
class GateEvent:
    """Something the door hardware reports: an alarm, its clearing, or a manual opening."""

    kind: str
    ts: float  # Unix time (time.time())
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def is_alarm(self) -> bool:
        """Whether this is one of :data:`ALARMS`."""
        return self.kind in ALARMS


class Gate:
    """The door at one exam room, built from the validated ``[gpio]`` config.

    ``grant()`` releases the lock for one pulse and shows ``accepted``; ``refuse()`` shows
    ``refused`` and never touches the lock; ``show(state)`` sets the status light (see
    :mod:`device.gate.status`). ``on_event`` receives every :class:`GateEvent` (each is also
    logged); it runs on gpiozero's and the gate's timer threads, so it must be quick and
    thread-safe. An exception in it is logged and does not disturb the door.
    """

    def __init__(self, config: GpioConfig,
                 on_event: Callable[[GateEvent], None] | None = None) -> None:
        self.config = config
        self.on_event = on_event
        self._mutex = threading.Lock()
        self._exit_at = -math.inf  # monotonic time of the last exit-button press
        self._opened_at: float | None = None  # monotonic time the door opened; None when shut
        self._opening = 0  # number of the current opening: a stale held-open timer checks it
        self._open_alarms: list[str] = []
        self._held_timer: threading.Timer | None = None
        self._devices: list[Any] = []
        try:
            self.lock = self._own(LockRelay(config.relay_pin, config.relay_pulse_s,
                                            active_high=config.relay_active_high,
                                            fail_safe=config.fail_safe))
            self.status = self._own(StatusIndicator(
                config.red_pin, config.green_pin, config.blue_pin, config.buzzer_pin,
                led_active_high=config.led_active_high,
                buzzer_active_high=config.buzzer_active_high))
            self.door_contact = self._own(_switch(config.door_contact))
            self.exit_button = self._own(_switch(config.exit_button))
            self.override_key = self._own(_switch(config.override_key))
            self.tamper = self._own(_switch(config.tamper))
        except Exception:
            self.close()
            raise
        self.door_contact.when_activated = self._door_opened
        self.door_contact.when_deactivated = self._door_shut
        self.exit_button.when_activated = self._exit_pressed
        self.override_key.when_activated = self._override_turned
        self.tamper.when_activated = lambda: self._emit("tamper")
        self.tamper.when_deactivated = lambda: self._emit("alarm_cleared", alarm="tamper")
        # A door already open at start was not seen opening: time it, but do not call it forced.
        if self.door_contact.is_active:
            self._door_opened(at_start=True)
        if self.tamper.is_active:
            self._emit("tamper", at_start=True)

    def grant(self) -> None:
        """Release the lock for one pulse and show ``accepted`` for as long."""
        self.lock.release()
        self.status.show("accepted", hold_s=self.lock.pulse_s)

    def refuse(self) -> None:
        """Show ``refused``; the door stays locked."""
        self.status.show("refused")

    def show(self, state: str) -> None:
        """Show a state on the status light and buzzer (``ready``, ``look_at_camera``,
        ``accepted``, ``refused``, ``offline``); ``grant``/``refuse`` do it for their own."""
        self.status.show(state)

    @property
    def unlocked(self) -> bool:
        """Whether the lock is released right now."""
        return self.lock.released

    @property
    def door_open(self) -> bool:
        """Whether the door contact reads open."""
        return self.door_contact.is_active

    def close(self) -> None:
        """Stop reading inputs, turn the status off and de-energise the relay (see LockRelay)."""
        with self._mutex:
            self._opening += 1
            if self._held_timer:
                self._held_timer.cancel()
        for device in reversed(self._devices):  # inputs first: no events during teardown
            device.close()
        self._devices.clear()

    def _own(self, device: Any) -> Any:
        self._devices.append(device)
        return device

    def _door_opened(self, at_start: bool = False) -> None:
        now = time.monotonic()
        grace = self.config.open_grace_s
        with self._mutex:
            permitted = (at_start or self.lock.seconds_locked <= grace
                         or now - self._exit_at <= grace)
            self._opening += 1
            self._opened_at = now
            self._open_alarms = [] if permitted else ["door_forced"]
            if self._held_timer:
                self._held_timer.cancel()
            self._held_timer = threading.Timer(self.config.held_open_s, self._held_open,
                                               args=(self._opening,))
            self._held_timer.daemon = True
            self._held_timer.start()
        if not permitted:
            self._emit("door_forced")

    def _held_open(self, opening: int) -> None:
        with self._mutex:
            if opening != self._opening or self._opened_at is None:
                return
            self._held_timer = None
            self._open_alarms.append("door_held_open")
        self._emit("door_held_open", open_s=self.config.held_open_s)

    def _door_shut(self) -> None:
        with self._mutex:
            self._opening += 1
            if self._held_timer:
                self._held_timer.cancel()
                self._held_timer = None
            opened_at, alarms = self._opened_at, self._open_alarms
            self._opened_at, self._open_alarms = None, []
        open_s = round(time.monotonic() - opened_at, 2) if opened_at is not None else None
        for alarm in alarms:
            self._emit("alarm_cleared", alarm=alarm, open_s=open_s)

    def _exit_pressed(self) -> None:
        with self._mutex:
            self._exit_at = time.monotonic()
        self.lock.release()
        self._emit("exit_request")

    def _override_turned(self) -> None:
        self.lock.release()
        self._emit("manual_override", source="key")

    def _emit(self, kind: str, **details: Any) -> None:
        event = GateEvent(kind, time.time(), details)
        log.log(logging.WARNING if event.is_alarm else logging.INFO, "gate %s %s",
                "ALARM" if event.is_alarm else "event", kind + (f" {details}" if details else ""))
        if self.on_event:
            try:
                self.on_event(event)
            except Exception:  # a faulty reporter must not stop the door working
                log.exception("gate event callback failed on %s", kind)


def _switch(config: SwitchConfig) -> Switch:
    return Switch(config.pin, config.pull, config.active, config.bounce_s)
