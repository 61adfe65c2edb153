"""The store's schema, as its history: numbered migrations, applied in order and recorded in
``schema_migrations`` (SqlBase._migrate). A schema change is a new entry at the end, never an
edit of an applied one; the DDL has ``{real}`` / ``{serial}`` placeholders for each dialect's
types (SQLite and PostgreSQL).
"""

from __future__ import annotations

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
