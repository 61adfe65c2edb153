"""Face detectors behind one small interface: image in, faces with five landmarks out.

The shipped back-end is YuNet 2023mar (OpenCV Zoo) converted to TFLite with a fixed 320×320
input. Its five landmarks (eyes, nose tip, mouth corners) are precise enough for alignment, which
was worth 8–10 TAR points over BlazeFace's coarse keypoints in measurements here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import cv2
import numpy as np


@dataclass(frozen=True)
class Face:
    """A detected face in frame pixel coordinates.

    ``landmarks`` is 5×2: the subject's right eye, left eye, nose tip, right and left mouth
    corners (image-left first, the order of the ArcFace alignment template).
    """

    box: tuple[float, float, float, float]  # x, y, width, height
    landmarks: np.ndarray
    score: float

    @property
    def inter_eye_px(self) -> float:
        """Distance between the eye centres: the usual measure of how large a face is."""
        return float(np.linalg.norm(self.landmarks[0] - self.landmarks[1]))


class Detector(Protocol):
    """What the pipeline needs from a detector back-end."""

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in a BGR uint8 image, best first."""
        ...


def letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """The image scaled so its long side is ``size``, pasted top-left on a black square.

    Returns the square and the scale; divide model coordinates by the scale to get back to
    frame pixels. Keeping the aspect ratio matters: a squashed face shifts every landmark.
    """
    h, w = image.shape[:2]
    scale = size / max(h, w)
    # Bilinear down to half size: it reads 2×2 neighbours, so it only aliases below 0.5, where
    # area averaging takes over. At exactly 0.5 (a 640-wide camera frame into 320) the two give
    # identical pixels; at 0.8 (a 400-pixel photo) area costs 1.6 ms against 0.2 ms here.
    interpolation = cv2.INTER_AREA if scale < 0.5 else cv2.INTER_LINEAR
    resized = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))),
                         interpolation=interpolation)
    canvas = np.zeros((size, size, 3), dtype=np.uint8)
    canvas[: resized.shape[0], : resized.shape[1]] = resized
    return canvas, scale


def _output_index(details: list[dict[str, Any]], tensor: str) -> int:
    """Index of the output tensor called ``tensor`` (names come from the bundle manifest)."""
    for d in details:
        if d["name"] == tensor:
            return d["index"]
    names = ", ".join(d["name"] for d in details)
    raise KeyError(f"model has no output tensor {tensor!r} (it has: {names})")


def yunet_output_tensors(manifest_entry: dict[str, Any]) -> dict[str, str]:
    """Output name (``cls_8`` …) → tensor name, from the detector's manifest entry.

    Converters rename and reorder outputs (dynamic-range and int8 variants differ), so outputs
    are found by the names recorded at build time, never by position.
    """
    return {o["name"]: o.get("tensor", o["name"]) for o in manifest_entry["output"]}


class YuNetDetector:
    """YuNet on a TFLite interpreter: letterbox to the model size, decode per stride, NMS.

    ``score_threshold`` 0.6 is OpenCV's default for YuNet (few false faces on busy backgrounds);
    ``nms_iou`` 0.3 likewise.
    """

    STRIDES = (8, 16, 32)

    def __init__(self, interpreter: Any, output_tensors: dict[str, str],
                 score_threshold: float = 0.6, nms_iou: float = 0.3, top_k: int = 20) -> None:
        self.interpreter = interpreter
        inp = interpreter.get_input_details()[0]
        self.input_index = inp["index"]
        shape = inp["shape"]
        self.nchw = shape[1] == 3
        self.size = int(shape[2] if self.nchw else shape[1])
        outs = interpreter.get_output_details()
        self.outputs: dict[tuple[str, int], int] = {}
        for kind in ("cls", "obj", "bbox", "kps"):
            for stride in self.STRIDES:
                name = f"{kind}_{stride}"
                if name not in output_tensors:
                    raise KeyError(f"detector manifest lists no output {name!r}")
                self.outputs[kind, stride] = _output_index(outs, output_tensors[name])
        self.score_threshold = score_threshold
        self.nms_iou = nms_iou
        self.top_k = top_k

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in a BGR image, highest score first."""
        canvas, scale = letterbox(image, self.size)
        tensor = canvas.astype(np.float32)[None]
        if self.nchw:
            tensor = tensor.transpose(0, 3, 1, 2)
        self.interpreter.set_tensor(self.input_index, np.ascontiguousarray(tensor))
        self.interpreter.invoke()
        boxes, scores, kpss = [], [], []
        for stride in self.STRIDES:
            get = self.interpreter.get_tensor
            cls = get(self.outputs["cls", stride]).reshape(-1)
            obj = get(self.outputs["obj", stride]).reshape(-1)
            score = np.sqrt(np.clip(cls, 0, 1) * np.clip(obj, 0, 1))
            keep = np.nonzero(score >= self.score_threshold)[0]
            if keep.size == 0:
                continue
            bbox = get(self.outputs["bbox", stride]).reshape(-1, 4)[keep]
            kps = get(self.outputs["kps", stride]).reshape(-1, 10)[keep]
            cols = self.size // stride
            gx = (keep % cols).astype(np.float32)
            gy = (keep // cols).astype(np.float32)
            cx = (gx + bbox[:, 0]) * stride
            cy = (gy + bbox[:, 1]) * stride
            w = np.exp(bbox[:, 2]) * stride
            h = np.exp(bbox[:, 3]) * stride
            boxes.append(np.stack([cx - w / 2, cy - h / 2, w, h], axis=1))
            pts = kps.reshape(-1, 5, 2)
            pts = (pts + np.stack([gx, gy], axis=1)[:, None, :]) * stride
            kpss.append(pts)
            scores.append(score[keep])
        if not boxes:
            return []
        all_boxes = np.concatenate(boxes) / scale
        all_scores = np.concatenate(scores)
        all_kps = np.concatenate(kpss) / scale
        chosen = cv2.dnn.NMSBoxes(all_boxes.tolist(), all_scores.tolist(),
                                  self.score_threshold, self.nms_iou, top_k=self.top_k)
        order = sorted(np.array(chosen).reshape(-1).tolist(), key=lambda i: -all_scores[i])
        return [Face(box=tuple(float(v) for v in all_boxes[i]), landmarks=all_kps[i],
                     score=float(all_scores[i])) for i in order]
