"""Gerbang against the peer ``face_recognition`` (dlib) on the same images in one run.

Usage::

    python benchmarks/compare_peer.py DIR [DIR ...] [--json] [--limit-people N] [--threads 1]

Each ``DIR`` holds ``<person>/<image>`` files. Both pipelines see exactly the same image list in
the same process, taking turns image by image, and are scored by the same code
(``device.infer.metrics``), so the only differences between their numbers are the pipelines
themselves:

* **Gerbang**: ``device.capture.replay.read_image`` → ``FacePipeline.read`` (YuNet, FaceMesh,
  SFace on TFLite); score = cosine of the unit embeddings.
* **Peer**: ``face_recognition.load_image_file`` → ``face_locations(model="hog")`` →
  ``face_encodings`` of the largest face (the library's defaults otherwise); score = minus the
  euclidean distance, so that higher means "same person" for both and one metric code applies.

Time per image is taken with ``time.perf_counter`` around each pipeline's own work only (decode,
detect, embed): model loading and one untimed warm-up image are excluded for both. Taking turns
means background load on the machine hits both alike; the load average before and after is
recorded with the result. ``--threads`` binds both: Gerbang's TFLite models and OpenCV, and the
BLAS library a dlib build may link (dlib's own HOG detector is single-threaded). Whether dlib
was built with a BLAS changes its speed several-fold and is recorded too.

Fairness: an image where a pipeline finds no face is a failure to enrol *for that pipeline*.
Besides the usual "detected-only" report, TAR is also reported on an "all images" basis that is
the same for both pipelines: every pair over every image counts, a pair touching an undetected
image can never be accepted (genuine pairs become rejects, impostor pairs non-matches), so a
pipeline gains nothing by dropping the hard images. The ratio lines use the "all images" TARs.

Install the peer with the commands in ``docs/peer-comparison.md``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from device.infer.metrics import FARS, far_key, verification_report
from gerbang.host import describe_host
from gerbang.progress import progress

GERBANG = "gerbang"
PEER = "face_recognition"
#: The issue's speed bar: the peer takes at least this many times as long per image.
SPEEDUP_BAR = 5.0
#: Packages the peer needs and the exact versions this comparison was run with.
PEER_INSTALL = ('pip install "setuptools<81" dlib==20.0.1 face_recognition==1.3.0 '
                "face_recognition_models==0.3.0")


class Embedder(Protocol):
    """One face pipeline as the benchmark sees it."""

    name: str

    def embed(self, path: Path) -> np.ndarray | None:
        """Decode ``path``, find the main face and embed it; None when no face is found."""
        ...

    def score_matrix(self, embeddings: np.ndarray) -> np.ndarray:
        """N×N similarity of the N embeddings (higher = more likely the same person)."""
        ...


class GerbangEmbedder:
    """Gerbang's device pipeline, loaded from the verified model bundle."""

    name = GERBANG

    def __init__(self, threads: int) -> None:
        import cv2

        from device.capture.replay import read_image
        from device.infer.bundle import load_bundle
        from device.infer.pipeline import FacePipeline

        # OpenCV's own pool (decode, resize, warp) obeys --threads too, like the TFLite models.
        cv2.setNumThreads(threads)
        self.bundle = load_bundle()
        self.pipeline = FacePipeline.from_bundle(self.bundle, threads=threads)
        self._read_image = read_image

    def embed(self, path: Path) -> np.ndarray | None:
        """BGR decode, then detect → align → embed; the embedding is already unit length."""
        image = self._read_image(path)
        if image is None:
            return None
        return self.pipeline.read(image).embedding

    def score_matrix(self, embeddings: np.ndarray) -> np.ndarray:
        """Cosine similarity: dot products of unit vectors, as ``device.infer.metrics`` assumes."""
        e = np.asarray(embeddings, dtype=np.float64)
        return e @ e.T

    def describe(self) -> dict[str, Any]:
        """Bundle version and model hashes, so a result names the exact models it measured."""
        return {"revision": source_revision(),
                "bundle_version": self.bundle.manifest.get("bundle_version"),
                "models": {role: digest[:12] for role, digest in self.bundle.hashes().items()}}


class PeerEmbedder:
    """The ``face_recognition`` library (dlib HOG detector + dlib ResNet embedder)."""

    name = PEER

    def __init__(self) -> None:
        with warnings.catch_warnings():
            # face_recognition_models imports pkg_resources, which warns that it is deprecated.
            warnings.simplefilter("ignore")
            import face_recognition
        self.fr = face_recognition

    def embed(self, path: Path) -> np.ndarray | None:
        """RGB decode, HOG detection, then the 128-d encoding of the largest face."""
        image = self.fr.load_image_file(str(path))
        locations = self.fr.face_locations(image, model="hog")
        if not locations:
            return None
        # (top, right, bottom, left): the largest box, as Gerbang judges the largest face.
        largest = max(locations, key=lambda b: (b[2] - b[0]) * (b[1] - b[3]))
        return self.fr.face_encodings(image, known_face_locations=[largest])[0]

    def score_matrix(self, embeddings: np.ndarray) -> np.ndarray:
        """Minus the euclidean distance (the library compares distances to 0.6)."""
        e = np.asarray(embeddings, dtype=np.float64)
        squared = np.sum(e * e, axis=1)
        d2 = squared[:, None] + squared[None, :] - 2 * (e @ e.T)
        return -np.sqrt(np.maximum(d2, 0.0))

    @staticmethod
    def describe() -> dict[str, Any]:
        """Versions of the peer's packages and whether dlib was built with an optimised BLAS."""
        import dlib

        versions = {p: _version(p) for p in ("face_recognition", "face_recognition_models", "dlib")}
        return {**versions, "dlib_uses_blas": bool(getattr(dlib, "DLIB_USE_BLAS", False))}


def source_revision() -> str | None:
    """Git commit of the Gerbang tree measured, with ``-dirty`` when it has local changes.

    Gerbang's pipeline code changes between runs; a result must say which code it measured.
    """
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
                                capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--",
                                "device", "gerbang", "benchmarks"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{commit}-dirty" if dirty else commit


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def require_peer() -> None:
    """Exit with install instructions when the peer library cannot be imported."""
    missing = [m for m in ("dlib", "face_recognition_models", "face_recognition")
               if importlib.util.find_spec(m) is None]
    if not missing and importlib.util.find_spec("pkg_resources") is None:
        missing = ["pkg_resources (face_recognition_models needs setuptools<81)"]
    if missing:
        sys.exit("compare_peer: the peer library is not importable "
                 f"(missing: {', '.join(missing)}).\n"
                 "Install it in this environment (dlib compiles from source, about 10 minutes "
                 f"on 2 cores; needs cmake and g++):\n    {PEER_INSTALL}\n"
                 "See docs/peer-comparison.md.")


@dataclass
class ImageSet:
    """One ``<person>/<image>`` folder: its image paths and the person label of each."""

    name: str
    root: Path
    paths: list[Path]
    labels: list[str]

    @classmethod
    def load(cls, root: Path, limit_people: int | None) -> ImageSet:
        """Images under ``root`` in sorted order, optionally only the first N people."""
        from device.capture.replay import list_images

        pairs = [(p, p.relative_to(root).parts[0]) for p in list_images(root)
                 if len(p.relative_to(root).parts) >= 2]
        people = sorted({label for _, label in pairs})
        if limit_people is not None:
            keep = set(people[:limit_people])
            pairs = [(p, label) for p, label in pairs if label in keep]
        if not pairs:
            raise SystemExit(f"compare_peer: no <person>/<image> files under {root}")
        return cls(root.name or str(root), root, [p for p, _ in pairs], [lab for _, lab in pairs])

    @property
    def people(self) -> int:
        """Number of distinct people."""
        return len(set(self.labels))


@dataclass
class Run:
    """One pipeline over one image set: an embedding (or None) and a time for every image."""

    embeddings: list[np.ndarray | None]
    seconds: list[float]


def run_pipelines(embedders: list[Embedder], images: ImageSet) -> dict[str, Run]:
    """Embed every image with every pipeline, timing only each pipeline's own call.

    The pipelines take turns image by image, so load from anything else on the machine (a
    2-core VM here) falls on both alike instead of on whichever happened to run second.
    """
    runs = {e.name: Run([], []) for e in embedders}
    for embedder in embedders:  # untimed warm-up: first-call allocations are not per-image
        embedder.embed(images.paths[0])
    label = f"{images.name} ({' + '.join(e.name for e in embedders)})"
    for path in progress(images.paths, label=label):
        for embedder in embedders:
            start = time.perf_counter()
            embedding = embedder.embed(path)
            runs[embedder.name].seconds.append(time.perf_counter() - start)
            runs[embedder.name].embeddings.append(embedding)
    return runs


def split_pairs(scores: np.ndarray, labels: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Genuine and impostor scores over every unordered pair of a score matrix.

    The same pairing as ``device.infer.metrics.all_pairs_scores``, for any similarity (that function
    is fixed to cosine, the peer needs minus euclidean distance).
    """
    lab = np.asarray(labels)
    upper = np.triu_indices(len(lab), 1)
    same = (lab[:, None] == lab[None, :])[upper]
    flat = scores[upper]
    return flat[same], flat[~same]


def score_run(embedder: Embedder, run: Run, labels: list[str]) -> dict[str, Any]:
    """Detection failures, timings, the detected-only report and the all-images TARs."""
    found = np.array([e is not None for e in run.embeddings])
    dim = next((e.shape[0] for e in run.embeddings if e is not None), 1)
    matrix = np.stack([e if e is not None else np.zeros(dim) for e in run.embeddings])
    scores = embedder.score_matrix(matrix)

    kept = np.flatnonzero(found)
    genuine, impostor = split_pairs(scores[np.ix_(kept, kept)], [labels[k] for k in kept])
    detected_only = verification_report(genuine, impostor)

    # All images: a pair touching an undetected image gets a score below every real one, i.e.
    # it is never accepted at any threshold (-inf in effect; a finite floor keeps the EER
    # quantiles of device.infer.metrics finite).
    real = scores[np.ix_(kept, kept)]
    floor = (float(real.min()) if real.size else 0.0) - 1.0
    all_scores = scores.copy()
    all_scores[~found, :] = floor
    all_scores[:, ~found] = floor
    genuine_all, impostor_all = split_pairs(all_scores, labels)
    all_images = verification_report(genuine_all, impostor_all)

    ms = [s * 1000 for s in run.seconds]
    return {
        "failures_to_detect": int((~found).sum()),
        "ms_per_image_mean": statistics.fmean(ms),
        "ms_per_image_median": statistics.median(ms),
        "report": detected_only,
        "tar_all_images": {k: v.get("tar") for k, v in all_images["tar_at_far"].items()},
        "report_all_images": all_images,
    }


def compare(ours: dict[str, Any], peer: dict[str, Any]) -> dict[str, Any]:
    """Ratios on the all-images basis and the issue's two yes/no verdicts.

    "Ahead" means a strictly higher TAR at every FAR that has enough impostor pairs to be
    measured; a FAR that cannot be measured on a set is listed, not counted for either side.
    """
    ratios: dict[str, float | None] = {}
    ahead: list[bool] = []
    for key in (far_key(f) for f in FARS):
        g, p = ours["tar_all_images"][key], peer["tar_all_images"][key]
        if g is None or p is None:
            ratios[key] = None
            continue
        ratios[key] = g / p if p > 0 else None
        ahead.append(g > p)
    speedup = peer["ms_per_image_mean"] / ours["ms_per_image_mean"]
    return {
        "ratios": {"tar_gerbang_over_peer": ratios, "speedup": speedup,
                   "speedup_median": peer["ms_per_image_median"] / ours["ms_per_image_median"]},
        "fars_measured": [k for k, g in ours["tar_all_images"].items() if g is not None],
        "gerbang_ahead_at_every_far": bool(ahead) and all(ahead),
        "at_least_5x_faster": speedup >= SPEEDUP_BAR,
    }


def benchmark_set(images: ImageSet, embedders: list[Embedder]) -> dict[str, Any]:
    """Run and score every pipeline on one image set."""
    runs = run_pipelines(embedders, images)
    results = {e.name: score_run(e, runs[e.name], images.labels) for e in embedders}
    genuine = results[GERBANG]["report_all_images"]["genuine_pairs"]
    impostor = results[GERBANG]["report_all_images"]["impostor_pairs"]
    return {"path": str(images.root), "images": len(images.paths), "people": images.people,
            "pairs": {"genuine": genuine, "impostor": impostor},
            "pipelines": results, **compare(results[GERBANG], results[PEER])}


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _tar(report: dict[str, Any], key: str) -> float | None:
    return report["tar_at_far"][key].get("tar")


def _row(label: str, ours: str, peer: str, ratio: str) -> str:
    return f"  {label:<34}{ours:>10}{peer:>18}{ratio:>14}"


def render(result: dict[str, Any]) -> str:
    """The human table: one block per set, Gerbang | peer | ratio."""
    peer = result.get(PEER, {})
    blas = {True: "with BLAS", False: "built-in BLAS", None: "BLAS unknown"}
    lines = [f"Gerbang {result.get(GERBANG, {}).get('revision')} vs face_recognition "
             f"{peer.get('face_recognition')} (dlib {peer.get('dlib')}, "
             f"{blas[peer.get('dlib_uses_blas')]}); {result.get('threads')} thread(s)"]
    host = result.get("host") or {}
    if host:
        lines.append(f"host: {host.get('cpu_model')} ({host.get('cpu_id')}), {host.get('cpus')} "
                     f"CPUs, {', '.join(host.get('vector_extensions') or []) or 'no SIMD flags'}")
    lines.append("")
    for name, s in result["sets"].items():
        g, p = s["pipelines"][GERBANG], s["pipelines"][PEER]
        r = s["ratios"]
        pairs = s["pairs"]
        lines.append(f"{name}: {s['images']} images, {s['people']} people, "
                     f"{pairs['genuine']:,} genuine / {pairs['impostor']:,} impostor pairs")
        lines.append(_row("", "Gerbang", "face_recognition", "ratio"))
        lines.append(_row("failures to detect", str(g["failures_to_detect"]),
                         str(p["failures_to_detect"]), ""))
        lines.append(_row("ms/image, mean", _fmt(g["ms_per_image_mean"], ".1f"),
                         _fmt(p["ms_per_image_mean"], ".1f"), f"{r['speedup']:.1f}× faster"))
        lines.append(_row("ms/image, median", _fmt(g["ms_per_image_median"], ".1f"),
                         _fmt(p["ms_per_image_median"], ".1f"),
                         f"{r['speedup_median']:.1f}× faster"))
        for key in (far_key(f) for f in FARS):
            lines.append(_row(f"TAR @ FAR {key}, all images", _fmt(g["tar_all_images"][key], ".4f"),
                             _fmt(p["tar_all_images"][key], ".4f"),
                             _fmt(r["tar_gerbang_over_peer"][key], ".3f")))
        for key in (far_key(f) for f in FARS):
            lines.append(_row(f"TAR @ FAR {key}, detected only",
                             _fmt(_tar(g["report"], key), ".4f"),
                             _fmt(_tar(p["report"], key), ".4f"), ""))
        lines.append(_row("AUC, detected only", _fmt(g["report"]["auc"], ".5f"),
                         _fmt(p["report"]["auc"], ".5f"), ""))
        lines.append(_row("EER, detected only", _fmt(g["report"]["eer"], ".4f"),
                         _fmt(p["report"]["eer"], ".4f"), ""))
        yes = {True: "yes", False: "NO"}
        lines.append(f"  Gerbang ahead at every FAR ({', '.join(s['fars_measured'])}): "
                     f"{yes[s['gerbang_ahead_at_every_far']]}; "
                     f"at least {SPEEDUP_BAR:g}× faster: {yes[s['at_least_5x_faster']]}")
        lines.append("")
    summary = result["summary"]
    lines.append(f"every set: Gerbang ahead at every FAR: "
                 f"{'yes' if summary['gerbang_ahead_at_every_far_on_every_set'] else 'NO'}; "
                 f"at least {SPEEDUP_BAR:g}× faster: "
                 f"{'yes' if summary['at_least_5x_faster_on_every_set'] else 'NO'}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description="Compare Gerbang with the face_recognition library on the same images.")
    parser.add_argument("dirs", nargs="+", type=Path, metavar="DIR",
                        help="folder of <person>/<image> files")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--limit-people", type=int, default=None, metavar="N",
                        help="only the first N people (sorted) of each folder")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for Gerbang's models and OpenCV and for the BLAS a "
                             "dlib build links (default 1)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run both pipelines on every folder and print the table or the JSON object."""
    args = parse_args(argv)
    require_peer()
    # Read by OpenBLAS / MKL / OpenMP when dlib loads them (at PeerEmbedder()), not before.
    for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = str(args.threads)
    sets = [ImageSet.load(d, args.limit_people) for d in args.dirs]
    gerbang = GerbangEmbedder(args.threads)
    # Read before the run: the tree may change while a 15-minute comparison is going on.
    measured = gerbang.describe()
    peer = PeerEmbedder()
    host = describe_host()
    results: dict[str, dict[str, Any]] = {}
    for images in sets:
        key = images.name if images.name not in results else str(images.root)
        results[key] = benchmark_set(images, [gerbang, peer])
    result = {
        "threads": args.threads,
        "python": platform.python_version(),
        "host": host,
        "load_average_1m": {"before": host["load_average_1m"], "after": os.getloadavg()[0]},
        GERBANG: measured,
        PEER: peer.describe(),
        "sets": results,
        "summary": {
            "gerbang_ahead_at_every_far_on_every_set":
                all(s["gerbang_ahead_at_every_far"] for s in results.values()),
            "at_least_5x_faster_on_every_set":
                all(s["at_least_5x_faster"] for s in results.values()),
        },
    }
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
