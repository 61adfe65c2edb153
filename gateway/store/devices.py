"""Gates as the gateway knows them: the latest birth / last-will status and telemetry each one
sent, read back defensively (a row written by an older gateway never breaks a page), with
their outbox streams from gateway/store/seq_streams.py.
"""

from __future__ import annotations

import json
import time
from typing import Any

from gateway.store.seq_streams import SeqStreamQueries


def _valid_json(text: str | None, what: str) -> dict[str, Any]:
    """A stored status or telemetry document as the wire contract accepts it: ``{}`` when it
    is not JSON (truncated by an older gateway), and only the valid fields otherwise. Pages
    render these on every refresh, so they must never raise."""
    from gerbang import wire

    if not text:
        return {}
    try:
        return (wire.parse_status if what == "status" else wire.parse_telemetry)(text)
    except (wire.WireError, ValueError, TypeError):
        pass
    try:  # an old row: keep what each field's validation accepts on its own
        data = json.loads(text)
    except (ValueError, RecursionError):
        return {"invalid": True}
    if not isinstance(data, dict):
        return {"invalid": True}
    parse = wire.parse_status if what == "status" else wire.parse_telemetry
    kept: dict[str, Any] = {"invalid": True}
    base = {"state": data.get("state")} if what == "status" else {}
    for key, value in list(data.items())[:64]:
        if key in ("schema", "state"):
            continue
        try:
            kept.update({k: v for k, v in parse(json.dumps({**base, key: value})).items()
                         if k not in ("schema",)})
        except (wire.WireError, ValueError, TypeError, RecursionError):
            continue
    if what == "status" and isinstance(data.get("state"), str) and data["state"] in (
            "online", "offline"):
        kept["state"] = data["state"]
    return kept


def _stream_view(row: dict[str, Any]) -> dict[str, Any]:
    """One outbox stream as the devices page and ``/api/devices`` show it."""
    contiguous = row["contiguous_below"]
    return {"stream": row["stream"], "first_seq": row["first_seq"],
            "contiguous_seq": None if contiguous is None else int(contiguous) - 1,
            "top_seq": row["top"], "acked_below": row["reported_acked_below"],
            "missing": [[int(a), int(b)] for a, b, *_ in row["missing"]],
            "not_kept": [[int(a), int(b)] for a, b in row["not_kept"]],
            "resends": int(row["resends"] or 0), "replaced_from": row["replaced_from"],
            "closed": row["closed_at"] is not None}


class DeviceQueries(SeqStreamQueries):
    """Device status and telemetry (and, through SeqStreamQueries, their streams)."""

    def record_status(self, device_id: str, centre: str, status: dict[str, Any]) -> None:
        """Remember a device's latest birth/last-will message (as ``wire.parse_status``
        returned it: the ingest stores nothing else)."""
        self._executemany(
            "INSERT INTO devices (device_id, centre, state, last_seen, status) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (device_id) DO UPDATE SET "
            "centre = excluded.centre, state = excluded.state, last_seen = excluded.last_seen, "
            "status = excluded.status",
            [(device_id, centre, str(status.get("state", "unknown")), time.time(),
              json.dumps(status))])

    def record_telemetry(self, device_id: str, centre: str, telemetry: dict[str, Any]) -> None:
        """Keep only a device's latest telemetry (history belongs in a metrics system). Whole
        JSON only (``wire.parse_telemetry`` bounds it): a truncated document would break every
        page that shows the device."""
        self._executemany(
            "INSERT INTO devices (device_id, centre, state, telemetry, telemetry_at) "
            "VALUES (?, ?, 'unknown', ?, ?) ON CONFLICT (device_id) DO UPDATE SET "
            "telemetry = excluded.telemetry, telemetry_at = excluded.telemetry_at",
            [(device_id, centre, json.dumps(telemetry), time.time())])

    def devices(self) -> list[dict[str, Any]]:
        """Known devices, their last status (birth / last will), latest telemetry, and their
        outbox streams (``streams``: contiguous seq and missing ranges, from seq_streams).

        Rendered on every page, so read defensively: a row written by an older gateway (a
        truncated telemetry document, a status with a number for ``ts``) is shown as what
        ``wire.parse_status`` / ``wire.parse_telemetry`` still accept, never as a 500."""
        streams: dict[str, list[dict[str, Any]]] = {}
        for s in self.seq_streams():
            streams.setdefault(s["device_id"], []).append(_stream_view(s))
        return [{**r, "status": _valid_json(r["status"], "status"),
                 "telemetry": _valid_json(r["telemetry"], "telemetry"),
                 "streams": streams.get(r["device_id"], [])}
                for r in self._execute("SELECT * FROM devices ORDER BY device_id")]

    def device_states(self) -> dict[str, dict[str, Any]]:
        """``{device_id: {state, last_seen, centre}}`` without decoding status documents."""
        return {r["device_id"]: r for r in self._execute(
            "SELECT device_id, centre, state, last_seen FROM devices")}

    def device_outboxes(self) -> list[dict[str, Any]]:
        """The outbox position each device last reported (birth and telemetry), validated:
        ``{device_id, centre, status_outbox, telemetry_outbox}`` (None where absent)."""
        out = []
        for r in self._execute("SELECT device_id, centre, status, telemetry FROM devices"):
            status = _valid_json(r["status"], "status")
            telemetry = _valid_json(r["telemetry"], "telemetry")
            out.append({"device_id": r["device_id"], "centre": r["centre"],
                        "status_outbox": status.get("outbox"),
                        "telemetry_outbox": telemetry.get("outbox")})
        return out
