"""Matching a live embedding against a gallery of templates: one matrix product."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Match:
    """The best gallery entry for a probe and its cosine similarity."""

    index: int
    score: float


class Gallery:
    """Templates (unit vectors, one row per applicant) searched by cosine similarity.

    Held as one contiguous float32 matrix so 1:N over a room (or 100,000 entries) is a single
    BLAS call rather than a Python loop.
    """

    def __init__(self, ids: list[str], templates: np.ndarray) -> None:
        templates = np.asarray(templates, dtype=np.float32)
        if templates.ndim != 2 or len(ids) != templates.shape[0]:
            raise ValueError(f"gallery: {len(ids)} ids for templates of shape {templates.shape}")
        norms = np.linalg.norm(templates, axis=1, keepdims=True)
        self.ids = list(ids)
        self.templates = np.ascontiguousarray(templates / np.where(norms > 0, norms, 1))

    def __len__(self) -> int:
        return len(self.ids)

    def scores(self, probe: np.ndarray) -> np.ndarray:
        """Cosine similarity of ``probe`` to every template."""
        return self.templates @ np.asarray(probe, dtype=np.float32)

    def best(self, probe: np.ndarray) -> Match | None:
        """The most similar template, or None for an empty gallery."""
        if not self.ids:
            return None
        s = self.scores(probe)
        i = int(np.argmax(s))
        return Match(index=i, score=float(s[i]))
