"""Real video clips for the liveness step: the label file and every frame's reading.

A clip is read by the replay source (``device/capture/replay.py``, the one the demo and the
rehearsal use) and each frame goes through the gate's own pipeline (YuNet → FaceMesh → SFace)
and the passive classifier. What is kept per frame is what the liveness step needs later: the
reading (mesh, embedding, crop), the passive score, and the FaceMesh signals (eye aspect ratio,
yaw, pitch) that labelling and the jitter measurements read.

Labels (``video_labels.toml``, next to this module): one table per clip file, naming its
actions (``blink``, ``turn_left``, ``turn_right``, ``nod``; a turn to the *person's* own
left is ``turn_left``) as inclusive frame ranges, and the frames without a usable frontal
face (``no_face``). How the labels were made is said in the file's header and in
docs/liveness.md ("On real video").
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from device.capture.replay import VIDEO_SUFFIXES, ReplaySource
from device.config import ACTIONS
from device.infer.challenge import eye_aspect_ratio
from device.infer.liveness import PassiveLiveness
from device.infer.pipeline import FacePipeline, FaceReading
from gerbang.progress import progress

DEFAULT_LABELS = Path(__file__).with_name("video_labels.toml")
#: Label kinds besides the actions: frames without a usable frontal face, and movement that is
#: no action (winks, grimaces; neither a missed action nor a false one when a detector fires).
NO_FACE, OTHER = "no_face", "other"


@dataclass(frozen=True)
class ClipLabels:
    """Ground truth of one clip: action → list of (first, last) frame, inclusive."""

    file: str
    kind: str  # ``bona_fide`` or ``attack``
    actions: dict[str, list[tuple[int, int]]]
    no_face: list[tuple[int, int]] = field(default_factory=list)
    other: list[tuple[int, int]] = field(default_factory=list)
    note: str = ""

    def events(self) -> list[tuple[str, int, int]]:
        """Every labelled action as (action, first, last), in time order."""
        return sorted(((a, s, e) for a, spans in self.actions.items() for s, e in spans),
                      key=lambda x: x[1])

    def frontal(self, first: int, last: int) -> bool:
        """Whether no frame of ``first..last`` is labelled without a usable frontal face."""
        return not any(s <= last and first <= e for s, e in self.no_face)

    def near(self, action: str, frame: int, margin: int = 0) -> bool:
        """Whether ``frame`` lies within ``margin`` frames of a labelled ``action`` or of
        ``other`` movement (then a detector firing there is not a false action)."""
        spans = self.actions.get(action, []) + self.other
        return any(s - margin <= frame <= e + margin for s, e in spans)


def _spans(value: Any, where: str) -> list[tuple[int, int]]:
    if not isinstance(value, list):
        raise ValueError(f"{where}: expected a list of [first, last] frame pairs")
    out = []
    for pair in value:
        if (not isinstance(pair, list) or len(pair) != 2
                or not all(isinstance(x, int) for x in pair) or not 0 <= pair[0] <= pair[1]):
            raise ValueError(f"{where}: {pair!r} is not [first, last] with 0 <= first <= last")
        out.append((pair[0], pair[1]))
    return out


def load_labels(path: Path = DEFAULT_LABELS) -> dict[str, ClipLabels]:
    """Parse the label file; refuses unknown actions, keys and malformed frame ranges."""
    doc = tomllib.loads(Path(path).read_text())
    clips = {}
    for name, table in doc.get("clip", {}).items():
        kind = table.get("kind", "bona_fide")
        if kind not in ("bona_fide", "attack"):
            raise ValueError(f"clip {name}: kind must be bona_fide or attack, not {kind!r}")
        actions = {}
        for key, value in table.items():
            if key in ("kind", "note", "file", NO_FACE, OTHER):
                continue
            if key not in ACTIONS:
                raise ValueError(f"clip {name}: {key!r} is not an action {ACTIONS}")
            actions[key] = _spans(value, f"clip {name}.{key}")
        clips[name] = ClipLabels(table.get("file", name), kind, actions,
                                 _spans(table.get(NO_FACE, []), f"clip {name}.{NO_FACE}"),
                                 _spans(table.get(OTHER, []), f"clip {name}.{OTHER}"),
                                 table.get("note", ""))
    return clips


def find_clips(root: Path) -> list[Path]:
    """Video files under ``root`` (e.g. ``bona_fide/`` and ``attack/``), sorted by path."""
    return sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)


def clip_fps(path: Path, default: float = 25.0) -> float:
    """The frame rate the file declares (the clip's own rate)."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    finally:
        cap.release()
    return fps if 1.0 <= fps <= 240.0 else default


@dataclass
class FrameSignal:
    """One frame: its reading and the signals read off it (NaN when there is no mesh)."""

    index: int
    t: float
    reading: FaceReading
    passive: float | None
    ear: float
    yaw: float
    pitch: float

    @property
    def tracked(self) -> bool:
        """A face with a trusted FaceMesh (what the challenge needs)."""
        return self.reading.mesh is not None


@dataclass
class ClipFrames:
    """Every frame of one clip as the gate saw it."""

    path: Path
    fps: float
    frames: list[FrameSignal]

    def series(self, name: str) -> np.ndarray:
        """One signal over all frames (``ear``, ``yaw``, ``pitch``, ``passive``)."""
        return np.array([np.nan if getattr(f, name) is None else getattr(f, name)
                         for f in self.frames], dtype=float)


def read_clip(path: Path, pipeline: FacePipeline, passive: PassiveLiveness | None,
              max_frames: int | None = None, show_progress: bool = False) -> ClipFrames:
    """Every frame of ``path`` (or the first ``max_frames``) through the pipeline, timed at the
    clip's own frame rate; passive-scored when a classifier is given."""
    fps = clip_fps(path)
    source = ReplaySource(path, fps=0.0)
    frames: list[FrameSignal] = []
    items = source.frames()
    if show_progress:
        items = progress(items, label=path.name)
    for frame in items:
        if max_frames is not None and frame.index >= max_frames:
            source.close()
            break
        reading = pipeline.read(frame.image)
        score = (passive.score(reading) if passive is not None and reading.crop is not None
                 else None)
        if reading.mesh is not None:
            yaw, pitch, _ = reading.mesh.pose_deg()
            ear = eye_aspect_ratio(reading.mesh)
        else:
            yaw = pitch = ear = float("nan")
        frames.append(FrameSignal(frame.index, frame.index / fps, reading, score, ear, yaw,
                                  pitch))
    return ClipFrames(Path(path), fps, frames)
