"""The applicants at the doors: each arrival shows its frames, reads the gate, acts on it.

One thread per gate plays that gate's arrivals in order (a queue forms when the gate is slow or
down). A genuine applicant retries, goes on to the right room, or after
:data:`~gerbang.rehearsal.scenario.MAX_GENUINE_TRIES` refusals asks the proctor, who checks the
KTP and admits them through the gateway's API. :class:`Morning` is what
the doors, the fault injector and the sampler share while the doors are open.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import urllib.error
from dataclasses import replace
from datetime import datetime

import cv2

from gerbang.rehearsal.fleet import HALLWAY, GateRig, api
from gerbang.rehearsal.frames import render_attempt
from gerbang.rehearsal.scenario import DECISION_WAIT_S, POOR_CAPTURES, SESSION, Attempt, DoorVisit

log = logging.getLogger("rehearsal")


GATE_WENT_DOWN = "the gate went down before deciding"


class Morning:
    """What the doors, the fault injector and the sampler share while the doors are open."""

    def __init__(self, rigs: dict[str, GateRig], base_url: str, proctor_token: str,
                 rooms_of: dict[str, str], window_s: float, camera_fps: float, seed: int,
                 ) -> None:
        self.rigs = rigs
        self.base_url = base_url
        self.proctor_token = proctor_token
        self.rooms_of = rooms_of
        self.window_s = window_s
        self.period = 1.0 / camera_fps
        self.seed = seed
        self.stop = threading.Event()
        self.t0 = time.monotonic()
        #: Wall-clock time the doors opened (the session's doors_open); set with ``t0``.
        self.wall0: datetime | None = None
        self.lock = threading.Lock()
        self.admitted = 0
        self.proctor_admits = 0
        self.refusals_seen = 0
        self.at_doors = 0

    def rel(self, monotonic: float | None = None) -> float:
        """Seconds since doors opened."""
        return (time.monotonic() if monotonic is None else monotonic) - self.t0

    def rel_ts(self, ts: str | None) -> float | None:
        """Seconds since doors opened of a wire timestamp (ISO 8601), or None."""
        if ts is None or self.wall0 is None:
            return None
        try:
            when = datetime.fromisoformat(ts.replace("Z", "+00:00"))
        except ValueError:
            return None
        return (when - self.wall0).total_seconds()

    def wait_until(self, at_s: float) -> bool:
        """Sleep until ``at_s`` after doors open; False when the rehearsal is stopping."""
        return not self.stop.wait(max(0.0, self.t0 + at_s - time.monotonic()))


def show_attempt(morning: Morning, rig: GateRig, attempt: Attempt) -> Attempt:
    """Stand in front of the gate with one frame and read the outcome off it."""
    while not rig.up.wait(0.5):  # the gate is down: the applicant waits at the door
        if morning.stop.is_set():
            attempt.note = "rehearsal stopped"
            return attempt
    rig.frames += 1
    name = f"{rig.device_id}-{rig.frames:05d}.jpg"
    frame = render_attempt(attempt, morning.rooms_of, morning.seed + rig.frames)
    ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 92])
    assert ok
    tmp = rig.camera / f".{name}.tmp"
    tmp.write_bytes(jpeg.tobytes())
    os.replace(tmp, rig.camera / name)
    rig.decisions()  # whatever the gate said before this frame is not about it
    attempt.frame_ref = name
    rig.point_feed(name)
    taken = rig.wait_captured(name, timeout=4 * morning.period + 5.0, stop=morning.stop)
    rig.point_feed(HALLWAY)
    if taken is None:
        attempt.note = "the camera never took the frame"
        return attempt
    attempt.shown_at = morning.rel(taken)
    rig.deciding.set()
    try:
        _read_decision(morning, rig, attempt)
    finally:
        rig.deciding.clear()
    return attempt


def _read_decision(morning: Morning, rig: GateRig, attempt: Attempt) -> None:
    """Wait for the gate's decision about the frame just taken (its log line)."""
    deadline = time.monotonic() + morning.period + DECISION_WAIT_S
    while time.monotonic() < deadline and not morning.stop.is_set():
        for decision in rig.decisions():
            if attempt.card and decision["card"] and decision["card"] != attempt.card:
                continue  # a late decision about an earlier frame
            attempt.outcome = decision["outcome"]
            attempt.reason = decision["reason"]
            attempt.applicant_id = decision["applicant"]
            attempt.seq = int(decision["seq"])
            with morning.lock:
                morning.refusals_seen += attempt.outcome == "refused"
            return
        if not rig.alive:
            attempt.note = GATE_WENT_DOWN
            return
        time.sleep(0.05)
    attempt.note = "no decision: no face found, or the frame was skipped"


def proctor_admit(morning: Morning, visit: DoorVisit, refusals: int) -> float | None:
    """The proctor checks the KTP and admits by hand through the gateway's API (waiting for the
    gateway if it is down); returns when, in seconds after doors open."""
    reason = (f"identity checked against KTP by the proctor after {refusals} failed tries at gate "
              f"{visit.gate}")
    path = f"/api/sessions/{SESSION}/applicants/{visit.applicant_id}/actions"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not morning.stop.is_set():
        try:
            api(morning.base_url, "POST", path, morning.proctor_token,
                {"action": "manual_admit", "reason": reason})
            return morning.rel()
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                log.error("proctor could not admit %s: HTTP %d %s", visit.applicant_id,
                          exc.code, exc.read()[:200])
                return None
        except OSError:
            pass  # the gateway is restarting: the proctor tries again
        time.sleep(1.0)
    log.error("proctor could not reach the gateway to admit %s", visit.applicant_id)
    return None


def perform_visit(morning: Morning, visit: DoorVisit) -> None:
    """Play one arrival out at its gate."""
    if visit.after is not None:
        visit.after.wait(timeout=morning.window_s)
    rig = morning.rigs[visit.gate]
    visit.started_at = morning.rel()
    with morning.lock:
        morning.at_doors += 1
    try:
        refusals = 0
        for planned in visit.attempts:
            attempt = show_attempt(morning, rig, replace(planned))
            visit.shown.append(attempt)
            for _ in range(3):  # the gate died under them: same frame again once it is back
                if attempt.note != GATE_WENT_DOWN or morning.stop.is_set():
                    break
                attempt = show_attempt(morning, rig, replace(planned))
                visit.shown.append(attempt)
            if morning.stop.is_set():
                return
            if attempt.outcome == "accepted":
                # The truth's time is the gate's decision time (the event's ts, as the gateway
                # judges present/late by it), not when the rehearsal read the log line: under
                # load that lag put an admission just before the start on the other side.
                decided = morning.rel_ts(rig.decision_ts(attempt.seq)) \
                    if attempt.seq is not None else None
                visit.admitted_at = decided if decided is not None else morning.rel()
                visit.admitted_by = "gate"
                break
            if attempt.capture not in POOR_CAPTURES:
                refusals += 1
        if visit.genuine and visit.admitted_at is None:
            when = proctor_admit(morning, visit, refusals)
            if when is not None:
                visit.admitted_at, visit.admitted_by = when, "proctor"
                with morning.lock:
                    morning.proctor_admits += 1
        if visit.genuine and visit.admitted_at is not None:
            with morning.lock:
                morning.admitted += 1
    finally:
        visit.finished_at = morning.rel()
        with morning.lock:
            morning.at_doors -= 1


def run_door(morning: Morning, visits: list[DoorVisit]) -> None:
    """One gate's arrivals in order (a queue forms when the gate is slow or down)."""
    for visit in visits:
        if not morning.wait_until(visit.at_s):
            break
        try:
            perform_visit(morning, visit)
        except Exception:  # one broken visit must not close the door for everyone after
            log.exception("visit of %s at %s failed", visit.person, visit.gate)
        finally:
            visit.done.set()
    for visit in visits:
        visit.done.set()
