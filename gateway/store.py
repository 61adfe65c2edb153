"""The attendance store: every check-in event exactly once, keyed by ``event_id`` (SQLite, WAL).

Tables are created with sqlite-utils; the hot insert path is one ``INSERT OR IGNORE`` batch per
transaction, so a redelivered event changes nothing (at-least-once delivery, exactly-once effect).
Attendance figures are derived from the events table, so they can always be recomputed.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import sqlite_utils

from gerbang.wire import CheckinEvent

EVENT_COLUMNS = ("event_id", "device_id", "centre", "room", "session", "seq", "ts", "outcome",
                 "reason", "applicant_id", "score", "latency_ms", "frame_ref", "card_id", "mode")


class Store:
    """SQLite attendance store. One instance per process; connections are per thread."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        db = self.db
        db.enable_wal()
        if "events" not in db.table_names():
            db["events"].create({
                "event_id": str, "device_id": str, "centre": str, "room": str, "session": str,
                "seq": int, "ts": str, "outcome": str, "reason": str, "applicant_id": str,
                "score": float, "latency_ms": float, "frame_ref": str, "card_id": str,
                "mode": str, "received_at": float,
            }, pk="event_id", not_null={"device_id", "room", "session", "seq", "outcome"})
            db["events"].create_index(["session", "room"])
            db["events"].create_index(["device_id", "seq"])
        if "devices" not in db.table_names():
            db["devices"].create({"device_id": str, "centre": str, "state": str,
                                  "last_seen": float, "status": str}, pk="device_id")
        if "rejects" not in db.table_names():
            db["rejects"].create({"id": int, "received_at": float, "topic": str, "error": str},
                                 pk="id")

    @property
    def db(self) -> sqlite_utils.Database:
        """This thread's connection (sqlite3 connections must not cross threads)."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite_utils.Database(self.path)
            db.execute("PRAGMA busy_timeout = 5000")
            # NORMAL is durable in WAL mode across process crashes (kill -9); only an OS crash
            # can lose the last commits, and devices keep events until the broker's PUBACK.
            db.execute("PRAGMA synchronous = NORMAL")
            self._local.db = db
        return db

    def insert_events(self, events: Iterable[CheckinEvent]) -> int:
        """Store events not seen before in one transaction; returns how many were new."""
        now = time.time()
        rows = [(*(asdict(e)[c] for c in EVENT_COLUMNS), now) for e in events]
        conn = self.db.conn
        before = conn.total_changes
        with conn:
            conn.executemany(
                f"INSERT OR IGNORE INTO events ({', '.join(EVENT_COLUMNS)}, received_at) "
                f"VALUES ({', '.join('?' * (len(EVENT_COLUMNS) + 1))})", rows)
        return conn.total_changes - before

    def record_status(self, device_id: str, centre: str, status: dict[str, Any]) -> None:
        """Remember a device's latest birth/last-will message."""
        with self.db.conn:
            self.db["devices"].upsert({"device_id": device_id, "centre": centre,
                                       "state": str(status.get("state", "unknown")),
                                       "last_seen": time.time(), "status": json.dumps(status)},
                                      pk="device_id")

    def record_reject(self, topic: str, error: str) -> None:
        """Keep a trace of a refused message (never its payload: it may be hostile or huge)."""
        with self.db.conn:
            self.db["rejects"].insert({"received_at": time.time(), "topic": topic[:200],
                                       "error": error[:300]})

    def room_summary(self) -> list[dict[str, Any]]:
        """Per session and room: applicants admitted, refusals, no-face frames, last check-in."""
        sql = """
            SELECT session, room,
                   count(DISTINCT CASE WHEN outcome = 'accepted' THEN applicant_id END) AS present,
                   sum(outcome = 'accepted') AS accepted_events,
                   sum(outcome = 'refused') AS refused,
                   sum(outcome = 'no_face') AS no_face,
                   max(CASE WHEN outcome = 'accepted' THEN ts END) AS last_checkin,
                   count(DISTINCT device_id) AS gates
            FROM events GROUP BY session, room ORDER BY session, room"""
        return [dict(r) for r in self.db.query(sql)]

    def recent_events(self, limit: int = 50) -> list[dict[str, Any]]:
        """The newest events, newest first."""
        return list(self.db.query(
            "SELECT event_id, device_id, room, session, seq, ts, outcome, reason, applicant_id, "
            "score, latency_ms FROM events ORDER BY received_at DESC, seq DESC LIMIT ?",
            [limit]))

    def events(self) -> list[dict[str, Any]]:
        """Every stored event (for exports, demos and tests)."""
        return list(self.db.query("SELECT * FROM events ORDER BY device_id, seq"))

    def devices(self) -> list[dict[str, Any]]:
        """Known devices and their last status."""
        return [{**r, "status": json.loads(r["status"])} for r in
                self.db.query("SELECT * FROM devices ORDER BY device_id")]

    def counts(self) -> dict[str, int]:
        """Totals for monitoring: events stored and messages rejected."""
        (events,) = self.db.execute("SELECT count(*) FROM events").fetchone()
        (rejects,) = self.db.execute("SELECT count(*) FROM rejects").fetchone()
        return {"events": events, "rejected": rejects}
