"""The check-in loop: one frame in, one decision out, recorded before the door moves.

Order matters: the event is committed to the outbox (fsync) *before* the door opens, so nobody
can walk in without a durable record; publishing happens later in the uplink thread.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from device.capture import Frame, FrameSource
from device.config import GateIdentity, QualityConfig
from device.decide.card import read_card
from device.decide.liveness_policy import LivenessGate
from device.decide.roster import Roster
from device.gate.door import Door
from device.infer.pipeline import FacePipeline, FaceReading
from device.infer.quality import assess
from device.screen.server import Screen
from device.uplink.alarms import record_alarm
from device.uplink.outbox import Outbox
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
    card_id: str | None = None
    mode: str | None = None


@dataclass(frozen=True)
class MatchPolicy:
    """How faces are matched: the threshold for the gallery's score kind and whether a card is
    required."""

    threshold: float
    require_card: bool = False
    #: The score kind ``threshold`` is for, and how to get the threshold of another kind (a
    #: pushed roster with a session cohort switches cosine to T-norm scores, whose scale
    #: differs): ``device.processes.assembly.threshold_for``. None: the threshold fits every roster.
    score_kind: str | None = None
    threshold_for: Callable[[str], float] | None = None
    #: The threshold for a roster as a whole (its score kind and the calibration it carries,
    #: ``device.processes.assembly.choose_threshold``) and a report of where it comes from
    #: (``{source, score_kind, far, threshold}``, for the birth message): when set, every
    #: roster put in use, pushed ones included, gets its own threshold; ``threshold_for`` is
    #: then not used.
    roster_threshold: Callable[[Roster], tuple[float, dict[str, Any]]] | None = None


class CheckinLoop:
    """Judges frames against the room roster, signals the door and records every decision.

    With a card (QR read from the same frame): 1:1 against the card owner's template, plus a
    duplicate check over the whole room: if the face matches someone else better (and above the
    threshold), it is refused as ``duplicate_identity`` — the proxy case — not admitted. Without
    a card: 1:N over the room unless the policy requires a card.
    """

    def __init__(self, pipeline: FacePipeline, roster: Roster, policy: MatchPolicy,
                 quality: QualityConfig, door: Door, outbox: Outbox,
                 identity: GateIdentity, on_recorded: Callable[[], None] | None = None,
                 read_cards: bool = True, liveness: LivenessGate | None = None,
                 screen: Screen | None = None) -> None:
        self.pipeline = pipeline
        self.policy = policy
        #: Where the threshold in use comes from (set by ``use_roster`` when the policy says).
        self.calibration: dict[str, Any] | None = None
        self.use_roster(roster)
        self.quality = quality
        self.door = door
        self.outbox = outbox
        self.identity = identity
        self.on_recorded = on_recorded or (lambda: None)
        self.read_cards = read_cards
        #: With liveness on, a match is only a claim: the face must then pass the liveness
        #: step (challenge, 3-D, passive) on the following frames before the door opens.
        self.liveness = liveness
        #: The applicant screen at the door, told every decision and challenge and given the
        #: camera's frames; None on a gate without a display.
        self.screen = screen
        self.last_reading: FaceReading | None = None
        self.counts = {"accepted": 0, "refused": 0, "no_face": 0}
        self.frames = 0  # frames judged since start (telemetry: fps)
        self.latencies_ms: deque[float] = deque(maxlen=200)  # recent decisions (telemetry)
        #: Recent per-stage inference times (detect, landmarks, align, embed; telemetry).
        self.stage_ms: dict[str, deque[float]] = {}

    def stage_p50_ms(self) -> dict[str, float]:
        """Median time of each inference stage over the recent frames (telemetry)."""
        return {stage: round(sorted(values)[len(values) // 2], 1)
                for stage, values in list(self.stage_ms.items()) if values}

    def use_roster(self, roster: Roster) -> None:
        """Match against ``roster`` from the next frame on (a pushed roster replaces the old
        one while the gate runs; one assignment, so a frame sees the old or the new one whole).
        """
        gallery = roster.gallery()
        policy = self.policy
        if policy.roster_threshold is not None:
            threshold, self.calibration = policy.roster_threshold(roster)
            if threshold != policy.threshold or gallery.score_kind != policy.score_kind:
                log.warning("roster v%d: %s scores, threshold %.4f → %.4f", roster.version,
                            gallery.score_kind, policy.threshold, threshold)
            self.policy = replace(policy, threshold=threshold, score_kind=gallery.score_kind)
        elif (policy.threshold_for is not None and policy.score_kind is not None
                and gallery.score_kind != policy.score_kind):
            # Raises (ConfigError naming match.threshold) rather than judge T-norm scores
            # against a cosine threshold, which would admit strangers.
            threshold = policy.threshold_for(gallery.score_kind)
            log.warning("roster v%d gives %s scores (was %s): threshold %.4f → %.4f",
                        roster.version, gallery.score_kind, policy.score_kind,
                        policy.threshold, threshold)
            self.policy = replace(policy, threshold=threshold, score_kind=gallery.score_kind)
        # One assignment, threshold included: a frame never sees a gallery with the threshold
        # of another score kind.
        self._matching = (roster, gallery, {a: i for i, a in enumerate(gallery.ids)},
                          self.policy.threshold)
        log.info("matching against roster v%d (%d applicants)", roster.version,
                 len(roster.entries))

    @property
    def roster(self) -> Roster:
        """The roster in use."""
        return self._matching[0]

    def decide(self, frame: Frame) -> Decision | None:
        """Judge one frame."""
        _, gallery, index, threshold = self._matching
        try:
            card = read_card(frame.image) if self.read_cards else None
            reading = self.pipeline.read(frame.image)
        except Exception:  # a corrupt frame or runtime fault must not take the gate down
            log.exception("frame %s: inference failed; refusing", frame.index)
            return self._decision(frame, "refused", "bad_frame")
        self.last_reading = reading
        for stage, ms in reading.timings_ms.items():
            self.stage_ms.setdefault(stage, deque(maxlen=200)).append(ms)
        card_id = card.applicant_id if card else None
        _, problem = assess(reading, frame.image.shape, self.quality)
        if problem == "no_face":
            return self._decision(frame, "no_face", "no_face", card_id=card_id)
        if problem:
            return self._decision(frame, "refused", problem, card_id=card_id)
        assert reading.embedding is not None
        scores = gallery.scores(reading.embedding)
        best = int(np.argmax(scores)) if len(scores) else None
        if card_id is not None:
            claimed = index.get(card_id)
            if claimed is None:
                return self._decision(frame, "refused", "not_on_roster", card_id=card_id,
                                      mode="1:1")
            claim_score = float(scores[claimed])
            if best != claimed and scores[best] >= threshold and scores[best] > claim_score:
                log.warning("card %s shown by a face matching another roster entry better "
                            "(%.3f vs %.3f): possible proxy", card_id, scores[best], claim_score)
                return self._decision(frame, "refused", "duplicate_identity", score=claim_score,
                                      card_id=card_id, mode="1:1")
            if claim_score >= threshold:
                return self._decision(frame, "accepted", None, card_id, claim_score,
                                      card_id=card_id, mode="1:1")
            return self._decision(frame, "refused", "no_match", score=claim_score,
                                  card_id=card_id, mode="1:1")
        if self.policy.require_card:
            return self._decision(frame, "refused", "no_card")
        if best is None:
            return self._decision(frame, "refused", "not_on_roster", mode="1:N")
        if scores[best] >= threshold:
            return self._decision(frame, "accepted", None, gallery.ids[best],
                                  float(scores[best]), mode="1:N")
        return self._decision(frame, "refused", "no_match", score=float(scores[best]),
                              mode="1:N")

    def _decision(self, frame: Frame, outcome: str, reason: str | None,
                  applicant_id: str | None = None, score: float | None = None,
                  card_id: str | None = None, mode: str | None = None) -> Decision:
        latency = (time.time() - frame.ts) * 1000
        return Decision(outcome, reason, applicant_id,
                        None if score is None else round(score, 4), round(latency, 1),
                        frame.ref, card_id, mode)

    def record(self, decision: Decision) -> int | None:
        """Commit the decision to the outbox as a wire event; returns its seq (None: a frame
        without a face, not kept because the outbox is at its disk bound)."""
        ident = self.identity

        def build(seq: int) -> tuple[str, bytes]:
            event = wire.CheckinEvent(
                event_id=wire.new_event_id(), device_id=ident.device_id, centre=ident.centre,
                room=ident.room, session=ident.session, seq=seq, ts=wire.utc_now_iso(),
                outcome=decision.outcome, reason=decision.reason,
                applicant_id=decision.applicant_id, score=decision.score,
                latency_ms=decision.latency_ms, frame_ref=decision.frame_ref,
                card_id=decision.card_id, mode=decision.mode, stream=self.outbox.stream)
            return wire.events_topic(ident.centre, ident.device_id), event.to_json()

        # Every decision is kept whatever the disk bound: the door depends on a record. Only a
        # frame without a face may be dropped, and only at the bound.
        seq = self.outbox.append(build, droppable=decision.outcome == "no_face")
        if seq is not None:
            self.on_recorded()
        return seq

    def record_alarm(self, alarm: str, detail: str | None = None) -> int:
        """Commit an alarm to the outbox (same durable queue and seq as the events)."""
        seq = record_alarm(self.outbox, self.identity, alarm, detail)
        self.on_recorded()
        return seq

    def _liveness_step(self, frame: Frame, decision: Decision | None) -> Decision | None:
        """Turn a match into a challenge, or a finished challenge into a decision."""
        assert self.liveness is not None
        liveness = self.liveness
        if liveness.pending is not None:
            try:
                reading = self.pipeline.read(frame.image)
            except Exception:
                log.exception("frame %s: inference failed during the liveness step", frame.index)
                reading = None
            verdict = liveness.feed(reading, frame.image, frame.ts)
            if verdict is None:
                return None  # still answering; the screen keeps the prompt
            claim, liveness.pending = liveness.pending, None
            claimed: Decision = claim.decision_fields["decision"]  # type: ignore[assignment]
            if verdict.live:
                return self._decision(frame, "accepted", None, claimed.applicant_id,
                                      claimed.score, card_id=claimed.card_id, mode=claimed.mode)
            log.warning("liveness refused card/applicant %s: %s", claim.key, verdict.detail)
            if verdict.locked:
                log.warning("%s locked at this gate after repeated liveness failures", claim.key)
                self.record_alarm("card_locked", f"{claim.key}: {verdict.reason}")
            return self._decision(frame, "refused", verdict.reason, score=claimed.score,
                                  card_id=claimed.card_id, mode=claimed.mode)
        if decision is None or decision.outcome != "accepted":
            return decision
        key = decision.card_id or decision.applicant_id or ""
        fields: dict[str, object] = {"decision": decision}
        if liveness.is_locked(key, frame.ts):
            return self._decision(frame, "refused", "card_locked", score=decision.score,
                                  card_id=decision.card_id, mode=decision.mode)
        reading = self.last_reading
        assert reading is not None
        action = liveness.begin(key, reading, frame.ts, fields)
        if action is not None:
            self._show("challenge")
            self._tell_screen("challenge", action=action, timeout_s=liveness.config.timeout_s)
            return None
        verdict = liveness.judge_now(key, reading, frame.image, frame.ts)
        liveness.pending = None
        if verdict.live:
            return decision
        if verdict.locked:
            self.record_alarm("card_locked", f"{key}: {verdict.reason}")
        return self._decision(frame, "refused", verdict.reason, score=decision.score,
                              card_id=decision.card_id, mode=decision.mode)

    def _show(self, state: str) -> None:
        show = getattr(self.door, "show", None)
        if show is not None:
            show(state)

    def _tell_screen(self, state: str, **details: Any) -> None:
        """Show ``state`` on the applicant screen, if there is one; a failing screen is logged
        and never stops the gate."""
        if self.screen is None:
            return
        try:
            self.screen.show(state, **details)
        except Exception:
            log.exception("applicant screen failed to show %s; the gate carries on", state)

    def _show_decision(self, decision: Decision) -> None:
        """The applicant's name (from the roster entry; never logged) and room on acceptance,
        the reason on refusal (the screen words it; never the score)."""
        if decision.outcome == "accepted":
            entry = self.roster.by_id().get(decision.applicant_id or "")
            self._tell_screen("accepted", name=entry.name if entry else None,
                              room=self.identity.room)
        elif decision.outcome == "refused":
            self._tell_screen("refused", reason=decision.reason)

    def handle(self, frame: Frame, report_no_face: bool) -> Decision | None:
        """Decide, record, then signal the door (in that order)."""
        if self.liveness is not None and self.liveness.pending is not None:
            decision = self._liveness_step(frame, None)
        else:
            decision = self.decide(frame)
            if self.liveness is not None:
                decision = self._liveness_step(frame, decision)
        if decision is None or (decision.outcome == "no_face" and not report_no_face):
            return None
        seq = self.record(decision)
        if seq is None:
            log.warning("outbox at its bound (%d events): frame without a face not kept",
                        self.outbox.max_events)
            return decision
        if decision.outcome == "accepted":
            self.door.grant()
        elif decision.outcome == "refused":
            self.door.refuse()
        if self.screen is not None:
            self._show_decision(decision)
        self.counts[decision.outcome] += 1
        self.latencies_ms.append(decision.latency_ms)
        # No names or templates in logs: applicant ids only (the roster maps them to people).
        log.info("seq=%d %s%s%s%s score=%s latency=%.0fms", seq, decision.outcome,
                 f" applicant={decision.applicant_id}" if decision.applicant_id else "",
                 f" card={decision.card_id}" if decision.card_id else "",
                 f" reason={decision.reason}" if decision.reason else "",
                 decision.score, decision.latency_ms)
        return decision

    def run(self, source: FrameSource, should_stop: Callable[[], bool],
            progressed: Callable[[], None] = lambda: None) -> None:
        """Consume the source until it ends or ``should_stop()``; ``progressed`` after each
        frame (the systemd watchdog is petted there, and only there)."""
        for frame in source.frames():
            if should_stop():
                break
            if self.screen is not None:
                self.screen.preview(frame.image)
            self.handle(frame, report_no_face=source.one_frame_per_visit)
            self.frames += 1
            progressed()
