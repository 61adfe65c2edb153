"""Verification accuracy from genuine and impostor scores: AUC, EER, TAR at a target FAR.

Plain numpy, no model code, so benchmarks of other face systems can be scored the same way.
A FAR is only reported when there are enough impostor pairs to measure it: at least
``MIN_IMPOSTORS_PER_FAR / far`` pairs (5 impostor scores above the threshold, so the threshold is
set by more than one or two outliers), otherwise the entry says it is unsupported rather than
printing a number that means nothing.

A rate measured at a fixed threshold (the shipped one) comes with intervals: the exact binomial
one and a bootstrap over people (see the section below for which and why).
"""

from __future__ import annotations

import math
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


# --- How sure a measured rate is ------------------------------------------------------------
#
# A FAR measured at a fixed threshold is k accepted impostor pairs out of n. Two intervals are
# given, because the pairs are not independent draws: every person appears in many pairs (a
# person who looks like many others lifts the count of all of them), so the real uncertainty is
# about *which people* were sampled, not only which pairs.
#
# * ``clopper_pearson``: the exact binomial interval. Chosen over Wilson because its coverage is
#   never below the nominal 95% (Wilson's dips below it for rates near 0, where a FAR of 1e-4
#   lives), so "the lower bound is above the target" is a claim that holds even for a count of a
#   handful of pairs. It assumes independent pairs: read it as the least uncertainty there is.
# * ``by_person_bootstrap``: resample people with replacement and recount their pairs. It
#   carries the correlation between pairs that share a person; it is degenerate (zero width)
#   when no pair was accepted, where the exact interval still says how far the rate could be.


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta function I_x(a, b) (continued fraction, Lentz's method).

    Here so the exact binomial interval needs no SciPy on the device; accurate to ~1e-13 for
    the pair counts of an evaluation (a, b up to tens of millions).
    """
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b); converges fast for x < (a + 1) / (a + b + 2)."""
    tiny, eps = 1e-300, 1e-15

    def guard(v: float) -> float:
        return tiny if abs(v) < tiny else v

    c, d = 1.0, 1.0 / guard(1.0 - (a + b) * x / (a + 1))
    h = d
    for m in range(1, 100_000):
        for numerator in (m * (b - m) * x / ((a - 1 + 2 * m) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 1 + 2 * m))):
            d = 1.0 / guard(1.0 + numerator * d)
            c = guard(1.0 + numerator / c)
            h *= d * c
        if abs(d * c - 1.0) < eps:
            return h
    raise ArithmeticError(f"incomplete beta did not converge for a={a}, b={b}, x={x}")


def _beta_quantile(q: float, a: float, b: float) -> float:
    """The x with I_x(a, b) = q, by bisection on log x (rates down to 1e-12 stay exact)."""
    low, high = -700.0, 0.0  # log x
    for _ in range(200):
        middle = (low + high) / 2
        if betainc(a, b, math.exp(middle)) < q:
            low = middle
        else:
            high = middle
        if high - low < 1e-12:
            break
    return math.exp((low + high) / 2)


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) two-sided interval for a rate of ``k`` hits in ``n`` trials."""
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"clopper_pearson: {k} hits in {n} trials")
    tail = (1.0 - confidence) / 2
    low = 0.0 if k == 0 else _beta_quantile(tail, k, n - k + 1)
    high = 1.0 if k == n else _beta_quantile(1.0 - tail, k + 1, n - k)
    return low, high


def accepted(scores: np.ndarray, threshold: float) -> np.ndarray:
    """Which scores a gate accepts at ``threshold``: ``score >= threshold``, as
    ``device.decide.checkin`` decides (the re-fitted thresholds above count ``>`` instead)."""
    return np.asarray(scores) >= threshold


def pair_counts(first: np.ndarray, second: np.ndarray, hits: np.ndarray,
                people: int) -> tuple[np.ndarray, np.ndarray]:
    """Per pair of people: (hits, comparisons) as symmetric ``people × people`` matrices.

    ``first``/``second`` are the person indices of each comparison (probe and template, or
    the two images); a comparison between a and b counts in both [a, b] and [b, a].
    """
    index = np.asarray(first, dtype=np.int64) * people + np.asarray(second, dtype=np.int64)
    size = people * people
    trials = np.bincount(index, minlength=size).reshape(people, people).astype(np.float64)
    hit = np.bincount(index, weights=np.asarray(hits, dtype=np.float64),
                      minlength=size).reshape(people, people)
    return hit + hit.T, trials + trials.T


def by_person_bootstrap(hits: np.ndarray, trials: np.ndarray, rows: np.ndarray,
                        cols: np.ndarray | None = None, confidence: float = 0.95,
                        draws: int = 1000, seed: int = 17) -> tuple[float, float] | None:
    """Percentile interval of a rate when people, not pairs, are resampled with replacement.

    ``hits``/``trials`` are per person (1-D: genuine comparisons) or per pair of people (2-D,
    from ``pair_counts``: impostor comparisons). ``rows`` are the people of the population; for
    a rate between two groups, ``rows`` and ``cols`` are the two groups, resampled independently.
    None when there are too few people to resample (fewer than 2 on a side) or no trials.
    Fixed seed: the same data gives the same interval.
    """
    rng = np.random.default_rng(seed)
    rows = np.asarray(rows, dtype=np.int64)

    def weights(people: np.ndarray) -> np.ndarray:
        return rng.multinomial(len(people), np.full(len(people), 1 / len(people)),
                               size=draws).astype(np.float64)

    if len(rows) < 2 or (cols is not None and len(cols) < 2):
        return None
    w_rows = weights(rows)
    if hits.ndim == 1:
        numerator, denominator = w_rows @ hits[rows], w_rows @ trials[rows]
    else:
        cols_ = rows if cols is None else np.asarray(cols, dtype=np.int64)
        w_cols = w_rows if cols is None else weights(cols_)
        block = np.ix_(rows, cols_)
        numerator = np.sum((w_rows @ hits[block]) * w_cols, axis=1)
        denominator = np.sum((w_rows @ trials[block]) * w_cols, axis=1)
    valid = denominator > 0
    if not valid.any():
        return None
    rates = numerator[valid] / denominator[valid]
    tail = 100 * (1 - confidence) / 2
    return float(np.percentile(rates, tail)), float(np.percentile(rates, 100 - tail))
