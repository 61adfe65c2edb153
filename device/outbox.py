"""The device's outbox: a SQLite journal holding every event until the broker acknowledged it.

An event is committed here (WAL, ``synchronous=FULL``: fsync on commit, so a power cut right
after cannot lose it) before the door opens and before it is published; it is deleted only when
the broker's PUBACK arrives. ``seq`` is assigned in the same transaction, so it is gapless per
device and survives restarts.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO counters VALUES ('next_seq', 0), ('acked', 0);
"""
#: Whether the near-full alarm may fire: kept in the database, so that of the gate's processes
#: appending to one outbox exactly one raises it (set when the backlog falls below REARM).
_ARMED = "near_full_armed"


@dataclass(frozen=True)
class PendingEvent:
    """An event waiting for its PUBACK."""

    seq: int
    topic: str
    payload: bytes


class Outbox:
    """Durable FIFO of outgoing events, shared by the check-in loop and the uplink thread, and
    by the gate's processes (each opens its own ``Outbox`` on the same file).

    One connection per process guarded by a lock; between processes, SQLite's write lock
    (``BEGIN IMMEDIATE``) makes ``seq`` assignment race-free. Writes are a few per second at a
    door, so waiting for that lock costs nothing.
    """

    #: Default bound: about 80 MB of ~400-byte events, weeks of a busy gate with no network.
    MAX_EVENTS = 200_000
    NEAR_FULL = 0.8   # raise the alarm at 80 % ...
    REARM = 0.5       # ... and again only after the backlog fell below 50 %

    def __init__(self, path: Path, max_events: int = MAX_EVENTS,
                 on_near_full: Callable[[int], None] | None = None) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(path)
        # timeout: how long a write waits for another process's transaction to finish.
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None,
                                   timeout=30.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        #: Disk bound in events. Decisions are recorded even beyond it (the door depends on a
        #: record); only ``droppable`` messages (frames without a face) are refused.
        self.max_events = max_events
        #: Called (outside the lock, with the depth) when the backlog reaches NEAR_FULL.
        self.on_near_full = on_near_full
        self.dropped = 0
        self._depth = self._db.execute("SELECT count(*) FROM outbox").fetchone()[0]
        self._db.execute("INSERT OR IGNORE INTO counters VALUES (?, ?)",
                         (_ARMED, int(self._depth < self.NEAR_FULL * max_events)))

    def append(self, build: Callable[[int], tuple[str, bytes]],
               droppable: bool = False) -> int | None:
        """Assign the next ``seq``, build the message with it, and commit both durably.

        ``build(seq)`` returns ``(topic, payload)``; it runs inside the transaction so the seq
        in the payload and the row are always the same. With the outbox at its bound a
        ``droppable`` message is not stored (None is returned and ``dropped`` counts it).
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
                (seq,) = self._db.execute(
                    "SELECT value FROM counters WHERE name='next_seq'").fetchone()
                topic, payload = build(seq)
                self._db.execute(
                    "INSERT INTO outbox (seq, topic, payload, created) VALUES (?, ?, ?, ?)",
                    (seq, topic, payload, time.time()))
                self._db.execute("UPDATE counters SET value = value + 1 WHERE name='next_seq'")
                self._depth = self._count()  # other processes append and remove too
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

    def _count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM outbox").fetchone()[0])

    def pending(self, after_seq: int = -1, limit: int = 100) -> list[PendingEvent]:
        """Oldest events with ``seq`` greater than ``after_seq``, in seq order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, topic, payload FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit)).fetchall()
        return [PendingEvent(seq, topic, bytes(payload)) for seq, topic, payload in rows]

    def remove(self, seqs: Iterable[int]) -> int:
        """Delete acknowledged events; returns how many were still present."""
        seqs = list(seqs)
        if not seqs:
            return 0
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            cur = self._db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])
            removed = cur.rowcount
            self._db.execute("UPDATE counters SET value = value + ? WHERE name='acked'",
                             (removed,))
            self._depth = self._count()
            if self._depth < self.REARM * self.max_events:
                self._db.execute("UPDATE counters SET value = 1 WHERE name = ?", (_ARMED,))
            self._db.execute("COMMIT")
            return removed

    def depth(self) -> int:
        """Events not yet acknowledged by the broker."""
        with self._lock:
            self._depth = self._count()
            return self._depth

    def counters(self) -> dict[str, int]:
        """Lifetime totals: ``appended`` (= next seq) and ``acked``."""
        with self._lock:
            rows = dict(self._db.execute("SELECT name, value FROM counters").fetchall())
        return {"appended": rows["next_seq"], "acked": rows["acked"]}

    def close(self) -> None:
        """Close the database (everything committed is already on disk)."""
        with self._lock:
            self._db.close()
