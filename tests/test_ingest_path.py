"""The gateway's receive path, message by message: what is stored, what is refused and why."""

from __future__ import annotations

import json

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from waiting import wait_until

from gateway.ingest import Ingest
from gerbang import wire
from gerbang.config import BrokerConfig

CENTRE, DEVICE = "c1", "c1-r01-a"


def message(topic: str, payload: bytes, qos: int = 1, mid: int = 1) -> mqtt.MQTTMessage:
    msg = mqtt.MQTTMessage(mid=mid, topic=topic.encode())
    msg.payload = payload
    msg.qos = qos
    return msg


def event(**fields) -> wire.CheckinEvent:
    base = dict(event_id=wire.new_event_id(), device_id=DEVICE, centre=CENTRE, room="R01",
                session="S1", seq=0, ts=wire.utc_now_iso(), outcome="accepted",
                applicant_id="A0001", score=0.7, latency_ms=40.0)
    return wire.CheckinEvent(**{**base, **fields})


def classify(topic: str, payload: bytes) -> tuple[str, object]:
    ingest = Ingest.__new__(Ingest)  # no broker, no store: classification only
    return ingest._classify(message(topic, payload))


def test_a_good_event_is_classified_as_it_was_sent():
    sent = event(frame_ref="a\\u0000b")  # a backslash in free text is fine
    kind, value = classify(wire.events_topic(CENTRE, DEVICE), sent.to_json())
    assert kind == "event" and value == sent


def test_nul_in_free_text_is_refused_naming_the_field():
    """PostgreSQL cannot store NUL in text: such an event would be retried for ever and stall
    the ingest behind it, so it is refused like any other malformed payload."""
    kind, reason = classify(wire.events_topic(CENTRE, DEVICE),
                            event(applicant_id="A\x00001").to_json())
    assert kind == "reject" and reason == "applicant_id: contains a NUL character"
    alarm = wire.AlarmEvent(alarm_id=wire.new_event_id(), device_id=DEVICE, centre=CENTRE,
                            seq=1, ts=wire.utc_now_iso(), alarm="tamper", detail="lid\x00open")
    kind, reason = classify(wire.alarms_topic(CENTRE, DEVICE), alarm.to_json())
    assert kind == "reject" and reason == "detail: contains a NUL character"


def test_bad_topics_are_refused_every_time():
    # parse_topic results are cached; a refusal must not be (nor turn into an acceptance).
    for _ in range(3):
        kind, reason = classify("gerbang/v1/c1/bad device/events", event().to_json())
        assert kind == "reject" and "topic device" in reason
    kind, reason = classify(wire.device_topic(CENTRE, DEVICE, "cmd_ack"), event().to_json())
    assert kind == "reject" and "cmd_ack" in reason


def test_a_spoofing_device_is_refused_even_with_its_topic_cached():
    topic = wire.events_topic(CENTRE, DEVICE)
    assert classify(topic, event().to_json())[0] == "event"
    kind, reason = classify(topic, event(device_id="c1-r02-b").to_json())
    assert kind == "reject" and "does not match topic" in reason


def test_a_nul_event_does_not_stall_the_ones_behind_it(mosquitto, store):
    """On every back-end: the hostile event is rejected and alerted, the good one after it is
    stored (before, PostgreSQL refused the batch for ever and nothing else got in)."""
    ingest = Ingest(store, BrokerConfig(port=mosquitto.port))
    ingest.start()
    assert ingest.connected.wait(10)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    good = event(seq=1)
    try:
        topic = wire.events_topic(CENTRE, DEVICE)
        for payload in (event(applicant_id="A\x00").to_json(), good.to_json()):
            client.publish(topic, payload, qos=1).wait_for_publish(5)
        wait_until(lambda: store.counts() == {"events": 1, "rejected": 1}, 10,
                   "the good event stored and the NUL one rejected")
    finally:
        client.loop_stop()
        client.disconnect()
        ingest.stop()
    assert [r["event_id"] for r in store.events()] == [good.event_id]
    assert "NUL" in store.rejects()[0]["error"]
    assert ingest.stats.rejected == 1 and ingest.stats.stored == 1
    body = json.loads(good.to_json())
    assert body["applicant_id"] == store.events()[0]["applicant_id"]
