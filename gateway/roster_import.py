"""Session rosters from CSV, the shape a registration export has, with row-level error reports.

Accepted headers (case-insensitive; Indonesian names as in BKN/SSCASN exports also work):

=================  ====================================  ========
field              header names                          required
=================  ====================================  ========
applicant_id       applicant_id, no_peserta, nomor_peserta  yes
name               name, nama                               yes
room               room, ruang, ruangan                     yes
seat               seat, kursi, no_kursi                    no
session            session, sesi                            no (must match when present)
=================  ====================================  ========

Nothing is imported when any row is bad: the manager fixes the file and imports it again, so
a roster is never half-replaced on exam morning.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from gerbang.wire import ID_PATTERN

HEADER_ALIASES = {
    "applicant_id": ("applicant_id", "no_peserta", "nomor_peserta"),
    "name": ("name", "nama"),
    "room": ("room", "ruang", "ruangan"),
    "seat": ("seat", "kursi", "no_kursi"),
    "session": ("session", "sesi"),
}
REQUIRED = ("applicant_id", "name", "room")
MAX_ROWS = 50_000
MAX_NAME = 120


@dataclass
class RosterImport:
    """Parsed rows and, per bad row, ``{"line", "field", "error"}`` (line 1 is the header)."""

    entries: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every row is valid (and there is at least one)."""
        return not self.errors and bool(self.entries)


def parse_roster_csv(data: bytes | str, session_id: str) -> RosterImport:
    """Validate a roster CSV for ``session_id``; see the module doc for the accepted shape."""
    result = RosterImport()
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8-sig")  # Excel writes a BOM
        except UnicodeDecodeError as exc:
            result.errors.append({"line": 0, "field": None, "error": f"not UTF-8: {exc}"})
            return result
    if "\x00" in data:
        result.errors.append({"line": 0, "field": None,
                              "error": "contains NUL characters: not a text CSV file"})
        return result
    sample = data[:4096]
    try:
        dialect: Any = csv.Sniffer().sniff(sample, delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.reader(io.StringIO(data), dialect)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        result.errors.append({"line": 1, "field": None, "error": f"not a readable CSV: {exc}"})
        return result
    if not header:
        result.errors.append({"line": 1, "field": None, "error": "the file is empty"})
        return result
    names = [h.strip().lower().replace(" ", "_") for h in header]
    columns: dict[str, int] = {}
    for fieldname, aliases in HEADER_ALIASES.items():
        for alias in aliases:
            if alias in names:
                columns[fieldname] = names.index(alias)
                break
    missing = [f for f in REQUIRED if f not in columns]
    if missing:
        result.errors.append({"line": 1, "field": missing[0],
                              "error": f"no column for {', '.join(missing)} (header: "
                                       f"{', '.join(header)})"})
        return result
    seen: dict[str, int] = {}
    seats: dict[tuple[str, str], int] = {}
    for line, row in _rows(reader, result):
        if not any(cell.strip() for cell in row):
            continue
        if line - 1 > MAX_ROWS:
            result.errors.append({"line": line, "field": None,
                                  "error": f"more than {MAX_ROWS} rows"})
            break

        def cell(name: str, row: list[str] = row) -> str:
            index = columns.get(name)
            return row[index].strip() if index is not None and index < len(row) else ""

        entry = {f: cell(f) for f in ("applicant_id", "name", "room", "seat")}
        entry["seat"] = entry["seat"] or None
        problems = []
        for name in REQUIRED:
            if not entry[name]:
                problems.append((name, "empty"))
        for name in ("applicant_id", "room"):
            if entry[name] and not ID_PATTERN.match(entry[name]):
                problems.append((name, f"{entry[name]!r} has characters a gate id cannot "
                                       "carry (letters, digits, . _ - only)"))
        if len(entry["name"]) > MAX_NAME:
            problems.append(("name", f"longer than {MAX_NAME} characters"))
        if "session" in columns and cell("session") and cell("session") != session_id:
            problems.append(("session", f"row is for session {cell('session')!r}, importing "
                                        f"{session_id!r}"))
        if entry["applicant_id"] in seen:
            problems.append(("applicant_id", f"{entry['applicant_id']} already on line "
                                             f"{seen[entry['applicant_id']]}"))
        if entry["seat"] and (entry["room"], entry["seat"]) in seats:
            problems.append(("seat", f"seat {entry['seat']} in {entry['room']} already given "
                                     f"on line {seats[(entry['room'], entry['seat'])]}"))
        if problems:
            result.errors.extend({"line": line, "field": f, "error": e} for f, e in problems)
            continue
        seen[entry["applicant_id"]] = line
        if entry["seat"]:
            seats[(entry["room"], entry["seat"])] = line
        result.entries.append(entry)
    if not result.entries and not result.errors:
        result.errors.append({"line": 2, "field": None, "error": "no rows after the header"})
    return result


def _rows(reader: Any, result: RosterImport) -> Iterator[tuple[int, list[str]]]:
    """``(line, row)`` pairs after the header; a row the csv module cannot read (e.g. a field
    over its size limit) ends the file with an error on that line instead of an exception."""
    line = 1
    try:
        for line, row in enumerate(reader, start=2):
            yield line, row
    except csv.Error as exc:
        result.errors.append({"line": line + 1, "field": None,
                              "error": f"not a readable CSV row: {exc}"})
