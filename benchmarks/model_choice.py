"""Which detector, landmark path and SFace precision the device should ship, measured side by side.

Usage::

    python benchmarks/model_choice.py DIR [DIR ...] [--json] [--limit-people N]
        [--sface-fp32 PATH] [--threads 1]

Each ``DIR`` holds ``<person>/<image>`` files. Every pipeline below reads every image once
(``device.tools.evaluation.read_samples``: the device pipeline plus the default quality gate), and
the same samples are scored with both protocols of ``device.tools.evaluation`` — single image (all
pairs) and gate (3-photo templates, quality-gated probes, cosine and T-norm scores) — so the numbers
are exactly what ``evaluate(..., enroll=None)`` and ``evaluate(..., enroll=3)`` report, for half
the work. All pipelines average the embeddings of the crop and its mirror image (``flip_average``).

Pipelines (detector → landmarks → embedder):

* ``a`` YuNet 320, its own 5 points → SFace dynamic range (``sface_dr.tflite``)
* ``b`` YuNet 320 → FaceMesh ×2 → SFace dynamic range (the shipped combination)
* ``c`` YuNet 320 → FaceMesh ×2 → SFace fp32 (not shipped; ``--sface-fp32``, skipped if absent)
* ``d`` BlazeFace → FaceMesh ×2 → SFace dynamic range
* ``e`` BlazeFace, eyes + nose + mouth centre (4-point style, no refinement) → SFace dynamic range

Time per image is ``FacePipeline.read`` only (detect, landmarks, align, both embeddings), measured
with ``time.perf_counter`` at ``--threads`` TFLite and OpenCV threads; decoding, the quality gate
and one untimed warm-up image per pipeline are excluded. The median is reported because other
processes on a shared host inflate the mean.

Pipelines without FaceMesh have no head pose, so the gate's yaw/pitch check cannot refuse their
probes: their FTA is not directly comparable with the refined pipelines'.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from device.config import QualityConfig
from device.infer.blazeface import BlazeFaceDetector
from device.infer.bundle import ModelBundle, load_bundle
from device.infer.detect import YuNetDetector, yunet_output_tensors
from device.infer.embed import SFaceEmbedder
from device.infer.landmarks import FaceMeshRefiner
from device.infer.pipeline import FacePipeline, FaceReading
from device.infer.runtime import load_interpreter, runtime_name
from device.tools.evaluation import gate_report, list_people, read_samples, single_image_report
from gerbang.host import describe_host

#: Gate protocol: templates from each person's first 3 photos (the registration selfies).
ENROLL = 3


class TimedPipeline(FacePipeline):
    """A FacePipeline that records how long each ``read`` took, and the per-stage timings."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ms: list[float] = []
        self.stages: dict[str, list[float]] = {}

    def read(self, image: np.ndarray) -> FaceReading:
        """``FacePipeline.read``, timed."""
        start = time.perf_counter()
        reading = super().read(image)
        self.ms.append((time.perf_counter() - start) * 1000)
        for stage, ms in reading.timings_ms.items():
            self.stages.setdefault(stage, []).append(ms)
        return reading

    def reset(self) -> None:
        """Forget earlier timings (after the warm-up, between image sets)."""
        self.ms.clear()
        self.stages.clear()


@dataclass(frozen=True)
class Candidate:
    """One pipeline to measure: a short key, a description and how to build it."""

    key: str
    label: str
    build: Callable[[], TimedPipeline] | None
    #: Why the pipeline is skipped (when ``build`` is None).
    skipped: str | None = None


def candidates(bundle: ModelBundle, threads: int, sface_fp32: Path | None) -> list[Candidate]:
    """The five pipelines, each built on its own interpreters at ``threads`` threads."""

    def interp(path: Path) -> Any:
        return load_interpreter(path, threads)

    def yunet() -> YuNetDetector:
        return YuNetDetector(interp(bundle.path("detector")),
                             yunet_output_tensors(bundle.entry("detector")))

    def blazeface() -> BlazeFaceDetector:
        return BlazeFaceDetector(interp(bundle.path("blazeface")))

    def mesh() -> FaceMeshRefiner:
        return FaceMeshRefiner(interp(bundle.path("face_mesh")), passes=2)

    def sface(path: Path | None = None) -> SFaceEmbedder:
        return SFaceEmbedder(interp(path or bundle.path("embedder")))

    out = [
        Candidate("a", "YuNet 320 (5 pts) + SFace DR",
                  lambda: TimedPipeline(yunet(), sface(), None, flip_average=True)),
        Candidate("b", "YuNet 320 → FaceMesh ×2 + SFace DR (shipped)",
                  lambda: TimedPipeline(yunet(), sface(), mesh(), flip_average=True)),
    ]
    label_c = "YuNet 320 → FaceMesh ×2 + SFace fp32"
    if sface_fp32 is not None and sface_fp32.is_file():
        out.append(Candidate("c", label_c, lambda: TimedPipeline(
            yunet(), sface(sface_fp32), mesh(), flip_average=True)))
    else:
        why = ("no --sface-fp32 given" if sface_fp32 is None
               else f"{sface_fp32} does not exist")
        out.append(Candidate("c", label_c, None, skipped=why))
    out += [
        Candidate("d", "BlazeFace → FaceMesh ×2 + SFace DR",
                  lambda: TimedPipeline(blazeface(), sface(), mesh(), flip_average=True)),
        Candidate("e", "BlazeFace 4-pt (no refinement) + SFace DR",
                  lambda: TimedPipeline(blazeface(), sface(), None, flip_average=True)),
    ]
    return out


def _tar(report: dict[str, Any], key: str) -> float | None:
    entry = report["tar_at_far"][key]
    return entry["tar"] if entry.get("supported") else None


def measure(pipeline: TimedPipeline, root: Path, limit_people: int | None,
            show_progress: bool) -> dict[str, Any]:
    """Both protocols and the timings of one pipeline on one folder."""
    people = list_people(root, limit_people)
    if not people:
        raise SystemExit(f"model_choice: no <person>/<image> files under {root}")
    from device.capture.replay import read_image

    warm = read_image(next(iter(people.values()))[0])
    if warm is not None:
        pipeline.read(warm)  # untimed: first-call allocations are not per-image cost
    pipeline.reset()
    samples = read_samples(pipeline, people, QualityConfig(), show_progress)
    single = single_image_report(samples)
    gate = gate_report(samples, ENROLL)
    by_score = gate["by_score"]
    return {
        "people": len(people), "images": len(samples),
        "single_image": {
            "tar_1e-3": _tar(single, "1e-3"), "tar_1e-4": _tar(single, "1e-4"),
            "failures_to_detect": single["failures_to_detect"], "auc": single["auc"],
            "report": single,
        },
        "gate": {
            "tar_1e-4_cosine": _tar(by_score["cosine"], "1e-4") if "cosine" in by_score else None,
            "tar_1e-4_tnorm": _tar(by_score["tnorm"], "1e-4") if "tnorm" in by_score else None,
            "fta": gate["fta"], "fta_reasons": gate["fta_reasons"], "probes": gate["probes"],
            "report": gate,
        },
        "ms_per_image_median": statistics.median(pipeline.ms) if pipeline.ms else None,
        "ms_per_image_mean": statistics.fmean(pipeline.ms) if pipeline.ms else None,
        "stage_ms_median": {k: statistics.median(v) for k, v in pipeline.stages.items()},
    }


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def render(result: dict[str, Any]) -> str:
    """The Markdown table: one row per pipeline and set."""
    lines = [
        "| pipeline | set | TAR@1e-3 | TAR@1e-4 | FTD | gate TAR@1e-4 cosine "
        "| gate TAR@1e-4 tnorm | gate FTA | median ms/img |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, p in result["pipelines"].items():
        if p.get("skipped"):
            continue
        for name, r in p["sets"].items():
            s, g = r["single_image"], r["gate"]
            lines.append(
                f"| {key}. {p['label']} | {name} | {_fmt(s['tar_1e-3'], '.3f')} "
                f"| {_fmt(s['tar_1e-4'], '.3f')} | {s['failures_to_detect']} "
                f"| {_fmt(g['tar_1e-4_cosine'], '.3f')} | {_fmt(g['tar_1e-4_tnorm'], '.3f')} "
                f"| {_fmt(g['fta'], '.3f')} | {_fmt(r['ms_per_image_median'], '.1f')} |")
    notes = [f"{key}. {p['label']}: skipped ({p['skipped']})"
             for key, p in result["pipelines"].items() if p.get("skipped")]
    lines.append("")
    lines.append(f"{result['threads']} thread(s), {result['runtime']}, flip-average on, "
                 f"gate enroll={ENROLL}, default QualityConfig; FTD = failures to detect "
                 "(single image), FTA = probes refused by the quality gate.")
    lines += notes
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description="Compare detector / landmark / SFace-precision combinations on face folders.")
    parser.add_argument("dirs", nargs="+", type=Path, metavar="DIR",
                        help="folder of <person>/<image> files")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--limit-people", type=int, default=None, metavar="N",
                        help="only the first N people (sorted) of each folder")
    parser.add_argument("--sface-fp32", type=Path, default=None, metavar="PATH",
                        help="fp32 SFace TFLite (not shipped) for pipeline c; skipped if absent")
    parser.add_argument("--threads", type=int, default=1,
                        help="TFLite and OpenCV threads (default 1)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run every pipeline on every folder and print the table or the JSON object."""
    import cv2

    args = parse_args(argv)
    cv2.setNumThreads(args.threads)
    bundle = load_bundle()
    pipelines: dict[str, dict[str, Any]] = {}
    runtime = None
    for cand in candidates(bundle, args.threads, args.sface_fp32):
        entry: dict[str, Any] = {"label": cand.label}
        pipelines[cand.key] = entry
        if cand.build is None:
            entry["skipped"] = cand.skipped
            print(f"model_choice: {cand.key}. {cand.label}: skipped ({cand.skipped})",
                  file=sys.stderr)
            continue
        pipeline = cand.build()
        runtime = runtime or runtime_name(pipeline.embedder.interpreter)
        entry["sets"] = {}
        for root in args.dirs:
            name = root.name if root.name not in entry["sets"] else str(root)
            entry["sets"][name] = measure(pipeline, root, args.limit_people, not args.quiet)
    result = {
        "threads": args.threads,
        "runtime": runtime,
        "python": platform.python_version(),
        "host": describe_host(),
        "bundle_version": bundle.manifest.get("bundle_version"),
        "models": {role: digest[:12] for role, digest in bundle.hashes().items()},
        "sface_fp32": str(args.sface_fp32) if args.sface_fp32 else None,
        "quality": QualityConfig().__dict__,
        "enroll": ENROLL,
        "pipelines": pipelines,
    }
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
