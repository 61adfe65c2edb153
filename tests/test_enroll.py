"""Enrollment: photo quality report, templates, and the planted duplicate identity."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from device.capture.replay import read_image
from device.infer.bundle import calibrated_threshold, load_bundle
from provisioning.enroll import build_roster, face_folders

pytestmark = pytest.mark.faces


def test_planted_duplicate_is_found_in_a_roster_of_100_plus(pipeline, faces_root):
    people = face_folders(faces_root / "celeba", min_images=3)
    names = list(people)[:104]
    applicants = {name: people[name][:3] for name in names}
    # One person registered twice under different ids, with different photos each time.
    double = next(n for n in names if len(people[n]) >= 6)
    applicants[f"{double}-second-id"] = people[double][3:6]
    threshold = calibrated_threshold(load_bundle(), "cosine", 1e-4)
    roster, report = build_roster(pipeline, applicants, "S1", "R01", show_progress=False,
                                  duplicate_threshold=threshold)
    assert len(roster.entries) >= 100
    pairs = [{a, b} for a, b, _ in report.duplicates]
    assert {double, f"{double}-second-id"} in pairs
    assert pairs[0] == {double, f"{double}-second-id"}  # the planted pair is the most similar
    assert len(pairs) <= 3  # at FAR 1e-4 over ~5,500 pairs, false flags are rare


def test_bad_photos_are_reported_with_reasons_and_nothing_lost(tmp_path, faces_root):
    src = sorted((faces_root / "orl" / "s1").iterdir())
    good, blank, blurred = tmp_path / "A1", tmp_path / "A2", tmp_path / "A3"
    for folder in (good, blank, blurred):
        folder.mkdir()
    for i, photo in enumerate(src[:3]):
        cv2.imwrite(str(good / f"{i}.png"), read_image(photo))
    cv2.imwrite(str(blank / "0.png"), np.full((112, 92, 3), 128, np.uint8))
    (blank / "1.jpg").write_bytes(b"not an image")
    cv2.imwrite(str(blurred / "0.png"), cv2.GaussianBlur(read_image(src[4]), (0, 0), 2))
    out = tmp_path / "roster.json"
    proc = subprocess.run([sys.executable, "-m", "provisioning.cli", "roster", "--photos-dir",
                           str(tmp_path), "--session", "S1", "--room", "R01", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1  # someone could not be enrolled: the technician must act
    summary = json.loads(proc.stdout)
    assert (summary["enrolled"], summary["failed"]) == (1, 2)
    assert "NOT ENROLLED" in proc.stderr and "A2" in proc.stderr and "A3" in proc.stderr
    assert "no_face" in proc.stderr and "unreadable" in proc.stderr and "blurred" in proc.stderr
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    assert json.loads(out.read_text())["entries"][0]["applicant_id"] == "A1"
