"""Accuracy at the thresholds the gate ships with, not at thresholds re-fitted on the test set.

A re-fitted threshold always gives the target FAR on the set it was fitted on; what a gate does
is apply the bundle's calibrated threshold (manifest ``calibration``, fitted on another set) to
whoever walks up. So this measures TAR and FAR at those thresholds, with 95% intervals:

* ``ci_exact`` — Clopper-Pearson on k of n pairs (never under-covers near 0; assumes the pairs are
  independent, which they are not: every person is in many pairs);
* ``ci_by_person`` — percentile interval of a bootstrap that resamples people (1,000 resamples,
  fixed seed), which carries that dependence; zero width when no pair was accepted;
* ``ci`` — the union of the two, used for the verdicts: ``exceeds_target`` when even its lower
  bound is above the target FAR, ``within_2x`` when the measured FAR is at most twice the target
  (the bar of issue 17), ``upper_within_2x`` when the whole interval is.

A comparison is accepted when ``score >= threshold``, as the gate decides.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from device.infer.match import MIN_COHORT
from device.infer.metrics import (
    MIN_IMPOSTORS_PER_FAR,
    accepted,
    by_person_bootstrap,
    clopper_pearson,
    pair_counts,
)
from device.tools.evaluation.scores import ScoreSet

CONFIDENCE = 0.95
INTERVAL = ("95%: union of the exact Clopper-Pearson interval (assumes independent pairs) and a "
            "by-person bootstrap (1,000 resamples of people, which carries the pairs' dependence)")


@dataclass
class Counts:
    """Accepted and compared counts at one threshold: per person (genuine comparisons) and per
    pair of people (impostor comparisons, symmetric, so [a, b] counts both directions)."""

    genuine_hits: np.ndarray
    genuine_trials: np.ndarray
    impostor_hits: np.ndarray
    impostor_trials: np.ndarray


def counts_at(scores: ScoreSet, threshold: float) -> Counts:
    """Count what a gate with ``threshold`` accepts, per person and per pair of people."""
    people = len(scores.people)
    genuine_hits = np.bincount(scores.genuine_person, minlength=people,
                               weights=accepted(scores.genuine, threshold).astype(np.float64))
    genuine_trials = np.bincount(scores.genuine_person, minlength=people).astype(np.float64)
    impostor_hits, impostor_trials = pair_counts(
        scores.impostor_first, scores.impostor_second, accepted(scores.impostor, threshold),
        people)
    return Counts(genuine_hits, genuine_trials, impostor_hits, impostor_trials)


def rate_entry(hits: int, trials: int, by_person: tuple[float, float] | None) -> dict[str, Any]:
    """A measured rate with its exact and by-person intervals and their union."""
    if trials == 0:
        return {"rate": None, "hits": 0, "trials": 0, "ci_exact": None, "ci_by_person": None,
                "ci": None}
    exact = clopper_pearson(hits, trials, CONFIDENCE)
    ci = exact if by_person is None else (min(exact[0], by_person[0]),
                                          max(exact[1], by_person[1]))
    return {"rate": hits / trials, "hits": hits, "trials": trials, "ci_exact": list(exact),
            "ci_by_person": None if by_person is None else list(by_person), "ci": list(ci)}


def whole(count: float) -> int:
    """A count summed in float64 (bincount weights) back to an int."""
    return int(np.rint(count))


def tar_entry(counts: Counts, rows: np.ndarray) -> dict[str, Any]:
    """TAR at the threshold of ``counts`` for the people ``rows``."""
    hits = whole(counts.genuine_hits[rows].sum())
    trials = whole(counts.genuine_trials[rows].sum())
    boot = by_person_bootstrap(counts.genuine_hits, counts.genuine_trials, rows,
                               confidence=CONFIDENCE)
    return {**rate_entry(hits, trials, boot), "people": len(rows)}


def far_entry(counts: Counts, target: float, rows: np.ndarray,
              cols: np.ndarray | None = None) -> dict[str, Any]:
    """FAR against ``target`` for impostor pairs among ``rows`` (or between ``rows`` and
    ``cols``, two disjoint groups), with the verdicts."""
    if cols is None:
        block = np.ix_(rows, rows)
        hits = whole(counts.impostor_hits[block].sum() / 2)  # [a, b] and [b, a]
        trials = whole(counts.impostor_trials[block].sum() / 2)
        people: int | list[int] = len(rows)
    else:
        block = np.ix_(rows, cols)
        hits = whole(counts.impostor_hits[block].sum())
        trials = whole(counts.impostor_trials[block].sum())
        people = [len(rows), len(cols)]
    boot = by_person_bootstrap(counts.impostor_hits, counts.impostor_trials, rows, cols,
                               confidence=CONFIDENCE) if trials else None
    entry = {**rate_entry(hits, trials, boot), "people": people, "target": target}
    if entry["rate"] is None:
        return {**entry, "exceeds_target": None, "exceeds_target_exact": None,
                "within_2x": None, "upper_within_2x": None, "resolvable": False}
    return {**entry, "exceeds_target": entry["ci"][0] > target,
            # What the verdict would be if the pairs were independent (exact interval only).
            "exceeds_target_exact": entry["ci_exact"][0] > target,
            "within_2x": entry["rate"] <= 2 * target,
            "upper_within_2x": entry["ci"][1] <= 2 * target,
            # Fewer pairs than that and a FAR of ``target`` is a handful of pairs or none:
            # the interval, not the rate, is the measurement.
            "resolvable": trials * target >= MIN_IMPOSTORS_PER_FAR}


def shipped_thresholds(calibration: dict[str, Any] | None) -> dict[str, dict[str, float]]:
    """``{kind: {far_key: threshold}}`` from a manifest ``calibration`` (empty when none)."""
    if not calibration:
        return {}
    return {kind: {far: float(t) for far, t in by_far.items()}
            for kind, by_far in calibration.get("thresholds", {}).items()}


def calibration_enroll(calibration: dict[str, Any]) -> int | None:
    """How many photos the calibration's templates were made of (from its protocol text)."""
    found = re.search(r"templates from (\d+) photos", calibration.get("protocol", ""))
    return int(found.group(1)) if found else None


def all_counts(score_sets: dict[str, ScoreSet],
               thresholds: dict[str, dict[str, float]]) -> dict[str, dict[str, Counts]]:
    """Counts at every shipped threshold whose score kind these scores have."""
    return {kind: {far: counts_at(score_sets[kind], t) for far, t in by_far.items()}
            for kind, by_far in thresholds.items() if kind in score_sets}


def shipped_report(info: dict[str, Any], score_sets: dict[str, ScoreSet],
                   calibration: dict[str, Any] | None,
                   counts: dict[str, dict[str, Counts]]) -> dict[str, Any]:
    """TAR and FAR at the bundle's thresholds, per score kind and target FAR."""
    thresholds = shipped_thresholds(calibration)
    if not thresholds:
        return {"available": False,
                "reason": "the model bundle has no calibration (manifest.json `calibration`)"}
    enroll = calibration_enroll(calibration)
    same_protocol = info["protocol"] == "gate" and info["enroll"] == enroll
    report: dict[str, Any] = {
        "available": True,
        "calibration": {"dataset": calibration.get("dataset"), "date": calibration.get("date"),
                        "protocol": calibration.get("protocol"), "enroll": enroll},
        "same_protocol": same_protocol, "interval": INTERVAL,
        "accepts": "score >= threshold, as the gate decides", "by_score": {},
        "not_applicable": {},
    }
    if not same_protocol:
        report["note"] = (f"the thresholds were fitted on the gate protocol with {enroll}-photo "
                          f"templates; here they are applied to {describe(info)}")
    for kind, by_far in thresholds.items():
        if kind not in score_sets:
            report["not_applicable"][kind] = not_applicable(kind, info)
            continue
        rows = np.arange(len(score_sets[kind].people))
        report["by_score"][kind] = {
            far: {"threshold": t, "tar": tar_entry(counts[kind][far], rows),
                  "far": far_entry(counts[kind][far], float(far), rows)}
            for far, t in by_far.items()}
    entries = [e["far"] for by_far in report["by_score"].values() for e in by_far.values()]
    report["exceeds_target"] = any(e["exceeds_target"] for e in entries)
    report["within_2x"] = all(e["within_2x"] for e in entries if e["within_2x"] is not None)
    return report


def describe(info: dict[str, Any]) -> str:
    """The protocol of a report in a few words."""
    if info["protocol"] == "gate":
        return f"the gate protocol with {info['enroll']}-photo templates"
    return "single images (one photo against one, no quality gate)"


def not_applicable(kind: str, info: dict[str, Any]) -> str:
    """Why a calibrated score kind has no scores in this evaluation."""
    if kind == "tnorm" and info["protocol"] == "gate":
        return (f"{info['people_enrolled']} people enrolled, fewer than the {MIN_COHORT} a cohort "
                "needs: a gate with this roster scores plain cosine")
    if kind == "tnorm":
        return "single-image scores are plain cosine (T-norm needs a roster's cohort)"
    return f"no {kind} scores in this protocol"
