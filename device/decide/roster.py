"""The room roster a gate checks faces against: applicants of one session and room.

Templates are biometric data: the file is written atomically with mode 0600 and never logged.
This module is the roster itself and its plain JSON form (the technician's working copy, and the
payload inside the other two forms). What travels to a gate is a signed, encrypted roster
(``device.manage.roster_file``); what a gate keeps is the encrypted template store
(``device.manage.template_store``). The format carries a ``version`` so a newer roster can replace
an older one and never the reverse.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from device.decide.calibration import Calibration, CalibrationError, calibration_from_dict
from device.infer.match import Gallery
from gerbang.files import write_atomic

ROSTER_FORMAT = 1


class RosterError(ValueError):
    """A roster file that is missing or malformed; the message names the problem."""


@dataclass(frozen=True)
class RosterEntry:
    """One applicant expected at this door."""

    applicant_id: str
    name: str
    template: np.ndarray  # unit-length float32 embedding (mean of enrollment photos)


@dataclass(frozen=True)
class Roster:
    """The applicants of one session and room, with their templates."""

    session: str
    room: str
    version: int
    entries: tuple[RosterEntry, ...]
    #: Templates of the whole session (every room, no ids) used only to normalise scores
    #: (T-norm, see device.infer.match); None when the session is too small to help.
    cohort: np.ndarray | None = None
    #: sha256 of the embedder model that made the templates (from the model manifest): a gate
    #: running another embedder could not compare them. None in rosters made before it was kept.
    embedder_sha256: str | None = None
    #: Thresholds measured on the applicants' own population (``device.decide.calibration``),
    #: used by the gate instead of the model bundle's; None: the bundle's calibration applies.
    calibration: Calibration | None = None

    def gallery(self) -> Gallery:
        """Templates as a matrix for matching, with the session cohort when there is one."""
        if not self.entries:
            return Gallery([], np.zeros((0, 128), dtype=np.float32))
        return Gallery([e.applicant_id for e in self.entries],
                       np.stack([e.template for e in self.entries]), cohort=self.cohort)

    def by_id(self) -> dict[str, RosterEntry]:
        """Entries keyed by applicant id."""
        return {e.applicant_id: e for e in self.entries}

    def to_dict(self) -> dict[str, Any]:
        """Serialisable form; templates as base64 little-endian float32."""
        data = {
            "format": ROSTER_FORMAT, "session": self.session, "room": self.room,
            "version": self.version,
            "entries": [{"applicant_id": e.applicant_id, "name": e.name,
                         "template": _b64(e.template)} for e in self.entries],
        }
        if self.cohort is not None:
            data["cohort"] = {"rows": int(self.cohort.shape[0]), "data": _b64(self.cohort)}
        if self.embedder_sha256 is not None:
            data["embedder_sha256"] = self.embedder_sha256
        if self.calibration is not None:
            data["calibration"] = self.calibration.to_dict()
        return data

    @property
    def template_dim(self) -> int:
        """Length of each template (0 for an empty roster)."""
        return int(self.entries[0].template.size) if self.entries else 0


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.asarray(array, "<f4").tobytes()).decode()


def roster_from_dict(data: dict[str, Any]) -> Roster:
    """Parse and check a roster document."""
    if not isinstance(data, dict) or data.get("format") != ROSTER_FORMAT:
        raise RosterError(f"roster format must be {ROSTER_FORMAT}")
    entries = []
    dims = set()
    for i, raw in enumerate(data.get("entries", [])):
        try:
            template = np.frombuffer(base64.b64decode(raw["template"]), dtype="<f4").copy()
            entry = RosterEntry(str(raw["applicant_id"]), str(raw.get("name", "")), template)
        except (KeyError, TypeError, ValueError) as exc:
            raise RosterError(f"roster entry {i}: {exc!r}") from None
        dims.add(template.size)
        entries.append(entry)
    if len(dims) > 1:
        raise RosterError(f"roster templates have mixed lengths {sorted(dims)}")
    ids = [e.applicant_id for e in entries]
    if len(set(ids)) != len(ids):
        raise RosterError("roster lists an applicant id twice")
    cohort = None
    if data.get("cohort"):
        try:
            flat = np.frombuffer(base64.b64decode(data["cohort"]["data"]), dtype="<f4")
            cohort = flat.reshape(int(data["cohort"]["rows"]), -1).copy()
        except (KeyError, TypeError, ValueError) as exc:
            raise RosterError(f"roster cohort: {exc!r}") from None
        if dims and cohort.shape[1] not in dims:
            raise RosterError(f"roster cohort has {cohort.shape[1]}-D rows, templates {dims}")
    embedder = data.get("embedder_sha256")
    embedder = None if embedder is None else str(embedder)
    calibration = None
    if data.get("calibration") is not None:
        if embedder is None:
            raise RosterError("roster calibration: the roster does not say which embedder made "
                              "its templates (embedder_sha256), so its thresholds cannot be "
                              "checked against them")
        try:
            calibration = calibration_from_dict(data["calibration"], embedder)
        except CalibrationError as exc:
            raise RosterError(f"roster {exc}") from None
    try:
        return Roster(session=str(data["session"]), room=str(data["room"]),
                      version=int(data["version"]), entries=tuple(entries), cohort=cohort,
                      embedder_sha256=embedder, calibration=calibration)
    except KeyError as exc:
        raise RosterError(f"roster field {exc.args[0]} is missing") from None


def save_roster(roster: Roster, path: Path) -> None:
    """Write atomically (temp file + rename) with owner-only permissions."""
    write_atomic(Path(path), json.dumps(roster.to_dict()).encode(), mode=0o600)


def load_roster(path: Path) -> Roster:
    """Read a roster file; RosterError with the path on any problem."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise RosterError(f"roster file {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise RosterError(f"roster file {path} is not valid JSON: {exc}") from None
    try:
        return roster_from_dict(data)
    except RosterError as exc:
        raise RosterError(f"roster file {path}: {exc}") from None
