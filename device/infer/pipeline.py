"""Frame → face → aligned crop → embedding, with per-stage timings.

Data flows one way: the pipeline only describes the face it saw; deciding what that means for
the door is the check-in loop's job.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from device.infer.align import align_face
from device.infer.bundle import ModelBundle
from device.infer.detect import Detector, Face, YuNetDetector, yunet_output_tensors
from device.infer.embed import SFaceEmbedder
from device.infer.runtime import load_interpreter


@dataclass
class FaceReading:
    """What the pipeline saw in one frame."""

    faces: list[Face]
    #: The face the gate should judge (largest), or None when no face was found.
    subject: Face | None
    embedding: np.ndarray | None
    timings_ms: dict[str, float] = field(default_factory=dict)


def _largest(faces: list[Face]) -> Face:
    # At a door the applicant is the nearest (largest) face; people queueing behind are smaller.
    return max(faces, key=lambda f: f.box[2] * f.box[3])


class FacePipeline:
    """Detector and embedder composed; ``read(image)`` runs them on one frame."""

    def __init__(self, detector: Detector, embedder: SFaceEmbedder) -> None:
        self.detector = detector
        self.embedder = embedder

    @classmethod
    def from_bundle(cls, bundle: ModelBundle, threads: int = 2, runtime: str = "auto",
                    ) -> FacePipeline:
        """Load the bundle's detector and embedder on the chosen TFLite runtime."""
        detector = YuNetDetector(
            load_interpreter(bundle.path("detector"), threads, runtime),
            yunet_output_tensors(bundle.entry("detector")))
        embedder = SFaceEmbedder(load_interpreter(bundle.path("embedder"), threads, runtime))
        return cls(detector, embedder)

    def read(self, image: np.ndarray) -> FaceReading:
        """Detect, align and embed the main face of a BGR frame."""
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        faces = self.detector.detect(image)
        t1 = time.perf_counter()
        timings["detect"] = (t1 - t0) * 1000
        if not faces:
            return FaceReading(faces=[], subject=None, embedding=None, timings_ms=timings)
        subject = _largest(faces)
        crop = align_face(image, subject.landmarks)
        t2 = time.perf_counter()
        timings["align"] = (t2 - t1) * 1000
        embedding = self.embedder.embed(crop)
        timings["embed"] = (time.perf_counter() - t2) * 1000
        return FaceReading(faces=faces, subject=subject, embedding=embedding, timings_ms=timings)
