"""The statistics of a calibration: a threshold as an order statistic of impostor scores, its
distribution-free confidence bound, and intervals on measured rates. Plain numpy and math.

A threshold for FAR ``f`` from ``n`` impostor scores is the ``(k+1)``-th highest with
``k = floor(f n)``: exactly ``k`` impostors score above it. Its **95% upper confidence bound**
is distribution-free (the order-statistic bound of a quantile): the number of impostor scores
above the true ``1 - f`` quantile ``q`` is Binomial(n, f), so the ``j``-th highest score is
at least ``q`` with probability P(Bin(n, f) ≥ j); the bound is the ``j``-th highest for the
largest ``j`` where that probability is still ≥ 95%. Binomial tails are exact (the incomplete
beta of ``device.infer.metrics``, which eval's exact intervals use too). Measured rates get
Wilson score intervals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from device.infer.metrics import MIN_IMPOSTORS_PER_FAR, betainc

#: How many impostor scores must lie above a threshold for it to be fitted at all: the same
#: bound as eval's (the threshold is then set by more than one or two outliers).
MIN_ABOVE = MIN_IMPOSTORS_PER_FAR
Z95_TWO_SIDED = 1.959963984540054


def binom_cdf(x: int, n: int, p: float) -> float:
    """P(Bin(n, p) ≤ x), exact: the regularised incomplete beta I_{1-p}(n - x, x + 1)."""
    if x < 0:
        return 0.0
    if x >= n:
        return 1.0
    return betainc(n - x, x + 1, 1.0 - p)


def binom_upper(n: int, p: float, confidence: float = 0.99) -> int:
    """The smallest ``c`` with P(Bin(n, p) ≤ c) ≥ ``confidence``: more than ``c`` exceedances
    is a tail heavier than ``p`` promises (at that confidence)."""
    c = int(n * p)
    while binom_cdf(c, n, p) < confidence:
        c += 1
    while c > 0 and binom_cdf(c - 1, n, p) >= confidence:
        c -= 1
    return c


def wilson(successes: int, n: int, z: float = Z95_TWO_SIDED) -> tuple[float, float]:
    """Wilson score interval of a proportion (95% two-sided by default)."""
    if n == 0:
        return 0.0, 1.0
    phat = successes / n
    centre = (phat + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    return lo, 1.0 if successes == n else min(1.0, centre + half)


@dataclass(frozen=True)
class FittedThreshold:
    """A threshold for one FAR and what supports it."""

    far: float
    threshold: float
    #: 95% upper confidence bound: the true FAR at this threshold is ≤ ``far`` with 95%
    #: confidence.
    upper_ci: float
    impostors_above: int  # k: impostor scores above ``threshold``
    impostor_pairs: int


def _up(value: float, step: float = 1e-4) -> float:
    """Round up to ``step`` (a threshold is written with four decimals; rounding down would
    admit the impostor it was set just above)."""
    return math.ceil(round(value / step, 6)) * step


def fit_threshold(top: np.ndarray, impostor_pairs: int, far: float,
                  confidence: float = 0.95) -> FittedThreshold | None:
    """The threshold for ``far`` from the highest impostor scores ``top`` (sorted descending,
    at least ``floor(far n) + 1`` of them) out of ``impostor_pairs`` in all; None when there
    are too few pairs (fewer than ``MIN_ABOVE / far``).

    The gate accepts a score ≥ threshold, so the threshold is written just above the
    ``(k+1)``-th highest score (four decimals, rounded up).
    """
    n = int(impostor_pairs)
    if n < math.ceil(MIN_ABOVE / far):
        return None
    k = math.floor(far * n + 1e-9)
    if top.size < k + 1:
        raise ValueError(f"{top.size} top scores kept, {k + 1} needed for FAR {far:g}")
    # largest j with P(Bin(n, far) ≥ j) ≥ confidence, i.e. P(X ≤ j - 1) ≤ 1 - confidence
    j = max(k, 1)
    while j > 1 and binom_cdf(j - 1, n, far) > 1 - confidence:
        j -= 1
    threshold = _up(float(top[k]) + 1e-9)
    bound = _up(float(top[j - 1]) + 1e-9)
    return FittedThreshold(far, round(threshold, 4), round(max(bound, threshold), 4), k, n)


class TopScores:
    """The highest ``keep`` scores of a stream of blocks, and how many there were."""

    def __init__(self, keep: int) -> None:
        self.keep = max(int(keep), 1)
        self.count = 0
        self._top = np.zeros(0, dtype=np.float32)

    def add(self, scores: np.ndarray) -> None:
        """Take a block of scores (any shape)."""
        flat = np.asarray(scores, dtype=np.float32).ravel()
        self.count += flat.size
        merged = np.concatenate([self._top, flat])
        if merged.size > self.keep:
            merged = np.partition(merged, merged.size - self.keep)[-self.keep:]
        self._top = merged

    def sorted(self) -> np.ndarray:
        """The kept scores, highest first."""
        return np.sort(self._top)[::-1]
