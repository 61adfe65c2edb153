"""Thresholds from the applicants' own photos (issue 17): ``gerbang-provision calibrate``.

A round's (or a centre's) registration photos are the best sample there is of the faces that
will come to the door: different applicant ids are (almost always) different people. From
each applicant's photo embeddings (``provisioning.enroll``, kept with ``roster
--embeddings-out`` or computed here from the photos):

- **templates** as enrollment makes them: the unit mean of the first ``template_photos``;
- **genuine** scores like the gate protocol: with more photos than that, each further photo
  against the template; with that many or fewer, leave-one-out (the template of the others
  against the held-out photo);
- **impostor** scores: every probe photo (the held-out ones, or every photo when all are in
  the template) against the template of every *other* applicant, leaving out the pairs the
  duplicate check flags (``provisioning.enroll.find_duplicates``: one person under two ids);
- both as **cosine** and **T-norm** scores, the cohort being the same population's templates
  (the probe's own left out, as for a stranger at the door);
- per target FAR the threshold (an order statistic of the impostor scores), its 95% upper
  confidence bound and the expected TAR (``provisioning.calibration_stats``).

The block is written into the rosters the technician signs (``device.decide.calibration``);
the gate then judges by it. Room guard: ``provisioning.calibration_check``.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from device.decide.calibration import Calibration, calibration_from_dict
from device.decide.roster import RosterEntry
from device.infer.metrics import far_key
from gerbang.files import write_atomic
from gerbang.progress import progress
from provisioning.calibration_stats import TopScores, fit_threshold, wilson
from provisioning.enroll import find_duplicates, mean_template

FARS = (1e-2, 1e-3, 1e-4)
KINDS = ("cosine", "tnorm")
#: Probes scored per matrix product (bounded memory: a 10,000-applicant round is done in
#: blocks of this many photos against every template).
BLOCK = 1024
EMBEDDINGS_FORMAT = "gerbang-photo-embeddings/1"


class CalibrationRefused(RuntimeError):
    """A calibration that must not be written as it is; the message says what to do."""


# --- the technician's working file of photo embeddings ---------------------------------------

def save_photo_embeddings(path: Path, embeddings: Mapping[str, np.ndarray],
                          embedder_sha256: str) -> Path:
    """Write applicant id → photo embeddings (rows) as one ``.npz``, mode 0600: biometric
    data for the technician's machine only (it never goes to a gate)."""
    import io

    ids = sorted(embeddings)
    buffer = io.BytesIO()
    np.savez(buffer, format=np.array(EMBEDDINGS_FORMAT), embedder=np.array(embedder_sha256),
             ids=np.array(ids), counts=np.array([len(embeddings[a]) for a in ids], np.int64),
             vectors=np.concatenate([np.asarray(embeddings[a], np.float32) for a in ids])
             if ids else np.zeros((0, 128), np.float32))
    write_atomic(Path(path), buffer.getvalue(), mode=0o600)
    return Path(path)


def load_photo_embeddings(path: Path) -> tuple[dict[str, np.ndarray], str]:
    """(applicant id → photo embeddings, embedder sha256) from ``save_photo_embeddings``."""
    try:
        with np.load(Path(path), allow_pickle=False) as data:
            if str(data["format"]) != EMBEDDINGS_FORMAT:
                raise CalibrationRefused(f"{path}: not a Gerbang photo-embeddings file")
            counts = data["counts"]
            rows = np.split(data["vectors"], np.cumsum(counts)[:-1]) if len(counts) else []
            return dict(zip([str(i) for i in data["ids"]], rows, strict=True)), str(
                data["embedder"])
    except (OSError, KeyError, ValueError) as exc:
        raise CalibrationRefused(f"{path}: cannot read photo embeddings: {exc}") from None


# --- scores ----------------------------------------------------------------------------------

@dataclass
class PairScores:
    """Genuine scores, the top of the impostor scores, and counts at given thresholds."""

    people: int
    impostor_pairs: int = 0
    genuine: dict[str, np.ndarray] = field(default_factory=dict)
    impostor_top: dict[str, np.ndarray] = field(default_factory=dict)
    #: kind → threshold → impostor scores ≥ it (only for the thresholds asked for).
    above: dict[str, dict[float, int]] = field(default_factory=dict)
    excluded_pairs: int = 0  # impostor pairs left out as flagged duplicates


def _exclusions(index: Mapping[str, int], exclude: Iterable[tuple[str, str]],
                ) -> dict[int, set[int]]:
    """Row → the template columns it must not be scored against (both directions)."""
    others: dict[int, set[int]] = {}
    for a, b in exclude:
        if a in index and b in index and a != b:
            others.setdefault(index[a], set()).add(index[b])
            others.setdefault(index[b], set()).add(index[a])
    return others


def _valid(rows: np.ndarray, columns: int, others: Mapping[int, set[int]]) -> np.ndarray:
    """Mask of the (row owner, template) pairs to score: not one's own, not excluded. Built
    per block, so memory stays bounded by the block, not by applicants²."""
    valid = np.ones((len(rows), columns), dtype=bool)
    valid[np.arange(len(rows)), rows] = False
    for r, owner in enumerate(rows):
        for column in others.get(int(owner), ()):
            valid[r, column] = False
    return valid


def _split(photos: np.ndarray, k: int) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]],
                                               np.ndarray]:
    """(template, genuine (template, probe) pairs, impostor probes) of one applicant."""
    photos = np.asarray(photos, dtype=np.float32)
    template = mean_template(photos[:k])
    if len(photos) > k:
        return template, [(template, p) for p in photos[k:]], photos[k:]
    if len(photos) == 1:
        return template, [], photos
    pairs = [(mean_template(np.delete(photos, i, axis=0)), photos[i]) for i in range(len(photos))]
    return template, pairs, photos


def _tnorm_stats(cohort_scores: np.ndarray, own: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row mean and spread of cohort scores, each row's own template (column ``own``)
    left out: what a gate's T-norm (``device.infer.match.Gallery.normalise``) computes for a
    stranger, whose template is not in its session's cohort."""
    n = cohort_scores.shape[1] - 1
    own_score = cohort_scores[np.arange(len(own)), own].astype(np.float64)
    total = cohort_scores.sum(axis=1, dtype=np.float64) - own_score
    squares = (cohort_scores.astype(np.float64) ** 2).sum(axis=1) - own_score ** 2
    mean = total / n
    spread = np.sqrt(np.maximum(squares / n - mean ** 2, 0.0))
    return mean, np.maximum(spread, 1e-6)


def pair_scores(people: Mapping[str, np.ndarray], template_photos: int = 3,
                exclude: Iterable[tuple[str, str]] = (), keep_far: float = max(FARS),
                count_at: Mapping[str, Iterable[float]] | None = None,
                show_progress: bool = True) -> PairScores:
    """Score every applicant's probe photos against every template (see the module doc)."""
    ids = sorted(people)
    if len(ids) < 2:
        raise CalibrationRefused(f"{len(ids)} applicant(s) with usable photos: a calibration "
                                 "needs impostor pairs, so at least two (and thousands of "
                                 "pairs per FAR)")
    index = {a: i for i, a in enumerate(ids)}
    split = [_split(people[a], template_photos) for a in ids]
    templates = np.stack([s[0] for s in split])
    probes = np.concatenate([s[2] for s in split])
    owner = np.concatenate([np.full(len(s[2]), i) for i, s in enumerate(split)])
    others = _exclusions(index, exclude)
    allowed = np.array([len(ids) - 1 - len(others.get(i, ())) for i in range(len(ids))])
    total = int(allowed[owner].sum())
    result = PairScores(len(ids), total,
                        excluded_pairs=sum(len(v) for v in others.values()) // 2)
    keep = math.floor(keep_far * total + 1e-9) + 2
    tops = {k: TopScores(keep) for k in KINDS}
    thresholds = {k: sorted(set((count_at or {}).get(k, ()))) for k in KINDS}
    result.above = {k: dict.fromkeys(thresholds[k], 0) for k in KINDS}
    starts = range(0, len(probes), BLOCK)
    blocks = progress(starts, label="scoring pairs") if show_progress else starts
    for start in blocks:
        x, who = probes[start:start + BLOCK], owner[start:start + BLOCK]
        cosine = x @ templates.T
        mean, spread = _tnorm_stats(cosine, who)
        valid = _valid(who, len(ids), others)
        for kind, scores in (("cosine", cosine),
                             ("tnorm", (cosine - mean[:, None]) / spread[:, None])):
            impostor = scores[valid]
            tops[kind].add(impostor)
            for t in thresholds[kind]:
                result.above[kind][t] += int(np.count_nonzero(impostor >= t))
    for kind in KINDS:
        result.impostor_top[kind] = tops[kind].sorted()
    pairs = [(i, t, p) for i, (_, found, _) in enumerate(split) for t, p in found]
    genuine: dict[str, list[np.ndarray]] = {k: [] for k in KINDS}
    for start in range(0, len(pairs), BLOCK):
        chunk = pairs[start:start + BLOCK]
        who = np.array([i for i, _, _ in chunk])
        x = np.stack([p for _, _, p in chunk])
        own = np.einsum("ij,ij->i", np.stack([t for _, t, _ in chunk]), x)
        mean, spread = _tnorm_stats(x @ templates.T, who)  # own template left out, as above
        genuine["cosine"].append(own)
        genuine["tnorm"].append((own - mean) / spread)
    result.genuine = {k: np.concatenate(v).astype(np.float64) if v else np.zeros(0)
                      for k, v in genuine.items()}
    return result


def template_pair_reference(people: Mapping[str, np.ndarray], template_photos: int = 3,
                            exclude: Iterable[tuple[str, str]] = (), far: float = 1e-3,
                            ) -> dict[str, Any] | None:
    """What the room guard compares a room with: the threshold at ``far`` of this population's
    **template-against-template** scores (each pair of applicants once; T-norm with every
    template as the cohort, as a gate with the session cohort computes it). A room holds only
    templates, whose pair scores run higher than a live photo's against a template, so the room
    is checked against this and not against the gate's thresholds. None when the population
    has too few pairs for ``far``."""
    ids = sorted(people)
    templates = np.stack([mean_template(np.asarray(people[a])[:template_photos]) for a in ids])
    index = {a: i for i, a in enumerate(ids)}
    others = _exclusions(index, exclude)
    n = len(ids)
    total = n * (n - 1) // 2 - sum(len(v) for v in others.values()) // 2
    tops = {k: TopScores(math.floor(far * total + 1e-9) + 2) for k in KINDS}
    for start in range(0, len(ids), BLOCK):
        cosine = templates[start:start + BLOCK] @ templates.T
        mean = cosine.mean(axis=1, keepdims=True)
        spread = np.maximum(cosine.std(axis=1, keepdims=True), 1e-6)
        rows = np.arange(start, min(start + BLOCK, n))
        valid = _valid(rows, n, others) & (np.arange(n)[None, :] > rows[:, None])
        tops["cosine"].add(cosine[valid])
        tops["tnorm"].add(((cosine - mean) / spread)[valid])
    fits = {k: fit_threshold(tops[k].sorted(), total, far) for k in KINDS}
    if any(f is None for f in fits.values()):
        return None
    return {"far": far, "pairs": total,
            **{k: f.threshold for k, f in fits.items() if f is not None}}


# --- the calibration block -------------------------------------------------------------------

def duplicate_pairs(people: Mapping[str, np.ndarray], threshold: float,
                    template_photos: int = 3) -> list[tuple[str, str, float]]:
    """The pairs the roster's duplicate check flags (templates above ``threshold``)."""
    entries = [RosterEntry(a, "", mean_template(np.asarray(people[a])[:template_photos]))
               for a in sorted(people)]
    return find_duplicates(entries, threshold)


def build_calibration(scores: PairScores, source: str, embedder_sha256: str,
                      fars: Iterable[float] = FARS) -> tuple[Calibration, dict[str, Any]]:
    """The roster calibration block, and a report with the counts behind each number."""
    tables: dict[str, dict[str, dict[str, float]]] = {
        "thresholds": {}, "threshold_upper_ci": {}, "expected_tar": {}}
    report: dict[str, Any] = {"people": scores.people, "impostor_pairs": scores.impostor_pairs,
                              "excluded_duplicate_pairs": scores.excluded_pairs,
                              "genuine_pairs": int(scores.genuine["cosine"].size),
                              "thresholds": {}}
    for kind in KINDS:
        genuine = scores.genuine[kind]
        for far in fars:
            fit = fit_threshold(scores.impostor_top[kind], scores.impostor_pairs, far)
            key = far_key(far)
            if fit is None:
                report["thresholds"].setdefault(kind, {})[key] = {
                    "supported": False, "reason": f"{scores.impostor_pairs} impostor pairs; "
                    f"{math.ceil(5 / far)} needed for FAR {far:g}"}
                continue
            accepted = int(np.count_nonzero(genuine >= fit.threshold))
            tar = accepted / genuine.size if genuine.size else 0.0
            tables["thresholds"].setdefault(kind, {})[key] = fit.threshold
            tables["threshold_upper_ci"].setdefault(kind, {})[key] = fit.upper_ci
            tables["expected_tar"].setdefault(kind, {})[key] = round(tar, 4)
            report["thresholds"].setdefault(kind, {})[key] = {
                "supported": True, "threshold": fit.threshold, "upper_ci_95": fit.upper_ci,
                "impostors_above": fit.impostors_above, "expected_tar": round(tar, 4),
                "tar_ci_95": [round(v, 4) for v in wilson(accepted, int(genuine.size))]}
    if not tables["thresholds"]:
        raise CalibrationRefused(f"{scores.impostor_pairs} impostor pairs are too few for any "
                                 f"FAR ({math.ceil(5 / max(fars))} needed for FAR "
                                 f"{max(fars):g}): calibrate on more applicants (a whole "
                                 "round or centre)")
    created = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    block = {"source": source, "created": created, "embedder_sha256": embedder_sha256,
             "people": scores.people, "impostor_pairs": scores.impostor_pairs,
             "genuine_pairs": int(scores.genuine["cosine"].size), **tables}
    return calibration_from_dict(block, embedder_sha256), report


def looser_than(calibration: Calibration, shipped: Mapping[str, Mapping[str, float]],
                ) -> list[str]:
    """Every threshold of ``calibration`` below the model bundle's (``shipped``: the manifest's
    ``calibration.thresholds``), as one readable phrase each."""
    looser = []
    for kind, per_far in calibration.thresholds.items():
        for key, value in per_far.items():
            theirs = shipped.get(kind, {}).get(key)
            if theirs is not None and value < theirs:
                looser.append(f"{kind} at FAR {key}: {value:.4f} < shipped {theirs:.4f}")
    return looser


def refuse_looser(calibration: Calibration, shipped: Mapping[str, Mapping[str, float]],
                  allow_looser: bool) -> list[str]:
    """CalibrationRefused if any threshold is looser than the shipped one, unless allowed."""
    looser = looser_than(calibration, shipped)
    if looser and not allow_looser:
        raise CalibrationRefused(
            "the calibrated thresholds are looser than the model bundle's (" + "; ".join(looser)
            + "): this population's strangers score lower than the bundle's calibration set, "
            "or the sample is small. Nothing written; pass --allow-looser to write them anyway")
    return looser


def save_calibration(calibration: Calibration, report: dict[str, Any], path: Path,
                     room_check: dict[str, Any] | None = None) -> Path:
    """The calibration file that ``roster --calibration`` / ``roster-sign --calibration``
    embed: {"calibration": block, "room_check": reference for the room guard
    (``template_pair_reference``), "report": counts}. No face data in it."""
    import json

    write_atomic(Path(path), json.dumps({"calibration": calibration.to_dict(),
                                         "room_check": room_check, "report": report},
                                        indent=1).encode(), mode=0o644)
    return Path(path)


def load_calibration(path: Path) -> tuple[Calibration, dict[str, Any] | None]:
    """Read a calibration file (``save_calibration``): (block, room-check reference or None);
    CalibrationRefused naming the problem."""
    import json

    try:
        data = json.loads(Path(path).read_text())
        return calibration_from_dict(data["calibration"]), data.get("room_check")
    except FileNotFoundError:
        raise CalibrationRefused(f"calibration file {path} does not exist (make it with "
                                 "`gerbang-provision calibrate`)") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise CalibrationRefused(f"calibration file {path}: {exc}") from None
