"""Push a command (a signed roster, a versioned config) to gates over MQTT and wait for each
gate's acknowledgement.

The technician (or the gateway host) publishes e.g. the signed roster on each gate's
``cmd/roster`` topic at QoS 1 with a fresh ``command_id``, and listens on the gates'
``cmd_ack``. A gate that is offline gets the command from its persistent session when it comes
back; until then it is reported as *not confirmed*, never as done.

The push connects with the technician's own certificate (``gerbang-provision technician-cert``,
CN ``tech-<name>``), never the gateway's: the broker takes a client's id from its certificate, so
a push as ``gateway`` would take over the running gateway's session (the clean start wipes its
subscriptions and queued check-ins). ``check_push_identity`` refuses that before connecting.
"""

from __future__ import annotations

import base64
import hashlib
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
from provisioning import pki


class PushRefused(RuntimeError):
    """The push would run with an identity that must not send it; the message says which to use."""


def check_push_identity(broker: BrokerConfig) -> str | None:
    """The CN the push connects as (None without a client certificate: a plain test broker).

    Refused (PushRefused) for the gateway's certificates (``gateway``, ``gateway-N``) and a
    gate's: with the broker taking the client id from the certificate, the push would take
    over that client's session (the running gateway's: its subscriptions and the check-ins
    queued for it are wiped) and the broker would refuse its commands anyway.
    """
    if broker.cert_file is None:
        return None
    cn = pki.common_name_of(pki.load_certificate(broker.cert_file))
    kind = pki.identity_kind(cn)
    if kind == "technician":
        return cn
    how = ("use a technician's certificate instead: `gerbang-provision technician-cert NAME` "
           "makes technicians/tech-NAME.pem and .key; pass them as --cert-file/--key-file")
    if kind == "gateway":
        raise PushRefused(
            f"--cert-file {broker.cert_file} is the gateway's certificate (CN {cn}): the broker "
            "takes a client's id from its certificate, so this push would take over the running "
            f"gateway's session {cn!r} and lose the check-ins in flight; {how}")
    raise PushRefused(
        f"--cert-file {broker.cert_file} has CN {cn!r}, which is not a technician's (tech-*): "
        f"the broker lets only technicians and the gateway send these commands, and a push "
        f"with it would take over {cn!r}'s session; {how}")


@dataclass(frozen=True)
class PushResult:
    """One gate's answer: ``ok`` None means no acknowledgement within the wait."""

    device_id: str
    ok: bool | None
    detail: str


def push_roster(broker: BrokerConfig, centre: str, devices: list[str], signed_roster: bytes,
                timeout_s: float = 30.0,
                chunk_bytes: int | None = None) -> list[PushResult]:
    """Send ``signed_roster`` to every gate in ``devices``; one PushResult per gate.

    A roster larger than one chunk (``ROSTER_CHUNK_BYTES`` by default) goes to each gate in
    resumable chunks, each acknowledged with the offset the gate wants next; the gate verifies
    the signature only once it holds the whole file.
    """
    from device.manage.chunks import push_in_chunks
    from device.manage.roster_source import ROSTER_CHUNK_BYTES

    hint = "it gets the roster when it reconnects"
    chunk_bytes = chunk_bytes or ROSTER_CHUNK_BYTES
    if len(signed_roster) <= chunk_bytes:
        return push_command(broker, centre, devices, "roster",
                            {"roster_b64": base64.b64encode(signed_roster).decode()},
                            timeout_s, offline_hint=hint)
    results = []
    for device in devices:
        last: list[PushResult] = []

        def send(body: dict[str, Any], device: str = device,
                 last: list[PushResult] = last) -> dict[str, Any]:
            (answer,) = push_command(broker, centre, [device], "roster", body, timeout_s,
                                     offline_hint=hint)
            last[:] = [answer]
            return {"ok": answer.ok, "detail": answer.detail}

        push_in_chunks(send, signed_roster, chunk_bytes)
        results.append(last[0])
    return results


def config_sha256(config_text: str) -> str:
    """sha256 of a config as the gate stores and reports it (its UTF-8 bytes, unchanged)."""
    return hashlib.sha256(config_text.encode("utf-8")).hexdigest()


def push_config(broker: BrokerConfig, centre: str, device: str, config_text: str,
                version: int, timeout_s: float = 30.0) -> PushResult:
    """Send one gate its whole ``device.toml`` as config ``version`` (the desired config).

    The gate answers ``ok`` once the file is swapped in and its workers restart with it (its
    reported config is then this version and ``config_sha256(config_text)``), or refuses with
    the reason: version not newer, invalid TOML or config, changed identity.
    """
    (result,) = push_command(
        broker, centre, [device], "config", {"version": version, "config": config_text},
        timeout_s, offline_hint="it applies the config when it reconnects, unless a newer "
                                "version reaches it first")
    return result


def push_command(broker: BrokerConfig, centre: str, devices: list[str], command: str,
                 body: dict[str, Any], timeout_s: float = 30.0,
                 offline_hint: str = "it gets the command when it reconnects",
                 ) -> list[PushResult]:
    """Publish ``cmd/{command}`` with ``body`` to every gate and wait for their ``cmd_ack``.

    The subscription to the acknowledgements is confirmed before anything is published, so a
    fast gate's answer cannot be missed. PushRefused before connecting when ``broker``'s
    certificate is not a technician's (``check_push_identity``). Each gate's first
    acknowledgement of this command_id counts (MQTT may deliver the command twice; the second
    answer is about the redelivery).
    """
    identity = check_push_identity(broker)
    command_id = uuid.uuid4().hex
    acks: dict[str, dict[str, Any]] = {}
    done = threading.Condition()
    subscribed = threading.Event()
    # Over mutual TLS the broker makes the certificate CN the client id; say so rather than
    # ask for another one.
    client = make_client(identity or f"gerbang-push-{command_id[:8]}", broker,
                         persistent_session=False)

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            ack = json.loads(msg.payload)
        except ValueError:
            return
        if isinstance(ack, dict) and ack.get("command_id") == command_id:
            with done:
                acks.setdefault(wire.parse_topic(msg.topic).device, ack)
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
        payload = json.dumps({"schema": wire.SCHEMA_VERSION, "command_id": command_id, **body})
        for device in devices:
            client.publish(wire.device_topic(centre, device, f"cmd/{command}"), payload,
                           qos=1).wait_for_publish(10)
        deadline = time.monotonic() + timeout_s
        with done:
            while len(acks) < len(devices) and time.monotonic() < deadline:
                done.wait(deadline - time.monotonic())
    finally:
        client.loop_stop()
        client.disconnect()
    return [PushResult(d, acks[d]["ok"], str(acks[d].get("detail", ""))) if d in acks else
            PushResult(d, None, f"no acknowledgement within {timeout_s:.0f}s (offline? "
                                f"{offline_hint})") for d in devices]
