"""The SQLite back-end (the default, one centre): a WAL database through sqlite-utils, one
connection per thread, every write transaction taking the write lock up front so several
ingest processes can share one file.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.store.base import Store


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
