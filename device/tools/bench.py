"""Speed of the device pipeline, stage by stage (``gerbang-device bench``).

Benchmarks print figures; they assert nothing (these machines are shared and noisy, so compare
runs made together). Stages are timed on real face images: decode, detect, landmarks, align,
embed, match over 50 / 1,000 / 100,000 templates, card QR read, and the whole per-frame path
(detect + landmarks + align + embed + 1:N over 1,000), at 1 and 2 threads.
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from device.capture.replay import list_images, read_image
from device.decide.card import read_card
from device.infer.bundle import ModelBundle
from device.infer.match import Gallery
from device.infer.pipeline import FacePipeline
from gerbang.host import describe_host


def _summary(samples_ms: list[float]) -> dict[str, float]:
    a = np.asarray(samples_ms)
    return {"p50_ms": round(float(np.percentile(a, 50)), 3),
            "p95_ms": round(float(np.percentile(a, 95)), 3), "n": int(a.size)}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_threads(bundle: ModelBundle, paths: list[Path], threads: int,
                  runtime: str = "auto") -> dict[str, Any]:
    """Per-stage p50/p95 for one thread count."""
    t0 = time.perf_counter()
    pipeline = FacePipeline.from_bundle(bundle, threads=threads, runtime=runtime)
    load_ms = (time.perf_counter() - t0) * 1000
    rng = np.random.default_rng(0)
    galleries = {n: Gallery([str(i) for i in range(n)], rng.normal(size=(n, 128)))
                 for n in (50, 1000, 100_000)}
    stages: dict[str, list[float]] = {k: [] for k in (
        "decode", "detect", "landmarks", "align", "embed", "match_50", "match_1000",
        "match_100000", "card_qr", "pipeline")}
    for path in paths:
        data = np.fromfile(str(path), dtype=np.uint8)
        t = time.perf_counter()
        image = cv2.imdecode(data, cv2.IMREAD_COLOR)
        stages["decode"].append((time.perf_counter() - t) * 1000)
        if image is None:
            continue
        t = time.perf_counter()
        read_card(image)
        stages["card_qr"].append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        reading = pipeline.read(image)
        match_start = time.perf_counter()
        if reading.embedding is not None:
            galleries[1000].best(reading.embedding)
        end = time.perf_counter()
        if reading.embedding is None:
            continue
        stages["pipeline"].append((end - t) * 1000)
        for stage in ("detect", "landmarks", "align", "embed"):
            stages[stage].append(reading.timings_ms[stage])
        stages["match_1000"].append((end - match_start) * 1000)
        for n in (50, 100_000):
            t = time.perf_counter()
            galleries[n].best(reading.embedding)
            stages[f"match_{n}"].append((time.perf_counter() - t) * 1000)
    result = {"threads": threads, "model_load_ms": round(load_ms, 1),
              "stages": {k: _summary(v) for k, v in stages.items() if k != "pipeline" and v}}
    result["pipeline"] = _summary(stages["pipeline"])
    return result


def run_bench(bundle: ModelBundle, faces: Path, images: int = 200,
              runtime: str = "auto") -> dict[str, Any]:
    """The whole benchmark: 1 and 2 threads, peak RSS, on ``images`` photos under ``faces``."""
    paths = list_images(faces)
    step = max(1, len(paths) // images)
    paths = paths[::step][:images]
    if not paths:
        raise FileNotFoundError(f"no images under {faces}")
    read_image(paths[0])  # warm the decoder's first-call cost outside the timings
    host = describe_host()  # before the runs: the load average is the background's, not ours
    runs = [bench_threads(bundle, paths, t, runtime) for t in (1, 2)]
    return {"images": len(paths), "faces": str(faces), "host": host, "runs": runs,
            # The 1-thread run is the headline (a Pi gate keeps its other cores for capture).
            "stages": runs[0]["stages"], "pipeline": runs[0]["pipeline"],
            "peak_rss_mb": round(_peak_rss_mb(), 1)}


def service_peak_rss_mb(faces: Path, images: int = 100) -> dict[str, Any]:
    """Peak RSS of a real ``gerbang-device run`` replaying ``images`` photos: of its check-in
    worker (models and roster), and of all four workers added up (an upper bound: they share
    the pages of Python and its libraries).

    Runs the service as a child process with a local broker and a 1,000-applicant roster of
    random templates, so the figure is the service's own memory, not this benchmark's.
    """
    import subprocess
    import sys
    import tempfile

    from device.decide.roster import Roster, RosterEntry, save_roster
    from gerbang.broker import start_local_broker

    with tempfile.TemporaryDirectory(prefix="gerbang-bench-") as tmp:
        work = Path(tmp)
        frames = work / "frames"
        frames.mkdir()
        for i, path in enumerate(list_images(faces)[:images]):
            (frames / f"{i:05d}{path.suffix}").symlink_to(path.resolve())
        rng = np.random.default_rng(0)
        vectors = rng.normal(size=(1000, 128)).astype(np.float32)
        save_roster(Roster("S1", "R01", 1, tuple(
            RosterEntry(f"A{i:05d}", "", v) for i, v in enumerate(vectors))),
            work / "roster.json")
        broker = start_local_broker(work / "broker")
        try:
            config = work / "device.toml"
            config.write_text(
                f'[gate]\ndevice_id = "bench"\ncentre = "bench"\nroom = "R01"\nsession = "S1"\n'
                f'data_dir = "{work}"\n[broker]\nport = {broker.port}\n'
                f'protocol = {broker.protocol}\n[capture]\npath = "{frames}"\n'
                f'[models]\nthreads = 1\n[gpio]\npin_factory = "mock"\n')
            proc = subprocess.run([sys.executable, "-m", "device.cli", "run", "--config",
                                   str(config), "--json"], capture_output=True, text=True,
                                  timeout=600)
        finally:
            broker.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"device service failed: {proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"service_peak_rss_mb": result["peak_rss_mb"],
            "service_peak_rss_mb_all_workers": result.get("peak_rss_mb_all_workers"),
            "service_peak_rss_mb_by_worker": result.get("peak_rss_mb_by_worker"),
            "frames": images, "roster": 1000}
