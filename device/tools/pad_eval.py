"""Presentation-attack evaluation (ISO/IEC 30107-3 terms): APCER and BPCER.

Two protocols:

- **stills** (``--live DIR --spoof DIR``): the passive classifier alone on face images. APCER is
  the share of attack images scored bona fide, BPCER the share of bona fide images refused; a
  spoof folder with sub-folders reports APCER per sub-folder (attack species). Without folders
  the held-out test split of gc535 recorded in the model file is used.
- **sequences** (``--faces DIR``): the whole liveness step (challenge, 3-D consistency,
  passive) on attacks synthesized from real photos (``pad_sequences``): still, moved, bent.
  Only APCER: bona fide sequences need real people (docs/liveness.md, field test protocol).
- **video** (``--video DIR``): real clips, labelled in ``video_labels.toml``, through the gate's
  own liveness step frame by frame (``video_clips``, ``video_eval``, ``video_report``).

A failure to find a face counts against the attacker only if the gate would still refuse: an
attack image with no detectable face is not an accepted attack; a bona fide image with none is
reported apart (failure to acquire), not as a liveness error.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from device.capture.replay import read_image
from device.infer.challenge import Challenge, ChallengeConfig
from device.infer.liveness import LivenessCheck, LivenessConfig, PassiveLiveness
from device.infer.pipeline import FacePipeline
from device.tools.pad_sequences import ATTACKS, attack_frames
from gerbang.progress import progress

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def _rate(flags: list[bool]) -> dict[str, Any]:
    """Share of True with its count and a 95% Wilson interval (small samples say so)."""
    n, k = len(flags), int(sum(flags))
    if n == 0:
        return {"rate": None, "count": 0, "n": 0, "ci95": None}
    z, p = 1.96, k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return {"rate": p, "count": k, "n": n,
            "ci95": [max(0.0, float(centre - half)), min(1.0, float(centre + half))]}


def name_hash(relative: str) -> str:
    """How the training record names an image without naming it (first 16 hex of sha256)."""
    return hashlib.sha256(relative.encode()).hexdigest()[:16]


def evaluate_stills(pipeline: FacePipeline, passive: PassiveLiveness, live: list[Path],
                    spoof: dict[str, list[Path]], threshold: float | None = None,
                    show_progress: bool = False) -> dict[str, Any]:
    """The passive classifier on still images: APCER (overall and per species) and BPCER."""
    threshold = passive.threshold if threshold is None else threshold

    def scores(paths: list[Path], label: str) -> tuple[list[float], int]:
        out, no_face = [], 0
        items = progress(paths, label=label) if show_progress else paths
        for path in items:
            image = read_image(path)
            reading = pipeline.read(image)
            if reading.embedding is None:
                no_face += 1
                continue
            out.append(passive.score(reading, image))
        return out, no_face

    live_scores, live_fta = scores(live, "bona fide")
    result: dict[str, Any] = {"protocol": "stills", "threshold": threshold,
                              "bpcer": _rate([s < threshold for s in live_scores]),
                              "bona_fide_no_face": live_fta, "per_attack": {}}
    every_attack = []
    for species, paths in sorted(spoof.items()):
        attack_scores, attack_no_face = scores(paths, species)
        accepted = [s >= threshold for s in attack_scores] + [False] * attack_no_face
        every_attack += accepted
        result["per_attack"][species] = {**_rate(accepted), "no_face": attack_no_face}
    result["apcer"] = _rate(every_attack)
    return result


def gc535_test_split(root: Path, record: dict[str, Any]) -> tuple[list[Path], list[Path]]:
    """The held-out test crops of gc535 named (by hash) in the passive model's record."""
    wanted = {h: label for h, label, _ in record["test_items"]}
    live, spoof = [], []
    for folder, bucket in (("live", live), ("spoof", spoof)):
        for path in sorted((root / folder).iterdir()):
            if name_hash(f"{folder}/{path.name}") in wanted:
                bucket.append(path)
    return live, spoof


@dataclass
class SequenceOutcome:
    """What the liveness step decided about one presented sequence."""

    live: bool
    reason: str | None  # challenge failure, ``passive`` or ``planar`` when refused
    action: str
    frames: int
    elapsed_s: float


def run_liveness_step(pipeline: FacePipeline, check: LivenessCheck, frames: Any,
                      challenge: Challenge, fps: float) -> SequenceOutcome:
    """Play ``frames`` (camera images at ``fps``) into one challenge, then judge the result
    with the passive and 3-D checks, as the gate does after a good-quality face."""
    count = 0
    reading = image = None
    for count, image in enumerate(frames, start=1):
        now = challenge.started_at + (count - 1) / fps
        reading = pipeline.read(image)
        state = challenge.observe(reading.mesh, reading.embedding, now)
        if state.state != "pending":
            break
    else:
        challenge.observe(None, None, challenge.started_at + challenge.config.timeout_s + 1)
    state = challenge.result
    if state.state != "passed":
        return SequenceOutcome(False, f"challenge_{state.reason}", challenge.action, count,
                               state.elapsed_s)
    assert reading is not None
    verdict = check.check(reading, image, tracks=challenge.track)
    return SequenceOutcome(verdict.live, verdict.reason, challenge.action, count,
                           state.elapsed_s)


def evaluate_sequences(pipeline: FacePipeline, check: LivenessCheck, photos: list[Path],
                       attacks: tuple[str, ...] = ATTACKS, fps: float = 15.0,
                       config: ChallengeConfig | None = None, seed: int = 0,
                       show_progress: bool = False) -> dict[str, Any]:
    """APCER of the whole liveness step against synthesized photo attacks, per species."""
    config = config or ChallengeConfig()
    rng = random.Random(seed)
    n_frames = int(config.timeout_s * fps) + 1
    result: dict[str, Any] = {"protocol": "sequences", "fps": fps, "photos": len(photos),
                              "per_attack": {}}
    every: list[bool] = []
    for attack in attacks:
        outcomes = []
        items = progress(photos, label=attack) if show_progress else photos
        for i, path in enumerate(items):
            photo = read_image(path)
            challenge = Challenge(action=rng.choice(config.actions), started_at=0.0,
                                  config=config)
            frames = attack_frames(photo, attack, n_frames, seed=seed * 100_003 + i)
            outcomes.append(run_liveness_step(pipeline, check, frames, challenge, fps))
        accepted = [o.live for o in outcomes]
        every += accepted
        result["per_attack"][attack] = {
            **_rate(accepted),
            "refusal_reasons": dict(Counter(o.reason for o in outcomes if not o.live)),
            "accepted_actions": dict(Counter(o.action for o in outcomes if o.live))}
    result["apcer"] = _rate(every)
    return result


def default_check(passive: PassiveLiveness | None, config: LivenessConfig | None = None,
                  ) -> LivenessCheck:
    """The shipped liveness configuration (passive off when no model is given)."""
    config = config or LivenessConfig(passive=passive is not None)
    return LivenessCheck(config, passive)
