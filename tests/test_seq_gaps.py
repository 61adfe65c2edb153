"""Seq gaps (issue 14, High-2): a message the broker acknowledged to the gate but that never
reached the gateway is noticed, asked for again, stored, alerted while it is missing, and the
alert clears when it arrives; a loss at the end of a quiet stream is seen from the gate's
``acked_below``; a replaced outbox is alerted.

Everything is real: Mosquitto, the gateway's Ingest and seq watcher, and on the gate side the
device Outbox, Uplink and command handler (``resend``). The loss is real too: a client that
connects with the gateway's client id and a clean session (what ``roster-push`` with the
gateway's certificate did, finding High-5) wipes the gateway's session, and what a gate
publishes until the gateway is back is acknowledged to the gate and delivered to nobody.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from waiting import wait_until

from device.uplink.commands import CommandHandler
from device.uplink.outbox import Outbox
from device.uplink.publisher import Uplink
from gateway.auth import add_user
from gateway.ingest import Ingest
from gateway.web import create_app
from gerbang import wire
from gerbang.config import BrokerConfig

try:
    from gateway.seqwatch import SeqWatcher, contiguous_and_missing
except ImportError:  # the base commit has no seq watcher: kept so these tests can show it
    SeqWatcher = None  # type: ignore[assignment,misc]

CENTRE, DEVICE = "c1", "c1-r01-a"
GATEWAY_ID = "gerbang-gateway"
PASSWORD = "correct-horse-battery"


class Gate:
    """A gate's real uplink side: Outbox, Uplink (birth and telemetry with the outbox
    position) and the command handler that answers ``cmd/resend``; ``answers=False`` is a gate
    that takes no commands."""

    def __init__(self, port: int, folder: Path, *, answers: bool = True,
                 keep_acked_s: float = 86400.0) -> None:
        self.outbox = Outbox(folder / "outbox.sqlite", keep_acked_s=keep_acked_s,
                             purge_every_s=0.0)
        self.stream = self.outbox.stream
        handler = CommandHandler("S1", folder, grant=lambda: None,
                                 record_alarm=lambda kind, detail: None,
                                 resend=lambda body: self.uplink.resend(body))
        self.uplink = Uplink(self.outbox, BrokerConfig(port=port), CENTRE, DEVICE,
                             birth={"device_id": DEVICE, "room": "R01"},
                             on_command=handler.handle if answers else None,
                             telemetry=lambda: {}, telemetry_interval_s=0.5)
        self.uplink.start()
        wait_until(lambda: self.uplink.connected, 10, "the gate connected")
        self.next_n = 0

    def check_in(self, count: int = 1) -> None:
        """``count`` accepted check-ins, each published and acknowledged by the broker."""
        for _ in range(count):
            n = self.next_n
            self.next_n += 1

            def build(seq: int, n: int = n) -> tuple[str, bytes]:
                event = wire.CheckinEvent(
                    event_id=wire.new_event_id(), device_id=DEVICE, centre=CENTRE, room="R01",
                    session="S1", seq=seq, ts=wire.utc_now_iso(), outcome="accepted",
                    applicant_id=f"A{n:04d}", score=0.7, latency_ms=40.0, stream=self.stream)
                return wire.events_topic(CENTRE, DEVICE), event.to_json()

            seq = self.outbox.append(build)
            self.uplink.notify()
            wait_until(lambda seq=seq: self.outbox.position()["acked_below"] > seq, 10,
                       f"seq {seq} acknowledged by the broker")

    def close(self) -> None:
        self.uplink.stop()
        self.outbox.close()


class ResendWatch:
    """Counts the ``cmd/resend`` requests the gateway sends to gates (an observer)."""

    def __init__(self, port: int) -> None:
        self.requests: list[dict[str, Any]] = []
        subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = lambda c, u, msg: self.requests.append(json.loads(msg.payload))
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(f"{wire.TOPIC_ROOT}/{CENTRE}/+/cmd/resend", qos=1)
        assert subscribed.wait(5)

    def ranges(self) -> list[tuple[str, int, int]]:
        return [(r["stream"], r["from_seq"], r["to_seq"]) for r in self.requests]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class SessionWipe:
    """While open, the gateway's session is gone: a client holds the gateway's client id with
    a clean session, so what gates publish meanwhile is delivered to nobody. On close the
    gateway's own client reconnects (persistent session, subscriptions made again)."""

    def __init__(self, port: int, ingest: Ingest) -> None:
        self.ingest = ingest
        connected = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=GATEWAY_ID,
                                  protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda *a: connected.set()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 0
        self.client.connect("127.0.0.1", port, clean_start=True, properties=props)
        self.client.loop_start()
        assert connected.wait(5), "the wiping client did not connect"

    def __enter__(self) -> SessionWipe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        # the gateway's paho reconnects by itself (1 s back-off) and subscribes again
        wait_until(lambda: self.ingest.client.is_connected(), 15, "the gateway back")
        time.sleep(0.5)  # its SUBACK


@pytest.fixture
def gateway(store, mosquitto):
    """A real Ingest and seq watcher (on each store back-end), and the API a manager reads
    them through."""
    ingest = Ingest(store, BrokerConfig(port=mosquitto.port), client_id=GATEWAY_ID)
    ingest.start()
    assert ingest.connected.wait(10)
    watcher = None
    if SeqWatcher is not None:
        # alert after 1 s, re-send after 3 s: the alert is seen before the re-send clears it
        watcher = SeqWatcher(store, ingest, resend_s=3, alert_s=1, every_s=0.3).start()
    add_user(store, "manager1", PASSWORD, "manager")
    web = TestClient(create_app(store))
    token = web.post("/api/login", json={"username": "manager1",
                                         "password": PASSWORD}).json()["token"]
    web.headers["Authorization"] = f"Bearer {token}"
    yield store, ingest, web
    if watcher is not None:
        watcher.stop()
    ingest.stop()


def gap_alerts(web: TestClient) -> list[dict[str, Any]]:
    return [a for a in web.get("/api/alerts").json() if a["kind"] == "seq_gap"]


def streams_of(web: TestClient, device: str = DEVICE) -> list[dict[str, Any]]:
    (row,) = [d for d in web.get("/api/devices").json() if d["device_id"] == device]
    return row["streams"]


def test_gap_ranges_from_stored_seqs():
    if SeqWatcher is None:
        pytest.fail("no seq watcher on this code: gaps are never computed")
    assert contiguous_and_missing(0, [0, 1, 3], 4) == (2, [(2, 2)])
    assert contiguous_and_missing(0, [0, 1, 2], 4) == (3, [(3, 3)])  # the tail, from acked_below
    assert contiguous_and_missing(5, [5, 9, 10], 12) == (6, [(6, 8), (11, 11)])
    assert contiguous_and_missing(0, [], 0) == (0, [])


def test_a_message_lost_in_the_broker_is_resent_stored_and_its_alert_clears(
        tmp_path, mosquitto, gateway):
    store, ingest, web = gateway
    gate, watch = Gate(mosquitto.port, tmp_path / "gate"), ResendWatch(mosquitto.port)
    try:
        gate.check_in(2)                        # seq 0, 1
        with SessionWipe(mosquitto.port, ingest):
            gate.check_in()                     # seq 2: acknowledged to the gate, lost
        gate.check_in()                         # seq 3
        wait_until(lambda: store.counts()["events"] == 3, 10, "seq 0, 1, 3 stored")
        assert sorted(e["seq"] for e in store.events()) == [0, 1, 3]  # the loss is real
        wait_until(lambda: gap_alerts(web), 10, "a seq_gap alert for the missing seq 2")
        (alert,) = gap_alerts(web)
        assert alert["device_id"] == DEVICE and gate.stream in alert["detail"]
        assert "seq 2 missing" in alert["detail"]
        (stream,) = streams_of(web)
        assert (stream["stream"], stream["contiguous_seq"], stream["missing"]) == (
            gate.stream, 1, [[2, 2]])
        page = web.get("/devices").text
        assert f'data-stream="{gate.stream}"' in page and "missing 2" in page
        wait_until(lambda: watch.requests, 15, "the gateway asking the gate to re-send seq 2")
        assert watch.ranges() == [(gate.stream, 2, 2)]
        wait_until(lambda: store.counts()["events"] == 4, 10, "the re-sent seq 2 stored")
        wait_until(lambda: not gap_alerts(web), 10, "the seq_gap alert gone")
        (stream,) = streams_of(web)
        assert (stream["contiguous_seq"], stream["missing"]) == (3, [])
        assert sorted(e["seq"] for e in store.events()) == [0, 1, 2, 3]
        assert len({e["event_id"] for e in store.events()}) == 4  # the gate's own event ids
        wait_until(lambda: store.resend_requests(DEVICE)
                   and store.resend_requests(DEVICE)[0]["acked_at"], 10, "the gate's answer")
        (answer,) = store.resend_requests(DEVICE)
        assert answer["ok"] == 1 and answer["not_kept"] == 0
    finally:
        watch.close()
        gate.close()


def test_a_trailing_loss_is_seen_from_the_gates_acked_below(tmp_path, mosquitto, gateway):
    """The last event is lost and nothing comes after it: only the gate's telemetry
    (``acked_below`` 4 while the gateway holds 0..2) tells."""
    store, ingest, web = gateway
    gate, watch = Gate(mosquitto.port, tmp_path / "gate"), ResendWatch(mosquitto.port)
    try:
        gate.check_in(3)
        wait_until(lambda: store.counts()["events"] == 3, 10, "seq 0..2 stored")
        with SessionWipe(mosquitto.port, ingest):
            gate.check_in()                     # seq 3, the last one: lost
        wait_until(lambda: gap_alerts(web), 15, "a seq_gap alert for the lost last seq 3")
        assert "seq 3 missing" in gap_alerts(web)[0]["detail"]
        wait_until(lambda: watch.requests, 15, "a re-send request for seq 3")
        assert watch.ranges()[0][1:] == (3, 3)
        wait_until(lambda: store.counts()["events"] == 4, 10, "seq 3 stored")
        wait_until(lambda: not gap_alerts(web), 10, "the alert gone")
        assert streams_of(web)[0]["contiguous_seq"] == 3
    finally:
        watch.close()
        gate.close()


def test_a_range_the_gate_no_longer_keeps_stays_alerted_and_is_not_asked_again(
        tmp_path, mosquitto, gateway):
    _, ingest, web = gateway
    # keeps no acknowledged row: seq 2 is gone from the gate before the gateway asks
    gate = Gate(mosquitto.port, tmp_path / "gate", keep_acked_s=0.0)
    watch = ResendWatch(mosquitto.port)
    try:
        gate.check_in(2)
        with SessionWipe(mosquitto.port, ingest):
            gate.check_in()
        gate.check_in()
        wait_until(lambda: watch.requests, 15, "a re-send request for seq 2")
        wait_until(lambda: gap_alerts(web) and "no longer kept on the gate"
                   in gap_alerts(web)[0]["detail"], 15, "the alert saying seq 2 is gone")
        assert streams_of(web)[0]["not_kept"] == [[2, 2]]
        time.sleep(4.0)  # more than the re-send delay: it is not asked for again
        assert len(watch.requests) == 1
        assert gap_alerts(web), "the alert stays: seq 2 is lost for good"
        assert "not kept on the gate" in web.get("/devices").text
    finally:
        watch.close()
        gate.close()


def test_a_range_is_asked_for_at_most_once_a_minute(tmp_path, mosquitto, gateway):
    store, ingest, web = gateway
    gate = Gate(mosquitto.port, tmp_path / "gate", answers=False)
    watch = ResendWatch(mosquitto.port)
    try:
        gate.check_in(2)
        with SessionWipe(mosquitto.port, ingest):
            gate.check_in()
        gate.check_in()
        wait_until(lambda: watch.requests, 15, "a re-send request for seq 2")
        time.sleep(5.0)  # many watcher passes, each finding the range still missing
        assert len(watch.requests) == 1
        (request,) = store.resend_requests(DEVICE)
        assert request["acked_at"] is None  # the gate never answered: recorded as such
        assert gap_alerts(web) and "asked the gate to re-send 1 time" in \
            gap_alerts(web)[0]["detail"]
    finally:
        watch.close()
        gate.close()


def test_a_replaced_outbox_is_alerted(tmp_path, mosquitto, gateway):
    """The gate's data directory was replaced: a new stream starting at seq 0."""
    store, _, web = gateway
    old = Gate(mosquitto.port, tmp_path / "old")
    old.check_in(3)
    old_stream = old.stream
    old.close()
    wait_until(lambda: store.counts()["events"] == 3, 10, "the old outbox's events")
    new = Gate(mosquitto.port, tmp_path / "new")  # same device id, a new outbox
    try:
        new.check_in()
        wait_until(lambda: [a for a in web.get("/api/alerts").json()
                            if a["kind"] == "outbox_replaced"], 20, "an outbox_replaced alert")
        (alert,) = [a for a in web.get("/api/alerts").json() if a["kind"] == "outbox_replaced"]
        assert alert["device_id"] == DEVICE and alert["severity"] == "high"
        assert new.stream in alert["detail"] and old_stream in alert["detail"]
        assert {s["stream"] for s in streams_of(web)} == {old_stream, new.stream}
        assert not gap_alerts(web)  # every seq of both streams arrived
    finally:
        new.close()


def test_the_gates_resend_answer_is_read_for_what_it_no_longer_keeps():
    from gateway.ingest import not_kept_count

    # the answer device/uplink/publisher.py's resend gives, and shorter wordings
    assert not_kept_count("re-sending 3 of 5 (seq 2..6); 2 no longer kept") == 2
    assert not_kept_count("re-sending 1 of 1 (seq 7..7); 0 no longer kept") == 0
    assert not_kept_count("re-queued 0; 1 no longer kept") == 1
    assert not_kept_count("none of them kept: not kept any more") == -1
    assert not_kept_count("pong") is None
