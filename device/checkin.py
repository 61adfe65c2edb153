"""The check-in loop: one frame in, one decision out, recorded before the door moves.

Order matters: the event is committed to the outbox (fsync) *before* the door opens, so nobody
can walk in without a durable record; publishing happens later in the uplink thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from device.capture import Frame, FrameSource
from device.config import GateIdentity
from device.gate.door import DoorSignal
from device.infer.pipeline import FacePipeline
from device.outbox import Outbox
from device.roster import Roster
from gerbang import wire

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decision:
    """What the gate concluded about one presentation."""

    outcome: str  # accepted | refused | no_face
    reason: str | None
    applicant_id: str | None
    score: float | None
    latency_ms: float
    frame_ref: str | None


class CheckinLoop:
    """Judges frames against the room roster, signals the door and records every decision."""

    def __init__(self, pipeline: FacePipeline, roster: Roster, threshold: float,
                 door: DoorSignal, outbox: Outbox, identity: GateIdentity,
                 on_recorded: Callable[[], None] | None = None) -> None:
        self.pipeline = pipeline
        self.roster = roster
        self.gallery = roster.gallery()
        self.threshold = threshold
        self.door = door
        self.outbox = outbox
        self.identity = identity
        self.on_recorded = on_recorded or (lambda: None)
        self.counts = {"accepted": 0, "refused": 0, "no_face": 0}

    def decide(self, frame: Frame) -> Decision | None:
        """Judge one frame; None when a live camera simply sees nobody."""
        try:
            reading = self.pipeline.read(frame.image)
        except Exception:  # a corrupt frame or runtime fault must not take the gate down
            log.exception("frame %s: inference failed; refusing", frame.index)
            return self._decision(frame, "refused", "bad_frame", None, None)
        if reading.subject is None or reading.embedding is None:
            return self._decision(frame, "no_face", "no_face", None, None)
        match = self.gallery.best(reading.embedding)
        if match is None:
            return self._decision(frame, "refused", "not_on_roster", None, None)
        if match.score >= self.threshold:
            return self._decision(frame, "accepted", None, self.gallery.ids[match.index],
                                  match.score)
        return self._decision(frame, "refused", "no_match", None, match.score)

    def _decision(self, frame: Frame, outcome: str, reason: str | None,
                  applicant_id: str | None, score: float | None) -> Decision:
        latency = (time.time() - frame.ts) * 1000
        return Decision(outcome, reason, applicant_id,
                        None if score is None else round(score, 4), round(latency, 1), frame.ref)

    def record(self, decision: Decision) -> int:
        """Commit the decision to the outbox as a wire event; returns its seq."""
        ident = self.identity

        def build(seq: int) -> tuple[str, bytes]:
            event = wire.CheckinEvent(
                event_id=wire.new_event_id(), device_id=ident.device_id, centre=ident.centre,
                room=ident.room, session=ident.session, seq=seq, ts=wire.utc_now_iso(),
                outcome=decision.outcome, reason=decision.reason,
                applicant_id=decision.applicant_id, score=decision.score,
                latency_ms=decision.latency_ms, frame_ref=decision.frame_ref)
            return wire.events_topic(ident.centre, ident.device_id), event.to_json()

        seq = self.outbox.append(build)
        self.on_recorded()
        return seq

    def handle(self, frame: Frame, report_no_face: bool) -> Decision | None:
        """Decide, record, then signal the door (in that order)."""
        decision = self.decide(frame)
        if decision is None or (decision.outcome == "no_face" and not report_no_face):
            return None
        seq = self.record(decision)
        if decision.outcome == "accepted":
            self.door.grant()
        elif decision.outcome == "refused":
            self.door.refuse()
        self.counts[decision.outcome] += 1
        # No names or templates in logs: applicant ids only (the roster maps them to people).
        log.info("seq=%d %s%s%s score=%s latency=%.0fms", seq, decision.outcome,
                 f" applicant={decision.applicant_id}" if decision.applicant_id else "",
                 f" reason={decision.reason}" if decision.reason else "",
                 decision.score, decision.latency_ms)
        return decision

    def run(self, source: FrameSource, should_stop: Callable[[], bool]) -> None:
        """Consume the source until it ends or ``should_stop()``."""
        for frame in source.frames():
            if should_stop():
                break
            self.handle(frame, report_no_face=source.one_frame_per_visit)
