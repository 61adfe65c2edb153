"""Admission: whether a wire-valid check-in event counts towards attendance.

The broker's ACL proves which gate published an event (its certificate's topic), nothing more:
the event's ``room``, ``session``, ``ts`` and ``applicant_id`` are what that gate claims. A gate
is assigned to one room (and one session, or any open session of its centre), so the gateway
checks each claim against its own records. Every event is stored either way (evidence, and
``ingest count = published``); ``events.admission`` is NULL for an admitted event and the
refusal code otherwise. Attendance and every count of "present" read admitted events only.

Codes, checked in this order (the first that applies is stored):

=========================  ==========================================================
``ts_in_future``           ``ts`` more than ``clock_skew_s`` after the gateway received it
``ts_stale``               ``ts`` more than ``clock_skew_s`` before it was received, although
                           no outage explains the delay: the gate had been connected (its
                           latest birth) and this ingest process connected since before
                           ``ts - clock_skew_s``, and the event fills no gap the gateway
                           recorded (a re-sent or backlog event is old by nature)
``unassigned_device``      the gate has no assignment in this centre
``off_assignment_room``    the event names another room than the gate's
``off_assignment_session`` the gate is assigned to one session and the event names another
``session_not_open``       no such session in this centre, or ``ts`` outside
                           ``doors_open - skew .. doors_close + skew``
``not_on_room_roster``     an accepted applicant who is not on the room's roster
=========================  ==========================================================

The clock codes depend on when and how the event arrived, which is not stored, so they are
final. The others depend on configuration: when an assignment, a session or a roster changes,
every ingest process re-evaluates the events refused for those reasons (audited).

The lookups are cached per ingest process and refreshed when the store's admission config
version changes (checked every ``refresh_s``), so judging an event costs a few dictionary
lookups and one time parse.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gerbang.wire import CheckinEvent

log = logging.getLogger(__name__)

CLOCK_CODES = ("ts_in_future", "ts_stale")
CONFIG_CODES = ("unassigned_device", "off_assignment_room", "off_assignment_session",
                "session_not_open", "not_on_room_roster")
CODES = (*CLOCK_CODES, *CONFIG_CODES)

#: What each refusal code means, for pages and alerts.
EXPLAIN = {
    "ts_in_future": "time stamp too far in the future",
    "ts_stale": "time stamp too old for a gate that was connected",
    "unassigned_device": "gate not assigned to a room",
    "off_assignment_room": "event for another room than the gate's",
    "off_assignment_session": "event for another session than the gate's",
    "session_not_open": "session not open (or not scheduled) at that time",
    "not_on_room_roster": "applicant not on this room's roster",
}

#: Default tolerance between a gate's clock and the gateway's, seconds (docs/gateway.md).
DEFAULT_CLOCK_SKEW_S = 120.0


def epoch(ts: str) -> float:
    """An ISO 8601 time (``Z`` or an offset; naive = UTC) as seconds since the epoch."""
    value = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


@dataclass(frozen=True)
class Assignment:
    """Where a gate may admit: its centre, room, and session (None = any open one)."""

    centre: str
    room: str
    session: str | None


@dataclass(frozen=True)
class Snapshot:
    """The admission lookups at one moment: assignments, sessions, rosters."""

    assignments: dict[str, Assignment] = field(default_factory=dict)
    #: session_id -> (centre, doors_open epoch, doors_close epoch)
    sessions: dict[str, tuple[str, float, float]] = field(default_factory=dict)
    #: (session_id, room, applicant_id) of every roster entry
    roster: frozenset[tuple[str, str, str]] = frozenset()

    @classmethod
    def load(cls, store: Any) -> Snapshot:
        """Read the lookups from ``store``."""
        assignments = {r["device_id"]: Assignment(r["centre"], r["room"], r["session"] or None)
                       for r in store.assignments()}
        sessions = {}
        for s in store.exam_sessions():
            try:
                sessions[s["session_id"]] = (s["centre"], epoch(s["doors_open"]),
                                             epoch(s["doors_close"]))
            except (TypeError, ValueError):
                log.error("session %s has unreadable times; its events are refused as "
                          "session_not_open until it is fixed", s["session_id"])
        roster = frozenset((r["session_id"], r["room"], r["applicant_id"])
                           for r in store.roster_entries())
        return cls(assignments, sessions, roster)


def config_verdict(snapshot: Snapshot, skew_s: float, device_id: str, centre: str, room: str,
                   session: str, ts_epoch: float, outcome: str,
                   applicant_id: str | None) -> str | None:
    """The first configuration refusal code that applies to an event, or None."""
    assignment = snapshot.assignments.get(device_id)
    if assignment is None or assignment.centre != centre:
        return "unassigned_device"
    if room != assignment.room:
        return "off_assignment_room"
    if assignment.session is not None and session != assignment.session:
        return "off_assignment_session"
    scheduled = snapshot.sessions.get(session)
    if scheduled is None:
        return "session_not_open"
    if scheduled[0] != assignment.centre:
        return "off_assignment_session"
    if not scheduled[1] - skew_s <= ts_epoch <= scheduled[2] + skew_s:
        return "session_not_open"
    if outcome == "accepted" and (session, room, applicant_id or "") not in snapshot.roster:
        return "not_on_room_roster"
    return None


class Admission:
    """One ingest process's admission judge (not thread-safe: the ingest writer owns it)."""

    def __init__(self, store: Any, clock_skew_s: float = DEFAULT_CLOCK_SKEW_S,
                 refresh_s: float = 2.0, actor: str = "gateway") -> None:
        self.store = store
        self.skew_s = float(clock_skew_s)
        self.refresh_s = refresh_s
        #: Who the audit log names for re-evaluations this process makes.
        self.actor = actor
        self.snapshot = Snapshot()
        self._version: int | None = None
        self._next_check = 0.0
        self._next_reload = 0.0

    def refresh(self, force: bool = False) -> bool:
        """Reload the lookups if the store's admission config changed (checked at most every
        ``refresh_s``; reloaded at least every minute anyway). After a change, the events
        refused for configuration reasons are judged again. Returns whether it reloaded."""
        now = time.monotonic()
        if not force and now < self._next_check:
            return False
        self._next_check = now + self.refresh_s
        version = self.store.admission_config_version()
        if not force and version == self._version and now < self._next_reload:
            return False
        first, changed = self._version is None, version != self._version
        self.snapshot = Snapshot.load(self.store)
        self._version = version
        self._next_reload = now + 60.0
        if changed:
            self.reevaluate(trigger="ingest started" if first
                            else "assignments, sessions or rosters changed")
        return True

    def judge(self, event: CheckinEvent, received: float, device_since: float | None,
              ingest_since: float | None,
              fills_gap: Callable[[CheckinEvent], bool] | None = None) -> str | None:
        """The refusal code for ``event`` received at ``received`` (epoch s), or None.

        ``device_since`` is when the gate's latest birth was received (None: offline or not
        known), ``ingest_since`` when this process's broker connection began (None: unknown);
        ``fills_gap(event)`` says whether the event's seq is one the gateway recorded as
        missing (checked only for an event that would otherwise be stale)."""
        try:
            ts = epoch(event.ts)
        except ValueError:  # parse_event checked it; a store-level caller may not have
            return "ts_in_future"
        skew = self.skew_s
        if ts > received + skew:
            return "ts_in_future"
        if (received - ts > skew and device_since is not None and ingest_since is not None
                and device_since <= ts - skew and ingest_since <= ts - skew
                and not (fills_gap is not None and fills_gap(event))):
            return "ts_stale"
        return config_verdict(self.snapshot, skew, event.device_id, event.centre, event.room,
                              event.session, ts, event.outcome, event.applicant_id)

    def reevaluate(self, trigger: str) -> dict[str, int]:
        """Judge the events refused for configuration reasons again with the current lookups;
        store the new verdicts and audit what changed. Returns ``{"admitted": n, ...}``."""
        changes: list[tuple[str | None, str]] = []
        outcome: Counter[str] = Counter()
        for e in self.store.config_refused_events(CONFIG_CODES):
            try:
                ts = epoch(e["ts"])
            except (TypeError, ValueError):
                continue
            verdict = config_verdict(self.snapshot, self.skew_s, e["device_id"], e["centre"],
                                     e["room"], e["session"], ts, e["outcome"],
                                     e["applicant_id"])
            if verdict != e["admission"]:
                changes.append((verdict, e["event_id"]))
                outcome["admitted" if verdict is None else verdict] += 1
        if changes:
            self.store.set_admissions(changes)
            self.store.audit(self.actor, "admission_reevaluated", None,
                             {"trigger": trigger, "changed": len(changes), **outcome})
            log.info("admission re-evaluated (%s): %d events changed %s", trigger,
                     len(changes), dict(outcome))
        return dict(outcome)
