"""What the dashboard shows, as plain data: the overview of every session and the check-ins per
minute of one. The JSON API (``/api/overview``, ``/api/sessions/{id}/checkins-per-minute``) and
the server-rendered pages (gateway/pages.py) both build from here, so they always agree.
"""

from __future__ import annotations

from typing import Any

from gateway.alerts import current_alerts, open_count
from gateway.attendance import parse_time, session_attendance, totals
from gateway.store import Store


def overview(store: Store) -> dict[str, Any]:
    """Every session's room tiles, unscheduled traffic, recent events, alert count."""
    sessions = []
    for s in store.exam_sessions():
        attendance = session_attendance(store, s["session_id"])
        assert attendance is not None
        sessions.append({"session": s, "rooms": attendance["rooms"],
                         "totals": totals(attendance["rooms"])})
    known = {s["session"]["session_id"] for s in sessions}
    alerts = current_alerts(store)
    return {"sessions": sessions,
            "unscheduled": [r for r in store.room_summary() if r["session"] not in known],
            "recent": store.recent_events(15), "counts": store.counts(),
            "alerts_open": open_count(alerts), "alerts": alerts[:10]}


def checkins_per_minute(store: Store, session_id: str, minutes: int = 60,
                        ) -> dict[str, list[int]]:
    """Accepted check-ins per minute per room over the session's last ``minutes`` minutes
    of activity (oldest first), for the dashboard's plot."""
    events = [e for e in store.session_events(session_id) if e["outcome"] == "accepted"]
    if not events:
        return {}
    end = parse_time(max(e["ts"] for e in events))
    series: dict[str, list[int]] = {}
    for e in events:
        age = int((end - parse_time(e["ts"])).total_seconds() // 60)
        if age < minutes:
            series.setdefault(e["room"], [0] * minutes)[minutes - 1 - age] += 1
    return dict(sorted(series.items()))
