"""``gerbang-device eval`` and ``bench`` produce the documented JSON."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.faces


def run(*args):
    proc = subprocess.run([sys.executable, "-m", "device.cli", *args], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def test_single_image_report(faces_root):
    r = run("eval", str(faces_root / "orl"), "--limit-people", "8", "--json")
    assert (r["people"], r["images"], r["protocol"]) == (8, 80, "single_image")
    assert r["genuine_pairs"] == 8 * 45 and r["impostor_pairs"] == 80 * 79 // 2 - 8 * 45
    assert set(r["tar_at_far"]) == {"1e-2", "1e-3", "1e-4"}
    assert r["tar_at_far"]["1e-2"]["supported"] and r["tar_at_far"]["1e-2"]["tar"] > 0.95
    assert not r["tar_at_far"]["1e-4"]["supported"]  # 2,800 impostor pairs cannot measure it
    assert "impostor pairs" in r["tar_at_far"]["1e-4"]["reason"]
    assert 0.99 < r["auc"] <= 1.0 and r["eer"] < 0.05


def test_gate_protocol_reports_fta(faces_root):
    r = run("eval", str(faces_root / "orl"), "--limit-people", "8", "--enroll", "3", "--json")
    assert r["protocol"] == "gate" and r["enroll"] == 3
    assert r["probes"] == 8 * 7 and 0 <= r["fta"] <= 1
    assert r["genuine_pairs"] + sum(r["fta_reasons"].values()) == r["probes"]
    assert r["score"] == "cosine"  # 8 people: too few for cohort normalisation


def test_bench_prints_stage_percentiles(faces_root):
    r = run("bench", "--faces", str(faces_root / "orl"), "--images", "6", "--json")
    for stage in ("decode", "detect", "landmarks", "align", "embed", "match_50", "match_1000",
                  "match_100000"):
        assert r["stages"][stage]["p50_ms"] > 0, stage
    assert r["pipeline"]["p50_ms"] > 0 and [run["threads"] for run in r["runs"]] == [1, 2]
