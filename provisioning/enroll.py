"""Enrollment: registration photos → one template per applicant, with the device's own models.

Using the same model bundle as the gates matters: a template made by another model or another
alignment would not be comparable with what the door computes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from device.capture.replay import IMAGE_SUFFIXES, read_image
from device.infer.pipeline import FacePipeline
from device.roster import Roster, RosterEntry
from gerbang.progress import progress


@dataclass
class EnrollmentReport:
    """What happened to each applicant's photos."""

    enrolled: list[str] = field(default_factory=list)
    #: (applicant id, photo, reason) for every photo that could not be used.
    rejected_photos: list[tuple[str, str, str]] = field(default_factory=list)
    #: Applicants with no usable photo at all (not in the roster: they need new photos).
    failed: list[str] = field(default_factory=list)


def face_folders(root: Path, min_images: int = 1) -> dict[str, list[Path]]:
    """``<person>/<image>`` folders under ``root`` → person id → sorted image paths."""
    people: dict[str, list[Path]] = {}
    for person in sorted(p for p in Path(root).iterdir() if p.is_dir()):
        images = sorted(p for p in person.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if len(images) >= min_images:
            people[person.name] = images
    return people


def template_from_photos(pipeline: FacePipeline, photos: Sequence[Path],
                         ) -> tuple[np.ndarray | None, list[tuple[str, str]]]:
    """Mean unit embedding of the usable photos, and (photo, reason) for the unusable ones."""
    vectors, problems = [], []
    for photo in photos:
        image = read_image(photo)
        if image is None:
            problems.append((str(photo), "unreadable image"))
            continue
        reading = pipeline.read(image)
        if reading.embedding is None:
            problems.append((str(photo), "no face found"))
            continue
        if len(reading.faces) > 1:
            problems.append((str(photo), f"{len(reading.faces)} faces in the photo"))
            continue
        vectors.append(reading.embedding)
    if not vectors:
        return None, problems
    mean = np.mean(vectors, axis=0)
    return (mean / np.linalg.norm(mean)).astype(np.float32), problems


def build_roster(pipeline: FacePipeline, applicants: Mapping[str, Sequence[Path]],
                 session: str, room: str, version: int = 1,
                 names: Mapping[str, str] | None = None, show_progress: bool = True,
                 ) -> tuple[Roster, EnrollmentReport]:
    """Enroll every applicant from their photos into a room roster."""
    report = EnrollmentReport()
    entries = []
    items = list(applicants.items())
    iterator = progress(items, label=f"enrolling {room}") if show_progress else items
    for applicant_id, photos in iterator:
        template, problems = template_from_photos(pipeline, photos)
        report.rejected_photos += [(applicant_id, p, why) for p, why in problems]
        if template is None:
            report.failed.append(applicant_id)
            continue
        entries.append(RosterEntry(applicant_id, (names or {}).get(applicant_id, ""), template))
        report.enrolled.append(applicant_id)
    return Roster(session=session, room=room, version=version, entries=tuple(entries)), report
