"""The device's outbox: a SQLite journal of every event and alarm, kept until the gateway can no
longer need it.

An event is committed here (WAL, ``synchronous=FULL``: fsync on commit, so a power cut right
after cannot lose it) before the door opens and before it is published. ``seq`` is assigned in
the same transaction, so it is gapless per outbox *stream* and survives restarts.

Streams: each outbox file has an id, ``stream`` (16 random hex characters drawn when the file is
created), carried by every event and alarm. A gate whose data directory is replaced (new SD
card, deleted outbox) starts a new stream at seq 0, which the gateway tells apart from a gate
that lost messages. An outbox created before streams existed gets its id on first open, with
``first_seq`` = the seq it had reached (its older, unsent rows go out as they were written).

Acknowledged rows: the broker's PUBACK marks a row acknowledged (``acked``, the time) instead of
deleting it, so the gateway can ask for a range again (``requeue``, the ``resend`` command) when
it sees a gap it cannot explain. Acknowledged rows are purged after ``keep_acked_s`` and beyond
``max_events`` of them, oldest first. ``depth()``, the disk bound and the near-full alarm count
unacknowledged rows only.

Columns: ``acked`` NULL until the first PUBACK; ``queued`` 1 while the row is to be published
(not yet acknowledged, or re-queued by a resend). The uplink publishes ``queued`` rows in seq
order. Counters (``unacked``, ``kept``) are kept in the same transactions as the rows they count,
so no ``count(*)`` runs per append and every process sees the same figures.

The ``meta`` table also holds the gate's version high-water marks (``high_water``): the newest
roster version per session and room and the newest model bundle that ran, so deleting a
template file or the model install state cannot roll the gate back.
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

_TABLES = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    created REAL NOT NULL,
    acked REAL,
    queued INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_INDEXES = """
CREATE INDEX IF NOT EXISTS outbox_queued ON outbox(seq) WHERE queued = 1;
CREATE INDEX IF NOT EXISTS outbox_acked ON outbox(acked) WHERE acked IS NOT NULL;
"""
#: The outbox's file name inside the gate's data directory.
#: High-water mark names (``Outbox.high_water``).
MODELS_HIGH_WATER = "models"


def roster_high_water(session: str, room: str) -> str:
    """The high-water mark name of the roster of one session and room."""
    return f"roster:{session}/{room}"


#: Whether the near-full alarm may fire: kept in the database, so that of the gate's processes
#: appending to one outbox exactly one raises it (set when the backlog falls below REARM).
_ARMED = "near_full_armed"


@dataclass(frozen=True)
class PendingEvent:
    """An event waiting to be published (for the first time, or again after a resend)."""

    seq: int
    topic: str
    payload: bytes


@dataclass(frozen=True)
class Requeued:
    """What ``requeue`` did: ``count`` rows of ``first``..``last`` queued again, ``missing`` of
    the asked range no longer kept (purged)."""

    count: int
    asked: int
    first: int | None
    last: int | None
    missing: int


class OutboxRangeError(ValueError):
    """A resend range this outbox cannot serve; the message names the field."""


class Outbox:
    """Durable FIFO of outgoing events, shared by the check-in loop and the uplink thread, and
    by the gate's processes (each opens its own ``Outbox`` on the same file).

    One connection per process guarded by a lock; between processes, SQLite's write lock
    (``BEGIN IMMEDIATE``) makes ``seq`` assignment race-free. Writes are a few per second at a
    door, so waiting for that lock costs nothing.
    """

    #: Default bound: about 80 MB of ~400-byte events, weeks of a busy gate with no network.
    MAX_EVENTS = 200_000
    #: Acknowledged rows are kept this long by default (a day: the gateway notices a gap long
    #: before), for the ``resend`` command.
    KEEP_ACKED_S = 86_400.0
    NEAR_FULL = 0.8   # raise the alarm at 80 % ...
    REARM = 0.5       # ... and again only after the backlog fell below 50 %
    #: Acknowledged rows older than ``keep_acked_s`` are purged at most this often (by the
    #: process that records PUBACKs); the count bound is enforced on every PUBACK batch.
    PURGE_EVERY_S = 60.0

    def __init__(self, path: Path, max_events: int = MAX_EVENTS,
                 on_near_full: Callable[[int], None] | None = None,
                 keep_acked_s: float = KEEP_ACKED_S,
                 purge_every_s: float = PURGE_EVERY_S) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(path)
        # timeout: how long a write waits for another process's transaction to finish.
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None,
                                   timeout=30.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._lock = threading.Lock()
        #: Disk bound in unacknowledged events. Decisions are recorded even beyond it (the door
        #: depends on a record); only ``droppable`` messages (frames without a face) are
        #: refused. Also the most acknowledged rows kept for resends.
        self.max_events = max_events
        self.keep_acked_s = keep_acked_s
        self.purge_every_s = purge_every_s
        #: Called (outside the lock, with the depth) when the backlog reaches NEAR_FULL.
        self.on_near_full = on_near_full
        self.dropped = 0
        self._next_purge = 0.0
        self.stream, self.first_seq = self._open_schema()
        self._depth = self._counter("unacked")
        self._db.execute("INSERT OR IGNORE INTO counters VALUES (?, ?)",
                         (_ARMED, int(self._depth < self.NEAR_FULL * max_events)))

    def _open_schema(self) -> tuple[str, int]:
        """Create or upgrade the tables in one write transaction (several processes may open
        the file at once); returns (stream, first_seq)."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            existed = db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND "
                                 "name='outbox'").fetchone() is not None
            for statement in _TABLES.split(";"):
                if statement.strip():
                    db.execute(statement)
            columns = {row[1] for row in db.execute("PRAGMA table_info(outbox)")}
            if "acked" not in columns:  # an outbox from before acknowledged rows were kept
                db.execute("ALTER TABLE outbox ADD COLUMN acked REAL")
                db.execute("ALTER TABLE outbox ADD COLUMN queued INTEGER NOT NULL DEFAULT 1")
            for statement in _INDEXES.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute("INSERT OR IGNORE INTO counters VALUES ('next_seq', 0), ('acked', 0)")
            if db.execute("SELECT 1 FROM counters WHERE name='unacked'").fetchone() is None:
                # Once per file: the rows an older outbox still holds are all unacknowledged.
                (unacked,) = db.execute(
                    "SELECT count(*) FROM outbox WHERE acked IS NULL").fetchone()
                (kept,) = db.execute(
                    "SELECT count(*) FROM outbox WHERE acked IS NOT NULL").fetchone()
                db.execute("INSERT INTO counters VALUES ('unacked', ?), ('kept', ?)",
                           (unacked, kept))
            meta = dict(db.execute("SELECT name, value FROM meta WHERE name IN "
                                   "('stream', 'first_seq')").fetchall())
            if "stream" not in meta:
                (next_seq,) = db.execute(
                    "SELECT value FROM counters WHERE name='next_seq'").fetchone()
                meta = {"stream": secrets.token_hex(8),
                        "first_seq": str(next_seq if existed else 0)}
                db.executemany("INSERT INTO meta VALUES (?, ?)", sorted(meta.items()))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return meta["stream"], int(meta["first_seq"])

    def _counter(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name=?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def append(self, build: Callable[[int], tuple[str, bytes]],
               droppable: bool = False) -> int | None:
        """Assign the next ``seq``, build the message with it, and commit both durably.

        ``build(seq)`` returns ``(topic, payload)``; it runs inside the transaction so the seq
        in the payload and the row are always the same (the payload carries ``self.stream``).
        With the outbox at its bound a ``droppable`` message is not stored (None is returned
        and ``dropped`` counts it).
        """
        if droppable and self._depth >= self.max_events:
            self.dropped += 1
            return None
        seq, near_full = self._append(build)
        if near_full and self.on_near_full is not None:
            self.on_near_full(self._depth)
        return seq

    def _append(self, build: Callable[[int], tuple[str, bytes]]) -> tuple[int, bool]:
        """(seq, whether this append took the backlog to NEAR_FULL while the alarm was armed:
        then it is disarmed in the same transaction, so only one process reports it)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                seq = self._counter("next_seq")
                topic, payload = build(seq)
                self._db.execute(
                    "INSERT INTO outbox (seq, topic, payload, created) VALUES (?, ?, ?, ?)",
                    (seq, topic, payload, time.time()))
                self._db.execute("UPDATE counters SET value = value + 1 WHERE name IN "
                                 "('next_seq', 'unacked')")
                self._depth = self._counter("unacked")  # other processes append and ack too
                near_full = False
                if self._depth >= self.NEAR_FULL * self.max_events:
                    near_full = self._db.execute(
                        "UPDATE counters SET value = 0 WHERE name = ? AND value = 1",
                        (_ARMED,)).rowcount == 1
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return seq, near_full

    def pending(self, after_seq: int = -1, limit: int = 100) -> list[PendingEvent]:
        """Oldest queued events (unacknowledged, or re-queued by a resend) with ``seq`` greater
        than ``after_seq``, in seq order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, topic, payload FROM outbox WHERE queued = 1 AND seq > ? "
                "ORDER BY seq LIMIT ?", (after_seq, limit)).fetchall()
        return [PendingEvent(seq, topic, bytes(payload)) for seq, topic, payload in rows]

    def remove(self, seqs: Iterable[int]) -> int:
        """Record the broker's PUBACK of these rows: each is marked acknowledged (kept for a
        resend) and no longer queued. Returns how many were acknowledged for the first time.

        The name stays from when acknowledged rows were deleted; purging is done here too:
        the count bound every time, the age bound at most every ``purge_every_s``.
        """
        seqs = list(seqs)
        if not seqs:
            return 0
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                newly = self._db.executemany(
                    "UPDATE outbox SET acked = ?, queued = 0 WHERE seq = ? AND acked IS NULL",
                    [(now, s) for s in seqs]).rowcount
                self._db.executemany("UPDATE outbox SET queued = 0 WHERE seq = ? AND queued = 1",
                                     [(s,) for s in seqs])
                self._db.execute("UPDATE counters SET value = value + ? WHERE name IN "
                                 "('acked', 'kept')", (newly,))
                self._db.execute("UPDATE counters SET value = value - ? WHERE name = 'unacked'",
                                 (newly,))
                self._depth = self._counter("unacked")
                if self._depth < self.REARM * self.max_events:
                    self._db.execute("UPDATE counters SET value = 1 WHERE name = ?", (_ARMED,))
                self._purge(now, by_age=time.monotonic() >= self._next_purge)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return newly

    def _purge(self, now: float, by_age: bool) -> int:
        """Delete acknowledged rows past the keep time (when ``by_age``) and beyond
        ``max_events`` of them, oldest first; inside the caller's transaction."""
        deleted = 0
        if by_age:
            self._next_purge = time.monotonic() + self.purge_every_s
            deleted += self._db.execute(
                "DELETE FROM outbox WHERE acked IS NOT NULL AND acked < ? AND queued = 0",
                (now - self.keep_acked_s,)).rowcount
        excess = self._counter("kept") - deleted - self.max_events
        if excess > 0:
            deleted += self._db.execute(
                "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE acked IS NOT "
                "NULL ORDER BY seq LIMIT ?)", (excess,)).rowcount
        if deleted:
            self._db.execute("UPDATE counters SET value = value - ? WHERE name = 'kept'",
                             (deleted,))
        return deleted

    def purge(self) -> int:
        """Purge acknowledged rows now (past the keep time, beyond the bound); returns how
        many were deleted."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                deleted = self._purge(time.time(), by_age=True)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return deleted

    def requeue(self, stream: str, from_seq: int, to_seq: int) -> Requeued:
        """Queue the kept rows of ``from_seq..to_seq`` (inclusive) to be published again, in
        seq order (the gateway stores by event id, so a copy it has is dropped there).

        OutboxRangeError (naming the field) for another stream or a range outside this one.
        The uplink must rewind its send cursor to ``from_seq`` for them to go out.
        """
        if stream != self.stream:
            raise OutboxRangeError(f"stream: {stream!r} is not this gate's outbox stream "
                                   f"{self.stream!r} (the outbox was replaced since; the rows "
                                   "of the old stream are gone with it)")
        if from_seq < self.first_seq:
            raise OutboxRangeError(f"from_seq: {from_seq} is before this stream's first seq "
                                   f"{self.first_seq}")
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                next_seq = self._counter("next_seq")
                if to_seq >= next_seq:
                    raise OutboxRangeError(f"to_seq: {to_seq} is not written yet (the next seq "
                                           f"is {next_seq})")
                count, first, last = self._db.execute(
                    "SELECT count(*), min(seq), max(seq) FROM outbox WHERE seq BETWEEN ? AND ?",
                    (from_seq, to_seq)).fetchone()
                self._db.execute("UPDATE outbox SET queued = 1 WHERE seq BETWEEN ? AND ? AND "
                                 "queued = 0", (from_seq, to_seq))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        asked = to_seq - from_seq + 1
        return Requeued(int(count), asked, first, last, asked - int(count))

    def position(self) -> dict[str, int | str]:
        """The outbox position for the birth and telemetry messages (``wire.OUTBOX_FIELDS``):
        ``stream``, ``first_seq``, ``next_seq`` and ``acked_below`` (every seq of this stream
        below it has been acknowledged by the broker)."""
        with self._lock:
            self._db.execute("BEGIN")  # one snapshot for both figures
            try:
                next_seq = self._counter("next_seq")
                (oldest,) = self._db.execute(
                    "SELECT min(seq) FROM outbox WHERE queued = 1 AND acked IS NULL AND "
                    "seq >= ?", (self.first_seq,)).fetchone()
            finally:
                self._db.execute("COMMIT")
        acked_below = next_seq if oldest is None else int(oldest)
        return {"stream": self.stream, "first_seq": self.first_seq, "next_seq": next_seq,
                "acked_below": max(self.first_seq, acked_below)}

    def depth(self) -> int:
        """Events not yet acknowledged by the broker."""
        with self._lock:
            self._depth = self._counter("unacked")
            return self._depth

    def kept(self) -> int:
        """Acknowledged rows still kept for a resend."""
        with self._lock:
            return self._counter("kept")

    def counters(self) -> dict[str, int]:
        """Lifetime totals: ``appended`` (= next seq) and ``acked``."""
        with self._lock:
            rows = dict(self._db.execute("SELECT name, value FROM counters").fetchall())
        return {"appended": rows["next_seq"], "acked": rows["acked"]}

    # version high-water marks --------------------------------------------------------------
    def high_water(self, name: str) -> str | None:
        """A recorded high-water mark (``roster:<session>/<room>``, ``models``), or None."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE name = ?",
                                   (f"hw:{name}",)).fetchone()
        return None if row is None else str(row[0])

    def set_high_water(self, name: str, value: str) -> None:
        """Record a high-water mark (the caller decides whether ``value`` is higher; a signed,
        forced downgrade of the models may lower it). Committed durably."""
        with self._lock:
            self._db.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET "
                             "value = excluded.value", (f"hw:{name}", value))

    def close(self) -> None:
        """Close the database (everything committed is already on disk)."""
        with self._lock:
            self._db.close()
