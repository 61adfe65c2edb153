"""Accuracy of the device's own pipeline on a folder of ``<person>/<image>`` photos.

Two protocols:

* **single image** — every detected image against every other (all pairs), the usual benchmark;
* **gate** (``enroll=K``) — what a door does: each person's template is the mean of their first K
  photos (the registration selfies), every other photo is a probe that must first pass the
  quality gate; probes the gate refuses are failures to acquire (FTA), reported, never dropped
  silently. Genuine = probe vs own template, impostor = probe vs every other template.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from device.capture.replay import IMAGE_SUFFIXES, read_image
from device.config import QualityConfig
from device.infer.match import Gallery
from device.infer.metrics import all_pairs_scores, verification_report
from device.infer.pipeline import FacePipeline
from device.infer.quality import assess
from gerbang.progress import progress


@dataclass
class Sample:
    """One photo as the pipeline saw it."""

    person: str
    path: Path
    #: As the door computes it (the pipeline's own flip setting).
    embedding: np.ndarray | None
    #: As enrollment computes it (always flip-averaged: templates are made once, offline).
    enrol_embedding: np.ndarray | None
    #: Quality-gate reason code when the photo would be refused at a gate (``no_face`` included).
    refusal: str | None


def list_people(root: Path, limit_people: int | None = None) -> dict[str, list[Path]]:
    """``root/<person>/<image>`` → person → sorted images (people with at least one image)."""
    people = {}
    for person in sorted(p for p in Path(root).iterdir() if p.is_dir()):
        images = sorted(p for p in person.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if images:
            people[person.name] = images
        if limit_people and len(people) >= limit_people:
            break
    return people


def read_samples(pipeline: FacePipeline, people: dict[str, list[Path]],
                 quality: QualityConfig, show_progress: bool = True) -> list[Sample]:
    """Run the pipeline and the quality gate once on every photo."""
    items: Iterable[tuple[str, Path]] = [(p, img) for p, imgs in people.items() for img in imgs]
    if show_progress:
        items = progress(list(items), label="reading faces")
    samples = []
    for person, path in items:
        image = read_image(path)
        if image is None:
            samples.append(Sample(person, path, None, None, "unreadable"))
            continue
        reading = pipeline.read(image)
        _, refusal = assess(reading, image.shape, quality)
        enrol = None if reading.crop is None else pipeline.embed_crop(reading.crop, flip=True)
        samples.append(Sample(person, path, reading.embedding, enrol, refusal))
    return samples


def single_image_report(samples: list[Sample]) -> dict[str, Any]:
    """All pairs of detected images (no quality gate: the field's usual benchmark)."""
    usable = [s for s in samples if s.embedding is not None]
    genuine, impostor = all_pairs_scores(np.stack([s.embedding for s in usable]),
                                         [s.person for s in usable])
    return {"protocol": "single_image", "images_used": len(usable),
            "failures_to_detect": len(samples) - len(usable),
            **verification_report(genuine, impostor)}


def gate_report(samples: list[Sample], enroll: int) -> dict[str, Any]:
    """Templates from each person's first ``enroll`` detected photos; the rest are probes."""
    by_person: dict[str, list[Sample]] = {}
    for s in samples:
        by_person.setdefault(s.person, []).append(s)
    ids, templates, probes = [], [], []
    fte = []
    for person, person_samples in by_person.items():
        if len(person_samples) <= enroll:
            continue  # nobody left to probe with
        enrol, rest = person_samples[:enroll], person_samples[enroll:]
        vectors = [s.enrol_embedding for s in enrol if s.enrol_embedding is not None]
        if not vectors:
            fte.append(person)
            continue
        mean = np.mean(vectors, axis=0)
        ids.append(person)
        templates.append(mean / np.linalg.norm(mean))
        probes += rest
    fta: dict[str, int] = {}
    accepted_probes = []
    for p in probes:
        if p.person not in ids:
            continue
        if p.refusal is not None or p.embedding is None:
            reason = p.refusal or "no_face"
            fta[reason] = fta.get(reason, 0) + 1
        else:
            accepted_probes.append(p)
    total_probes = len(accepted_probes) + sum(fta.values())
    report: dict[str, Any] = {
        "protocol": "gate", "enroll": enroll, "people_enrolled": len(ids),
        "failures_to_enrol": len(fte), "probes": total_probes,
        "fta": sum(fta.values()) / total_probes if total_probes else 0.0,
        "fta_reasons": dict(sorted(fta.items())),
    }
    own = np.array([ids.index(p.person) for p in accepted_probes])
    probe_matrix = np.stack([p.embedding for p in accepted_probes])
    by_score = {}
    # The enrolled people are each other's cohort, as a session roster is at a real centre.
    for cohort in (None, np.stack(templates)):
        gallery = Gallery(ids, np.stack(templates), cohort=cohort)
        if cohort is not None and gallery.score_kind == "cosine":
            continue  # too few people for cohort normalisation
        scores = np.stack([gallery.scores(p) for p in probe_matrix])
        mask = np.zeros_like(scores, dtype=bool)
        mask[np.arange(len(own)), own] = True
        by_score[gallery.score_kind] = verification_report(scores[mask], scores[~mask])
    kind = "tnorm" if "tnorm" in by_score else "cosine"
    report.update({"score": kind, **by_score[kind], "by_score": by_score})
    return report


def evaluate(pipeline: FacePipeline, root: Path, quality: QualityConfig,
             enroll: int | None = None, limit_people: int | None = None,
             show_progress: bool = True) -> dict[str, Any]:
    """The full report for one folder (the ``gerbang-device eval`` JSON)."""
    people = list_people(root, limit_people)
    samples = read_samples(pipeline, people, quality, show_progress)
    report: dict[str, Any] = {"dataset": str(root), "people": len(people),
                              "images": len(samples)}
    report.update(gate_report(samples, enroll) if enroll else single_image_report(samples))
    return report
