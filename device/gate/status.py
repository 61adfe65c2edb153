"""The status light and buzzer: one pattern per gate state, so an applicant knows what to do.

=================  ==============================  ======================  ==================
state              RGB LED                         buzzer                  then
=================  ==============================  ======================  ==================
``ready``          blue, steady                    silent                  stays
``look_at_camera`` white, blinking 0.25 s / 0.25 s silent                  resting state
                                                                           after 3 s
``accepted``       green, steady                   one 0.15 s beep         resting state
                                                                           after the pulse
``refused``        red, 3 blinks 0.2 s / 0.2 s     3 beeps 0.2 s / 0.2 s   resting state
                                                                           after 1.2 s
``offline``        yellow, blinking 1 s / 1 s      silent                  stays
=================  ==============================  ======================  ==================

``ready`` and ``offline`` are *resting* states (the gate works offline too: its outbox keeps
every event); the others show for their time, then the resting state returns.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from gpiozero import RGBLED, Buzzer

Colour = tuple[int, int, int]
OFF: Colour = (0, 0, 0)
RED: Colour = (1, 0, 0)
GREEN: Colour = (0, 1, 0)
BLUE: Colour = (0, 0, 1)
YELLOW: Colour = (1, 1, 0)
WHITE: Colour = (1, 1, 1)


@dataclass(frozen=True)
class Pattern:
    """How one state looks and sounds."""

    colour: Colour
    #: (on_s, off_s) to blink; None for a steady light.
    blink: tuple[float, float] | None = None
    #: How many blinks; None to blink until the next state.
    blinks: int | None = None
    #: (on_s, off_s, count) of beeps; None for silence.
    beeps: tuple[float, float, int] | None = None
    #: Shown this long, then the resting state returns; None to stay.
    hold_s: float | None = None


PATTERNS: dict[str, Pattern] = {
    "ready": Pattern(BLUE),
    "look_at_camera": Pattern(WHITE, blink=(0.25, 0.25), hold_s=3.0),
    # The liveness challenge: the prompt is on the screen; two short beeps make the applicant
    # look at it (issue 4: "on its screen and with a sound").
    "challenge": Pattern(WHITE, blink=(0.25, 0.25), beeps=(0.08, 0.08, 2), hold_s=5.0),
    "accepted": Pattern(GREEN, beeps=(0.15, 0.1, 1), hold_s=3.0),
    "refused": Pattern(RED, blink=(0.2, 0.2), blinks=3, beeps=(0.2, 0.2, 3), hold_s=1.2),
    "offline": Pattern(YELLOW, blink=(1.0, 1.0)),
}
RESTING = ("ready", "offline")


class StatusIndicator:
    """An RGB LED and a buzzer showing the gate's state (see :data:`PATTERNS`).

    The LED is switched, not dimmed (``pwm=False``): seven clear colours need no PWM and no
    software-PWM thread on the Pi.
    """

    def __init__(self, red_pin: int, green_pin: int, blue_pin: int, buzzer_pin: int, *,
                 led_active_high: bool = True, buzzer_active_high: bool = True) -> None:
        self.led = RGBLED(red_pin, green_pin, blue_pin, active_high=led_active_high, pwm=False)
        self.buzzer = Buzzer(buzzer_pin, active_high=buzzer_active_high)
        self._mutex = threading.Lock()
        self._timer: threading.Timer | None = None
        self._shown = 0  # number of the current display: a stale hold timer must not end a newer
        self.resting = "ready"
        self.state = ""
        self.show("ready")

    def show(self, state: str, hold_s: float | None = None) -> None:
        """Show ``state``; ``hold_s`` overrides how long a non-resting state stays.

        Showing a blinking state that is already showing only extends its hold, so a caller
        may repeat ``look_at_camera`` every frame without restarting the blink.
        """
        pattern = PATTERNS.get(state)
        if pattern is None:
            raise ValueError(f"unknown gate state {state!r} (known: {', '.join(PATTERNS)})")
        with self._mutex:
            self._shown += 1
            if self._timer:
                self._timer.cancel()
                self._timer = None
            if state in RESTING:
                self.resting = state
            repeat = state == self.state and pattern.blink and pattern.blinks is None
            if not repeat:
                self._display(state, pattern)
            hold = pattern.hold_s if hold_s is None else hold_s
            if state not in RESTING and hold:
                self._timer = threading.Timer(hold, self._rest, args=(self._shown,))
                self._timer.daemon = True
                self._timer.start()

    def close(self) -> None:
        """Turn off and free the pins."""
        with self._mutex:
            self._shown += 1
            if self._timer:
                self._timer.cancel()
            self.led.close()
            self.buzzer.close()

    def _rest(self, shown: int) -> None:
        with self._mutex:
            if shown == self._shown:
                self._timer = None
                self._display(self.resting, PATTERNS[self.resting])

    def _display(self, state: str, pattern: Pattern) -> None:
        self.state = state
        # Set the first phase here, not when gpiozero's blink thread first runs, so the new
        # state shows the moment show() returns.
        self.led.value = pattern.colour
        if pattern.blink:
            on_s, off_s = pattern.blink
            self.led.blink(on_s, off_s, on_color=pattern.colour, n=pattern.blinks)
        if pattern.beeps:
            on_s, off_s, count = pattern.beeps
            self.buzzer.on()
            self.buzzer.beep(on_s, off_s, n=count)
        else:
            self.buzzer.off()
