"""Outbox streams and their seq gaps (gateway/seqwatch.py): per gate and stream, how far its
events and alarms arrived without a gap, what is missing, and the ``cmd/resend`` requests made
for the missing ranges with the gates' answers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from typing import Any

from gateway.store.sql import SqlBase


class SeqStreamQueries(SqlBase):
    """Gap state per outbox stream, and resend requests."""

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
