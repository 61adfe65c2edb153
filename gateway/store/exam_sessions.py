"""The attendance model's inputs: exam sessions, their rosters, and proctors' actions
(overrides). A change of session or roster bumps the admission version
(gateway/store/admission.py), since it may change what admission admits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gateway.store.admission import AdmissionQueries


class ExamSessionQueries(AdmissionQueries):
    """Exam sessions, rosters and proctor overrides."""

    def upsert_session(self, session: dict[str, Any]) -> None:
        """Create or update an exam session (``session_id``, centre, name, times)."""
        self._transaction([(
            "INSERT INTO exam_sessions (session_id, centre, name, doors_open, starts_at, "
            "doors_close) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (session_id) DO UPDATE SET "
            "centre = excluded.centre, name = excluded.name, doors_open = excluded.doors_open, "
            "starts_at = excluded.starts_at, doors_close = excluded.doors_close",
            [tuple(session[k] for k in ("session_id", "centre", "name", "doors_open",
                                        "starts_at", "doors_close"))]),
            self._bump_admission_config()])

    def exam_sessions(self) -> list[dict[str, Any]]:
        """Every exam session, earliest first."""
        return self._execute("SELECT * FROM exam_sessions ORDER BY starts_at, session_id")

    def exam_session(self, session_id: str) -> dict[str, Any] | None:
        """One exam session, or None."""
        rows = self._execute("SELECT * FROM exam_sessions WHERE session_id = ?", (session_id,))
        return rows[0] if rows else None

    def replace_roster(self, session_id: str, entries: Sequence[dict[str, Any]]) -> int:
        """Make ``entries`` the session's whole roster (one transaction); returns the count."""
        self._transaction([
            ("DELETE FROM roster WHERE session_id = ?", [(session_id,)]),
            ("INSERT INTO roster (session_id, applicant_id, name, room, seat) "
             "VALUES (?, ?, ?, ?, ?)",
             [(session_id, e["applicant_id"], e["name"], e["room"], e.get("seat"))
              for e in entries]),
            self._bump_admission_config(),
        ])
        return len(entries)

    def roster(self, session_id: str, room: str | None = None) -> list[dict[str, Any]]:
        """A session's roster (one room's, with ``room``), by room and seat."""
        if room is None:
            return self._execute("SELECT * FROM roster WHERE session_id = ? "
                                 "ORDER BY room, seat, applicant_id", (session_id,))
        return self._execute("SELECT * FROM roster WHERE session_id = ? AND room = ? "
                             "ORDER BY seat, applicant_id", (session_id, room))

    def add_override(self, override: dict[str, Any]) -> None:
        """Record a proctor action (manual admit, mark absent, reopen, remote unlock)."""
        self._executemany(
            "INSERT INTO overrides (ts, session_id, room, applicant_id, device_id, action, "
            "reason, username) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [tuple(override.get(k) for k in ("ts", "session_id", "room", "applicant_id",
                                             "device_id", "action", "reason", "username"))])

    def overrides(self, session_id: str) -> list[dict[str, Any]]:
        """A session's proctor actions, oldest first."""
        return self._execute("SELECT * FROM overrides WHERE session_id = ? ORDER BY id",
                             (session_id,))
