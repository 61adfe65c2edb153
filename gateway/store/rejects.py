"""Messages the ingest refused (malformed, oversized, off-contract): counted per device, topic
leaf and error kind in a table that cannot grow with junk, plus a bounded sample of the newest
raw rejects (topic and error, never the payload).
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any

from gateway.store.sql import SqlBase
from gerbang.wire import ID_PATTERN, TOPIC_ROOT

#: How many raw rejected messages are kept as a sample (the counts per device, topic leaf and
#: error kind are kept in ``reject_counts``, without bound on the count and in a bounded table).
REJECT_SAMPLE = 1000
#: Topic leaves a reject is filed under; anything else is filed as ``other`` (a hostile topic
#: must not create rows of its own).
_REJECT_LEAVES = ("events", "status", "alarms", "telemetry", "cmd_ack")


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


class RejectQueries(SqlBase):
    """Counting and sampling refused messages."""

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

    def rejects(self) -> list[dict[str, Any]]:
        """The sample of refused messages (the newest ``REJECT_SAMPLE``), oldest first (``ts``
        is when they arrived, ISO 8601 UTC). The counts are in ``reject_counts``."""
        return [{**r, "ts": _iso(r["received_at"])}
                for r in self._execute("SELECT id, topic, error, received_at FROM rejects "
                                       "ORDER BY id")]
