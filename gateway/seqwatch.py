"""The seq watcher: finds messages a gate sent that never reached the gateway, asks the gate to
send them again, and raises an alert for what stays missing.

Every event and alarm of a gate carries ``seq``, gapless per outbox ``stream`` (gerbang/wire.py).
The gateway therefore knows, per (device, stream), the highest *contiguous* seq it holds, and
which seqs above it are missing. Two things reveal a loss:

- a stored seq above a missing one (``0, 1, 3`` stored: ``2`` is missing);
- the gate's ``outbox.acked_below`` in its birth and telemetry: every seq below it was
  acknowledged by the broker, so it must reach the gateway. That catches a loss at the end of
  a stream that went quiet (``0, 1, 2`` stored, ``acked_below`` 4: ``3`` is missing). While
  the stream's highest stored seq still grows, a backlog is draining and the tail is not yet
  counted as missing.

A missing range older than ``gap_resend_s`` makes the gateway send ``cmd/resend`` (at most
once per range per minute; the gate re-publishes what its outbox still keeps and says on
``cmd_ack`` how many it no longer keeps); older than ``gap_alert_s`` it is a ``seq_gap`` alert
(gateway/alerts.py), which disappears when the range is filled, or stays, marked "no longer
kept on the gate", when the gate says so. A device's new stream is an ``outbox_replaced`` alert:
its data directory was replaced, and whatever its old outbox still held is gone with it.

One watcher runs in the main ``gerbang-gateway run`` process, every ``every_s`` (2 s). It never
touches the insert path: the ingest workers only register a stream the first time they see it.
Per pass it costs two index probes per stream, and a re-read of the seqs above the contiguous
mark only for the streams whose figures changed.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from gerbang import wire

log = logging.getLogger(__name__)

DEFAULT_GAP_RESEND_S = 10.0
DEFAULT_GAP_ALERT_S = 60.0
#: A range is asked for again at most this often.
RESEND_EVERY_S = 60.0
#: At most this many resend commands per stream per pass (each covers up to
#: ``wire.RESEND_MAX_SPAN`` seqs).
MAX_REQUESTS_PER_PASS = 5
#: Seqs read per stream per pass above its contiguous mark.
MAX_SEQS_READ = 100_000


def contiguous_and_missing(start: int, seqs: list[int], upper: int,
                           ) -> tuple[int, list[tuple[int, int]]]:
    """``(contiguous_below, missing ranges)`` of a stream whose seqs from ``start`` on are the
    sorted ``seqs`` and of which every seq below ``upper`` should exist.

    ``contiguous_below`` is the first seq >= ``start`` not held; missing ranges are inclusive
    ``(from, to)`` pairs between ``start`` and ``upper - 1``."""
    missing: list[tuple[int, int]] = []
    expect = start
    for seq in seqs:
        if seq < expect:
            continue
        if seq > expect:
            missing.append((expect, seq - 1))
        expect = seq + 1
    if upper > expect:
        missing.append((expect, upper - 1))
    contiguous = missing[0][0] if missing else expect
    return contiguous, missing


def _overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def _subtract(ranges: list[tuple[int, int]], cut: list[tuple[int, int]],
              ) -> list[tuple[int, int]]:
    """``ranges`` without the seqs in ``cut`` (both lists of inclusive pairs)."""
    out = []
    for lo, hi in ranges:
        pieces = [(lo, hi)]
        for c_lo, c_hi in cut:
            nxt = []
            for p_lo, p_hi in pieces:
                if c_hi < p_lo or c_lo > p_hi:
                    nxt.append((p_lo, p_hi))
                    continue
                if p_lo < c_lo:
                    nxt.append((p_lo, c_lo - 1))
                if c_hi < p_hi:
                    nxt.append((c_hi + 1, p_hi))
            pieces = nxt
        out.extend(pieces)
    return out


def _intersect(ranges: list[tuple[int, int]], other: list[tuple[int, int]],
               ) -> list[tuple[int, int]]:
    out = []
    for lo, hi in ranges:
        for o_lo, o_hi in other:
            a, b = max(lo, o_lo), min(hi, o_hi)
            if a <= b:
                out.append((a, b))
    return out


def format_ranges(ranges: list[Any], limit: int = 8) -> str:
    """``2, 7-9, 12`` (at most ``limit`` ranges, then "and N more")."""
    parts = [f"{a}" if a == b else f"{a}-{b}" for a, b, *_ in ranges[:limit]]
    if len(ranges) > limit:
        parts.append(f"and {len(ranges) - limit} more")
    return ", ".join(parts)


class SeqWatcher:
    """Checks every stream's seq coverage every ``every_s``; see the module docstring.

    ``ingest`` is the process's ``Ingest`` (its connection sends ``cmd/resend``); without one
    the watcher only records gaps and alerts."""

    def __init__(self, store: Any, ingest: Any = None, *,
                 resend_s: float = DEFAULT_GAP_RESEND_S, alert_s: float = DEFAULT_GAP_ALERT_S,
                 every_s: float = 2.0, resend_every_s: float = RESEND_EVERY_S) -> None:
        self.store = store
        self.ingest = ingest
        self.resend_s = resend_s
        self.alert_s = alert_s
        self.every_s = every_s
        self.resend_every_s = resend_every_s
        #: (device, stream) -> (events_top, alarms_top, events_above, alarms_above) last seen
        self._activity: dict[tuple[str, str], tuple[Any, ...]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="seq-watch", daemon=True)

    def start(self) -> SeqWatcher:
        """Start checking in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop after the current pass."""
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.check_once()
            except Exception:
                log.exception("seq check failed; will retry")

    # ---- one pass --------------------------------------------------------------------------

    def check_once(self, now: float | None = None) -> None:
        """Update every stream's gap state, send due resend requests, flag alerts."""
        now = time.time() if now is None else now
        self._take_reports(now)
        rows = {(r["device_id"], r["stream"]): r for r in self.store.seq_streams()}
        self._check_replaced(rows, now)
        states = self.store.device_states()
        for activity in self.store.stream_activity():
            key = (activity["device_id"], activity["stream"])
            row = rows.get(key)
            if row is None:
                continue
            figures = (activity["events_top"], activity["alarms_top"],
                       activity["events_above"], activity["alarms_above"],
                       row["reported_acked_below"], row["first_seq"])
            top = -1 if row["top"] is None else int(row["top"])
            tail = int(row["reported_acked_below"] or 0) > top + 1  # maybe a backlog, maybe lost
            if figures != self._activity.get(key) or row["missing"] or tail:
                self._activity[key] = figures
                self._recompute(row, activity, now)
        rows = {(r["device_id"], r["stream"]): r for r in self.store.seq_streams()}
        self._take_answers(rows, now)
        for row in rows.values():
            if row["missing"]:
                self._resend_due(row, states.get(row["device_id"]), now)

    def _take_reports(self, now: float) -> None:
        """The outbox positions gates reported (birth, telemetry) into their streams' rows."""
        rows = {(r["device_id"], r["stream"]): r for r in self.store.seq_streams()}
        outboxes = self.store.device_outboxes()
        new = set()
        for device in outboxes:
            for report in (device["status_outbox"], device["telemetry_outbox"]):
                if not report:
                    continue
                key = (device["device_id"], report["stream"])
                if key not in rows:
                    new.add((*key, device["centre"]))
        if new:
            self.store.register_streams(new)
            rows = {(r["device_id"], r["stream"]): r for r in self.store.seq_streams()}
        for device in outboxes:
            for report in (device["status_outbox"], device["telemetry_outbox"]):
                if not report:
                    continue
                row = rows[(device["device_id"], report["stream"])]
                acked = max(int(report["acked_below"]), int(row["reported_acked_below"] or 0))
                nxt = max(int(report["next_seq"]), int(row["reported_next_seq"] or 0))
                first = int(report["first_seq"])
                if (acked, nxt, first) != (row["reported_acked_below"],
                                           row["reported_next_seq"], row["first_seq"]):
                    fields: dict[str, Any] = {"reported_acked_below": acked,
                                              "reported_next_seq": nxt, "first_seq": first,
                                              "reported_at": now}
                    if row["start_seq"] is not None and first < int(row["start_seq"]):
                        # The stream's start was guessed from the lowest seq stored before the
                        # birth was: count from the gate's own first seq instead.
                        fields.update(start_seq=first, contiguous_below=first)
                    self.store.update_seq_stream(row["device_id"], row["stream"], fields)
                    row.update(fields)

    def _check_replaced(self, rows: dict[tuple[str, str], dict[str, Any]], now: float) -> None:
        """A device's new stream: its outbox was replaced (unless an outbox older than streams
        got its first stream id: then it continues the seqs of stream "")."""
        by_device: dict[str, list[dict[str, Any]]] = {}
        for row in rows.values():
            by_device.setdefault(row["device_id"], []).append(row)
        for device, streams in by_device.items():
            for row in streams:
                if row["replaced_checked"]:
                    continue
                if row["first_seq"] is None and row["stream"] and (
                        now - float(row["first_seen_at"]) < 10.0):
                    continue  # its birth (first_seq) may be a moment behind its events
                older = [s for s in streams if s is not row
                         and s["first_seen_at"] < row["first_seen_at"]
                         and s["closed_at"] is None]
                fields: dict[str, Any] = {"replaced_checked": 1}
                upgrade = (row["first_seq"] or 0) > 0 and all(s["stream"] == "" for s in older)
                if older and not upgrade:
                    previous = max(older, key=lambda s: s["first_seen_at"])
                    fields["replaced_from"] = previous["stream"]
                    log.error("gate %s has a new outbox stream %s (was %s): its data directory "
                              "was replaced; what the old outbox still held is lost", device,
                              row["stream"] or '""', previous["stream"] or '""')
                for old in older:
                    # Nothing of an old stream can be asked for again: whatever is missing
                    # there is gone with the outbox.
                    self.store.update_seq_stream(device, old["stream"], {
                        "closed_at": now, "not_kept": [list(r[:2]) for r in old["missing"]]})
                    old["closed_at"] = now
                self.store.update_seq_stream(device, row["stream"], fields)
                row.update(fields)

    def _recompute(self, row: dict[str, Any], activity: dict[str, Any], now: float) -> None:
        """Re-read the seqs above the contiguous mark of one stream and store its gaps."""
        device, stream = row["device_id"], row["stream"]
        start = row["contiguous_below"]
        fields: dict[str, Any] = {}
        if start is None:
            first = row["first_seq"]
            lowest = self.store.stream_min_seq(device, stream)
            if first is None and lowest is None:
                return
            start = int(first) if first is not None else int(lowest)
            fields["start_seq"] = start
        start = int(start)
        seqs = self.store.stream_seqs(device, stream, start, MAX_SEQS_READ)
        tops = [t for t in (activity["events_top"], activity["alarms_top"]) if t is not None]
        top = max(tops) if tops else None
        if top is not None and top != row["top"]:
            fields.update(top=top, top_changed_at=now)
        top_changed_at = fields.get("top_changed_at", row["top_changed_at"]) or now
        upper = start if top is None else int(top) + 1
        acked = row["reported_acked_below"]
        if acked is not None and int(acked) > upper and (
                top is None or now - top_changed_at >= min(5.0, self.resend_s)
                or row["closed_at"] is not None):
            # The tail counts once the stream's highest stored seq stopped growing: before,
            # a backlog may still be on its way.
            upper = int(acked)
        contiguous, missing = contiguous_and_missing(start, seqs, upper)
        previous = [(int(a), int(b), float(since)) for a, b, since in row["missing"]]
        kept: list[list[Any]] = []
        for lo, hi in missing:
            sinces = [since for a, b, since in previous if _overlaps((lo, hi), (a, b))]
            kept.append([lo, hi, min(sinces) if sinces else now])
        oldest = min((since for _, _, since in kept), default=None)
        alerted = (oldest if oldest is not None and now - oldest >= self.alert_s else None)
        not_kept = [list(r) for r in _intersect(
            [(a, b) for a, b, _ in kept], [(int(a), int(b)) for a, b in row["not_kept"]])]
        fields.update(contiguous_below=contiguous, above_count=len(seqs), missing=kept,
                      alerted_since=alerted, not_kept=not_kept)
        if (kept != row["missing"] or contiguous != row["contiguous_below"]
                or alerted != row["alerted_since"] or not_kept != row["not_kept"]
                or "top" in fields or "start_seq" in fields):
            if kept and not row["missing"]:
                log.warning("gate %s stream %s: seq %s missing", device, stream or '""',
                            format_ranges(kept))
            elif row["missing"] and not kept:
                log.info("gate %s stream %s: the missing seqs arrived; contiguous up to %d",
                         device, stream or '""', contiguous - 1)
            if alerted is not None and row["alerted_since"] is None:
                log.error("gate %s stream %s: seq %s still missing after %.0f s (seq_gap "
                          "alert)", device, stream or '""', format_ranges(kept),
                          now - alerted)
            self.store.update_seq_stream(device, stream, fields)
            row.update(fields)

    def _take_answers(self, rows: dict[tuple[str, str], dict[str, Any]], now: float) -> None:
        """Resend answers saying part of a range is no longer kept: mark what is still
        missing there as not kept (no more requests for it; the alert says so)."""
        handled = []
        for request in self.store.resend_requests(since=now - 24 * 3600, unhandled=True):
            if request["acked_at"] is None:
                continue
            if now - float(request["acked_at"]) < 2.0:
                continue  # the re-sent messages may still be on their way
            handled.append(int(request["id"]))
            row = rows.get((request["device_id"], request["stream"]))
            if row is None or not request["not_kept"]:
                continue
            span = [(int(request["from_seq"]), int(request["to_seq"]))]
            still = _intersect([(int(a), int(b)) for a, b, _ in row["missing"]], span)
            if still:
                merged = sorted({tuple(r) for r in row["not_kept"]} | set(still))
                self.store.update_seq_stream(row["device_id"], row["stream"],
                                             {"not_kept": [list(r) for r in merged]})
                row["not_kept"] = [list(r) for r in merged]
                log.error("gate %s stream %s: seq %s no longer kept on the gate (%s)",
                          row["device_id"], row["stream"], format_ranges(still),
                          request["detail"])
        if handled:
            self.store.mark_resend_handled(handled)

    def _resend_due(self, row: dict[str, Any], state: dict[str, Any] | None,
                    now: float) -> None:
        """Ask the gate for the missing ranges older than ``resend_s`` it may still keep."""
        if (self.ingest is None or not row["stream"] or row["closed_at"] is not None
                or state is None or state.get("state") != "online"
                or not self.ingest.connected.is_set()):
            return  # an old gate cannot re-send; an offline one gets asked when it is back
        due = [(int(a), int(b)) for a, b, since in row["missing"]
               if now - float(since) >= self.resend_s]
        due = _subtract(due, [(int(a), int(b)) for a, b in row["not_kept"]])
        if not due:
            return
        recent = [(int(r["from_seq"]), int(r["to_seq"])) for r in self.store.resend_requests(
            row["device_id"], row["stream"], since=now - self.resend_every_s)]
        sent = 0
        for lo, hi in due:
            for chunk_lo in range(lo, hi + 1, wire.RESEND_MAX_SPAN):
                chunk = (chunk_lo, min(hi, chunk_lo + wire.RESEND_MAX_SPAN - 1))
                if any(_overlaps(chunk, r) for r in recent) or sent >= MAX_REQUESTS_PER_PASS:
                    continue
                self._send_resend(row, state, chunk)
                recent.append(chunk)
                sent += 1
        if sent:
            self.store.update_seq_stream(row["device_id"], row["stream"],
                                         {"resends": int(row["resends"] or 0) + sent})

    def _send_resend(self, row: dict[str, Any], state: dict[str, Any],
                     chunk: tuple[int, int]) -> None:
        centre = state.get("centre") or row["centre"]
        request_id = self.store.add_resend_request(row["device_id"], centre, row["stream"],
                                                   chunk[0], chunk[1])
        self.ingest.send_command(centre, row["device_id"], "resend",
                                 {"stream": row["stream"], "from_seq": chunk[0],
                                  "to_seq": chunk[1]}, command_id=f"rs-{request_id}")
        log.warning("asked gate %s to re-send stream %s seq %s (request rs-%d)",
                    row["device_id"], row["stream"], format_ranges([chunk]), request_id)


def start_seq_watch(store: Any, ingest: Any, config: Any, primary: bool = True,
                    ) -> SeqWatcher | None:
    """The hook ``gerbang-gateway run`` calls: one watcher in the main process (``primary``),
    none in ingest-only children. ``config`` is the ``[gateway]`` section."""
    if not primary:
        return None
    return SeqWatcher(store, ingest, resend_s=config.gap_resend_s,
                      alert_s=config.gap_alert_s).start()
