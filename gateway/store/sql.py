"""What every store is built on: three SQL primitives a back-end supplies (one statement, one
statement over many rows, several steps in one transaction), the dialect's column types, and
the migration runner over gateway/store/schema.py. The query modules are written against
these primitives only, so one SQL text (``?`` placeholders) serves SQLite and PostgreSQL.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from gateway.store.schema import MIGRATIONS


class SqlBase:
    """The SQL primitives (subclasses supply connections and dialect) and migrations."""

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
