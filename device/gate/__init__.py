"""Door hardware through gpiozero: lock relay, status LEDs (buzzer, contacts and keys next).

The code never knows whether pins are real: :func:`use_pin_factory` picks gpiozero's native
factory on a Raspberry Pi and its MockFactory elsewhere (demo, tests), like gpiozero itself does.
"""
