"""Detector thresholds against real clips: detection of labelled actions vs false actions.

``python -m device.tools.video_sweep ../shared/data/video`` reads every labelled bona fide clip
once (the gate's pipeline, no passive score), then for each candidate ``ChallengeConfig`` runs
the action's detector (``Challenge``) the way ``pad-eval --video`` does: from ``LEAD_S`` before
each labelled action (detected if it passes between the action's start and ``LEAD_S`` after
its end), and back to back over the whole clip (false actions per minute). Turns are asked in
the direction of the labels read as mirrored views (``--mirror``, see docs/liveness.md) unless
``--as-shipped``. Used to choose the challenge's thresholds from data; prints one line per
setting. With the mirror a row reads ``turn_left (vs turn_right)``: the detector asked
``turn_left``, scored against turns labelled to the person's own right.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

from device.infer.bundle import load_bundle
from device.infer.challenge import Challenge, ChallengeConfig
from device.infer.pipeline import FacePipeline
from device.tools.video_clips import (
    DEFAULT_LABELS,
    ClipFrames,
    ClipLabels,
    find_clips,
    load_labels,
    read_clip,
)
from device.tools.video_eval import LEAD_S, MIRRORED, false_actions
from gerbang.progress import progress

#: Settings tried per action (field → values); the shipped value is among them.
GRID: dict[str, list[dict[str, Any]]] = {
    "blink": [{"blink_closed": c, "blink_frames": f}
              for c in (0.65, 0.7, 0.75, 0.8) for f in (1, 2)],
    "turn_left": [{"turn_deg": d} for d in (8.0, 10.0, 12.0, 15.0)],
    "turn_right": [{"turn_deg": d} for d in (8.0, 10.0, 12.0, 15.0)],
    "nod": [{"nod_deg": d} for d in (6.0, 8.0, 10.0, 12.0)],
}


def detected(clip: ClipFrames, action: str, first: int, last: int,
             config: ChallengeConfig) -> bool:
    """Whether the ``action`` detector started ``LEAD_S`` early passes on this action."""
    lead = round(LEAD_S * clip.fps)
    start = max(0, first - lead)
    challenge = Challenge(action=action, started_at=clip.frames[start].t, config=config)
    for frame in clip.frames[start:]:
        state = challenge.observe(frame.reading.mesh, frame.reading.embedding, frame.t)
        if state.state == "passed":
            return first <= frame.index <= last + lead
        if state.state == "failed":
            return False
    return False


def sweep(clips: dict[str, tuple[ClipFrames, ClipLabels]], mirror: bool = True,
          grid: dict[str, list[dict[str, Any]]] = GRID) -> list[dict[str, Any]]:
    """One row per (action, setting): detected / labelled, false actions and minutes."""
    rows = []
    for action, settings in grid.items():
        for setting in settings:
            config = replace(ChallengeConfig(actions=(action,)), **setting)
            hits = total = false = 0
            minutes = 0.0
            for frames, labels in clips.values():
                labelled = MIRRORED.get(action, action) if mirror else action
                for first, last in labels.actions.get(labelled, []):
                    if first < len(frames.frames):
                        total += 1
                        hits += detected(frames, action, first, last, config)
                fa = false_actions(frames, labels, action, config, mirror=mirror)
                false += fa["false"]
                minutes += fa["minutes"]
            rows.append({"action": action, **setting, "detected": hits, "labelled": total,
                         "false": false, "minutes": round(minutes, 2),
                         "false_per_minute": round(false / minutes, 2) if minutes else None})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("video", type=Path)
    parser.add_argument("--labels", type=Path, default=DEFAULT_LABELS)
    parser.add_argument("--as-shipped", action="store_true",
                        help="ask turns in the labels' own direction (no mirror)")
    args = parser.parse_args(argv)
    labels = load_labels(args.labels)
    pipeline = FacePipeline.from_bundle(load_bundle(), threads=2)
    clips = {}
    for path in progress(find_clips(args.video), label="clips"):
        name = path.relative_to(args.video).as_posix()
        if name in labels and labels[name].kind == "bona_fide":
            clips[name] = (read_clip(path, pipeline, None), labels[name])
    for row in sweep(clips, mirror=not args.as_shipped):
        setting = {k: v for k, v in row.items() if k not in (
            "action", "detected", "labelled", "false", "minutes", "false_per_minute")}
        rate = row["detected"] / row["labelled"] if row["labelled"] else float("nan")
        scored = MIRRORED.get(row["action"], row["action"]) if not args.as_shipped \
            else row["action"]
        asked = row["action"] if scored == row["action"] else f"{row['action']} (vs {scored})"
        print(f"{asked:<10} {setting}  detected {row['detected']}/{row['labelled']} "
              f"({100 * rate:.0f}%)  false {row['false']} in {row['minutes']} min "
              f"= {row['false_per_minute']}/min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
