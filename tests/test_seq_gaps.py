"""Seq gaps (issue 14, High-2): a message the broker acknowledged to the gate but that never
reached the gateway is noticed, asked for again, stored, alerted while it is missing, and the
alert clears when it arrives; a loss at the end of a quiet stream is seen from the gate's
``acked_below``; a replaced outbox is alerted. Real Mosquitto, real Ingest and watcher, and a
real device Outbox on the gate side.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion
from waiting import wait_until

from device.outbox import Outbox
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
PASSWORD = "correct-horse-battery"


class StandInGate:
    """STAND-IN for the gate's uplink (device/uplink.py) until its ``cmd/resend`` lands: another
    helper writes the gate side in parallel. The lead replaces this class with the real Uplink
    at merge; keep it small.

    A real paho client keeps every event in a real device ``Outbox`` (seq assigned there) and
    publishes the seqs it is told to. ``lose`` marks seqs as acknowledged by the broker without
    delivering them to anyone: what a loss between broker and gateway looks like from the
    gate. Birth and telemetry carry the outbox position as the wire contract says; ``cmd/resend``
    is answered by publishing the range's rows the outbox still holds, and a ``cmd_ack`` that
    says how many are no longer kept."""

    def __init__(self, port: int, folder: Path, device: str = DEVICE,
                 answer: bool = True) -> None:
        self.device = device
        self.answer = answer  # False: a gate that takes resend requests and does nothing
        self.stream = secrets.token_hex(8)
        self.outbox = Outbox(folder / "outbox.sqlite")
        self.acked: set[int] = set()
        self.resends: list[dict[str, Any]] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device,
                                  protocol=mqtt.MQTTv5)
        self.client.will_set(wire.status_topic(CENTRE, device),
                             wire.status_payload(False), qos=1, retain=True)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(wire.device_topic(CENTRE, device, "cmd/#"), qos=1)
        assert subscribed.wait(5)
        self._publish(wire.status_topic(CENTRE, device), self._birth(), retain=True)

    def _outbox_position(self) -> dict[str, Any]:
        below = 0
        while below in self.acked:
            below += 1
        return {"stream": self.stream, "first_seq": 0,
                "next_seq": self.outbox.counters()["appended"], "acked_below": below}

    def _birth(self) -> bytes:
        return wire.status_payload(True, device_id=self.device, room="R01",
                                   outbox=self._outbox_position())

    def _publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def append(self, n: int) -> int:
        def build(seq: int) -> tuple[str, bytes]:
            event = wire.CheckinEvent(
                event_id=wire.new_event_id(), device_id=self.device, centre=CENTRE, room="R01",
                session="S1", seq=seq, ts=wire.utc_now_iso(), outcome="accepted",
                applicant_id=f"A{n:04d}", score=0.7, latency_ms=40.0, stream=self.stream)
            return wire.events_topic(CENTRE, self.device), event.to_json()
        seq = self.outbox.append(build)
        assert seq is not None
        return seq

    def rows(self, lo: int, hi: int) -> list[Any]:
        return [r for r in self.outbox.pending(after_seq=lo - 1, limit=hi - lo + 1)
                if r.seq <= hi]

    def publish(self, *seqs: int) -> None:
        for seq in seqs:
            (row,) = self.rows(seq, seq)
            self._publish(row.topic, row.payload)
            self.acked.add(seq)

    def lose(self, *seqs: int) -> None:
        self.acked.update(seqs)  # acknowledged by the broker, never delivered

    def forget(self, *seqs: int) -> None:
        self.outbox.remove(seqs)  # purged from the gate's outbox

    def telemetry(self) -> None:
        self._publish(wire.telemetry_topic(CENTRE, self.device), json.dumps(
            {"schema": 1, "ts": wire.utc_now_iso(), "outbox": self._outbox_position()}).encode())

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if not msg.topic.endswith("/cmd/resend"):
            return
        body = json.loads(msg.payload)
        self.resends.append(body)
        if self.answer:
            threading.Thread(target=self._resend, args=(body,), daemon=True).start()

    def _resend(self, body: dict[str, Any]) -> None:
        rows = self.rows(body["from_seq"], body["to_seq"]) if body["stream"] == self.stream \
            else []
        for row in rows:
            self._publish(row.topic, row.payload)
        gone = body["to_seq"] - body["from_seq"] + 1 - len(rows)
        self._publish(wire.device_topic(CENTRE, self.device, "cmd_ack"), json.dumps({
            "schema": 1, "command": "resend", "command_id": body.get("command_id"),
            "ok": True, "detail": f"re-queued {len(rows)}; {gone} no longer kept",
            "ts": wire.utc_now_iso()}).encode())

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self.outbox.close()


@pytest.fixture
def gateway(store, mosquitto):
    """A real Ingest and seq watcher (on each store back-end), and the API a manager reads
    them through."""
    ingest = Ingest(store, BrokerConfig(port=mosquitto.port))
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
    gate = StandInGate(mosquitto.port, tmp_path / "gate")
    try:
        for n in range(4):
            gate.append(n)
        gate.publish(0, 1)
        gate.lose(2)  # acknowledged to the gate, never delivered to the gateway
        gate.publish(3)
        wait_until(lambda: store.counts()["events"] == 3, 10, "seq 0, 1, 3 stored")
        wait_until(lambda: gap_alerts(web), 10, "a seq_gap alert for the missing seq 2")
        (alert,) = gap_alerts(web)
        assert alert["device_id"] == DEVICE and gate.stream in alert["detail"]
        assert "seq 2 missing" in alert["detail"]
        (stream,) = streams_of(web)
        assert (stream["stream"], stream["contiguous_seq"], stream["missing"]) == (
            gate.stream, 1, [[2, 2]])
        page = web.get("/devices").text
        assert f'data-stream="{gate.stream}"' in page and "missing 2" in page
        wait_until(lambda: gate.resends, 15, "the gateway asking the gate to re-send seq 2")
        assert [(r["stream"], r["from_seq"], r["to_seq"]) for r in gate.resends] == [
            (gate.stream, 2, 2)]
        wait_until(lambda: store.counts()["events"] == 4, 10, "the re-sent seq 2 stored")
        wait_until(lambda: not gap_alerts(web), 10, "the seq_gap alert gone")
        (stream,) = streams_of(web)
        assert (stream["contiguous_seq"], stream["missing"]) == (3, [])
        assert sorted(e["seq"] for e in store.events()) == [0, 1, 2, 3]
        assert ingest.stats.stored == 4  # ingest count = published
        answers = store.resend_requests(DEVICE)
        assert len(answers) == 1 and answers[0]["ok"] == 1 and answers[0]["not_kept"] == 0
    finally:
        gate.close()


def test_a_trailing_loss_is_seen_from_the_gates_acked_below(tmp_path, mosquitto, gateway):
    """The last event is lost and nothing comes after it: only the gate's telemetry
    (``acked_below`` 4 while the gateway holds 0..2) tells."""
    store, _, web = gateway
    gate = StandInGate(mosquitto.port, tmp_path / "gate")
    try:
        for n in range(4):
            gate.append(n)
        gate.publish(0, 1, 2)
        gate.lose(3)
        wait_until(lambda: store.counts()["events"] == 3, 10, "seq 0..2 stored")
        time.sleep(1.0)
        assert not gap_alerts(web), "nothing is missing that the gateway could know of yet"
        gate.telemetry()
        wait_until(lambda: gap_alerts(web), 15, "a seq_gap alert for the lost last seq 3")
        assert "seq 3 missing" in gap_alerts(web)[0]["detail"]
        wait_until(lambda: gate.resends, 15, "a re-send request for seq 3")
        assert (gate.resends[0]["from_seq"], gate.resends[0]["to_seq"]) == (3, 3)
        wait_until(lambda: store.counts()["events"] == 4, 10, "seq 3 stored")
        wait_until(lambda: not gap_alerts(web), 10, "the alert gone")
        assert streams_of(web)[0]["contiguous_seq"] == 3
    finally:
        gate.close()


def test_a_range_the_gate_no_longer_keeps_stays_alerted_and_is_not_asked_again(
        tmp_path, mosquitto, gateway):
    _, _, web = gateway
    gate = StandInGate(mosquitto.port, tmp_path / "gate")
    try:
        for n in range(4):
            gate.append(n)
        gate.publish(0, 1)
        gate.lose(2)
        gate.forget(2)  # purged from the gate's outbox before the gateway asked
        gate.publish(3)
        wait_until(lambda: gate.resends, 15, "a re-send request for seq 2")
        wait_until(lambda: gap_alerts(web) and "no longer kept on the gate"
                   in gap_alerts(web)[0]["detail"], 15, "the alert saying seq 2 is gone")
        assert streams_of(web)[0]["not_kept"] == [[2, 2]]
        time.sleep(4.0)  # more than the re-send delay: it is not asked for again
        assert len(gate.resends) == 1
        assert gap_alerts(web), "the alert stays: seq 2 is lost for good"
        assert "not kept on the gate" in web.get("/devices").text
    finally:
        gate.close()


def test_a_range_is_asked_for_at_most_once_a_minute(tmp_path, mosquitto, gateway):
    store, _, web = gateway
    gate = StandInGate(mosquitto.port, tmp_path / "gate", answer=False)
    try:
        for n in range(4):
            gate.append(n)
        gate.publish(0, 1)
        gate.lose(2)
        gate.publish(3)
        wait_until(lambda: gate.resends, 15, "a re-send request for seq 2")
        time.sleep(5.0)  # many watcher passes, each finding the range still missing
        assert len(gate.resends) == 1
        (request,) = store.resend_requests(DEVICE)
        assert request["acked_at"] is None  # the gate never answered: recorded as such
        assert gap_alerts(web) and "asked the gate to re-send 1 time" in \
            gap_alerts(web)[0]["detail"]
    finally:
        gate.close()


def test_a_replaced_outbox_is_alerted(tmp_path, mosquitto, gateway):
    """The gate's data directory was replaced: a new stream starting at seq 0."""
    store, _, web = gateway
    old = StandInGate(mosquitto.port, tmp_path / "old")
    for n in range(3):
        old.append(n)
    old.publish(0, 1, 2)
    old.close()
    wait_until(lambda: store.counts()["events"] == 3, 10, "the old outbox's events")
    new = StandInGate(mosquitto.port, tmp_path / "new")  # same device id, a new outbox
    try:
        new.append(10)
        new.publish(0)
        wait_until(lambda: [a for a in web.get("/api/alerts").json()
                            if a["kind"] == "outbox_replaced"], 20, "an outbox_replaced alert")
        (alert,) = [a for a in web.get("/api/alerts").json() if a["kind"] == "outbox_replaced"]
        assert alert["device_id"] == DEVICE and alert["severity"] == "high"
        assert new.stream in alert["detail"] and old.stream in alert["detail"]
        assert {s["stream"] for s in streams_of(web)} == {old.stream, new.stream}
        assert not gap_alerts(web)  # every seq of both streams arrived
    finally:
        new.close()


def test_the_gates_resend_answer_is_read_for_what_it_no_longer_keeps():
    from gateway.ingest import not_kept_count

    # the answer device/commands.py gives (i14-device), and this file's stand-in's
    assert not_kept_count("re-sending 3 of 5 (seq 2..6); 2 no longer kept") == 2
    assert not_kept_count("re-sending 1 of 1 (seq 7..7); 0 no longer kept") == 0
    assert not_kept_count("re-queued 0; 1 no longer kept") == 1
    assert not_kept_count("none of them kept: not kept any more") == -1
    assert not_kept_count("pong") is None
