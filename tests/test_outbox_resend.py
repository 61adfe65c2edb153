"""Outbox streams and the ``resend`` command through a real Mosquitto (issue 14, High-2, the
gate's side): acknowledged events stay in the outbox, a resend publishes exactly the asked
range again (same event ids, seq order), kept rows go after the keep time and beyond the bound,
the stream survives a restart and a new outbox is a new stream. The birth and telemetry the
uplink publishes carry the outbox position and pass the gateway's strict validators."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from waiting import wait_until

from device.uplink.commands import CommandHandler
from device.uplink.outbox import Outbox
from device.uplink.publisher import Uplink
from gerbang import wire
from gerbang.config import BrokerConfig

CENTRE, DEVICE = "c1", "c1-r01-a"


class Watcher:
    """A client standing where the gateway stands: sees the gate's events, status, telemetry
    and command acknowledgements, and sends it commands."""

    def __init__(self, port: int) -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_a, **_k: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(wire.device_topic(CENTRE, DEVICE, "#"), qos=1)
        assert subscribed.wait(10)

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(msg)

    def leaf(self, name: str) -> list[bytes]:
        topic = wire.device_topic(CENTRE, DEVICE, name)
        with self._lock:
            return [m.payload for m in self.messages if m.topic == topic]

    def events(self) -> list[dict]:
        return [json.loads(p) for p in self.leaf("events")]

    def command(self, name: str, body: dict) -> dict:
        before = len(self.leaf("cmd_ack"))
        self.client.publish(wire.device_topic(CENTRE, DEVICE, f"cmd/{name}"), json.dumps(body),
                            qos=1).wait_for_publish(5)
        wait_until(lambda: len(self.leaf("cmd_ack")) > before, 10, f"the ack of {name}")
        return json.loads(self.leaf("cmd_ack")[-1])

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def watcher(mosquitto):
    w = Watcher(mosquitto.port)
    yield w
    w.close()


def start_uplink(outbox: Outbox, port: int) -> Uplink:
    """The gate's real uplink with the real command handler (as device/processes/assembly.py builds
    it)."""
    uplink: Uplink

    def command(name: str, payload: bytes):
        return CommandHandler("S1", outbox.path.parent, lambda: None, lambda *_: None,
                              resend=uplink.resend).handle(name, payload)

    uplink = Uplink(outbox, BrokerConfig(port=port), CENTRE, DEVICE,
                    birth={"device_id": DEVICE, "room": "R01", "session": "S1",
                           "firmware": "test"},
                    on_command=command, telemetry=lambda: {"uptime_s": 1, "fps": 0.0},
                    telemetry_interval_s=0.3)
    uplink.start()
    return uplink


def append_events(outbox: Outbox, n: int) -> None:
    for i in range(n):
        def build(seq: int, i: int = i) -> tuple[str, bytes]:
            event = wire.CheckinEvent(
                event_id=wire.new_event_id(), device_id=DEVICE, centre=CENTRE, room="R01",
                session="S1", seq=seq, ts=wire.utc_now_iso(), outcome="accepted",
                applicant_id=f"A{i:04d}", score=0.7, latency_ms=50.0, stream=outbox.stream)
            return wire.events_topic(CENTRE, DEVICE), event.to_json()
        outbox.append(build)


def test_resend_republishes_exactly_the_range_and_kept_rows_expire(tmp_path, mosquitto,
                                                                    watcher):
    outbox = Outbox(tmp_path / "gate" / "outbox.sqlite", keep_acked_s=4.0, purge_every_s=0.1)
    uplink = start_uplink(outbox, mosquitto.port)
    try:
        append_events(outbox, 30)
        uplink.notify()
        assert uplink.drain(20)
        wait_until(lambda: len(watcher.events()) == 30, 10, "30 events at the subscriber")
        first = watcher.events()
        assert [e["seq"] for e in first] == list(range(30))
        assert {e["stream"] for e in first} == {outbox.stream}
        assert outbox.kept() == 30 and outbox.depth() == 0  # acknowledged, still kept

        # The birth and telemetry the gateway validates: accepted, with the position.
        births = [wire.parse_status(p) for p in watcher.leaf("status")]
        assert births and births[0]["outbox"]["stream"] == outbox.stream
        wait_until(lambda: any(wire.parse_telemetry(p)["outbox"]["acked_below"] == 30
                               for p in watcher.leaf("telemetry")), 10,
                   "telemetry saying every seq below 30 was acknowledged")
        (telemetry,) = [wire.parse_telemetry(p) for p in watcher.leaf("telemetry")][-1:]
        assert telemetry["outbox"] == {"stream": outbox.stream, "first_seq": 0,
                                       "next_seq": 30, "acked_below": 30}

        ack = watcher.command("resend", {"stream": outbox.stream, "from_seq": 10,
                                         "to_seq": 14})
        assert ack["ok"] and ack["detail"] == ("re-sending 5 of 5 (seq 10..14); 0 no longer "
                                               "kept"), ack
        wait_until(lambda: len(watcher.events()) == 35, 10, "the re-sent range")
        again = watcher.events()[30:]
        assert [e["seq"] for e in again] == [10, 11, 12, 13, 14]
        assert [e["event_id"] for e in again] == [e["event_id"] for e in first[10:15]]
        time.sleep(0.5)
        assert len(watcher.events()) == 35  # exactly the range, nothing else

        other = watcher.command("resend", {"stream": "00112233aabbccdd", "from_seq": 0,
                                           "to_seq": 3})
        assert not other["ok"] and other["detail"].startswith("stream:")
        assert "00112233aabbccdd" in other["detail"] and outbox.stream in other["detail"]
        too_wide = watcher.command("resend", {"stream": outbox.stream, "from_seq": 0,
                                              "to_seq": wire.RESEND_MAX_SPAN})
        assert not too_wide["ok"] and too_wide["detail"].startswith("to_seq:")

        # Past the keep time the next PUBACK batch purges them.
        time.sleep(4.2)
        append_events(outbox, 1)
        uplink.notify()
        wait_until(lambda: len(watcher.events()) == 36, 10, "event 30")
        wait_until(lambda: outbox.kept() == 1, 10, "the expired rows purged")
        ack = watcher.command("resend", {"stream": outbox.stream, "from_seq": 25,
                                         "to_seq": 30})
        assert ack["detail"] == "re-sending 1 of 6 (seq 30..30); 5 no longer kept", ack
        wait_until(lambda: len(watcher.events()) == 37, 10, "event 30 again")
        assert watcher.events()[-1]["seq"] == 30
    finally:
        uplink.stop()
        outbox.close()


def test_the_bound_holds_for_kept_rows_and_a_resend_serves_what_is_left(tmp_path, mosquitto,
                                                                         watcher):
    outbox = Outbox(tmp_path / "gate" / "outbox.sqlite", max_events=100)
    uplink = start_uplink(outbox, mosquitto.port)
    try:
        append_events(outbox, 150)
        uplink.notify()
        assert uplink.drain(30)
        wait_until(lambda: len(watcher.events()) == 150, 15, "150 events")
        assert outbox.kept() == 100 and outbox.depth() == 0
        ack = watcher.command("resend", {"stream": outbox.stream, "from_seq": 0,
                                         "to_seq": 149})
        assert ack["detail"] == "re-sending 100 of 150 (seq 50..149); 50 no longer kept", ack
        wait_until(lambda: len(watcher.events()) == 250, 15, "the 100 kept events again")
        assert [e["seq"] for e in watcher.events()[150:]] == list(range(50, 150))
        assert outbox.kept() == 100 and outbox.depth() == 0
    finally:
        uplink.stop()
        outbox.close()


def test_stream_survives_a_restart_and_a_new_outbox_is_a_new_stream(tmp_path, mosquitto,
                                                                     watcher):
    path = tmp_path / "gate" / "outbox.sqlite"
    outbox = Outbox(path)
    stream = outbox.stream
    uplink = start_uplink(outbox, mosquitto.port)
    append_events(outbox, 3)
    uplink.notify()
    assert uplink.drain(10)
    uplink.stop()
    outbox.close()

    def births() -> list[dict]:
        return [b for b in map(wire.parse_status, watcher.leaf("status"))
                if b["state"] == "online"]

    count = len(births())
    outbox = Outbox(path)  # the service restarted
    uplink = start_uplink(outbox, mosquitto.port)
    try:
        wait_until(lambda: len(births()) > count, 10, "the birth after the restart")
        assert births()[-1]["outbox"] == {"stream": stream, "first_seq": 0, "next_seq": 3,
                                          "acked_below": 3}
        append_events(outbox, 1)
        uplink.notify()
        wait_until(lambda: len(watcher.events()) == 4, 10, "the event after the restart")
        assert watcher.events()[-1]["seq"] == 3 and watcher.events()[-1]["stream"] == stream
    finally:
        uplink.stop()
        outbox.close()

    Path(path).unlink()  # the outbox deleted (or a new SD card): a new stream from 0
    count = len(births())
    outbox = Outbox(path)
    uplink = start_uplink(outbox, mosquitto.port)
    try:
        wait_until(lambda: len(births()) > count, 10, "the birth of the new outbox")
        new = births()[-1]["outbox"]
        assert new["stream"] != stream and new["first_seq"] == new["next_seq"] == 0
        append_events(outbox, 1)
        uplink.notify()
        wait_until(lambda: len(watcher.events()) == 5, 10, "the new stream's first event")
        assert (watcher.events()[-1]["seq"], watcher.events()[-1]["stream"]) == (0, new["stream"])
    finally:
        uplink.stop()
        outbox.close()
