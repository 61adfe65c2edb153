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


def run_text(*args):
    proc = subprocess.run([sys.executable, "-m", "device.cli", *args], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_shipped_thresholds_and_groups_on_ten_orl_people(faces_root, tmp_path):
    from device.infer.bundle import load_bundle

    groups = tmp_path / "groups.toml"
    groups.write_text('[people]\ns1 = {band = "first"}\ns10 = {band = "first"}\n'
                      's11 = {band = "second"}\ns12 = {band = "second"}\n')
    r = run("eval", str(faces_root / "orl"), "--limit-people", "10", "--enroll", "3", "--json",
            "--groups", str(groups))
    shipped = r["shipped"]
    calibration = load_bundle().manifest["calibration"]
    assert shipped["same_protocol"] and shipped["calibration"]["enroll"] == 3
    cosine = shipped["by_score"]["cosine"]
    assert set(cosine) == set(calibration["thresholds"]["cosine"])
    assert "tnorm" in shipped["not_applicable"]  # 10 people: a gate would score cosine
    for far, entry in cosine.items():
        assert entry["threshold"] == calibration["thresholds"]["cosine"][far]
        assert entry["far"]["trials"] == r["impostor_pairs"] == 70 * 9
        assert entry["tar"]["trials"] == r["genuine_pairs"]
        assert entry["far"]["people"] == 10
        low, high = entry["far"]["ci"]
        assert low <= entry["far"]["rate"] <= high and high > 0  # zero hits still bound it
        assert isinstance(entry["far"]["exceeds_target"], bool)
    band = r["groups"]["attributes"]["band"]["cosine"]
    assert r["groups"]["unlabelled_people"] == 6
    assert [(k, g["people"]) for k, g in band["groups"].items()] == [
        ("first", 2), ("second", 2), ("unlabelled", 6)]
    assert band["between"]["1e-3"]["labels"] == ["first", "second", "unlabelled"]

    text = run_text("eval", str(faces_root / "orl"), "--limit-people", "10", "--enroll", "3",
                    "--groups", str(groups))
    assert "at the shipped thresholds" in text and "tnorm: not applicable" in text
    assert 'not in the file (group "unlabelled")' in text and "FAR between groups" in text
    assert "overall:" in text


def test_pooled_sets_and_a_candidate_calibration(faces_root, tmp_path):
    candidate = tmp_path / "candidate.json"
    candidate.write_text(json.dumps({"protocol": "gate: templates from 3 photos",
                                     "thresholds": {"cosine": {"1e-3": -1.0, "1e-4": 1.01}}}))
    groups = tmp_path / "groups.csv"
    groups.write_text("person,set\norl/s1,orl\norl/s10,orl\norl/s11,orl\n")
    r = run("eval", str(faces_root / "orl"), str(faces_root / "celeba"), "--limit-people", "4",
            "--json", "--calibration", str(candidate), "--groups", str(groups))
    assert r["pooled"] == {"orl": 4, "celeba": 4} and r["people"] == 8
    shipped = r["shipped"]
    assert shipped["calibration"]["source"] == str(candidate) and not shipped["same_protocol"]
    everything, nothing = (shipped["by_score"]["cosine"][far] for far in ("1e-3", "1e-4"))
    assert everything["far"]["rate"] == 1.0 and everything["far"]["exceeds_target"]
    assert nothing["far"]["rate"] == 0.0 and nothing["tar"]["rate"] == 0.0
    assert shipped["exceeds_target"] and not shipped["within_2x"]
    assert r["groups"]["unlabelled_people"] == 5  # the orl person not listed and celeba's four
    assert list(r["groups"]["attributes"]["set"]["cosine"]["groups"]) == ["orl", "unlabelled"]
