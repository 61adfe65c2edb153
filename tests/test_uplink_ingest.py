"""Device outbox → real Mosquitto → gateway store: exactly once, across a broker restart."""

from __future__ import annotations

import json
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from waiting import wait_until

from device.uplink.outbox import Outbox
from device.uplink.publisher import Uplink
from gateway.ingest import Ingest
from gerbang import wire
from gerbang.config import BrokerConfig

CENTRE, DEVICE = "c1", "c1-r01-a"


def event_builder(n: int, device: str = DEVICE):
    def build(seq: int) -> tuple[str, bytes]:
        event = wire.CheckinEvent(
            event_id=wire.new_event_id(), device_id=device, centre=CENTRE, room="R01",
            session="S1", seq=seq, ts=wire.utc_now_iso(), outcome="accepted",
            applicant_id=f"A{n:04d}", score=0.7, latency_ms=50.0)
        return wire.events_topic(CENTRE, device), event.to_json()
    return build


@pytest.fixture
def gateway(store, mosquitto):
    ingest = Ingest(store, BrokerConfig(port=mosquitto.port))
    ingest.start()
    assert ingest.connected.wait(10), "gateway did not connect"
    yield store, ingest
    ingest.stop()


@pytest.mark.slow
def test_events_survive_a_broker_restart_without_duplicates(tmp_path, mosquitto, gateway):
    store, ingest = gateway
    outbox = Outbox(tmp_path / "dev" / "outbox.sqlite")
    uplink = Uplink(outbox, BrokerConfig(port=mosquitto.port), CENTRE, DEVICE)
    uplink.start()
    total = 300
    restarted = threading.Event()
    backlog_during_outage = []

    def restart_broker():
        time.sleep(0.5)
        mosquitto.stop()
        time.sleep(1.5)
        backlog_during_outage.append(outbox.depth())
        time.sleep(0.5)
        mosquitto.start()
        restarted.set()

    threading.Thread(target=restart_broker, daemon=True).start()
    for n in range(total):
        outbox.append(event_builder(n))
        uplink.notify()
        time.sleep(0.01)  # ~3 s of check-ins; the broker is down for 2 s of them
    assert restarted.wait(20)
    assert backlog_during_outage[0] > 20, "the outage should have left events in the outbox"
    assert uplink.drain(timeout=60), f"outbox still holds {outbox.depth()} events"
    wait_until(lambda: store.counts()["events"] >= total, 30, "gateway to store every event")
    time.sleep(1.0)  # let any late redelivery arrive: it must not add rows
    rows = store.events()
    assert len(rows) == total
    assert sorted(r["seq"] for r in rows) == list(range(total))
    assert len({r["event_id"] for r in rows}) == total
    assert ingest.stats.stored == total
    uplink.stop()


def test_hostile_payloads_are_rejected_counted_and_never_stored(mosquitto, gateway):
    store, ingest = gateway
    good = json.loads(event_builder(1)(0)[1])
    spoofed = {**good, "event_id": wire.new_event_id(), "device_id": "c1-r02-b"}
    bad_payloads = [
        b"{not json",
        json.dumps({**good, "seq": "zero"}).encode(),
        json.dumps({**good, "applicant_id": "A" * 10_000}).encode(),
        json.dumps({**good, "schema": 2}).encode(),
        json.dumps(spoofed).encode(),  # a device speaking for another device
    ]
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    topic = wire.events_topic(CENTRE, DEVICE)
    for payload in [*bad_payloads, json.dumps(good).encode()]:
        client.publish(topic, payload, qos=1).wait_for_publish(5)
    wait_until(lambda: store.counts()["events"] == 1 and ingest.stats.rejected >= 5, 10,
               "the good event stored and the bad ones rejected")
    client.loop_stop()
    client.disconnect()
    assert ingest.stats.rejected == len(bad_payloads)
    assert store.counts() == {"events": 1, "rejected": len(bad_payloads)}
    assert [r["event_id"] for r in store.events()] == [good["event_id"]]
    reasons = [r["error"] for r in store.rejects()]
    assert any("seq" in r for r in reasons) and any("does not match topic" in r for r in reasons)
    # ... and each one is on the proctors' alert list, waiting to be acknowledged.
    from gateway.alerts import current_alerts, open_count

    alerts = [a for a in current_alerts(store) if a["kind"] == "rejected_message"]
    assert len(alerts) == len(bad_payloads) and open_count(alerts) == len(bad_payloads)


def test_gateway_session_survives_a_broker_restart_while_the_gateway_is_away(
        tmp_path, mosquitto, store):
    """Events published while the gateway is down *and* the broker has restarted still arrive:
    the broker saved the gateway's persistent session (subscription + queue) to disk."""
    first = Ingest(store, BrokerConfig(port=mosquitto.port))
    first.start()
    assert first.connected.wait(10)
    first.stop()  # gateway away; its session (subscription) stays on the broker
    mosquitto.restart()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    topic, payload = event_builder(7)(0)
    client.publish(topic, payload, qos=1).wait_for_publish(5)
    client.loop_stop()
    client.disconnect()
    second = Ingest(store, BrokerConfig(port=mosquitto.port))
    second.start()
    try:
        wait_until(lambda: store.counts()["events"] == 1, 10,
                   "the event queued for the gateway's saved session")
    finally:
        second.stop()
    assert [r["applicant_id"] for r in store.events()] == ["A0007"]


def test_alarms_telemetry_and_commands_cross_the_real_broker(mosquitto, gateway):
    store, ingest = gateway
    received: list[mqtt.MQTTMessage] = []
    gate = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    gate.on_message = lambda c, u, msg: received.append(msg)
    gate.connect("127.0.0.1", mosquitto.port)
    gate.loop_start()
    gate.subscribe(wire.device_topic(CENTRE, DEVICE, "cmd/#"), qos=1)
    alarm = wire.AlarmEvent(alarm_id=wire.new_event_id(), device_id=DEVICE, centre=CENTRE, seq=4,
                            ts=wire.utc_now_iso(), alarm="door_forced", detail="contact open")
    spoofed = wire.AlarmEvent(alarm_id=wire.new_event_id(), device_id="c1-r02-b", seq=0,
                              centre=CENTRE, ts=wire.utc_now_iso(), alarm="tamper")
    for payload in (alarm.to_json(), alarm.to_json(), spoofed.to_json()):  # one redelivery
        gate.publish(wire.alarms_topic(CENTRE, DEVICE), payload, qos=1).wait_for_publish(5)
    gate.publish(wire.telemetry_topic(CENTRE, DEVICE), json.dumps(
        {"fps": 14.2, "outbox_depth": 3}), qos=1).wait_for_publish(5)
    wait_until(lambda: store.alarms() and store.devices() and ingest.stats.rejected == 1, 10,
               "the alarm stored, the telemetry kept, the spoofed alarm rejected")
    assert [(a["alarm"], a["detail"]) for a in store.alarms()] == [("door_forced",
                                                                    "contact open")]
    # stored as wire.parse_telemetry accepted it (which adds the contract version)
    assert store.devices()[0]["telemetry"] == {"schema": 1, "fps": 14.2, "outbox_depth": 3}
    assert "does not match topic" in store.rejects()[0]["error"]
    # The broker handles one client's packets in order: the gate's SUBSCRIBE went before its
    # acknowledged PUBLISHes, so its subscription is in place by now.
    ingest.send_command(CENTRE, DEVICE, "unlock", {"reason": "wheelchair user", "by": "p1"})
    wait_until(lambda: received, 10, "the unlock command at the gate")
    gate.loop_stop()
    gate.disconnect()
    assert received[0].topic == wire.device_topic(CENTRE, DEVICE, "cmd/unlock")
    body = json.loads(received[0].payload)
    assert (body["command"], body["reason"], body["by"]) == ("unlock", "wheelchair user", "p1")


def test_web_commands_reach_the_gate_through_the_ingest_connection(gateway, mosquitto):
    """The web tier has no broker connection: a remote unlock is queued in the store and the
    ingest process publishes it (with a command id) and records it as sent."""
    from fastapi.testclient import TestClient

    from gateway.auth import add_user
    from gateway.outgoing import OutgoingCommands
    from gateway.web import create_app

    store, ingest = gateway
    received: list[mqtt.MQTTMessage] = []
    subscribed = threading.Event()
    gate = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    gate.on_message = lambda c, u, msg: received.append(msg)
    gate.on_subscribe = lambda *a: subscribed.set()
    gate.connect("127.0.0.1", mosquitto.port)
    gate.loop_start()
    gate.subscribe(wire.device_topic(CENTRE, DEVICE, "cmd/#"), qos=1)
    assert subscribed.wait(5)
    store.record_status(DEVICE, CENTRE, {"state": "online"})
    add_user(store, "tech1", "a-long-password", "technician")
    outgoing = OutgoingCommands(store, ingest, "gw-test", poll_s=0.1)
    outgoing.start()
    try:
        web = TestClient(create_app(store))  # no commander, no ingest stats: the store's
        token = web.post("/api/login", json={"username": "tech1",
                                             "password": "a-long-password"}).json()["token"]
        answer = web.post(f"/api/devices/{DEVICE}/unlock", json={"reason": "wheelchair user"},
                          headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 202, answer.text
        assert received == []  # queued, not published by the web process
        wait_until(lambda: received, 10, "the queued unlock at the gate")
        body = json.loads(received[0].payload)
        assert (body["command"], body["reason"], body["by"]) == ("unlock", "wheelchair user",
                                                                 "tech1")
        assert body["command_id"].startswith("gw-")
        wait_until(lambda: store.unsent_commands() == [], 5, "the command marked sent")
        assert store.commands_log()[0]["sent_at"] is not None
        # the ingest counters reach the web through the store
        wait_until(lambda: store.ingest_counters(), 5, "ingest counters recorded")
        stats = web.get("/api/stats", headers={"Authorization": f"Bearer {token}"}).json()
        assert stats["ingest"]["processes"] == 1
        assert set(stats["ingest"]) >= {"received", "stored", "duplicates", "rejected",
                                        "refused"}
    finally:
        outgoing.stop()
        gate.loop_stop()
        gate.disconnect()
