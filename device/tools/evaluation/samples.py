"""The photos an evaluation reads: ``<person>/<image>`` folders, one or several pooled, each
photo run once through the device pipeline and the quality gate."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from device.capture.replay import IMAGE_SUFFIXES, read_image
from device.config import QualityConfig
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


def pool_people(roots: list[Path], limit_people: int | None = None) -> dict[str, list[Path]]:
    """Several ``<person>/<image>`` sets as one population.

    One folder: its people as they are named. Several: person ids become ``<set>/<person>``
    (``celeba/7201``, ``orl/s1``) so two sets' ``s1`` never merge into one person;
    ``limit_people`` applies to each set. Sets must have different folder names.
    """
    roots = [Path(r) for r in roots]
    if len(roots) == 1:
        return list_people(roots[0], limit_people)
    names = [r.name for r in roots]
    if len(set(names)) != len(names):
        raise ValueError(f"pooled sets need different folder names, got {names}")
    return {f"{root.name}/{person}": images for root in roots
            for person, images in list_people(root, limit_people).items()}


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
