"""BlazeFace short-range (MediaPipe) as a second detector back-end, for comparison with YuNet.

BlazeFace is the detector MediaPipe pairs with FaceMesh, and it is small and fast (about 1 ms at
one thread on x86). Its six keypoints are coarse and it has no mouth corners, so it is not the
shipped detector (docs/model-choice.md has the measurements); it is kept so the choice can be
re-measured with ``benchmarks/model_choice.py``.

Model: ``blazeface_short_range.tflite`` from the bundle (role ``blazeface``), 128×128 RGB input
scaled to -1..1, outputs ``regressors`` 1×896×16 and ``classificators`` 1×896×1. The anchor
scheme and the decode follow MediaPipe's ``face_detection_short_range`` graph and the bundle
manifest's ``blazeface`` entry.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from device.infer.align import TEMPLATE_112
from device.infer.detect import Face, letterbox

#: Half the mouth width as a fraction of the eye-to-eye vector, from the alignment template
#: (29.2 px mouth width over 35.2 px eye distance → 0.414). Used to place mouth corners that
#: BlazeFace does not predict.
MOUTH_HALF_WIDTH = float(np.linalg.norm(TEMPLATE_112[4] - TEMPLATE_112[3])
                         / np.linalg.norm(TEMPLATE_112[1] - TEMPLATE_112[0]) / 2)

# BlazeFace keypoint order (MediaPipe's FaceKeypoint enum).
RIGHT_EYE, LEFT_EYE, NOSE_TIP, MOUTH_CENTRE, RIGHT_EAR, LEFT_EAR = range(6)


def ssd_anchors(size: int = 128, strides: tuple[int, ...] = (8, 16, 16, 16),
                anchors_per_layer: int = 2, offset: float = 0.5) -> np.ndarray:
    """Anchor centres (N×2, normalised 0..1) of MediaPipe's SsdAnchorsCalculator, fixed size.

    Consecutive layers with the same stride share one grid (their anchors are interleaved per
    cell), so strides 8,16,16,16 give 16×16×2 + 8×8×6 = 896 anchors for a 128 input. With
    ``fixed_anchor_size`` every anchor is 1×1, so only the centres matter.
    """
    centres = []
    layer = 0
    while layer < len(strides):
        stride = strides[layer]
        same = 0
        while layer < len(strides) and strides[layer] == stride:
            same += 1
            layer += 1
        grid = int(np.ceil(size / stride))
        rows, cols = np.mgrid[0:grid, 0:grid]
        cx = (cols.reshape(-1) + offset) / grid
        cy = (rows.reshape(-1) + offset) / grid
        per_cell = np.stack([cx, cy], axis=1)
        centres.append(np.repeat(per_cell, anchors_per_layer * same, axis=0))
    return np.concatenate(centres).astype(np.float32)


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one x1,y1,x2,y2 box with many."""
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def weighted_nms(corners: np.ndarray, keypoints: np.ndarray, scores: np.ndarray,
                 iou: float) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """MediaPipe's weighted NMS: each cluster's box and keypoints are score-weighted means.

    BlazeFace fires on many neighbouring anchors for one face; averaging them (instead of
    keeping the single best) steadies the box and keypoints, which is what MediaPipe ships.
    The cluster keeps its best score. Returns (corners, keypoints, score), best first.
    """
    order = np.argsort(-scores)
    corners, keypoints, scores = corners[order], keypoints[order], scores[order]
    remaining = np.arange(len(scores))
    out = []
    while remaining.size:
        best = remaining[0]
        overlap = _iou(corners[best], corners[remaining])
        cluster = remaining[overlap > iou]
        cluster = cluster if cluster.size else np.array([best])
        w = scores[cluster][:, None]
        box = (corners[cluster] * w).sum(0) / w.sum()
        kps = (keypoints[cluster] * w[:, :, None]).sum(0) / w.sum()
        out.append((box, kps, float(scores[best])))
        remaining = remaining[overlap <= iou]
        remaining = remaining[remaining != best]
    return out


def five_points(keypoints: np.ndarray) -> np.ndarray:
    """BlazeFace's 6 keypoints → the 5-point alignment layout (eyes, nose, mouth corners).

    BlazeFace gives the mouth centre, not its corners. The corners are placed on a line through
    the mouth centre parallel to the eye line, ``MOUTH_HALF_WIDTH`` × the eye vector to each
    side: the template's own mouth-to-eye width ratio. Their mean is exactly the mouth centre, so
    a similarity fit to the template uses the mouth centre where the template has it; only the
    eyes, nose and mouth centre carry information (a "4-point" alignment). FaceMeshRefiner uses
    only the box and the eyes, so refinement is unaffected by this estimate.
    """
    right_eye, left_eye = keypoints[RIGHT_EYE], keypoints[LEFT_EYE]
    half = MOUTH_HALF_WIDTH * (left_eye - right_eye)
    mouth = keypoints[MOUTH_CENTRE]
    return np.array([right_eye, left_eye, keypoints[NOSE_TIP], mouth - half, mouth + half],
                    dtype=np.float64)


class BlazeFaceDetector:
    """BlazeFace short-range on a TFLite interpreter: letterbox, SSD decode, weighted NMS.

    ``score_threshold`` 0.5 and ``nms_iou`` 0.3 are MediaPipe's own settings for this model.
    ``weighted`` False switches to plain NMS (keep the best box of each cluster).
    """

    SIZE = 128
    STRIDES = (8, 16, 16, 16)

    def __init__(self, interpreter: Any, score_threshold: float = 0.5, nms_iou: float = 0.3,
                 weighted: bool = True) -> None:
        self.interpreter = interpreter
        inp = interpreter.get_input_details()[0]
        self.input_index = inp["index"]
        if tuple(inp["shape"][1:]) != (self.SIZE, self.SIZE, 3):
            raise ValueError(f"expected a 1x{self.SIZE}x{self.SIZE}x3 input, got {inp['shape']}")
        outs = {d["name"]: d for d in interpreter.get_output_details()}
        if {"regressors", "classificators"} - outs.keys():
            raise KeyError(f"BlazeFace outputs regressors/classificators not found in {list(outs)}")
        self.regressors_index = outs["regressors"]["index"]
        self.classificators_index = outs["classificators"]["index"]
        self.anchors = ssd_anchors(self.SIZE, self.STRIDES)
        count = int(outs["regressors"]["shape"][1])
        if count != len(self.anchors):
            raise ValueError(f"model has {count} anchors, the scheme gives {len(self.anchors)}")
        self.score_threshold = score_threshold
        self.nms_iou = nms_iou
        self.weighted = weighted

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in a BGR image, highest score first."""
        canvas, scale = letterbox(image, self.SIZE)
        rgb = cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB).astype(np.float32) / 127.5 - 1.0
        self.interpreter.set_tensor(self.input_index, np.ascontiguousarray(rgb[None]))
        self.interpreter.invoke()
        raw = self.interpreter.get_tensor(self.regressors_index).reshape(-1, 16)
        logits = self.interpreter.get_tensor(self.classificators_index).reshape(-1)
        scores = 1.0 / (1.0 + np.exp(-np.clip(logits.astype(np.float64), -100, 100)))
        keep = np.nonzero(scores >= self.score_threshold)[0]
        if keep.size == 0:
            return []
        origin = self.anchors[keep] * self.SIZE  # anchor centres in input pixels
        reg = raw[keep].astype(np.float64)
        centre = origin + reg[:, 0:2]
        half = reg[:, 2:4] / 2
        corners = np.concatenate([centre - half, centre + half], axis=1)
        keypoints = origin[:, None, :] + reg[:, 4:16].reshape(-1, 6, 2)
        if self.weighted:
            found = weighted_nms(corners, keypoints, scores[keep], self.nms_iou)
        else:
            chosen = cv2.dnn.NMSBoxes(
                np.column_stack([corners[:, :2], corners[:, 2:] - corners[:, :2]]).tolist(),
                scores[keep].tolist(), self.score_threshold, self.nms_iou)
            found = [(corners[i], keypoints[i], float(scores[keep][i]))
                     for i in sorted(np.array(chosen).reshape(-1).tolist(),
                                     key=lambda i: -scores[keep][i])]
        faces = []
        for box, kps, score in found:
            x1, y1, x2, y2 = (float(v) / scale for v in box)
            faces.append(Face(box=(x1, y1, x2 - x1, y2 - y1), landmarks=five_points(kps / scale),
                              score=score))
        return faces
