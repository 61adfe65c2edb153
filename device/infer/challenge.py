"""Active liveness challenge: the gate asks for one random action and checks it from landmarks.

After a good-quality face is found the gate asks, on screen and with a sound, for one action
drawn at random: blink, turn the head left, turn it right, or nod. A photo cannot blink; a
replayed video answers some other challenge, or none, or too late; a photo turned or tilted to
fake a head turn moves as a plane, which the planarity check in ``liveness.py`` catches from
the landmark track this challenge collects.

Measured from FaceMesh landmarks (``landmarks.Mesh``): the eye aspect ratio for blinks, yaw for
turns, pitch for nods, each relative to the face's own first frames (people differ: a baseline
beats an absolute threshold). The same identity must answer throughout: every embedding seen
during the challenge must match the first one, so a face swapped in mid-challenge fails.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import numpy as np

from device.config import ACTIONS
from device.infer.landmarks import Mesh

# Six FaceMesh points per eye for the eye aspect ratio (Soukupová & Čech 2016): corners p1/p4,
# upper lid p2/p3, lower lid p6/p5.
RIGHT_EYE_EAR = (33, 160, 158, 133, 153, 144)
LEFT_EYE_EAR = (362, 385, 387, 263, 373, 380)

#: What the applicant sees and hears, in Indonesian and English.
PROMPTS = {
    "blink": ("Kedipkan mata", "Blink your eyes"),
    "turn_left": ("Tolehkan kepala ke kiri", "Turn your head to the left"),
    "turn_right": ("Tolehkan kepala ke kanan", "Turn your head to the right"),
    "nod": ("Anggukkan kepala", "Nod your head"),
}


@dataclass(frozen=True)
class ChallengeConfig:
    """Which actions may be asked and how each is judged."""

    actions: tuple[str, ...] = ACTIONS
    #: Seconds from the prompt to the answer. A cooperative applicant blinks or turns within
    #: about 1 s; 4 s leaves room for reading the prompt without giving a replay time to search.
    timeout_s: float = 4.0
    #: Frames whose median is the face's own baseline (eyes open, looking ahead).
    baseline_frames: int = 5
    #: Consecutive frames the (3-frame median) eye aspect ratio must stay closed: a deliberate
    #: blink lasts 200-400 ms (3-6 frames at 15 fps); landmark jitter on a still face or photo
    #: does not stay down that long.
    blink_frames: int = 2
    #: A blink: the eye aspect ratio falls below this share of the baseline, then recovers to
    #: ``blink_recover`` of it. Open eyes give about 0.25-0.3, closed about 0.1.
    blink_closed: float = 0.65
    blink_recover: float = 0.85
    #: A turn: yaw changes by at least this many degrees in the asked direction. 15° is an easy
    #: movement that FaceMesh measures well above its frame-to-frame jitter (about 2°).
    turn_deg: float = 15.0
    #: A turn this far the *other* way fails the challenge (a replay of the opposite request).
    wrong_turn_deg: float = 12.0
    #: A nod: pitch changes by at least this many degrees.
    nod_deg: float = 10.0
    #: Cosine similarity every later embedding must keep with the first one: well under the
    #: genuine-pair distribution (same person, seconds apart, ≥ 0.6) and above impostors.
    same_identity: float = 0.45

    def __post_init__(self) -> None:
        from gerbang.config import require

        require(bool(self.actions) and set(self.actions) <= set(ACTIONS), "actions",
                f"must be a non-empty subset of {ACTIONS}, got {self.actions}")
        require(0.5 <= self.timeout_s <= 30, "timeout_s", "must be 0.5..30 seconds")
        require(self.baseline_frames >= 1, "baseline_frames", "must be >= 1")
        require(self.blink_frames >= 1, "blink_frames", "must be >= 1")
        require(0 < self.blink_closed < self.blink_recover <= 1.0, "blink_closed",
                "need 0 < blink_closed < blink_recover <= 1")
        require(5 <= self.turn_deg <= 45, "turn_deg", "must be 5..45 degrees")
        require(3 <= self.nod_deg <= 45, "nod_deg", "must be 3..45 degrees")
        require(-1 < self.same_identity < 1, "same_identity", "must be in (-1, 1)")


def eye_aspect_ratio(mesh: Mesh) -> float:
    """Mean eye aspect ratio of both eyes: lid opening over eye width."""
    p = mesh.points[:, :2]

    def one(idx: tuple[int, ...]) -> float:
        p1, p2, p3, p4, p5, p6 = (p[i] for i in idx)
        width = np.linalg.norm(p1 - p4)
        return float((np.linalg.norm(p2 - p6) + np.linalg.norm(p3 - p5)) / (2 * width)) \
            if width > 0 else 0.0

    return (one(RIGHT_EYE_EAR) + one(LEFT_EYE_EAR)) / 2


@dataclass
class ChallengeResult:
    """Where a challenge stands: ``pending``, ``passed`` or ``failed`` (with a reason)."""

    state: str = "pending"
    #: ``timeout``, ``identity_changed``, ``wrong_action`` or ``face_lost`` when failed.
    reason: str | None = None
    elapsed_s: float = 0.0


@dataclass
class Challenge:
    """One challenge in progress. Feed it every frame's mesh and embedding with
    :meth:`observe`; it answers ``pending`` until it has passed or failed."""

    action: str
    started_at: float
    config: ChallengeConfig = field(default_factory=ChallengeConfig)
    #: Landmark track (x, y of the 468 points per frame) for the planarity check.
    track: list[np.ndarray] = field(default_factory=list)
    _reference: np.ndarray | None = None
    _baseline: list[tuple[float, float, float]] = field(default_factory=list)
    _closed_seen: bool = False
    _closed_run: int = 0
    _ears: list[float] = field(default_factory=list)
    _nod_peak: float = 0.0
    result: ChallengeResult = field(default_factory=ChallengeResult)

    @classmethod
    def random(cls, now: float, config: ChallengeConfig | None = None) -> Challenge:
        """A challenge with an action drawn by the OS's CSPRNG: an attacker cannot predict
        which video to replay."""
        config = config or ChallengeConfig()
        return cls(action=secrets.choice(config.actions), started_at=now, config=config)

    @property
    def prompt(self) -> tuple[str, str]:
        """(Indonesian, English) instruction for the screen."""
        return PROMPTS[self.action]

    def _fail(self, reason: str, now: float) -> ChallengeResult:
        self.result = ChallengeResult("failed", reason, now - self.started_at)
        return self.result

    def follow(self, mesh: Mesh | None, embedding: np.ndarray | None) -> bool:
        """One frame after the challenge passed, added to the track so the 3-D check sees the
        movement out to its peak, not just its first 15°. False if it is another face."""
        if mesh is None:
            return True
        if (embedding is not None and self._reference is not None
                and float(np.dot(self._reference, embedding)) < self.config.same_identity):
            return False
        self.track.append(mesh.points[:, :2].copy())
        return True

    def observe(self, mesh: Mesh | None, embedding: np.ndarray | None,
                now: float) -> ChallengeResult:
        """Take one frame (``mesh`` None: no face in it) and return the state so far."""
        if self.result.state != "pending":
            return self.result
        if now - self.started_at > self.config.timeout_s:
            return self._fail("timeout", now)
        if mesh is None:
            return self.result  # a blink or a turn can lose the face for a frame or two
        if embedding is not None:
            if self._reference is None:
                self._reference = embedding
            elif float(np.dot(self._reference, embedding)) < self.config.same_identity:
                return self._fail("identity_changed", now)
        self.track.append(mesh.points[:, :2].copy())
        yaw, pitch, _ = mesh.pose_deg()
        self._ears.append(eye_aspect_ratio(mesh))
        ear = float(np.median(self._ears[-3:]))  # one jittery frame does not make a blink
        if len(self._baseline) < self.config.baseline_frames:
            self._baseline.append((ear, yaw, pitch))
            return self.result
        base_ear, base_yaw, base_pitch = np.median(np.array(self._baseline), axis=0)
        # Positive: the subject turned to their own left. The gate's camera is not mirrored, so
        # their left is the image's right, where the nose goes as pose_deg's yaw falls
        # (measured on the labelled real turns of ../shared/data/video, docs/liveness.md).
        turned = base_yaw - yaw
        if self.action == "blink":
            if ear < self.config.blink_closed * base_ear:
                self._closed_run += 1
                self._closed_seen |= self._closed_run >= self.config.blink_frames
            else:
                self._closed_run = 0
                if self._closed_seen and ear >= self.config.blink_recover * base_ear:
                    self.result = ChallengeResult("passed", None, now - self.started_at)
        elif self.action in ("turn_left", "turn_right"):
            sign = 1.0 if self.action == "turn_left" else -1.0
            if sign * turned >= self.config.turn_deg:
                self.result = ChallengeResult("passed", None, now - self.started_at)
            elif -sign * turned >= self.config.wrong_turn_deg:
                return self._fail("wrong_action", now)
        elif self.action == "nod":
            self._nod_peak = max(self._nod_peak, abs(pitch - base_pitch))
            if self._nod_peak >= self.config.nod_deg:
                self.result = ChallengeResult("passed", None, now - self.started_at)
            elif abs(turned) >= self.config.wrong_turn_deg:
                return self._fail("wrong_action", now)
        return self.result
