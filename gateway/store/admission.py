"""What admission (gateway/admission.py) reads and writes: gate assignments, the lookups it
checks events against, its verdicts on stored events, and a version number that changes with
any assignment, session or roster, so ingest processes know to reload their lookups.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from gateway.store.sql import SqlBase


class AdmissionQueries(SqlBase):
    """Gate assignments and admission verdicts."""

    def _bump_admission_config(self) -> tuple[str, list[tuple[Any, ...]]]:
        """The step that tells ingest processes their admission lookups are out of date."""
        return ("UPDATE gateway_meta SET value = value + 1 WHERE name = 'admission_config'",
                [()])

    def admission_config_version(self) -> int:
        """Changes whenever an assignment, a session or a roster changes."""
        rows = self._execute("SELECT value FROM gateway_meta WHERE name = 'admission_config'")
        return int(rows[0]["value"]) if rows else 0

    def put_assignment(self, device_id: str, centre: str, room: str, session: str | None,
                       assigned_by: str) -> None:
        """Assign a gate to a room (and one session, or None: any open session of its
        centre). Its events off that assignment are refused from attendance."""
        self._transaction([(
            "INSERT INTO device_assignments (device_id, centre, room, session, assigned_by, "
            "assigned_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (device_id) DO UPDATE SET "
            "centre = excluded.centre, room = excluded.room, session = excluded.session, "
            "assigned_by = excluded.assigned_by, assigned_at = excluded.assigned_at",
            [(device_id, centre, room, session, assigned_by, time.time())]),
            self._bump_admission_config()])

    def delete_assignment(self, device_id: str) -> None:
        """Unassign a gate (its new events are refused as ``unassigned_device``)."""
        self._transaction([("DELETE FROM device_assignments WHERE device_id = ?",
                            [(device_id,)]), self._bump_admission_config()])

    def assignments(self) -> list[dict[str, Any]]:
        """Every gate's assignment, by device id."""
        return self._execute("SELECT * FROM device_assignments ORDER BY device_id")

    def roster_entries(self) -> list[dict[str, Any]]:
        """``(session_id, room, applicant_id)`` of every roster (admission's lookup)."""
        return self._execute("SELECT session_id, room, applicant_id FROM roster")

    def config_refused_events(self, codes: Sequence[str]) -> list[dict[str, Any]]:
        """Events refused with one of ``codes`` (what a changed assignment, session or roster
        may admit now)."""
        return self._execute(
            "SELECT event_id, device_id, centre, room, session, ts, outcome, applicant_id, "
            f"admission FROM events WHERE admission IS NOT NULL AND admission IN "
            f"({', '.join('?' * len(codes))})", tuple(codes))

    def set_admissions(self, verdicts: Sequence[tuple[str | None, str]]) -> int:
        """Change stored admission verdicts: ``(verdict, event_id)`` rows; returns how many."""
        if not verdicts:
            return 0
        return self._executemany("UPDATE events SET admission = ? WHERE event_id = ?",
                                 list(verdicts))

    def refused_events(self, session_id: str | None = None, room: str | None = None,
                       limit: int = 200) -> list[dict[str, Any]]:
        """Events kept as evidence but not admitted, newest first (of one session / room)."""
        where, params = ["admission IS NOT NULL"], []
        if session_id is not None:
            where.append("session = ?")
            params.append(session_id)
        if room is not None:
            where.append("room = ?")
            params.append(room)
        return self._execute(
            "SELECT event_id, device_id, room, session, seq, ts, outcome, reason, applicant_id, "
            f"card_id, admission, received_at FROM events WHERE {' AND '.join(where)} "
            "ORDER BY received_at DESC, seq DESC LIMIT ?", (*params, limit))

    def refusal_summary(self) -> list[dict[str, Any]]:
        """Refused events per (device, refusal code): count, first and last, one example."""
        rows = self._execute(
            "SELECT device_id, admission, count(*) AS n, min(ts) AS first_ts, max(ts) AS last_ts, "
            "max(received_at) AS last_received, max(session) AS session, max(room) AS room, "
            "sum(CASE WHEN outcome = 'accepted' THEN 1 ELSE 0 END) AS accepted "
            "FROM events WHERE admission IS NOT NULL GROUP BY device_id, admission "
            "ORDER BY device_id, admission")
        return [{**r, "n": int(r["n"]), "accepted": int(r["accepted"] or 0)} for r in rows]
