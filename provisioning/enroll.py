"""Enrollment: registration photos → one template per applicant, with the device's own models.

Using the same model bundle as the gates matters: a template made by another model or another
alignment would not be comparable with what the door computes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from device.capture.replay import read_image
from device.config import QualityConfig
from device.decide.roster import Roster, RosterEntry
from device.infer.pipeline import FacePipeline
from device.infer.quality import assess
from device.tools.evaluation import list_people
from gerbang.progress import progress


@dataclass
class EnrollmentReport:
    """What happened to each applicant's photos."""

    enrolled: list[str] = field(default_factory=list)
    #: (applicant id, photo, reason) for every photo that could not be used.
    rejected_photos: list[tuple[str, str, str]] = field(default_factory=list)
    #: Applicants with no usable photo at all (not in the roster: they need new photos).
    failed: list[str] = field(default_factory=list)
    #: (applicant id, applicant id, similarity): two ids whose faces match — one person
    #: registered twice, perhaps to sit for someone else. For a human to review.
    duplicates: list[tuple[str, str, float]] = field(default_factory=list)
    #: Applicant id → the embedding of each usable photo (rows), kept only when asked
    #: (``build_roster(keep_photos=True)``): the technician's working data for
    #: ``gerbang-provision calibrate``, never sent to a gate.
    photo_embeddings: dict[str, np.ndarray] = field(default_factory=dict)


def face_folders(root: Path, min_images: int = 1) -> dict[str, list[Path]]:
    """``<person>/<image>`` folders under ``root`` → person id → sorted image paths."""
    return {p: imgs for p, imgs in list_people(root).items() if len(imgs) >= min_images}


def embed_photos(pipeline: FacePipeline, photos: Sequence[Path],
                 quality: QualityConfig | None = None,
                 ) -> tuple[list[np.ndarray], list[tuple[str, str]]]:
    """Flip-averaged embedding of each photo that passes the quality gate, and (photo, reason)
    for the others (reason codes as at the gate, plus ``unreadable``)."""
    quality = quality or QualityConfig()
    vectors, problems = [], []
    for photo in photos:
        image = read_image(photo)
        if image is None:
            problems.append((str(photo), "unreadable"))
            continue
        reading = pipeline.read(image)
        _, reason = assess(reading, image.shape, quality)
        if reason is not None:
            problems.append((str(photo), reason))
            continue
        assert reading.crop is not None
        vectors.append(pipeline.embed_crop(reading.crop, flip=True))
    return vectors, problems


def mean_template(vectors: Sequence[np.ndarray]) -> np.ndarray:
    """The unit-length mean of embeddings: an applicant's template."""
    mean = np.mean(np.asarray(vectors, dtype=np.float32), axis=0)
    return (mean / np.linalg.norm(mean)).astype(np.float32)


def template_from_photos(pipeline: FacePipeline, photos: Sequence[Path],
                         quality: QualityConfig | None = None,
                         ) -> tuple[np.ndarray | None, list[tuple[str, str]]]:
    """Mean flip-averaged embedding of the photos that pass the quality gate, and
    (photo, reason) for the others (reason codes as at the gate, plus ``unreadable``)."""
    vectors, problems = embed_photos(pipeline, photos, quality)
    return (mean_template(vectors) if vectors else None), problems


def find_duplicates(entries: Sequence[RosterEntry], threshold: float,
                    ) -> list[tuple[str, str, float]]:
    """Pairs of applicants whose templates match above ``threshold``, most similar first.

    One matrix product over all templates: 10,000 applicants is 50 million pairs in a second.
    The threshold is the calibrated FAR 1e-4 cosine threshold, so among 100 applicants (4,950
    pairs) about one false flag in two rosters is expected; every flag goes to a human.
    """
    if len(entries) < 2:
        return []
    matrix = np.stack([e.template for e in entries])
    scores = matrix @ matrix.T
    upper = np.triu_indices(len(entries), 1)
    hits = np.nonzero(scores[upper] >= threshold)[0]
    found = [(entries[upper[0][k]].applicant_id, entries[upper[1][k]].applicant_id,
              round(float(scores[upper][k]), 4)) for k in hits]
    return sorted(found, key=lambda d: -d[2])


def build_roster(pipeline: FacePipeline, applicants: Mapping[str, Sequence[Path]],
                 session: str, room: str, version: int = 1,
                 names: Mapping[str, str] | None = None, show_progress: bool = True,
                 duplicate_threshold: float | None = None, quality: QualityConfig | None = None,
                 keep_photos: bool = False) -> tuple[Roster, EnrollmentReport]:
    """Enroll every applicant from their photos into a room roster, and look for duplicates
    (``keep_photos``: also keep each photo's embedding in the report, for calibration)."""
    report = EnrollmentReport()
    entries = []
    items = list(applicants.items())
    iterator = progress(items, label=f"enrolling {room}") if show_progress else items
    for applicant_id, photos in iterator:
        vectors, problems = embed_photos(pipeline, photos, quality)
        report.rejected_photos += [(applicant_id, p, why) for p, why in problems]
        if not vectors:
            report.failed.append(applicant_id)
            continue
        template = mean_template(vectors)
        if keep_photos:
            report.photo_embeddings[applicant_id] = np.stack(vectors).astype(np.float32)
        entries.append(RosterEntry(applicant_id, (names or {}).get(applicant_id, ""), template))
        report.enrolled.append(applicant_id)
    if duplicate_threshold is not None:
        report.duplicates = find_duplicates(entries, duplicate_threshold)
    return Roster(session=session, room=room, version=version, entries=tuple(entries)), report
