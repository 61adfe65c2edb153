"""Accuracy arithmetic on score sets whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from device.infer.metrics import (
    all_pairs_scores,
    auc,
    eer,
    far_key,
    tar_at_far,
    verification_report,
)


def test_far_keys():
    assert [far_key(f) for f in (1e-2, 1e-3, 1e-4)] == ["1e-2", "1e-3", "1e-4"]


def test_separated_scores_are_perfect_and_overlap_is_chance():
    rng = np.random.default_rng(0)
    assert auc(rng.uniform(0.6, 1, 500), rng.uniform(0, 0.4, 5000)) == 1.0
    same = rng.normal(size=20000)
    assert auc(same[:10000], same[10000:]) == pytest.approx(0.5, abs=0.02)
    assert eer(same[:10000], same[10000:])[0] == pytest.approx(0.5, abs=0.03)


def test_tar_at_far_uses_the_right_impostor_quantile():
    impostor = np.arange(100_000) / 100_000  # uniform 0..1
    genuine = np.array([0.5, 0.9991, 0.99995, 1.0])
    r = tar_at_far(genuine, impostor, 1e-3)
    assert r["supported"] and r["threshold"] == pytest.approx(0.999, abs=1e-5)
    assert r["tar"] == 0.75 and r["far_measured"] <= 1e-3


def test_unsupported_far_says_why():
    r = tar_at_far(np.ones(10), np.zeros(1000), 1e-4)
    assert r == {"supported": False,
                 "reason": "1000 impostor pairs; 50000 needed to measure FAR 0.0001"}


def test_report_and_pairs():
    e = np.eye(4, dtype=np.float32)[[0, 0, 1, 2]]
    genuine, impostor = all_pairs_scores(e, ["a", "a", "b", "c"])
    assert genuine.tolist() == [1.0] and sorted(impostor.tolist()) == [0.0] * 5
    report = verification_report(genuine, impostor)
    assert report["genuine_pairs"] == 1 and report["impostor_pairs"] == 5
    assert set(report["tar_at_far"]) == {"1e-2", "1e-3", "1e-4"}
