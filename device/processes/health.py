"""What a gate process reports about its own health (telemetry and run summaries): cheap reads
of /proc and /sys, importable by every worker without the inference stack."""

from __future__ import annotations

from pathlib import Path


def peak_rss_mb() -> float | None:
    """This process's resident-memory high-water mark (VmHWM), in MB; None off Linux.

    Read from /proc because getrusage's ru_maxrss survives exec and would report the parent's
    size for a process started with fork+exec.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def cpu_temperature_c() -> float | None:
    """The SoC temperature on a Raspberry Pi (None where the kernel does not expose one)."""
    try:
        return round(int(Path("/sys/class/thermal/thermal_zone0/temp").read_text()) / 1000, 1)
    except (OSError, ValueError):
        return None
