"""Accuracy of the device's own pipeline on ``<person>/<image>`` photos (``gerbang-device eval``).

* ``samples`` — reading the photos (one set, or several pooled as one population);
* ``scores`` — the two protocols, single image and gate (``--enroll K``), as scores that keep
  who was compared with whom;
* ``shipped`` — TAR and FAR at the thresholds the bundle ships with, with intervals and verdicts;
* ``groups`` — the same per group of people and between groups (``--groups FILE``);
* ``text`` — the report as readable lines.

The report always has the figures at thresholds re-fitted on the test set (what the set could
do) and, when the bundle is calibrated, at the shipped thresholds (what a gate does with it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from device.config import QualityConfig
from device.infer.pipeline import FacePipeline
from device.tools.evaluation.groups import Groups, groups_report, read_groups
from device.tools.evaluation.samples import Sample, list_people, pool_people, read_samples
from device.tools.evaluation.scores import (
    ScoreSet,
    gate_report,
    gate_scores,
    protocol_report,
    single_image_report,
    single_image_scores,
)
from device.tools.evaluation.shipped import all_counts, shipped_report, shipped_thresholds

__all__ = ["Groups", "Sample", "ScoreSet", "evaluate", "gate_report", "list_people",
           "pool_people", "read_groups", "read_samples", "report_from_samples",
           "single_image_report"]


def report_from_samples(samples: list[Sample], enroll: int | None = None,
                        calibration: dict[str, Any] | None = None,
                        groups: Groups | None = None) -> dict[str, Any]:
    """Everything ``eval`` reports about photos already read: the protocol's re-fitted figures,
    ``shipped`` (at the calibration's thresholds) and, with ``groups``, ``groups``."""
    info, score_sets = gate_scores(samples, enroll) if enroll else single_image_scores(samples)
    report = protocol_report(info, score_sets)
    thresholds = shipped_thresholds(calibration)
    counts = all_counts(score_sets, thresholds)
    report["shipped"] = shipped_report(info, score_sets, calibration, counts)
    if groups is not None:
        report["groups"] = groups_report(groups, score_sets, counts, thresholds)
    return report


def evaluate(pipeline: FacePipeline, root: Path | list[Path], quality: QualityConfig,
             enroll: int | None = None, limit_people: int | None = None,
             show_progress: bool = True, calibration: dict[str, Any] | None = None,
             groups: Groups | None = None) -> dict[str, Any]:
    """The full report for one folder or several pooled (the ``gerbang-device eval`` JSON).

    ``calibration`` is the bundle manifest's ``calibration`` (the shipped thresholds);
    ``limit_people`` applies to each pooled set.
    """
    roots = [Path(r) for r in root] if isinstance(root, list | tuple) else [Path(root)]
    people = pool_people(roots, limit_people)
    samples = read_samples(pipeline, people, quality, show_progress)
    report: dict[str, Any] = {"dataset": " + ".join(str(r) for r in roots),
                              "people": len(people), "images": len(samples)}
    if len(roots) > 1:
        report["pooled"] = {r.name: sum(1 for p in people if p.startswith(f"{r.name}/"))
                            for r in roots}
    report.update(report_from_samples(samples, enroll, calibration, groups))
    return report
