"""The wire contract refuses anything a real device would not send, naming the field."""

from __future__ import annotations

import json

import pytest

from gerbang import wire


def make_event(**overrides) -> dict:
    event = wire.CheckinEvent(
        event_id=wire.new_event_id(), device_id="c1-r01-a", centre="c1", room="R01",
        session="S1", seq=7, ts=wire.utc_now_iso(), outcome="accepted", applicant_id="A-001",
        score=0.61, latency_ms=120.5)
    data = json.loads(event.to_json())
    data.update(overrides)
    return data


def test_round_trip_keeps_every_field():
    original = make_event()
    parsed = wire.parse_event(json.dumps(original).encode())
    assert json.loads(parsed.to_json()) == original


@pytest.mark.parametrize(("payload", "field"), [
    (b"{not json", "not JSON"),
    (b"[1, 2]", "JSON object"),
    (b"\xff\xfe", "UTF-8"),
    (json.dumps(make_event(schema=99)).encode(), "schema"),
    (json.dumps(make_event(seq="7")).encode(), "seq"),
    (json.dumps(make_event(seq=True)).encode(), "seq"),
    (json.dumps(make_event(seq=-1)).encode(), "seq"),
    (json.dumps(make_event(score="high")).encode(), "score"),
    (json.dumps(make_event(outcome="maybe")).encode(), "outcome"),
    (json.dumps(make_event(reason="because")).encode(), "reason"),
    (json.dumps(make_event(applicant_id=None)).encode(), "applicant_id"),
    (json.dumps(make_event(event_id="x")).encode(), "event_id"),
    (json.dumps(make_event(room="R01/#")).encode(), "room"),
    (json.dumps(make_event(ts="yesterday")).encode(), "ts"),
    (json.dumps(make_event(frame_ref="x" * 5000)).encode(), "frame_ref"),
    (json.dumps(make_event(admin=True)).encode(), "unknown field"),
    (json.dumps({k: v for k, v in make_event().items() if k != "session"}).encode(), "session"),
    (b" " * (wire.MAX_PAYLOAD_BYTES + 1), "limit"),
])
def test_malformed_payload_is_refused_naming_the_field(payload, field):
    with pytest.raises(wire.WireError, match=field):
        wire.parse_event(payload)


def test_topics_round_trip_and_reject_wildcards():
    topic = wire.events_topic("c1", "c1-r01-a")
    assert topic == "gerbang/v1/c1/c1-r01-a/events"
    parts = wire.parse_topic(topic)
    assert (parts.centre, parts.device, parts.leaf) == ("c1", "c1-r01-a", "events")
    with pytest.raises(wire.WireError):
        wire.events_topic("c1", "dev/+")
    with pytest.raises(wire.WireError):
        wire.parse_topic("other/v1/c1/d/events")
