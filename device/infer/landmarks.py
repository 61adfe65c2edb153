"""Landmark refinement with FaceMesh: 468 points, from which five precise alignment points.

YuNet's five landmarks are good; FaceMesh's are better for alignment (measured here: celeba TAR
at FAR 1e-3 0.856 → about 0.9 with SFace) and give head pose and the eye contours that liveness
needs. FaceMesh runs on a square crop 1.5× the face, rotated so the eyes are level; a second pass
re-crops from the first pass's own landmarks, which centres the face the way the model was
trained (MediaPipe's tracking loop does the same), unless the first pass already agrees with the
detector (``SKIP_SECOND_PASS_BELOW``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from device.infer.detect import Face

# FaceMesh indices (subject's right side first = image left, the alignment template's order).
RIGHT_EYE = [33, 7, 163, 144, 145, 153, 154, 155, 133, 246, 161, 160, 159, 158, 157, 173]
LEFT_EYE = [263, 249, 390, 373, 374, 380, 381, 382, 362, 466, 388, 387, 386, 385, 384, 398]
NOSE_TIP = 1
MOUTH_RIGHT, MOUTH_LEFT = 61, 291
CHEEK_RIGHT, CHEEK_LEFT = 234, 454
FOREHEAD, CHIN = 10, 152


@dataclass(frozen=True)
class Mesh:
    """468 FaceMesh landmarks in frame pixels (x, y) plus relative depth z (same scale as x)."""

    points: np.ndarray  # 468×3
    presence: float     # FaceMesh's own probability that the crop holds a face

    def five_points(self) -> np.ndarray:
        """Eye-contour centres, nose tip, mouth corners: the 5-point alignment layout."""
        p = self.points[:, :2]
        return np.array([p[RIGHT_EYE].mean(0), p[LEFT_EYE].mean(0), p[NOSE_TIP],
                         p[MOUTH_RIGHT], p[MOUTH_LEFT]], dtype=np.float64)

    def pose_deg(self) -> tuple[float, float, float]:
        """Approximate (yaw, pitch, roll) in degrees from the mesh's 3-D landmarks.

        Yaw from the depth difference across the cheeks, pitch from forehead to chin, roll from
        the eye line. Positive yaw: the nose moved toward the image's left, which on an
        unmirrored camera (the gate's) is the subject turning to their own right.
        """
        p = self.points
        across = p[CHEEK_LEFT] - p[CHEEK_RIGHT]
        down = p[CHIN] - p[FOREHEAD]
        yaw = np.degrees(np.arctan2(-across[2], np.hypot(across[0], across[1])))
        pitch = np.degrees(np.arctan2(down[2], np.hypot(down[0], down[1])))
        eyes = p[LEFT_EYE, :2].mean(0) - p[RIGHT_EYE, :2].mean(0)
        roll = np.degrees(np.arctan2(eyes[1], eyes[0]))
        return float(yaw), float(pitch), float(roll)


class FaceMeshRefiner:
    """FaceMesh (MediaPipe ``face_landmark.tflite``) on an upright crop, two passes."""

    #: The crop is this many times the face size. MediaPipe uses 1.5; 1.6 was the best balance
    #: measured across the shared sets (docs/verification.md: 1.5 is best on celeba, 1.7 on
    #: the small controlled ORL portraits, 1.6 within 0.3 points of each).
    CROP_SCALE = 1.6
    #: Skip the second pass when the first moved none of the detector's five points by this many
    #: inter-eye distances: the detector's crop was already centred. 0.10 skipped 16 % of celeba
    #: and 49 % of ORL faces with every TAR unchanged (celeba gate TAR@1e-4 0.9531 either way);
    #: 0.15 skips 47 % / 89 % for celeba gate 0.9520. 0 always runs ``passes`` passes.
    SKIP_SECOND_PASS_BELOW = 0.10

    def __init__(self, interpreter: Any, passes: int = 2) -> None:
        self.interpreter = interpreter
        inp = interpreter.get_input_details()[0]
        self.input_index = inp["index"]
        self.size = int(inp["shape"][1])
        outs = {o["name"]: o["index"] for o in interpreter.get_output_details()}
        self.points_index = outs.get("conv2d_21", interpreter.get_output_details()[0]["index"])
        self.presence_index = outs.get("conv2d_31")
        self.passes = passes

    def _run(self, image: np.ndarray, centre: np.ndarray, side: float,
             angle: float) -> Mesh:
        # Affine map frame → crop: rotate about the centre so the eye line is level, scale the
        # square of ``side`` pixels onto the model input.
        scale = self.size / side
        matrix = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])),
                                         np.degrees(angle), scale)
        matrix[:, 2] += self.size / 2 - centre
        crop = cv2.warpAffine(image, matrix, (self.size, self.size), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT)
        rgb = cv2.cvtColor(crop, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
        self.interpreter.set_tensor(self.input_index, rgb[None])
        self.interpreter.invoke()
        raw = self.interpreter.get_tensor(self.points_index).reshape(-1, 3).astype(np.float64)
        presence = 1.0
        if self.presence_index is not None:
            logit = float(self.interpreter.get_tensor(self.presence_index).reshape(-1)[0])
            presence = float(1 / (1 + np.exp(-np.clip(logit, -50, 50))))
        inverse = cv2.invertAffineTransform(matrix)
        xy = raw[:, :2] @ inverse[:, :2].T + inverse[:, 2]
        z = raw[:, 2] / scale
        return Mesh(points=np.column_stack([xy, z]), presence=presence)

    def refine(self, image: np.ndarray, face: Face) -> Mesh:
        """The face's mesh in frame coordinates, starting from the detector's box and eyes."""
        x, y, w, h = face.box
        centre = np.array([x + w / 2, y + h / 2])
        side = self.CROP_SCALE * max(w, h)
        eyes = face.landmarks[1] - face.landmarks[0]
        angle = float(np.arctan2(eyes[1], eyes[0]))
        mesh = self._run(image, centre, side, angle)
        eye_px = float(np.hypot(eyes[0], eyes[1]))
        moved = float(np.abs(mesh.five_points() - face.landmarks).max())
        if eye_px > 0 and mesh.presence >= 0.5 and moved < self.SKIP_SECOND_PASS_BELOW * eye_px:
            return mesh  # already centred: a second pass would change nothing that matters
        for _ in range(self.passes - 1):
            pts = mesh.points[:, :2]
            lo, hi = pts.min(0), pts.max(0)
            eyes = pts[LEFT_EYE].mean(0) - pts[RIGHT_EYE].mean(0)
            angle = float(np.arctan2(eyes[1], eyes[0]))
            mesh = self._run(image, (lo + hi) / 2, self.CROP_SCALE * float(max(hi - lo)), angle)
        return mesh
