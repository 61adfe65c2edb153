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
from device.infer.landmarks import FaceMeshRefiner, Mesh
from device.infer.runtime import load_interpreter


@dataclass
class FaceReading:
    """What the pipeline saw in one frame."""

    faces: list[Face]
    #: The face the gate should judge (largest), or None when no face was found.
    subject: Face | None
    embedding: np.ndarray | None
    timings_ms: dict[str, float] = field(default_factory=dict)
    #: FaceMesh landmarks of the subject (None when refinement is off or found no face).
    mesh: Mesh | None = None
    #: The five points the crop was aligned with (frame pixels).
    points: np.ndarray | None = None
    #: The aligned 112×112 BGR crop that was embedded.
    crop: np.ndarray | None = None


def _largest(faces: list[Face]) -> Face:
    # At a door the applicant is the nearest (largest) face; people queueing behind are smaller.
    return max(faces, key=lambda f: f.box[2] * f.box[3])


class FacePipeline:
    """Detector, optional FaceMesh refiner and embedder composed; ``read(image)`` runs them."""

    #: Below this FaceMesh presence the mesh is not trusted and the detector's points are used.
    MIN_MESH_PRESENCE = 0.5

    def __init__(self, detector: Detector, embedder: SFaceEmbedder,
                 refiner: FaceMeshRefiner | None = None, flip_average: bool = False) -> None:
        self.detector = detector
        self.embedder = embedder
        self.refiner = refiner
        #: Average the embeddings of the crop and its mirror image: about one TAR point for a
        #: second embedder run (used for enrollment templates; optional at the door).
        self.flip_average = flip_average

    @classmethod
    def from_bundle(cls, bundle: ModelBundle, threads: int = 2, runtime: str = "auto",
                    refine: bool = True) -> FacePipeline:
        """Load the bundle's models on the chosen TFLite runtime (FaceMesh when ``refine``)."""
        detector = YuNetDetector(
            load_interpreter(bundle.path("detector"), threads, runtime),
            yunet_output_tensors(bundle.entry("detector")))
        embedder = SFaceEmbedder(load_interpreter(bundle.path("embedder"), threads, runtime))
        refiner = (FaceMeshRefiner(load_interpreter(bundle.path("face_mesh"), threads, runtime))
                   if refine else None)
        return cls(detector, embedder, refiner)

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
        points, mesh = subject.landmarks, None
        if self.refiner is not None:
            mesh = self.refiner.refine(image, subject)
            if mesh.presence >= self.MIN_MESH_PRESENCE:
                points = mesh.five_points()
            else:
                mesh = None
            t_mesh = time.perf_counter()
            timings["landmarks"] = (t_mesh - t1) * 1000
            t1 = t_mesh
        crop = align_face(image, points)
        t2 = time.perf_counter()
        timings["align"] = (t2 - t1) * 1000
        embedding = self.embed_crop(crop)
        timings["embed"] = (time.perf_counter() - t2) * 1000
        return FaceReading(faces=faces, subject=subject, embedding=embedding, timings_ms=timings,
                           mesh=mesh, points=points, crop=crop)

    def embed_crop(self, crop: np.ndarray, flip: bool | None = None) -> np.ndarray:
        """Unit embedding of an aligned crop, flip-averaged if ``flip`` (default: configured)."""
        embedding = self.embedder.embed(crop)
        if self.flip_average if flip is None else flip:
            embedding = embedding + self.embedder.embed(np.ascontiguousarray(crop[:, ::-1]))
            embedding /= np.linalg.norm(embedding)
        return embedding
