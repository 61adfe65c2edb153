"""The gate controller process: owns the pins; opens, refuses and raises door alarms.

It starts first and drives the relay to locked before anything else happens (a gate process
killed with -9 leaves the pin as last driven until a new one drives it). Each pulse ends on
its own timer, whatever the other processes do.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import zmq

from device import bus as busmod
from device.bus import Bus
from device.config import DeviceConfig
from device.gate.gate import Gate, GateEvent
from device.gate.pins import use_pin_factory
from device.uplink.alarms import open_outbox, record_alarm
from gerbang import wire

log = logging.getLogger(__name__)

#: With mock pins, trace the relay to this file (see RelayTrace): how tests and the rehearsal
#: see the relay of a gate controller they kill.
PIN_TRACE_ENV = "GERBANG_PIN_TRACE"


class RelayTrace:
    """Appends the relay pin's state now and at every change, and every grant, to a JSON-lines
    file (mock pins only): ``{"t": unix time, "on": bool | "grant": true, "pid": …}``."""

    def __init__(self, gate: Gate, path: Path) -> None:
        self._file = open(path, "a", buffering=1)  # line-buffered: kill -9 loses no line
        pin = gate.lock._relay.pin
        original = pin._change_state

        def change_state(value: bool) -> bool:
            changed = original(value)
            if changed:
                self.write(on=bool(value))
            return changed

        pin._change_state = change_state
        self.write(on=bool(pin.state))

    def write(self, **fields: object) -> None:
        self._file.write(json.dumps({"t": time.time(), **fields, "pid": os.getpid()}) + "\n")


def run_gate(config: DeviceConfig, bus: Bus, stop: threading.Event) -> dict[str, Any]:
    """Serve door requests until ``stop``; returns counters."""
    ident = config.gate
    use_pin_factory(config.gpio.pin_factory)
    outbox = open_outbox(config)
    nudge = busmod.sender(bus, busmod.UPLINK)
    lock = threading.Lock()  # gpiozero callbacks and the gate's timers call on_event

    def on_event(event: GateEvent) -> None:
        if event.kind in wire.ALARM_KINDS:
            detail = ", ".join(f"{k}={v}" for k, v in sorted(event.details.items())) or None
            record_alarm(outbox, ident, event.kind, detail)
            with lock:
                busmod.send_json(nudge, {"op": "outbox"})

    gate = Gate(config.gpio, on_event=on_event)
    trace = (RelayTrace(gate, Path(os.environ[PIN_TRACE_ENV]))
             if os.environ.get(PIN_TRACE_ENV) and config.gpio.pin_factory == "mock" else None)
    requests = bus.bind(zmq.PULL, busmod.DOOR)
    heartbeat = busmod.newest_wins_publisher(bus, busmod.GATE_STATUS)
    counts = {"granted": 0, "refused": 0, "stale": 0}
    log.info("gate controller ready (relay pulse %.1fs, %s)", config.gpio.relay_pulse_s,
             "fail-safe" if config.gpio.fail_safe else "fail-secure")
    try:
        while not stop.is_set():
            # From this loop, not a thread of its own: it proves requests are being served.
            busmod.send_json(heartbeat, {"unlocked": gate.unlocked})
            request = busmod.recv_json(requests, 200)
            if request is None:
                continue
            op = request.get("op")
            age = time.monotonic() - float(request.get("sent", 0.0))
            if op == "grant":
                if age > busmod.GRANT_STALE_S:
                    counts["stale"] += 1
                    log.warning("grant %.1fs old dropped: the door stays locked", age)
                    continue
                if trace is not None:
                    trace.write(grant=True)
                gate.grant()
                counts["granted"] += 1
            elif op == "refuse":
                gate.refuse()
                counts["refused"] += 1
            elif op == "show" and isinstance(request.get("state"), str):
                try:
                    gate.show(request["state"])
                except ValueError:
                    log.warning("unknown status %r", request["state"][:40])
    finally:
        requests.close()
        heartbeat.close()
        nudge.close()
        gate.close()
        outbox.close()
    return counts
