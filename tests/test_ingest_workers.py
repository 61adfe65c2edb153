"""Several ingest workers on one SQLite file: a shared subscription on a real Mosquitto splits
the stream, the file takes their writes one at a time, and nothing is lost or stored twice."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from waiting import wait_until

from gateway.ingest import Ingest
from gateway.store import MIGRATIONS, SqliteStore, open_store
from gerbang import wire
from gerbang.config import BrokerConfig, ConfigError

CENTRE = "c1"


def burst(port: int, devices: int, per_device: int, repeat_every: int = 0) -> list[str]:
    """Publish ``per_device`` QoS 1 events from each of ``devices`` gates, one connection per
    gate like the real ones, all at once; every ``repeat_every``-th event is published twice
    (a redelivery). Returns the distinct event ids."""
    ids: list[str] = []
    lock = threading.Lock()

    def gate(n: int) -> None:
        device = f"{CENTRE}-gate-{n:02d}"
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device,
                             protocol=mqtt.MQTTv5)
        client.max_inflight_messages_set(100)
        client.connect("127.0.0.1", port)
        client.loop_start()
        infos = []
        for seq in range(per_device):
            event = wire.CheckinEvent(
                event_id=wire.new_event_id(), device_id=device, centre=CENTRE, room="R01",
                session="S1", seq=seq, ts=wire.utc_now_iso(), outcome="accepted",
                applicant_id=f"A{n:02d}{seq:04d}", score=0.7, latency_ms=40.0)
            topic = wire.events_topic(CENTRE, device)
            infos.append(client.publish(topic, event.to_json(), qos=1))
            if repeat_every and seq % repeat_every == 0:
                infos.append(client.publish(topic, event.to_json(), qos=1))
            with lock:
                ids.append(event.event_id)
        for info in infos:
            info.wait_for_publish(30)
        client.loop_stop()
        client.disconnect()

    threads = [threading.Thread(target=gate, args=(n,)) for n in range(devices)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return ids


def start_worker(db, port: int, client_id: str, group: str | None = "workers",
                 protocol: int = 3) -> Ingest:
    ingest = Ingest(SqliteStore(db), BrokerConfig(port=port, protocol=protocol),
                    client_id=client_id, share_group=group)
    ingest.start()
    assert ingest.connected.wait(10), f"{client_id} did not subscribe"
    return ingest


def assert_exactly_once(db, ids: list[str]) -> None:
    rows = open_store(db).events()
    stored = [r["event_id"] for r in rows]
    assert len(stored) == len(set(stored)), "an event was stored twice"
    assert set(stored) == set(ids), (f"lost {len(set(ids) - set(stored))}, "
                                     f"unexpected {len(set(stored) - set(ids))}")


@pytest.mark.parametrize("protocol", [3, 5])
def test_two_sqlite_workers_share_a_burst_with_none_lost_or_duplicated(tmp_path, mosquitto,
                                                                       protocol):
    db = tmp_path / "gw.sqlite"
    workers = [start_worker(db, mosquitto.port, f"gw-{n}", protocol=protocol) for n in (1, 2)]
    try:
        ids = burst(mosquitto.port, devices=8, per_device=250, repeat_every=10)
        wait_until(lambda: open_store(db).counts()["events"] >= len(ids)
                   and sum(w.stats.received for w in workers) >= len(ids) + 200, 60,
                   "every event stored and every redelivery seen")
    finally:
        for worker in workers:
            worker.stop()
    assert_exactly_once(db, ids)
    # The broker split the stream: both workers wrote, and between them each event once.
    assert all(w.stats.stored > 0 for w in workers), [w.stats for w in workers]
    assert sum(w.stats.stored for w in workers) == len(ids)
    assert sum(w.stats.duplicates for w in workers) == 200  # the republished ones
    assert sum(w.stats.rejected for w in workers) == 0


def test_a_locked_database_delays_a_batch_but_never_loses_it(tmp_path, mosquitto):
    """Another process holds SQLite's write lock far longer than busy_timeout: the worker's
    insert fails with SQLITE_BUSY, is retried unacknowledged, and lands once the lock goes."""
    db = tmp_path / "gw.sqlite"
    store = SqliteStore(db)
    store.busy_timeout_ms = 50  # the writer thread's connection gives up after 50 ms
    ingest = Ingest(store, BrokerConfig(port=mosquitto.port), client_id="gw-locked")
    ingest.start()
    assert ingest.connected.wait(10)
    blocker = sqlite3.connect(db, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")  # the write lock, as a long transaction would
        ids = burst(mosquitto.port, devices=2, per_device=50)
        time.sleep(1.0)  # several busy timeouts and retries
        assert store.counts()["events"] == 0  # readers still see the last commit
        blocker.execute("COMMIT")
        wait_until(lambda: store.counts()["events"] == len(ids), 30, "the held batch stored")
    finally:
        blocker.close()
        ingest.stop()
    assert_exactly_once(db, ids)
    assert ingest.stats.stored == len(ids) and ingest.stats.duplicates == 0


def test_workers_opening_a_new_file_at_once_migrate_it_once(tmp_path):
    db = tmp_path / "fresh.sqlite"
    start = threading.Barrier(6)
    errors: list[BaseException] = []

    def open_it() -> None:
        start.wait()
        try:
            SqliteStore(db)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    store = open_store(db)
    assert store.schema_version == MIGRATIONS[-1][0]
    versions = store._execute("SELECT version FROM schema_migrations ORDER BY version")
    assert [r["version"] for r in versions] == [m[0] for m in MIGRATIONS]


@pytest.mark.parametrize("protocol", [3, 5])
def test_a_worker_that_ran_alone_does_not_keep_its_old_subscription(tmp_path, mosquitto,
                                                                    protocol):
    """The persistent session remembers the plain subscription of an earlier solo run; after
    joining a share group the worker must get its share only, not every event besides."""
    db = tmp_path / "gw.sqlite"
    start_worker(db, mosquitto.port, "gw-1", group=None, protocol=protocol).stop()
    workers = [start_worker(db, mosquitto.port, f"gw-{n}", protocol=protocol) for n in (1, 2)]
    try:
        ids = burst(mosquitto.port, devices=4, per_device=100)
        wait_until(lambda: open_store(db).counts()["events"] >= len(ids), 30, "the burst")
        time.sleep(0.5)  # anything delivered twice would have arrived by now
    finally:
        for worker in workers:
            worker.stop()
    assert_exactly_once(db, ids)
    assert sum(w.stats.received for w in workers) == len(ids)
    assert all(w.stats.received < len(ids) for w in workers)


@pytest.mark.slow
def test_run_with_two_ingest_workers_stores_a_burst_exactly_once(tmp_path, mosquitto):
    """``gerbang-gateway run --ingest-workers 2``: the process and its child share the stream
    into one SQLite file; on SIGTERM both finish and report what they stored."""
    db = tmp_path / "gw.sqlite"
    log_path = tmp_path / "gateway.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "wb") as log_file:
        gateway = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "run", "--db", str(db), "--no-http",
             "--broker-port", str(mosquitto.port), "--client-id", "gw",
             "--ingest-workers", "2"], stderr=log_file, env=env)
    try:
        wait_until(lambda: log_path.read_text().count("gateway subscribed") >= 2, 60,
                   "both workers subscribed")
        ids = burst(mosquitto.port, devices=8, per_device=200)
        wait_until(lambda: open_store(db).counts()["events"] >= len(ids), 60, "the burst")
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(30)
    assert gateway.returncode == 0
    assert_exactly_once(db, ids)
    log = log_path.read_text()
    stored = [int(n) for n in re.findall(r"stopped: IngestStats\(received=\d+, stored=(\d+)",
                                         log)]
    assert len(stored) == 2, log[-3000:]  # the parent and its child both stopped cleanly
    assert all(n > 0 for n in stored) and sum(stored) == len(ids)
    assert "share group gerbang-ingest" in log


def test_ingest_workers_and_share_group_are_checked_at_start():
    from gateway.config import load_gateway_config

    config = load_gateway_config(None, {"gateway": {"ingest_workers": 2}})
    assert config.gateway.ingest_workers == 2
    assert config.broker.protocol == 5  # the default; 3.1.1 halves the CPU per event
    assert load_gateway_config(None, {"broker": {"protocol": 3}}).broker.protocol == 3
    with pytest.raises(ConfigError, match="ingest_workers"):
        load_gateway_config(None, {"gateway": {"ingest_workers": 0}})
    with pytest.raises(ConfigError, match="share_group"):
        load_gateway_config(None, {"gateway": {"share_group": "a/b"}})


def test_a_retired_worker_hands_over_its_backlog_and_leaves_the_group(tmp_path, mosquitto):
    """Mosquitto keeps handing a share of the stream to a stopped worker's session. Retiring
    it (``run --retire``) stores what its session holds and ends the session, so from then on
    the remaining workers get everything."""
    db = tmp_path / "gw.sqlite"
    stays = start_worker(db, mosquitto.port, "gw-1")
    start_worker(db, mosquitto.port, "gw-2").stop()  # gone, but still in the group
    try:
        first = burst(mosquitto.port, devices=4, per_device=50)
        wait_until(lambda: stays.stats.received > 0 and not stays.pending(), 20, "gw-1's share")
        time.sleep(0.5)
        held = len(first) - open_store(db).counts()["events"]
        assert held > 0, "gw-2's session should hold its share of the burst"
        retire = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "run", "--retire", "--db", str(db),
             "--broker-port", str(mosquitto.port), "--client-id", "gw-2",
             "--share-group", "workers"], capture_output=True, text=True, timeout=60)
        assert retire.returncode == 0, retire.stderr[-2000:]
        assert f"stored {held} events its session still held" in retire.stderr
        assert_exactly_once(db, first)
        before = stays.stats.received
        second = burst(mosquitto.port, devices=4, per_device=25)
        wait_until(lambda: stays.stats.received - before == len(second), 20,
                   "every new event at the remaining worker")
    finally:
        stays.stop()
    assert_exactly_once(db, first + second)
