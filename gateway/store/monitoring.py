"""Figures for watching the gateway itself: each ingest process's counters (for /api/stats),
store totals, and the change token the live pages poll to know when to re-render.
"""

from __future__ import annotations

import time
from typing import Any

from gateway.store.sql import SqlBase


class MonitoringQueries(SqlBase):
    """Ingest counters, totals and the live pages' change token."""

    def record_ingest_counters(self, client_id: str, counters: dict[str, int]) -> None:
        """One ingest process's counters since its start (for /api/stats)."""
        self._executemany(
            "INSERT INTO ingest_counters (client_id, updated_at, received, stored, duplicates, "
            "rejected, refused) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (client_id) DO UPDATE "
            "SET updated_at = excluded.updated_at, received = excluded.received, "
            "stored = excluded.stored, duplicates = excluded.duplicates, "
            "rejected = excluded.rejected, refused = excluded.refused",
            [(client_id, time.time(), *(int(counters.get(k, 0)) for k in (
                "received", "stored", "duplicates", "rejected", "refused")))])

    def ingest_counters(self) -> list[dict[str, Any]]:
        """Every ingest process's latest counters."""
        return self._execute("SELECT * FROM ingest_counters ORDER BY client_id")

    def counts(self) -> dict[str, int]:
        """Totals for monitoring: events stored and messages rejected."""
        (events,) = self._execute("SELECT count(*) AS n FROM events")
        (rejects,) = self._execute("SELECT sum(count) AS n FROM reject_counts")
        return {"events": int(events["n"]), "rejected": int(rejects["n"] or 0)}

    def change_token(self) -> tuple[Any, ...]:
        """Cheap fingerprint of everything the live pages show: it changes when they must."""
        (row,) = self._execute(
            "SELECT (SELECT count(*) FROM events) AS e, "
            "(SELECT max(last_at) FROM reject_counts) AS r, "
            "(SELECT count(*) FROM alarms) AS a, (SELECT count(*) FROM alert_acks) AS k, "
            "(SELECT max(id) FROM overrides) AS o, (SELECT count(*) FROM roster) AS n, "
            "(SELECT max(last_seen) FROM devices) AS d, (SELECT max(telemetry_at) FROM devices) "
            "AS t, (SELECT count(*) FROM exam_sessions) AS s, "
            "(SELECT max(updated_at) FROM seq_streams) AS q, "
            "(SELECT value FROM gateway_meta WHERE name = 'admission_config') AS c, "
            "(SELECT max(last_at) FROM event_conflicts) AS x, (SELECT max(id) FROM audit) AS u")
        return tuple(row.values())
