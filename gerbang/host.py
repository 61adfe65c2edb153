"""What machine a benchmark ran on, recorded with its figures.

Benchmark times are only comparable on the same CPU: two x86 VMs with the same core count here
differed by 1.6-1.8× in every stage of the same code (JPEG decode, TFLite, NumPy alike), and the
Gerbang/peer speed ratio moved with them. Recording the CPU model, clock and vector extensions
next to the numbers lets a reader tell a code change from a host change.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

#: Instruction-set flags that decide which kernels XNNPACK, OpenCV and dlib pick.
VECTOR_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni",
                "avx512_fp16", "asimd", "asimddp", "asimdhp", "i8mm")


def _cpuinfo(path: Path = Path("/proc/cpuinfo")) -> dict[str, str]:
    """``key: value`` lines of /proc/cpuinfo, first occurrence of each key (empty if unreadable).

    Keys keep their case: on x86 ``model`` is a number, on a Raspberry Pi ``Model`` names the
    board (in the last block), and the cores of one machine are alike.
    """
    fields: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return fields
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def _cpu_id(info: dict[str, str]) -> str | None:
    """Family/model/stepping (x86) or implementer/part (Arm): a VM may hide the model name
    ("Intel(R) Xeon(R) Processor"), these still tell two CPU generations apart."""
    if "cpu family" in info:
        return (f"family {info['cpu family']} model {info.get('model')} "
                f"stepping {info.get('stepping')}")
    if "CPU part" in info:
        return f"implementer {info.get('CPU implementer')} part {info['CPU part']}"
    return None


def describe_host(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, Any]:
    """CPU model, clock, core count, vector extensions and load average, JSON-ready.

    Fields a kernel does not report are None (``board`` is set on a Raspberry Pi).
    """
    info = _cpuinfo(cpuinfo)
    flags = set((info.get("flags") or info.get("Features") or "").split())
    mhz = info.get("cpu MHz")
    try:
        load = round(os.getloadavg()[0], 2)
    except OSError:
        load = None
    return {
        "machine": platform.machine(),
        "system": platform.system(),
        "cpus": os.cpu_count(),
        "cpu_model": info.get("model name") or platform.processor() or None,
        "cpu_id": _cpu_id(info),
        "board": info.get("Model"),
        "cpu_mhz": float(mhz) if mhz else None,
        "vector_extensions": [f for f in VECTOR_FLAGS if f in flags],
        "load_average_1m": load,
    }
