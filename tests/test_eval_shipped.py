"""``eval`` at the shipped thresholds and per group: synthetic scores whose answers are known,
and a small real subset of celeba for the groups report's bookkeeping."""

from __future__ import annotations

import numpy as np
import pytest

from device.infer.metrics import auc, clopper_pearson
from device.tools.evaluation import Sample, read_groups, report_from_samples
from device.tools.evaluation.groups import Groups, groups_report
from device.tools.evaluation.scores import ScoreSet, gate_scores, single_image_scores
from device.tools.evaluation.shipped import all_counts, shipped_report, shipped_thresholds

PEOPLE = 200
CALIBRATION = {
    "dataset": "synthetic", "date": "2026-12-01",
    "protocol": "gate: templates from 3 photos (flip-averaged), probes the rest",
    "thresholds": {"cosine": {"1e-2": 0.5, "1e-3": 0.7, "1e-4": 0.9},
                   "tnorm": {"1e-2": 2.0, "1e-3": 3.0, "1e-4": 4.0}},
}
GATE = {"protocol": "gate", "enroll": 3, "people_enrolled": PEOPLE}


def synthetic_scores() -> ScoreSet:
    """200 people, one genuine comparison each, every ordered pair of people an impostor one.

    Impostor pairs in ring order (b = a + 1, then a + 2, ...): 2 score at or above 0.9 (one
    exactly 0.9), 40 at or above 0.7, 1,200 at or above 0.5 (spread over everyone), the rest 0.1.
    Genuine: 180 people score 0.95, 10 score 0.6, 10 score 0.2.
    """
    first = np.array([a for d in range(1, PEOPLE) for a in range(PEOPLE)])
    second = (first + np.repeat(np.arange(1, PEOPLE), PEOPLE)) % PEOPLE
    impostor = np.full(first.size, 0.1)
    impostor[:1200], impostor[:40], impostor[:2] = 0.55, 0.75, 0.95
    impostor[1] = 0.9  # exactly at the threshold: a gate accepts it
    genuine = np.where(np.arange(PEOPLE) < 180, 0.95,
                       np.where(np.arange(PEOPLE) < 190, 0.6, 0.2))
    return ScoreSet("cosine", [f"p{i:03d}" for i in range(PEOPLE)], genuine,
                    np.arange(PEOPLE), impostor, first, second)


def shipped(scores: ScoreSet, info: dict = GATE) -> dict:
    sets = {"cosine": scores}
    return shipped_report(info, sets, CALIBRATION,
                          all_counts(sets, shipped_thresholds(CALIBRATION)))


def test_rates_at_the_shipped_thresholds_are_counted_as_the_gate_decides():
    report = shipped(synthetic_scores())
    assert report["available"] and report["same_protocol"]
    by_far = report["by_score"]["cosine"]
    pairs = PEOPLE * (PEOPLE - 1)
    for far, hits, tar in (("1e-4", 2, 0.9), ("1e-3", 40, 0.9), ("1e-2", 1200, 0.95)):
        entry = by_far[far]
        assert (entry["far"]["hits"], entry["far"]["trials"]) == (hits, pairs), far
        assert entry["far"]["rate"] == pytest.approx(hits / pairs)
        assert entry["far"]["ci_exact"] == pytest.approx(list(clopper_pearson(hits, pairs)))
        assert entry["far"]["ci"][0] <= entry["far"]["rate"] <= entry["far"]["ci"][1]
        assert entry["far"]["people"] == PEOPLE and entry["tar"]["rate"] == pytest.approx(tar)
    assert "tnorm" in report["not_applicable"]


def test_verdicts_against_the_target():
    by_far = shipped(synthetic_scores())["by_score"]["cosine"]
    # 2 in 39,800 against 1e-4: within 2x, but too few pairs to resolve such a rate.
    assert not by_far["1e-4"]["far"]["exceeds_target"]
    assert by_far["1e-4"]["far"]["within_2x"] and not by_far["1e-4"]["far"]["resolvable"]
    # 40 in 39,800 ≈ 1.005e-3 against 1e-3: on target.
    assert not by_far["1e-3"]["far"]["exceeds_target"] and by_far["1e-3"]["far"]["within_2x"]
    assert by_far["1e-3"]["far"]["resolvable"]
    # 1,200 in 39,800 ≈ 3e-2 against 1e-2, spread over everyone: beyond its interval.
    assert by_far["1e-2"]["far"]["exceeds_target"] and not by_far["1e-2"]["far"]["within_2x"]
    assert by_far["1e-2"]["far"]["ci"][0] > 1e-2


def test_summary_and_a_protocol_the_thresholds_were_not_fitted_for():
    report = shipped(synthetic_scores())
    assert report["exceeds_target"] and not report["within_2x"]
    other = shipped(synthetic_scores(), {"protocol": "single_image"})
    assert not other["same_protocol"] and "3-photo templates" in other["note"]
    none = shipped_report(GATE, {"cosine": synthetic_scores()}, None, {})
    assert not none["available"] and "calibration" in none["reason"]


def labels_by_halves() -> Groups:
    """p000..p099 in group A, p100..p189 in B, the last ten with no label."""
    return Groups("halves", ["half"],
                  {f"p{i:03d}": {"half": "A" if i < 100 else "B"} for i in range(190)})


def test_groups_and_the_between_group_matrix_match_a_direct_count():
    scores = synthetic_scores()
    sets = {"cosine": scores}
    thresholds = shipped_thresholds(CALIBRATION)
    report = groups_report(labels_by_halves(), sets, all_counts(sets, thresholds), thresholds)
    assert report["unlabelled_people"] == 10 and report["people_matched"] == 190
    half = report["attributes"]["half"]["cosine"]
    assert list(half["groups"]) == ["A", "B", "unlabelled"]
    assert [g["people"] for g in half["groups"].values()] == [100, 90, 10]
    group_of = np.array(["A"] * 100 + ["B"] * 90 + ["unlabelled"] * 10)
    for far, threshold in thresholds["cosine"].items():
        between = half["between"][far]
        for i, a in enumerate(between["labels"]):
            for j, b in enumerate(between["labels"]):
                if j < i:
                    continue
                pair = {a, b}
                mask = np.array([{x, y} == pair for x, y in zip(
                    group_of[scores.impostor_first], group_of[scores.impostor_second],
                    strict=True)])
                assert between["impostor_pairs"][i][j] == mask.sum()
                expected = np.mean(scores.impostor[mask] >= threshold)
                assert between["far"][i][j] == pytest.approx(expected), (far, a, b)
        tar_a = half["groups"]["A"]["shipped"][far]["tar"]["rate"]
        assert tar_a == pytest.approx(np.mean(scores.genuine[:100] >= threshold))
    within_a = (scores.impostor_first < 100) & (scores.impostor_second < 100)
    assert half["groups"]["A"]["auc"] == auc(scores.genuine[:100], scores.impostor[within_a])
    assert half["groups"]["A"]["impostor_pairs"] == 100 * 99


def test_groups_file_matching_nobody_is_refused():
    sets = {"cosine": synthetic_scores()}
    with pytest.raises(ValueError, match="none of its"):
        groups_report(Groups("x", ["g"], {"celeba/1": {"g": "a"}}), sets, {}, {})


def test_groups_files_csv_and_toml(tmp_path):
    (tmp_path / "g.csv").write_text("person,region,sex\na1,Jawa,F\na2,,M\n\na3,Bali,\n")
    g = read_groups(tmp_path / "g.csv")
    assert g.attributes == ["region", "sex"]
    assert (g.label("a2", "region"), g.label("a2", "sex")) == ("unlabelled", "M")
    assert g.label("nobody", "sex") == "unlabelled"
    (tmp_path / "g.toml").write_text(
        '[people]\n"orl/s1" = "x"\n"orl/s2" = {set = "orl", hijab = "no"}\n')
    t = read_groups(tmp_path / "g.toml")
    assert t.attributes == ["group", "set", "hijab"] and t.label("orl/s2", "hijab") == "no"
    (tmp_path / "bad.csv").write_text("person,a\nx,1\nx,2\n")
    with pytest.raises(ValueError, match="twice"):
        read_groups(tmp_path / "bad.csv")
    with pytest.raises(ValueError, match=r"\.csv or \.toml"):
        read_groups(tmp_path / "g.txt")


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def test_protocols_keep_who_was_compared_with_whom():
    rng = np.random.default_rng(1)
    directions = {p: rng.normal(size=16) for p in ("ana", "budi", "citra")}
    samples = [Sample(p, None, unit(d + 0.1 * rng.normal(size=16)),
                      unit(d + 0.1 * rng.normal(size=16)), None)
               for p, d in directions.items() for _ in range(5)]
    info, sets = gate_scores(samples, 3)
    s = sets["cosine"]
    assert info["people_enrolled"] == 3 and s.people == ["ana", "budi", "citra"]
    assert s.genuine_person.tolist() == [0, 0, 1, 1, 2, 2]
    assert s.impostor.size == 12 and np.all(s.impostor_first != s.impostor_second)
    assert s.genuine.min() > s.impostor.max()  # well separated people
    _, single = single_image_scores(samples)
    c = single["cosine"]
    assert c.genuine.size == 3 * 10 and c.impostor.size == 15 * 14 // 2 - 30
    assert np.all(c.impostor_first < c.impostor_second)  # image order = person order here


@pytest.mark.faces
def test_groups_report_on_real_celeba_faces_adds_up(faces_root, pipeline, tmp_path):
    from device.config import QualityConfig
    from device.infer.bundle import load_bundle
    from device.tools.evaluation import list_people, read_samples

    people = list_people(faces_root / "celeba", limit_people=24)
    names = sorted(people)
    rows = [f"{p},{'early' if i < 12 else 'late'}" for i, p in enumerate(names[:-2])]
    (tmp_path / "groups.csv").write_text("person,half\n" + "\n".join(rows) + "\n")
    samples = read_samples(pipeline, people, QualityConfig(), show_progress=False)
    calibration = load_bundle().manifest["calibration"]
    report = report_from_samples(samples, None, calibration,
                                 read_groups(tmp_path / "groups.csv"))
    groups = report["groups"]
    assert groups["unlabelled_people"] == 2 and groups["people_not_in_data"] == 0
    half = groups["attributes"]["half"]["cosine"]
    assert list(half["groups"]) == ["early", "late", "unlabelled"]
    assert sum(g["people"] for g in half["groups"].values()) == 24
    assert sum(g["genuine_pairs"] for g in half["groups"].values()) == report["genuine_pairs"]
    for far, entry in report["shipped"]["by_score"]["cosine"].items():
        between = half["between"][far]
        n = len(between["labels"])
        upper = [(i, j) for i in range(n) for j in range(i, n)]
        # Every impostor pair is in exactly one cell, and so is every false accept.
        assert sum(between["impostor_pairs"][i][j] for i, j in upper) == entry["far"]["trials"]
        hits = sum(c["hits"] for c in between["cells"])
        assert hits == entry["far"]["hits"]
        tar_hits = sum(g["shipped"][far]["tar"]["hits"] for g in half["groups"].values())
        assert tar_hits == entry["tar"]["hits"]
