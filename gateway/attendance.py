"""Attendance derived from stored facts: roster + check-in events + proctor actions → status.

Nothing here is stored: every figure is recomputed from the events table, the roster and the
overrides, so a late event, a corrected roster or a proctor's action changes the picture the
next time anyone looks, and an export can always be reproduced.

Per applicant (on the session's roster):

=================  ================================================================
``present``        admitted (gate accept or manual admit) at or before ``starts_at``
``late``           first admitted after ``starts_at``
``awaiting``       not admitted yet and the doors are still open
``absent``         not admitted and the doors have closed, or marked absent by a proctor
``wrong_room``     admitted by a gate of another room than the roster's
=================  ================================================================

A proctor's latest action for an applicant wins over the gates: ``manual_admit`` admits (the
reason says how identity was checked, e.g. against the KTP), ``mark_absent`` records absence,
``reopen`` withdraws the earlier actions so the gates' record stands again.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

#: Proctor actions that change an applicant's attendance.
APPLICANT_ACTIONS = ("manual_admit", "mark_absent", "reopen")
#: Refusal reasons that raise an alert for the proctor.
ALERT_REASONS = ("spoof_suspected", "duplicate_identity")


def parse_time(text: str) -> datetime:
    """An ISO 8601 time as an aware datetime (``Z`` and offsets accepted; naive = UTC)."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass
class ApplicantAttendance:
    """One roster entry's state in a session."""

    applicant_id: str
    name: str
    room: str
    seat: str | None
    status: str = "awaiting"
    admitted_at: str | None = None
    admitted_by: str | None = None  # a device id, or "proctor:<username>"
    attempts: int = 0  # gate decisions about this applicant (accepted or refused)
    refused: int = 0
    flags: list[str] = field(default_factory=list)
    override: dict[str, Any] | None = None


@dataclass
class RoomAttendance:
    """Counts for one room of one session; ``present`` includes ``late``."""

    room: str
    expected: int = 0
    present: int = 0
    late: int = 0
    absent: int = 0
    awaiting: int = 0
    refused: int = 0
    spoof_suspected: int = 0
    duplicate_identity: int = 0
    wrong_room: int = 0
    manual_overrides: int = 0
    last_checkin: str | None = None
    gates: list[str] = field(default_factory=list)


def _applicant_of(event: dict[str, Any]) -> str | None:
    """Whom a gate decision is about: the matched applicant, else the card shown."""
    return event.get("applicant_id") or event.get("card_id")


def derive(session: dict[str, Any], roster: Sequence[dict[str, Any]],
           events: Sequence[dict[str, Any]], overrides: Sequence[dict[str, Any]],
           now: datetime | None = None) -> dict[str, Any]:
    """Attendance for one session: ``{"rooms": [RoomAttendance…], "applicants": [...]}``.

    ``events`` are the session's stored check-ins in time order, ``overrides`` its proctor
    actions oldest first. ``now`` decides whether the doors have closed (awaiting vs absent).
    """
    now = now or datetime.now(UTC)
    starts = parse_time(session["starts_at"])
    doors_closed = now >= parse_time(session["doors_close"])
    people = {r["applicant_id"]: ApplicantAttendance(
        applicant_id=r["applicant_id"], name=r["name"], room=r["room"], seat=r.get("seat"))
        for r in roster}
    rooms: dict[str, RoomAttendance] = {}

    def room(name: str) -> RoomAttendance:
        return rooms.setdefault(name, RoomAttendance(room=name))

    for entry in people.values():
        room(entry.room).expected += 1

    gates: dict[str, set[str]] = defaultdict(set)
    for event in events:
        where = room(event["room"])
        gates[event["room"]].add(event["device_id"])
        reason = event.get("reason")
        if reason == "spoof_suspected":
            where.spoof_suspected += 1
        elif reason == "duplicate_identity":
            where.duplicate_identity += 1
        who = people.get(_applicant_of(event) or "")
        if event["outcome"] == "refused":
            where.refused += 1
        if who is None or event["outcome"] == "no_face":
            continue
        who.attempts += 1
        if reason in ALERT_REASONS and reason not in who.flags:
            who.flags.append(reason)
        if event["outcome"] == "refused":
            who.refused += 1
            if event["room"] != who.room:
                where.wrong_room += 1  # their card, at another room's door
            continue
        # accepted
        where.last_checkin = max(where.last_checkin or "", event["ts"])
        if who.admitted_at is None:
            who.admitted_at, who.admitted_by = event["ts"], event["device_id"]
            if event["room"] != who.room:
                who.flags.append("wrong_room")
                where.wrong_room += 1

    latest: dict[str, dict[str, Any]] = {}
    for action in overrides:
        if action["action"] in APPLICANT_ACTIONS and action.get("applicant_id") in people:
            latest[action["applicant_id"]] = action
            room(people[action["applicant_id"]].room).manual_overrides += 1

    for who in people.values():
        action = latest.get(who.applicant_id)
        if action and action["action"] != "reopen":
            who.override = {k: action[k] for k in ("action", "reason", "username", "ts")}
            if action["action"] == "manual_admit" and who.admitted_at is None:
                who.admitted_at, who.admitted_by = action["ts"], f"proctor:{action['username']}"
            elif action["action"] == "mark_absent":
                who.status = "absent"
                room(who.room).absent += 1
                continue
        tally = room(who.room)
        if who.admitted_at is None:
            who.status = "absent" if doors_closed else "awaiting"
            if doors_closed:
                tally.absent += 1
            else:
                tally.awaiting += 1
            continue
        late = parse_time(who.admitted_at) > starts
        who.status = "wrong_room" if "wrong_room" in who.flags else ("late" if late else "present")
        tally.present += 1
        tally.late += int(late)

    for name, devices in gates.items():
        rooms[name].gates = sorted(devices)
    return {"session": session, "doors_closed": doors_closed,
            "rooms": [asdict(r) for _, r in sorted(rooms.items())],
            "applicants": [asdict(p) for p in sorted(
                people.values(), key=lambda p: (p.room, p.seat or "", p.applicant_id))]}


def session_attendance(store: Any, session_id: str, now: datetime | None = None,
                       ) -> dict[str, Any] | None:
    """:func:`derive` over what ``store`` holds for ``session_id``; None if no such session."""
    session = store.exam_session(session_id)
    if session is None:
        return None
    return derive(session, store.roster(session_id), store.session_events(session_id),
                  store.overrides(session_id), now)


def totals(rooms: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Sum of the room counters, for a session headline."""
    keys = ("expected", "present", "late", "absent", "awaiting", "refused", "spoof_suspected",
            "duplicate_identity", "wrong_room", "manual_overrides")
    sums: Counter[str] = Counter()
    for r in rooms:
        for k in keys:
            sums[k] += r[k]
    return {k: sums[k] for k in keys}


def public_board(attendance: dict[str, Any]) -> dict[str, Any]:
    """The public view: counts per room only; no names, ids, devices or scores."""
    session = attendance["session"]
    return {"session": {"session_id": session["session_id"], "name": session["name"],
                        "starts_at": session["starts_at"]},
            "rooms": [{k: r[k] for k in ("room", "expected", "present", "late", "absent",
                                         "awaiting")} for r in attendance["rooms"]]}
