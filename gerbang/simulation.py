"""The whole system on one machine: what the demo and the exam-day rehearsal both need.

Where the shared faces are, a simulated gate's ``device.toml``, the gateway's database made
ready for a session (schedule, roster, gate assignments, a manager login), waiting for the
gateway's HTTP side, and scoring stored decisions against what each gate was really shown.
Like the demo and the rehearsal, it may import device, gateway and provisioning; nothing
there imports it.
"""

from __future__ import annotations

import json
import os
import secrets
import time
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from gerbang.wire import ID_PATTERN


def default_faces_dir() -> Path | None:
    """The shared celeba set when this machine has it."""
    root = Path(os.environ.get("GERBANG_DATA", "../shared/data"))
    celeba = root / "faces" / "celeba"
    return celeba if celeba.is_dir() else None


@dataclass
class Visit:
    """One image shown to one gate, and what should happen."""

    gate: str
    image: Path
    person: str
    enrolled: bool
    #: Applicant id on the card shown with the face (None: no card, the gate searches 1:N).
    card: str | None = None


def score(truth: dict[str, Visit], events: list[dict[str, Any]]) -> dict[str, int]:
    """Compare stored events with the ground truth of what each gate was shown.

    ``truth`` is keyed ``"<room>/<frame_ref>"``; events about frames not in it are ignored.
    """
    result = {"true_accepts": 0, "false_accepts": 0, "false_rejects": 0, "true_rejects": 0,
              "no_face": 0, "proxy_attempts": 0, "proxies_refused": 0}
    for event in events:
        visit = truth.get(f"{event['room']}/{event['frame_ref']}")
        if visit is None:
            continue
        if visit.card is not None and visit.card != visit.person:
            result["proxy_attempts"] += 1
            result["proxies_refused"] += event["outcome"] != "accepted"
        if event["outcome"] == "no_face":
            result["no_face"] += 1
        elif event["outcome"] == "accepted":
            ok = visit.enrolled and event["applicant_id"] == visit.person
            result["true_accepts" if ok else "false_accepts"] += 1
        else:
            result["false_rejects" if visit.enrolled else "true_rejects"] += 1
    return result


def toml_value(value: Any) -> str:
    """One TOML value: booleans, numbers, and strings/paths (JSON string escapes are TOML's)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def write_toml(path: Path, comment: str, sections: dict[str, dict[str, Any]]) -> None:
    """A config file of flat tables (``[name]`` then ``key = value``), under a ``# comment``."""
    lines = [f"# {comment}"]
    for name, values in sections.items():
        lines += ["", f"[{name}]", *(f"{k} = {toml_value(v)}" for k, v in values.items())]
    path.write_text("\n".join(lines) + "\n")


def write_device_config(path: Path, room: str, gate_dir: Path, broker_port: int, protocol: int,
                        fps: float, *, centre: str, session: str, device_id: str | None = None,
                        capture: dict[str, Any] | None = None,
                        broker: dict[str, Any] | None = None) -> None:
    """A simulated gate's ``device.toml``: replayed frames, mock pins, one model thread.

    ``capture`` and ``broker`` add or replace keys of those sections (the exam-day rehearsal
    replays a camera feed playlist, and puts the TLS files in ``[broker]``).
    """
    write_toml(path, "written by gerbang-demo", {
        "gate": {"device_id": device_id or f"{centre}-{room.lower()}-a", "centre": centre,
                 "room": room, "session": session, "data_dir": gate_dir},
        "broker": {"port": broker_port, "protocol": protocol, **(broker or {})},
        "capture": {"source": "replay", "path": gate_dir / "frames", "fps": fps,
                    **(capture or {})},
        "models": {"threads": 1},
        "gpio": {"pin_factory": "mock"},
    })


def get_json(url: str) -> Any:
    """GET ``url`` and parse its JSON body."""
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def wait_http(url: str, timeout: float = 30) -> None:
    """Poll ``url`` until it answers with JSON (a service that just started); TimeoutError
    after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            get_json(url)
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s")


def prepare_gateway(db: Path | str, rosters: dict[str, list[str]], *, session: str, centre: str,
                    name: str, doors_open: datetime | None = None,
                    starts_at: datetime | None = None, doors_close: datetime | None = None,
                    gates: dict[str, str] | None = None) -> tuple[str, str]:
    """Schedule the exam session (by default doors open 5 minutes ago, it starts in 20 minutes,
    WIB), import its roster, assign each of ``gates`` (device id -> room) to its room for the
    session (a gate's events count only for its assignment), and create a one-off manager
    login; returns ``(username, password)``. ``db`` is a SQLite path or a ``postgresql://``
    URL."""
    from gateway.assignments import assign_many
    from gateway.auth import add_user
    from gateway.store import open_store

    store = open_store(db)
    wib = timezone(timedelta(hours=7))
    now = datetime.now(wib).replace(microsecond=0)
    store.upsert_session({
        "session_id": session, "centre": centre, "name": name,
        "doors_open": (doors_open or now - timedelta(minutes=5)).isoformat(),
        "starts_at": (starts_at or now + timedelta(minutes=20)).isoformat(),
        "doors_close": (doors_close or now + timedelta(minutes=30)).isoformat()})
    entries = [{"applicant_id": person, "name": f"Peserta {person}", "room": room,
                "seat": f"{seat:02d}"}
               for room, people in rosters.items()
               for seat, person in enumerate(sorted(people), start=1) if ID_PATTERN.match(person)]
    store.replace_roster(session, entries)
    if gates:
        assign_many(store, [{"device_id": device, "centre": centre, "room": room,
                             "session": session} for device, room in sorted(gates.items())],
                    by="demo-setup")
    password = secrets.token_urlsafe(9)
    add_user(store, "manager", password, "manager")
    return "manager", password
