"""``gerbang-gateway bench`` end to end at a tiny size: the figures it reports are complete and
the headline is what docs/gateway.md says it is (SQLite, 2 ingest workers)."""

from __future__ import annotations

import shutil

import pytest

from gateway.bench import run_bench


@pytest.mark.slow
def test_bench_reports_sqlite_with_one_and_two_workers_and_names_the_headline():
    if not all(shutil.which(t) for t in ("mosquitto", "mosquitto_pub", "mosquitto_sub")):
        pytest.skip("mosquitto, mosquitto_pub and mosquitto_sub are needed")
    result = run_bench(events=400, devices=8, backends=("sqlite",), workers=(1, 2))
    assert [(r["backend"], r["workers"]) for r in result["runs"]] == [("sqlite", 1),
                                                                      ("sqlite", 2)]
    assert result["headline"].startswith("sqlite, 2 ingest workers")
    two = next(s for s in result["summary"] if s["workers"] == 2)
    assert result["events_per_s"] == two["events_per_s"] > 0
    assert result["lost"] == 0 and result["duplicated"] == 0
    for run in result["runs"]:
        assert run["published"] == run["stored"] == run["raw_events"] == 400
        assert run["cpu_s"]["gateway"] > 0 and run["gateway_cpu_us_per_event"] > 0
    assert result["mqtt_protocol"] == 5 and result["publisher"] == "mosquitto_pub"
