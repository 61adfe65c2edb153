"""The liveness step at the door: challenge, 3-D check, passive score, and the attempt cap.

After the face matched (the gate knows *who* is claimed), the check-in loop hands the next
frames here: the applicant is asked for one random action, the landmark track of their answer
is checked for depth, and the last frame's face for recapture texture. A card that fails too
often is locked at this gate for a while, and the gateway is alarmed, because repeated
failures with one card are what an attacker trying photos looks like.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from device.config import LivenessGateConfig
from device.infer.challenge import Challenge, ChallengeConfig
from device.infer.liveness import LivenessCheck
from device.infer.pipeline import FaceReading

log = logging.getLogger(__name__)




class FailedAttempts:
    """Counts liveness failures per card in a sliding window and locks a card that reaches
    the cap. In memory: a restarted service forgives, which errs towards letting a real
    applicant retry; the alarm already reached the gateway."""

    def __init__(self, max_failures: int, window_s: float, lockout_s: float) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.lockout_s = lockout_s
        self._failures: dict[str, deque[float]] = {}
        self._locked_until: dict[str, float] = {}

    def is_locked(self, key: str, now: float) -> bool:
        """Whether ``key`` (a card or applicant id) is locked at ``now``."""
        until = self._locked_until.get(key)
        if until is None:
            return False
        if now >= until:
            del self._locked_until[key]
            return False
        return True

    def failed(self, key: str, now: float) -> bool:
        """Record a failure; True when this one locks the card."""
        window = self._failures.setdefault(key, deque())
        window.append(now)
        while window and now - window[0] > self.window_s:
            window.popleft()
        if len(window) >= self.max_failures:
            window.clear()
            self._locked_until[key] = now + self.lockout_s
            return True
        return False

    def succeeded(self, key: str) -> None:
        """A live answer clears the card's failures."""
        self._failures.pop(key, None)


@dataclass
class PendingClaim:
    """A face that matched and is now answering its challenge."""

    key: str            # card id, or the matched applicant id without a card
    challenge: Challenge
    decision_fields: dict[str, object] = field(default_factory=dict)
    #: When the challenge passed (a turn or nod then follows through before it is judged).
    passed_at: float | None = None
    #: The last frame with a face since it passed: what the passive check judges.
    last: tuple[FaceReading, np.ndarray | None] | None = None


@dataclass(frozen=True)
class LivenessVerdict:
    """The end of one liveness step."""

    live: bool
    reason: str | None  # wire reason when refused
    detail: str | None  # what exactly (for logs): e.g. ``challenge wrong_action``
    locked: bool = False


class LivenessGate:
    """Runs one liveness step at a time for the check-in loop."""

    def __init__(self, config: LivenessGateConfig, check: LivenessCheck | None) -> None:
        self.config = config
        self.check = check
        self.attempts = FailedAttempts(config.max_failures, config.window_s, config.lockout_s)
        self.challenge_config = ChallengeConfig(actions=config.actions,
                                                timeout_s=config.timeout_s)
        self.pending: PendingClaim | None = None

    def is_locked(self, key: str, now: float | None = None) -> bool:
        """Whether this card may not try again yet."""
        return self.attempts.is_locked(key, time.monotonic() if now is None else now)

    def begin(self, key: str, reading: FaceReading, now: float,
              decision_fields: dict[str, object]) -> str | None:
        """Start a challenge for ``key``; returns the prompt action (None: no challenge, the
        verdict is immediate — call :meth:`judge_now`)."""
        if not self.config.challenge:
            return None
        challenge = Challenge.random(now, self.challenge_config)
        challenge.observe(reading.mesh, reading.embedding, now)
        self.pending = PendingClaim(key, challenge, decision_fields)
        log.info("liveness challenge %s", challenge.action)
        return challenge.action

    def feed(self, reading: FaceReading | None, image: np.ndarray | None,
             now: float) -> LivenessVerdict | None:
        """One more frame for the pending challenge; a verdict once it is decided."""
        pending = self.pending
        assert pending is not None
        challenge = pending.challenge
        if pending.passed_at is not None:  # following a passed turn or nod through
            if not challenge.follow(reading.mesh if reading else None,
                                    reading.embedding if reading else None):
                return self._finish(LivenessVerdict(False, "challenge_failed",
                                                    "challenge identity_changed"), now)
            if reading is not None and reading.mesh is not None:
                pending.last = (reading, image)
            if now - pending.passed_at < self.config.follow_through_s:
                return None
            assert pending.last is not None
            return self._finish(self._judge(*pending.last, challenge.track), now)
        state = challenge.observe(
            reading.mesh if reading else None, reading.embedding if reading else None, now)
        if state.state == "pending":
            return None
        if state.state == "failed":
            reason = "challenge_timeout" if state.reason == "timeout" else "challenge_failed"
            return self._finish(LivenessVerdict(False, reason, f"challenge {state.reason}"),
                                now)
        assert reading is not None
        if challenge.action != "blink" and self.config.follow_through_s > 0:
            pending.passed_at, pending.last = now, (reading, image)
            return None
        return self._finish(self._judge(reading, image, challenge.track), now)

    def judge_now(self, key: str, reading: FaceReading, image: np.ndarray,
                  now: float) -> LivenessVerdict:
        """Passive check only (no challenge configured)."""
        self.pending = PendingClaim(key, Challenge.random(now, self.challenge_config))
        return self._finish(self._judge(reading, image, None), now)

    def _judge(self, reading: FaceReading, image: np.ndarray | None,
               track: list[np.ndarray] | None) -> LivenessVerdict:
        if self.check is None:
            return LivenessVerdict(True, None, None)
        result = self.check.check(reading, image, tracks=track)
        if result.live:
            return LivenessVerdict(True, None, None)
        return LivenessVerdict(False, "spoof_suspected", f"{result.reason} "
                               f"(passive {result.passive_score}, planarity "
                               f"{result.planarity})")

    def _finish(self, verdict: LivenessVerdict, now: float) -> LivenessVerdict:
        assert self.pending is not None
        key = self.pending.key
        if verdict.live:
            self.attempts.succeeded(key)
        elif self.attempts.failed(key, now):
            verdict = LivenessVerdict(False, verdict.reason, verdict.detail, locked=True)
        return verdict
