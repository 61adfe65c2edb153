"""Door hardware through gpiozero, as small devices composed into one :class:`~gate.Gate`.

- ``lock.LockRelay``: the lock relay, released in pulses that end on its own timer;
  fail-secure by default, fail-safe when configured (``lock`` explains the relay polarity).
- ``switch.Switch``: a contact input (door reed switch, exit button, override key, tamper).
- ``status.StatusIndicator``: RGB LED and buzzer patterns per gate state (table in ``status``).
- ``gate.Gate``: all of these from the ``[gpio]`` config; grant/refuse/show and alarm events
  (table in ``gate``).
- ``door.Door``: what the check-in loop needs; ``door.DoorSignal``: a relay and two LEDs.

The code never knows whether pins are real: ``pins.use_pin_factory`` picks gpiozero's native
factory on a Raspberry Pi and its MockFactory elsewhere (demo, tests), like gpiozero itself does.
Imports config and bus only (the gate controller process loads no OpenCV or TFLite).
"""
