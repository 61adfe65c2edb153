"""Ingest benchmark (``gerbang-gateway bench``): events/s from 50 devices into each back-end.

Everything is real and on this machine: a Mosquitto started with the project's config, one
publisher per simulated gate (``mosquitto_pub``, MQTT 5, QoS 1, its own connection and client id
like a real gate, as fast as the broker acknowledges), the gateway as one ``gerbang-gateway run
--no-http --ingest-workers N`` (itself plus N-1 ingest-only children in one shared subscription,
as a centre would run it), and the SQLite or PostgreSQL store. In the same run ``mosquitto_sub``
writes the same stream to a file: its rate is the ceiling the gateway is compared with
(``ratio``). Lost and duplicated events are counted by event id against what was published.

Gates are separate machines in a centre, so the simulated ones should take as little of this
machine's CPU as possible: ``mosquitto_pub`` (C) costs less than half of what a Python paho
publisher does per event. ``publisher="paho"`` keeps the earlier two Python publisher processes
for comparison with older figures.

The clock starts once every publisher has built its events and connected (building the load is
not the gateway's time) and stops when the store holds every event. CPU seconds spent in that
window by the gateway processes, the broker and the publishers are reported too: on a shared
machine they are steadier than events/s, and they show where the time went. Figures only;
nothing is asserted (the machine is shared and noisy).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from gerbang import wire
from gerbang.broker import MosquittoBroker

CENTRE = "bench"
#: The configuration ``events_per_s`` (the headline) is taken from: the one docs/gateway.md
#: recommends for a 2-core centre gateway.
HEADLINE = ("sqlite", 2)


def _event(device: str, seq: int) -> tuple[str, bytes, str]:
    event = wire.CheckinEvent(
        event_id=wire.new_event_id(), device_id=device, centre=CENTRE, room="R01", session="S1",
        seq=seq, ts=wire.utc_now_iso(), outcome="accepted", applicant_id=f"A{seq:06d}",
        score=0.7, latency_ms=40.0)
    return wire.events_topic(CENTRE, device), event.to_json(), event.event_id


def _publish(port: int, devices: list[str], per_device: int, out_path: str, ready: Any,
             go: Any) -> None:
    """Python publisher process (``publisher="paho"``): QoS 1 events for ``devices``, sent once
    ``go`` is set. Writes the published event ids and its CPU seconds to ``out_path``."""
    import resource

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    messages = [_event(d, s) for s in range(per_device) for d in devices]
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(500)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    ready.set()
    go.wait()
    before = resource.getrusage(resource.RUSAGE_SELF)
    infos = [client.publish(topic, payload, qos=1) for topic, payload, _ in messages]
    for info in infos:
        info.wait_for_publish(timeout=120)
    after = resource.getrusage(resource.RUSAGE_SELF)
    client.loop_stop()
    client.disconnect()
    Path(out_path).write_text(json.dumps({
        "ids": [i for _, _, i in messages],
        "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)}))


class _PahoPublishers:
    """Two Python processes, each publishing for half of the devices over one connection."""

    def __init__(self, broker: MosquittoBroker, names: list[str], per_device: int, work: Path,
                 tag: str) -> None:
        halves = [names[: len(names) // 2], names[len(names) // 2:]]
        self.out_files = [work / f"published-{tag}-{i}.json" for i in range(2)]
        self._go = multiprocessing.Event()
        self._ready = [multiprocessing.Event() for _ in halves]
        self.procs = [multiprocessing.Process(target=_publish, args=(
            broker.port, part, per_device, str(path), flag, self._go))
            for part, path, flag in zip(halves, self.out_files, self._ready, strict=True)]
        for proc in self.procs:
            proc.start()

    def wait_ready(self, timeout: float) -> None:
        for flag in self._ready:
            flag.wait(timeout)

    def go(self) -> None:
        self._go.set()

    def finish(self) -> tuple[set[str], float]:
        """(published event ids, publisher CPU seconds) once every publisher is done."""
        ids: set[str] = set()
        cpu = 0.0
        for proc, path in zip(self.procs, self.out_files, strict=True):
            proc.join(timeout=120)
            out = json.loads(path.read_text())
            ids.update(out["ids"])
            cpu += out["cpu_s"]
        return ids, cpu

    def kill(self) -> None:
        for proc in self.procs:
            if proc.is_alive():
                proc.kill()


class _MosquittoPublishers:
    """One ``mosquitto_pub -l`` per device (its own connection and client id, as a gate has);
    each gets its events as lines on stdin when the clock starts."""

    def __init__(self, broker: MosquittoBroker, names: list[str], per_device: int, work: Path,
                 tag: str) -> None:
        self.broker = broker
        events = {name: [_event(name, seq) for seq in range(per_device)] for name in names}
        self.ids = {i for batch in events.values() for _, _, i in batch}
        self.lines = {name: b"".join(payload + b"\n" for _, payload, _ in batch)
                      for name, batch in events.items()}
        exe = shutil.which("mosquitto_pub") or "mosquitto_pub"
        self.procs = {name: subprocess.Popen(
            [exe, "-h", "127.0.0.1", "-p", str(broker.port), "-V", "mqttv5", "-q", "1", "-l",
             "-M", "100", "-i", name, "-t", wire.events_topic(CENTRE, name)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for name in names}
        self._feeders: list[threading.Thread] = []

    def wait_ready(self, timeout: float) -> None:
        """Until the broker has logged every publisher's connection."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.broker.log_path.read_text(errors="replace")
            if all(f" as {name} " in text for name in self.procs):
                return
            time.sleep(0.05)
        raise TimeoutError("publishers did not connect")

    def go(self) -> None:
        def feed(proc: subprocess.Popen[bytes], data: bytes) -> None:
            assert proc.stdin is not None
            proc.stdin.write(data)
            proc.stdin.close()

        self._feeders = [threading.Thread(target=feed, args=(proc, self.lines[name]))
                         for name, proc in self.procs.items()]
        for thread in self._feeders:
            thread.start()

    def finish(self) -> tuple[set[str], float]:
        """(published event ids, publisher CPU seconds) once every publisher has exited."""
        for thread in self._feeders:
            thread.join(timeout=120)
        cpu = 0.0
        for proc in self.procs.values():
            _, status, usage = os.wait4(proc.pid, 0)  # wait, and learn its CPU time
            proc.returncode = os.waitstatus_to_exitcode(status)
            cpu += usage.ru_utime + usage.ru_stime
        return self.ids, cpu

    def kill(self) -> None:
        for proc in self.procs.values():
            if proc.returncode is None and proc.poll() is None:
                proc.kill()


def _cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds used so far by ``pids`` (Linux /proc; 0 for a gone pid)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def _with_children(pid: int) -> list[int]:
    """``pid`` and its direct children (the ingest workers a ``run`` started)."""
    pids = [pid]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            pids.append(int(entry.name))
    return pids


def _wait_for_workers(proc: subprocess.Popen[bytes], log_path: Path, workers: int,
                      timeout: float) -> None:
    """Until every worker has logged its confirmed subscription."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace") if log_path.exists() else ""
        if text.count("gateway subscribed") >= workers:
            return
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {proc.returncode}: {text[-2000:]}")
        time.sleep(0.1)
    raise TimeoutError(f"{workers} gateway workers did not subscribe within {timeout:.0f}s; "
                       f"see {log_path}")


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
            pg_url: str, protocol: int | None = None, publisher: str = "mosquitto_pub",
            ) -> dict[str, Any]:
    """One configuration: fresh broker, fresh database, a gateway with ``workers`` workers."""
    from gateway.store import open_store

    tag = f"{backend}-{workers}-{uuid.uuid4().hex[:4]}"
    broker = MosquittoBroker(work / f"broker-{tag}").start()
    url, cleanup = _fresh_database(backend, work, pg_url)
    store = open_store(url)  # the bench reads the store too
    gateway: subprocess.Popen[bytes] | None = None
    raw: subprocess.Popen[bytes] | None = None
    publishers: _PahoPublishers | _MosquittoPublishers | None = None
    log_path = work / f"gateway-{tag}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        cmd = [sys.executable, "-m", "gateway.cli", "run", "--db", url, "--no-http",
               "--broker-port", str(broker.port), "--client-id", "bench-gw",
               "--ingest-workers", str(workers)]
        if protocol is not None:
            cmd += ["--mqtt-protocol", str(protocol)]
        with open(log_path, "wb") as log_file:
            gateway = subprocess.Popen(cmd, stderr=log_file, stdout=subprocess.DEVNULL, env=env)
        _wait_for_workers(gateway, log_path, workers, 60)
        gateway_pids = _with_children(gateway.pid)
        per_device = max(1, events // devices)
        total = per_device * devices
        raw_file = work / f"raw-{tag}.txt"
        with open(raw_file, "w") as raw_out:
            raw = subprocess.Popen(
                [shutil.which("mosquitto_sub") or "mosquitto_sub", "-h", "127.0.0.1", "-p",
                 str(broker.port), "-q", "1", "-t", wire.subscription(CENTRE, "events"),
                 "-C", str(total)], stdout=raw_out, stderr=subprocess.DEVNULL)
        names = [f"{CENTRE}-gate-{i:02d}" for i in range(devices)]
        publishers = (_PahoPublishers if publisher == "paho" else _MosquittoPublishers)(
            broker, names, per_device, work, tag)
        publishers.wait_ready(60)
        time.sleep(0.5)  # let mosquitto_sub subscribe
        assert broker.process is not None
        cpu_before = (_cpu_s(gateway_pids), _cpu_s([broker.process.pid]))
        started = time.monotonic()
        publishers.go()
        raw_done = stored_done = None
        cpu_after = cpu_before
        deadline = started + 300
        while time.monotonic() < deadline and (raw_done is None or stored_done is None):
            if raw_done is None and raw.poll() is not None:
                raw_done = time.monotonic()
            if stored_done is None and store.counts()["events"] >= total:
                stored_done = time.monotonic()
                cpu_after = (_cpu_s(gateway_pids), _cpu_s([broker.process.pid]))
            time.sleep(0.05)
        if stored_done is None:  # gave up: the figures below show what was missing
            stored_done = time.monotonic()
            cpu_after = (_cpu_s(gateway_pids), _cpu_s([broker.process.pid]))
        published_ids, publisher_cpu = publishers.finish()
        published_done = time.monotonic()
        rows = store.events()
        stored_ids = [r["event_id"] for r in rows]
        raw_count = sum(1 for _ in open(raw_file))
        elapsed = stored_done - started
        raw_elapsed = (raw_done or published_done) - started
        gateway_cpu = cpu_after[0] - cpu_before[0]
        return {
            "backend": backend, "workers": workers, "devices": devices, "published": total,
            "stored": len(stored_ids), "lost": len(published_ids - set(stored_ids)),
            "duplicated": len(stored_ids) - len(set(stored_ids))
            + len(set(stored_ids) - published_ids),
            "events_per_s": round(len(stored_ids) / elapsed, 1),
            "raw_events": raw_count, "raw_events_per_s": round(raw_count / raw_elapsed, 1),
            "ratio": round((len(stored_ids) / elapsed) / max(raw_count / raw_elapsed, 1e-9), 3),
            "seconds": round(elapsed, 2),
            "publisher": publisher,
            "cpu_s": {"gateway": round(gateway_cpu, 2),
                      "broker": round(cpu_after[1] - cpu_before[1], 2),
                      "publishers": round(publisher_cpu, 2)},
            "gateway_cpu_us_per_event": round(gateway_cpu / max(len(stored_ids), 1) * 1e6),
            "load_average": [round(x, 2) for x in os.getloadavg()]}
    finally:
        if publishers is not None:
            publishers.kill()
        if raw is not None and raw.poll() is None:
            raw.kill()
            raw.wait()
        if gateway is not None:
            gateway.terminate()
            try:
                gateway.wait(timeout=30)
            except subprocess.TimeoutExpired:
                gateway.kill()
        broker.stop()
        cleanup()


def _summary(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per back-end and worker count: the median of the repeats, and their spread."""
    out = []
    for key in dict.fromkeys((r["backend"], r["workers"]) for r in runs):
        group = [r for r in runs if (r["backend"], r["workers"]) == key]
        rates = [r["events_per_s"] for r in group]
        out.append({
            "backend": key[0], "workers": key[1], "repeats": len(group),
            "events_per_s": round(statistics.median(rates), 1),
            "events_per_s_min": min(rates), "events_per_s_max": max(rates),
            "raw_events_per_s": round(statistics.median(r["raw_events_per_s"] for r in group), 1),
            "gateway_cpu_us_per_event": round(statistics.median(
                r["gateway_cpu_us_per_event"] for r in group)),
            "lost": sum(r["lost"] for r in group),
            "duplicated": sum(r["duplicated"] for r in group)})
    return out


def run_bench(events: int = 20000, devices: int = 50,
              pg_url: str = "postgresql://postgres@127.0.0.1:5432/postgres",
              backends: tuple[str, ...] = ("sqlite", "postgresql"),
              workers: tuple[int, ...] = (1, 2), repeat: int = 1,
              protocol: int | None = None, publisher: str = "mosquitto_pub",
              ) -> dict[str, Any]:
    """Every back-end with each worker count, ``repeat`` times (interleaved, so a burst of
    load elsewhere on the machine hits every configuration alike). The headline
    ``events_per_s`` is the median for ``HEADLINE`` (SQLite, 2 workers) when it was run."""
    from gateway.config import load_gateway_config

    load_before = [round(x, 2) for x in os.getloadavg()]
    results = []
    with tempfile.TemporaryDirectory(prefix="gerbang-ingest-") as tmp:
        for _ in range(repeat):
            for backend in backends:
                for count in workers:
                    results.append(run_one(backend, count, events, devices, Path(tmp), pg_url,
                                           protocol, publisher))
    summary = _summary(results)
    headline = next((s for s in summary if (s["backend"], s["workers"]) == HEADLINE),
                    summary[0])
    return {
        "events": events, "devices": devices,
        "mqtt_protocol": protocol or load_gateway_config(None).broker.protocol,
        "cpu_count": os.cpu_count(), "publisher": publisher,
        "headline": f"{headline['backend']}, {headline['workers']} ingest worker"
                    f"{'s' if headline['workers'] > 1 else ''} (median of "
                    f"{headline['repeats']})",
        "events_per_s": headline["events_per_s"],
        "raw_events_per_s": headline["raw_events_per_s"],
        "lost": sum(r["lost"] for r in results),
        "duplicated": sum(r["duplicated"] for r in results),
        "summary": summary, "runs": results,
        "load_average": {"start": load_before,
                         "end": [round(x, 2) for x in os.getloadavg()]}}


if __name__ == "__main__":
    print(json.dumps(run_bench()))
