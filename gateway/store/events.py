"""Check-in events: stored exactly once, keyed by ``event_id`` (one ``INSERT … ON CONFLICT DO
NOTHING`` batch per transaction, so a redelivery changes nothing), ids reused with other
content counted as conflicts, and the reads attendance and the live pages are derived from.
"""

from __future__ import annotations

import operator
import time
from collections.abc import Sequence
from typing import Any

from gateway.store.sql import SqlBase
from gerbang.wire import CheckinEvent

EVENT_COLUMNS = ("event_id", "device_id", "centre", "room", "session", "seq", "ts", "outcome",
                 "reason", "applicant_id", "score", "latency_ms", "frame_ref", "card_id", "mode")
_event_row = operator.attrgetter(*EVENT_COLUMNS)
#: What ``insert_events`` writes per event: the wire fields, the outbox stream (``""`` for a
#: gate older than streams), the admission verdict (NULL = admitted) and the receive time.
_INSERT_COLUMNS = (*EVENT_COLUMNS, "stream", "admission", "received_at")


# Only admitted events count (admission IS NULL); ``not_admitted`` counts the others, which
# are kept as evidence (gateway/admission.py).
_ROOM_SUMMARY = """
    SELECT session, room,
           count(DISTINCT CASE WHEN outcome = 'accepted' AND admission IS NULL
                 THEN applicant_id END) AS present,
           sum(CASE WHEN outcome = 'accepted' AND admission IS NULL THEN 1 ELSE 0 END)
               AS accepted_events,
           sum(CASE WHEN outcome = 'refused' AND admission IS NULL THEN 1 ELSE 0 END) AS refused,
           sum(CASE WHEN outcome = 'no_face' AND admission IS NULL THEN 1 ELSE 0 END) AS no_face,
           sum(CASE WHEN admission IS NOT NULL THEN 1 ELSE 0 END) AS not_admitted,
           max(CASE WHEN outcome = 'accepted' AND admission IS NULL THEN ts END) AS last_checkin,
           count(DISTINCT device_id) AS gates
    FROM events GROUP BY session, room ORDER BY session, room"""

_SUMMARY_COUNTS = ("present", "accepted_events", "refused", "no_face", "not_admitted", "gates")


def _same_value(sent: Any, stored: Any) -> bool:
    """Whether a field of a redelivered event equals the stored one (numbers compare as
    numbers: SQLite may hand back 40 for 40.0)."""
    if isinstance(sent, int | float) and isinstance(stored, int | float):
        return float(sent) == float(stored)
    return sent == stored


class EventQueries(SqlBase):
    """Writing and reading check-in events."""

    def insert_events(self, events: Sequence[CheckinEvent],
                      admissions: Sequence[str | None] | None = None) -> int:
        """Store events not seen before in one transaction; returns how many were new.

        ``admissions`` gives each event's admission verdict (None = admitted, else the refusal
        code of gateway/admission.py); without it every event is stored as admitted."""
        now = time.time()
        if admissions is None:
            rows = [(*_event_row(e), e.stream or "", None, now) for e in events]
        else:
            rows = [(*_event_row(e), e.stream or "", verdict, now)
                    for e, verdict in zip(events, admissions, strict=True)]
        if not rows:
            return 0
        return self._executemany(
            f"INSERT INTO events ({', '.join(_INSERT_COLUMNS)}) "
            f"VALUES ({', '.join('?' * len(_INSERT_COLUMNS))}) "
            "ON CONFLICT (event_id) DO NOTHING", rows)

    def event_conflicts_among(self, events: Sequence[CheckinEvent]) -> list[tuple[str, str, str]]:
        """``(event_id, device_id, differing fields)`` for each of ``events`` whose id is stored
        with other content (the stored event is kept; a redelivery has the same content).
        Only called for a batch that had duplicates, so it costs nothing on the hot path."""
        by_id = {e.event_id: e for e in events}
        if not by_id:
            return []
        stored: dict[str, dict[str, Any]] = {}
        ids = list(by_id)
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            for row in self._execute(
                    f"SELECT {', '.join(EVENT_COLUMNS)}, stream FROM events WHERE event_id IN "
                    f"({', '.join('?' * len(chunk))})", chunk):
                stored[row["event_id"]] = row
        conflicts = []
        for event in events:
            row = stored.get(event.event_id)
            if row is None:
                continue
            sent = dict(zip(EVENT_COLUMNS, _event_row(event), strict=True))
            sent["stream"] = event.stream or ""
            differ = [name for name, value in sent.items()
                      if not _same_value(value, row.get(name))]
            if differ:
                conflicts.append((event.event_id, event.device_id, ",".join(differ)))
        return conflicts

    def record_event_conflicts(self, conflicts: Sequence[tuple[str, str, str]]) -> None:
        """Count events that reused a stored ``event_id`` with other content (an alert)."""
        now = time.time()
        self._executemany(
            "INSERT INTO event_conflicts (event_id, device_id, fields, count, first_at, last_at) "
            "VALUES (?, ?, ?, 1, ?, ?) ON CONFLICT (event_id) DO UPDATE SET "
            "count = event_conflicts.count + 1, last_at = excluded.last_at, "
            "fields = excluded.fields",
            [(event_id, device_id, fields[:300], now, now)
             for event_id, device_id, fields in conflicts])

    def event_conflicts(self, limit: int = 500) -> list[dict[str, Any]]:
        """Event ids that arrived again with other content, newest first."""
        return self._execute("SELECT * FROM event_conflicts ORDER BY last_at DESC LIMIT ?",
                             (limit,))

    def room_summary(self) -> list[dict[str, Any]]:
        """Per session and room: applicants admitted, refusals, no-face frames, last check-in
        (admitted events only) and how many events were not admitted."""
        return [{k: (int(v) if k in _SUMMARY_COUNTS and v is not None else v)
                 for k, v in r.items()} for r in self._execute(_ROOM_SUMMARY)]

    def recent_events(self, limit: int = 50) -> list[dict[str, Any]]:
        """The newest events, newest first."""
        return self._execute(
            "SELECT event_id, device_id, room, session, seq, ts, outcome, reason, applicant_id, "
            "score, latency_ms, admission FROM events ORDER BY received_at DESC, seq DESC "
            "LIMIT ?", (limit,))

    def events(self) -> list[dict[str, Any]]:
        """Every stored event (for exports, demos and tests)."""
        return self._execute("SELECT * FROM events ORDER BY device_id, stream, seq")

    def session_events(self, session_id: str) -> list[dict[str, Any]]:
        """A session's admitted check-in events in time order (what attendance is derived
        from; events refused at admission are kept apart, see ``refused_events``)."""
        return self._execute(
            "SELECT event_id, device_id, room, seq, ts, outcome, reason, applicant_id, card_id, "
            "mode, score, latency_ms FROM events WHERE session = ? AND admission IS NULL "
            "ORDER BY ts, device_id, seq", (session_id,))

    def purge_biometric(self, older_than_s: float) -> int:
        """Blank match scores and frame references of events received more than
        ``older_than_s`` ago; the attendance facts (who, where, when, outcome) stay."""
        cutoff = time.time() - older_than_s
        return self._executemany(
            "UPDATE events SET score = NULL, frame_ref = NULL WHERE received_at < ? "
            "AND (score IS NOT NULL OR frame_ref IS NOT NULL)", [(cutoff,)])
