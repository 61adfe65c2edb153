"""MQTT ingest: device topics → validated events → the store, acknowledged only after commit.

paho's manual acknowledgement is on: the broker gets our PUBACK for an event only once the
event's transaction has committed. If the gateway is killed between receipt and commit, the
broker (persistent session) delivers the message again; ``event_id`` makes that harmless.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt

from gateway.store import Store
from gerbang import wire
from gerbang.config import BrokerConfig
from gerbang.mqtt import connect_async, make_client

log = logging.getLogger(__name__)


@dataclass
class IngestStats:
    """Counters since start, for /api/stats and the demo summary."""

    received: int = 0
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0


class Ingest:
    """Subscribes to every device of a centre and writes their events in batches.

    One writer thread owns all writes: batching many events per transaction is what lets SQLite
    keep up with a whole centre's doors opening at once.
    """

    def __init__(self, store: Store, broker: BrokerConfig, client_id: str = "gerbang-gateway",
                 centre: str = "+", batch_max: int = 500, share_group: str | None = None,
                 ) -> None:
        self.store = store
        self.broker = broker
        self.centre = centre
        #: With a group name, several gateway workers split the event stream between them
        #: (MQTT shared subscription ``$share/{group}/…``): each event goes to one worker.
        self.share_group = share_group
        self.batch_max = batch_max
        self.stats = IngestStats()
        self.changed = threading.Condition()  # notified after each commit (live dashboard)
        self._queue: queue.Queue[mqtt.MQTTMessage | None] = queue.Queue()
        self.client = make_client(client_id, broker, persistent_session=True)
        self.client.manual_ack_set(True)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = lambda client, userdata, msg: self._queue.put(msg)
        self._writer = threading.Thread(target=self._write_loop, name="ingest-writer",
                                        daemon=True)
        self.connected = threading.Event()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any = None) -> None:
        if reason.is_failure:
            log.error("broker refused the gateway: %s", reason)
            return
        prefix = f"$share/{self.share_group}/" if self.share_group else ""
        client.subscribe([(prefix + wire.subscription(self.centre, leaf), qos)
                          for leaf, qos in (("events", 1), ("status", 1), ("alarms", 1),
                                            ("telemetry", 0))])

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any,
                      properties: Any = None) -> None:
        # Ready only once the broker has confirmed the subscription: anything published
        # before that would not be routed to us.
        log.info("gateway subscribed at %s:%s", self.broker.host, self.broker.port)
        self.connected.set()

    def _classify(self, msg: mqtt.MQTTMessage) -> tuple[str, Any]:
        """('event', CheckinEvent) | ('status', (parts, dict)) | ('reject', reason)."""
        try:
            parts = wire.parse_topic(msg.topic)
            if parts.leaf in ("status", "telemetry"):
                if len(msg.payload) > wire.MAX_PAYLOAD_BYTES:
                    raise wire.WireError(f"{parts.leaf} payload larger than "
                                         f"{wire.MAX_PAYLOAD_BYTES} bytes")
                body = json.loads(msg.payload or b"{}")
                if not isinstance(body, dict):
                    raise wire.WireError(f"{parts.leaf} payload must be a JSON object")
                return parts.leaf, (parts, body)
            if parts.leaf == "alarms":
                alarm = wire.parse_alarm(msg.payload)
                if (alarm.device_id, alarm.centre) != (parts.device, parts.centre):
                    raise wire.WireError(f"device_id/centre {alarm.device_id}/{alarm.centre} "
                                         f"does not match topic {parts.centre}/{parts.device}")
                return "alarm", alarm
            event = wire.parse_event(msg.payload)
            if (event.device_id, event.centre) != (parts.device, parts.centre):
                # A device may only speak for itself: the topic is what the broker ACL checks.
                raise wire.WireError(f"device_id/centre {event.device_id}/{event.centre} "
                                     f"does not match topic {parts.centre}/{parts.device}")
            return "event", event
        except (wire.WireError, ValueError) as exc:
            return "reject", str(exc)

    def _write_loop(self) -> None:
        while True:
            msg = self._queue.get()
            if msg is None:
                return
            batch = [msg]
            while len(batch) < self.batch_max:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                batch.append(nxt)
            self._commit(batch)

    def _commit(self, batch: list[mqtt.MQTTMessage]) -> None:
        events, alarms = [], []
        for msg in batch:
            kind, value = self._classify(msg)
            if kind == "event":
                events.append(value)
            elif kind == "alarm":
                alarms.append(value)
            elif kind == "status":
                parts, status = value
                self.store.record_status(parts.device, parts.centre, status)
            elif kind == "telemetry":
                parts, telemetry = value
                self.store.record_telemetry(parts.device, parts.centre, telemetry)
            else:
                self.stats.rejected += 1
                log.warning("rejected message on %s: %s", msg.topic[:120], value)
                self.store.record_reject(msg.topic, value)
        delay = 0.1
        while True:
            try:
                new = self.store.insert_events(events) if events else 0
                if alarms:
                    self.store.record_alarms(alarms)
                break
            except Exception:
                # Nothing is acknowledged until stored: retry (a locked or full disk is usually
                # transient); if we die here the broker redelivers to the next gateway.
                log.exception("could not store %d events; retrying in %.1fs", len(events), delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
        self.stats.received += len(events)
        self.stats.stored += new
        self.stats.duplicates += len(events) - new
        for msg in batch:
            if msg.qos > 0:
                self.client.ack(msg.mid, msg.qos)
        with self.changed:
            self.changed.notify_all()

    def send_command(self, centre: str, device_id: str, name: str,
                     payload: dict[str, Any]) -> None:
        """Publish a command to one gate (QoS 1; the broker keeps it for a gate that is
        offline, in its persistent session). The gate answers on ``cmd_ack``."""
        body = {"schema": wire.SCHEMA_VERSION, "command": name, **payload}
        self.client.publish(wire.device_topic(centre, device_id, f"cmd/{name}"),
                            json.dumps(body, separators=(",", ":")), qos=1)

    def start(self) -> None:
        """Start the writer and connect (reconnecting by itself after a broker restart)."""
        self._writer.start()
        connect_async(self.client, self.broker, persistent_session=True)

    def stop(self) -> None:
        """Finish the queued batch, then disconnect."""
        self._queue.put(None)
        self._writer.join(timeout=5)
        self.client.disconnect()
        self.client.loop_stop()
