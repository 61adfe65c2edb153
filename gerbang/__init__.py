"""Shared core: wire, config, mqtt, files, logs, broker, host...; runs: demo, rehearsal, simulation.
The core imports no device/gateway/provisioning (which import no run); the runs may import all."""

__version__ = "0.1.0"
