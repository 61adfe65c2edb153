"""Real video through the liveness step: the committed label file, and ``pad-eval --video``.

The clips live in ``$GERBANG_DATA/video`` (never in the project); the end-to-end test skips
without them and runs only the first frames of two short clips.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DATA

from device.config import ACTIONS
from device.tools.video_clips import DEFAULT_LABELS, load_labels

VIDEO = DATA / "video"
ROOT = Path(__file__).resolve().parent.parent


def pad_eval(*args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "device.cli", "pad-eval", *args],
                          capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def test_the_label_file_parses_and_names_only_real_actions_and_frames():
    labels = load_labels(DEFAULT_LABELS)
    assert len(labels) == 21
    assert [n for n, c in labels.items() if c.kind == "attack"] == [
        "attack/lestari-replay-phone.mp4"]
    for name, clip in labels.items():
        assert name.startswith(("bona_fide/", "attack/")) and name.endswith((".mp4", ".mpg"))
        assert set(clip.actions) <= set(ACTIONS), name
        for _action, first, last in clip.events():
            assert 0 <= first <= last < 1100, name
    counts = {a: sum(len(c.actions.get(a, [])) for c in labels.values()) for a in ACTIONS}
    assert counts["blink"] >= 50 and counts["turn_left"] and counts["turn_right"] and counts["nod"]


@pytest.mark.parametrize("bad, message", [
    ('blink = [[3, 1]]', "first <= last"),
    ('wave = [[1, 2]]', "is not an action"),
    ('kind = "photo"', "kind must be"),
])
def test_a_bad_label_file_is_refused(tmp_path, bad, message):
    path = tmp_path / "labels.toml"
    path.write_text(f'[clip."bona_fide/x.mp4"]\n{bad}\n')
    with pytest.raises(ValueError, match=message):
        load_labels(path)


def test_the_label_file_names_clips_that_exist():
    if not VIDEO.is_dir():
        pytest.skip(f"shared video data not found at {VIDEO} (set GERBANG_DATA)")
    for name in load_labels(DEFAULT_LABELS):
        assert (VIDEO / name).is_file(), name


def test_pad_eval_video_reports_per_clip_and_detects_a_labelled_blink():
    if not (VIDEO / "bona_fide" / "grid-lbax4n.mpg").is_file():
        pytest.skip(f"shared video data not found at {VIDEO} (set GERBANG_DATA)")
    result = pad_eval("--video", str(VIDEO), "--clip", "grid-lbax4n", "--clip",
                      "lestari-replay", "--max-frames", "40", "--threads", "1", "--json")
    clip = result["clips"]["bona_fide/grid-lbax4n.mpg"]
    assert clip["frames"] == 40 and clip["fps"] == 25.0 and clip["tracked_frames"] == 40
    assert clip["passive"]["scored"] == 40 and "bpcer" in clip["passive"]
    blink = clip["actions"][0]
    assert blink["action"] == "blink" and blink["first"] == 27
    assert blink["detected"] and 27 <= blink["answered_at"] <= 40 and blink["latency_s"] < 0.5
    attack = result["clips"]["attack/lestari-replay-phone.mp4"]
    assert attack["kind"] == "attack" and "apcer" in attack["passive"]
    # A replay that does not answer is refused whatever it is asked.
    assert all(c["gate"].startswith("refuse") for c in attack["challenged"].values())
    total = result["total"]
    assert total["frames"] == 80 and total["actions_detected"]["n"] == 1
