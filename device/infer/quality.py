"""The quality gate: refuse to judge a face the camera cannot see well, and say why.

A poor capture is the main cause of false rejects, and a door that says "move closer" or "look at
the camera" fixes it in a second. Each check returns a reason code the applicant screen turns into
a prompt (codes: ``gerbang.wire.QUALITY_REASONS``, checked in that order); the thresholds live in
config (``[quality]``) with defaults justified below.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from device.infer.detect import Face
from device.infer.landmarks import Mesh
from device.infer.pipeline import FaceReading


@dataclass
class QualityConfig:
    """Thresholds of the quality gate (all in ``[quality]`` of the device config)."""

    # Defaults come from genuine-probe acceptance per bucket on the shared celeba set (gate
    # protocol, 3-photo templates; table in docs/verification.md): each limit sits where
    # acceptance falls off a cliff, not where a textbook puts it, so the gate refuses only
    # captures that would likely be refused anyway, with a reason the applicant can act on.

    #: Eye-centre distance in frame pixels. Acceptance holds at 0.90-0.93 down to 12 px and
    #: falls to 0.57 below (the 112-px crop then invents more than half its detail). A door
    #: camera at arm's length gives 60+ px, so this only trips on someone far away.
    min_inter_eye_px: float = 12.0
    #: Head turn (yaw) limit, degrees: acceptance 0.89-0.92 from 35° to 42°, 0.75 at 42-45°
    #: and 0.67 beyond.
    max_yaw_deg: float = 42.0
    #: Nod (pitch) limit, degrees: acceptance 0.91 at 25-30°, 0.58 at 30-40°.
    max_pitch_deg: float = 30.0
    #: Mean luminance (0..255) of the face's central region: below 45 or above 200 acceptance
    #: drops under 0.5 (noise-dominated, or washed-out skin texture).
    min_brightness: float = 45.0
    max_brightness: float = 200.0
    #: Variance of the Laplacian of the central region of the aligned 112×112 grey crop: sharp
    #: faces score in the hundreds; below 50 (motion or focus blur) acceptance falls to 0.43.
    min_sharpness: float = 50.0
    #: A second face at least this fraction of the subject's area counts as another person at
    #: the camera (tailgating, a helper behind the applicant); smaller ones are the queue behind.
    second_face_area_ratio: float = 0.35
    #: Eyes and mouth corners must lie at least this many eye-distances inside the frame: a
    #: frontal face's outline reaches about half an eye-distance beyond its eyes, so closer
    #: than a quarter means part of the face is outside the picture.
    min_edge_margin: float = 0.25

    def __post_init__(self) -> None:
        from gerbang.config import require

        require(0 <= self.min_inter_eye_px <= 500, "min_inter_eye_px", "must be 0..500")
        require(0 < self.max_yaw_deg <= 90, "max_yaw_deg", "must be in (0, 90]")
        require(0 < self.max_pitch_deg <= 90, "max_pitch_deg", "must be in (0, 90]")
        require(0 <= self.min_brightness < self.max_brightness <= 255, "min_brightness",
                "must satisfy 0 <= min_brightness < max_brightness <= 255")
        require(0 <= self.min_sharpness <= 10_000, "min_sharpness", "must be 0..10000")
        require(0 < self.second_face_area_ratio <= 1, "second_face_area_ratio", "must be (0, 1]")
        require(0 <= self.min_edge_margin < 5, "min_edge_margin", "must be in [0, 5)")


@dataclass(frozen=True)
class QualityMeasures:
    """What the gate measured on one face (logged and reported by ``eval``)."""

    inter_eye_px: float
    yaw_deg: float | None
    pitch_deg: float | None
    brightness: float
    sharpness: float
    other_faces: int
    #: Smallest distance from a landmark to the frame edge, in eye-distances (< 0: outside).
    edge_margin: float


def _brightness_and_sharpness(aligned_bgr: np.ndarray) -> tuple[float, float]:
    grey = cv2.cvtColor(aligned_bgr, cv2.COLOR_BGR2GRAY)
    centre = grey[28:100, 24:88]  # eyes to mouth, cheek to cheek: skin, not background or hair
    sharpness = float(cv2.Laplacian(centre, cv2.CV_64F).var())
    return float(centre.mean()), sharpness


def measure(faces: list[Face], subject: Face, points: np.ndarray, aligned_bgr: np.ndarray,
            mesh: Mesh | None, frame_shape: tuple[int, ...], config: QualityConfig,
            ) -> QualityMeasures:
    """Measure the subject's face in its frame."""
    area = subject.box[2] * subject.box[3]
    others = sum(1 for f in faces if f is not subject
                 and f.box[2] * f.box[3] >= config.second_face_area_ratio * area)
    yaw = pitch = None
    if mesh is not None:
        yaw, pitch, _ = mesh.pose_deg()
    brightness, sharpness = _brightness_and_sharpness(aligned_bgr)
    inter_eye = float(np.linalg.norm(points[0] - points[1]))
    height, width = frame_shape[:2]
    inside = np.minimum(np.minimum(points[:, 0], width - points[:, 0]),
                        np.minimum(points[:, 1], height - points[:, 1]))
    return QualityMeasures(inter_eye_px=inter_eye, yaw_deg=yaw, pitch_deg=pitch,
                           brightness=brightness, sharpness=sharpness, other_faces=others,
                           edge_margin=float(inside.min()) / max(inter_eye, 1e-6))


def judge(m: QualityMeasures, config: QualityConfig) -> str | None:
    """The first failing reason code, or None when the face is good enough to match."""
    if m.other_faces:
        return "multiple_faces"
    if m.edge_margin < config.min_edge_margin:
        return "face_cut_off"
    if m.inter_eye_px < config.min_inter_eye_px:
        return "face_too_small"
    if (m.yaw_deg is not None and abs(m.yaw_deg) > config.max_yaw_deg) or (
            m.pitch_deg is not None and abs(m.pitch_deg) > config.max_pitch_deg):
        return "off_frontal"
    if m.brightness < config.min_brightness:
        return "too_dark"
    if m.brightness > config.max_brightness:
        return "overexposed"
    if m.sharpness < config.min_sharpness:
        return "blurred"
    return None


def assess(reading: FaceReading, frame_shape: tuple[int, ...], config: QualityConfig,
           ) -> tuple[QualityMeasures | None, str | None]:
    """Measure and judge a pipeline reading: (measures, first failing reason or None)."""
    if reading.subject is None or reading.points is None or reading.crop is None:
        return None, "no_face"
    m = measure(reading.faces, reading.subject, reading.points, reading.crop, reading.mesh,
                frame_shape, config)
    return m, judge(m, config)
