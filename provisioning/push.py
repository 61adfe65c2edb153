"""Push a signed roster to a room's gates over MQTT and wait for each gate's acknowledgement.

The technician (or the gateway host) publishes the signed roster on each gate's
``cmd/roster`` topic at QoS 1 with a fresh ``command_id``, and listens on the gates'
``cmd_ack``. A gate that is offline gets the roster from its persistent session when it comes
back; until then it is reported as *not confirmed*, never as done.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt

from gerbang import wire
from gerbang.config import BrokerConfig
from gerbang.mqtt import make_client


@dataclass(frozen=True)
class PushResult:
    """One gate's answer: ``ok`` None means no acknowledgement within the wait."""

    device_id: str
    ok: bool | None
    detail: str


def push_roster(broker: BrokerConfig, centre: str, devices: list[str], signed_roster: bytes,
                timeout_s: float = 30.0) -> list[PushResult]:
    """Send ``signed_roster`` to every gate in ``devices``; one PushResult per gate."""
    command_id = uuid.uuid4().hex
    acks: dict[str, dict[str, Any]] = {}
    done = threading.Condition()
    subscribed = threading.Event()
    client = make_client(f"gerbang-push-{command_id[:8]}", broker, persistent_session=False)

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            body = json.loads(msg.payload)
        except ValueError:
            return
        if isinstance(body, dict) and body.get("command_id") == command_id:
            with done:
                acks[wire.parse_topic(msg.topic).device] = body
                done.notify_all()

    client.on_message = on_message
    client.on_subscribe = lambda *_a, **_k: subscribed.set()
    client.connect(broker.host, broker.port, keepalive=broker.keepalive_s)
    client.loop_start()
    try:
        client.subscribe([(wire.device_topic(centre, d, "cmd_ack"), 1) for d in devices])
        if not subscribed.wait(10):
            raise TimeoutError(f"broker {broker.host}:{broker.port} did not confirm the "
                               "subscription to the gates' acknowledgements")
        payload = json.dumps({"schema": wire.SCHEMA_VERSION, "command_id": command_id,
                              "roster_b64": base64.b64encode(signed_roster).decode()})
        for device in devices:
            client.publish(wire.device_topic(centre, device, "cmd/roster"), payload,
                           qos=1).wait_for_publish(10)
        deadline = time.monotonic() + timeout_s
        with done:
            while len(acks) < len(devices) and time.monotonic() < deadline:
                done.wait(deadline - time.monotonic())
    finally:
        client.loop_stop()
        client.disconnect()
    return [PushResult(d, acks[d]["ok"], str(acks[d].get("detail", ""))) if d in acks else
            PushResult(d, None, f"no acknowledgement within {timeout_s:.0f}s (offline? it gets "
                                "the roster when it reconnects)") for d in devices]
