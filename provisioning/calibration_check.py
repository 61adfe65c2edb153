"""Checking a calibration: measured on people it never saw (``calibrate --test-dir`` /
``--split-half``), and against each room's own impostor pairs (the room guard).

**Held-out measurement.** The gate protocol on the test people (templates from the first
photos, probes the rest, every probe against every other person's template; T-norm cohort the
test people's templates), counting the impostor scores at or above each calibrated threshold.
The measured FAR gets a Wilson 95% interval; when the target lies outside it the report says
``MISMATCH`` (above: the calibration promises fewer false matches than this population gives).

**Room guard.** When a room's roster is built or signed with a calibration, the room's own
impostor pairs (every pair of its templates, as cosine and, with a session cohort, T-norm;
pairs the duplicate check flags left out, a human reviews those) are counted above the
calibration population's threshold at FAR 1e-3 *for template pairs* (a room holds templates
only, and template-against-template scores run higher than a photo's against a template: on
celeba, 5 of 7 rooms of 40 would have "failed" against the gate's threshold). More than the
binomial 99% upper bound for that many pairs is a tail heavier than promised: the room gets a
``room_guard`` (the strictest calibrated threshold raised by how far the room's own order
statistic lies above the population's), the gate uses the stricter of that and its calibrated
threshold, and the build warns naming the room.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from device.decide.calibration import Calibration, RoomGuard
from device.decide.roster import Roster
from device.infer.match import MIN_COHORT
from provisioning.calibrate import pair_scores
from provisioning.calibration_stats import MIN_ABOVE, binom_upper, wilson

GUARD_FAR = 1e-3
GUARD_CONFIDENCE = 0.99


def measure_at(calibration: Calibration, people: Mapping[str, np.ndarray],
               template_photos: int = 3, show_progress: bool = True,
               ) -> tuple[dict[str, Any], list[str]]:
    """FAR and TAR measured on ``people`` at the calibration's thresholds: (report, lines)."""
    wanted = {kind: list(per_far.values()) for kind, per_far in calibration.thresholds.items()}
    scores = pair_scores(people, template_photos, count_at=wanted, show_progress=show_progress)
    n = scores.impostor_pairs
    report: dict[str, Any] = {"people": scores.people, "impostor_pairs": n,
                              "genuine_pairs": int(scores.genuine["cosine"].size),
                              "at_calibrated": {}}
    lines = []
    for kind, per_far in calibration.thresholds.items():
        for key, threshold in per_far.items():
            target = float(key)
            above = scores.above[kind][threshold]
            measured = above / n
            lo, hi = wilson(above, n)
            genuine = scores.genuine[kind]
            tar = float(np.mean(genuine >= threshold)) if genuine.size else None
            verdict = ("MISMATCH: heavier than promised" if lo > target else
                       "MISMATCH: lighter than promised" if hi < target else "consistent")
            measurable = n >= math.ceil(MIN_ABOVE / target)
            within = (target / 2 <= measured <= 2 * target) if measurable else None
            report["at_calibrated"].setdefault(kind, {})[key] = {
                "threshold": threshold, "impostors_above": above, "far_measured": measured,
                "far_ci_95": [lo, hi], "within_2x": within, "verdict": verdict, "tar": tar}
            two = ("within" if within else "NOT within") if measurable else (
                f"too few pairs to test (need {math.ceil(MIN_ABOVE / target)})")
            line = (f"{kind:6s} FAR {key}: threshold {threshold:.4f} → measured FAR "
                    f"{measured:.2e} [{lo:.2e}, {hi:.2e}] ({above}/{n}), {two} 2× of target; "
                    f"TAR {'-' if tar is None else f'{tar:.4f}'}; {verdict}")
            if verdict != "consistent":
                line += (f" — the target {target:g} lies outside the measured interval: this "
                         "calibration does not hold for these people")
            if kind == "tnorm" and scores.people < MIN_COHORT:
                line += (f" (only {scores.people} people: a gate keeps cosine scores below a "
                         f"{MIN_COHORT}-template cohort)")
            lines.append(line)
    return report, lines


def _room_scores(roster: Roster, duplicate_threshold: float | None,
                 ) -> tuple[dict[str, np.ndarray], int]:
    """The room's impostor scores: each pair of its templates once (the first as the probe),
    without the pairs the duplicate check flags (a human reviews those); and how many those
    were."""
    gallery = roster.gallery()
    templates = gallery.templates
    upper = np.triu_indices(len(templates), 1)
    cosine = templates @ templates.T
    keep = (cosine[upper] < duplicate_threshold if duplicate_threshold is not None
            else np.ones(len(upper[0]), dtype=bool))
    out = {"cosine": cosine[upper][keep]}
    if roster.cohort is not None and len(roster.cohort) >= MIN_COHORT:
        tnorm = np.stack([gallery.normalise(t, cosine[i]) for i, t in enumerate(templates)])
        out["tnorm"] = tnorm[upper][keep]
    return out, int(np.count_nonzero(~keep))


def _order_statistic(scores: np.ndarray, far: float) -> float:
    top = np.sort(scores)[::-1]
    k = min(math.floor(far * top.size + 1e-9), top.size - 1)
    return float(top[k])


def room_guard(roster: Roster, calibration: Calibration, reference: dict[str, Any] | None,
               duplicate_threshold: float | None = None,
               ) -> tuple[RoomGuard | None, dict[str, Any]]:
    """(guard or None, report) for one room's roster checked against the population's
    template-pair reference (``provisioning.calibrate.template_pair_reference``).

    A kind whose room pairs above the reference threshold outnumber the binomial 99% bound gets
    a guard: the strictest calibrated threshold of that kind raised by how much the room's own
    order statistic at the reference FAR lies above the reference (its tail runs that much
    higher), so whatever ``target_far`` its gates use, they judge by at least that.
    """
    report: dict[str, Any] = {"room": roster.room, "kinds": {}}
    if reference is None:
        report["skipped"] = "the calibration file has no room-check reference"
        return None, report
    far = float(reference["far"])
    report["far"] = far
    if len(roster.entries) < 2:
        return None, report
    scores, flagged = _room_scores(roster, duplicate_threshold)
    report["flagged_pairs_left_out"] = flagged
    heavy: list[str] = []
    guards: dict[str, float] = {}
    for kind, values in scores.items():
        ref = reference.get(kind)
        strictest = max(calibration.thresholds.get(kind, {}).values(), default=None)
        if ref is None or strictest is None or values.size == 0:
            continue
        above = int(np.count_nonzero(values >= ref))
        allowed = binom_upper(values.size, far, GUARD_CONFIDENCE)
        shift = max(_order_statistic(values, far) - ref, 0.0)
        report["kinds"][kind] = {"pairs": int(values.size), "reference": ref, "above": above,
                                 "allowed": allowed, "heavy": above > allowed,
                                 "shift": round(shift, 4)}
        if above > allowed:
            heavy.append(f"{above} of {values.size} {kind} template pairs ≥ {ref:.4f} (FAR "
                         f"{far:g} of the calibration population), at most {allowed} expected")
            guards[kind] = math.ceil(round((strictest + shift) / 1e-4, 6)) * 1e-4
    if not heavy:
        return None, report
    guard = RoomGuard(*(None if k not in guards else round(guards[k], 4)
                        for k in ("cosine", "tnorm")),
                      reason=f"room {roster.room}: " + "; ".join(heavy))
    report["guard"] = guard.to_dict()
    return guard, report
