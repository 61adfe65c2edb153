"""Exports: attendance per session (and room) as CSV and as a printable PDF, and the audit log.

The PDF is the record proctors and the centre manager sign at the end of a session: one section
per room, every roster entry with its status and how it was admitted, and signature lines.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

from gateway.attendance import totals

ATTENDANCE_COLUMNS = ("session_id", "room", "seat", "applicant_id", "name", "status",
                      "admitted_at", "admitted_by", "attempts", "refused", "flags",
                      "override_action", "override_reason", "override_by")


def _rows(attendance: dict[str, Any], room: str | None) -> list[dict[str, Any]]:
    session_id = attendance["session"]["session_id"]
    rows = []
    for a in attendance["applicants"]:
        if room is not None and a["room"] != room:
            continue
        override = a["override"] or {}
        rows.append({"session_id": session_id, "room": a["room"], "seat": a["seat"] or "",
                     "applicant_id": a["applicant_id"], "name": a["name"],
                     "status": a["status"], "admitted_at": a["admitted_at"] or "",
                     "admitted_by": a["admitted_by"] or "", "attempts": a["attempts"],
                     "refused": a["refused"], "flags": " ".join(a["flags"]),
                     "override_action": override.get("action", ""),
                     "override_reason": override.get("reason", ""),
                     "override_by": override.get("username", "")})
    return rows


#: A spreadsheet runs a cell starting with one of these as a formula (``=HYPERLINK(...)``,
#: ``@SUM(...)``, DDE through ``+``/``-``); tab and CR start one in some importers.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: Any) -> Any:
    """``value`` for a CSV export: text that a spreadsheet would run as a formula gets a
    leading ``'`` (OWASP's advice), so a name, reason or user name typed as ``=cmd|...`` is
    shown, never executed. Numbers stay numbers."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def _safe_rows(rows: Any) -> list[dict[str, Any]]:
    return [{k: safe_cell(v) for k, v in row.items()} for row in rows]


def attendance_csv(attendance: dict[str, Any], room: str | None = None) -> str:
    """One line per roster entry (of ``room``, or every room)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, ATTENDANCE_COLUMNS)
    writer.writeheader()
    writer.writerows(_safe_rows(_rows(attendance, room)))
    return out.getvalue()


def audit_csv(entries: Sequence[dict[str, Any]]) -> str:
    """The audit log as CSV, oldest first."""
    out = io.StringIO()
    writer = csv.DictWriter(out, ("id", "ts", "username", "action", "target", "detail"))
    writer.writeheader()
    writer.writerows(_safe_rows({k: e.get(k) for k in writer.fieldnames} for e in entries))
    return out.getvalue()


def _latin1(text: Any) -> str:
    # The PDF core fonts are Latin-1; Indonesian names almost always are. Anything else
    # becomes '?' rather than failing the export at the end of an exam day.
    return str(text if text is not None else "").encode("latin-1", "replace").decode("latin-1")


def _local(ts: str, offset_h: float) -> str:
    if not ts:
        return ""
    from datetime import timedelta, timezone

    from gateway.attendance import parse_time

    return parse_time(ts).astimezone(timezone(timedelta(hours=offset_h))).strftime(
        "%Y-%m-%d %H:%M:%S")


def attendance_pdf(attendance: dict[str, Any], room: str | None = None,
                   generated_by: str = "", generated_at: str = "",
                   utc_offset_h: float = 7.0) -> bytes:
    """A printable attendance report with signature lines; returns the PDF bytes. Times are
    on the centre's clock (``utc_offset_h``; 7 = WIB)."""
    from fpdf import FPDF

    zone = f"UTC{utc_offset_h:+g}"

    session = attendance["session"]
    rooms = [r for r in attendance["rooms"] if room is None or r["room"] == room]
    pdf = FPDF(format="A4")
    pdf.set_auto_page_break(auto=True, margin=15)
    pdf.set_title(_latin1(f"Attendance {session['session_id']}"))
    widths = (12, 30, 62, 22, 38, 26)
    headings = ("Seat", "Applicant", "Name", "Status", f"Admitted ({zone})", "By")
    for tally in rooms:
        pdf.add_page()
        pdf.set_font("Helvetica", "B", 14)
        pdf.cell(0, 8, _latin1(f"Attendance record - {session['name']}"), new_x="LMARGIN",
                 new_y="NEXT")
        pdf.set_font("Helvetica", "", 10)
        pdf.cell(0, 6, _latin1(f"Session {session['session_id']} - centre {session['centre']} - "
                               f"room {tally['room']} - starts {session['starts_at']}"),
                 new_x="LMARGIN", new_y="NEXT")
        pdf.cell(0, 6, _latin1(
            f"Expected {tally['expected']}, present {tally['present']} (late {tally['late']}), "
            f"absent {tally['absent']}, not yet {tally['awaiting']}, refused attempts "
            f"{tally['refused']}, spoof suspected {tally['spoof_suspected']}, manual overrides "
            f"{tally['manual_overrides']}"), new_x="LMARGIN", new_y="NEXT")
        pdf.ln(2)
        pdf.set_font("Helvetica", "B", 9)
        for width, heading in zip(widths, headings, strict=True):
            pdf.cell(width, 6, heading, border=1)
        pdf.ln()
        pdf.set_font("Helvetica", "", 9)
        for row in _rows(attendance, tally["room"]):
            status = row["status"] + (" *" if row["override_action"] else "")
            cells = (row["seat"], row["applicant_id"], row["name"][:38], status,
                     _local(row["admitted_at"], utc_offset_h)[5:], row["admitted_by"][:16])
            for width, value in zip(widths, cells, strict=True):
                pdf.cell(width, 6, _latin1(value), border=1)
            pdf.ln()
        pdf.ln(2)
        pdf.set_font("Helvetica", "I", 8)
        pdf.multi_cell(0, 4, "* status set by a proctor; the reason is in the CSV export and "
                             "the audit log.")
        pdf.ln(10)
        pdf.set_font("Helvetica", "", 10)
        pdf.cell(90, 6, "Proctor: ______________________", new_x="RIGHT")
        pdf.cell(90, 6, "Centre manager: ______________________", new_x="LMARGIN", new_y="NEXT")
        pdf.cell(90, 6, "Date / signature", new_x="RIGHT")
        pdf.cell(90, 6, "Date / signature", new_x="LMARGIN", new_y="NEXT")
    if not rooms:
        pdf.add_page()
        pdf.set_font("Helvetica", "", 12)
        pdf.cell(0, 8, _latin1(f"No rooms in session {session['session_id']}"))
    sums = totals(rooms)
    pdf.set_font("Helvetica", "I", 8)
    pdf.ln(6)
    pdf.multi_cell(0, 4, _latin1(
        f"Generated {generated_at} by {generated_by} from Gerbang's stored gate events. "
        f"Totals: expected {sums['expected']}, present {sums['present']}, absent "
        f"{sums['absent']}."))
    return bytes(pdf.output())
