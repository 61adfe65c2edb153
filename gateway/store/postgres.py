"""The PostgreSQL back-end (many gateway workers, many centres): psycopg 3, one autocommit
connection per thread, migrations serialised across workers by an advisory lock.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from gateway.store.base import Store


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
