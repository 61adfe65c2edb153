"""Stopping child processes the one way every Gerbang program does: ask, wait, then force."""

from __future__ import annotations

import subprocess
from collections.abc import Iterable


def stop_processes(processes: Iterable[subprocess.Popen[bytes] | None], timeout: float,
                   kill: bool = False) -> list[subprocess.Popen[bytes]]:
    """SIGTERM every process still running (SIGKILL with ``kill``: an abrupt crash), give them
    ``timeout`` seconds together to exit, SIGKILL the rest; returns those that had to be killed.

    All are asked first and waited for after, so stopping N children takes one timeout at most,
    not N; each gets SIGTERM's chance to finish its work (flush an outbox, save a broker's state).
    """
    live = [p for p in processes if p is not None and p.poll() is None]
    for proc in live:
        if kill:
            proc.kill()
        else:
            proc.terminate()
    forced = []
    for proc in live:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            forced.append(proc)
    return forced
