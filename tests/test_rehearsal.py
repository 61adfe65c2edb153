"""The exam-day rehearsal, small: 2 rooms × 1 gate, 12 applicants, a 36-second window, every
fault on. The default centre (20 rooms × 2 gates, every face) is run by hand (docs/rehearsal.md).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

FAULT_TITLES = ("gate process killed", "broker restarted", "gate network cut",
                "gateway killed", "gate power cut")


@pytest.mark.slow
@pytest.mark.faces
def test_a_small_exam_morning_under_faults_ends_with_exact_attendance(tmp_path, faces_root):
    if not (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()):
        pytest.skip("mosquitto is not installed (apt-get install mosquitto; .ci/run does this)")
    workdir = tmp_path / "rehearsal"
    proc = subprocess.run(
        [sys.executable, "-m", "gerbang.demo", "--scenario", "exam-day",
         "--faces", str(faces_root / "celeba"), "--rooms", "2", "--gates-per-room", "1",
         "--applicants", "12", "--window-s", "36", "--camera-fps", "2", "--json",
         "--workdir", str(workdir)], capture_output=True, text=True, timeout=240)
    assert proc.stdout.strip(), proc.stderr[-4000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["attendance_matches"] is True, (summary, proc.stderr[-4000:])
    assert summary["lost"] == summary["duplicated"] == summary["undelivered"] == 0, summary
    assert summary["proxies"] >= 1 and summary["proxies_admitted"] == 0, summary
    assert summary["strangers_admitted"] == 0, summary
    assert summary["faults"] == ["gate_kill", "broker_restart", "network_cut", "gateway_kill",
                                 "gate_power_cut"]
    assert summary["faults_survived"] == 5, summary
    assert summary["verdict"] == "PASS" and proc.returncode == 0, proc.stderr[-4000:]
    report = Path(summary["report"])
    text = report.read_text()
    assert text.startswith("# Exam-day rehearsal: PASS")
    for title in FAULT_TITLES:
        assert title in text, f"the report does not name the fault {title!r}"
    for plot in ("morning.png", "latency.png", "resources.png"):
        assert (report.parent / "plots" / plot).stat().st_size > 1000
    assert (workdir / "enrollment" / "templates.json").stat().st_mode & 0o077 == 0
