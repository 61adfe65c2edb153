"""Gate commands queued by the web tier: the web processes have no broker connection of their
own, so a command (remote unlock) waits here until the ingest process that owns the connection
publishes it (gateway/outgoing.py).
"""

from __future__ import annotations

import json
import time
from typing import Any

from gateway.store.sql import SqlBase


class CommandQueries(SqlBase):
    """The queue of gate commands between the web tier and the ingest."""

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
