"""Presentation-attack detection (liveness): is the face at the door a live person?

Two independent signals, each switchable in :class:`LivenessConfig`:

* **Passive** (one frame): an L2-regularised logistic regression on features of the aligned
  112×112 crop the pipeline already made: globally pooled activations of four intermediate
  SFace layers (texture and material cues the identity output throws away) plus 18 cheap image
  cues (FFT band energies and high-band peakiness for moiré, colour gamut, specular fraction,
  Laplacian sharpness). Fitted by ``provisioning/train_pad.py`` on bona fide vs recaptured
  crops; weights, normaliser, threshold and the training record are in
  ``models/pad_passive.json``. Inference is numpy plus one extra SFace run.
* **3-D consistency** (a few frames): a photo or a screen is flat, and every view of a plane is
  related to every other by one homography. A real head turning has nose, eyes and cheeks at
  different depths, so its landmarks do not fit one homography. :func:`planarity_residual`
  measures how badly they do; :func:`is_planar` also compares that with the track's own
  landmark noise, so jittery landmarks cannot pass for depth.

Measurements and how each threshold was chosen: ``docs/liveness.md``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from device.infer.align import align_face
from device.infer.bundle import ModelBundle, ModelBundleError, load_bundle
from device.infer.landmarks import LEFT_EYE, RIGHT_EYE
from device.infer.pipeline import FaceReading

DEFAULT_PASSIVE_MODEL = Path(__file__).parent / "models" / "pad_passive.json"

#: Largest median landmark residual (in inter-eye distances) that still counts as "one
#: homography fits": a flat photo or screen. Chosen on simulated tracks of a FaceMesh face
#: (seed 1: landmark noise σ 1–1.5 px on a 95-px eye distance): flat tracks stayed below 0.030,
#: real turns of 15–25° above 0.040; the test asserts the rates on another seed
#: (tests/test_liveness.py, docs/liveness.md).
PLANARITY_THRESHOLD = 0.035
#: A track is 3-D only if its homography residual is also this many times its own landmark
#: noise (:func:`landmark_noise`). Flat tracks stay at 1.8–1.9 for noise σ 1–4 px; real turns of
#: 15° are above 2.3 up to σ 2 px (simulation seed 1, docs/liveness.md). Without this guard a
#: flat photo passes the absolute threshold once σ reaches ~2 px (2% of the eye distance).
PLANARITY_NOISE_RATIO = 2.2


class LivenessModelError(RuntimeError):
    """The passive model file is missing, malformed, or was fitted on a different embedder."""


@dataclass
class LivenessConfig:
    """Which liveness signals run and where each one draws the line."""

    #: Run the single-frame passive classifier.
    passive: bool = True
    #: Passive score (probability-like, higher = bona fide) below which a face is refused;
    #: None takes the operating threshold shipped in the model file.
    passive_threshold: float | None = None
    #: Run the multi-frame 3-D consistency (planarity) check when a landmark track is given.
    planarity: bool = True
    #: Residual (inter-eye distances) at or below which a track is judged flat.
    planarity_threshold: float = PLANARITY_THRESHOLD
    #: Residual over the track's own landmark noise at or below which it is judged flat
    #: (0 turns this noise guard off).
    planarity_noise_ratio: float = PLANARITY_NOISE_RATIO
    #: Fewer frames than this cannot show a turn: the planarity check then does not judge.
    min_track_frames: int = 6

    def __post_init__(self) -> None:
        from gerbang.config import require

        require(self.passive_threshold is None or 0.0 <= self.passive_threshold <= 1.0,
                "passive_threshold", "must be in [0, 1] or unset")
        require(0.0 < self.planarity_threshold < 1.0, "planarity_threshold", "must be in (0, 1)")
        require(self.planarity_noise_ratio >= 0, "planarity_noise_ratio", "must be >= 0")
        require(self.min_track_frames >= 3, "min_track_frames", "must be >= 3")


# --------------------------------------------------------------------------------------------
# Passive features


#: Radial frequency bands (cycles/pixel) of the 112-px grey crop. Recapture shifts energy
#: between them: print and screen lose the top band (blur, halftone low-pass) or gain a narrow
#: peak in it (moiré between screen pixels and camera sensor).
FFT_BANDS = ((0.01, 0.05), (0.05, 0.1), (0.1, 0.2), (0.2, 0.3), (0.3, 0.5))

CUE_NAMES = (
    [f"fft_logfrac_{lo:g}_{hi:g}" for lo, hi in FFT_BANDS]
    + ["fft_high_peakiness",
       "sat_mean", "sat_std", "sat_p95", "cr_std", "cb_std",
       "chroma_mean", "chroma_std", "chroma_p95", "value_mean", "value_std",
       "log_specular_fraction",
       "log_laplacian_var"]
)


def _radius_map(n: int) -> np.ndarray:
    fy = np.fft.fftfreq(n)[:, None]
    fx = np.fft.fftfreq(n)[None, :]
    return np.hypot(fx, fy)


def crop_cues(crop: np.ndarray) -> np.ndarray:
    """The 18 hand-made cues of an aligned BGR crop (names and order: ``CUE_NAMES``).

    Each has a physical reason to differ on a recapture: spectrum (blur, halftone, moiré),
    colour gamut (prints and screens reproduce less saturation and chroma spread than skin
    under light), specular highlights (glossy paper, screen glass), focus (Laplacian).
    """
    if crop.ndim != 3 or crop.shape[0] != crop.shape[1]:
        raise ValueError(f"crop must be a square BGR image, got shape {crop.shape}")
    grey = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY).astype(np.float64)
    n = grey.shape[0]
    window = np.hanning(n)[:, None] * np.hanning(n)[None, :]
    power = np.abs(np.fft.fft2((grey - grey.mean()) * window)) ** 2
    radius = _radius_map(n)
    band = np.array([power[(radius >= lo) & (radius < hi)].sum() for lo, hi in FFT_BANDS]) + 1e-9
    high = power[(radius >= 0.2) & (radius < 0.5)]
    fft = np.concatenate([np.log(band / band.sum()),
                          [math.log((high.max() + 1e-9) / (np.median(high) + 1e-9))]])

    hsv = cv2.cvtColor(crop, cv2.COLOR_BGR2HSV).astype(np.float64)
    sat, value = hsv[..., 1] / 255.0, hsv[..., 2] / 255.0
    ycc = cv2.cvtColor(crop, cv2.COLOR_BGR2YCrCb).astype(np.float64)
    lab = cv2.cvtColor(crop, cv2.COLOR_BGR2LAB).astype(np.float64)
    chroma = np.hypot(lab[..., 1] - 128.0, lab[..., 2] - 128.0)
    specular = float(np.mean((value > 0.92) & (sat < 0.25)))
    colour = [sat.mean(), sat.std(), np.quantile(sat, 0.95), ycc[..., 1].std(),
              ycc[..., 2].std(), chroma.mean(), chroma.std(), np.quantile(chroma, 0.95),
              value.mean(), value.std(), math.log(specular + 1e-3)]

    margin = n // 7  # the face's centre: background and hair edges would dominate otherwise
    laplacian = cv2.Laplacian(grey[margin:-margin, margin:-margin], cv2.CV_64F)
    sharp = [math.log(float(laplacian.var()) + 1e-6)]
    return np.concatenate([fft, colour, sharp]).astype(np.float64)


def _interpreter_with_taps(model_path: Path, threads: int, runtime: str) -> Any:
    """A TFLite interpreter that keeps intermediate tensors readable after ``invoke``.

    Without ``experimental_preserve_all_tensors`` the runtime reuses their memory, so the
    pipeline's own embedder cannot serve: the passive check runs its own copy of SFace.
    """
    from device.infer.runtime import RUNTIMES, RuntimeUnavailable, _interpreter_class

    errors = []
    for name in RUNTIMES if runtime == "auto" else (runtime,):
        try:
            cls = _interpreter_class(name)
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
            continue
        import warnings

        with warnings.catch_warnings():
            # The runtime warns that preserving tensors costs memory: measured, it is a few MB
            # for SFace (docs/liveness.md).
            warnings.simplefilter("ignore")
            interpreter = cls(model_path=str(model_path), num_threads=threads,
                              experimental_preserve_all_tensors=True)
        interpreter.allocate_tensors()
        return interpreter
    raise RuntimeUnavailable("no TFLite runtime could be imported (" + "; ".join(errors) + ")")


class SFaceTaps:
    """SFace run on a crop, returning the spatial means of chosen intermediate layers."""

    def __init__(self, interpreter: Any, layer_names: Sequence[str]) -> None:
        self.interpreter = interpreter
        self.input_index = interpreter.get_input_details()[0]["index"]
        by_name = {t["name"]: t["index"] for t in interpreter.get_tensor_details()}
        missing = [n for n in layer_names if n not in by_name]
        if missing:
            raise LivenessModelError(f"embedder has no tensor named {missing[0]!r}")
        self.indices = [by_name[n] for n in layer_names]

    @classmethod
    def from_bundle(cls, bundle: ModelBundle, layer_names: Sequence[str], threads: int = 1,
                    runtime: str = "auto") -> SFaceTaps:
        """Taps on the bundle's (sha256-verified) embedder file."""
        return cls(_interpreter_with_taps(bundle.path("embedder"), threads, runtime),
                   layer_names)

    def features(self, crop: np.ndarray) -> np.ndarray:
        """Concatenated per-channel means of the tapped layers for an aligned BGR crop."""
        rgb = cv2.cvtColor(crop, cv2.COLOR_BGR2RGB).astype(np.float32)[None]
        self.interpreter.set_tensor(self.input_index, np.ascontiguousarray(rgb))
        self.interpreter.invoke()
        pooled = []
        for index in self.indices:
            activation = self.interpreter.get_tensor(index)  # 1×H×W×C
            pooled.append(activation.reshape(-1, activation.shape[-1]).mean(0))
        return np.concatenate(pooled).astype(np.float64)


def passive_features(taps: SFaceTaps, crop: np.ndarray) -> np.ndarray:
    """The passive classifier's raw feature vector of an aligned crop (training uses this too)."""
    return np.concatenate([taps.features(crop), crop_cues(crop)])


def reading_crop(reading: FaceReading, image: np.ndarray | None) -> np.ndarray:
    """The aligned 112×112 crop the features are computed on (re-aligned from ``image`` if the
    reading does not carry one)."""
    if reading.crop is not None:
        return reading.crop
    if reading.points is None or image is None:
        raise ValueError("reading has no face crop to judge")
    return align_face(image, reading.points)


class PassiveLiveness:
    """The single-frame classifier: features → standardise → logistic → bona fide probability."""

    def __init__(self, taps: SFaceTaps, mean: np.ndarray, scale: np.ndarray,
                 weights: np.ndarray, bias: float, threshold: float,
                 record: dict[str, Any] | None = None) -> None:
        self.taps = taps
        self.mean = np.asarray(mean, dtype=np.float64)
        self.scale = np.asarray(scale, dtype=np.float64)
        self.weights = np.asarray(weights, dtype=np.float64)
        self.bias = float(bias)
        #: Operating threshold: scores at or above it are judged bona fide.
        self.threshold = float(threshold)
        #: Training record from the model file (data, split, CV, test results).
        self.record = record or {}
        if not (self.mean.shape == self.scale.shape == self.weights.shape):
            raise LivenessModelError("model weights, mean and scale differ in length")

    @classmethod
    def from_json(cls, path: Path | str = DEFAULT_PASSIVE_MODEL,
                  bundle: ModelBundle | None = None, threads: int = 1,
                  runtime: str = "auto") -> PassiveLiveness:
        """Load a fitted model; refuses one fitted on a different embedder than the bundle's.

        The features are activations of that exact SFace file, so a model fitted on another
        build would score garbage without any error: the sha256 recorded at fitting time must
        match the bundle's manifest.
        """
        path = Path(path)
        try:
            doc = json.loads(path.read_text())
            feats, clf = doc["features"], doc["classifier"]
        except FileNotFoundError:
            raise LivenessModelError(
                f"passive liveness model {path} is missing; fit it with "
                "`python provisioning/train_pad.py`") from None
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise LivenessModelError(f"passive liveness model {path} is malformed: {exc}") from None
        bundle = bundle or load_bundle()
        try:
            expected = bundle.entry("embedder")["sha256"]
        except ModelBundleError as exc:
            raise LivenessModelError(str(exc)) from None
        if feats.get("embedder_sha256") != expected:
            raise LivenessModelError(
                f"passive liveness model {path} was fitted on embedder "
                f"{str(feats.get('embedder_sha256'))[:16]}…, the bundle has {expected[:16]}…; "
                "re-fit it with `python provisioning/train_pad.py`")
        if list(feats.get("cues", [])) != CUE_NAMES:
            raise LivenessModelError(f"passive liveness model {path} expects other image cues")
        taps = SFaceTaps.from_bundle(bundle, feats["sface_layers"], threads, runtime)
        return cls(taps, clf["mean"], clf["scale"], clf["weights"], clf["bias"],
                   clf["threshold"], doc.get("training"))

    def features(self, reading: FaceReading, image: np.ndarray | None = None) -> np.ndarray:
        """The raw (unstandardised) feature vector of the reading's face."""
        return passive_features(self.taps, reading_crop(reading, image))

    def score_features(self, features: np.ndarray) -> np.ndarray:
        """Bona fide probability for each row of raw features (vectorised, for evaluation)."""
        z = ((np.atleast_2d(features) - self.mean) / self.scale) @ self.weights + self.bias
        return 1.0 / (1.0 + np.exp(-np.clip(z, -50.0, 50.0)))

    def score(self, reading: FaceReading, image: np.ndarray | None = None) -> float:
        """Probability-like bona fide score of the reading's face, in [0, 1]."""
        return float(self.score_features(self.features(reading, image))[0])

    def is_live(self, reading: FaceReading, image: np.ndarray | None = None,
                threshold: float | None = None) -> bool:
        """Whether the score reaches ``threshold`` (default: the shipped operating point)."""
        return self.score(reading, image) >= (self.threshold if threshold is None else threshold)


# --------------------------------------------------------------------------------------------
# 3-D consistency


def _track_scale(points: np.ndarray, eyes: tuple[Sequence[int], Sequence[int]] | None) -> float:
    """Inter-eye distance of one frame's points (RMS radius when eye indices are unknown)."""
    if eyes is None and len(points) == 468:
        eyes = (RIGHT_EYE, LEFT_EYE)
    if eyes is not None:
        return float(np.linalg.norm(points[list(eyes[1])].mean(0) -
                                    points[list(eyes[0])].mean(0)))
    centred = points - points.mean(0)
    return float(np.sqrt((centred ** 2).sum(1).mean()))


def _frames(tracks: Sequence[np.ndarray]) -> list[np.ndarray]:
    frames = [np.asarray(t, dtype=np.float64).reshape(-1, 2) for t in tracks]
    if len(frames) < 2:
        raise ValueError("a track needs at least two frames")
    if len(frames[0]) < 5 or any(f.shape != frames[0].shape for f in frames):
        raise ValueError("every frame needs the same number (≥ 5) of points")
    return frames


def _homography_medians(frames: list[np.ndarray]) -> list[float]:
    """Median reprojection error (pixels) of one least-squares homography per later frame.

    All points, no RANSAC: a photo has no outliers to drop, and a real face's depth is exactly
    what must not be dropped.
    """
    src = frames[0]
    medians = []
    for dst in frames[1:]:
        homography, _ = cv2.findHomography(src, dst, 0)
        if homography is None:
            medians.append(float("inf"))  # degenerate motion: nothing plane-like about it
            continue
        projected = cv2.perspectiveTransform(src[None], homography)[0]
        medians.append(float(np.median(np.linalg.norm(projected - dst, axis=1))))
    return medians


def planarity_residual(tracks: Sequence[np.ndarray],
                       eyes: tuple[Sequence[int], Sequence[int]] | None = None) -> float:
    """How far a landmark track is from moving like a plane, in inter-eye distances.

    ``tracks`` holds one N×2 array of landmark positions per frame (the same N points in the
    same order; FaceMesh's 468 by default). For each later frame one homography is fitted from
    the first frame's points by least squares, and its median reprojection error is divided by
    that frame's inter-eye distance. The result is the largest of these: the frame where the
    head has turned most decides.

    A photo or screen moved in 3-D leaves only landmark noise (≈ 0.02 at σ 1.5 px on a 95-px
    eye distance); a real head turned 15° or more gives 0.04 and up. ``eyes`` names the two
    eye index sets for other layouts (default: FaceMesh's for 468 points, else the points'
    RMS radius is the scale).
    """
    frames = _frames(tracks)
    scales = [_track_scale(f, eyes) for f in frames[1:]]
    if min(scales) <= 0:
        raise ValueError("landmarks collapse to a point")
    return max(m / s for m, s in zip(_homography_medians(frames), scales, strict=True))


def landmark_noise(tracks: Sequence[np.ndarray]) -> float:
    """Landmark noise (pixels, per coordinate) estimated from the track itself.

    Any rigid object, flat or not, seen by a (near-)affine camera gives a 2F×N matrix of
    centred positions of rank ≤ 3 (Tomasi–Kanade); what the best rank-3 approximation leaves
    is noise. Unlike the homography residual this does not grow with depth, so it tells how
    much of the homography residual noise alone could explain.
    """
    frames = _frames(tracks)
    stacked = np.vstack([(f - f.mean(0)).T for f in frames])  # 2F × N
    singular = np.linalg.svd(stacked, compute_uv=False)
    rows, cols = stacked.shape
    dof = max((rows - 3) * (cols - 3), 1)
    return float(np.sqrt(np.sum(singular[3:] ** 2) / dof))


def planarity_noise_ratio(tracks: Sequence[np.ndarray]) -> float:
    """Largest per-frame homography median residual divided by :func:`landmark_noise`.

    For a plane only noise is left after the homography, and the ratio stays about 1.8 at any
    noise level (σ 1–4 px simulated); real depth pushes it up.
    """
    frames = _frames(tracks)
    noise = landmark_noise(frames)
    worst = max(_homography_medians(frames))
    return float("inf") if noise <= 0 else worst / noise


def is_planar(tracks: Sequence[np.ndarray], threshold: float = PLANARITY_THRESHOLD,
              noise_ratio: float = PLANARITY_NOISE_RATIO,
              eyes: tuple[Sequence[int], Sequence[int]] | None = None) -> bool:
    """True when one homography explains the track: a flat photo or screen.

    Both tests must pass for a track to count as 3-D: the residual must exceed ``threshold``
    inter-eye distances and be more than ``noise_ratio`` times the track's own landmark
    noise. The second keeps noisy landmarks (a small or blurred face, a shaken photo) from
    passing a flat photo off as depth; with noise that high a real face is refused too, and
    the applicant can step closer.
    """
    if planarity_residual(tracks, eyes) <= threshold:
        return True
    return noise_ratio > 0 and planarity_noise_ratio(tracks) <= noise_ratio


# --------------------------------------------------------------------------------------------
# Both together


@dataclass(frozen=True)
class LivenessResult:
    """What the liveness check measured and concluded for one presentation."""

    live: bool
    #: Machine-readable reason when not live: ``passive`` or ``planar``.
    reason: str | None
    passive_score: float | None
    planarity: float | None


class LivenessCheck:
    """The configured signals combined: a face is live only if every signal that ran agrees."""

    def __init__(self, config: LivenessConfig, passive: PassiveLiveness | None = None) -> None:
        if config.passive and passive is None:
            raise ValueError("passive liveness is on but no passive model was given")
        self.config = config
        self.passive = passive

    def check(self, reading: FaceReading, image: np.ndarray | None = None,
              tracks: Sequence[np.ndarray] | None = None) -> LivenessResult:
        """Judge a reading (and, when given, the landmark track leading up to it)."""
        score = residual = None
        if self.config.passive and self.passive is not None:
            score = self.passive.score(reading, image)
            threshold = (self.passive.threshold if self.config.passive_threshold is None
                         else self.config.passive_threshold)
            if score < threshold:
                return LivenessResult(False, "passive", score, None)
        if (self.config.planarity and tracks is not None
                and len(tracks) >= self.config.min_track_frames):
            residual = planarity_residual(tracks)
            if is_planar(tracks, self.config.planarity_threshold,
                         self.config.planarity_noise_ratio):
                return LivenessResult(False, "planar", score, residual)
        return LivenessResult(True, None, score, residual)
