"""Liveness: the 3-D check on simulated head turns vs flat photos, and the passive classifier
against its held-out test split of gc535.

The planarity threshold was chosen on simulation seed ``CHOOSE_SEED`` (``choose_threshold``;
run ``python tests/test_liveness.py`` to print it) and the acceptance rates are asserted on
``TEST_SEED``, so the test does not grade the threshold on the tracks that set it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from device.capture.replay import read_image
from device.infer.liveness import (
    DEFAULT_PASSIVE_MODEL,
    PLANARITY_NOISE_RATIO,
    PLANARITY_THRESHOLD,
    LivenessCheck,
    LivenessConfig,
    LivenessModelError,
    PassiveLiveness,
    is_planar,
    landmark_noise,
    planarity_noise_ratio,
    planarity_residual,
)
from gerbang.config import ConfigError

# As in conftest.py (not imported from it, so this file also runs as a script).
DATA = Path(os.environ.get("GERBANG_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
PAD = DATA / "pad" / "gc535"
FRONTAL = "celeba/7205/065013.jpg"  # yaw 0°, pitch 5°, roll -1° by FaceMesh
CHOOSE_SEED, TEST_SEED = 1, 2
TRACKS = 300
FOCAL = 800.0        # pixels; the face is 200 px wide at distance FOCAL: a 15-cm face at 60 cm
FACE_WIDTH = 200.0


# --------------------------------------------------------------------------------------------
# 3-D consistency on simulated tracks


def rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """3×3 rotation: yaw about y, then pitch about x, then roll about z (degrees)."""
    y, p, r = np.radians([yaw, pitch, roll])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return rz @ rx @ ry


def project(points: np.ndarray) -> np.ndarray:
    """Pinhole camera at the origin looking down +z; the face sits at depth FOCAL."""
    z = FOCAL + points[:, 2]
    return np.column_stack([FOCAL * points[:, 0] / z + 640, FOCAL * points[:, 1] / z + 360])


def real_track(rng: np.random.Generator, face: np.ndarray, sigma: float | None = None,
               yaw: float | None = None) -> list[np.ndarray]:
    """A head turning 15–25° (either way) with a little nod, roll and drift, 8–15 frames,
    landmark noise σ 1–1.5 px (or the given ``sigma`` and turn ``yaw``)."""
    n = int(rng.integers(8, 16))
    yaw = (rng.uniform(15, 25) if yaw is None else yaw) * rng.choice([-1, 1])
    pitch, roll = rng.uniform(-5, 5), rng.uniform(-3, 3)
    shift = rng.uniform(-20, 20, 3)
    sigma = rng.uniform(1.0, 1.5) if sigma is None else sigma
    frames = []
    for k in range(n):
        a = k / (n - 1)
        pts = face @ rotation(a * yaw, a * pitch, a * roll).T + a * shift
        frames.append(project(pts) + rng.normal(0, sigma, (len(face), 2)))
    return frames


def planar_track(rng: np.random.Generator, face: np.ndarray,
                 sigma: float | None = None) -> list[np.ndarray]:
    """The same face printed flat (z = 0), the sheet tilted and moved in 3-D: start up to 10°
    off, end anywhere within ±25° about each axis, translations up to 40 px; noise as above."""
    n = int(rng.integers(8, 16))
    flat = face.copy()
    flat[:, 2] = 0.0
    start, end = rng.uniform(-10, 10, 3), rng.uniform(-25, 25, 3)
    t0, t1 = rng.uniform(-20, 20, 3), rng.uniform(-40, 40, 3)
    sigma = rng.uniform(1.0, 1.5) if sigma is None else sigma
    frames = []
    for k in range(n):
        a = k / (n - 1)
        pts = flat @ rotation(*(start + a * (end - start))).T + t0 + a * (t1 - t0)
        frames.append(project(pts) + rng.normal(0, sigma, (len(face), 2)))
    return frames


def simulate(face: np.ndarray, seed: int, count: int = TRACKS) -> tuple[np.ndarray, np.ndarray]:
    """Planarity residuals of ``count`` real and ``count`` flat tracks from one seeded RNG."""
    rng = np.random.default_rng(seed)
    real = np.array([planarity_residual(real_track(rng, face)) for _ in range(count)])
    flat = np.array([planarity_residual(planar_track(rng, face)) for _ in range(count)])
    return real, flat


def choose_threshold(real: np.ndarray, flat: np.ndarray) -> float:
    """The rule that set PLANARITY_THRESHOLD: halfway between the flat tracks' 99.5th and the
    real tracks' 5th percentile, rounded to 0.005 (a round number, not a fitted one)."""
    mid = (np.quantile(flat, 0.995) + np.quantile(real, 0.05)) / 2
    return round(float(mid) / 0.005) * 0.005


def mesh_face(image: np.ndarray, pipeline: object) -> np.ndarray:
    """FaceMesh's 468 3-D landmarks of the image's face, centred, scaled to FACE_WIDTH."""
    reading = pipeline.read(image)
    assert reading.mesh is not None, "FaceMesh found no face in the frontal test image"
    pts = reading.mesh.points - reading.mesh.points.mean(0)
    return pts * (FACE_WIDTH / np.ptp(pts[:, 0]))


@pytest.fixture(scope="module")
def face(pipeline, faces_root):
    return mesh_face(read_image(faces_root / FRONTAL), pipeline)


def noise_sweep(face: np.ndarray, seed: int, count: int = 100) -> dict[float, tuple]:
    """σ → (flat tracks' noise ratios, real 15° turns' noise ratios, noise estimates)."""
    rng = np.random.default_rng(seed)
    out = {}
    for sigma in (1.0, 2.0, 3.0, 4.0):
        flat = [planar_track(rng, face, sigma) for _ in range(count)]
        real = [real_track(rng, face, sigma, yaw=15.0) for _ in range(count)]
        out[sigma] = (np.array([planarity_noise_ratio(t) for t in flat]),
                      np.array([planarity_noise_ratio(t) for t in real]),
                      np.array([landmark_noise(t) for t in flat + real]))
    return out


@pytest.mark.faces
def test_3d_check_accepts_real_turns_and_rejects_flat_photos(face):
    rng = np.random.default_rng(TEST_SEED)
    real = [real_track(rng, face) for _ in range(TRACKS)]
    flat = [planar_track(rng, face) for _ in range(TRACKS)]
    accepted = np.mean([not is_planar(t) for t in real])
    rejected = np.mean([is_planar(t) for t in flat])
    assert accepted >= 0.95, f"real turns accepted {accepted:.3f}"
    assert rejected >= 0.99, f"flat photos rejected {rejected:.3f}"


@pytest.mark.faces
def test_noisy_landmarks_do_not_pass_a_flat_photo_off_as_depth(face):
    # At σ 2-4 px the flat tracks' homography residual alone exceeds PLANARITY_THRESHOLD; the
    # noise guard must still refuse them, and the noise estimate must be close to the truth.
    rng = np.random.default_rng(TEST_SEED)
    for sigma in (2.0, 3.0, 4.0):
        flat = [planar_track(rng, face, sigma) for _ in range(100)]
        assert np.mean([is_planar(t) for t in flat]) >= 0.99, sigma
        assert np.median([landmark_noise(t) for t in flat]) == pytest.approx(sigma, rel=0.1)


@pytest.mark.faces
def test_threshold_is_the_one_chosen_on_the_other_seed(face):
    assert choose_threshold(*simulate(face, CHOOSE_SEED)) == pytest.approx(PLANARITY_THRESHOLD)


@pytest.mark.faces
def test_noise_ratio_is_the_one_chosen_on_the_other_seed(face):
    sweep = noise_sweep(face, CHOOSE_SEED)
    flat_max = max(f.max() for f, _, _ in sweep.values())
    real_low = min(np.quantile(r, 0.05) for s, (_, r, _) in sweep.items() if s <= 2.0)
    assert flat_max < PLANARITY_NOISE_RATIO < real_low, (flat_max, real_low)


def test_an_exact_homography_has_no_residual():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 200, (50, 2))
    h = np.array([[1.05, 0.1, 12.0], [-0.08, 0.97, -5.0], [2e-4, -1e-4, 1.0]])
    frames = [src] + [cv2.perspectiveTransform(src[None], h * s)[0] for s in (1.0, 0.5)]
    assert planarity_residual(frames) < 1e-6
    assert is_planar(frames)


def test_depth_parallax_is_not_planar():
    # Points at two depths, camera translating sideways: near points move more than far ones.
    rng = np.random.default_rng(0)
    pts = np.column_stack([rng.uniform(-50, 50, (40, 2)), np.repeat([0.0, 80.0], 20)])
    frames = [project(pts + np.array([dx, 0.0, 0.0])) for dx in (0.0, 30.0, 60.0)]
    assert planarity_residual(frames) > PLANARITY_THRESHOLD
    assert not is_planar(frames)


def test_planarity_rejects_malformed_tracks():
    with pytest.raises(ValueError):
        planarity_residual([np.zeros((468, 2))])
    with pytest.raises(ValueError):
        planarity_residual([np.zeros((468, 2)), np.zeros((467, 2))])


def test_config_validates_and_switches_signals():
    with pytest.raises(ConfigError, match="planarity_threshold"):
        LivenessConfig(planarity_threshold=0.0)
    with pytest.raises(ConfigError, match="passive_threshold"):
        LivenessConfig(passive_threshold=1.5)
    with pytest.raises(ValueError):
        LivenessCheck(LivenessConfig(passive=True), passive=None)

    class FixedScore:
        threshold = 0.5

        def __init__(self, score: float) -> None:
            self.value = score

        def score(self, reading: object, image: object = None) -> float:
            return self.value

    rng = np.random.default_rng(0)
    src = rng.uniform(0, 200, (30, 2))
    flat = [src + np.array([dx, 0.0]) for dx in range(8)]  # a translating photo: exactly planar
    reading = object()
    on = LivenessCheck(LivenessConfig(), FixedScore(0.9))
    assert on.check(reading, tracks=flat).reason == "planar"
    assert on.check(reading, tracks=flat[:3]).live  # too few frames to judge 3-D
    assert LivenessCheck(LivenessConfig(), FixedScore(0.2)).check(reading).reason == "passive"
    assert LivenessCheck(LivenessConfig(passive_threshold=0.1), FixedScore(0.2)).check(
        reading).live
    off = LivenessCheck(LivenessConfig(passive=False, planarity=False))
    assert off.check(reading, tracks=flat).live


# --------------------------------------------------------------------------------------------
# Passive classifier


def name_hash(name: str) -> str:
    """Same as provisioning.train_pad.name_hash (kept here so the test checks, not reuses)."""
    return hashlib.sha256(name.encode()).hexdigest()[:16]


@pytest.fixture(scope="module")
def record():
    return json.loads(Path(DEFAULT_PASSIVE_MODEL).read_text())


def test_record_lists_split_counts_and_no_test_image_was_fitted_on(record):
    t = record["training"]
    train, test = set(t["train_name_sha256_16"]), {h for h, _, _ in t["test_items"]}
    assert len(train) == len(t["train_name_sha256_16"]) and len(test) == len(t["test_items"])
    assert not train & test, "an image is in both the training and the test split"
    split = t["split"]
    assert split["train"]["bona_fide"] + split["train"]["attack"] == len(train)
    assert split["test"]["bona_fide"] + split["test"]["attack"] == len(test)
    assert sum(lab for _, lab, _ in t["test_items"]) == split["test"]["bona_fide"]
    images = t["images"]["bona_fide"] + t["images"]["attack"]
    assert len(train) + len(test) + t["no_face_found"]["count"] == images
    assert 0.2 <= len(test) / (len(train) + len(test)) <= 0.4


def test_recorded_test_result_meets_the_bar(record):
    test = record["training"]["test"]
    assert test["threshold"] == pytest.approx(record["classifier"]["threshold"])
    assert test["apcer"] <= 0.05 and test["bpcer"] <= 0.05, test


def test_model_loads_against_the_shipped_bundle(record):
    model = PassiveLiveness.from_json()
    assert model.weights.size == record["features"]["dim"]
    assert 0.0 < model.threshold < 1.0


def test_model_fitted_on_another_embedder_is_refused(record, tmp_path):
    other = dict(record, features=dict(record["features"], embedder_sha256="0" * 64))
    path = tmp_path / "pad.json"
    path.write_text(json.dumps(other))
    with pytest.raises(LivenessModelError, match="re-fit"):
        PassiveLiveness.from_json(path)


@pytest.mark.faces
def test_passive_scores_on_a_test_sample_reproduce_and_meet_the_bar(record, pipeline):
    if not (PAD / "live").is_dir() or not (PAD / "spoof").is_dir():
        pytest.skip(f"gc535 PAD data not found at {PAD} (set GERBANG_DATA)")
    stored = {h: (lab, s) for h, lab, s in record["training"]["test_items"]}
    train = set(record["training"]["train_name_sha256_16"])
    sample: dict[int, list[tuple[str, Path]]] = {0: [], 1: []}
    for folder in ("live", "spoof"):
        for path in (PAD / folder).iterdir():
            h = name_hash(f"{folder}/{path.name}")
            assert not (h in stored and h in train)
            if h in stored:
                sample[stored[h][0]].append((h, path))
    model = PassiveLiveness.from_json()
    scores: dict[int, list[float]] = {0: [], 1: []}
    drift: list[float] = []
    for label, items in sample.items():
        for h, path in sorted(items)[:100]:  # first 100 per class by name hash: deterministic
            image = read_image(path)
            score = model.score(pipeline.read(image), image)
            drift.append(abs(score - stored[h][1]))
            scores[label].append(score)
    # Same model, same features: nearly every score reproduces to 1e-3. A few images move by a
    # few hundredths across OpenCV/LiteRT releases (JPEG decoding and resampling differ by a
    # grey level here and there: measured 96.5% within 1e-3 on OpenCV 5.0, 83.5% on 4.14, max
    # 0.09), so the bar below is graded on today's scores, not on the recorded ones.
    assert np.mean(np.array(drift) < 1e-3) >= 0.8, f"scores no longer reproduce: {drift}"
    assert max(drift) < 0.15, f"a score moved by {max(drift):.3f}"
    apcer = np.mean(np.array(scores[0]) >= model.threshold)
    bpcer = np.mean(np.array(scores[1]) < model.threshold)
    assert len(scores[0]) == len(scores[1]) == 100
    assert apcer <= 0.05 and bpcer <= 0.05, f"sample APCER {apcer:.3f}, BPCER {bpcer:.3f}"


if __name__ == "__main__":
    from device.infer.bundle import load_bundle
    from device.infer.pipeline import FacePipeline

    pipe = FacePipeline.from_bundle(load_bundle(), threads=2)
    pts = mesh_face(read_image(DATA / "faces" / FRONTAL), pipe)
    for seed in (CHOOSE_SEED, TEST_SEED):
        r, f = simulate(pts, seed)
        print(f"seed {seed}: real q05 {np.quantile(r, 0.05):.4f} median {np.median(r):.4f} | "
              f"flat q99.5 {np.quantile(f, 0.995):.4f} max {f.max():.4f} | rule → "
              f"{choose_threshold(r, f):.3f} | at {PLANARITY_THRESHOLD}: real accepted "
              f"{np.mean(r > PLANARITY_THRESHOLD):.3f}, flat rejected "
              f"{np.mean(f <= PLANARITY_THRESHOLD):.3f}")
        for sigma, (flat, real, noise) in noise_sweep(pts, seed).items():
            print(f"  σ {sigma}: noise estimate median {np.median(noise):.2f} px; noise ratio "
                  f"flat max {flat.max():.2f}, real 15° q05 {np.quantile(real, 0.05):.2f}")
