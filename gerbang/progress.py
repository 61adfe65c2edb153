"""A dependency-free progress bar for long technician tasks (enrollment, model builds)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TextIO, TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], total: int | None = None, label: str = "",
             stream: TextIO | None = None) -> Iterator[T]:
    """Yield ``items`` while drawing ``label [#####.....] 12/40 3.1/s`` on ``stream``.

    Redraws at most ten times a second; prints nothing when the stream is not a terminal except
    a final line, so logs captured by systemd or CI stay readable.
    """
    stream = stream or sys.stderr
    total = total if total is not None else (len(items) if hasattr(items, "__len__") else None)
    tty = stream.isatty()
    start = last = time.monotonic()
    done = 0

    def draw(final: bool = False) -> None:
        rate = done / max(time.monotonic() - start, 1e-9)
        if total:
            filled = int(30 * done / total)
            bar = f"[{'#' * filled}{'.' * (30 - filled)}] {done}/{total}"
        else:
            bar = f"{done}"
        end = "\n" if final else ""
        stream.write(f"\r{label} {bar} {rate:.1f}/s{end}")
        stream.flush()

    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if tty and now - last > 0.1:
            last = now
            draw()
    draw(final=True)
