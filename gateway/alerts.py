"""The proctor's alert list, derived from stored facts: offline gates, door alarms, suspected
spoofs, duplicate identities, events refused at admission, seq gaps, replaced outboxes, reused
event ids and refused (hostile or broken) messages.

Each alert has a stable ``key`` so an acknowledgement sticks to it; nothing else about alerts
is stored, so the list can always be rebuilt from events, alarms, device status and the counts.
Aggregated alerts (refused events per gate and reason, rejected messages per gate, topic and
error kind) put their count in the key: new evidence is a new, unacknowledged alert.

Safety alerts come first and are never pushed off the list by noise: the list is sorted by
rank (safety, then other problems, then rejected messages, then informational records) and
only then by time, and each source is read with its own limit.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from gateway.admission import EXPLAIN

SEVERITY = {"door_forced": "high", "tamper": "high", "spoof_suspected": "high",
            "card_locked": "high", "config_refused": "high", "duplicate_identity": "high",
            "seq_gap": "high",
            "event_refused": "high", "outbox_replaced": "high", "event_id_conflict": "high",
            "device_offline": "medium", "door_held_open": "medium", "camera_lost": "medium",
            "outbox_near_full": "medium", "rejected_message": "low", "manual_override": "info",
            "exit_request": "info"}
#: Alarms that are records rather than problems: listed, never counted as open alerts.
INFORMATIONAL = ("manual_override", "exit_request")
#: Listed before anything else, whatever the time: what a proctor must act on.
SAFETY = ("door_forced", "tamper", "door_held_open", "card_locked", "config_refused",
          "spoof_suspected",
          "duplicate_identity", "seq_gap", "event_refused", "outbox_replaced",
          "event_id_conflict")
_SAFETY_ALARMS = ("door_forced", "tamper", "door_held_open", "card_locked", "config_refused")


def _rank(kind: str) -> int:
    if kind in SAFETY:
        return 0
    if kind == "rejected_message":
        return 2
    if kind in INFORMATIONAL:
        return 3
    return 1


def _iso(epoch: float | None) -> str:
    if epoch is None:
        return ""
    return datetime.fromtimestamp(float(epoch), UTC).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


def _epoch(ts: Any) -> float:
    """Sort key of an alert's time; 0 for anything that is not an ISO 8601 string."""
    if not isinstance(ts, str) or not ts:
        return 0.0
    try:
        value = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


def _ranges(ranges: list[Any], limit: int = 8) -> str:
    from gateway.seqwatch import format_ranges

    return format_ranges(ranges, limit)


def _gap_alerts(store: Any) -> list[dict[str, Any]]:
    alerts = []
    for s in store.seq_streams():
        stream = s["stream"] or '"" (a gate without streams)'
        if s["missing"] and s["alerted_since"] is not None:
            since = min(float(r[2]) for r in s["missing"])
            detail = (f"stream {stream}: seq {_ranges(s['missing'])} missing "
                      f"(highest contiguous {int(s['contiguous_below'] or 0) - 1})")
            if s["resends"]:
                detail += f"; asked the gate to re-send {s['resends']} time(s)"
            if s["not_kept"]:
                why = ("its outbox was replaced" if s["closed_at"] is not None
                       else "the gate says so")
                detail += f"; {_ranges(s['not_kept'])} no longer kept on the gate ({why})"
            alerts.append({"key": f"gap:{s['device_id']}:{s['stream']}:{int(since)}",
                           "kind": "seq_gap", "ts": _iso(since), "device_id": s["device_id"],
                           "room": None, "detail": detail})
        if s["replaced_from"] is not None:
            old = s["replaced_from"] or '"" (a gate without streams)'
            alerts.append({
                "key": f"replaced:{s['device_id']}:{s['stream']}", "kind": "outbox_replaced",
                "ts": _iso(s["first_seen_at"]), "device_id": s["device_id"], "room": None,
                "detail": f"new outbox stream {stream} (was {old}): the gate's data directory "
                          "was replaced; events its old outbox still held are lost, and its "
                          "roster and model version marks were reset"})
    return alerts


def current_alerts(store: Any, limit: int = 300) -> list[dict[str, Any]]:
    """Alerts, safety first and then newest first, each ``{key, kind, severity, ts,
    device_id, room, detail, acknowledged}``; ``acknowledged`` is None or ``{username, ts,
    note}``. Events refused at admission also carry ``reason`` (the refusal code)."""
    alerts: list[dict[str, Any]] = []
    for d in store.devices():
        if d["state"] == "offline":
            alerts.append({"key": f"offline:{d['device_id']}:{int(d['last_seen'] or 0)}",
                           "kind": "device_offline",
                           "ts": d["status"].get("ts") or _iso(d["last_seen"]),
                           "device_id": d["device_id"], "room": d["status"].get("room"),
                           "detail": "gate offline (last will received)"})
    for a in [*store.alarms(limit, kinds=_SAFETY_ALARMS),
              *store.alarms(limit, exclude=_SAFETY_ALARMS)]:
        alerts.append({"key": f"alarm:{a['alarm_id']}", "kind": a["alarm"], "ts": a["ts"],
                       "device_id": a["device_id"], "room": None, "detail": a["detail"]})
    for e in store.flagged_events(limit):
        who = e["card_id"] or e["applicant_id"] or "unknown"
        alerts.append({"key": f"event:{e['event_id']}", "kind": e["reason"], "ts": e["ts"],
                       "device_id": e["device_id"], "room": e["room"],
                       "detail": f"session {e['session']}, card {who}"})
    for r in store.refusal_summary():
        code = r["admission"]
        accepted = f", {r['accepted']} of them admitting someone" if r["accepted"] else ""
        alerts.append({
            "key": f"refused:{r['device_id']}:{code}:{r['n']}", "kind": "event_refused",
            "reason": code, "ts": _iso(r["last_received"]), "device_id": r["device_id"],
            "room": r["room"],
            "detail": f"{code}: {r['n']} event(s) not counted in attendance{accepted} "
                      f"({EXPLAIN.get(code, code)}; e.g. session {r['session']}, room "
                      f"{r['room']}, gate times {r['first_ts']} .. {r['last_ts']})"})
    alerts += _gap_alerts(store)
    for c in store.event_conflicts(limit):
        alerts.append({
            "key": f"conflict:{c['event_id']}:{c['count']}", "kind": "event_id_conflict",
            "ts": _iso(c["last_at"]), "device_id": c["device_id"], "room": None,
            "detail": f"event {c['event_id']} sent {c['count']} more time(s) with other "
                      f"content ({c['fields']}); the event stored first is kept"})
    for r in store.reject_counts()[:limit]:
        where = f"{r['device_id']}/{r['leaf']}" if r["device_id"] else "a topic outside the " \
            "contract"
        alerts.append({
            "key": f"reject:{r['id']}:{r['count']}", "kind": "rejected_message",
            "ts": _iso(r["last_at"]), "device_id": r["device_id"] or None, "room": None,
            "detail": f"{r['count']} message(s) on {where} refused: {r['kind']} (first "
                      f"{_iso(r['first_at'])}; last error: {r['last_error']})"})
    acks = store.acks()
    for alert in alerts:
        alert["severity"] = SEVERITY.get(alert["kind"], "medium")
        ack = acks.get(alert["key"])
        alert["acknowledged"] = ({k: ack[k] for k in ("username", "ts", "note")}
                                 if ack else None)
    alerts.sort(key=lambda a: (_rank(a["kind"]), -_epoch(a["ts"])))
    return alerts[:limit]


def open_count(alerts: list[dict[str, Any]]) -> int:
    """Alerts nobody has acknowledged yet (informational records excluded)."""
    return sum(1 for a in alerts if a["acknowledged"] is None and a["kind"] not in INFORMATIONAL)
