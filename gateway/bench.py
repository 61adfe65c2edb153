"""Ingest benchmark (``gerbang-gateway bench``): events/s from 50 devices into each back-end.

Everything is real and on this machine: a Mosquitto started with the project's config, publisher
processes simulating gate devices (QoS 1, as fast as the broker acknowledges), gateway workers
as ``gerbang-gateway run --no-http`` processes, and the SQLite or PostgreSQL store. In the same
run ``mosquitto_sub`` writes the same stream to a file: its rate is the ceiling the gateway is
compared with (``ratio``). Lost and duplicated events are counted by event id against what was
published. Figures only; nothing is asserted (the machine is shared and noisy).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from gerbang import wire
from gerbang.broker import MosquittoBroker

CENTRE = "bench"


def _event(device: str, seq: int) -> tuple[str, bytes, str]:
    event = wire.CheckinEvent(
        event_id=wire.new_event_id(), device_id=device, centre=CENTRE, room="R01", session="S1",
        seq=seq, ts=wire.utc_now_iso(), outcome="accepted", applicant_id=f"A{seq:06d}",
        score=0.7, latency_ms=40.0)
    return wire.events_topic(CENTRE, device), event.to_json(), event.event_id


def _publish(port: int, devices: list[str], per_device: int, ids_path: str) -> None:
    """Publisher process: QoS 1 events for ``devices``; writes the published event ids."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    messages = [_event(d, s) for s in range(per_device) for d in devices]
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(500)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    infos = [client.publish(topic, payload, qos=1) for topic, payload, _ in messages]
    for info in infos:
        info.wait_for_publish(timeout=120)
    client.loop_stop()
    client.disconnect()
    Path(ids_path).write_text("\n".join(i for _, _, i in messages))


def _wait_for_line(proc: subprocess.Popen[str], needle: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    assert proc.stderr is not None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if needle in line:
            return
        if not line and proc.poll() is not None:
            raise RuntimeError(f"gateway worker exited with {proc.returncode}")
    raise TimeoutError(f"gateway worker did not log {needle!r} within {timeout:.0f}s")


def _fresh_database(backend: str, work: Path, pg_url: str) -> tuple[str, Any]:
    """(store URL, cleanup) for a new empty database."""
    if backend == "sqlite":
        return str(work / f"bench-{uuid.uuid4().hex[:6]}.sqlite"), lambda: None
    import psycopg

    name = f"gerbang_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")

    def drop() -> None:
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE {name} WITH (FORCE)")

    return pg_url.rsplit("/", 1)[0] + f"/{name}", drop


def run_one(backend: str, workers: int, events: int, devices: int, work: Path,
            pg_url: str) -> dict[str, Any]:
    """One configuration: fresh broker, fresh database, ``workers`` gateway processes."""
    from gateway.store import open_store

    broker = MosquittoBroker(work / f"broker-{backend}-{workers}").start()
    url, cleanup = _fresh_database(backend, work, pg_url)
    store = open_store(url)  # migrate once before the workers start
    procs: list[subprocess.Popen[str]] = []
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        for w in range(workers):
            cmd = [sys.executable, "-m", "gateway.cli", "run", "--db", url, "--no-http",
                   "--broker-port", str(broker.port), "--client-id", f"bench-worker-{w}"]
            if workers > 1:
                cmd += ["--share-group", "bench"]
            procs.append(subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                          text=True, env=env))
        for proc in procs:
            _wait_for_line(proc, "subscribed", 30)
        per_device = max(1, events // devices)
        total = per_device * devices
        raw_file = work / f"raw-{backend}-{workers}.txt"
        raw = subprocess.Popen(
            [shutil.which("mosquitto_sub") or "mosquitto_sub", "-h", "127.0.0.1", "-p",
             str(broker.port), "-q", "1", "-t", wire.subscription(CENTRE, "events"),
             "-C", str(total)], stdout=open(raw_file, "w"), stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # let mosquitto_sub subscribe
        names = [f"{CENTRE}-gate-{i:02d}" for i in range(devices)]
        halves = [names[: devices // 2], names[devices // 2:]]
        id_files = [work / f"ids-{backend}-{workers}-{i}.txt" for i in range(2)]
        started = time.monotonic()
        publishers = [multiprocessing.Process(target=_publish, args=(broker.port, part,
                                                                     per_device, str(path)))
                      for part, path in zip(halves, id_files, strict=True)]
        for p in publishers:
            p.start()
        raw_done = None
        stored = 0
        deadline = started + 300
        while time.monotonic() < deadline:
            if raw_done is None and raw.poll() is not None:
                raw_done = time.monotonic()
            stored = store.counts()["events"]
            if stored >= total and raw_done is not None:
                break
            time.sleep(0.05)
        stored_done = time.monotonic()
        for p in publishers:
            p.join(timeout=60)
        published_done = time.monotonic()
        published_ids = set()
        for path in id_files:
            published_ids.update(path.read_text().split())
        rows = store.events()
        stored_ids = [r["event_id"] for r in rows]
        raw_count = sum(1 for _ in open(raw_file))
        elapsed = stored_done - started
        raw_elapsed = (raw_done or published_done) - started
        return {
            "backend": backend, "workers": workers, "devices": devices, "published": total,
            "stored": len(stored_ids), "lost": len(published_ids - set(stored_ids)),
            "duplicated": len(stored_ids) - len(set(stored_ids))
            + len(set(stored_ids) - published_ids),
            "events_per_s": round(len(stored_ids) / elapsed, 1),
            "raw_events": raw_count, "raw_events_per_s": round(raw_count / raw_elapsed, 1),
            "ratio": round((len(stored_ids) / elapsed) / max(raw_count / raw_elapsed, 1e-9), 3),
            "seconds": round(elapsed, 2)}
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        broker.stop()
        cleanup()


def run_bench(events: int = 20000, devices: int = 50,
              pg_url: str = "postgresql://postgres@127.0.0.1:5432/postgres",
              backends: tuple[str, ...] = ("sqlite", "postgresql")) -> dict[str, Any]:
    """SQLite with one worker; PostgreSQL with one and two workers (shared subscription)."""
    results = []
    with tempfile.TemporaryDirectory(prefix="gerbang-ingest-") as tmp:
        for backend in backends:
            for workers in ((1,) if backend == "sqlite" else (1, 2)):
                results.append(run_one(backend, workers, events, devices, Path(tmp), pg_url))
    return {"events": events, "devices": devices, "runs": results,
            "load_average": os.getloadavg()}


if __name__ == "__main__":
    print(json.dumps(run_bench()))
