"""Checking a calibration: measured on people it never saw (``calibrate --test-dir`` /
``--split-half``), and against each room's own impostor pairs (the room guard).

**Held-out measurement.** The gate protocol on the test people (templates from the first
photos, probes the rest, every probe against every other person's template; T-norm cohort the
test people's templates), counting the impostor scores at or above each calibrated threshold.
The measured FAR gets a Wilson 95% interval; when the target lies outside it the report says
``MISMATCH`` (above: the calibration promises fewer false matches than this population gives).

**Room guard.** When a room's roster is built or signed with a calibration, the room's own
impostor pairs (every pair of its templates, as cosine and, with a session cohort, T-norm)
are counted above the calibrated threshold at FAR 1e-3. More than the binomial 99% upper bound
for that many pairs is a tail heavier than promised: the room gets a ``room_guard`` (the
room's own order statistic at that FAR, i.e. above every pair for rooms under 1,000 pairs), the
gate uses the stricter of the two, and the build warns naming the room.
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


def _room_scores(roster: Roster) -> dict[str, np.ndarray]:
    """The room's impostor scores: each pair of its templates once (the first as the probe)."""
    gallery = roster.gallery()
    templates = gallery.templates
    upper = np.triu_indices(len(templates), 1)
    cosine = templates @ templates.T
    out = {"cosine": cosine[upper]}
    if roster.cohort is not None and len(roster.cohort) >= MIN_COHORT:
        tnorm = np.stack([gallery.normalise(t, cosine[i]) for i, t in enumerate(templates)])
        out["tnorm"] = tnorm[upper]
    return out


def _order_statistic(scores: np.ndarray, far: float) -> float:
    top = np.sort(scores)[::-1]
    k = min(math.floor(far * top.size + 1e-9), top.size - 1)
    return math.ceil(round((float(top[k]) + 1e-9) / 1e-4, 6)) * 1e-4


def room_guard(roster: Roster, calibration: Calibration, far: float = GUARD_FAR,
               ) -> tuple[RoomGuard | None, dict[str, Any]]:
    """(guard or None, report) for one room's roster checked against ``calibration``."""
    report: dict[str, Any] = {"room": roster.room, "far": far, "kinds": {}}
    if len(roster.entries) < 2:
        return None, report
    scores = _room_scores(roster)
    heavy = []
    for kind, values in scores.items():
        threshold = calibration.threshold(kind, far)
        if threshold is None:
            continue
        above = int(np.count_nonzero(values >= threshold))
        allowed = binom_upper(values.size, far, GUARD_CONFIDENCE)
        report["kinds"][kind] = {"pairs": int(values.size), "threshold": threshold,
                                 "above": above, "allowed": allowed,
                                 "heavy": above > allowed}
        if above > allowed:
            heavy.append(f"{above} of {values.size} {kind} pairs ≥ {threshold:.4f} (FAR "
                         f"{far:g}), at most {allowed} expected")
    if not heavy:
        return None, report
    tnorm = _order_statistic(scores["tnorm"], far) if "tnorm" in scores else None
    guard = RoomGuard(round(_order_statistic(scores["cosine"], far), 4),
                      None if tnorm is None else round(tnorm, 4),
                      f"room {roster.room}: " + "; ".join(heavy))
    report["guard"] = guard.to_dict()
    return guard, report
