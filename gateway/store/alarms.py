"""What alerts (gateway/alerts.py) are built from and marked with: device alarms (stored once,
like events), check-ins flagged for a proctor, and acknowledgements of alerts.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from gateway.store.sql import SqlBase
from gerbang.wire import AlarmEvent


class AlarmQueries(SqlBase):
    """Device alarms, flagged check-ins and alert acknowledgements."""

    def record_alarms(self, alarms: Iterable[AlarmEvent]) -> int:
        """Store alarms not seen before (redeliveries change nothing); returns how many new."""
        now = time.time()
        rows = [(a.alarm_id, a.device_id, a.centre, a.seq, a.stream or "", a.alarm, a.ts,
                 a.detail, now) for a in alarms]
        if not rows:
            return 0
        return self._executemany(
            "INSERT INTO alarms (alarm_id, device_id, centre, seq, stream, alarm, ts, detail, "
            "received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (alarm_id) DO NOTHING",
            rows)

    def alarms(self, limit: int = 500, kinds: Sequence[str] | None = None,
               exclude: Sequence[str] = ()) -> list[dict[str, Any]]:
        """Device alarms, newest first (only ``kinds`` / not ``exclude``, when given)."""
        where, params = [], []
        if kinds is not None:
            where.append(f"alarm IN ({', '.join('?' * len(kinds))})")
            params += list(kinds)
        if exclude:
            where.append(f"alarm NOT IN ({', '.join('?' * len(exclude))})")
            params += list(exclude)
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        return self._execute(f"SELECT * FROM alarms {clause}ORDER BY ts DESC LIMIT ?",
                             (*params, limit))

    def flagged_events(self, limit: int = 500) -> list[dict[str, Any]]:
        """Check-ins a proctor must look at: suspected spoofs and duplicate identities."""
        return self._execute(
            "SELECT event_id, device_id, room, session, ts, reason, card_id, applicant_id "
            "FROM events WHERE reason IN ('spoof_suspected', 'duplicate_identity') "
            "ORDER BY ts DESC LIMIT ?", (limit,))

    def acknowledge(self, alert_key: str, username: str, note: str | None) -> bool:
        """Mark an alert seen; False if it already was."""
        from gerbang.wire import utc_now_iso

        return self._executemany(
            "INSERT INTO alert_acks (alert_key, username, ts, note) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (alert_key) DO NOTHING",
            [(alert_key, username, utc_now_iso(), note)]) > 0

    def acks(self) -> dict[str, dict[str, Any]]:
        """Acknowledged alerts by key."""
        return {r["alert_key"]: r for r in self._execute("SELECT * FROM alert_acks")}
