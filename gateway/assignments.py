"""Device assignments: which room (and session) each gate admits for.

A gate's certificate proves which gate published an event; the assignment says what that gate
may admit: events off it are kept but not counted (gateway/admission.py). Assignments are set
with ``gerbang-gateway assign``, from the provisioning centre folder or a list
(``assign --from``), or through ``PUT /api/devices/{id}/assignment`` (managers); every change
is audited. The running ingest sees a change within a few seconds and re-evaluates the events
it had refused for configuration reasons.

``--from`` reads, by what the path is:

- a **centre folder** of ``gerbang-provision`` (or its ``centre.json``): the centre id from
  ``centre.json``, and each gate's ``devices/<id>/device.json`` (``device_id``, ``room``; the
  session from the gate's ``bundle.json`` when its bundle names one); device records listed in
  ``centre.json`` itself (``"devices": [...]``) are read too;
- a **JSON** file: a list of ``{"device_id", "centre", "room", "session"?}`` objects, or an
  object ``{"centre": C, "devices": [...]}`` whose records may leave ``centre`` out;
- a **CSV** file with the columns ``device_id, centre, room`` and optionally ``session``
  (headers case-insensitive; ``device``/``gate`` and ``ruang`` accepted).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gerbang.wire import ID_PATTERN


class AssignmentError(ValueError):
    """A bad assignment or assignment file; the message names the field or file."""


def check_assignment(device_id: str, centre: str, room: str,
                     session: str | None) -> dict[str, Any]:
    """The assignment as stored, or AssignmentError naming the bad field."""
    for name, value in (("device_id", device_id), ("centre", centre), ("room", room)):
        if not isinstance(value, str) or not ID_PATTERN.match(value):
            raise AssignmentError(f"{name}: must match {ID_PATTERN.pattern}, got {value!r}")
    if session in ("", None):
        session = None
    elif not isinstance(session, str) or not ID_PATTERN.match(session):
        raise AssignmentError(f"session: must match {ID_PATTERN.pattern}, got {session!r}")
    return {"device_id": device_id, "centre": centre, "room": room, "session": session}


def assign(store: Any, device_id: str, centre: str, room: str, session: str | None,
           by: str, source: str | None = None) -> dict[str, Any]:
    """Assign one gate (audited as ``assignment_put`` by ``by``); returns the assignment."""
    row = check_assignment(device_id, centre, room, session)
    before = next((a for a in store.assignments() if a["device_id"] == device_id), None)
    store.put_assignment(row["device_id"], row["centre"], row["room"], row["session"], by)
    detail: dict[str, Any] = {k: row[k] for k in ("centre", "room", "session")}
    if before:
        detail["before"] = {k: before[k] for k in ("centre", "room", "session")}
    if source:
        detail["source"] = source
    store.audit(by, "assignment_put", device_id, detail)
    return row


def unassign(store: Any, device_id: str, by: str) -> bool:
    """Remove a gate's assignment (audited); False if it had none."""
    if not any(a["device_id"] == device_id for a in store.assignments()):
        return False
    store.delete_assignment(device_id)
    store.audit(by, "assignment_delete", device_id)
    return True


def assign_many(store: Any, rows: Sequence[dict[str, Any]], by: str,
                source: str | None = None) -> int:
    """Assign every gate of ``rows`` (all checked first: one bad row changes nothing)."""
    checked = [check_assignment(r.get("device_id", ""), r.get("centre", ""), r.get("room", ""),
                                r.get("session")) for r in rows]
    for row in checked:
        assign(store, row["device_id"], row["centre"], row["room"], row["session"], by, source)
    return len(checked)


def _records(records: Any, centre: str | None, where: str) -> list[dict[str, Any]]:
    if isinstance(records, dict):  # {"device id": {...}} as well as a list
        records = [{"device_id": k, **v} if isinstance(v, dict) else {"device_id": k}
                   for k, v in records.items()]
    if not isinstance(records, list):
        raise AssignmentError(f"{where}: expected a list of device records")
    out = []
    for n, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            raise AssignmentError(f"{where}: record {n} is not an object")
        row = {"device_id": record.get("device_id") or record.get("device"),
               "centre": record.get("centre") or centre, "room": record.get("room"),
               "session": record.get("session")}
        try:
            out.append(check_assignment(row["device_id"], row["centre"], row["room"],
                                        row["session"]))
        except AssignmentError as exc:
            raise AssignmentError(f"{where}: record {n}: {exc}") from None
    return out


def _centre_folder(folder: Path) -> list[dict[str, Any]]:
    centre_file = folder / "centre.json"
    try:
        data = json.loads(centre_file.read_text())
    except (OSError, ValueError) as exc:
        raise AssignmentError(f"{centre_file}: not a readable centre file ({exc})") from None
    centre = data.get("centre") if isinstance(data, dict) else None
    if not isinstance(centre, str):
        raise AssignmentError(f"{centre_file}: no centre id")
    rows = _records(data.get("devices", []), centre, str(centre_file))
    seen = {r["device_id"] for r in rows}
    for device_file in sorted((folder / "devices").glob("*/device.json")):
        try:
            record = json.loads(device_file.read_text())
        except (OSError, ValueError) as exc:
            raise AssignmentError(f"{device_file}: not readable ({exc})") from None
        bundle = device_file.parent / "bundle.json"
        if isinstance(record, dict) and bundle.exists():
            try:
                session = json.loads(bundle.read_text()).get("session")
            except (OSError, ValueError, AttributeError):
                session = None
            record = {**record, "session": record.get("session") or session}
        for row in _records([record], centre, str(device_file)):
            if row["device_id"] not in seen:
                rows.append(row)
                seen.add(row["device_id"])
    if not rows:
        raise AssignmentError(f"{folder}: no gate records (devices/<id>/device.json); add "
                              "gates with `gerbang-provision device add ID --room R`")
    return rows


_CSV_NAMES = {"device_id": ("device_id", "device", "gate", "gate_id"),
              "centre": ("centre", "center", "centre_id"),
              "room": ("room", "ruang", "ruangan"), "session": ("session", "sesi")}


def _csv(text: str, where: str, centre: str | None) -> list[dict[str, Any]]:
    sample = text[:4096]
    try:
        dialect = csv.Sniffer().sniff(sample, delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.DictReader(io.StringIO(text), dialect=dialect)
    header = {(h or "").strip().lower(): h for h in reader.fieldnames or []}
    columns = {}
    for field, names in _CSV_NAMES.items():
        found = next((header[n] for n in names if n in header), None)
        if found is None and field in ("device_id", "room"):
            raise AssignmentError(f"{where}: no {field} column (have: "
                                  f"{', '.join(header) or 'none'})")
        columns[field] = found
    rows = []
    for line, record in enumerate(reader, start=2):
        if not any((v or "").strip() for v in record.values()):
            continue
        values = {f: (record.get(c) or "").strip() if c else "" for f, c in columns.items()}
        values["centre"] = values["centre"] or centre or ""
        try:
            rows.append(check_assignment(values["device_id"], values["centre"], values["room"],
                                         values["session"] or None))
        except AssignmentError as exc:
            raise AssignmentError(f"{where}:{line}: {exc}") from None
    return rows


def read_assignments(path: Path, centre: str | None = None) -> list[dict[str, Any]]:
    """The assignments ``path`` lists (see the module docstring for the formats);
    AssignmentError naming the file, line or record for anything wrong."""
    path = Path(path)
    if path.is_dir():
        return _centre_folder(path)
    if path.name == "centre.json":
        return _centre_folder(path.parent)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise AssignmentError(f"{path}: cannot read ({exc.strerror})") from None
    if path.suffix.lower() == ".json" or text.lstrip().startswith(("[", "{")):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise AssignmentError(f"{path}: not JSON ({exc})") from None
        if isinstance(data, dict) and "devices" in data:
            return _records(data["devices"], data.get("centre") or centre, str(path))
        return _records(data, centre, str(path))
    return _csv(text, str(path), centre)
