"""Verification accuracy from genuine and impostor scores: AUC, EER, TAR at a target FAR.

Plain numpy, no model code, so benchmarks of other face systems can be scored the same way.
A FAR is only reported when there are enough impostor pairs to measure it: at least
``MIN_IMPOSTORS_PER_FAR / far`` pairs (5 impostor scores above the threshold, so the threshold is
set by more than one or two outliers), otherwise the entry says it is unsupported rather than
printing a number that means nothing.
"""

from __future__ import annotations

from typing import Any

import numpy as np

FARS = (1e-2, 1e-3, 1e-4)
#: How many impostor scores must lie above a threshold for its FAR to be a measurement.
MIN_IMPOSTORS_PER_FAR = 5


def far_key(far: float) -> str:
    """``1e-3`` → ``"1e-3"``: the JSON key used for each FAR."""
    mantissa, exponent = f"{far:.0e}".split("e")
    return f"{mantissa}e-{int(exponent[1:])}" if exponent.startswith("-") else f"{far:g}"


def auc(genuine: np.ndarray, impostor: np.ndarray) -> float:
    """Area under the ROC curve: P(genuine score > impostor score), ties counted half."""
    g = np.sort(np.asarray(genuine, dtype=np.float64))
    i = np.sort(np.asarray(impostor, dtype=np.float64))
    if g.size == 0 or i.size == 0:
        return float("nan")
    below = np.searchsorted(i, g, side="left")
    ties = np.searchsorted(i, g, side="right") - below
    return float((below.sum() + 0.5 * ties.sum()) / (g.size * i.size))


def eer(genuine: np.ndarray, impostor: np.ndarray) -> tuple[float, float]:
    """Equal error rate and its threshold (where false rejects ≈ false accepts)."""
    g = np.sort(np.asarray(genuine, dtype=np.float64))
    i = np.sort(np.asarray(impostor, dtype=np.float64))
    thresholds = np.unique(np.concatenate([g, i]))
    if thresholds.size > 20000:
        thresholds = np.quantile(thresholds, np.linspace(0, 1, 20000))
    frr = np.searchsorted(g, thresholds, side="left") / g.size
    far = 1 - np.searchsorted(i, thresholds, side="left") / i.size
    k = int(np.argmin(np.abs(frr - far)))
    return float((frr[k] + far[k]) / 2), float(thresholds[k])


def tar_at_far(genuine: np.ndarray, impostor: np.ndarray, far: float) -> dict[str, Any]:
    """TAR and threshold at ``far``; ``supported`` False when impostors are too few."""
    i = np.sort(np.asarray(impostor, dtype=np.float64))[::-1]
    needed = int(np.ceil(MIN_IMPOSTORS_PER_FAR / far))
    if i.size < needed:
        return {"supported": False,
                "reason": f"{i.size} impostor pairs; {needed} needed to measure FAR {far:g}"}
    k = int(np.floor(far * i.size))  # accept strictly above the (k+1)-th highest impostor
    threshold = float(i[k])
    g = np.asarray(genuine, dtype=np.float64)
    return {"supported": True, "tar": float(np.mean(g > threshold)), "threshold": threshold,
            "far_measured": float(np.mean(i > threshold))}


def verification_report(genuine: np.ndarray, impostor: np.ndarray,
                        fars: tuple[float, ...] = FARS) -> dict[str, Any]:
    """Pair counts, AUC, EER and TAR at each FAR, as one JSON-ready dict."""
    genuine = np.asarray(genuine, dtype=np.float64)
    impostor = np.asarray(impostor, dtype=np.float64)
    rate, threshold = eer(genuine, impostor) if genuine.size and impostor.size else (None, None)
    return {
        "genuine_pairs": int(genuine.size), "impostor_pairs": int(impostor.size),
        "auc": auc(genuine, impostor), "eer": rate, "eer_threshold": threshold,
        "tar_at_far": {far_key(f): tar_at_far(genuine, impostor, f) for f in fars},
    }


def all_pairs_scores(embeddings: np.ndarray, labels: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Genuine and impostor cosine scores over every unordered pair of (unit) embeddings."""
    e = np.asarray(embeddings, dtype=np.float32)
    lab = np.asarray(labels)
    scores = e @ e.T
    upper = np.triu_indices(len(lab), 1)
    same = (lab[:, None] == lab[None, :])[upper]
    flat = scores[upper]
    return flat[same], flat[~same]
