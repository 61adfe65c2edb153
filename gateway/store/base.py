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
import re
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from gerbang.wire import ID_PATTERN, TOPIC_ROOT, AlarmEvent, CheckinEvent

EVENT_COLUMNS = ("event_id", "device_id", "centre", "room", "session", "seq", "ts", "outcome",
                 "reason", "applicant_id", "score", "latency_ms", "frame_ref", "card_id", "mode")
_event_row = operator.attrgetter(*EVENT_COLUMNS)
#: What ``insert_events`` writes per event: the wire fields, the outbox stream (``""`` for a
#: gate older than streams), the admission verdict (NULL = admitted) and the receive time.
_INSERT_COLUMNS = (*EVENT_COLUMNS, "stream", "admission", "received_at")
#: How many raw rejected messages are kept as a sample (the counts per device, topic leaf and
#: error kind are kept in ``reject_counts``, without bound on the count and in a bounded table).
REJECT_SAMPLE = 1000
#: Topic leaves a reject is filed under; anything else is filed as ``other`` (a hostile topic
#: must not create rows of its own).
_REJECT_LEAVES = ("events", "status", "alarms", "telemetry", "cmd_ack")

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
    (5, "outbox streams and seq gaps, admission of events, device assignments", """
        ALTER TABLE events ADD COLUMN stream TEXT NOT NULL DEFAULT '';
        ALTER TABLE events ADD COLUMN admission TEXT;
        DROP INDEX events_device_seq;
        CREATE INDEX events_device_stream_seq ON events (device_id, stream, seq);
        CREATE INDEX events_refused ON events (admission) WHERE admission IS NOT NULL;
        ALTER TABLE alarms ADD COLUMN stream TEXT NOT NULL DEFAULT '';
        CREATE INDEX alarms_device_stream_seq ON alarms (device_id, stream, seq);
        CREATE TABLE device_assignments (
            device_id TEXT PRIMARY KEY, centre TEXT NOT NULL, room TEXT NOT NULL,
            session TEXT, assigned_by TEXT NOT NULL, assigned_at {real} NOT NULL);
        CREATE TABLE gateway_meta (name TEXT PRIMARY KEY, value BIGINT NOT NULL);
        INSERT INTO gateway_meta (name, value) VALUES ('admission_config', 0);
        CREATE TABLE seq_streams (
            device_id TEXT NOT NULL, stream TEXT NOT NULL, centre TEXT NOT NULL,
            first_seen_at {real} NOT NULL, first_seq BIGINT, start_seq BIGINT,
            contiguous_below BIGINT, top BIGINT, top_changed_at {real}, above_count BIGINT,
            reported_next_seq BIGINT, reported_acked_below BIGINT, reported_at {real},
            missing TEXT NOT NULL DEFAULT '[]', not_kept TEXT NOT NULL DEFAULT '[]',
            alerted_since {real}, resends BIGINT NOT NULL DEFAULT 0,
            replaced_from TEXT, replaced_checked BIGINT NOT NULL DEFAULT 0, closed_at {real},
            updated_at {real}, PRIMARY KEY (device_id, stream));
        CREATE TABLE resend_requests (
            id {serial}, device_id TEXT NOT NULL, centre TEXT NOT NULL, stream TEXT NOT NULL,
            from_seq BIGINT NOT NULL, to_seq BIGINT NOT NULL, requested_at {real} NOT NULL,
            acked_at {real}, ok BIGINT, detail TEXT, not_kept BIGINT,
            handled BIGINT NOT NULL DEFAULT 0);
        CREATE INDEX resend_requests_stream ON resend_requests (device_id, stream, requested_at)
    """),
    (6, "rejected messages counted per device, leaf and kind; event id conflicts", """
        CREATE TABLE reject_counts (
            id {serial}, device_id TEXT NOT NULL, leaf TEXT NOT NULL, kind TEXT NOT NULL,
            count BIGINT NOT NULL, first_at {real} NOT NULL, last_at {real} NOT NULL,
            last_error TEXT, UNIQUE (device_id, leaf, kind));
        INSERT INTO reject_counts (device_id, leaf, kind, count, first_at, last_at, last_error)
            SELECT '', 'other', 'rejected before counting', n, f, l, e FROM (
                SELECT count(*) AS n, min(received_at) AS f, max(received_at) AS l,
                       max(error) AS e FROM rejects) AS old WHERE n > 0;
        DELETE FROM rejects WHERE id <= (SELECT max(id) FROM rejects) - 1000;
        CREATE TABLE event_conflicts (
            event_id TEXT PRIMARY KEY, device_id TEXT NOT NULL, fields TEXT NOT NULL,
            count BIGINT NOT NULL, first_at {real} NOT NULL, last_at {real} NOT NULL)
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
    (9, "ingest counters count events refused at admission", """
        ALTER TABLE ingest_counters ADD COLUMN refused BIGINT NOT NULL DEFAULT 0;
    """),
]

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


def reject_key(topic: str, error: str) -> tuple[str, str, str]:
    """``(device, topic leaf, error kind)`` a refused message is counted under.

    The kind is the error's stable part: what precedes its first ``:`` (the field name, e.g.
    ``seq``) or ``got``, with digits blanked, so "payload is 20000 bytes" and "payload is 17000
    bytes" count as one kind and a hostile value never makes a kind of its own."""
    device, leaf = "", "other"
    parts = topic.split("/")
    if len(parts) >= 5 and "/".join(parts[:2]) == TOPIC_ROOT and ID_PATTERN.match(parts[3]):
        device = parts[3]
        leaf = parts[4] if len(parts) == 5 and parts[4] in _REJECT_LEAVES else "other"
    head = re.split(r":| got |, ", error, maxsplit=1)[0]
    kind = re.sub(r"\d+", "#", head).strip()[:80] or "unknown"
    return device, leaf, kind


def _iso(epoch: float | None) -> str:
    """An epoch time as the contract's ISO 8601 UTC text ("" for None)."""
    from datetime import UTC, datetime

    if epoch is None:
        return ""
    return datetime.fromtimestamp(float(epoch), UTC).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


def _same_value(sent: Any, stored: Any) -> bool:
    """Whether a field of a redelivered event equals the stored one (numbers compare as
    numbers: SQLite may hand back 40 for 40.0)."""
    if isinstance(sent, int | float) and isinstance(stored, int | float):
        return float(sent) == float(stored)
    return sent == stored


def _valid_json(text: str | None, what: str) -> dict[str, Any]:
    """A stored status or telemetry document as the wire contract accepts it: ``{}`` when it
    is not JSON (truncated by an older gateway), and only the valid fields otherwise. Pages
    render these on every refresh, so they must never raise."""
    from gerbang import wire

    if not text:
        return {}
    try:
        return (wire.parse_status if what == "status" else wire.parse_telemetry)(text)
    except (wire.WireError, ValueError, TypeError):
        pass
    try:  # an old row: keep what each field's validation accepts on its own
        data = json.loads(text)
    except (ValueError, RecursionError):
        return {"invalid": True}
    if not isinstance(data, dict):
        return {"invalid": True}
    parse = wire.parse_status if what == "status" else wire.parse_telemetry
    kept: dict[str, Any] = {"invalid": True}
    base = {"state": data.get("state")} if what == "status" else {}
    for key, value in list(data.items())[:64]:
        if key in ("schema", "state"):
            continue
        try:
            kept.update({k: v for k, v in parse(json.dumps({**base, key: value})).items()
                         if k not in ("schema",)})
        except (wire.WireError, ValueError, TypeError, RecursionError):
            continue
    if what == "status" and isinstance(data.get("state"), str) and data["state"] in (
            "online", "offline"):
        kept["state"] = data["state"]
    return kept


def _stream_view(row: dict[str, Any]) -> dict[str, Any]:
    """One outbox stream as the devices page and ``/api/devices`` show it."""
    contiguous = row["contiguous_below"]
    return {"stream": row["stream"], "first_seq": row["first_seq"],
            "contiguous_seq": None if contiguous is None else int(contiguous) - 1,
            "top_seq": row["top"], "acked_below": row["reported_acked_below"],
            "missing": [[int(a), int(b)] for a, b, *_ in row["missing"]],
            "not_kept": [[int(a), int(b)] for a, b in row["not_kept"]],
            "resends": int(row["resends"] or 0), "replaced_from": row["replaced_from"],
            "closed": row["closed_at"] is not None}


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

    def record_status(self, device_id: str, centre: str, status: dict[str, Any]) -> None:
        """Remember a device's latest birth/last-will message (as ``wire.parse_status``
        returned it: the ingest stores nothing else)."""
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
        rows = [(a.alarm_id, a.device_id, a.centre, a.seq, a.stream or "", a.alarm, a.ts,
                 a.detail, now) for a in alarms]
        if not rows:
            return 0
        return self._executemany(
            "INSERT INTO alarms (alarm_id, device_id, centre, seq, stream, alarm, ts, detail, "
            "received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (alarm_id) DO NOTHING",
            rows)

    def record_telemetry(self, device_id: str, centre: str, telemetry: dict[str, Any]) -> None:
        """Keep only a device's latest telemetry (history belongs in a metrics system). Whole
        JSON only (``wire.parse_telemetry`` bounds it): a truncated document would break every
        page that shows the device."""
        self._executemany(
            "INSERT INTO devices (device_id, centre, state, telemetry, telemetry_at) "
            "VALUES (?, ?, 'unknown', ?, ?) ON CONFLICT (device_id) DO UPDATE SET "
            "telemetry = excluded.telemetry, telemetry_at = excluded.telemetry_at",
            [(device_id, centre, json.dumps(telemetry), time.time())])

    def record_reject(self, topic: str, error: str) -> None:
        """Count one refused message (see ``record_rejects``) and keep it as a sample."""
        device, leaf, kind = reject_key(topic, error)
        now = time.time()
        self.record_rejects([(device, leaf, kind, 1, now, now, error)], [(topic, error, now)])

    def record_rejects(self, counts: Sequence[tuple[str, str, str, int, float, float, str]],
                       samples: Sequence[tuple[str, str, float]] = ()) -> None:
        """Add refused messages to the counts per ``(device, topic leaf, error kind)``
        (``(device, leaf, kind, count, first_at, last_at, last error)`` rows), and keep
        ``samples`` (``(topic, error, received_at)``) as the newest of a bounded sample of raw
        rejects. Never the payload: it may be hostile or huge. One junk message costs a counter
        update, not a row, so a gate cannot grow the store or slow the pages with them."""
        steps: list[tuple[str, list[tuple[Any, ...]]]] = [(
            "INSERT INTO reject_counts (device_id, leaf, kind, count, first_at, last_at, "
            "last_error) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device_id, leaf, kind) "
            "DO UPDATE SET count = reject_counts.count + excluded.count, "
            "last_at = excluded.last_at, last_error = excluded.last_error",
            [(d, leaf, kind[:80], int(n), first, last, error[:300])
             for d, leaf, kind, n, first, last, error in counts])]
        if samples:
            steps.append(("INSERT INTO rejects (received_at, topic, error) VALUES (?, ?, ?)",
                          [(at, topic[:200], error[:300]) for topic, error, at in samples]))
            steps.append(("DELETE FROM rejects WHERE id <= (SELECT max(id) FROM rejects) - ?",
                          [(REJECT_SAMPLE,)]))
        self._transaction(steps)

    def reject_counts(self) -> list[dict[str, Any]]:
        """Refused messages counted per device, topic leaf and error kind, latest first."""
        return self._execute("SELECT * FROM reject_counts ORDER BY last_at DESC, id")

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

    def rejects(self) -> list[dict[str, Any]]:
        """The sample of refused messages (the newest ``REJECT_SAMPLE``), oldest first (``ts``
        is when they arrived, ISO 8601 UTC). The counts are in ``reject_counts``."""
        return [{**r, "ts": _iso(r["received_at"])}
                for r in self._execute("SELECT id, topic, error, received_at FROM rejects "
                                       "ORDER BY id")]

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

    def devices(self) -> list[dict[str, Any]]:
        """Known devices, their last status (birth / last will), latest telemetry, and their
        outbox streams (``streams``: contiguous seq and missing ranges, from seq_streams).

        Rendered on every page, so read defensively: a row written by an older gateway (a
        truncated telemetry document, a status with a number for ``ts``) is shown as what
        ``wire.parse_status`` / ``wire.parse_telemetry`` still accept, never as a 500."""
        streams: dict[str, list[dict[str, Any]]] = {}
        for s in self.seq_streams():
            streams.setdefault(s["device_id"], []).append(_stream_view(s))
        return [{**r, "status": _valid_json(r["status"], "status"),
                 "telemetry": _valid_json(r["telemetry"], "telemetry"),
                 "streams": streams.get(r["device_id"], [])}
                for r in self._execute("SELECT * FROM devices ORDER BY device_id")]

    def device_states(self) -> dict[str, dict[str, Any]]:
        """``{device_id: {state, last_seen, centre}}`` without decoding status documents."""
        return {r["device_id"]: r for r in self._execute(
            "SELECT device_id, centre, state, last_seen FROM devices")}

    def device_outboxes(self) -> list[dict[str, Any]]:
        """The outbox position each device last reported (birth and telemetry), validated:
        ``{device_id, centre, status_outbox, telemetry_outbox}`` (None where absent)."""
        out = []
        for r in self._execute("SELECT device_id, centre, status, telemetry FROM devices"):
            status = _valid_json(r["status"], "status")
            telemetry = _valid_json(r["telemetry"], "telemetry")
            out.append({"device_id": r["device_id"], "centre": r["centre"],
                        "status_outbox": status.get("outbox"),
                        "telemetry_outbox": telemetry.get("outbox")})
        return out

    # ---- device assignments and admission ---------------------------------------------------

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

    # ---- outbox streams and seq gaps (gateway/seqwatch.py) ----------------------------------

    def register_streams(self, streams: Iterable[tuple[str, str, str]]) -> None:
        """Remember ``(device_id, stream, centre)`` outbox streams not seen before."""
        now = time.time()
        rows = [(d, s, c, now, now) for d, s, c in streams]
        if rows:
            self._executemany(
                "INSERT INTO seq_streams (device_id, stream, centre, first_seen_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (device_id, stream) DO NOTHING", rows)

    def seq_streams(self) -> list[dict[str, Any]]:
        """Every known outbox stream with its gap state (``missing`` / ``not_kept`` decoded)."""
        return [{**r, "missing": json.loads(r["missing"] or "[]"),
                 "not_kept": json.loads(r["not_kept"] or "[]")}
                for r in self._execute("SELECT * FROM seq_streams ORDER BY device_id, "
                                       "first_seen_at, stream")]

    def update_seq_stream(self, device_id: str, stream: str, fields: dict[str, Any]) -> None:
        """Write some columns of one stream's row (lists are stored as JSON)."""
        names = sorted(fields)
        values = [json.dumps(fields[n]) if isinstance(fields[n], list) else fields[n]
                  for n in names]
        self._executemany(
            f"UPDATE seq_streams SET {', '.join(f'{n} = ?' for n in names)}, updated_at = ? "
            "WHERE device_id = ? AND stream = ?",
            [(*values, time.time(), device_id, stream)])

    def stream_activity(self) -> list[dict[str, Any]]:
        """Per stream still watched: the highest stored seq and how many stored seqs lie at or
        above its contiguous mark, events and alarms apart. Index probes only, so it can run
        every few seconds whatever the size of the events table."""
        rows = self._execute(
            "SELECT s.device_id, s.stream, "
            "(SELECT max(e.seq) FROM events e WHERE e.device_id = s.device_id "
            " AND e.stream = s.stream) AS events_top, "
            "(SELECT max(a.seq) FROM alarms a WHERE a.device_id = s.device_id "
            " AND a.stream = s.stream) AS alarms_top, "
            "(SELECT count(*) FROM events e WHERE e.device_id = s.device_id "
            " AND e.stream = s.stream AND e.seq >= coalesce(s.contiguous_below, 0)) "
            " AS events_above, "
            "(SELECT count(*) FROM alarms a WHERE a.device_id = s.device_id "
            " AND a.stream = s.stream AND a.seq >= coalesce(s.contiguous_below, 0)) "
            " AS alarms_above "
            "FROM seq_streams s")
        return rows

    def stream_seqs(self, device_id: str, stream: str, from_seq: int,
                    limit: int = 100_000) -> list[int]:
        """Distinct seqs of one stream at or above ``from_seq`` (events and alarms), sorted."""
        seqs: set[int] = set()
        for table in ("events", "alarms"):
            seqs.update(int(r["seq"]) for r in self._execute(
                f"SELECT seq FROM {table} WHERE device_id = ? AND stream = ? AND seq >= ? "
                "ORDER BY seq LIMIT ?", (device_id, stream, from_seq, limit)))
        return sorted(seqs)

    def stream_min_seq(self, device_id: str, stream: str) -> int | None:
        """The lowest stored seq of a stream (events and alarms), or None."""
        (row,) = self._execute(
            "SELECT min(m) AS m FROM (SELECT min(seq) AS m FROM events WHERE device_id = ? "
            "AND stream = ? UNION ALL SELECT min(seq) AS m FROM alarms WHERE device_id = ? "
            "AND stream = ?) AS both_tables", (device_id, stream, device_id, stream))
        return None if row["m"] is None else int(row["m"])

    def missing_ranges(self, device_id: str, stream: str) -> list[list[int]]:
        """The missing seq ranges the gateway recorded for a stream (``[from, to, ...]``)."""
        rows = self._execute("SELECT missing FROM seq_streams WHERE device_id = ? AND "
                             "stream = ?", (device_id, stream))
        return json.loads(rows[0]["missing"] or "[]") if rows else []

    def add_resend_request(self, device_id: str, centre: str, stream: str, from_seq: int,
                           to_seq: int) -> int:
        """Record a ``cmd/resend`` about to be sent; returns its id (the command id's number)."""
        now = time.time()
        self._executemany(
            "INSERT INTO resend_requests (device_id, centre, stream, from_seq, to_seq, "
            "requested_at) VALUES (?, ?, ?, ?, ?, ?)",
            [(device_id, centre, stream, from_seq, to_seq, now)])
        rows = self._execute(
            "SELECT max(id) AS id FROM resend_requests WHERE device_id = ? AND stream = ? "
            "AND from_seq = ? AND to_seq = ? AND requested_at = ?",
            (device_id, stream, from_seq, to_seq, now))
        return int(rows[0]["id"])

    def resend_requests(self, device_id: str | None = None, stream: str | None = None,
                        since: float = 0.0, unhandled: bool = False) -> list[dict[str, Any]]:
        """Resend requests (of one stream) made after ``since``, oldest first (only those whose
        answer the watcher has not taken into account yet, with ``unhandled``)."""
        where, params = ["requested_at >= ?"], [since]
        if unhandled:
            where.append("handled = 0")
        if device_id is not None:
            where.append("device_id = ?")
            params.append(device_id)
        if stream is not None:
            where.append("stream = ?")
            params.append(stream)
        return self._execute(f"SELECT * FROM resend_requests WHERE {' AND '.join(where)} "
                             "ORDER BY id", params)

    def record_resend_ack(self, request_id: int, device_id: str, ok: bool, detail: str,
                          not_kept: int | None) -> bool:
        """A gate's answer to a resend request (``cmd_ack``); only the addressed gate's first
        answer counts. Returns whether it matched a request."""
        return self._executemany(
            "UPDATE resend_requests SET acked_at = ?, ok = ?, detail = ?, not_kept = ? "
            "WHERE id = ? AND device_id = ? AND acked_at IS NULL",
            [(time.time(), int(ok), detail[:300], not_kept, request_id, device_id)]) > 0

    def mark_resend_handled(self, request_ids: Sequence[int]) -> None:
        """The watcher has taken a request's answer into account."""
        self._executemany("UPDATE resend_requests SET handled = 1 WHERE id = ?",
                          [(i,) for i in request_ids])

    # ---- attendance model -------------------------------------------------------------------

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

    def session_events(self, session_id: str) -> list[dict[str, Any]]:
        """A session's admitted check-in events in time order (what attendance is derived
        from; events refused at admission are kept apart, see ``refused_events``)."""
        return self._execute(
            "SELECT event_id, device_id, room, seq, ts, outcome, reason, applicant_id, card_id, "
            "mode, score, latency_ms FROM events WHERE session = ? AND admission IS NULL "
            "ORDER BY ts, device_id, seq", (session_id,))

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
            "rejected, refused) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (client_id) DO UPDATE "
            "SET updated_at = excluded.updated_at, received = excluded.received, "
            "stored = excluded.stored, duplicates = excluded.duplicates, "
            "rejected = excluded.rejected, refused = excluded.refused",
            [(client_id, time.time(), *(int(counters.get(k, 0)) for k in (
                "received", "stored", "duplicates", "rejected", "refused")))])

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
        (rejects,) = self._execute("SELECT sum(count) AS n FROM reject_counts")
        return {"events": int(events["n"]), "rejected": int(rejects["n"] or 0)}


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
