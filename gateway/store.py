"""The attendance store: every check-in event exactly once, keyed by ``event_id``.

Two back-ends with the same behaviour, chosen by URL: SQLite (default, one centre; sqlite-utils
over a WAL database) and PostgreSQL (many gateway workers, many centres). The hot insert path is
one ``INSERT … ON CONFLICT DO NOTHING`` batch per transaction, so a redelivered event changes
nothing (at-least-once delivery, exactly-once effect). Attendance figures are derived from the
events table, so they can always be recomputed. Schema changes are numbered migrations recorded
in ``schema_migrations``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from gerbang.wire import CheckinEvent

EVENT_COLUMNS = ("event_id", "device_id", "centre", "room", "session", "seq", "ts", "outcome",
                 "reason", "applicant_id", "score", "latency_ms", "frame_ref", "card_id", "mode")

# (version, description, DDL with {real} / {serial} placeholders for the dialect's types)
MIGRATIONS: list[tuple[int, str, str]] = [
    (1, "events, devices, rejects", """
        CREATE TABLE events (
            event_id TEXT PRIMARY KEY, device_id TEXT NOT NULL, centre TEXT NOT NULL,
            room TEXT NOT NULL, session TEXT NOT NULL, seq BIGINT NOT NULL, ts TEXT NOT NULL,
            outcome TEXT NOT NULL, reason TEXT, applicant_id TEXT, score {real},
            latency_ms {real}, frame_ref TEXT, card_id TEXT, mode TEXT,
            received_at {real} NOT NULL);
        CREATE INDEX events_session_room ON events (session, room);
        CREATE INDEX events_device_seq ON events (device_id, seq);
        CREATE TABLE devices (device_id TEXT PRIMARY KEY, centre TEXT NOT NULL, state TEXT,
                              last_seen {real}, status TEXT);
        CREATE TABLE rejects (id {serial}, received_at {real} NOT NULL, topic TEXT,
                              error TEXT);
    """),
]

_ROOM_SUMMARY = """
    SELECT session, room,
           count(DISTINCT CASE WHEN outcome = 'accepted' THEN applicant_id END) AS present,
           sum(CASE WHEN outcome = 'accepted' THEN 1 ELSE 0 END) AS accepted_events,
           sum(CASE WHEN outcome = 'refused' THEN 1 ELSE 0 END) AS refused,
           sum(CASE WHEN outcome = 'no_face' THEN 1 ELSE 0 END) AS no_face,
           max(CASE WHEN outcome = 'accepted' THEN ts END) AS last_checkin,
           count(DISTINCT device_id) AS gates
    FROM events GROUP BY session, room ORDER BY session, room"""


class Store:
    """What the gateway needs from storage; subclasses supply connections and dialect."""

    dialect = "sql"
    real_type = "REAL"
    serial_type = "INTEGER PRIMARY KEY"

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        raise NotImplementedError

    def _executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> int:
        """Run ``sql`` for every row in one transaction; returns how many rows changed."""
        raise NotImplementedError

    def _migrate(self) -> None:
        self._execute_script("CREATE TABLE IF NOT EXISTS schema_migrations "
                             "(version INTEGER PRIMARY KEY, description TEXT, applied_at "
                             f"{self.real_type})")
        done = {r["version"] for r in self._execute("SELECT version FROM schema_migrations")}
        for version, description, ddl in MIGRATIONS:
            if version in done:
                continue
            self._execute_script(ddl.format(real=self.real_type, serial=self.serial_type))
            self._execute("INSERT INTO schema_migrations VALUES (?, ?, ?)",
                          (version, description, time.time()))

    def _execute_script(self, sql: str) -> None:
        for statement in (s.strip() for s in sql.split(";")):
            if statement:
                self._execute(statement)

    @property
    def schema_version(self) -> int:
        """Highest applied migration."""
        rows = self._execute("SELECT max(version) AS v FROM schema_migrations")
        return int(rows[0]["v"] or 0)

    def insert_events(self, events: Iterable[CheckinEvent]) -> int:
        """Store events not seen before in one transaction; returns how many were new."""
        now = time.time()
        rows = [(*(getattr(e, c) for c in EVENT_COLUMNS), now) for e in events]
        if not rows:
            return 0
        return self._executemany(
            f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}, received_at) "
            f"VALUES ({', '.join('?' * (len(EVENT_COLUMNS) + 1))}) "
            "ON CONFLICT (event_id) DO NOTHING", rows)

    def record_status(self, device_id: str, centre: str, status: dict[str, Any]) -> None:
        """Remember a device's latest birth/last-will message."""
        self._executemany(
            "INSERT INTO devices (device_id, centre, state, last_seen, status) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (device_id) DO UPDATE SET "
            "centre = excluded.centre, state = excluded.state, last_seen = excluded.last_seen, "
            "status = excluded.status",
            [(device_id, centre, str(status.get("state", "unknown")), time.time(),
              json.dumps(status))])

    def record_reject(self, topic: str, error: str) -> None:
        """Keep a trace of a refused message (never its payload: it may be hostile or huge)."""
        self._executemany("INSERT INTO rejects (received_at, topic, error) VALUES (?, ?, ?)",
                          [(time.time(), topic[:200], error[:300])])

    def room_summary(self) -> list[dict[str, Any]]:
        """Per session and room: applicants admitted, refusals, no-face frames, last check-in."""
        return [{k: (int(v) if k in ("present", "accepted_events", "refused", "no_face",
                                     "gates") and v is not None else v) for k, v in r.items()}
                for r in self._execute(_ROOM_SUMMARY)]

    def recent_events(self, limit: int = 50) -> list[dict[str, Any]]:
        """The newest events, newest first."""
        return self._execute(
            "SELECT event_id, device_id, room, session, seq, ts, outcome, reason, applicant_id, "
            "score, latency_ms FROM events ORDER BY received_at DESC, seq DESC LIMIT ?", (limit,))

    def events(self) -> list[dict[str, Any]]:
        """Every stored event (for exports, demos and tests)."""
        return self._execute("SELECT * FROM events ORDER BY device_id, seq")

    def rejects(self) -> list[dict[str, Any]]:
        """Refused messages, oldest first."""
        return self._execute("SELECT topic, error, received_at FROM rejects ORDER BY id")

    def devices(self) -> list[dict[str, Any]]:
        """Known devices and their last status."""
        return [{**r, "status": json.loads(r["status"])} for r in
                self._execute("SELECT * FROM devices ORDER BY device_id")]

    def counts(self) -> dict[str, int]:
        """Totals for monitoring: events stored and messages rejected."""
        (events,) = self._execute("SELECT count(*) AS n FROM events")
        (rejects,) = self._execute("SELECT count(*) AS n FROM rejects")
        return {"events": int(events["n"]), "rejected": int(rejects["n"])}


class SqliteStore(Store):
    """SQLite in WAL mode through sqlite-utils; one connection per thread."""

    dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        import sqlite_utils

        self._sqlite_utils = sqlite_utils
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self.db.enable_wal()
        self._migrate()

    @property
    def db(self) -> Any:
        """This thread's sqlite-utils Database (sqlite3 connections must not cross threads)."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._sqlite_utils.Database(self.path)
            db.execute("PRAGMA busy_timeout = 5000")
            # NORMAL is durable in WAL mode across process crashes (kill -9); only an OS crash
            # can lose the last commits, and devices keep events until the broker's PUBACK.
            db.execute("PRAGMA synchronous = NORMAL")
            self._local.db = db
        return db

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        conn = self.db.conn
        with conn:
            cursor = conn.execute(sql, tuple(params))
            if cursor.description is None:
                return []
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def _executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> int:
        conn = self.db.conn
        before = conn.total_changes
        with conn:
            conn.executemany(sql, rows)
        return conn.total_changes - before


class PostgresStore(Store):
    """PostgreSQL through psycopg 3; one connection per thread, shared by gateway workers."""

    dialect = "postgresql"
    real_type = "DOUBLE PRECISION"
    serial_type = "BIGSERIAL PRIMARY KEY"

    def __init__(self, url: str) -> None:
        import psycopg

        self._psycopg = psycopg
        self.url = url
        self._local = threading.local()
        with self._conn().transaction():
            # Several gateway workers may start at once: serialise their migrations.
            self._conn().execute("SELECT pg_advisory_xact_lock(4242)")
            self._migrate()

    def _conn(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = self._psycopg.connect(self.url, autocommit=True)
            self._local.conn = conn
        return conn

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cursor = self._conn().execute(sql.replace("?", "%s"), tuple(params))
        if cursor.description is None:
            return []
        names = [d.name for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def _executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> int:
        conn = self._conn()
        with conn.transaction(), conn.cursor() as cursor:
            cursor.executemany(sql.replace("?", "%s"), rows)
            return max(cursor.rowcount, 0)


def open_store(location: str | Path) -> Store:
    """A store for ``location``: a ``postgresql://`` URL, or a SQLite file path."""
    text = str(location)
    if text.startswith(("postgresql://", "postgres://")):
        return PostgresStore(text)
    if text.startswith("sqlite:///"):
        text = text[len("sqlite:///"):]
    return SqliteStore(Path(text))
