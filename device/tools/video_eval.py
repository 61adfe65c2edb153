"""Real video through the whole liveness step (``gerbang-device pad-eval --video DIR``).

Every clip is read frame by frame at its own frame rate (``video_clips.read_clip``: the replay
source, then the gate's pipeline and the passive classifier on every frame). Then, against the
clip's labels (``video_labels.toml``):

- **passive**: the score distribution and the per-frame error at the shipped threshold (BPCER
  for bona fide clips: real people called attacks; APCER for attacks);
- **each labelled action**: the gate's own liveness step (``LivenessGate``, the check-in
  loop's) challenged with that action from ``lead_s`` before the action's labelled start:
  detected or not, at which frame, the latency from the labelled start, and the verdict the
  gate would give (challenge, then 3-D check, then passive);
- **every labelled head turn and nod**: the 3-D check's verdict on its labelled frames
  (independent of whether the challenge detected it) and on the challenge's answer track;
- **false actions**: each action's detector (``Challenge``) run back to back over the whole
  clip; a pass that is not at a labelled action of that kind (or ``other`` movement) is a
  false action, counted per minute;
- **attack clips**: the gate challenged with every action from the first frame.

Virtual time: frame ``i`` is at ``i / fps`` seconds, so a slow machine measures the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from device.config import ACTIONS, LivenessGateConfig
from device.decide.liveness_policy import LivenessGate
from device.infer.challenge import Challenge, ChallengeConfig
from device.infer.liveness import (
    LivenessCheck,
    PassiveLiveness,
    is_planar,
    planarity_noise_ratio,
    planarity_residual,
)
from device.infer.pipeline import FacePipeline
from device.tools.video_clips import ClipFrames, ClipLabels, find_clips, read_clip
from gerbang.progress import progress

#: The challenge starts this long before a labelled action (the gate's baseline frames are
#: taken then: 5 frames = 0.17-0.2 s at 25-30 fps, well inside it).
LEAD_S = 0.5
PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
TURNS = ("turn_left", "turn_right")
MIRRORED = {"turn_left": "turn_right", "turn_right": "turn_left"}


@dataclass(frozen=True)
class GateRun:
    """One liveness step of the gate over a clip's frames."""

    action: str
    start: int
    live: bool
    reason: str | None
    detail: str | None
    challenge_state: str
    challenge_reason: str | None
    answered_at: int | None  # frame where the challenge passed
    verdict_at: int          # frame where the step ended
    track: list[np.ndarray]


def gate_run(clip: ClipFrames, action: str, start: int, check: LivenessCheck | None,
             timeout_s: float = 4.0) -> GateRun:
    """Run the gate's liveness step challenged with ``action`` from frame ``start``."""
    gate = LivenessGate(LivenessGateConfig(enabled=True, actions=(action,),
                                           timeout_s=timeout_s), check)
    frames = clip.frames
    first = frames[start]
    gate.begin("clip", first.reading, first.t, {})
    assert gate.pending is not None
    challenge = gate.pending.challenge
    verdict, end = None, start
    for frame in frames[start + 1:]:
        end = frame.index
        verdict = gate.feed(frame.reading, None, frame.t)
        if verdict is not None:
            break
    if verdict is None:  # the clip ended first: the gate would time out
        end = len(frames) - 1
        verdict = gate.feed(None, None, first.t + timeout_s + 1e-3)
        assert verdict is not None
    result = challenge.result
    # The frame the challenge passed on (a turn or nod is judged a little later, after its
    # follow-through: ``verdict_at``).
    answered = (next((f.index for f in frames[start:] if f.t >= first.t + result.elapsed_s - 1e-9),
                     end) if result.state == "passed" else None)
    return GateRun(action, start, verdict.live, verdict.reason, verdict.detail, result.state,
                   result.reason, answered, end, challenge.track)


def depth_verdict(track: list[np.ndarray], min_frames: int = 6) -> dict[str, Any]:
    """The 3-D check on a landmark track: ``3d`` (a real head), ``planar`` or ``too_short``."""
    if len(track) < min_frames:
        return {"verdict": "too_short", "frames": len(track)}
    return {"verdict": "planar" if is_planar(track) else "3d", "frames": len(track),
            "residual": round(planarity_residual(track), 4),
            "noise_ratio": round(planarity_noise_ratio(track), 2)}


def _span_track(clip: ClipFrames, first: int, last: int) -> list[np.ndarray]:
    return [f.reading.mesh.points[:, :2].copy() for f in clip.frames[first:last + 1]
            if f.reading.mesh is not None]


def false_actions(clip: ClipFrames, labels: ClipLabels | None, action: str,
                  config: ChallengeConfig | None = None, mirror: bool = False) -> dict[str, Any]:
    """The ``action`` detector run back to back over the clip: passes away from a labelled
    ``action`` (or ``other`` movement) are false actions (``mirror``: the labelled turn of the
    other direction is what this detector should see)."""
    labelled = MIRRORED.get(action, action) if mirror else action
    config = config or ChallengeConfig(actions=(action,))
    margin = round(LEAD_S * clip.fps)
    frames = clip.frames
    true = false = 0
    where = []
    i = 0
    while i < len(frames):
        challenge = Challenge(action=action, started_at=frames[i].t, config=config)
        for frame in frames[i:]:
            reading = frame.reading
            state = challenge.observe(reading.mesh, reading.embedding, frame.t)
            if state.state != "pending":
                break
        if challenge.result.state == "passed":
            if labels is not None and labels.near(labelled, frame.index, margin):
                true += 1
            else:
                false += 1
                where.append(frame.index)
            i = frame.index + 1
        elif challenge.result.state == "failed" and challenge.result.reason != "timeout":
            i = frame.index + 1
        else:
            i += max(1, round(clip.fps * config.timeout_s) // 2)
    minutes = len(frames) / clip.fps / 60
    return {"false": false, "at_labelled": true, "minutes": round(minutes, 3),
            "per_minute": round(false / minutes, 2) if minutes else None, "false_frames": where}


def _percentiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {f"p{p}": float(np.percentile(values, p)) for p in PERCENTILES}


def evaluate_clip(clip: ClipFrames, labels: ClipLabels | None, check: LivenessCheck | None,
                  threshold: float | None, kind: str = "bona_fide", timeout_s: float = 4.0,
                  mirror: bool = False) -> dict[str, Any]:
    """Every figure of one clip (see the module docstring). ``mirror`` asks a labelled
    ``turn_left`` as ``turn_right`` and vice versa (the clip read as a mirrored view)."""
    n = len(clip.frames)
    scores = [f.passive for f in clip.frames if f.passive is not None]
    result: dict[str, Any] = {
        "kind": kind, "fps": clip.fps, "frames": n, "seconds": round(n / clip.fps, 2),
        "face_frames": sum(f.reading.subject is not None for f in clip.frames),
        "tracked_frames": sum(f.tracked for f in clip.frames),
        "labelled": labels is not None,
        "passive": {"scored": len(scores), "percentiles": _percentiles(scores)}}
    if threshold is not None and scores:
        below = sum(s < threshold for s in scores)
        key = "bpcer" if kind == "bona_fide" else "apcer"
        refused_or_accepted = below if kind == "bona_fide" else len(scores) - below
        result["passive"].update({"threshold": threshold, key: refused_or_accepted / len(scores),
                                  "errors": refused_or_accepted})
    lead = round(LEAD_S * clip.fps)
    events = []
    for action, first, last in (labels.events() if labels else []):
        if first >= n:
            continue
        asked = MIRRORED.get(action, action) if mirror else action
        run = gate_run(clip, asked, max(0, first - lead), check, timeout_s)
        # Detected only if the challenge passed on *this* action: from its labelled start to
        # ``lead`` frames after its end (a pass elsewhere answered some other movement).
        hit = run.answered_at is not None and first <= run.answered_at <= last + lead
        event: dict[str, Any] = {
            "action": action, "first": first, "last": min(last, n - 1),
            "seconds": round((min(last, n - 1) - first + 1) / clip.fps, 3),
            "frontal": labels.frontal(first, last) if labels else True,
            "asked": asked, "challenge_from": run.start, "detected": hit,
            "answered_at": run.answered_at,
            "latency_s": round((run.answered_at - first) / clip.fps, 3) if hit else None,
            "challenge": run.challenge_state if run.challenge_reason is None
            else f"{run.challenge_state} {run.challenge_reason}",
            "gate": "accept" if run.live else f"refuse {run.reason}",
            "gate_detail": run.detail,
            "step_s": round((run.verdict_at - run.start) / clip.fps, 3)}
        if action in TURNS or action == "nod":
            event["depth_labelled"] = depth_verdict(_span_track(clip, first, last))
            if run.answered_at is not None:
                event["depth_answer"] = depth_verdict(run.track)
        events.append(event)
    result["actions"] = events
    if kind != "bona_fide" or not labels:
        result["challenged"] = {}
        for action in ACTIONS:
            run = gate_run(clip, action, 0, check, timeout_s)
            result["challenged"][action] = {
                "gate": "accept" if run.live else f"refuse {run.reason}",
                "detail": run.detail, "answered_at": run.answered_at}
    result["false_actions"] = {a: false_actions(clip, labels, a, mirror=mirror)
                               for a in ACTIONS}
    return result


def _ratio(k: int, n: int) -> dict[str, Any]:
    return {"count": k, "n": n, "rate": (k / n) if n else None}


def summarise(clips: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Totals over every clip: the figures the bars in docs/liveness.md are read from."""
    bona = {k: v for k, v in clips.items() if v["kind"] == "bona_fide"}
    attacks = {k: v for k, v in clips.items() if v["kind"] != "bona_fide"}
    events = [e for v in bona.values() for e in v["actions"] if e["frontal"]]
    per_action = {}
    for action in ACTIONS:
        mine = [e for e in events if e["action"] == action]
        lat = [e["latency_s"] for e in mine if e["latency_s"] is not None]
        secs = [e["seconds"] for e in mine]
        per_action[action] = {
            "detected": _ratio(sum(e["detected"] for e in mine), len(mine)),
            "gate_accepts": _ratio(sum(e["gate"] == "accept" for e in mine), len(mine)),
            "latency_s": _percentiles(lat) and {k: _percentiles(lat)[k] for k in ("p50", "p95")},
            "duration_s": _percentiles(secs) and {k: _percentiles(secs)[k]
                                                  for k in ("p50", "p95")}}
    moves = [e for e in events if "depth_labelled" in e]
    judged = [e for e in moves if e["depth_labelled"]["verdict"] != "too_short"]
    scored = sum(v["passive"]["scored"] for v in bona.values())
    errors = sum(v["passive"].get("errors", 0) for v in bona.values())
    talking = {k: v for k, v in bona.items() if k.split("/")[-1].startswith("grid-")}
    result: dict[str, Any] = {
        "clips": len(clips), "bona_fide_clips": len(bona), "attack_clips": len(attacks),
        "frames": sum(v["frames"] for v in clips.values()),
        "tracked_frames": sum(v["tracked_frames"] for v in clips.values()),
        "actions_detected": _ratio(sum(e["detected"] for e in events), len(events)),
        "gate_accepts_labelled_actions": _ratio(sum(e["gate"] == "accept" for e in events),
                                                len(events)),
        "per_action": per_action,
        "depth_accepts_turns": _ratio(
            sum(e["depth_labelled"]["verdict"] == "3d" for e in judged
                if e["action"] in TURNS), sum(e["action"] in TURNS for e in judged)),
        "depth_accepts_nods": _ratio(
            sum(e["depth_labelled"]["verdict"] == "3d" for e in judged
                if e["action"] == "nod"), sum(e["action"] == "nod" for e in judged)),
        "passive_bpcer_frames": _ratio(errors, scored),
        "passive_bpcer_per_clip": {k: v["passive"].get("bpcer") for k, v in bona.items()},
        "false_actions_per_minute": {}}
    for name, group in (("all_bona_fide", bona), ("talking_grid", talking)):
        minutes = sum(v["false_actions"]["blink"]["minutes"] for v in group.values())
        result["false_actions_per_minute"][name] = {
            "minutes": round(minutes, 2),
            **{a: round(sum(v["false_actions"][a]["false"] for v in group.values()) / minutes,
                        2) if minutes else None for a in ACTIONS}}
    result["attacks"] = {k: {"passive_apcer": v["passive"].get("apcer"),
                             "challenged": {a: c["gate"] for a, c in v["challenged"].items()}}
                         for k, v in attacks.items()}
    return result


def evaluate_videos(root: Path, pipeline: FacePipeline, passive: PassiveLiveness | None,
                    check: LivenessCheck | None, labels: dict[str, ClipLabels],
                    max_frames: int | None = None, only: list[str] | None = None,
                    mirror: bool = False, show_progress: bool = False) -> dict[str, Any]:
    """Every clip under ``root`` (or those whose path contains one of ``only``) through the
    liveness step; per-clip figures and totals."""
    threshold = passive.threshold if passive is not None else None
    clips: dict[str, dict[str, Any]] = {}
    paths = [p for p in find_clips(root)
             if not only or any(o in str(p.relative_to(root)) for o in only)]
    items = progress(paths, label="clips") if show_progress else paths
    for path in items:
        name = path.relative_to(root).as_posix()
        label = labels.get(name)
        kind = label.kind if label else ("attack" if "attack" in path.parts else "bona_fide")
        frames = read_clip(path, pipeline, passive, max_frames, show_progress)
        clips[name] = evaluate_clip(frames, label, check, threshold, kind, mirror=mirror)
    return {"protocol": "video", "root": str(root), "max_frames": max_frames, "mirror": mirror,
            "lead_s": LEAD_S, "passive_threshold": threshold,
            "unlabelled": sorted(k for k in clips if k not in labels),
            "clips": clips, "total": summarise(clips)}
