"""Fit the passive liveness classifier and write ``device/infer/models/pad_passive.json``.

    python provisioning/train_pad.py --data ../shared/data/pad/gc535 \\
        --out device/infer/models/pad_passive.json

Reproducible from the same data, seed and model bundle: features come from the device's own
pipeline (YuNet → FaceMesh → aligned 112×112 crop, then ``device.infer.liveness``), the
classifier is an L2-regularised logistic regression solved exactly by Newton's method in numpy.

Why the split is by identity group, not by image: gc535's crops come in bursts of near-identical
frames of one person (median nearest-neighbour SFace cosine 0.96), and most people appear both as
bona fide and as attack. A random image split would put near-copies of every test image in the
training set and measure memory, not liveness. Images are grouped by connected components of
SFace similarity (cosine > 0.7 links two crops), and whole groups go to train or test. C is chosen
by grouped cross-validation on the training split only; the test split is scored once, by the
final model, at a threshold fixed before looking at it.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from device.capture.replay import IMAGE_SUFFIXES, read_image
from device.infer.bundle import load_bundle
from device.infer.liveness import CUE_NAMES, SFaceTaps, passive_features
from device.infer.pipeline import FacePipeline
from gerbang.progress import progress

#: SFace layers whose per-channel means are features: the PReLU outputs at the end of the
#: 56×56×128, 28×28×256 and two 14×14×512 stages. Chosen by grouped CV on the training split:
#: mid-level layers carry texture (halftone, screen pixels, blur) that the identity output has
#: learnt to ignore; the final embedding alone was the weakest feature set (docs/liveness.md).
SFACE_LAYERS = (
    "model_30/tf.__operators__.add_13/AddV2;model_30/tf.nn.relu_27/Relu;"
    "model_30/tf.math.negative_6/Neg;model_30/tf.nn.relu_28/Relu;model_30/tf.math.multiply_19/Mul1",
    "model_30/tf.__operators__.add_21/AddV2;model_30/tf.nn.relu_35/Relu;"
    "model_30/tf.math.negative_10/Neg;model_30/tf.nn.relu_36/Relu;model_30/tf.math.multiply_27/Mul1",
    "model_30/tf.__operators__.add_29/AddV2;model_30/tf.nn.relu_43/Relu;"
    "model_30/tf.math.negative_14/Neg;model_30/tf.nn.relu_44/Relu;model_30/tf.math.multiply_35/Mul1",
    "model_30/tf.__operators__.add_45/AddV2;model_30/tf.nn.relu_59/Relu;"
    "model_30/tf.math.negative_22/Neg;model_30/tf.nn.relu_60/Relu;model_30/tf.math.multiply_51/Mul1",
)
CLASSES = {"live": 1, "spoof": 0}  # folder → label (1 = bona fide)
DEFAULT_SEED = 20261128
DEFAULT_CS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
#: ROC-style table thresholds written to the record (besides the operating one).
ROC_THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95)


def name_hash(name: str) -> str:
    """First 16 hex digits of sha256 of ``<class>/<file name>``: identifies an image in the
    record (for leakage checks) without shipping file names of a face collection."""
    return hashlib.sha256(name.encode()).hexdigest()[:16]


def list_images(data: Path) -> list[tuple[str, int]]:
    """(``<class>/<file>``, label) for every image under ``data/live`` and ``data/spoof``."""
    items = []
    for folder, label in CLASSES.items():
        directory = data / folder
        if not directory.is_dir():
            raise SystemExit(f"{directory} is missing: expected {data}/live and {data}/spoof")
        items += [(f"{folder}/{p.name}", label) for p in sorted(directory.iterdir())
                  if p.suffix.lower() in IMAGE_SUFFIXES]
    return items


def extract(data: Path, items: list[tuple[str, int]], threads: int) -> dict[str, np.ndarray]:
    """Run the device pipeline and the passive features on every image.

    Returns ``features`` (n×d), ``embedding`` (n×128, for grouping) and ``ok`` (a face found).
    """
    bundle = load_bundle()
    pipeline = FacePipeline.from_bundle(bundle, threads=threads)
    taps = SFaceTaps.from_bundle(bundle, SFACE_LAYERS, threads=threads)
    dim = None
    feats: list[np.ndarray | None] = []
    embs: list[np.ndarray | None] = []
    for name, _ in progress(items, label="features"):
        image = read_image(data / name)
        reading = pipeline.read(image) if image is not None else None
        if reading is None or reading.subject is None or reading.crop is None:
            feats.append(None)
            embs.append(None)
            continue
        f = passive_features(taps, reading.crop)
        dim = f.size
        feats.append(f)
        embs.append(reading.embedding)
    if dim is None:
        raise SystemExit("no face was found in any image")
    ok = np.array([f is not None for f in feats])
    return {
        "features": np.array([f if f is not None else np.zeros(dim) for f in feats]),
        "embedding": np.array([e if e is not None else np.zeros(128) for e in embs]),
        "ok": ok,
    }


def identity_groups(embeddings: np.ndarray, threshold: float) -> np.ndarray:
    """Group id per row: connected components of the graph ``cosine > threshold``.

    Chaining is intended: a burst of frames drifting from one pose to another stays one group.
    """
    n = len(embeddings)
    parent = np.arange(n)

    def root(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = int(parent[a])
        return a

    sims = embeddings @ embeddings.T
    for a, b in zip(*np.nonzero(np.triu(sims > threshold, 1)), strict=True):
        ra, rb = root(int(a)), root(int(b))
        if ra != rb:
            parent[ra] = rb
    return np.unique([root(a) for a in range(n)], return_inverse=True)[1]


def group_split(groups: np.ndarray, labels: np.ndarray, fraction: float, seed: int,
                tries: int = 2000) -> np.ndarray:
    """Boolean test mask: whole groups, about ``fraction`` of each class, seeded.

    Groups hold both classes, so exact stratification is impossible; of ``tries`` seeded random
    greedy fills the one closest to ``fraction`` for both classes is kept.
    """
    rng = np.random.default_rng(seed)
    ids = np.unique(groups)
    counts = {g: (int(np.sum(labels[groups == g] == 1)), int(np.sum(labels[groups == g] == 0)))
              for g in ids}
    target = (fraction * np.sum(labels == 1), fraction * np.sum(labels == 0))
    best: tuple[float, list[int]] | None = None
    for _ in range(tries):
        chosen, live, attack = [], 0, 0
        for g in rng.permutation(ids):
            gl, ga = counts[g]
            if live + gl <= 1.05 * target[0] and attack + ga <= 1.05 * target[1]:
                chosen.append(int(g))
                live, attack = live + gl, attack + ga
        error = abs(live - target[0]) / target[0] + abs(attack - target[1]) / target[1]
        if best is None or error < best[0]:
            best = (error, chosen)
    assert best is not None
    return np.isin(groups, best[1])


def fit_logistic(x: np.ndarray, y: np.ndarray, c: float) -> tuple[np.ndarray, float]:
    """L2 logistic regression: minimise ``sum(log-loss) + |w|² / (2C)`` (bias unpenalised).

    Newton's method on the exact Hessian: a few dozen iterations on ~1,600 × 1,400, exact and
    deterministic (the same objective as scikit-learn's ``LogisticRegression(C=C)``).
    """
    n, d = x.shape
    xb = np.hstack([x, np.ones((n, 1))])
    w = np.zeros(d + 1)
    penalty = np.full(d + 1, 1.0 / c)
    penalty[-1] = 1e-9
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-np.clip(xb @ w, -50, 50)))
        grad = xb.T @ (p - y) + penalty * w
        hess = (xb * (p * (1 - p))[:, None]).T @ xb + np.diag(penalty)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.max(np.abs(step)) < 1e-9:
            break
    return w[:-1], float(w[-1])


def standardiser(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and scale (std, floored so constant features stay finite)."""
    return x.mean(0), np.maximum(x.std(0), 1e-9)


def predict(x: np.ndarray, mean: np.ndarray, scale: np.ndarray, w: np.ndarray,
            b: float) -> np.ndarray:
    """Bona fide probability (same arithmetic as ``PassiveLiveness.score_features``)."""
    z = ((x - mean) / scale) @ w + b
    return 1.0 / (1.0 + np.exp(-np.clip(z, -50.0, 50.0)))


def error_rates(live: np.ndarray, attack: np.ndarray, threshold: float) -> tuple[float, float]:
    """(APCER, BPCER) at ``threshold``: attacks scoring ≥ it are accepted, bona fide < it
    rejected (ISO/IEC 30107-3)."""
    return float(np.mean(attack >= threshold)), float(np.mean(live < threshold))


def threshold_at_bpcer(live: np.ndarray, bpcer: float) -> float:
    """Highest threshold rejecting at most ``bpcer`` of the bona fide scores."""
    s = np.sort(live)
    k = int(np.floor(bpcer * len(s)))
    return float(s[k]) if k < len(s) else float(s[-1])


def eer(live: np.ndarray, attack: np.ndarray) -> float:
    """Equal error rate (APCER = BPCER) over all score thresholds."""
    thresholds = np.unique(np.concatenate([live, attack]))
    rates = np.array([error_rates(live, attack, t) for t in thresholds])
    k = int(np.argmin(np.abs(rates[:, 0] - rates[:, 1])))
    return float(rates[k].mean())


def grouped_oof(x: np.ndarray, y: np.ndarray, groups: np.ndarray, c: float, folds: int,
                seed: int) -> np.ndarray:
    """Out-of-fold scores: groups shuffled by ``seed`` into ``folds`` folds, each fold scored
    by a model (with its own standardiser) fitted on the others."""
    ids = np.random.default_rng(seed).permutation(np.unique(groups))
    scores = np.zeros(len(y))
    for fold in np.array_split(ids, folds):
        held = np.isin(groups, fold)
        mean, scale = standardiser(x[~held])
        w, b = fit_logistic((x[~held] - mean) / scale, y[~held], c)
        scores[held] = predict(x[held], mean, scale, w, b)
    return scores


def choose_c(x: np.ndarray, y: np.ndarray, groups: np.ndarray, cs: tuple[float, ...],
             folds: int, repeats: int, seed: int) -> tuple[float, list[dict[str, Any]],
                                                         np.ndarray]:
    """C with the lowest mean out-of-fold APCER at 5% BPCER (ties: the smaller, more
    regularised C), the grid, and the chosen C's out-of-fold scores of the first repeat (for
    the threshold). The grid should reach past the choice: a plateau at its top is fine, an
    edge that is still improving is not."""
    grid, oof = [], {}
    for c in cs:
        apcers, eers = [], []
        for r in range(repeats):
            s = grouped_oof(x, y, groups, c, folds, seed + r)
            if r == 0:
                oof[c] = s
            live, attack = s[y == 1], s[y == 0]
            apcers.append(error_rates(live, attack, threshold_at_bpcer(live, 0.05))[0])
            eers.append(eer(live, attack))
        grid.append({"C": c, "apcer_at_bpcer_5pct": round(float(np.mean(apcers)), 4),
                     "eer": round(float(np.mean(eers)), 4)})
        print(f"  C={c:<6g} CV APCER@BPCER5% {np.mean(apcers):.4f}  EER {np.mean(eers):.4f}",
              file=sys.stderr)
    best = min(grid, key=lambda g: (g["apcer_at_bpcer_5pct"], g["C"]))
    return best["C"], grid, oof[best["C"]]


def test_report(live: np.ndarray, attack: np.ndarray, threshold: float) -> dict[str, Any]:
    """APCER/BPCER with counts at the operating threshold, plus the trade-off around it."""
    apcer, bpcer = error_rates(live, attack, threshold)
    roc = []
    for t in sorted({*ROC_THRESHOLDS, round(threshold, 4)}):
        a, b = error_rates(live, attack, t)
        roc.append({"threshold": t, "apcer": round(a, 4), "bpcer": round(b, 4)})
    at_bpcer = {}
    for target in (0.01, 0.02, 0.05, 0.10):
        t = threshold_at_bpcer(live, target)
        a, b = error_rates(live, attack, t)
        at_bpcer[f"{target:g}"] = {"threshold": round(t, 4), "apcer": round(a, 4),
                                   "bpcer": round(b, 4)}
    return {
        "threshold": round(threshold, 6), "bona_fide": int(live.size),
        "attacks": int(attack.size),
        "apcer": round(apcer, 4), "accepted_attacks": int(np.sum(attack >= threshold)),
        "bpcer": round(bpcer, 4), "rejected_bona_fide": int(np.sum(live < threshold)),
        "eer": round(eer(live, attack), 4),
        "apcer_at_oracle_bpcer": at_bpcer,  # thresholds set on the test split: trade-off only
        "roc": roc,
    }


def _floats(values: np.ndarray, digits: int = 8) -> list[float]:
    return [float(f"{v:.{digits}g}") for v in np.asarray(values, dtype=np.float64)]


def dump_json(doc: dict[str, Any]) -> str:
    """Indented JSON with every list of plain values on one line (diffable, and ~3× smaller
    than one number per line)."""
    text = json.dumps(doc, indent=1, ensure_ascii=False)
    return re.sub(r"\[[^\[\]{}]*\]", lambda m: " ".join(m.group(0).split()), text) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, extract features, split, cross-validate, fit, test, write the JSON."""
    default_data = Path(os.environ.get("GERBANG_DATA", "../shared/data")) / "pad" / "gc535"
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=default_data,
                    help="folder with live/ and spoof/ face crops (default: %(default)s)")
    ap.add_argument("--out", type=Path,
                    default=Path(__file__).resolve().parent.parent / "device" / "infer"
                    / "models" / "pad_passive.json")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--test-fraction", type=float, default=0.3)
    ap.add_argument("--group-cosine", type=float, default=0.7,
                    help="SFace cosine above which two crops are one identity group")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--C", dest="cs", type=float, nargs="+", default=list(DEFAULT_CS))
    ap.add_argument("--target-bpcer", type=float, default=0.02,
                    help="operating threshold: this BPCER on the training split's "
                    "out-of-fold scores (default %(default)s, margin under the 5%% bar)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--date", default=datetime.date.today().isoformat())
    ap.add_argument("--cache", type=Path, help="features .npz to reuse/write (scratch only: "
                    "it holds no images, but keep it out of the repository)")
    args = ap.parse_args(argv)

    timings: dict[str, float] = {}
    items = list_images(args.data)
    names = [n for n, _ in items]
    labels = np.array([lab for _, lab in items])
    t0 = time.perf_counter()
    if args.cache and args.cache.exists():
        cached = np.load(args.cache)
        if list(cached["names"]) != names:
            raise SystemExit(f"{args.cache} was made from other images; delete it")
        ext = {k: cached[k] for k in ("features", "embedding", "ok")}
    else:
        ext = extract(args.data, items, args.threads)
        if args.cache:
            np.savez(args.cache, names=np.array(names), **ext)
    timings["feature_extraction_s"] = round(time.perf_counter() - t0, 1)

    ok = ext["ok"]
    failed = [n for n, good in zip(names, ok, strict=True) if not good]
    print(f"{len(items)} images, no face found in {len(failed)}: {failed}", file=sys.stderr)
    idx = np.nonzero(ok)[0]
    x, y = ext["features"][idx], labels[idx].astype(np.float64)
    groups = identity_groups(ext["embedding"][idx], args.group_cosine)
    test = group_split(groups, labels[idx], args.test_fraction, args.seed)
    train = ~test
    emb = ext["embedding"][idx]
    cross = (emb[test] @ emb[train].T).max(1)

    t1 = time.perf_counter()
    c, grid, oof = choose_c(x[train], y[train], groups[train], tuple(args.cs), args.folds,
                            args.repeats, args.seed)
    threshold = threshold_at_bpcer(oof[y[train] == 1], args.target_bpcer)
    mean, scale = standardiser(x[train])
    w, b = fit_logistic((x[train] - mean) / scale, y[train], c)
    timings["cross_validation_and_fit_s"] = round(time.perf_counter() - t1, 1)

    scores = predict(x[test], mean, scale, w, b)
    live, attack = scores[y[test] == 1], scores[y[test] == 0]
    report = test_report(live, attack, threshold)
    print(f"test: {report['bona_fide']} bona fide, {report['attacks']} attacks; threshold "
          f"{threshold:.4f}: APCER {report['apcer']:.4f} ({report['accepted_attacks']}), "
          f"BPCER {report['bpcer']:.4f} ({report['rejected_bona_fide']}), EER {report['eer']}",
          file=sys.stderr)

    def counts(mask: np.ndarray) -> dict[str, int]:
        return {"bona_fide": int(np.sum(y[mask] == 1)), "attack": int(np.sum(y[mask] == 0)),
                "groups": int(np.unique(groups[mask]).size)}

    bundle = load_bundle()
    test_names = [names[i] for i in idx[test]]
    doc = {
        "format": 1,
        "what": "Gerbang passive presentation-attack detector (device/infer/liveness.py)",
        "features": {
            "input": "aligned 112x112 BGR crop (FaceReading.crop)",
            "embedder_sha256": bundle.entry("embedder")["sha256"],
            "sface_layers": list(SFACE_LAYERS),
            "sface_pooling": "per-channel mean over H×W of each layer, in this order",
            "cues": CUE_NAMES,
            "dim": int(x.shape[1]),
        },
        "classifier": {
            "type": "L2-regularised logistic regression on standardised features; "
                    "score = sigmoid(((f - mean) / scale) · weights + bias), 1 = bona fide",
            "C": c, "threshold": round(threshold, 6),
            "bias": float(f"{b:.9g}"),
            "mean": _floats(mean), "scale": _floats(scale), "weights": _floats(w, 7),
        },
        "training": {
            "date": args.date,
            "command": "python provisioning/train_pad.py --data ../shared/data/pad/gc535 "
                       "--out device/infer/models/pad_passive.json",
            "data_set": "gc535 (shared/data/pad/gc535: live/ bona fide, spoof/ photo and "
                        "screen recaptures; a public liveness collection, evaluation only)",
            "images": {"bona_fide": int(np.sum(labels == 1)),
                       "attack": int(np.sum(labels == 0))},
            "no_face_found": {"count": len(failed),
                              "name_sha256_16": [name_hash(n) for n in failed]},
            "seed": args.seed,
            "grouping": {
                "rule": f"connected components of SFace cosine > {args.group_cosine} over both "
                        "classes; whole groups go to one split",
                "groups": int(np.unique(groups).size),
                "largest_group": int(np.bincount(groups).max()),
                "test_to_train_max_cosine": {"median": round(float(np.median(cross)), 4),
                                             "max": round(float(cross.max()), 4)},
            },
            "split": {"test_fraction": args.test_fraction, "train": counts(train),
                      "test": counts(test)},
            "cv": {"scheme": f"grouped {args.folds}-fold on the train split, "
                             f"{args.repeats} repeats (seeds {args.seed}..)",
                   "criterion": "mean out-of-fold APCER at BPCER 5%, ties to the smaller C",
                   "grid": grid, "chosen_C": c},
            "threshold_rule": f"BPCER {args.target_bpcer:g} on the train split's out-of-fold "
                              "scores (repeat 1, chosen C); fixed before scoring the test split",
            "test": report,
            "timings": timings,
            "train_name_sha256_16": sorted(name_hash(names[i]) for i in idx[train]),
            "test_items": sorted([name_hash(n), int(lab), round(float(s), 5)]
                                 for n, lab, s in zip(test_names, y[test], scores,
                                                      strict=True)),
            "note": "names are sha256(<class>/<file name>)[:16]; no image or file name is "
                    "stored",
        },
    }
    args.out.write_text(dump_json(doc))
    if (args.out.parent / "manifest.json").is_file():
        # Pin the fitted classifier in the bundle it was fitted for (see device.infer.bundle).
        from device.infer.bundle import pin_artefact

        pin_artefact(args.out.parent, "pad_passive", args.out,
                     fitted_on_embedder=doc["features"]["embedder_sha256"])
    print(f"wrote {args.out} (C={c}, threshold {threshold:.4f}); timings {timings}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
