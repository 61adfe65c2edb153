"""The two protocols, as scores that remember who was compared with whom.

* **single image** — every detected image against every other (all pairs), the usual benchmark;
* **gate** (``enroll=K``) — what a door does: each person's template is the mean of their first K
  photos (the registration selfies), every other photo is a probe that must first pass the
  quality gate; probes the gate refuses are failures to acquire (FTA), reported, never dropped
  silently. Genuine = probe vs own template, impostor = probe vs every other template.

Each comparison keeps the index of its people, so the same scores give the population's
figures, each group's, the rates between groups and a by-person bootstrap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from device.infer.match import Gallery
from device.infer.metrics import verification_report
from device.tools.evaluation.samples import Sample


@dataclass
class ScoreSet:
    """Genuine and impostor scores of one protocol and score kind, with their people."""

    #: ``cosine`` or ``tnorm``: which of the bundle's calibrated thresholds applies.
    kind: str
    #: The people who have scores (gate: the enrolled ones); indices below point in here.
    people: list[str]
    genuine: np.ndarray
    #: Person of each genuine comparison.
    genuine_person: np.ndarray
    impostor: np.ndarray
    #: Persons of each impostor comparison: probe and template (gate) or the two images.
    impostor_first: np.ndarray
    impostor_second: np.ndarray

    def report(self) -> dict[str, Any]:
        """Pair counts, AUC, EER and TAR at each FAR with thresholds re-fitted on these scores."""
        return verification_report(self.genuine, self.impostor)


def single_image_scores(samples: list[Sample]) -> tuple[dict[str, Any], dict[str, ScoreSet]]:
    """All pairs of detected images (no quality gate): facts about the run, and cosine scores."""
    usable = [s for s in samples if s.embedding is not None]
    people = sorted({s.person for s in usable})
    index = {person: i for i, person in enumerate(people)}
    person_of = np.array([index[s.person] for s in usable], dtype=np.int32)
    embeddings = np.stack([s.embedding for s in usable]).astype(np.float32)
    first, second = np.triu_indices(len(usable), 1)
    scores = (embeddings @ embeddings.T)[first, second]
    first, second = person_of[first], person_of[second]
    same = first == second
    info = {"protocol": "single_image", "images_used": len(usable),
            "failures_to_detect": len(samples) - len(usable)}
    return info, {"cosine": ScoreSet("cosine", people, scores[same], first[same], scores[~same],
                                     first[~same], second[~same])}


def gate_scores(samples: list[Sample], enroll: int) -> tuple[dict[str, Any], dict[str, ScoreSet]]:
    """Templates from each person's first ``enroll`` detected photos; the rest are probes.

    Scores are plain cosine, and T-norm too when enough people are enrolled: the enrolled people
    are each other's cohort, as a session roster is at a real centre.
    """
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
    enrolled = set(ids)
    for p in probes:
        if p.person not in enrolled:
            continue
        if p.refusal is not None or p.embedding is None:
            reason = p.refusal or "no_face"
            fta[reason] = fta.get(reason, 0) + 1
        else:
            accepted_probes.append(p)
    total_probes = len(accepted_probes) + sum(fta.values())
    info: dict[str, Any] = {
        "protocol": "gate", "enroll": enroll, "people_enrolled": len(ids),
        "failures_to_enrol": len(fte), "probes": total_probes,
        "fta": sum(fta.values()) / total_probes if total_probes else 0.0,
        "fta_reasons": dict(sorted(fta.items())),
    }
    index = {person: i for i, person in enumerate(ids)}
    own = np.array([index[p.person] for p in accepted_probes], dtype=np.int32)
    probe_matrix = np.stack([p.embedding for p in accepted_probes])
    template_of = np.broadcast_to(np.arange(len(ids), dtype=np.int32), (len(own), len(ids)))
    probe_of = np.broadcast_to(own[:, None], (len(own), len(ids)))
    genuine_mask = template_of == probe_of
    score_sets = {}
    for cohort in (None, np.stack(templates)):
        gallery = Gallery(ids, np.stack(templates), cohort=cohort)
        if cohort is not None and gallery.score_kind == "cosine":
            continue  # too few people for cohort normalisation
        scores = np.stack([gallery.scores(p) for p in probe_matrix])
        score_sets[gallery.score_kind] = ScoreSet(
            gallery.score_kind, ids, scores[genuine_mask], own, scores[~genuine_mask],
            probe_of[~genuine_mask], template_of[~genuine_mask])
    return info, score_sets


def primary_kind(score_sets: dict[str, ScoreSet]) -> str:
    """The score kind a gate would use here: T-norm when there was a cohort for it."""
    return "tnorm" if "tnorm" in score_sets else "cosine"


def protocol_report(info: dict[str, Any], score_sets: dict[str, ScoreSet]) -> dict[str, Any]:
    """The protocol's facts and re-fitted figures: the primary kind's at the top level, every
    kind's under ``by_score`` (gate protocol only, as before)."""
    kind = primary_kind(score_sets)
    reports = {k: s.report() for k, s in score_sets.items()}
    if info["protocol"] == "single_image":
        return {**info, **reports[kind]}
    return {**info, "score": kind, **reports[kind], "by_score": reports}


def single_image_report(samples: list[Sample]) -> dict[str, Any]:
    """All pairs of detected images (no quality gate: the field's usual benchmark)."""
    return protocol_report(*single_image_scores(samples))


def gate_report(samples: list[Sample], enroll: int) -> dict[str, Any]:
    """Templates from each person's first ``enroll`` detected photos; the rest are probes."""
    return protocol_report(*gate_scores(samples, enroll))
