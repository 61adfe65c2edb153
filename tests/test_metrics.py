"""Accuracy arithmetic on score sets whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from device.infer.metrics import (
    accepted,
    all_pairs_scores,
    auc,
    betainc,
    by_person_bootstrap,
    clopper_pearson,
    eer,
    far_key,
    pair_counts,
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


def test_incomplete_beta_matches_closed_forms():
    for x in (1e-9, 0.01, 0.3, 0.77, 0.999):
        assert betainc(1, 1, x) == pytest.approx(x, rel=1e-12)
        assert betainc(4, 1, x) == pytest.approx(x**4, rel=1e-10)
        assert betainc(1, 3, x) == pytest.approx(1 - (1 - x) ** 3, rel=1e-10)
    assert betainc(250.0, 250.0, 0.5) == pytest.approx(0.5, abs=1e-12)


def test_clopper_pearson_textbook_cases():
    # k = 0 and k = n have closed forms; 1/10 and 5/10 are the tabulated exact intervals.
    assert clopper_pearson(0, 10) == pytest.approx((0.0, 1 - 0.025 ** 0.1), abs=1e-12)
    assert clopper_pearson(10, 10) == pytest.approx((0.025 ** 0.1, 1.0), abs=1e-12)
    assert clopper_pearson(1, 10) == pytest.approx((0.002529, 0.445016), abs=1e-6)
    assert clopper_pearson(5, 10) == pytest.approx((0.187086, 0.812914), abs=1e-6)
    # Zero accepted impostors in n pairs: the "rule of three" upper bound, about 3.69 / n.
    assert clopper_pearson(0, 500_000)[1] == pytest.approx(3.689 / 500_000, rel=1e-3)


def binomial_tail_at_least(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), summed term by term in logs (independent check)."""
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
             + i * math.log(p) + (n - i) * math.log1p(-p) for i in range(k, n + 1)]
    top = max(terms)
    return math.exp(top) * sum(math.exp(t - top) for t in terms)


@pytest.mark.parametrize(("k", "n"), [(3, 2000), (22, 10_920), (51, 657_408)])
def test_clopper_pearson_bounds_put_2_5_percent_in_each_tail(k, n):
    low, high = clopper_pearson(k, n)
    assert binomial_tail_at_least(k, n, low) == pytest.approx(0.025, rel=1e-6)
    assert 1 - binomial_tail_at_least(k + 1, n, high) == pytest.approx(0.025, rel=1e-6)


def test_clopper_pearson_covers_a_rare_rate_at_least_95_percent_of_the_time():
    rng = np.random.default_rng(3)
    p, n = 1e-3, 5000
    hits = rng.binomial(n, p, size=400)
    covered = [lo <= p <= hi for lo, hi in (clopper_pearson(int(k), n) for k in hits)]
    assert np.mean(covered) >= 0.95


def test_clopper_pearson_refuses_impossible_counts():
    with pytest.raises(ValueError):
        clopper_pearson(5, 3)
    with pytest.raises(ValueError):
        clopper_pearson(0, 0)


def test_gate_accepts_a_score_equal_to_the_threshold():
    assert accepted(np.array([0.3, 0.5, 0.7]), 0.5).tolist() == [False, True, True]


def test_pair_counts_are_symmetric_per_pair_of_people():
    first, second = np.array([0, 0, 1, 2]), np.array([1, 2, 0, 0])
    hits, trials = pair_counts(first, second, np.array([1, 0, 1, 1]), 3)
    assert trials.tolist() == [[0, 2, 2], [2, 0, 0], [2, 0, 0]]
    assert hits.tolist() == [[0, 2, 1], [2, 0, 0], [1, 0, 0]]


def test_bootstrap_by_person_is_exact_when_every_pair_has_the_same_rate():
    people = 12
    trials = np.full((people, people), 10.0) - 10 * np.eye(people)
    hits = trials / 10
    low, high = by_person_bootstrap(hits, trials, np.arange(people))
    assert low == pytest.approx(0.1) and high == pytest.approx(0.1)


def test_bootstrap_by_person_is_wider_when_one_person_carries_the_false_matches():
    # One "hub" who matches everyone: the rate depends on whether the sample holds that person,
    # which the exact interval (pairs taken as independent) cannot see.
    people = 30
    trials = np.full((people, people), 20.0) - 20 * np.eye(people)
    hits = np.zeros_like(trials)
    hits[0, 1:] = hits[1:, 0] = 4
    k, n = hits.sum() / 2, trials.sum() / 2
    exact = clopper_pearson(int(k), int(n))
    low, high = by_person_bootstrap(hits, trials, np.arange(people))
    assert low < k / n < high
    assert high - low > 3 * (exact[1] - exact[0])
    assert low == 0.0  # a resample without the hub has no false match at all


def test_bootstrap_between_two_groups_and_per_person_rates():
    trials = np.ones((6, 6)) - np.eye(6)
    hits = np.zeros((6, 6))
    hits[:3, 3:] = hits[3:, :3] = 1  # every pair across the groups matches, none within
    assert by_person_bootstrap(hits, trials, np.arange(3), np.arange(3, 6)) == (1.0, 1.0)
    assert by_person_bootstrap(hits, trials, np.arange(3)) == (0.0, 0.0)
    tar = by_person_bootstrap(np.array([9.0, 9.0, 9.0]), np.array([10.0, 10.0, 10.0]),
                              np.arange(3))
    assert tar == pytest.approx((0.9, 0.9))
    assert by_person_bootstrap(hits, trials, np.arange(1)) is None
