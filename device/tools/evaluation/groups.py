"""Accuracy per group of people and between groups (``gerbang-device eval --groups FILE``).

A groups file gives each person one label per attribute — whatever a centre chooses to record
(region, sex, age band, hijab yes/no, source set); this code gives the labels no meaning:

* CSV with a header row: the first column is the person id, every other column an attribute
  (``person,region,sex``); an empty cell is no label;
* TOML: a ``[people]`` table, ``"7201" = "groupA"`` (one attribute, ``group``) or
  ``"7201" = {region = "Jawa", sex = "F"}``.

Person ids are as the evaluation names them: the folder names, ``<set>/<person>`` when several
sets are pooled. People with no label (absent from the file, or an empty cell) are in the group
``unlabelled``, counted and reported like any other group.

Per group: AUC, EER and TAR at each FAR with thresholds re-fitted on the group's own pairs
(impostors = pairs of two people of the group), and TAR and FAR at the shipped thresholds.
Between groups: the FAR at each shipped threshold for pairs with one person in group A and
the other in group B, as a matrix (the diagonal is the within-group FAR). Scores are the
population's: T-norm statistics come from the whole roster, as they would at a real centre.
"""

from __future__ import annotations

import csv
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from device.infer.metrics import verification_report
from device.tools.evaluation.scores import ScoreSet
from device.tools.evaluation.shipped import Counts, far_entry, tar_entry

UNLABELLED = "unlabelled"


@dataclass
class Groups:
    """Labels per person and attribute, as read from a groups file."""

    source: str
    attributes: list[str]
    #: person → attribute → label (a person missing an attribute has no entry for it).
    labels: dict[str, dict[str, str]]

    def label(self, person: str, attribute: str) -> str:
        """The person's label for ``attribute``, ``unlabelled`` when there is none."""
        return self.labels.get(person, {}).get(attribute) or UNLABELLED


def read_groups(path: Path) -> Groups:
    """Read a CSV or TOML groups file (format in the module docstring); ValueError if malformed."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        return _read_csv(path)
    if path.suffix.lower() == ".toml":
        return _read_toml(path)
    raise ValueError(f"{path}: a groups file is .csv or .toml")


def _read_csv(path: Path) -> Groups:
    with path.open(newline="", encoding="utf-8-sig") as f:
        rows = [row for row in csv.reader(f) if any(cell.strip() for cell in row)]
    if len(rows) < 2 or len(rows[0]) < 2:
        raise ValueError(f"{path}: needs a header (person,<attribute>...) and at least one row")
    attributes = [a.strip() for a in rows[0][1:]]
    if any(not a for a in attributes) or len(set(attributes)) != len(attributes):
        raise ValueError(f"{path}: attribute names must be non-empty and distinct: {attributes}")
    labels: dict[str, dict[str, str]] = {}
    for line, row in enumerate(rows[1:], start=2):
        person = row[0].strip()
        if person in labels:
            raise ValueError(f"{path}:{line}: person {person!r} appears twice")
        cells = [c.strip() for c in row[1:]]
        labels[person] = {a: c for a, c in zip(attributes, cells, strict=False) if c}
    return Groups(str(path), attributes, labels)


def _read_toml(path: Path) -> Groups:
    document = tomllib.loads(path.read_text(encoding="utf-8"))
    people = document.get("people")
    if not isinstance(people, dict) or not people:
        raise ValueError(f"{path}: needs a [people] table of person = label")
    labels: dict[str, dict[str, str]] = {}
    attributes: list[str] = []
    for person, value in people.items():
        entry = {"group": value} if isinstance(value, str) else value
        if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
            raise ValueError(f"{path}: {person!r} must be a label or a table of labels")
        labels[person] = {a: v.strip() for a, v in entry.items() if v.strip()}
        attributes += [a for a in entry if a not in attributes]
    return Groups(str(path), attributes, labels)


def group_rows(groups: Groups, attribute: str, people: list[str]) -> dict[str, np.ndarray]:
    """Label → indices into ``people``, labels sorted, ``unlabelled`` last."""
    by_label: dict[str, list[int]] = {}
    for i, person in enumerate(people):
        by_label.setdefault(groups.label(person, attribute), []).append(i)
    order = sorted(by_label, key=lambda label: (label == UNLABELLED, label))
    return {label: np.array(by_label[label], dtype=np.int64) for label in order}


def refit_report(scores: ScoreSet, rows: np.ndarray) -> dict[str, Any]:
    """AUC, EER and TAR at each FAR re-fitted on the pairs within one group of people."""
    member = np.zeros(len(scores.people), dtype=bool)
    member[rows] = True
    return verification_report(
        scores.genuine[member[scores.genuine_person]],
        scores.impostor[member[scores.impostor_first] & member[scores.impostor_second]])


def attribute_report(scores: ScoreSet, counts: dict[str, Counts],
                     thresholds: dict[str, float], rows_by_label: dict[str, np.ndarray]
                     ) -> dict[str, Any]:
    """Per group and between groups, for one attribute and one score kind."""
    per_group = {}
    for label, rows in rows_by_label.items():
        per_group[label] = {
            "people": len(rows), **refit_report(scores, rows),
            "shipped": {far: {"threshold": thresholds[far], "tar": tar_entry(counts[far], rows),
                              "far": far_entry(counts[far], float(far), rows)}
                        for far in counts}}
    labels = list(rows_by_label)
    between = {}
    for far in counts:
        cells = [[far_entry(counts[far], float(far), rows_by_label[a])
                  if a == b else far_entry(counts[far], float(far), rows_by_label[a],
                                           rows_by_label[b]) for b in labels] for a in labels]
        between[far] = {"labels": labels, "threshold": thresholds[far],
                        "far": [[c["rate"] for c in row] for row in cells],
                        "impostor_pairs": [[c["trials"] for c in row] for row in cells],
                        "cells": [{"groups": [a, b], **cells[i][j]}
                                  for i, a in enumerate(labels) for j, b in enumerate(labels)
                                  if j >= i]}
    return {"groups": per_group, "between": between}


def groups_report(groups: Groups, score_sets: dict[str, ScoreSet],
                  counts: dict[str, dict[str, Counts]],
                  thresholds: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The ``groups`` part of the eval report: every attribute, every score kind measured."""
    people = next(iter(score_sets.values())).people
    known = set(people)
    matched = sum(1 for p in groups.labels if p in known)
    if matched == 0:
        hint = (" (pooled sets name people <set>/<person>)" if any("/" in p for p in people)
                else " (its ids look pooled, <set>/<person>; this is one set)"
                if any("/" in p for p in groups.labels) else "")
        raise ValueError(f"{groups.source}: none of its {len(groups.labels)} people is in the "
                         f"evaluated data{hint}")
    report: dict[str, Any] = {
        "file": groups.source, "people_in_file": len(groups.labels), "people_matched": matched,
        # Not scored: not in the data, or (gate protocol) too few photos to enrol and probe.
        "people_not_in_data": len(groups.labels) - matched,
        "unlabelled_people": sum(1 for p in people if p not in groups.labels),
        "scores_from": "the whole evaluated population (T-norm cohort included)",
        "attributes": {},
    }
    for attribute in groups.attributes:
        rows_by_label = group_rows(groups, attribute, people)
        report["attributes"][attribute] = {
            kind: attribute_report(score_sets[kind], counts.get(kind, {}),
                                   thresholds.get(kind, {}), rows_by_label)
            for kind in score_sets}
    return report
