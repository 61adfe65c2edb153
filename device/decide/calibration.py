"""Thresholds calibrated on the applicants' own population, carried inside the signed roster.

``gerbang-provision calibrate`` measures impostor and genuine scores among a recruitment
round's registration photos and writes this block into the rosters it signs; the gate then uses
the threshold of its own population instead of the model bundle's (fitted on another set of
faces). Inside the roster payload the block is covered by the roster's signature, so it cannot
be changed on the way. The shape (every FAR key as ``device.infer.metrics.far_key`` writes it)::

    {"source": "roster:CASN-2026 centre c1", "created": "2026-12-04T10:00:00Z",
     "embedder_sha256": "…", "people": 2400, "impostor_pairs": 17000000, "genuine_pairs": 7200,
     "thresholds":         {"cosine": {"1e-2": x, "1e-3": y, "1e-4": z}, "tnorm": {…}},
     "threshold_upper_ci": {same shape},  "expected_tar": {same shape},
     "room_guard": {"cosine": x, "tnorm": y, "reason": "…"}}    (optional; either kind)

Parsing is strict: any missing or mistyped field is a RosterError naming it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from device.infer.metrics import far_key

SCORE_KINDS = ("cosine", "tnorm")
#: The FAR keys a calibration may carry (those ``[match] target_far`` accepts).
FAR_KEYS = tuple(far_key(f) for f in (1e-2, 1e-3, 1e-4))
#: A threshold outside this range per score kind is not a score of that kind.
SCORE_RANGE = {"cosine": (-1.0, 1.0), "tnorm": (-50.0, 50.0)}
_TABLES = ("thresholds", "threshold_upper_ci", "expected_tar")


class CalibrationError(ValueError):
    """A calibration block that does not hold; the message names the field."""


@dataclass(frozen=True)
class RoomGuard:
    """A stricter threshold for one room whose own impostor tail was heavier than promised."""

    cosine: float | None
    tnorm: float | None  # None: that kind's tail was as promised (or could not be measured)
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """JSON form (a kind without a guard is omitted)."""
        data: dict[str, Any] = {"reason": self.reason}
        for kind in SCORE_KINDS:
            if getattr(self, kind) is not None:
                data[kind] = getattr(self, kind)
        return data


@dataclass(frozen=True)
class Calibration:
    """Thresholds per score kind and FAR, measured on a named population."""

    source: str
    created: str
    embedder_sha256: str
    people: int
    impostor_pairs: int
    genuine_pairs: int
    #: kind → FAR key → value, for each of the three tables.
    thresholds: dict[str, dict[str, float]]
    threshold_upper_ci: dict[str, dict[str, float]]
    expected_tar: dict[str, dict[str, float]]
    room_guard: RoomGuard | None = None

    def threshold(self, score_kind: str, far: float) -> float | None:
        """The calibrated threshold (no room guard), None when not calibrated for it."""
        return self.thresholds.get(score_kind, {}).get(far_key(far))

    def guarded(self, score_kind: str, far: float) -> tuple[float, str] | None:
        """(threshold, what set it): the stricter of the calibration and the room guard."""
        value = self.threshold(score_kind, far)
        if value is None:
            return None
        guard = getattr(self.room_guard, score_kind, None) if self.room_guard else None
        if guard is not None and guard > value:
            return guard, f"{self.source} + room guard ({self.room_guard.reason})"  # type: ignore[union-attr]
        return value, self.source

    def with_guard(self, guard: RoomGuard | None) -> Calibration:
        """The same calibration with this room's guard (or none)."""
        return replace(self, room_guard=guard)

    def to_dict(self) -> dict[str, Any]:
        """JSON form, as carried in the roster payload."""
        data: dict[str, Any] = {
            "source": self.source, "created": self.created,
            "embedder_sha256": self.embedder_sha256, "people": self.people,
            "impostor_pairs": self.impostor_pairs, "genuine_pairs": self.genuine_pairs,
            **{name: {k: dict(v) for k, v in getattr(self, name).items()} for name in _TABLES}}
        if self.room_guard is not None:
            data["room_guard"] = self.room_guard.to_dict()
        return data


def _fail(field: str, message: str) -> CalibrationError:
    return CalibrationError(f"calibration.{field}: {message}")


def _number(value: Any, field: str) -> float:
    if type(value) not in (int, float) or not math.isfinite(value):
        raise _fail(field, f"must be a finite number, got {value!r}")
    return float(value)


def _count(data: dict[str, Any], field: str, minimum: int) -> int:
    value = data.get(field)
    if type(value) is not int or value < minimum:
        raise _fail(field, f"must be an integer ≥ {minimum}, got {value!r}")
    return value


def _text(data: dict[str, Any], field: str, prefix: str = "") -> str:
    value = data.get(field)
    if not isinstance(value, str) or not value.strip():
        raise _fail(prefix + field, f"must be a non-empty string, got {value!r}")
    return value


def _table(data: dict[str, Any], name: str, kinds: tuple[str, ...] | None,
           ) -> dict[str, dict[str, float]]:
    raw = data.get(name)
    if not isinstance(raw, dict) or not raw:
        raise _fail(name, f"must map score kinds {SCORE_KINDS} to {{FAR: value}}, got {raw!r}")
    table: dict[str, dict[str, float]] = {}
    for kind, per_far in raw.items():
        if kind not in SCORE_KINDS:
            raise _fail(f"{name}.{kind}", f"unknown score kind (known: {', '.join(SCORE_KINDS)})")
        if not isinstance(per_far, dict) or not per_far:
            raise _fail(f"{name}.{kind}", f"must map FARs {FAR_KEYS} to values")
        table[kind] = {}
        for key, value in per_far.items():
            field = f"{name}.{kind}.{key}"
            if key not in FAR_KEYS:
                raise _fail(field, f"unknown FAR (known: {', '.join(FAR_KEYS)})")
            number = _number(value, field)
            low, high = (0.0, 1.0) if name == "expected_tar" else SCORE_RANGE[kind]
            if not low <= number <= high:
                raise _fail(field, f"{number} is outside [{low}, {high}]")
            table[kind][key] = number
    if kinds is not None and sorted(table) != sorted(kinds):
        raise _fail(name, f"covers {sorted(table)}, thresholds cover {sorted(kinds)}")
    return table


def calibration_from_dict(data: Any, embedder_sha256: str | None = None) -> Calibration:
    """Parse and check a calibration block; CalibrationError naming the field otherwise.

    ``embedder_sha256`` is the embedder of the roster's templates: a calibration measured with
    another model's scores is refused.
    """
    if not isinstance(data, dict):
        raise CalibrationError(f"calibration must be a JSON object, got {type(data).__name__}")
    known = {"source", "created", "embedder_sha256", "people", "impostor_pairs",
             "genuine_pairs", "room_guard", *_TABLES}
    unknown = sorted(set(data) - known)
    if unknown:
        raise _fail(unknown[0], "unknown field")
    created = _text(data, "created")
    try:
        datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        raise _fail("created", f"not an ISO 8601 time: {created!r}") from None
    embedder = _text(data, "embedder_sha256")
    if embedder_sha256 is not None and embedder != embedder_sha256:
        raise _fail("embedder_sha256", f"measured with embedder {embedder[:16]}…, but the "
                    f"roster's templates were made with {embedder_sha256[:16]}…: its "
                    "thresholds do not apply to these scores; calibrate again")
    thresholds = _table(data, "thresholds", None)
    kinds = tuple(thresholds)
    guard = None
    if data.get("room_guard") is not None:
        raw = data["room_guard"]
        if not isinstance(raw, dict) or set(raw) - {"cosine", "tnorm", "reason"}:
            raise _fail("room_guard", "must be {cosine and/or tnorm, reason}")
        values: dict[str, float | None] = {}
        for kind in SCORE_KINDS:
            field = f"room_guard.{kind}"
            values[kind] = None if raw.get(kind) is None else _number(raw[kind], field)
            lo, hi = SCORE_RANGE[kind]
            if values[kind] is not None and not lo <= values[kind] <= hi:  # type: ignore[operator]
                raise _fail(field, f"{values[kind]} is outside [{lo}, {hi}]")
        if values["cosine"] is None and values["tnorm"] is None:
            raise _fail("room_guard", "names no threshold (cosine or tnorm)")
        guard = RoomGuard(values["cosine"], values["tnorm"], _text(raw, "reason", "room_guard."))
    return Calibration(
        source=_text(data, "source"), created=created, embedder_sha256=embedder,
        people=_count(data, "people", 2), impostor_pairs=_count(data, "impostor_pairs", 1),
        genuine_pairs=_count(data, "genuine_pairs", 0), thresholds=thresholds,
        threshold_upper_ci=_table(data, "threshold_upper_ci", kinds),
        expected_tar=_table(data, "expected_tar", kinds), room_guard=guard)
