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

from device.config import QualityConfig
from device.infer.detect import Face
from device.infer.landmarks import Mesh
from device.infer.pipeline import FaceReading


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
