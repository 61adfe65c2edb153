"""Frame-to-decision latency when the camera is faster than inference (issue 5's bar).

Replays face photos as a 30 fps camera into the real device pipeline (YuNet, FaceMesh, SFace,
1 thread) for a while, twice in one run:

- ``in_order``: every frame read in order (what a plain queue between camera and gate does);
- ``newest_wins``: the camera runs on its own thread and the gate takes the newest frame
  (``device.capture.newest``, what ``run --single-process`` does for live cameras);
- ``processes``: the capture process publishes over ZeroMQ with CONFLATE and the check-in reads
  the newest frame (``device.processes.capture`` → ``device.capture.bus``, what the service
  does).

Prints JSON: frame-to-decision latency p50/p95/max (decision time minus capture time), frames
judged and dropped, and how latency grew from the first to the last quarter of the run.

    python benchmarks/frame_latency.py [--faces DIR] [--seconds 20] [--fps 30]
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from device.capture import Frame
from device.capture.newest import NewestFrameSource
from device.capture.replay import ReplaySource
from device.infer.bundle import load_bundle
from device.infer.pipeline import FacePipeline


class QueuedCamera:
    """A camera whose frames all wait in a queue for the gate (the thing not to build)."""

    def __init__(self, source: ReplaySource) -> None:
        self.frames_queue: queue.Queue[Frame | None] = queue.Queue()
        self.source = source
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for frame in self.source.frames():
            self.frames_queue.put(frame)
        self.frames_queue.put(None)

    def frames(self) -> Iterator[Frame]:
        while (frame := self.frames_queue.get()) is not None:
            yield frame

    def close(self) -> None:
        self.source.close()


def run(pipeline: FacePipeline, source: QueuedCamera | NewestFrameSource,
        seconds: float) -> dict[str, Any]:
    latencies, started = [], time.monotonic()
    for frame in source.frames():
        pipeline.read(frame.image)
        latencies.append((time.time() - frame.ts) * 1000)
        if time.monotonic() - started > seconds:
            break
    source.close()
    values = np.array(latencies)
    quarter = max(len(values) // 4, 1)
    return {"judged": len(values), "dropped": getattr(source, "dropped", 0),
            "latency_ms_p50": round(float(np.percentile(values, 50)), 1),
            "latency_ms_p95": round(float(np.percentile(values, 95)), 1),
            "latency_ms_max": round(float(values.max()), 1),
            "first_quarter_mean_ms": round(float(values[:quarter].mean()), 1),
            "last_quarter_mean_ms": round(float(values[-quarter:].mean()), 1)}


def _capture_process(path: str, fps: float, bus_path: str, seconds: float) -> None:
    from device.bus import Bus
    from device.config import CaptureConfig
    from device.processes.capture import run_capture

    stop = threading.Event()
    threading.Timer(seconds + 5, stop.set).start()
    run_capture(CaptureConfig(source="replay", path=Path(path), fps=fps, realtime=True),
                Bus(Path(bus_path)), stop)


def run_processes(pipeline: FacePipeline, frames_dir: Path, fps: float,
                  seconds: float) -> dict[str, Any]:
    """The capture as its own process, frames over ipc:// (newest wins)."""
    import multiprocessing

    from device.bus import Bus
    from device.capture.bus import BusFrameSource

    with tempfile.TemporaryDirectory(prefix="gb-") as bus_path:
        stop = threading.Event()
        source = BusFrameSource(Bus(Path(bus_path)), paced=False, stop=stop)
        camera = multiprocessing.get_context("spawn").Process(
            target=_capture_process, args=(str(frames_dir), fps, bus_path, seconds))
        camera.start()
        result = run(pipeline, source, seconds)
        stop.set()
        camera.terminate()
        camera.join()
    # Frames the camera produced while the gate was busy were replaced, never queued.
    result["dropped"] = max(int(fps * seconds) - result["judged"], 0)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = Path(os.environ.get("GERBANG_DATA", "../shared/data")) / "faces" / "celeba"
    parser.add_argument("--faces", type=Path, default=default)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    photos = sorted(p for p in args.faces.rglob("*.jpg"))[: int(args.fps * args.seconds * 2)]
    with tempfile.TemporaryDirectory() as tmp:
        for i, photo in enumerate(photos):  # a flat playlist folder of camera frames
            shutil.copy(photo, Path(tmp) / f"{i:05d}.jpg")
        pipeline = FacePipeline.from_bundle(load_bundle(), threads=args.threads)
        pipeline.read(np.zeros((480, 640, 3), np.uint8))  # warm-up
        result = {
            "fps": args.fps, "seconds": args.seconds, "threads": args.threads,
            "in_order": run(pipeline, QueuedCamera(ReplaySource(Path(tmp), fps=args.fps)),
                            args.seconds),
            "newest_wins": run(pipeline, NewestFrameSource(ReplaySource(Path(tmp),
                                                                         fps=args.fps)),
                               args.seconds),
            "processes": run_processes(pipeline, Path(tmp), args.fps, args.seconds),
            "load_average": list(os.getloadavg())}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
