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
import operator
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from gerbang.wire import AlarmEvent, CheckinEvent

EVENT_COLUMNS = ("event_id", "device_id", "centre", "room", "session", "seq", "ts", "outcome",
                 "reason", "applicant_id", "score", "latency_ms", "frame_ref", "card_id", "mode")
_event_row = operator.attrgetter(*EVENT_COLUMNS)

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
    (2, "attendance model: exam sessions, rosters, users, overrides, audit, alarms", """
        CREATE TABLE exam_sessions (
            session_id TEXT PRIMARY KEY, centre TEXT NOT NULL, name TEXT NOT NULL,
            doors_open TEXT NOT NULL, starts_at TEXT NOT NULL, doors_close TEXT NOT NULL);
        CREATE TABLE roster (
            session_id TEXT NOT NULL, applicant_id TEXT NOT NULL, name TEXT NOT NULL,
            room TEXT NOT NULL, seat TEXT, PRIMARY KEY (session_id, applicant_id));
        CREATE INDEX roster_room ON roster (session_id, room);
        CREATE INDEX events_session_applicant ON events (session, applicant_id);
        CREATE TABLE users (
            username TEXT PRIMARY KEY, password_hash TEXT NOT NULL, role TEXT NOT NULL,
            created_at {real} NOT NULL);
        CREATE TABLE auth_tokens (
            token_sha256 TEXT PRIMARY KEY, username TEXT NOT NULL, expires_at {real} NOT NULL);
        CREATE TABLE overrides (
            id {serial}, ts TEXT NOT NULL, session_id TEXT NOT NULL, room TEXT,
            applicant_id TEXT, device_id TEXT, action TEXT NOT NULL, reason TEXT NOT NULL,
            username TEXT NOT NULL);
        CREATE TABLE audit (
            id {serial}, ts TEXT NOT NULL, username TEXT NOT NULL, action TEXT NOT NULL,
            target TEXT, detail TEXT);
        CREATE TABLE alarms (
            alarm_id TEXT PRIMARY KEY, device_id TEXT NOT NULL, centre TEXT NOT NULL,
            alarm TEXT NOT NULL, ts TEXT NOT NULL, detail TEXT, received_at {real} NOT NULL);
        CREATE TABLE alert_acks (
            alert_key TEXT PRIMARY KEY, username TEXT NOT NULL, ts TEXT NOT NULL, note TEXT);
        ALTER TABLE devices ADD COLUMN telemetry TEXT;
        ALTER TABLE devices ADD COLUMN telemetry_at {real};
    """),
    (3, "alarms carry the device seq they share with events", """
        ALTER TABLE alarms ADD COLUMN seq BIGINT;
    """),
    (4, "gate commands queued by the web tier, ingest counters per ingest process", """
        CREATE TABLE gateway_commands (
            id {serial}, created_at {real} NOT NULL, centre TEXT NOT NULL,
            device_id TEXT NOT NULL, name TEXT NOT NULL, payload TEXT NOT NULL,
            requested_by TEXT, sent_at {real}, error TEXT);
        CREATE INDEX gateway_commands_unsent ON gateway_commands (sent_at, id);
        CREATE TABLE ingest_counters (
            client_id TEXT PRIMARY KEY, updated_at {real} NOT NULL, received BIGINT NOT NULL,
            stored BIGINT NOT NULL, duplicates BIGINT NOT NULL, rejected BIGINT NOT NULL);
    """),
    # ---- web tier (helper "web"): 7-8 ----------------------------------------------------------
    (7, "login lock-outs per username and client address; accounts can be disabled", """
        CREATE TABLE login_throttle (
            scope TEXT NOT NULL, key TEXT NOT NULL, failures INTEGER NOT NULL,
            window_start {real} NOT NULL, locked_until {real},
            PRIMARY KEY (scope, key));
        ALTER TABLE users ADD COLUMN disabled_at {real};
        ALTER TABLE users ADD COLUMN disabled_by TEXT;
    """),
    (8, "room scopes of accounts (proctors act only on their rooms)", """
        CREATE TABLE user_rooms (
            username TEXT NOT NULL, session TEXT NOT NULL, room TEXT NOT NULL,
            PRIMARY KEY (username, session, room));
        INSERT INTO user_rooms (username, session, room)
            SELECT username, '*', '*' FROM users WHERE role <> 'manager';
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

    def _transaction(self, steps: list[tuple[str, list[tuple[Any, ...]]]]) -> None:
        """Run several ``(sql, rows)`` steps in one transaction."""
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
        rows = [(*_event_row(e), now) for e in events]
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

    def record_alarms(self, alarms: Iterable[AlarmEvent]) -> int:
        """Store alarms not seen before (redeliveries change nothing); returns how many new."""
        now = time.time()
        rows = [(a.alarm_id, a.device_id, a.centre, a.seq, a.alarm, a.ts, a.detail, now)
                for a in alarms]
        if not rows:
            return 0
        return self._executemany(
            "INSERT INTO alarms (alarm_id, device_id, centre, seq, alarm, ts, detail, "
            "received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (alarm_id) DO NOTHING",
            rows)

    def record_telemetry(self, device_id: str, centre: str, telemetry: dict[str, Any]) -> None:
        """Keep only a device's latest telemetry (history belongs in a metrics system)."""
        self._executemany(
            "INSERT INTO devices (device_id, centre, state, telemetry, telemetry_at) "
            "VALUES (?, ?, 'unknown', ?, ?) ON CONFLICT (device_id) DO UPDATE SET "
            "telemetry = excluded.telemetry, telemetry_at = excluded.telemetry_at",
            [(device_id, centre, json.dumps(telemetry)[:4000], time.time())])

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
        """Refused messages, oldest first (``ts`` is when they arrived, ISO 8601 UTC)."""
        from datetime import UTC, datetime

        return [{**r, "ts": datetime.fromtimestamp(r["received_at"], UTC).isoformat(
                    timespec="milliseconds").replace("+00:00", "Z")}
                for r in self._execute("SELECT id, topic, error, received_at FROM rejects "
                                       "ORDER BY id")]

    def change_token(self) -> tuple[Any, ...]:
        """Cheap fingerprint of everything the live pages show: it changes when they must."""
        (row,) = self._execute(
            "SELECT (SELECT count(*) FROM events) AS e, (SELECT count(*) FROM rejects) AS r, "
            "(SELECT count(*) FROM alarms) AS a, (SELECT count(*) FROM alert_acks) AS k, "
            "(SELECT max(id) FROM overrides) AS o, (SELECT count(*) FROM roster) AS n, "
            "(SELECT max(last_seen) FROM devices) AS d, (SELECT max(telemetry_at) FROM devices) "
            "AS t, (SELECT count(*) FROM exam_sessions) AS s")
        return tuple(row.values())

    def devices(self) -> list[dict[str, Any]]:
        """Known devices, their last status (birth / last will) and latest telemetry."""
        return [{**r, "status": json.loads(r["status"] or "{}"),
                 "telemetry": json.loads(r["telemetry"] or "{}")}
                for r in self._execute("SELECT * FROM devices ORDER BY device_id")]

    # ---- attendance model -------------------------------------------------------------------

    def upsert_session(self, session: dict[str, Any]) -> None:
        """Create or update an exam session (``session_id``, centre, name, times)."""
        self._executemany(
            "INSERT INTO exam_sessions (session_id, centre, name, doors_open, starts_at, "
            "doors_close) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (session_id) DO UPDATE SET "
            "centre = excluded.centre, name = excluded.name, doors_open = excluded.doors_open, "
            "starts_at = excluded.starts_at, doors_close = excluded.doors_close",
            [tuple(session[k] for k in ("session_id", "centre", "name", "doors_open",
                                        "starts_at", "doors_close"))])

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
        ])
        return len(entries)

    def roster(self, session_id: str, room: str | None = None) -> list[dict[str, Any]]:
        """A session's roster (one room's, with ``room``), by room and seat."""
        if room is None:
            return self._execute("SELECT * FROM roster WHERE session_id = ? "
                                 "ORDER BY room, seat, applicant_id", (session_id,))
        return self._execute("SELECT * FROM roster WHERE session_id = ? AND room = ? "
                             "ORDER BY seat, applicant_id", (session_id, room))

    def session_events(self, session_id: str) -> list[dict[str, Any]]:
        """A session's check-in events in time order (what attendance is derived from)."""
        return self._execute(
            "SELECT event_id, device_id, room, seq, ts, outcome, reason, applicant_id, card_id, "
            "mode, score, latency_ms FROM events WHERE session = ? ORDER BY ts, device_id, seq",
            (session_id,))

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

    def audit(self, username: str, action: str, target: str | None = None,
              detail: dict[str, Any] | None = None) -> None:
        """Append to the audit log: who did what to what (every write through the API)."""
        from gerbang.wire import utc_now_iso

        self._executemany(
            "INSERT INTO audit (ts, username, action, target, detail) VALUES (?, ?, ?, ?, ?)",
            [(utc_now_iso(), username, action, target,
              json.dumps(detail, sort_keys=True) if detail else None)])

    def audit_log(self, limit: int = 10_000) -> list[dict[str, Any]]:
        """The audit log, oldest first."""
        return self._execute("SELECT * FROM audit ORDER BY id LIMIT ?", (limit,))

    def alarms(self, limit: int = 500) -> list[dict[str, Any]]:
        """Device alarms, newest first."""
        return self._execute("SELECT * FROM alarms ORDER BY ts DESC LIMIT ?", (limit,))

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

    # ---- users and login tokens -------------------------------------------------------------

    def put_user(self, username: str, password_hash: str, role: str) -> None:
        """Create a user or reset their password and role; every login token of the user ends
        in the same transaction (a reset password must not leave an old session working)."""
        self._transaction([
            ("INSERT INTO users (username, password_hash, role, created_at) "
             "VALUES (?, ?, ?, ?) ON CONFLICT (username) DO UPDATE SET "
             "password_hash = excluded.password_hash, role = excluded.role",
             [(username, password_hash, role, time.time())]),
            ("DELETE FROM auth_tokens WHERE username = ?", [(username,)]),
        ])

    def user(self, username: str) -> dict[str, Any] | None:
        """One user (with the password hash), or None."""
        rows = self._execute("SELECT * FROM users WHERE username = ?", (username,))
        return rows[0] if rows else None

    def users(self) -> list[dict[str, Any]]:
        """Every user without password hashes."""
        rooms = self.all_user_rooms()
        return [{**r, "rooms": rooms.get(r["username"], [])} for r in self._execute(
            "SELECT username, role, created_at, disabled_at, disabled_by FROM users "
            "ORDER BY username")]

    def put_token(self, token_sha256: str, username: str, expires_at: float) -> None:
        """Remember a login (only the token's hash is stored)."""
        self._executemany("INSERT INTO auth_tokens (token_sha256, username, expires_at) "
                          "VALUES (?, ?, ?)", [(token_sha256, username, expires_at)])

    def token_user(self, token_sha256: str) -> dict[str, Any] | None:
        """The user a live token belongs to, or None (unknown or expired)."""
        rows = self._execute(
            "SELECT u.username, u.role FROM auth_tokens t JOIN users u "
            "ON u.username = t.username WHERE t.token_sha256 = ? AND t.expires_at > ? "
            "AND u.disabled_at IS NULL", (token_sha256, time.time()))
        return rows[0] if rows else None

    def drop_token(self, token_sha256: str) -> None:
        """Log out."""
        self._executemany("DELETE FROM auth_tokens WHERE token_sha256 = ?", [(token_sha256,)])

    # ---- accounts, room scopes and login lock-outs (web tier, migrations 7-8) ----------------

    def set_user_disabled(self, username: str, disabled: bool, by: str) -> bool:
        """Disable (every token ends at once) or re-enable an account; False if no such user."""
        if disabled:
            steps: list[tuple[str, list[tuple[Any, ...]]]] = [
                ("UPDATE users SET disabled_at = ?, disabled_by = ? WHERE username = ?",
                 [(time.time(), by, username)]),
                ("DELETE FROM auth_tokens WHERE username = ?", [(username,)])]
        else:
            steps = [("UPDATE users SET disabled_at = NULL, disabled_by = NULL "
                      "WHERE username = ?", [(username,)])]
        if self.user(username) is None:
            return False
        self._transaction(steps)
        return True

    def set_user_rooms(self, username: str, rooms: Sequence[tuple[str, str]]) -> None:
        """Make ``rooms`` (``(session or '*', room or '*')`` pairs) the account's whole scope."""
        self._transaction([
            ("DELETE FROM user_rooms WHERE username = ?", [(username,)]),
            ("INSERT INTO user_rooms (username, session, room) VALUES (?, ?, ?)",
             [(username, session, room) for session, room in sorted(set(rooms))]),
        ])

    def user_rooms(self, username: str) -> list[tuple[str, str]]:
        """The account's scope as ``(session, room)`` pairs, ``'*'`` meaning any."""
        return [(r["session"], r["room"]) for r in self._execute(
            "SELECT session, room FROM user_rooms WHERE username = ? ORDER BY session, room",
            (username,))]

    def all_user_rooms(self) -> dict[str, list[str]]:
        """Every account's scope as ``SESSION/ROOM`` strings (``*`` = any), by username."""
        out: dict[str, list[str]] = {}
        for r in self._execute("SELECT username, session, room FROM user_rooms "
                               "ORDER BY username, session, room"):
            out.setdefault(r["username"], []).append(
                r["room"] if r["session"] == "*" else f"{r['session']}/{r['room']}")
        return out

    def login_locked_until(self, scope: str, key: str, now: float) -> float | None:
        """When the lock-out of a username (``scope`` 'user') or client address ('address')
        ends, or None if it is not locked out."""
        rows = self._execute("SELECT locked_until FROM login_throttle WHERE scope = ? AND "
                             "key = ? AND locked_until > ?", (scope, key, now))
        return float(rows[0]["locked_until"]) if rows else None

    def record_login_failure(self, scope: str, key: str, now: float, window_s: float,
                             lock_after: int, lockout_s: float) -> tuple[int, float | None]:
        """Count a failed login in one atomic upsert (several web processes may count at
        once): a failure older than ``window_s`` starts the count again, the ``lock_after``-th
        locks the key for ``lockout_s``. Returns ``(failures, locked_until or None)``."""
        fresh = "login_throttle.window_start <= ?"  # the window has run out: count from 1
        self._executemany(
            "INSERT INTO login_throttle (scope, key, failures, window_start, locked_until) "
            "VALUES (?, ?, 1, ?, CASE WHEN ? <= 1 THEN ? END) "
            "ON CONFLICT (scope, key) DO UPDATE SET "
            f"failures = CASE WHEN {fresh} THEN 1 ELSE login_throttle.failures + 1 END, "
            f"window_start = CASE WHEN {fresh} THEN ? ELSE login_throttle.window_start END, "
            f"locked_until = CASE WHEN (CASE WHEN {fresh} THEN 1 "
            "ELSE login_throttle.failures + 1 END) >= ? THEN ? "
            "ELSE login_throttle.locked_until END",
            [(scope, key, now, lock_after, now + lockout_s,
              now - window_s, now - window_s, now, now - window_s, lock_after,
              now + lockout_s)])
        (row,) = self._execute("SELECT failures, locked_until FROM login_throttle "
                               "WHERE scope = ? AND key = ?", (scope, key))
        until = row["locked_until"]
        return int(row["failures"]), (float(until) if until is not None and until > now
                                      else None)

    def clear_login_failures(self, scope: str, key: str) -> bool:
        """Forget a key's failures and lock-out (a successful login, a manager's unlock)."""
        return self._executemany("DELETE FROM login_throttle WHERE scope = ? AND key = ?",
                                 [(scope, key)]) > 0

    def purge_login_throttle(self, now: float, window_s: float) -> int:
        """Drop counts whose window and lock-out are both over (keeps the table small when
        addresses keep changing)."""
        return self._executemany(
            "DELETE FROM login_throttle WHERE window_start <= ? AND "
            "(locked_until IS NULL OR locked_until <= ?)", [(now - window_s, now)])

    # ---- gate commands and ingest counters (web tier <-> ingest processes) ------------------

    def queue_command(self, centre: str, device_id: str, name: str, payload: dict[str, Any],
                      requested_by: str | None = None) -> None:
        """Queue a command for a gate; the ingest process publishes it (the web tier has no
        broker connection of its own: under mutual TLS its identity would be the gateway's,
        and a second connection with it would take over the ingest's session)."""
        self._executemany(
            "INSERT INTO gateway_commands (created_at, centre, device_id, name, payload, "
            "requested_by) VALUES (?, ?, ?, ?, ?, ?)",
            [(time.time(), centre, device_id, name, json.dumps(payload, sort_keys=True),
              requested_by)])

    def unsent_commands(self, limit: int = 100) -> list[dict[str, Any]]:
        """Queued commands not published yet, oldest first (``payload`` decoded)."""
        return [{**r, "payload": json.loads(r["payload"])} for r in self._execute(
            "SELECT id, created_at, centre, device_id, name, payload, requested_by "
            "FROM gateway_commands WHERE sent_at IS NULL ORDER BY id LIMIT ?", (limit,))]

    def mark_command_sent(self, command_id: int, error: str | None = None) -> None:
        """Record that a queued command was published (or, with ``error``, given up)."""
        self._executemany("UPDATE gateway_commands SET sent_at = ?, error = ? WHERE id = ?",
                          [(time.time(), error, command_id)])

    def commands_log(self, limit: int = 200) -> list[dict[str, Any]]:
        """Queued and sent commands, newest first."""
        return self._execute("SELECT id, created_at, centre, device_id, name, requested_by, "
                             "sent_at, error FROM gateway_commands ORDER BY id DESC LIMIT ?",
                             (limit,))

    def record_ingest_counters(self, client_id: str, counters: dict[str, int]) -> None:
        """One ingest process's counters since its start (for /api/stats)."""
        self._executemany(
            "INSERT INTO ingest_counters (client_id, updated_at, received, stored, duplicates, "
            "rejected) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (client_id) DO UPDATE SET "
            "updated_at = excluded.updated_at, received = excluded.received, "
            "stored = excluded.stored, duplicates = excluded.duplicates, "
            "rejected = excluded.rejected",
            [(client_id, time.time(), *(int(counters.get(k, 0)) for k in (
                "received", "stored", "duplicates", "rejected")))])

    def ingest_counters(self) -> list[dict[str, Any]]:
        """Every ingest process's latest counters."""
        return self._execute("SELECT * FROM ingest_counters ORDER BY client_id")

    # ---- retention --------------------------------------------------------------------------

    def purge_biometric(self, older_than_s: float) -> int:
        """Blank match scores and frame references of events received more than
        ``older_than_s`` ago; the attendance facts (who, where, when, outcome) stay."""
        cutoff = time.time() - older_than_s
        return self._executemany(
            "UPDATE events SET score = NULL, frame_ref = NULL WHERE received_at < ? "
            "AND (score IS NOT NULL OR frame_ref IS NOT NULL)", [(cutoff,)])

    def counts(self) -> dict[str, int]:
        """Totals for monitoring: events stored and messages rejected."""
        (events,) = self._execute("SELECT count(*) AS n FROM events")
        (rejects,) = self._execute("SELECT count(*) AS n FROM rejects")
        return {"events": int(events["n"]), "rejected": int(rejects["n"])}


class SqliteStore(Store):
    """SQLite in WAL mode through sqlite-utils; one connection per thread.

    Several processes may write to one file (``ingest_workers`` > 1). SQLite lets one write
    at a time: each write transaction takes the write lock when it begins (``BEGIN
    IMMEDIATE``) and waits up to ``busy_timeout`` for it. Readers never block the writer in
    WAL mode. Should a wait ever run out, the ingest retries the batch, unacknowledged.
    """

    dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        import sqlite_utils

        self._sqlite_utils = sqlite_utils
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._enable_wal()
        self._migrate()

    def _enable_wal(self) -> None:
        """Switch a new file to WAL. Switching takes an exclusive lock, and SQLite answers
        "database is locked" at once (not after busy_timeout) when another process opening the
        same new file holds it, so wait for it here (seen with six workers starting at once)."""
        import sqlite3

        deadline = time.monotonic() + self.busy_timeout_ms / 1000
        while True:
            try:
                self.db.enable_wal()
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    @property
    def db(self) -> Any:
        """This thread's sqlite-utils Database (sqlite3 connections must not cross threads)."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._sqlite_utils.Database(self.path)
            db.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms}")
            # NORMAL is durable in WAL mode across process crashes (kill -9); only an OS crash
            # can lose the last commits, and devices keep events until the broker's PUBACK.
            db.execute("PRAGMA synchronous = NORMAL")
            # Writes begin with BEGIN IMMEDIATE: a transaction that read first and then tried
            # to write could fail at once with SQLITE_BUSY when another process wrote in
            # between; taking the lock up front makes it wait (busy_timeout) instead.
            db.conn.isolation_level = "IMMEDIATE"
            self._local.db = db
        return db

    #: How long a write waits for another process's transaction before SQLITE_BUSY.
    busy_timeout_ms = 5000

    def _migrate(self) -> None:
        # Several workers may open a new file at the same moment: the first takes the write
        # lock and migrates, the others wait for it and then find nothing left to do.
        conn = self.db.conn
        conn.execute("BEGIN IMMEDIATE")
        self._local.in_migration = True
        try:
            super()._migrate()
        except BaseException:
            conn.rollback()
            raise
        else:
            conn.commit()
        finally:
            self._local.in_migration = False

    @staticmethod
    def _rows(cursor: Any) -> list[dict[str, Any]]:
        if cursor.description is None:
            return []
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        conn = self.db.conn
        if getattr(self._local, "in_migration", False):  # inside _migrate's transaction
            return self._rows(conn.execute(sql, tuple(params)))
        with conn:
            return self._rows(conn.execute(sql, tuple(params)))

    def _executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> int:
        conn = self.db.conn
        before = conn.total_changes
        with conn:
            conn.executemany(sql, rows)
        return conn.total_changes - before

    def _transaction(self, steps: list[tuple[str, list[tuple[Any, ...]]]]) -> None:
        conn = self.db.conn
        with conn:
            for sql, rows in steps:
                conn.executemany(sql, rows)


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

    def _transaction(self, steps: list[tuple[str, list[tuple[Any, ...]]]]) -> None:
        conn = self._conn()
        with conn.transaction(), conn.cursor() as cursor:
            for sql, rows in steps:
                if rows:
                    cursor.executemany(sql.replace("?", "%s"), rows)


def open_store(location: str | Path) -> Store:
    """A store for ``location``: a ``postgresql://`` URL, or a SQLite file path."""
    text = str(location)
    if text.startswith(("postgresql://", "postgres://")):
        return PostgresStore(text)
    if text.startswith("sqlite:///"):
        text = text[len("sqlite:///"):]
    return SqliteStore(Path(text))
