"""CPU and memory of every process of the centre over the morning, read from /proc.

A sample every two seconds (with each gate's outbox depth and the load average) and a status
line for the console; the report's resource table and plot are summarised from them.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from gerbang.rehearsal.doors import Morning

log = logging.getLogger("rehearsal")


def children_of(pid: int) -> list[int]:
    """The live child processes of ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    return found


def _proc_usage(pid: int) -> tuple[float, float] | None:
    """(CPU seconds used, proportional set size in MB) of a process, from /proc.

    PSS, not RSS: a gate is five processes sharing Python, NumPy and OpenCV pages, and RSS
    would count those once per process; PSS shares them out, so the sum over all processes is
    what the machine really holds.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        ticks = os.sysconf("SC_CLK_TCK")
        cpu = (int(fields[11]) + int(fields[12])) / ticks
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
            kb = next(int(line.split()[1]) for line in rollup if line.startswith("Pss:"))
        except (OSError, StopIteration):  # kernels without smaps_rollup: RSS
            kb = next(int(line.split()[1]) for line in
                      Path(f"/proc/{pid}/status").read_text().splitlines()
                      if line.startswith("VmRSS:"))
        return cpu, kb / 1024
    except Exception:  # the process just ended (killed by a fault): no sample this round
        return None


def sample_loop(morning: Morning, processes: Any, samples: list[dict[str, Any]],
                every_s: float = 2.0, status_every_s: float = 20.0, total_s: float = 0.0,
                ) -> None:
    """Every ``every_s``: CPU and memory of each process, outbox depth of each gate, load;
    a status line for the console every ``status_every_s``."""
    last: dict[int, tuple[float, float]] = {}
    next_status = time.monotonic() + status_every_s
    while not morning.stop.wait(every_s):
        now = time.monotonic()
        usage: dict[str, dict[str, float]] = {}
        for label, pid in processes():
            got = _proc_usage(pid)
            if got is None:
                continue
            cpu_s, rss = got
            prev = last.get(pid)
            last[pid] = (cpu_s, now)
            percent = 100 * (cpu_s - prev[0]) / (now - prev[1]) if prev else 0.0
            entry = usage.setdefault(label, {"cpu": 0.0, "rss_mb": 0.0, "cpu_s_by_pid": {}})
            entry["cpu"] = round(entry["cpu"] + percent, 1)
            entry["rss_mb"] = round(entry["rss_mb"] + rss, 1)
            entry["cpu_s_by_pid"][pid] = round(cpu_s, 2)
        outbox = {gate: (rig.read_outbox() or {}).get("depth", 0)
                  for gate, rig in morning.rigs.items()}
        sample = {"t": round(morning.rel(now), 1), "load": os.getloadavg()[0],
                  "usage": usage, "outbox": outbox,
                  "rss_total_mb": round(sum(u["rss_mb"] for u in usage.values()), 1),
                  "cpu_total": round(sum(u["cpu"] for u in usage.values()), 1),
                  "admitted": morning.admitted}
        samples.append(sample)
        if now >= next_status:
            next_status = now + status_every_s
            log.info("T+%.0fs/%.0fs: %d admitted (%d by a proctor), %d refusals seen, %d at "
                     "the doors, %d check-ins in outboxes; load %.1f, RAM %.1f GB, CPU %.0f%%",
                     sample["t"], total_s, morning.admitted, morning.proctor_admits,
                     morning.refusals_seen, morning.at_doors, sum(outbox.values()),
                     sample["load"], sample["rss_total_mb"] / 1024, sample["cpu_total"])


def summarise_resources(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Peak memory (PSS) and CPU per process (gates summarised and listed), totals, load."""
    per: dict[str, dict[str, Any]] = {}
    for sample in samples:
        for label, u in sample["usage"].items():
            entry = per.setdefault(label, {"peak_rss_mb": 0.0, "cpu": [], "cpu_s": {}})
            entry["peak_rss_mb"] = max(entry["peak_rss_mb"], u["rss_mb"])
            entry["cpu"].append(u["cpu"])
            entry["cpu_s"].update(u["cpu_s_by_pid"])  # last reading per pid (restarts add up)
    rows = [{"process": label, "peak_rss_mb": round(e["peak_rss_mb"], 1),
             "mean_cpu_pct": round(float(np.mean(e["cpu"])), 1) if e["cpu"] else 0.0,
             "peak_cpu_pct": round(float(np.max(e["cpu"])), 1) if e["cpu"] else 0.0,
             "cpu_s": round(sum(e["cpu_s"].values()), 1), "pids": len(e["cpu_s"])}
            for label, e in sorted(per.items())]
    loads = [s["load"] for s in samples]
    return {"per_process": rows,
            "peak_total_rss_mb": round(max((s["rss_total_mb"] for s in samples), default=0), 1),
            "mean_total_cpu_pct": round(float(np.mean([s["cpu_total"] for s in samples])), 1)
            if samples else 0.0,
            "load": {"min": round(min(loads), 2), "mean": round(float(np.mean(loads)), 2),
                     "max": round(max(loads), 2)} if loads else {}}
