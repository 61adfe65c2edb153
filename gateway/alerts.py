"""The proctor's alert list, derived from stored facts: offline gates, door alarms, suspected
spoofs, duplicate identities and refused (hostile or broken) messages.

Each alert has a stable ``key`` so an acknowledgement sticks to it; nothing else about alerts
is stored, so the list can always be rebuilt from events, alarms and device status.
"""

from __future__ import annotations

from typing import Any

SEVERITY = {"door_forced": "high", "tamper": "high", "spoof_suspected": "high",
            "card_locked": "high",
            "duplicate_identity": "high", "device_offline": "medium",
            "door_held_open": "medium", "camera_lost": "medium", "outbox_near_full": "medium",
            "rejected_message": "low", "manual_override": "info", "exit_request": "info"}
#: Alarms that are records rather than problems: listed, never counted as open alerts.
INFORMATIONAL = ("manual_override", "exit_request")


def current_alerts(store: Any, limit: int = 300) -> list[dict[str, Any]]:
    """Alerts newest first, each ``{key, kind, severity, ts, device_id, room, detail,
    acknowledged}``; ``acknowledged`` is None or ``{username, ts, note}``."""
    alerts: list[dict[str, Any]] = []
    for d in store.devices():
        if d["state"] == "offline":
            alerts.append({"key": f"offline:{d['device_id']}:{int(d['last_seen'] or 0)}",
                           "kind": "device_offline", "ts": d["status"].get("ts", ""),
                           "device_id": d["device_id"], "room": d["status"].get("room"),
                           "detail": "gate offline (last will received)"})
    for a in store.alarms(limit):
        alerts.append({"key": f"alarm:{a['alarm_id']}", "kind": a["alarm"], "ts": a["ts"],
                       "device_id": a["device_id"], "room": None, "detail": a["detail"]})
    for e in store.flagged_events(limit):
        who = e["card_id"] or e["applicant_id"] or "unknown"
        alerts.append({"key": f"event:{e['event_id']}", "kind": e["reason"], "ts": e["ts"],
                       "device_id": e["device_id"], "room": e["room"],
                       "detail": f"session {e['session']}, card {who}"})
    for r in store.rejects()[-limit:]:
        alerts.append({"key": f"reject:{r['id']}", "kind": "rejected_message",
                       "ts": r["ts"], "device_id": None, "room": None,
                       "detail": f"{r['topic']}: {r['error']}"})
    acks = store.acks()
    for alert in alerts:
        alert["severity"] = SEVERITY.get(alert["kind"], "medium")
        ack = acks.get(alert["key"])
        alert["acknowledged"] = ({k: ack[k] for k in ("username", "ts", "note")}
                                 if ack else None)
    alerts.sort(key=lambda a: a["ts"] or "", reverse=True)
    return alerts[:limit]


def open_count(alerts: list[dict[str, Any]]) -> int:
    """Alerts nobody has acknowledged yet (informational records excluded)."""
    return sum(1 for a in alerts if a["acknowledged"] is None and a["kind"] not in INFORMATIONAL)
