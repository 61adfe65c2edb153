"""`gerbang-provision calibrate` (issue 17): the order-statistic thresholds and their bounds on
synthetic scores, the pair protocol, the looser-than-shipped refusal, the room guard, and a
small real run (ORL) from enrollment to the signed roster a gate opens."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from device.decide.calibration import calibration_from_dict
from device.decide.roster import Roster, RosterEntry, load_roster
from device.infer.match import Gallery
from provisioning.calibrate import (
    CalibrationRefused,
    build_calibration,
    load_photo_embeddings,
    pair_scores,
    refuse_looser,
    save_photo_embeddings,
    template_pair_reference,
)
from provisioning.calibration_check import measure_at, room_guard
from provisioning.calibration_stats import (
    TopScores,
    binom_cdf,
    binom_upper,
    fit_threshold,
    wilson,
)

EMBEDDER = "ab" * 32
Q_1E3 = 3.090232306167813  # the standard normal's 1 - 1e-3 quantile


def test_binomial_tail_matches_brute_force_and_the_normal_regime():
    n, p = 40, 0.1
    brute = sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(6))
    assert binom_cdf(5, n, p) == pytest.approx(brute, rel=1e-9)
    # the normal approximation takes over for large expected counts: still close
    exact = sum(math.exp(math.lgamma(100001) - math.lgamma(i + 1) - math.lgamma(100001 - i)
                         + i * math.log(0.01) + (100000 - i) * math.log(0.99))
                for i in range(1001))
    assert binom_cdf(1000, 100000, 0.01) == pytest.approx(exact, abs=0.005)
    assert binom_upper(780, 1e-3, 0.99) == 3  # 40 people's pairs: 4 above is a heavy tail
    assert binom_cdf(binom_upper(10000, 0.01), 10000, 0.01) >= 0.99


def test_wilson_interval():
    lo, hi = wilson(13, 133757)
    assert lo < 13 / 133757 < hi and hi < 2 * 13 / 133757
    assert wilson(0, 1000)[0] == 0.0 and wilson(0, 1000)[1] == pytest.approx(0.00383, rel=0.01)


def test_top_scores_keep_exactly_the_highest():
    rng = np.random.default_rng(0)
    data = rng.standard_normal(50000).astype(np.float32)
    top = TopScores(500)
    for block in np.array_split(data, 17):
        top.add(block)
    assert top.count == data.size
    assert np.array_equal(top.sorted(), np.sort(data)[::-1][:500])


def test_threshold_is_the_order_statistic_and_admits_exactly_k_impostors():
    rng = np.random.default_rng(1)
    impostor = np.sort(rng.standard_normal(1_000_000))[::-1]
    fit = fit_threshold(impostor[:2000], impostor.size, 1e-3)
    assert fit.impostors_above == 1000
    assert np.count_nonzero(impostor >= fit.threshold) == 1000  # the gate accepts ≥ threshold
    assert fit.threshold == pytest.approx(Q_1E3, abs=0.02)
    assert fit.threshold < fit.upper_ci < fit.threshold + 0.05
    assert fit_threshold(impostor[:10], 4999, 1e-3) is None  # fewer than 5 / FAR pairs


def test_the_upper_bound_covers_the_true_quantile_95_percent_of_the_time():
    rng = np.random.default_rng(2)
    covered = 0
    trials = 400
    for _ in range(trials):
        sample = np.sort(rng.standard_normal(20000))[::-1]
        covered += fit_threshold(sample[:100], sample.size, 1e-3).upper_ci >= Q_1E3
    assert 0.92 <= covered / trials <= 0.995


def population(people: int, photos: int, spread: float, seed: int, dim: int = 64,
               base: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Synthetic faces: an identity direction per person plus photo noise; ``base`` (shared
    by everyone) makes strangers more alike, like a population the model knows less well."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(people):
        identity = rng.standard_normal(dim)
        if base is not None:
            identity = identity + base
        identity /= np.linalg.norm(identity)
        shots = identity + spread * rng.standard_normal((photos, dim)) / math.sqrt(dim)
        out[f"P{seed}-{i:04d}"] = (shots / np.linalg.norm(shots, axis=1, keepdims=True)
                                   ).astype(np.float32)
    return out


def test_pair_protocol_counts_and_tnorm_as_the_gate_computes_it():
    people = population(30, 5, 0.6, seed=3)
    scores = pair_scores(people, template_photos=3, show_progress=False)
    assert scores.impostor_pairs == 30 * 2 * 29  # two probes each, against 29 other templates
    assert scores.genuine["cosine"].size == 30 * 2
    leave_one_out = pair_scores({a: v[:3] for a, v in people.items()}, 3, show_progress=False)
    assert leave_one_out.impostor_pairs == 30 * 3 * 29
    assert leave_one_out.genuine["cosine"].size == 30 * 3
    # T-norm of a stranger: the gate's Gallery with every other template as its cohort
    ids = sorted(people)
    templates = np.stack([v[:3].mean(0) / np.linalg.norm(v[:3].mean(0)) for v in
                          (people[a] for a in ids)])
    probe = people[ids[0]][3]
    gallery = Gallery(ids[1:], templates[1:], cohort=np.repeat(templates[1:], 4, axis=0))
    expected = gallery.scores(probe).max()
    assert scores.impostor_top["tnorm"].max() >= expected - 1e-4
    excluded = pair_scores(people, 3, exclude=[(ids[0], ids[1])], show_progress=False)
    assert excluded.impostor_pairs == scores.impostor_pairs - 4 and excluded.excluded_pairs == 1


def test_calibration_block_and_the_looser_refusal():
    people = population(120, 4, 0.6, seed=4)
    scores = pair_scores(people, 3, show_progress=False)
    calibration, report = build_calibration(scores, "roster:synthetic", EMBEDDER)
    assert set(calibration.thresholds["cosine"]) == {"1e-2", "1e-3"}  # 14,280 pairs: no 1e-4
    assert report["thresholds"]["cosine"]["1e-4"]["supported"] is False
    for kind in ("cosine", "tnorm"):
        for key, value in calibration.thresholds[kind].items():
            assert calibration.threshold_upper_ci[kind][key] >= value
            assert 0 <= calibration.expected_tar[kind][key] <= 1
    again = calibration_from_dict(json.loads(json.dumps(calibration.to_dict())), EMBEDDER)
    assert again == calibration
    strict_shipped = {"cosine": {"1e-2": 0.99}}
    with pytest.raises(CalibrationRefused, match="--allow-looser"):
        refuse_looser(calibration, strict_shipped, allow_looser=False)
    assert refuse_looser(calibration, strict_shipped, allow_looser=True)[0].startswith(
        "cosine at FAR 1e-2")
    with pytest.raises(CalibrationRefused, match="too few"):
        build_calibration(pair_scores(population(5, 4, 0.6, 5), 3, show_progress=False),
                          "tiny", EMBEDDER)


def test_held_out_people_of_the_same_population_agree_and_another_population_is_flagged():
    calibration, _ = build_calibration(
        pair_scores(population(400, 4, 0.6, seed=6), 3, show_progress=False), "syn", EMBEDDER)
    same, _ = measure_at(calibration, population(400, 4, 0.6, seed=7), 3, show_progress=False)
    at = same["at_calibrated"]["cosine"]["1e-3"]
    assert at["within_2x"] and at["verdict"] == "consistent"
    base = np.random.default_rng(8).standard_normal(64) * 0.5  # strangers more alike
    other, lines = measure_at(calibration, population(400, 4, 0.6, seed=9, base=base), 3,
                              show_progress=False)
    assert other["at_calibrated"]["cosine"]["1e-3"]["verdict"].startswith("MISMATCH: heavier")
    assert any("MISMATCH" in line and "does not hold for these people" in line
               for line in lines)


def roster_of(people: dict[str, np.ndarray], room: str = "R01") -> Roster:
    entries = tuple(RosterEntry(a, "", (v[:3].mean(0) / np.linalg.norm(v[:3].mean(0)))
                                .astype(np.float32)) for a, v in sorted(people.items()))
    return Roster("S1", room, 1, entries, embedder_sha256=EMBEDDER)


def calibrated_population():
    people = population(400, 4, 0.6, seed=10)
    calibration, _ = build_calibration(pair_scores(people, 3, show_progress=False), "syn",
                                       EMBEDDER)
    return calibration, template_pair_reference(people, 3)


def test_a_room_more_alike_than_promised_gets_a_stricter_guard():
    calibration, reference = calibrated_population()
    assert reference["pairs"] == 400 * 399 // 2 and reference["far"] == 1e-3
    normal, report = room_guard(roster_of(population(40, 3, 0.6, seed=11)), calibration,
                                reference)
    assert normal is None and report["kinds"]["cosine"]["pairs"] == 780
    base = np.random.default_rng(12).standard_normal(64) * 0.8
    alike = roster_of(population(40, 3, 0.6, seed=13, base=base), room="R07")
    guard, report = room_guard(alike, calibration, reference)
    assert guard is not None and report["kinds"]["cosine"]["heavy"]
    assert guard.cosine > max(calibration.thresholds["cosine"].values())
    assert guard.tnorm is None  # no session cohort in this roster: T-norm not measured
    assert guard.reason.startswith("room R07: ")
    guarded = calibration.with_guard(guard)
    assert guarded.guarded("cosine", 1e-4)[0] == max(guard.cosine,
                                                     calibration.threshold("cosine", 1e-4))


def test_photo_embeddings_file_round_trip(tmp_path):
    people = population(3, 2, 0.5, seed=14)
    path = save_photo_embeddings(tmp_path / "R01.photos.npz", people, EMBEDDER)
    assert os.stat(path).st_mode & 0o777 == 0o600
    loaded, embedder = load_photo_embeddings(path)
    assert embedder == EMBEDDER and sorted(loaded) == sorted(people)
    assert all(np.array_equal(loaded[a], people[a]) for a in people)


# --- real faces, end to end ------------------------------------------------------------------

def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "provisioning.cli", *args],
                          capture_output=True, text=True, timeout=600)


@pytest.mark.faces
def test_enroll_calibrate_sign_and_the_gate_opens_it(tmp_path, faces_root):
    """ORL (40 people, 10 photos): enroll keeping photo embeddings, calibrate (half the people;
    the other half held out), sign the room roster with the calibration, open it as a gate."""
    from device.infer.bundle import load_bundle
    from device.manage.keyfile import read_secret_key
    from device.manage.roster_file import load_roster_public_key, verify_signed_roster

    keys = tmp_path / "keys"
    assert run_cli("roster-key", "create", "--centre", "c01", "--keys", str(keys)).returncode == 0
    made = run_cli("roster", "--photos-dir", str(faces_root / "orl"), "--session", "S1",
                   "--room", "R01", "--out", str(tmp_path / "R01.roster.json"), "--photos", "10",
                   "--embeddings-out", str(tmp_path / "R01.photos.npz"))
    assert made.returncode in (0, 1), made.stderr  # 1: a duplicate flag is for a human
    people, embedder = load_photo_embeddings(tmp_path / "R01.photos.npz")
    assert len(people) == 40 and embedder == load_bundle().hashes()["embedder"]
    split = run_cli("calibrate", "--embeddings", str(tmp_path / "R01.photos.npz"),
                    "--source", "roster:ORL half", "--split-half", "--include-flagged")
    assert split.returncode == 0, split.stderr
    test = json.loads(split.stdout)["test"]
    assert test["people"] == 20 and "held-out cosine FAR 1e-2" in split.stderr
    cal = run_cli("calibrate", "--embeddings", str(tmp_path / "R01.photos.npz"),
                  "--source", "roster:ORL", "--out", str(tmp_path / "cal.json"),
                  "--allow-looser")
    assert cal.returncode == 0, cal.stderr
    assert json.loads(cal.stdout)["calibration"]["people"] == 40
    signed = run_cli("roster-sign", str(tmp_path / "R01.roster.json"), "--keys", str(keys),
                     "--calibration", str(tmp_path / "cal.json"))
    assert signed.returncode == 0, signed.stderr
    out = json.loads(signed.stdout)["signed"][0]
    assert (out["calibration"], out["version"]) == ("roster:ORL", 2)
    assert load_roster(tmp_path / "R01.roster.json").calibration.source == "roster:ORL"
    from provisioning.signing import export_device_keys, load_roster_keys

    files = export_device_keys(load_roster_keys(keys), "R01", tmp_path / "gate")
    verified = verify_signed_roster(
        (tmp_path / "R01.roster.signed").read_bytes(),
        public_key=load_roster_public_key(files["public_key"]),
        transport_key=read_secret_key(files["transport_key"]), centre="c01", session="S1",
        room="R01", embedder_sha256=embedder)
    assert verified.roster.calibration.thresholds["cosine"]["1e-3"] > 0


def test_signing_a_room_with_a_heavy_tail_warns_by_name_and_writes_its_guard(caplog):
    import logging

    from provisioning.cli.calibrate import with_calibration

    calibration, reference = calibrated_population()
    base = np.random.default_rng(12).standard_normal(64) * 0.8
    alike = roster_of(population(40, 3, 0.6, seed=13, base=base), room="R07")
    with caplog.at_level(logging.WARNING):
        guarded, report = with_calibration(alike, calibration, reference, None)
    assert "ROOM GUARD R07" in caplog.text and report["kinds"]["cosine"]["heavy"]
    assert guarded.calibration.room_guard.cosine > calibration.threshold("cosine", 1e-3)
    plain, _ = with_calibration(roster_of(population(40, 3, 0.6, seed=11)), calibration,
                                reference, None)
    assert plain.calibration.room_guard is None
    # a flagged duplicate pair (one person under two ids) is for a human, not for the guard
    twice = roster_of({**population(39, 3, 0.6, seed=11), "Z": population(1, 3, 0.6, 11)[
        "P11-0000"]})
    _, report = with_calibration(twice, calibration, reference, 0.9)
    assert report["flagged_pairs_left_out"] == 1 and not report["kinds"]["cosine"]["heavy"]
    with pytest.raises(CalibrationRefused, match="same model bundle"):
        with_calibration(Roster("S1", "R01", 1, alike.entries, embedder_sha256="cd" * 32),
                         calibration, reference, None)
